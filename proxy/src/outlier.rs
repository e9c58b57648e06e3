//! Outlier detection (a cluster's `outlier_detection`, Istio's DestinationRule
//! `outlierDetection`): an endpoint that fails too many times in a row is ejected from load
//! balancing for a while, as Envoy does.
//!
//! - `consecutive_5xx` (default 5) 5xx responses in a row eject, when drawn under
//!   `enforcing_consecutive_5xx` (default 100 %).
//! - `consecutive_gateway_failure` (default 5) 502, 503 or 504 in a row eject, under
//!   `enforcing_consecutive_gateway_failure` (default 0 %: off).
//! - Connection failures, resets and timeouts count as gateway failures (a 503), or, with
//!   `split_external_local_origin_errors`, toward `consecutive_local_origin_failure` (default 5,
//!   enforced at 100 %).
//! - An ejection lasts `base_ejection_time` (30 s) times the number of times the endpoint was
//!   ejected, at most `max_ejection_time` (300 s); no more than `max_ejection_percent` (10 %) of
//!   the cluster's endpoints are out at once. Envoy returns an endpoint at the first `interval`
//!   tick after its time; Sluice returns it when its time is up.
//!
//! Success-rate and failure-percentage ejection are not implemented; a cluster that leaves
//! `enforcing_success_rate` on gets a warning when it is compiled.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A compiled `outlier_detection`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutlierConfig {
    pub consecutive_5xx: u32,
    pub enforcing_consecutive_5xx: u64,
    pub consecutive_gateway_failure: u32,
    pub enforcing_consecutive_gateway_failure: u64,
    pub split_local_origin: bool,
    pub consecutive_local_origin_failure: u32,
    pub enforcing_consecutive_local_origin_failure: u64,
    pub base_ejection_time: Duration,
    pub max_ejection_time: Duration,
    pub max_ejection_percent: u64,
}

impl Default for OutlierConfig {
    fn default() -> Self {
        OutlierConfig {
            consecutive_5xx: 5,
            enforcing_consecutive_5xx: 100,
            consecutive_gateway_failure: 5,
            enforcing_consecutive_gateway_failure: 0,
            split_local_origin: false,
            consecutive_local_origin_failure: 5,
            enforcing_consecutive_local_origin_failure: 100,
            base_ejection_time: Duration::from_secs(30),
            max_ejection_time: Duration::from_secs(300),
            max_ejection_percent: 10,
        }
    }
}

/// What one upstream attempt came to, for outlier detection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observed {
    Status(u16),
    /// No response from the endpoint: connection failure, reset, timeout.
    LocalOrigin,
}

/// An endpoint's failures in a row (kept with the endpoint).
#[derive(Debug, Default)]
pub struct FailureCounts {
    five_xx: AtomicU32,
    gateway: AtomicU32,
    local: AtomicU32,
}

/// Why an endpoint is to be ejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EjectReason {
    Consecutive5xx,
    ConsecutiveGatewayFailure,
    ConsecutiveLocalOriginFailure,
}

fn bump(c: &AtomicU32) -> u32 {
    c.fetch_add(1, Ordering::Relaxed).saturating_add(1)
}

fn clear(c: &AtomicU32) {
    // A load first: the common case (already zero) writes nothing.
    if c.load(Ordering::Relaxed) != 0 {
        c.store(0, Ordering::Relaxed);
    }
}

impl FailureCounts {
    /// Count an attempt; `Some` when a threshold is reached and its enforcement drawn with
    /// `random` (then the counts start again).
    pub fn observe(&self, c: &OutlierConfig, o: Observed, random: u64) -> Option<EjectReason> {
        let drawn = |pct: u64| random % 100 < pct;
        let (five, gateway) = match o {
            Observed::Status(s) if s >= 500 => (true, matches!(s, 502..=504)),
            Observed::Status(_) => {
                clear(&self.five_xx);
                clear(&self.gateway);
                if c.split_local_origin {
                    clear(&self.local);
                }
                return None;
            }
            Observed::LocalOrigin if c.split_local_origin => {
                if bump(&self.local) >= c.consecutive_local_origin_failure {
                    clear(&self.local);
                    return drawn(c.enforcing_consecutive_local_origin_failure)
                        .then_some(EjectReason::ConsecutiveLocalOriginFailure);
                }
                return None;
            }
            // Without the split, a local failure counts as a 503 from the endpoint.
            Observed::LocalOrigin => (true, true),
        };
        let mut reason = None;
        if gateway {
            if bump(&self.gateway) >= c.consecutive_gateway_failure
                && drawn(c.enforcing_consecutive_gateway_failure)
            {
                reason = Some(EjectReason::ConsecutiveGatewayFailure);
            }
        } else {
            clear(&self.gateway);
        }
        if five && bump(&self.five_xx) >= c.consecutive_5xx && drawn(c.enforcing_consecutive_5xx) {
            reason = Some(EjectReason::Consecutive5xx);
        }
        if reason.is_some() {
            clear(&self.five_xx);
            clear(&self.gateway);
        }
        reason
    }
}

#[derive(Debug, Default)]
struct Ejection {
    until: Option<Instant>,
    times: u32,
}

/// The ejections of one cluster's endpoints, by address. Touched only when an endpoint reaches
/// a threshold or its time is up, never on a request that succeeds.
#[derive(Debug)]
pub struct Detector {
    pub config: OutlierConfig,
    ejections: Mutex<HashMap<SocketAddr, Ejection>>,
}

impl Detector {
    pub fn new(config: OutlierConfig) -> Self {
        Detector {
            config,
            ejections: Mutex::new(HashMap::new()),
        }
    }

    /// Eject `addr` among `total` endpoints, now: the time it stays out, or `None` when it is out
    /// already or `max_ejection_percent` would be passed.
    pub fn eject(&self, addr: SocketAddr, total: usize, now: Instant) -> Option<Duration> {
        let mut map = self.ejections.lock().unwrap_or_else(|e| e.into_inner());
        let out = map
            .values()
            .filter(|e| e.until.is_some_and(|u| u > now))
            .count();
        let entry = map.entry(addr).or_default();
        if entry.until.is_some_and(|u| u > now) {
            return None;
        }
        if (out as u64 + 1) * 100 > total as u64 * self.config.max_ejection_percent {
            return None;
        }
        entry.times = entry.times.saturating_add(1);
        let max = self
            .config
            .max_ejection_time
            .max(self.config.base_ejection_time);
        let time = self
            .config
            .base_ejection_time
            .saturating_mul(entry.times)
            .min(max);
        entry.until = Some(now + time);
        Some(time)
    }

    /// Is `addr` ejected at `now`?
    pub fn is_ejected(&self, addr: SocketAddr, now: Instant) -> bool {
        let map = self.ejections.lock().unwrap_or_else(|e| e.into_inner());
        map.get(&addr)
            .and_then(|e| e.until)
            .is_some_and(|u| u > now)
    }

    /// How many endpoints are ejected at `now`.
    pub fn ejected(&self, now: Instant) -> usize {
        let map = self.ejections.lock().unwrap_or_else(|e| e.into_inner());
        map.values()
            .filter(|e| e.until.is_some_and(|u| u > now))
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn five_in_a_row_eject_and_a_success_starts_again() {
        let c = OutlierConfig::default();
        let f = FailureCounts::default();
        for _ in 0..4 {
            assert_eq!(f.observe(&c, Observed::Status(500), 0), None);
        }
        assert_eq!(f.observe(&c, Observed::Status(200), 0), None);
        for _ in 0..4 {
            assert_eq!(f.observe(&c, Observed::Status(503), 0), None);
        }
        assert_eq!(
            f.observe(&c, Observed::Status(503), 0),
            Some(EjectReason::Consecutive5xx)
        );
        // Local failures count as 5xx without the split, toward their own count with it.
        for _ in 0..4 {
            assert_eq!(f.observe(&c, Observed::LocalOrigin, 0), None);
        }
        assert_eq!(
            f.observe(&c, Observed::LocalOrigin, 0),
            Some(EjectReason::Consecutive5xx)
        );
        let split = OutlierConfig {
            split_local_origin: true,
            consecutive_local_origin_failure: 2,
            ..OutlierConfig::default()
        };
        assert_eq!(f.observe(&split, Observed::LocalOrigin, 0), None);
        assert_eq!(
            f.observe(&split, Observed::LocalOrigin, 0),
            Some(EjectReason::ConsecutiveLocalOriginFailure)
        );
    }

    #[test]
    fn gateway_failures_are_enforced_only_when_asked() {
        let f = FailureCounts::default();
        let on = OutlierConfig {
            consecutive_5xx: 100,
            consecutive_gateway_failure: 2,
            enforcing_consecutive_gateway_failure: 100,
            ..OutlierConfig::default()
        };
        assert_eq!(f.observe(&on, Observed::Status(502), 0), None);
        assert_eq!(
            f.observe(&on, Observed::Status(504), 0),
            Some(EjectReason::ConsecutiveGatewayFailure)
        );
        let off = OutlierConfig {
            consecutive_gateway_failure: 2,
            ..on.clone()
        };
        let off = OutlierConfig {
            enforcing_consecutive_gateway_failure: 0,
            ..off
        };
        assert_eq!(f.observe(&off, Observed::Status(502), 0), None);
        assert_eq!(f.observe(&off, Observed::Status(502), 0), None);
    }

    #[test]
    fn ejections_grow_and_respect_the_percentage() {
        let d = Detector::new(OutlierConfig {
            max_ejection_percent: 50,
            base_ejection_time: Duration::from_secs(10),
            max_ejection_time: Duration::from_secs(25),
            ..OutlierConfig::default()
        });
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:2".parse().unwrap();
        let t0 = Instant::now();
        assert_eq!(d.eject(a, 4, t0), Some(Duration::from_secs(10)));
        assert_eq!(d.eject(a, 4, t0), None, "already out");
        assert!(d.is_ejected(a, t0 + Duration::from_secs(9)));
        assert!(!d.is_ejected(a, t0 + Duration::from_secs(11)));
        assert_eq!(d.eject(b, 4, t0), Some(Duration::from_secs(10)));
        let c: SocketAddr = "127.0.0.1:3".parse().unwrap();
        assert_eq!(d.eject(c, 4, t0), None, "a third of four is past 50 %");
        let later = t0 + Duration::from_secs(11);
        assert_eq!(d.eject(a, 4, later), Some(Duration::from_secs(20)));
        let much_later = later + Duration::from_secs(21);
        assert_eq!(
            d.eject(a, 4, much_later),
            Some(Duration::from_secs(25)),
            "capped"
        );
        assert_eq!(d.ejected(much_later), 1);
    }
}
