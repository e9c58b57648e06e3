//! The CSRF filter (`envoy.filters.http.csrf`), as Envoy decides.
//!
//! A request with a mutating method (POST, PUT, DELETE, PATCH) must come from its own origin:
//! the host and port of its `origin` header (else of its `referer`) must equal its `host` (or
//! `:authority`), or match one of `additional_origins`. A request without a source origin (none,
//! or one that is not a URL, like `null`) is refused too, and counted as missing, not invalid. The policy in force is the route's, else the virtual host's, else the filter's;
//! `filter_enabled` enforces it (403 `Invalid origin`), `shadow_enabled` only counts.
//! Statistics: `http.PREFIX.csrf.request_valid`, `request_invalid`, `missing_source_origin`.

use http::{HeaderMap, Method};
use prometheus::IntCounter;

use crate::matcher::StringMatcher;
use crate::metrics::Metrics;
use crate::weighted_pick::fraction_drawn;

/// `envoy.extensions.filters.http.csrf.v3.CsrfPolicy`.
#[derive(Debug, Clone)]
pub struct CsrfPolicy {
    /// `filter_enabled` as (numerator, denominator).
    pub enabled: (u64, u64),
    /// `shadow_enabled`; `None`: no shadow mode.
    pub shadow: Option<(u64, u64)>,
    pub additional_origins: Vec<StringMatcher>,
}

/// The filter's counters.
#[derive(Debug)]
pub struct CsrfStats {
    valid: IntCounter,
    invalid: IntCounter,
    missing_source_origin: IntCounter,
}

impl CsrfStats {
    pub fn new(m: &Metrics, hcm_prefix: &str) -> Result<CsrfStats, prometheus::Error> {
        let c = |stat: &str| -> Result<IntCounter, prometheus::Error> {
            Ok(m.named_counter(
                &format!("envoy_http_csrf_{stat}"),
                "CSRF filter statistic (Envoy's)",
                &["envoy_http_conn_manager_prefix"],
            )?
            .with_label_values(&[hcm_prefix]))
        };
        Ok(CsrfStats {
            valid: c("request_valid")?,
            invalid: c("request_invalid")?,
            missing_source_origin: c("missing_source_origin")?,
        })
    }
}

/// The CSRF filter of one connection manager.
#[derive(Debug)]
pub struct CsrfFilter {
    pub own: CsrfPolicy,
    pub stats: CsrfStats,
}

/// The host and port of an absolute URL (`scheme://host[:port]/…`); `None` for a value that is
/// not one (`null`, a bare host), which Envoy treats as no origin at all.
fn url_host_and_port(value: &str) -> Option<&str> {
    let (scheme, rest) = value.split_once("://")?;
    if scheme.is_empty() {
        return None;
    }
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..end];
    // Credentials are not part of the origin.
    let authority = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    (!authority.is_empty()).then_some(authority)
}

/// The target origin: the `host` (or `:authority`) as sent, or the host and port of a URL.
fn target_origin(host: &str) -> &str {
    url_host_and_port(host).unwrap_or(host)
}

impl CsrfFilter {
    /// Whether the request may go on: `policy` is the route's, the virtual host's or the
    /// filter's own; `host` the request's `host` or `:authority` as sent.
    pub fn allows(
        &self,
        policy: &CsrfPolicy,
        method: &Method,
        host: &str,
        headers: &HeaderMap,
        random: u64,
    ) -> bool {
        let enabled = fraction_drawn(policy.enabled, random);
        let shadow = policy.shadow.is_some_and(|s| fraction_drawn(s, random));
        if !enabled && !shadow {
            return true;
        }
        if !matches!(
            *method,
            Method::POST | Method::PUT | Method::DELETE | Method::PATCH
        ) {
            return true;
        }
        let header = |name: http::header::HeaderName| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(url_host_and_port)
        };
        let source = header(http::header::ORIGIN).or_else(|| header(http::header::REFERER));
        let valid = match source {
            // As Envoy counts: a missing origin is not also an invalid one.
            None => {
                self.stats.missing_source_origin.inc();
                false
            }
            Some(source) => {
                let ok = source == target_origin(host)
                    || policy.additional_origins.iter().any(|m| m.matches(source));
                if !ok {
                    self.stats.invalid.inc();
                }
                ok
            }
        };
        if valid {
            self.stats.valid.inc();
            return true;
        }
        // Shadow mode alone only counts.
        !enabled
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_read_as_envoy_reads_them() {
        let o = url_host_and_port;
        assert_eq!(o("https://shop.example.com"), Some("shop.example.com"));
        assert_eq!(o("http://a.test:8080/x?y"), Some("a.test:8080"));
        assert_eq!(o("https://u:p@a.test/"), Some("a.test"));
        assert_eq!(o("null"), None);
        assert_eq!(target_origin("a.test:10000"), "a.test:10000");
    }
}
