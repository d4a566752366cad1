//! Rate limits per signed-in device or per client address, on `governor`'s GCRA: a limit of
//! N per window lets a key spend N at once and then one more every window ÷ N, so no moment
//! (a window's edge, say) lets a client through twice its limit, and a refusal says when the
//! next event would fit (the `Retry-After` of a 429).
//!
//! The limits are kept in each node's memory: with several nodes behind a load balancer a
//! client gets each limit once per node it reaches. They bound abuse (mass registration,
//! directory enumeration, floods); they are not quotas. Each check costs the same however
//! many keys are live; keys whose allowance is full again are forgotten by [`Limits::tidy`].

use std::hash::Hash;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::{Quota, RateLimiter as Gcra};
use prometheus_client::metrics::counter::Counter;
use sealpost_proto::DeviceId;
use tokio_util::sync::CancellationToken;

use crate::Settings;
use crate::metrics::Metrics;

/// governor's keyed limiter on a `DashMap`, on clock `C`.
type Keyed<K, C> = Gcra<K, DashMapStateStore<K>, C, NoOpMiddleware<<C as Clock>::Instant>>;

/// Allows `per_window` events per key per window on average and at most `per_window` at once;
/// 0 allows everything.
pub struct RateLimiter<K: Hash + Eq + Clone, C: Clock = DefaultClock> {
    gcra: Option<Keyed<K, C>>,
    clock: C,
    per_window: u32,
    window: Duration,
    /// Counts this limit's refusals (a metric).
    refused: Counter,
}

impl<K: Hash + Eq + Clone> RateLimiter<K> {
    /// `per_window` events per `window`; 0 for no limit.
    pub fn new(per_window: u32, window: Duration) -> Self {
        Self::with_clock(per_window, window, DefaultClock::default())
    }
}

impl<K: Hash + Eq + Clone, C: Clock + Clone> RateLimiter<K, C> {
    /// The same, on `clock` (a test's).
    pub fn with_clock(per_window: u32, window: Duration, clock: C) -> Self {
        let gcra = NonZeroU32::new(per_window).and_then(|n| {
            let quota = Quota::with_period(window / n.get())?.allow_burst(n);
            Some(Gcra::dashmap_with_clock(quota, clock.clone()))
        });
        Self {
            gcra,
            clock,
            per_window,
            window,
            refused: Counter::default(),
        }
    }

    /// Counts refusals in `refused` (a metric's counter).
    pub fn counting(mut self, refused: Counter) -> Self {
        self.refused = refused;
        self
    }

    /// Counts one event; `Err(wait)` if `key` is over its limit, where `wait` is the time until
    /// it would be allowed.
    pub fn check(&self, key: &K) -> Result<(), Duration> {
        self.check_n(key, 1)
    }

    /// Counts `n` events at once (a batch); if they do not fit, nothing is counted and the
    /// answer is how long until they would (a whole window if they never can).
    pub fn check_n(&self, key: &K, n: u32) -> Result<(), Duration> {
        let (Some(gcra), Some(n)) = (&self.gcra, NonZeroU32::new(n)) else {
            return Ok(());
        };
        // More than ever fit (governor would multiply its way past u64 with a huge `n`).
        let answer = if n.get() > self.per_window {
            Err(self.window)
        } else {
            match gcra.check_key_n(key, n) {
                Ok(Ok(())) => Ok(()),
                Ok(Err(not_until)) => Err(not_until.wait_time_from(self.clock.now())),
                Err(_) => Err(self.window),
            }
        };
        if answer.is_err() {
            self.refused.inc();
        }
        answer
    }

    /// Forgets the keys whose allowance is full again (they count as new keys).
    pub fn tidy(&self) {
        if let Some(gcra) = &self.gcra {
            gcra.retain_recent();
            gcra.shrink_to_fit();
        }
    }

    /// Keys remembered.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.gcra.as_ref().map_or(0, Gcra::len)
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
    /// The limits `settings` ask for, each counting its refusals in `metrics`.
    pub fn new(settings: &Settings, metrics: &Metrics) -> Self {
        let minute = Duration::from_secs(60);
        fn limit<K: Hash + Eq + Clone>(
            metrics: &Metrics,
            name: &'static str,
            per_window: u32,
            window: Duration,
        ) -> RateLimiter<K> {
            RateLimiter::new(per_window, window).counting(metrics.refusals(name))
        }
        Self {
            registrations: limit(
                metrics,
                "registrations",
                settings.registrations_per_address_per_hour,
                Duration::from_secs(3600),
            ),
            sign_ins: limit(
                metrics,
                "sign_ins",
                settings.sign_ins_per_address_per_minute,
                minute,
            ),
            claims: limit(
                metrics,
                "claims",
                settings.key_package_claims_limit(),
                minute,
            ),
            lookups: limit(metrics, "lookups", settings.lookups_limit(), minute),
            sends: limit(metrics, "sends", settings.sends_per_minute, minute),
            connects: limit(metrics, "connects", settings.connections_per_minute, minute),
        }
    }

    /// Forgets, in every limiter, the keys whose allowance is full again.
    pub fn tidy(&self) {
        self.registrations.tidy();
        self.sign_ins.tidy();
        self.claims.tidy();
        self.lookups.tidy();
        self.sends.tidy();
        self.connects.tidy();
    }
}

/// Tidies `limits` ([`Limits::tidy`]) once a minute until `shutdown`, off the async workers
/// (a limiter with a million keys takes a while).
pub async fn tidy_loop(limits: Arc<Limits>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let limits = limits.clone();
                let _ = tokio::task::spawn_blocking(move || limits.tidy()).await;
            }
            () = shutdown.cancelled() => break,
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
    use governor::clock::FakeRelativeClock;

    #[test]
    fn limits_per_device() {
        let rl = RateLimiter::new(2, Duration::from_secs(3600));
        let (a, b) = (DeviceId::from_bytes([1; 16]), DeviceId::from_bytes([2; 16]));
        assert!(rl.check(&a).is_ok() && rl.check(&a).is_ok());
        let wait = rl.check(&a).expect_err("a third within the hour");
        // Two an hour: the next fits half an hour after the first, not at the hour.
        assert!(
            wait > Duration::from_secs(1790) && wait <= Duration::from_secs(1800),
            "{wait:?}"
        );
        assert!(rl.check(&b).is_ok());
    }

    #[test]
    fn a_batch_that_does_not_fit_counts_nothing() {
        let rl = RateLimiter::new(5, Duration::from_secs(3600));
        assert!(rl.check_n(&1u8, 4).is_ok());
        assert!(rl.check_n(&1u8, 2).is_err());
        assert!(rl.check_n(&1u8, 1).is_ok());
        assert!(rl.check(&1u8).is_err());
        assert_eq!(
            rl.check_n(&2u8, u32::MAX),
            Err(Duration::from_secs(3600)),
            "never fits, no overflow"
        );
        assert!(rl.check(&2u8).is_ok(), "and counted nothing");
    }

    #[test]
    fn zero_is_no_limit() {
        let rl = RateLimiter::new(0, Duration::from_secs(3600));
        assert!((0..10_000).all(|_| rl.check(&1u8).is_ok()));
        assert_eq!(rl.len(), 0);
    }

    #[test]
    fn no_moment_lets_a_client_through_twice_its_limit() {
        let clock = FakeRelativeClock::default();
        let rl = RateLimiter::with_clock(10, Duration::from_secs(60), clock.clone());
        // A fixed window counts from the first event: the rest just before its end and as many
        // again just after it would be twice the limit within 200 ms.
        assert!(rl.check(&1u8).is_ok());
        clock.advance(Duration::from_millis(59_900));
        let before = (0..10).filter(|_| rl.check(&1u8).is_ok()).count();
        clock.advance(Duration::from_millis(200));
        let after = (0..10).filter(|_| rl.check(&1u8).is_ok()).count();
        assert_eq!((before, after), (10, 0));
        // The allowance comes back one every 6 s, and says so.
        assert_eq!(rl.check(&1u8), Err(Duration::from_millis(5_800)));
        clock.advance(Duration::from_millis(5_800));
        assert!(rl.check(&1u8).is_ok());
        assert!(rl.check(&1u8).is_err());
    }

    #[test]
    fn keys_whose_allowance_is_full_again_are_forgotten() {
        let clock = FakeRelativeClock::default();
        let rl = RateLimiter::with_clock(10, Duration::from_secs(60), clock.clone());
        for key in 0..1000u32 {
            assert!(rl.check(&key).is_ok());
        }
        // Key 0 spends its whole allowance; each of the others has its one event paid back
        // after 6 s.
        while rl.check(&0).is_ok() {}
        rl.tidy();
        assert_eq!(rl.len(), 1000, "nothing is paid back yet");
        clock.advance(Duration::from_secs(12));
        rl.tidy();
        assert_eq!(rl.len(), 1, "only the key still short of its allowance");
        assert!(rl.check(&0).is_ok() && rl.check(&0).is_ok());
        assert!(rl.check(&0).is_err(), "one back every 6 s: two in 12 s");
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
