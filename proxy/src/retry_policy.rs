//! A route's `retry_policy`: which upstream outcomes are tried again, how many times, how long
//! each try may take, and how long to wait between tries (Envoy's router semantics).
//!
//! - `5xx`: any 5xx response, a reset, a connection failure, or a per-try timeout.
//! - `gateway-error`: 502, 503 and 504, resets, connection failures, per-try timeouts.
//! - `reset`: no response: a reset, a closed connection, a connection failure.
//! - `connect-failure`: the connection could not be made.
//! - `retriable-4xx`: 409. `retriable-status-codes`: the statuses in `retriable_status_codes`.
//! - `refused-stream`: an HTTP/2 stream the upstream refused.
//! - gRPC: `cancelled`, `deadline-exceeded`, `internal`, `resource-exhausted`, `unavailable`,
//!   from the `grpc-status` of a trailers-only response.
//!
//! A per-try timeout counts as a 504 for these rules, as in Envoy. Waits between tries are
//! Envoy's jittered exponential back-off: a random time below `(2^n - 1) × base_interval`
//! (25 ms by default) for the n-th retry, at most `max_interval` (10 × base by default).

use std::time::Duration;

use http::HeaderMap;

/// The `retry_on` conditions, as bits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetryOn(u16);

impl RetryOn {
    pub const FIVE_XX: RetryOn = RetryOn(1);
    pub const GATEWAY_ERROR: RetryOn = RetryOn(1 << 1);
    pub const RESET: RetryOn = RetryOn(1 << 2);
    pub const CONNECT_FAILURE: RetryOn = RetryOn(1 << 3);
    pub const RETRIABLE_4XX: RetryOn = RetryOn(1 << 4);
    pub const REFUSED_STREAM: RetryOn = RetryOn(1 << 5);
    pub const RETRIABLE_STATUS_CODES: RetryOn = RetryOn(1 << 6);
    pub const GRPC_CANCELLED: RetryOn = RetryOn(1 << 7);
    pub const GRPC_DEADLINE_EXCEEDED: RetryOn = RetryOn(1 << 8);
    pub const GRPC_INTERNAL: RetryOn = RetryOn(1 << 9);
    pub const GRPC_RESOURCE_EXHAUSTED: RetryOn = RetryOn(1 << 10);
    pub const GRPC_UNAVAILABLE: RetryOn = RetryOn(1 << 11);

    fn has(self, other: RetryOn) -> bool {
        self.0 & other.0 != 0
    }

    /// Parse Envoy's comma-separated `retry_on`; an unknown condition is named in the error.
    pub fn parse(text: &str) -> Result<RetryOn, String> {
        let mut bits = 0;
        for token in text.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            bits |= match token {
                "5xx" => Self::FIVE_XX,
                "gateway-error" => Self::GATEWAY_ERROR,
                "reset" => Self::RESET,
                "connect-failure" => Self::CONNECT_FAILURE,
                "retriable-4xx" => Self::RETRIABLE_4XX,
                "refused-stream" => Self::REFUSED_STREAM,
                "retriable-status-codes" => Self::RETRIABLE_STATUS_CODES,
                "cancelled" => Self::GRPC_CANCELLED,
                "deadline-exceeded" => Self::GRPC_DEADLINE_EXCEEDED,
                "internal" => Self::GRPC_INTERNAL,
                "resource-exhausted" => Self::GRPC_RESOURCE_EXHAUSTED,
                "unavailable" => Self::GRPC_UNAVAILABLE,
                other => return Err(format!("retry condition `{other}` not supported")),
            }
            .0;
        }
        Ok(RetryOn(bits))
    }
}

/// What an attempt came to, as far as retrying is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A response with this status.
    Status(u16),
    /// The connection could not be made (refused, timed out, TLS failed).
    ConnectFailure,
    /// No response: the stream or connection was reset or closed.
    Reset,
    /// The upstream refused the HTTP/2 stream.
    RefusedStream,
    /// The try took longer than `per_try_timeout`.
    PerTryTimeout,
}

/// A compiled `retry_policy`.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub retry_on: RetryOn,
    pub num_retries: u32,
    pub per_try_timeout: Option<Duration>,
    pub base_interval: Duration,
    pub max_interval: Duration,
    pub retriable_status_codes: Vec<u16>,
    /// `envoy.retry_host_predicates.previous_hosts`: a retry avoids the hosts already tried.
    pub previous_hosts: bool,
    /// How many picks a retry makes to find a host the predicate accepts.
    pub host_selection_max_attempts: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            retry_on: RetryOn::default(),
            num_retries: 1,
            per_try_timeout: None,
            base_interval: Duration::from_millis(25),
            max_interval: Duration::from_millis(250),
            retriable_status_codes: Vec::new(),
            previous_hosts: false,
            host_selection_max_attempts: 1,
        }
    }
}

impl RetryPolicy {
    /// Is this outcome one to try again? `headers` are the response's, for `grpc-status`.
    pub fn retriable(&self, outcome: Outcome, headers: Option<&HeaderMap>) -> bool {
        let on = self.retry_on;
        let status = match outcome {
            Outcome::ConnectFailure => {
                return on.has(RetryOn::CONNECT_FAILURE)
                    || on.has(RetryOn::RESET)
                    || on.has(RetryOn::FIVE_XX)
                    || on.has(RetryOn::GATEWAY_ERROR)
            }
            Outcome::Reset => {
                return on.has(RetryOn::RESET)
                    || on.has(RetryOn::FIVE_XX)
                    || on.has(RetryOn::GATEWAY_ERROR)
            }
            Outcome::RefusedStream => {
                return on.has(RetryOn::REFUSED_STREAM)
                    || on.has(RetryOn::RESET)
                    || on.has(RetryOn::FIVE_XX)
                    || on.has(RetryOn::GATEWAY_ERROR)
            }
            Outcome::PerTryTimeout => 504,
            Outcome::Status(s) => s,
        };
        if on.has(RetryOn::FIVE_XX) && (500..600).contains(&status) {
            return true;
        }
        if on.has(RetryOn::GATEWAY_ERROR) && matches!(status, 502..=504) {
            return true;
        }
        if on.has(RetryOn::RETRIABLE_4XX) && status == 409 {
            return true;
        }
        if on.has(RetryOn::RETRIABLE_STATUS_CODES) && self.retriable_status_codes.contains(&status)
        {
            return true;
        }
        let grpc = headers
            .and_then(|h| h.get("grpc-status"))
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u32>().ok());
        match grpc {
            Some(1) => on.has(RetryOn::GRPC_CANCELLED),
            Some(4) => on.has(RetryOn::GRPC_DEADLINE_EXCEEDED),
            Some(8) => on.has(RetryOn::GRPC_RESOURCE_EXHAUSTED),
            Some(13) => on.has(RetryOn::GRPC_INTERNAL),
            Some(14) => on.has(RetryOn::GRPC_UNAVAILABLE),
            _ => false,
        }
    }

    /// The wait before retry number `n` (1 for the first retry), drawn with `random`.
    pub fn backoff(&self, n: u32, random: u64) -> Duration {
        let base = self.base_interval.as_millis().max(1) as u64;
        let max = self.max_interval.as_millis().max(1) as u64;
        let window = ((1u64 << n.min(32)) - 1)
            .saturating_mul(base)
            .min(max)
            .max(1);
        Duration::from_millis(random % window)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn policy(on: &str) -> RetryPolicy {
        RetryPolicy {
            retry_on: RetryOn::parse(on).unwrap(),
            retriable_status_codes: vec![429],
            ..RetryPolicy::default()
        }
    }

    #[test]
    fn conditions_cover_what_envoy_documents() {
        let five = policy("5xx");
        assert!(five.retriable(Outcome::Status(500), None));
        assert!(five.retriable(Outcome::Status(503), None));
        assert!(!five.retriable(Outcome::Status(404), None));
        assert!(five.retriable(Outcome::Reset, None));
        assert!(five.retriable(Outcome::ConnectFailure, None));
        assert!(five.retriable(Outcome::PerTryTimeout, None));
        let gw = policy("gateway-error");
        assert!(!gw.retriable(Outcome::Status(500), None));
        assert!(gw.retriable(Outcome::Status(502), None));
        assert!(gw.retriable(Outcome::PerTryTimeout, None));
        let connect = policy("connect-failure");
        assert!(connect.retriable(Outcome::ConnectFailure, None));
        assert!(!connect.retriable(Outcome::Reset, None));
        assert!(!connect.retriable(Outcome::Status(503), None));
        let codes = policy("retriable-status-codes,retriable-4xx");
        assert!(codes.retriable(Outcome::Status(429), None));
        assert!(codes.retriable(Outcome::Status(409), None));
        assert!(!codes.retriable(Outcome::Status(503), None));
        let grpc = policy("unavailable,cancelled");
        let mut h = HeaderMap::new();
        h.insert("grpc-status", HeaderValue::from_static("14"));
        assert!(grpc.retriable(Outcome::Status(200), Some(&h)));
        h.insert("grpc-status", HeaderValue::from_static("13"));
        assert!(!grpc.retriable(Outcome::Status(200), Some(&h)));
        assert!(RetryOn::parse("5xx,bogus").unwrap_err().contains("`bogus`"));
    }

    #[test]
    fn backoff_windows_grow_and_are_capped() {
        let p = RetryPolicy::default();
        assert!(p.backoff(1, u64::MAX) < Duration::from_millis(25));
        assert!(p.backoff(2, u64::MAX) < Duration::from_millis(75));
        assert!(p.backoff(9, u64::MAX) < Duration::from_millis(250));
        assert_eq!(p.backoff(1, 0), Duration::ZERO);
    }
}
