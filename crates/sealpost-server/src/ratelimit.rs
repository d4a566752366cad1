//! A fixed-window rate limiter per device.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sealpost_proto::DeviceId;

/// Allows `per_window` events per device per window.
pub struct RateLimiter {
    per_window: u32,
    window: Duration,
    counts: Mutex<HashMap<DeviceId, (Instant, u32)>>,
}

impl RateLimiter {
    /// `per_window` events per `window`.
    pub fn new(per_window: u32, window: Duration) -> Self {
        Self {
            per_window,
            window,
            counts: Mutex::new(HashMap::new()),
        }
    }

    /// Counts one event; false if the device is over its limit.
    pub fn allow(&self, device: DeviceId) -> bool {
        let now = Instant::now();
        let Ok(mut counts) = self.counts.lock() else {
            return false;
        };
        if counts.len() > 100_000 {
            counts.retain(|_, (start, _)| now.duration_since(*start) < self.window);
        }
        let entry = counts.entry(device).or_insert((now, 0));
        if now.duration_since(entry.0) >= self.window {
            *entry = (now, 0);
        }
        entry.1 += 1;
        entry.1 <= self.per_window
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_per_device() {
        let rl = RateLimiter::new(2, Duration::from_secs(3600));
        let (a, b) = (DeviceId::from_bytes([1; 16]), DeviceId::from_bytes([2; 16]));
        assert!(rl.allow(a) && rl.allow(a));
        assert!(!rl.allow(a));
        assert!(rl.allow(b));
    }
}
