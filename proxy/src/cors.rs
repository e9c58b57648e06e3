//! Envoy's CORS filter (`envoy.filters.http.cors`) with `CorsPolicy` per route and per virtual
//! host (`typed_per_filter_config`), as Istio's VirtualService `corsPolicy` is served.
//!
//! For each setting the route's policy is used when it sets it, else the virtual host's (Envoy's
//! order). A request with an allowed `Origin` is a CORS request: an `OPTIONS` with
//! `Access-Control-Request-Method` is a preflight, answered here with 200 and the allowed methods,
//! headers and max age; any other gets `Access-Control-Allow-Origin` (the request's origin),
//! `Access-Control-Allow-Credentials` and `Access-Control-Expose-Headers` on its response. An
//! origin that is not allowed gets no CORS headers, and its preflight goes upstream unless
//! `forward_not_matching_preflights` is false (then 200 without `Access-Control-Allow-Origin`).

use http::{HeaderMap, HeaderValue, Method};

use crate::matcher::StringMatcher;

const ORIGIN: &str = "origin";
const REQUEST_METHOD: &str = "access-control-request-method";
const REQUEST_PRIVATE_NETWORK: &str = "access-control-request-private-network";

/// A compiled `CorsPolicy`; `None` fields were not set (the next policy's apply).
#[derive(Debug, Clone, Default)]
pub struct CorsPolicy {
    /// `filter_enabled` as (numerator, denominator).
    pub enabled: Option<(u64, u64)>,
    pub allow_origins: Vec<StringMatcher>,
    pub allow_methods: Option<HeaderValue>,
    pub allow_headers: Option<HeaderValue>,
    pub expose_headers: Option<HeaderValue>,
    pub max_age: Option<HeaderValue>,
    pub allow_credentials: Option<bool>,
    pub allow_private_network_access: Option<bool>,
    pub forward_not_matching_preflights: Option<bool>,
}

/// What the filter does with a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CorsDecision {
    /// Not a CORS request, or one whose origin is not allowed: nothing to add.
    None,
    /// A preflight answered here with these headers (status 200).
    Preflight(HeaderMap),
    /// A CORS request: these headers go on its response.
    Response(HeaderMap),
}

/// The route's and the virtual host's policies, most specific first.
pub struct Policies<'a>(pub [Option<&'a CorsPolicy>; 2]);

impl Policies<'_> {
    fn first<T>(&self, f: impl Fn(&CorsPolicy) -> Option<T>) -> Option<T> {
        self.0.iter().flatten().find_map(|p| f(p))
    }

    fn origins(&self) -> &[StringMatcher] {
        self.0
            .iter()
            .flatten()
            .map(|p| p.allow_origins.as_slice())
            .find(|o| !o.is_empty())
            .unwrap_or(&[])
    }

    /// Decide for a request; `random` draws `filter_enabled`.
    pub fn decide(&self, method: &Method, headers: &HeaderMap, random: u64) -> CorsDecision {
        // The most specific policy decides whether the filter is on.
        let Some(policy) = self.0.iter().flatten().next() else {
            return CorsDecision::None;
        };
        let (num, den) = policy.enabled.unwrap_or((100, 100));
        if den == 0 || random % den >= num {
            return CorsDecision::None;
        }
        let Some(origin) = headers.get(ORIGIN).filter(|o| !o.is_empty()) else {
            return CorsDecision::None;
        };
        let origin_text = origin.to_str().unwrap_or("");
        // Envoy also accepts any origin when a matcher matches "*".
        let allowed = self
            .origins()
            .iter()
            .any(|m| m.matches("*") || m.matches(origin_text));
        let request_method = headers.get(REQUEST_METHOD).filter(|v| !v.is_empty());
        let Some(request_method) = request_method.filter(|_| method == Method::OPTIONS) else {
            // Not a preflight: the response carries the CORS headers if the origin is allowed.
            if !allowed {
                return CorsDecision::None;
            }
            let mut out = HeaderMap::new();
            out.insert("access-control-allow-origin", origin.clone());
            if self.first(|p| p.allow_credentials) == Some(true) {
                out.insert(
                    "access-control-allow-credentials",
                    HeaderValue::from_static("true"),
                );
            }
            if let Some(v) = self.first(|p| p.expose_headers.clone()) {
                out.insert("access-control-expose-headers", v);
            }
            return CorsDecision::Response(out);
        };
        if !allowed && self.first(|p| p.forward_not_matching_preflights) != Some(false) {
            return CorsDecision::None;
        }
        let mut out = HeaderMap::new();
        if allowed {
            out.insert("access-control-allow-origin", origin.clone());
        }
        if self.first(|p| p.allow_credentials) == Some(true) {
            out.insert(
                "access-control-allow-credentials",
                HeaderValue::from_static("true"),
            );
        }
        // `*` answers with what the preflight asks for.
        if let Some(v) = self.first(|p| p.allow_methods.clone()) {
            let v = if v == "*" { request_method.clone() } else { v };
            out.insert("access-control-allow-methods", v);
        }
        if let Some(v) = self.first(|p| p.allow_headers.clone()) {
            let asked = headers
                .get("access-control-request-headers")
                .cloned()
                .unwrap_or(HeaderValue::from_static(""));
            out.insert(
                "access-control-allow-headers",
                if v == "*" { asked } else { v },
            );
        }
        if let Some(v) = self.first(|p| p.max_age.clone()) {
            out.insert("access-control-max-age", v);
        }
        if self.first(|p| p.allow_private_network_access) == Some(true)
            && headers
                .get(REQUEST_PRIVATE_NETWORK)
                .is_some_and(|v| v.as_bytes() == b"true")
        {
            out.insert(
                "access-control-allow-private-network",
                HeaderValue::from_static("true"),
            );
        }
        // The answer to a preflight passes the filter on its way out too, as in Envoy.
        if allowed {
            if let Some(v) = self.first(|p| p.expose_headers.clone()) {
                out.insert("access-control-expose-headers", v);
            }
        }
        CorsDecision::Preflight(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::matcher::StringMatch;

    fn policy() -> CorsPolicy {
        CorsPolicy {
            allow_origins: vec![StringMatcher::new(StringMatch::Suffix(
                ".example.com".into(),
            ))],
            allow_methods: Some(HeaderValue::from_static("GET,POST")),
            expose_headers: Some(HeaderValue::from_static("x-trace")),
            max_age: Some(HeaderValue::from_static("600")),
            allow_credentials: Some(true),
            ..CorsPolicy::default()
        }
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn preflights_are_answered_and_simple_requests_get_headers() {
        let p = policy();
        let ps = Policies([Some(&p), None]);
        let pre = headers(&[
            ("origin", "https://a.example.com"),
            (REQUEST_METHOD, "POST"),
        ]);
        let CorsDecision::Preflight(h) = ps.decide(&Method::OPTIONS, &pre, 0) else {
            panic!("not a preflight");
        };
        assert_eq!(h["access-control-allow-origin"], "https://a.example.com");
        assert_eq!(h["access-control-allow-methods"], "GET,POST");
        assert_eq!(h["access-control-max-age"], "600");
        assert_eq!(h["access-control-expose-headers"], "x-trace");
        let simple = headers(&[("origin", "https://a.example.com")]);
        let CorsDecision::Response(h) = ps.decide(&Method::GET, &simple, 0) else {
            panic!("not a CORS request");
        };
        assert_eq!(h["access-control-expose-headers"], "x-trace");
        assert_eq!(h["access-control-allow-credentials"], "true");
        let foreign = headers(&[("origin", "https://evil.test"), (REQUEST_METHOD, "GET")]);
        assert_eq!(ps.decide(&Method::OPTIONS, &foreign, 0), CorsDecision::None);
        assert_eq!(
            ps.decide(&Method::GET, &HeaderMap::new(), 0),
            CorsDecision::None
        );
    }

    #[test]
    fn the_route_policy_wins_field_by_field() {
        let vhost = policy();
        let route = CorsPolicy {
            enabled: Some((0, 100)),
            ..CorsPolicy::default()
        };
        let simple = headers(&[("origin", "https://a.example.com")]);
        let ps = Policies([Some(&route), Some(&vhost)]);
        assert_eq!(
            ps.decide(&Method::GET, &simple, 0),
            CorsDecision::None,
            "disabled"
        );
        let route = CorsPolicy {
            allow_methods: Some(HeaderValue::from_static("PUT")),
            ..CorsPolicy::default()
        };
        let ps = Policies([Some(&route), Some(&vhost)]);
        let pre = headers(&[("origin", "https://b.example.com"), (REQUEST_METHOD, "PUT")]);
        let CorsDecision::Preflight(h) = ps.decide(&Method::OPTIONS, &pre, 0) else {
            panic!("origins come from the virtual host");
        };
        assert_eq!(h["access-control-allow-methods"], "PUT");
        assert_eq!(h["access-control-max-age"], "600");
    }
}
