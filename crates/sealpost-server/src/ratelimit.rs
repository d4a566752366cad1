//! Rate limits: fixed windows per signed-in device or per client address.
//!
//! The limits are kept in each node's memory: with several nodes behind a load balancer a
//! client gets each limit once per node it reaches. They bound abuse (mass registration,
//! directory enumeration, floods); they are not quotas.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sealpost_proto::DeviceId;

use crate::Settings;

/// Most keys one limiter remembers before it forgets the ones whose window has ended.
const MAX_TRACKED: usize = 100_000;

/// Allows `per_window` events per key per window; 0 allows everything.
pub struct RateLimiter<K> {
    per_window: u32,
    window: Duration,
    counts: Mutex<HashMap<K, (Instant, u32)>>,
}

impl<K: Hash + Eq> RateLimiter<K> {
    /// `per_window` events per `window`; 0 for no limit.
    pub fn new(per_window: u32, window: Duration) -> Self {
        Self {
            per_window,
            window,
            counts: Mutex::new(HashMap::new()),
        }
    }

    /// Counts one event; false if `key` is over its limit.
    pub fn allow(&self, key: K) -> bool {
        self.allow_n(key, 1)
    }

    /// Counts `n` events at once (a batch); false, and nothing counted, if they do not fit.
    pub fn allow_n(&self, key: K, n: u32) -> bool {
        if self.per_window == 0 {
            return true;
        }
        let now = Instant::now();
        let Ok(mut counts) = self.counts.lock() else {
            return false;
        };
        if counts.len() >= MAX_TRACKED {
            counts.retain(|_, (start, _)| now.duration_since(*start) < self.window);
        }
        let entry = counts.entry(key).or_insert((now, 0));
        if now.duration_since(entry.0) >= self.window {
            *entry = (now, 0);
        }
        match entry
            .1
            .checked_add(n)
            .filter(|total| *total <= self.per_window)
        {
            Some(total) => {
                entry.1 = total;
                true
            }
            None => false,
        }
    }
}

/// Every limit of a node.
pub struct Limits {
    /// Accounts registered per client address, per hour.
    pub registrations: RateLimiter<IpAddr>,
    /// Sign-in challenges and device-link requests per client address, per minute.
    pub sign_ins: RateLimiter<IpAddr>,
    /// Key-package claims per device, per minute.
    pub claims: RateLimiter<DeviceId>,
    /// Usernames looked up (directory, profile) per device, per minute.
    pub lookups: RateLimiter<DeviceId>,
    /// Messages and commits sent per device, per minute.
    pub sends: RateLimiter<DeviceId>,
    /// WebSocket connections opened per device, per minute.
    pub connects: RateLimiter<DeviceId>,
}

impl Limits {
    /// The limits `settings` ask for.
    pub fn new(settings: &Settings) -> Self {
        let minute = Duration::from_secs(60);
        Self {
            registrations: RateLimiter::new(
                settings.registrations_per_address_per_hour,
                Duration::from_secs(3600),
            ),
            sign_ins: RateLimiter::new(settings.sign_ins_per_address_per_minute, minute),
            claims: RateLimiter::new(settings.key_package_claims_limit(), minute),
            lookups: RateLimiter::new(settings.lookups_limit(), minute),
            sends: RateLimiter::new(settings.sends_per_minute, minute),
            connects: RateLimiter::new(settings.connections_per_minute, minute),
        }
    }
}

/// The address a per-address limit counts for a request from `peer`. Behind a reverse proxy
/// (`trust_forwarded_for`), the last address of `X-Forwarded-For`, which that proxy appended.
/// IPv6 addresses count by their /64, the block one subscriber usually gets, so that stepping
/// through addresses in it does not step around the limit.
pub fn client_address(
    peer: Option<SocketAddr>,
    forwarded_for: Option<&str>,
    trust_forwarded_for: bool,
) -> IpAddr {
    let forwarded = forwarded_for
        .filter(|_| trust_forwarded_for)
        .and_then(|v| v.rsplit(',').next())
        .and_then(|a| a.trim().parse::<IpAddr>().ok());
    let addr = forwarded
        .or(peer.map(|p| p.ip()))
        .unwrap_or(IpAddr::V6(Ipv6Addr::UNSPECIFIED));
    match addr {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
        v4 => v4,
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

    #[test]
    fn a_batch_that_does_not_fit_counts_nothing() {
        let rl = RateLimiter::new(5, Duration::from_secs(3600));
        assert!(rl.allow_n(1u8, 4));
        assert!(!rl.allow_n(1u8, 2));
        assert!(rl.allow_n(1u8, 1));
        assert!(!rl.allow(1u8));
        assert!(!rl.allow_n(2u8, u32::MAX), "no overflow");
    }

    #[test]
    fn zero_is_no_limit() {
        let rl = RateLimiter::new(0, Duration::from_secs(3600));
        assert!((0..10_000).all(|_| rl.allow(1u8)));
    }

    #[test]
    fn addresses_count_by_host_or_ipv6_block() {
        let peer = |s: &str| Some(s.parse::<SocketAddr>().unwrap());
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            client_address(peer("[2001:db8:1:2:aaaa::1]:5000"), None, false),
            ip("2001:db8:1:2::")
        );
        assert_eq!(
            client_address(peer("[::ffff:192.0.2.7]:5000"), None, false),
            ip("192.0.2.7")
        );
        // A forwarded address counts only behind a proxy that is trusted to set it.
        let fwd = Some("198.51.100.1, 203.0.113.9");
        assert_eq!(
            client_address(peer("127.0.0.1:1"), fwd, false),
            ip("127.0.0.1")
        );
        assert_eq!(
            client_address(peer("127.0.0.1:1"), fwd, true),
            ip("203.0.113.9")
        );
        assert_eq!(
            client_address(peer("127.0.0.1:1"), Some("junk"), true),
            ip("127.0.0.1")
        );
    }
}
