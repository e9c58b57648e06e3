//! Envoy's HTTP fault injection filter (`envoy.filters.http.fault`, `HTTPFault`): delay a
//! request, abort it with a status, or both, for a share of the requests.
//!
//! Istio's VirtualService `fault` becomes this filter with a per-route configuration
//! (`typed_per_filter_config`), which replaces the filter's own configuration for that route, as
//! in Envoy. The order is Envoy's: `max_active_faults`, `upstream_cluster`, `downstream_nodes`
//! and `headers` must all allow the fault; then a delay is drawn, and the abort is drawn
//! independently (a delayed request can also be aborted, after its delay). With `header_delay`
//! or `header_abort`, the request's `x-envoy-fault-*` headers give the delay or status, and may
//! lower (never raise) the configured percentage.

use std::time::Duration;

use http::{HeaderMap, StatusCode};

use crate::matcher::{HeaderMatcher, RequestView};
use crate::weighted_pick::fraction_drawn;

const DELAY_REQUEST: &str = "x-envoy-fault-delay-request";
const DELAY_PERCENTAGE: &str = "x-envoy-fault-delay-request-percentage";
const ABORT_REQUEST: &str = "x-envoy-fault-abort-request";
const ABORT_GRPC_REQUEST: &str = "x-envoy-fault-abort-grpc-request";
const ABORT_PERCENTAGE: &str = "x-envoy-fault-abort-request-percentage";
const DOWNSTREAM_NODE: &str = "x-envoy-downstream-service-node";

/// Where the delay comes from.
#[derive(Debug, Clone)]
pub enum DelaySource {
    Fixed(Duration),
    /// `header_delay`: milliseconds in `x-envoy-fault-delay-request`.
    Header,
}

/// Where the abort status comes from.
#[derive(Debug, Clone)]
pub enum AbortSource {
    Http(StatusCode),
    Grpc(u32),
    /// `header_abort`: `x-envoy-fault-abort-request` or `x-envoy-fault-abort-grpc-request`.
    Header,
}

#[derive(Debug, Clone)]
pub struct FaultDelay {
    pub source: DelaySource,
    /// (numerator, denominator); an absent `percentage` is 0 %, as in Envoy.
    pub percentage: (u64, u64),
}

#[derive(Debug, Clone)]
pub struct FaultAbort {
    pub source: AbortSource,
    pub percentage: (u64, u64),
}

/// A compiled `HTTPFault`.
#[derive(Debug, Clone, Default)]
pub struct FaultConfig {
    pub delay: Option<FaultDelay>,
    pub abort: Option<FaultAbort>,
    pub upstream_cluster: Option<String>,
    pub headers: Vec<HeaderMatcher>,
    pub downstream_nodes: Vec<String>,
    pub max_active_faults: Option<u64>,
}

/// How an aborted request is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Abort {
    Http(StatusCode),
    /// gRPC status in a trailers-only response (HTTP 200).
    Grpc(u32),
}

/// The faults drawn for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FaultPlan {
    pub delay: Option<Duration>,
    pub abort: Option<Abort>,
}

/// What a request offers to the fault decision.
pub struct FaultInput<'a> {
    pub view: &'a RequestView<'a>,
    /// The cluster the route chose, for `upstream_cluster`.
    pub cluster: Option<&'a str>,
    /// Faults active now (for `max_active_faults`).
    pub active: u64,
    /// Two independent random values: the delay's draw and the abort's.
    pub random: [u64; 2],
}

/// The outcome when a fault is not injected because `max_active_faults` are active.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultDecision {
    None,
    Overflow,
    Inject(FaultPlan),
}

impl FaultConfig {
    /// Does this configuration inject anything at all? Istio's listener-level filter has none.
    pub fn is_active(&self) -> bool {
        self.delay.is_some() || self.abort.is_some()
    }

    /// Draw the faults of one request.
    pub fn decide(&self, input: &FaultInput<'_>) -> FaultDecision {
        if !self.is_active() {
            return FaultDecision::None;
        }
        if self.max_active_faults.is_some_and(|m| input.active >= m) {
            return FaultDecision::Overflow;
        }
        if let Some(want) = &self.upstream_cluster {
            if input.cluster != Some(want.as_str()) {
                return FaultDecision::None;
            }
        }
        let headers = input.view.headers;
        if !self.downstream_nodes.is_empty() {
            let node = headers.get(DOWNSTREAM_NODE).and_then(|v| v.to_str().ok());
            if !node.is_some_and(|n| self.downstream_nodes.iter().any(|d| d == n)) {
                return FaultDecision::None;
            }
        }
        if !self.headers.iter().all(|m| m.matches(input.view)) {
            return FaultDecision::None;
        }
        let delay = self.delay.as_ref().and_then(|d| {
            let duration = match &d.source {
                DelaySource::Fixed(t) => *t,
                DelaySource::Header => Duration::from_millis(header_u64(headers, DELAY_REQUEST)?),
            };
            let pct = header_percentage(&d.source, headers, DELAY_PERCENTAGE, d.percentage);
            (fraction_drawn(pct, input.random[0]) && !duration.is_zero()).then_some(duration)
        });
        let abort = self.abort.as_ref().and_then(|a| {
            let abort = match &a.source {
                AbortSource::Http(s) => Abort::Http(*s),
                AbortSource::Grpc(g) => Abort::Grpc(*g),
                AbortSource::Header => header_abort(headers)?,
            };
            let header_controlled = matches!(a.source, AbortSource::Header);
            let pct = if header_controlled {
                lowered(headers, ABORT_PERCENTAGE, a.percentage)
            } else {
                a.percentage
            };
            fraction_drawn(pct, input.random[1]).then_some(abort)
        });
        if delay.is_none() && abort.is_none() {
            return FaultDecision::None;
        }
        FaultDecision::Inject(FaultPlan { delay, abort })
    }
}

fn header_u64(headers: &HeaderMap, name: &str) -> Option<u64> {
    headers.get(name)?.to_str().ok()?.trim().parse().ok()
}

/// A header-controlled fault's percentage: the header's numerator, at most the configured one.
fn header_percentage(
    source: &DelaySource,
    headers: &HeaderMap,
    name: &str,
    configured: (u64, u64),
) -> (u64, u64) {
    match source {
        DelaySource::Header => lowered(headers, name, configured),
        DelaySource::Fixed(_) => configured,
    }
}

fn lowered(headers: &HeaderMap, name: &str, (num, den): (u64, u64)) -> (u64, u64) {
    match header_u64(headers, name) {
        Some(h) => (h.min(num), den),
        None => (num, den),
    }
}

/// The status an `x-envoy-fault-abort-*` header asks for: HTTP in [200, 600), gRPC in [0, 16].
fn header_abort(headers: &HeaderMap) -> Option<Abort> {
    if let Some(code) = header_u64(headers, ABORT_REQUEST) {
        return u16::try_from(code)
            .ok()
            .filter(|c| (200..600).contains(c))
            .and_then(|c| StatusCode::from_u16(c).ok())
            .map(Abort::Http);
    }
    let grpc = header_u64(headers, ABORT_GRPC_REQUEST)?;
    u32::try_from(grpc)
        .ok()
        .filter(|g| *g <= 16)
        .map(Abort::Grpc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn view(headers: &HeaderMap) -> RequestView<'_> {
        RequestView {
            method: "GET",
            scheme: "http",
            authority: "example.com",
            path: "/",
            query: "",
            path_and_query: "/",
            headers,
        }
    }

    fn decide(c: &FaultConfig, headers: &HeaderMap, random: [u64; 2]) -> FaultDecision {
        c.decide(&FaultInput {
            view: &view(headers),
            cluster: Some("ratings"),
            active: 0,
            random,
        })
    }

    fn abort_503(pct: u64) -> FaultConfig {
        FaultConfig {
            abort: Some(FaultAbort {
                source: AbortSource::Http(StatusCode::SERVICE_UNAVAILABLE),
                percentage: (pct, 100),
            }),
            ..FaultConfig::default()
        }
    }

    #[test]
    fn percentages_draw_from_their_own_random_value() {
        let c = FaultConfig {
            delay: Some(FaultDelay {
                source: DelaySource::Fixed(Duration::from_secs(2)),
                percentage: (50, 100),
            }),
            ..abort_503(10)
        };
        let h = HeaderMap::new();
        let plan = |r| match decide(&c, &h, r) {
            FaultDecision::Inject(p) => (p.delay.is_some(), p.abort.is_some()),
            _ => (false, false),
        };
        assert_eq!(plan([49, 9]), (true, true));
        assert_eq!(plan([50, 9]), (false, true));
        assert_eq!(plan([49, 10]), (true, false));
        assert_eq!(plan([150, 110]), (false, false));
    }

    #[test]
    fn cluster_nodes_and_overflow_gate_the_fault() {
        let h = HeaderMap::new();
        let mut c = abort_503(100);
        c.upstream_cluster = Some("reviews".into());
        assert_eq!(decide(&c, &h, [0, 0]), FaultDecision::None);
        c.upstream_cluster = Some("ratings".into());
        assert!(matches!(decide(&c, &h, [0, 0]), FaultDecision::Inject(_)));
        c.downstream_nodes = vec!["node-a".into()];
        assert_eq!(decide(&c, &h, [0, 0]), FaultDecision::None);
        let mut h2 = HeaderMap::new();
        h2.insert(DOWNSTREAM_NODE, HeaderValue::from_static("node-a"));
        assert!(matches!(decide(&c, &h2, [0, 0]), FaultDecision::Inject(_)));
        c.max_active_faults = Some(2);
        let overflow = c.decide(&FaultInput {
            view: &view(&h2),
            cluster: Some("ratings"),
            active: 2,
            random: [0, 0],
        });
        assert_eq!(overflow, FaultDecision::Overflow);
    }

    #[test]
    fn headers_control_faults_only_when_configured_and_never_raise_the_percentage() {
        let c = FaultConfig {
            delay: Some(FaultDelay {
                source: DelaySource::Header,
                percentage: (50, 100),
            }),
            abort: Some(FaultAbort {
                source: AbortSource::Header,
                percentage: (100, 100),
            }),
            ..FaultConfig::default()
        };
        let mut h = HeaderMap::new();
        assert_eq!(decide(&c, &h, [0, 0]), FaultDecision::None, "no headers");
        h.insert(DELAY_REQUEST, HeaderValue::from_static("250"));
        h.insert(DELAY_PERCENTAGE, HeaderValue::from_static("90"));
        h.insert(ABORT_REQUEST, HeaderValue::from_static("429"));
        h.insert(ABORT_PERCENTAGE, HeaderValue::from_static("20"));
        let plan = |h: &HeaderMap, r| match decide(&c, h, r) {
            FaultDecision::Inject(p) => (p.delay, p.abort),
            _ => (None, None),
        };
        let delay = Some(Duration::from_millis(250));
        let abort = Some(Abort::Http(StatusCode::TOO_MANY_REQUESTS));
        assert_eq!(plan(&h, [49, 19]), (delay, abort));
        assert_eq!(
            plan(&h, [50, 20]),
            (None, None),
            "90 % capped at 50 %; 20 %"
        );
        h.insert(ABORT_REQUEST, HeaderValue::from_static("700"));
        assert_eq!(plan(&h, [0, 0]), (delay, None), "status out of range");
        h.remove(ABORT_REQUEST);
        h.insert(ABORT_GRPC_REQUEST, HeaderValue::from_static("14"));
        assert_eq!(plan(&h, [99, 0]), (None, Some(Abort::Grpc(14))));
        // A fixed abort ignores the headers.
        assert!(
            matches!(decide(&abort_503(0), &h, [0, 0]), FaultDecision::None),
            "0 %"
        );
    }
}
