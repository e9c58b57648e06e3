//! VirtualService `http` routes to Envoy routes, in order: each `match` entry becomes one Envoy
//! route with the same action (Istio ORs the entries), a route without `match` matches
//! everything. Only the routes that apply to the proxy's gateway (or to `mesh` for sidecars)
//! and to the listener's port are emitted.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Map, Value};
use sluice_config::istio::{
    Destination, Fault, HeaderOperations, Headers, HttpMatch, HttpRoute, Percent, StringMatch,
    VirtualService,
};

use crate::cluster_translate::{proto_duration, ClusterSet};
use crate::naming::{cluster_name, resolve_host};
use crate::registry::Registry;

const FAULT_FILTER: &str = "envoy.filters.http.fault";
const FAULT_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault";
const CORS_FILTER: &str = "envoy.filters.http.cors";
const CORS_POLICY_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy";

/// Where routes are being built.
pub struct RouteContext<'a> {
    pub registry: &'a Registry,
    pub clusters: &'a ClusterSet,
    /// Gateway references (`namespace/name`, or `mesh` for sidecars) this proxy serves here.
    pub gateways: &'a BTreeSet<String>,
    /// The port requests arrive on (gateway server port, or the service port of a sidecar's
    /// virtual host): `match.port` is compared with it.
    pub port: u32,
    /// For sidecars, the service port of the virtual host: a destination without a port uses it.
    pub service_port: Option<u32>,
    /// The proxy the routes are for: `sourceLabels` and `sourceNamespace` match it.
    pub source: &'a Source<'a>,
}

/// The proxy routes are built for, as a match's source sees it.
#[derive(Debug, Clone, Copy)]
pub struct Source<'a> {
    pub labels: &'a BTreeMap<String, String>,
    pub namespace: &'a str,
}

impl Source<'_> {
    /// Istio's source match: a match that names gateways is decided by them alone; otherwise
    /// its `sourceLabels` must all be the proxy's and its `sourceNamespace` the proxy's.
    pub fn matches(
        &self,
        gateways: &[String],
        labels: &BTreeMap<String, String>,
        namespace: Option<&str>,
    ) -> bool {
        if !gateways.is_empty() {
            return true;
        }
        labels.iter().all(|(k, v)| self.labels.get(k) == Some(v))
            && namespace.is_none_or(|ns| ns == self.namespace)
    }
}

/// What the emitted routes need from their listener.
#[derive(Debug, Default)]
pub struct RouteNeeds {
    pub fault_filter: bool,
    pub cors_filter: bool,
}

/// A gateway reference as written in a VirtualService of `namespace`, made `namespace/name`.
pub fn gateway_ref(g: &str, namespace: &str) -> String {
    if g == "mesh" || g.contains('/') {
        g.to_string()
    } else {
        format!("{namespace}/{g}")
    }
}

fn string_matcher(m: &StringMatch) -> Option<Value> {
    if let Some(e) = &m.exact {
        Some(json!({"exact": e}))
    } else if let Some(p) = &m.prefix {
        Some(json!({"prefix": p}))
    } else {
        m.regex
            .as_ref()
            .map(|r| json!({"safe_regex": {"regex": r}}))
    }
}

fn header_matcher(name: &str, m: &StringMatch, invert: bool) -> Value {
    let mut h = Map::new();
    h.insert("name".into(), json!(name));
    match string_matcher(m) {
        Some(sm) => h.insert("string_match".into(), sm),
        None => h.insert("present_match".into(), json!(true)),
    };
    if invert {
        h.insert("invert_match".into(), json!(true));
    }
    Value::Object(h)
}

fn route_match(m: &HttpMatch) -> Value {
    let mut out = Map::new();
    match &m.uri {
        Some(StringMatch { exact: Some(e), .. }) => out.insert("path".into(), json!(e)),
        Some(StringMatch {
            prefix: Some(p), ..
        }) => out.insert("prefix".into(), json!(p)),
        // Envoy's `case_sensitive` does not apply to regexes: Istio makes the regex itself
        // case-insensitive.
        Some(StringMatch { regex: Some(r), .. }) if m.ignore_uri_case => {
            out.insert("safe_regex".into(), json!({"regex": format!("(?i){r}")}))
        }
        Some(StringMatch { regex: Some(r), .. }) => {
            out.insert("safe_regex".into(), json!({"regex": r}))
        }
        _ => out.insert("prefix".into(), json!("/")),
    };
    if m.ignore_uri_case {
        out.insert("case_sensitive".into(), json!(false));
    }
    let mut headers = Vec::new();
    for (pseudo, sm) in [
        (":method", &m.method),
        (":authority", &m.authority),
        (":scheme", &m.scheme),
    ] {
        if let Some(sm) = sm {
            headers.push(header_matcher(pseudo, sm, false));
        }
    }
    for (name, sm) in &m.headers {
        headers.push(header_matcher(name, sm, false));
    }
    for (name, sm) in &m.without_headers {
        headers.push(header_matcher(name, sm, true));
    }
    if !headers.is_empty() {
        out.insert("headers".into(), Value::Array(headers));
    }
    if !m.query_params.is_empty() {
        let q: Vec<Value> = m
            .query_params
            .iter()
            .map(|(name, sm)| match string_matcher(sm) {
                Some(s) => json!({"name": name, "string_match": s}),
                None => json!({"name": name, "present_match": true}),
            })
            .collect();
        out.insert("query_parameters".into(), Value::Array(q));
    }
    Value::Object(out)
}

fn header_ops(
    ops: &Option<HeaderOperations>,
    add_key: &str,
    remove_key: &str,
    out: &mut Map<String, Value>,
) {
    let Some(ops) = ops else { return };
    let mut add: Vec<Value> = out
        .get(add_key)
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for (k, v) in &ops.set {
        add.push(json!({"header": {"key": k, "value": v}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}));
    }
    for (k, v) in &ops.add {
        add.push(
            json!({"header": {"key": k, "value": v}, "append_action": "APPEND_IF_EXISTS_OR_ADD"}),
        );
    }
    if !add.is_empty() {
        out.insert(add_key.into(), Value::Array(add));
    }
    if !ops.remove.is_empty() {
        let mut rm: Vec<Value> = out
            .get(remove_key)
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        rm.extend(ops.remove.iter().map(|r| json!(r)));
        out.insert(remove_key.into(), Value::Array(rm));
    }
}

/// Request/response header operations of an Istio `Headers` into `out`.
fn apply_headers(h: &Option<Headers>, out: &mut Map<String, Value>) {
    let Some(h) = h else { return };
    header_ops(
        &h.request,
        "request_headers_to_add",
        "request_headers_to_remove",
        out,
    );
    header_ops(
        &h.response,
        "response_headers_to_add",
        "response_headers_to_remove",
        out,
    );
}

/// A percentage as Envoy's `FractionalPercent` over a million.
fn fraction(p: f64) -> Value {
    json!({"numerator": (p * 10_000.0).round() as u64, "denominator": "MILLION"})
}

impl RouteContext<'_> {
    /// The cluster a destination names, as Istio names it.
    pub fn cluster_for(
        &self,
        d: &Destination,
        namespace: &str,
        warnings: &mut Vec<String>,
    ) -> String {
        let fqdn = resolve_host(&d.host, namespace);
        let svc = self.registry.get(&fqdn);
        let port = d.port.and_then(|p| p.number).or_else(|| match svc {
            Some(s) if s.ports.len() == 1 => Some(s.ports[0].number),
            Some(s) => self.service_port.filter(|p| s.port(*p).is_some()),
            None => self.service_port,
        });
        let port = port.unwrap_or_else(|| {
            warnings.push(format!(
                "destination `{}`: the service has several ports (or is unknown); set destination.port.number",
                d.host
            ));
            80
        });
        let subset = d.subset.as_deref().unwrap_or("");
        let name = cluster_name(port, subset, &fqdn);
        if !self.clusters.clusters.contains_key(&name) {
            warnings.push(format!(
                "destination {}{}: no cluster `{name}` (no ServiceEntry for the host, or no such port or DestinationRule subset); requests get 503",
                d.host,
                d.subset.as_ref().map(|s| format!(" subset {s}")).unwrap_or_default()
            ));
        }
        name
    }

    fn fault(&self, f: &Fault) -> Value {
        let mut m = Map::new();
        m.insert("@type".into(), json!(FAULT_TYPE));
        if let Some(d) = &f.delay {
            let pct = d
                .percentage
                .map(|p| p.value)
                .or(d.percent.map(f64::from))
                .unwrap_or(100.0);
            m.insert(
                "delay".into(),
                json!({
                    "fixed_delay": proto_duration(d.fixed_delay.as_deref().unwrap_or("0s")),
                    "percentage": fraction(pct),
                }),
            );
        }
        if let Some(a) = &f.abort {
            let pct = a.percentage.map(|p| p.value).unwrap_or(100.0);
            let mut abort = Map::new();
            match (a.http_status, &a.grpc_status) {
                (Some(s), _) => abort.insert("http_status".into(), json!(s)),
                (None, Some(g)) => abort.insert("grpc_status".into(), json!(grpc_code(g))),
                (None, None) => None,
            };
            abort.insert("percentage".into(), fraction(pct));
            m.insert("abort".into(), Value::Object(abort));
        }
        Value::Object(m)
    }

    fn action(
        &self,
        r: &HttpRoute,
        namespace: &str,
        out: &mut Map<String, Value>,
        warnings: &mut Vec<String>,
    ) {
        if let Some(rd) = &r.redirect {
            let mut m = Map::new();
            if let Some(u) = &rd.uri {
                m.insert("path_redirect".into(), json!(u));
            }
            if let Some(a) = &rd.authority {
                m.insert("host_redirect".into(), json!(a));
            }
            if let Some(p) = rd.port {
                m.insert("port_redirect".into(), json!(p));
            }
            if let Some(s) = &rd.scheme {
                m.insert("scheme_redirect".into(), json!(s));
            }
            let code = match rd.redirect_code.unwrap_or(301) {
                302 => "FOUND",
                303 => "SEE_OTHER",
                307 => "TEMPORARY_REDIRECT",
                308 => "PERMANENT_REDIRECT",
                _ => "MOVED_PERMANENTLY",
            };
            if code != "MOVED_PERMANENTLY" {
                m.insert("response_code".into(), json!(code));
            }
            out.insert("redirect".into(), Value::Object(m));
            return;
        }
        if let Some(d) = &r.direct_response {
            let mut m = Map::new();
            m.insert("status".into(), json!(d.status));
            if let Some(b) = &d.body {
                if let Some(s) = &b.string {
                    m.insert("body".into(), json!({"inline_string": s}));
                } else if let Some(bytes) = &b.bytes {
                    m.insert("body".into(), json!({"inline_bytes": bytes}));
                }
            }
            out.insert("direct_response".into(), Value::Object(m));
            return;
        }
        let mut action = Map::new();
        let names: Vec<String> = r
            .route
            .iter()
            .map(|d| self.cluster_for(&d.destination, namespace, warnings))
            .collect();
        if r.route.len() == 1 {
            action.insert("cluster".into(), json!(names[0]));
            apply_headers(&r.route[0].headers, out);
        } else {
            let clusters: Vec<Value> = r
                .route
                .iter()
                .zip(&names)
                .map(|(d, name)| {
                    let mut c = Map::new();
                    c.insert("name".into(), json!(name));
                    c.insert("weight".into(), json!(d.weight.unwrap_or(0)));
                    apply_headers(&d.headers, &mut c);
                    Value::Object(c)
                })
                .collect();
            action.insert("weighted_clusters".into(), json!({"clusters": clusters}));
        }
        // Istio disables Envoy's 15 s default: no timeout unless the route sets one.
        action.insert(
            "timeout".into(),
            json!(proto_duration(r.timeout.as_deref().unwrap_or("0s"))),
        );
        if let Some(rw) = &r.rewrite {
            if let Some(u) = &rw.uri {
                action.insert("prefix_rewrite".into(), json!(u));
            }
            if let Some(rr) = &rw.uri_regex_rewrite {
                action.insert(
                    "regex_rewrite".into(),
                    json!({"pattern": {"regex": rr.pattern}, "substitution": rr.rewrite}),
                );
            }
            if let Some(a) = &rw.authority {
                action.insert("host_rewrite_literal".into(), json!(a));
            }
        }
        let mut mirrors = Vec::new();
        if let Some(m) = &r.mirror {
            let pct = r
                .mirror_percentage
                .map(|p: Percent| p.value)
                .or(r.mirror_percent.map(f64::from))
                .unwrap_or(100.0);
            mirrors.push((m, pct));
        }
        for m in &r.mirrors {
            mirrors.push((
                &m.destination,
                m.percentage.map(|p| p.value).unwrap_or(100.0),
            ));
        }
        if !mirrors.is_empty() {
            let list: Vec<Value> = mirrors
                .into_iter()
                .map(|(d, pct)| {
                    json!({
                        "cluster": self.cluster_for(d, namespace, warnings),
                        "runtime_fraction": {"default_value": fraction(pct)},
                    })
                })
                .collect();
            action.insert("request_mirror_policies".into(), Value::Array(list));
        }
        // A consistent-hash DestinationRule hashes on the route (the first destination's policy).
        if let Some(h) = names
            .first()
            .and_then(|n| self.clusters.hash_policies.get(n))
        {
            action.insert("hash_policy".into(), json!([h]));
        }
        let consistent_hash = action.contains_key("hash_policy") && r.route.len() == 1;
        if let Some(p) = retry_policy(r.retries.as_ref(), consistent_hash) {
            action.insert("retry_policy".into(), p);
        }
        out.insert("route".into(), Value::Object(action));
    }

    /// Append the Envoy routes of `vs` (of `namespace`) that apply here.
    pub fn routes(
        &self,
        vs: &VirtualService,
        namespace: &str,
        out: &mut Vec<Value>,
        needs: &mut RouteNeeds,
        warnings: &mut Vec<String>,
    ) {
        let vs_gateways: Vec<String> = if vs.gateways.is_empty() {
            vec!["mesh".into()]
        } else {
            vs.gateways
                .iter()
                .map(|g| gateway_ref(g, namespace))
                .collect()
        };
        for (i, r) in vs.http.iter().enumerate() {
            let empty = [HttpMatch::default()];
            let matches: &[HttpMatch] = if r.matches.is_empty() {
                &empty
            } else {
                &r.matches
            };
            for m in matches {
                let applies_to: Vec<String> = if m.gateways.is_empty() {
                    vs_gateways.clone()
                } else {
                    m.gateways
                        .iter()
                        .map(|g| gateway_ref(g, namespace))
                        .collect()
                };
                if !applies_to.iter().any(|g| self.gateways.contains(g)) {
                    continue;
                }
                if m.port.is_some_and(|p| p != self.port) {
                    continue;
                }
                if !self.source.matches(
                    &m.gateways,
                    &m.source_labels,
                    m.source_namespace.as_deref(),
                ) {
                    continue;
                }
                let mut route = Map::new();
                let name = if r.name.is_empty() {
                    format!("http[{i}]")
                } else {
                    r.name.clone()
                };
                route.insert("name".into(), json!(name));
                route.insert("match".into(), route_match(m));
                self.action(r, namespace, &mut route, warnings);
                apply_headers(&r.headers, &mut route);
                let mut per_filter = Map::new();
                if let Some(f) = &r.fault {
                    needs.fault_filter = true;
                    per_filter.insert(FAULT_FILTER.into(), self.fault(f));
                }
                if let Some(c) = &r.cors_policy {
                    needs.cors_filter = true;
                    per_filter.insert(CORS_FILTER.into(), cors_policy(c));
                }
                if !per_filter.is_empty() {
                    route.insert("typed_per_filter_config".into(), Value::Object(per_filter));
                }
                out.push(Value::Object(route));
            }
        }
    }
}

/// gRPC status names (Istio's `grpcStatus`) as codes.
fn grpc_code(name: &str) -> u32 {
    const NAMES: [&str; 17] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];
    NAMES
        .iter()
        .position(|n| n.eq_ignore_ascii_case(name))
        .map(|i| i as u32)
        .or_else(|| name.parse().ok())
        .unwrap_or(2)
}

/// The retry policy Istio gives an outbound route no VirtualService routes (its default policy).
pub fn default_retry_policy() -> Value {
    retry_policy(None, false).unwrap_or_default()
}

/// Istio's retry policy for a route (its `ConvertPolicy`): without `retries`, Istio's default
/// (2 retries on connect failures, refused streams, `unavailable`, `cancelled` and 503, preferring
/// hosts not tried yet); `attempts: 0` turns retries off (`None`). Otherwise the default with the
/// VirtualService's `attempts`, `perTryTimeout`, `backoff` and `retryIgnorePreviousHosts`, and
/// `retryOn` replacing the conditions, where a number is a status code to retry. A route with a
/// single destination that hashes consistently does not avoid previous hosts by default.
fn retry_policy(
    rt: Option<&sluice_config::istio::Retries>,
    consistent_hash: bool,
) -> Option<Value> {
    let mut on =
        "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes".to_string();
    let mut codes = vec![503u32];
    let mut previous_hosts = !consistent_hash;
    let mut num_retries = 2;
    if let Some(rt) = rt {
        if rt.attempts == 0 {
            return None;
        }
        num_retries = rt.attempts;
        if let Some(retry_on) = rt.retry_on.as_deref().filter(|r| !r.is_empty()) {
            let mut conditions: Vec<&str> = Vec::new();
            codes.clear();
            for token in retry_on.split(',').map(str::trim).filter(|t| !t.is_empty()) {
                match token.parse::<u32>() {
                    Ok(code) if (100..600).contains(&code) => codes.push(code),
                    _ => conditions.push(token),
                }
            }
            on = conditions.join(",");
            if !codes.is_empty() && !on.contains("retriable-status-codes") {
                on.push_str(",retriable-status-codes");
            }
        }
        if let Some(ignore) = rt.retry_ignore_previous_hosts {
            previous_hosts = ignore;
        }
    }
    let mut p = json!({
        "num_retries": num_retries,
        "retry_on": on,
        "host_selection_retry_max_attempts": 5,
    });
    if !codes.is_empty() {
        p["retriable_status_codes"] = json!(codes);
    }
    if previous_hosts {
        p["retry_host_predicate"] = json!([{
            "name": "envoy.retry_host_predicates.previous_hosts",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"}
        }]);
    }
    if let Some(t) = rt.and_then(|rt| rt.per_try_timeout.as_ref()) {
        p["per_try_timeout"] = json!(proto_duration(t));
    }
    if let Some(b) = rt.and_then(|rt| rt.backoff.as_ref()) {
        p["retry_back_off"] = json!({"base_interval": proto_duration(b)});
    }
    Some(p)
}

/// Istio's `corsPolicy` as Envoy's `CorsPolicy` (lists joined with commas, `maxAge` in seconds,
/// `unmatchedPreflights: IGNORE` answering preflights of other origins without forwarding them).
fn cors_policy(c: &sluice_config::istio::CorsPolicy) -> Value {
    let mut origins: Vec<Value> = c.allow_origin.iter().map(|o| json!({"exact": o})).collect();
    origins.extend(c.allow_origins.iter().filter_map(string_matcher));
    let mut p = json!({
        "@type": CORS_POLICY_TYPE,
        "allow_origin_string_match": origins,
        "filter_enabled": {"default_value": {"numerator": 100, "denominator": "HUNDRED"}},
    });
    for (key, list) in [
        ("allow_methods", &c.allow_methods),
        ("allow_headers", &c.allow_headers),
        ("expose_headers", &c.expose_headers),
    ] {
        if !list.is_empty() {
            p[key] = json!(list.join(","));
        }
    }
    if let Some(age) = c
        .max_age
        .as_deref()
        .and_then(sluice_config::istio::parse_duration)
    {
        p["max_age"] = json!(age.as_secs().to_string());
    }
    if let Some(creds) = c.allow_credentials {
        p["allow_credentials"] = json!(creds);
    }
    if c.unmatched_preflights.as_deref() == Some("IGNORE") {
        p["forward_not_matching_preflights"] = json!(false);
    }
    p
}

/// The CORS filter entry a listener needs when one of its routes has a CORS policy.
pub fn cors_filter() -> Value {
    json!({"name": CORS_FILTER, "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors"}})
}

/// The fault filter entry a listener needs when one of its routes injects faults.
pub fn fault_filter() -> Value {
    json!({"name": FAULT_FILTER, "typed_config": {"@type": FAULT_TYPE}})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn retries(attempts: u32, on: Option<&str>) -> sluice_config::istio::Retries {
        sluice_config::istio::Retries {
            attempts,
            per_try_timeout: Some("2s".into()),
            retry_on: on.map(str::to_string),
            ..Default::default()
        }
    }

    const PREVIOUS_HOSTS: &str = "envoy.retry_host_predicates.previous_hosts";

    /// The policies Istio's `ConvertPolicy` gives (pilot's retry tests), field for field.
    #[test]
    fn retries_follow_istio_defaults_and_overrides() {
        // No `retries`: Istio's default policy.
        let p = retry_policy(None, false).unwrap();
        assert_eq!(
            p,
            json!({
                "num_retries": 2,
                "retry_on": "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes",
                "retriable_status_codes": [503],
                "retry_host_predicate": [{"name": PREVIOUS_HOSTS, "typed_config": {"@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"}}],
                "host_selection_retry_max_attempts": 5,
            })
        );
        // A consistent-hash route keeps to its host.
        assert!(retry_policy(None, true)
            .unwrap()
            .get("retry_host_predicate")
            .is_none());
        // `attempts: 0` turns retries off.
        assert_eq!(retry_policy(Some(&retries(0, None)), false), None);
        let p = retry_policy(Some(&retries(3, None)), false).unwrap();
        assert_eq!(p["num_retries"], 3);
        assert_eq!(p["retriable_status_codes"], json!([503]));
        assert_eq!(p["per_try_timeout"], "2.000000000s");
        // `retryOn` replaces the conditions and the status codes.
        let p = retry_policy(Some(&retries(2, Some("5xx, 429,gateway-error"))), false).unwrap();
        assert_eq!(p["retry_on"], "5xx,gateway-error,retriable-status-codes");
        assert_eq!(p["retriable_status_codes"], json!([429]));
        let p = retry_policy(Some(&retries(2, Some("gateway-error,reset"))), false).unwrap();
        assert_eq!(p["retry_on"], "gateway-error,reset");
        assert!(p.get("retriable_status_codes").is_none());
        let rt = sluice_config::istio::Retries {
            attempts: 1,
            retry_ignore_previous_hosts: Some(false),
            backoff: Some("25ms".into()),
            ..Default::default()
        };
        let p = retry_policy(Some(&rt), false).unwrap();
        assert!(p.get("retry_host_predicate").is_none());
        assert_eq!(p["retry_back_off"]["base_interval"], "0.025000000s");
    }
}
