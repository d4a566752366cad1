//! `sealpost bench --only limiter`: what one check of the server's rate limiter costs with 1,
//! 10,000 and 1,000,000 live keys (devices or addresses within their limit), one thread.

use std::time::{Duration, Instant};

use sealpost_proto::DeviceId;
use sealpost_server::ratelimit::RateLimiter;

/// Filling a limiter stops here if it has not reached its keys (a limiter whose cost grows with
/// its keys would take hours to reach a million).
const FILL_FOR: Duration = Duration::from_secs(20);
/// Checks are timed for about this long.
const MEASURE_FOR: Duration = Duration::from_secs(2);

fn key(i: u64) -> DeviceId {
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&i.to_le_bytes());
    DeviceId::from_bytes(bytes)
}

pub(crate) fn run() {
    for keys in [1u64, 10_000, 1_000_000] {
        // The sends limit's shape (per device, per minute), high enough that nothing is refused.
        let limiter = RateLimiter::new(1_000_000, Duration::from_secs(60));
        let t = Instant::now();
        let mut live = 0;
        while live < keys && t.elapsed() < FILL_FOR {
            for i in live..(live + 1000).min(keys) {
                let _ = limiter.check(&key(i));
            }
            live = (live + 1000).min(keys);
        }
        let filled = t.elapsed();
        let t = Instant::now();
        let mut checks = 0u64;
        while t.elapsed() < MEASURE_FOR {
            for _ in 0..100 {
                let _ = limiter.check(&key(checks % live));
                checks += 1;
            }
        }
        let each = t.elapsed().as_secs_f64() * 1e9 / checks as f64;
        println!(
            "limiter: {live} live keys (filled in {:.2} s): {each:.0} ns per check ({checks} checks)",
            filled.as_secs_f64()
        );
    }
}
