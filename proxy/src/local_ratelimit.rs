//! The `envoy.filters.http.local_ratelimit` filter: a token bucket per configuration, shared by
//! every worker, as Envoy's local rate limiter.
//!
//! The configuration in effect is the route's `typed_per_filter_config`, else the virtual
//! host's, else the filter's own. It applies to `filter_enabled` of requests (none when unset);
//! a request that finds the bucket empty is refused for `filter_enforced` of requests (none when
//! unset: the shadow mode, where `request_headers_to_add_when_not_enforced` are added and the
//! request goes on). A refused request gets `status` (429 by default) with the body
//! `local_rate_limited`, the `response_headers_to_add`, and flag `RL`. Without a `token_bucket`
//! nothing is limited.
//!
//! The bucket starts full (`max_tokens`) and refills continuously at `tokens_per_fill` (default 1)
//! per `fill_interval`, never above `max_tokens`: one atomic compare-and-swap per request, no lock.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use http::StatusCode;

use crate::header_ops::HeaderOps;
use crate::metrics::{LocalRateLimitStats, Metrics};
use crate::weighted_pick::fraction_drawn;

/// A token bucket kept as one number: the instant (nanoseconds since `origin`) at which it was,
/// or would have been, empty. The tokens now are the time since then over the time one token
/// takes to come back, at most `max`.
#[derive(Debug)]
pub struct TokenBucket {
    max: i64,
    /// Nanoseconds per token (`fill_interval` / `tokens_per_fill`).
    per_token: i64,
    origin: Instant,
    empty_at: AtomicI64,
}

impl TokenBucket {
    /// A full bucket of `max` tokens refilled with `per_fill` tokens every `interval`.
    pub fn new(max: u32, per_fill: u32, interval: Duration) -> Self {
        let per_token =
            (interval.as_nanos() / u128::from(per_fill.max(1))).clamp(1, 1 << 52) as i64;
        let max = i64::from(max);
        TokenBucket {
            max,
            per_token,
            origin: Instant::now(),
            empty_at: AtomicI64::new(-max * per_token),
        }
    }

    /// Take one token if there is one.
    pub fn try_take(&self) -> bool {
        self.try_take_at(self.origin.elapsed().as_nanos().min(i64::MAX as u128) as i64)
    }

    fn try_take_at(&self, now: i64) -> bool {
        let mut current = self.empty_at.load(Ordering::Relaxed);
        loop {
            let tokens = ((now - current) / self.per_token).min(self.max);
            if tokens < 1 {
                return false;
            }
            // Full: what accrued past `max` is lost.
            let next = if tokens == self.max {
                now - (self.max - 1) * self.per_token
            } else {
                current + self.per_token
            };
            match self.empty_at.compare_exchange_weak(
                current,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(seen) => current = seen,
            }
        }
    }
}

/// A compiled `LocalRateLimit` (the filter's own, or a route's or virtual host's).
#[derive(Debug)]
pub struct LocalRateLimit {
    pub stat_prefix: String,
    /// Resolved when the connection manager holding it is compiled (`resolve_stats`).
    pub stats: OnceLock<LocalRateLimitStats>,
    pub bucket: Option<TokenBucket>,
    /// `filter_enabled` as (numerator, denominator); `None`: never enabled.
    pub enabled: Option<(u64, u64)>,
    /// `filter_enforced` as (numerator, denominator); `None`: never enforced.
    pub enforced: Option<(u64, u64)>,
    pub status: StatusCode,
    pub response_headers: HeaderOps,
    pub request_headers_when_not_enforced: HeaderOps,
}

/// What the filter decided for one request.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// Over the limit, not enforced: add `request_headers_when_not_enforced` and go on.
    Shadow,
    /// Over the limit: answer `status`.
    Refuse,
}

impl LocalRateLimit {
    /// Resolve the statistics handles (once; later calls keep the first).
    pub fn resolve_stats(&self, metrics: &Metrics) {
        self.stats
            .get_or_init(|| LocalRateLimitStats::new(metrics, &self.stat_prefix));
    }

    /// Decide for one request; `random` draws the enabled and enforced fractions.
    pub fn decide(&self, random: u64) -> Decision {
        let hit = |f: Option<(u64, u64)>, r: u64| f.is_some_and(|f| fraction_drawn(f, r));
        if !hit(self.enabled, random) {
            return Decision::Allow;
        }
        let stats = self.stats.get();
        let count = |pick: fn(&LocalRateLimitStats) -> &prometheus::IntCounter| {
            if let Some(s) = stats {
                pick(s).inc();
            }
        };
        count(|s| &s.enabled);
        match &self.bucket {
            Some(b) if !b.try_take() => {
                count(|s| &s.rate_limited);
                if hit(self.enforced, random.rotate_left(32)) {
                    count(|s| &s.enforced);
                    Decision::Refuse
                } else {
                    // Envoy's `shadow_mode` counter stays 0 here too: it counts only a
                    // descriptors' shadow mode, which is not implemented.
                    Decision::Shadow
                }
            }
            _ => {
                count(|s| &s.ok);
                Decision::Allow
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_starts_full_and_refills_at_its_rate() {
        let b = TokenBucket::new(3, 1, Duration::from_secs(1));
        let s = 1_000_000_000i64;
        assert!(b.try_take_at(0));
        assert!(b.try_take_at(0));
        assert!(b.try_take_at(0));
        assert!(!b.try_take_at(0), "empty");
        assert!(!b.try_take_at(s / 2), "half a token");
        assert!(b.try_take_at(s), "one token after the interval");
        assert!(!b.try_take_at(s));
        // Long idle: never more than max.
        for _ in 0..3 {
            assert!(b.try_take_at(100 * s));
        }
        assert!(!b.try_take_at(100 * s));
    }

    #[test]
    fn disabled_or_unenforced_never_refuses() {
        let limit = |enabled, enforced| LocalRateLimit {
            stat_prefix: "rl".into(),
            stats: OnceLock::new(),
            bucket: Some(TokenBucket::new(0, 1, Duration::from_secs(60))),
            enabled,
            enforced,
            status: StatusCode::TOO_MANY_REQUESTS,
            response_headers: HeaderOps::default(),
            request_headers_when_not_enforced: HeaderOps::default(),
        };
        assert_eq!(limit(None, Some((100, 100))).decide(7), Decision::Allow);
        assert_eq!(limit(Some((100, 100)), None).decide(7), Decision::Shadow);
        assert_eq!(
            limit(Some((100, 100)), Some((100, 100))).decide(7),
            Decision::Refuse
        );
    }
}
