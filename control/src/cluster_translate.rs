//! Clusters and endpoints: one cluster `outbound|PORT||FQDN` per service port and one
//! `outbound|PORT|SUBSET|FQDN` per DestinationRule subset, with the DestinationRule's traffic
//! policy (load balancer, connection pool → circuit breakers, outlier detection, TLS) merged as
//! Istio merges it: top level, then the port's settings, then the subset's, then the subset's
//! port settings, each replacing whole fields.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};
use sluice_config::istio::{
    parse_duration, ClientTls, ConnectionPool, DestinationRule, LoadBalancer, OutlierDetection,
    Resource, Spec, TrafficPolicy,
};

use crate::naming::{cluster_name, host_matches, resolve_host};
use crate::registry::{Port, Registry, Resolution, Service};

/// Istio's default connect timeout.
const CONNECT_TIMEOUT: &str = "10s";
/// Istio leaves circuit breakers open unless a connection pool says otherwise.
const UNLIMITED: u64 = 4_294_967_295;
const HTTP_OPTIONS_TYPE: &str =
    "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions";
const HTTP_OPTIONS_KEY: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";
const UPSTREAM_TLS_TYPE: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext";

/// The traffic policy in force for one (port, subset).
#[derive(Debug, Clone, Default)]
pub struct Policy {
    pub load_balancer: Option<LoadBalancer>,
    pub connection_pool: Option<ConnectionPool>,
    pub outlier_detection: Option<OutlierDetection>,
    pub tls: Option<ClientTls>,
}

impl Policy {
    fn overlay(&mut self, tp: &TrafficPolicy, port: u32) {
        self.apply(
            &tp.load_balancer,
            &tp.connection_pool,
            &tp.outlier_detection,
            &tp.tls,
        );
        for pl in &tp.port_level_settings {
            if pl.port.and_then(|p| p.number) == Some(port) {
                self.apply(
                    &pl.load_balancer,
                    &pl.connection_pool,
                    &pl.outlier_detection,
                    &pl.tls,
                );
            }
        }
    }

    fn apply(
        &mut self,
        lb: &Option<LoadBalancer>,
        pool: &Option<ConnectionPool>,
        od: &Option<OutlierDetection>,
        tls: &Option<ClientTls>,
    ) {
        if lb.is_some() {
            self.load_balancer = lb.clone();
        }
        if pool.is_some() {
            self.connection_pool = pool.clone();
        }
        if od.is_some() {
            self.outlier_detection = od.clone();
        }
        if tls.is_some() {
            self.tls = tls.clone();
        }
    }
}

/// The DestinationRule for a service: an exact host match first, then the most specific
/// wildcard; among equals, the first by namespace/name.
pub fn destination_rule<'a>(resources: &'a [Resource], fqdn: &str) -> Option<&'a DestinationRule> {
    most_specific(resources, fqdn, |_| true)
}

/// The most specific DestinationRule for `fqdn` among the resources `keep` accepts.
fn most_specific<'a>(
    resources: &'a [Resource],
    fqdn: &str,
    keep: impl Fn(&Resource) -> bool,
) -> Option<&'a DestinationRule> {
    let mut best: Option<(usize, &DestinationRule)> = None;
    for r in resources {
        let Spec::DestinationRule(dr) = &r.spec else {
            continue;
        };
        if !keep(r) {
            continue;
        }
        let host = resolve_host(&dr.host, r.metadata.namespace());
        if !host_matches(&host, fqdn) {
            continue;
        }
        let score = if host == fqdn { usize::MAX } else { host.len() };
        if best.is_none_or(|(s, _)| score > s) {
            best = Some((score, dr));
        }
    }
    best.map(|(_, dr)| dr)
}

/// The DestinationRule a proxy in `viewer` uses for a service of `service_namespace`, as Istio
/// looks it up with `exportTo`: among the rules visible there, first those of the proxy's own
/// namespace, then the service's, then the root namespace's, then any other; the most specific
/// host within the first that has one.
pub fn destination_rule_seen_from<'a>(
    resources: &'a [Resource],
    fqdn: &str,
    service_namespace: &str,
    viewer: &str,
) -> Option<&'a DestinationRule> {
    let visible = |r: &Resource| match &r.spec {
        Spec::DestinationRule(dr) => {
            crate::translate::exported_to(&dr.export_to, r.metadata.namespace(), viewer)
        }
        _ => false,
    };
    [
        viewer,
        service_namespace,
        crate::authz_translate::ROOT_NAMESPACE,
    ]
    .iter()
    .find_map(|ns| {
        most_specific(resources, fqdn, |r| {
            visible(r) && r.metadata.namespace() == *ns
        })
    })
    .or_else(|| most_specific(resources, fqdn, visible))
}

/// The policy for one port and subset of a service.
pub fn policy(dr: Option<&DestinationRule>, port: u32, subset: Option<&str>) -> Policy {
    let mut p = Policy::default();
    let Some(dr) = dr else { return p };
    if let Some(tp) = &dr.traffic_policy {
        p.overlay(tp, port);
    }
    if let Some(name) = subset {
        if let Some(tp) = dr
            .subsets
            .iter()
            .find(|s| s.name == name)
            .and_then(|s| s.traffic_policy.as_ref())
        {
            p.overlay(tp, port);
        }
    }
    p
}

/// An Istio duration (`10s`, `1.5s`) as protobuf JSON (`10.000000000s`). Durations were
/// checked when the resource was read.
pub(crate) fn proto_duration(text: &str) -> String {
    let d = parse_duration(text).unwrap_or_default();
    format!("{}.{:09}s", d.as_secs(), d.subsec_nanos())
}

/// The route `hash_policy` a consistent-hash load balancer asks for (applied on routes to the
/// cluster, as Istio does).
pub fn hash_policy(p: &Policy) -> Option<Value> {
    let ch = p.load_balancer.as_ref()?.consistent_hash.as_ref()?;
    if let Some(h) = &ch.http_header_name {
        return Some(json!({"header": {"header_name": h}}));
    }
    if let Some(c) = &ch.http_cookie {
        let mut cookie = Map::new();
        cookie.insert("name".into(), json!(c.name));
        if let Some(path) = &c.path {
            cookie.insert("path".into(), json!(path));
        }
        if let Some(ttl) = &c.ttl {
            cookie.insert("ttl".into(), json!(proto_duration(ttl)));
        }
        if !c.attributes.is_empty() {
            let attributes: Vec<Value> = c
                .attributes
                .iter()
                .map(|a| json!({"name": a.name, "value": a.value}))
                .collect();
            cookie.insert("attributes".into(), Value::Array(attributes));
        }
        return Some(json!({"cookie": Value::Object(cookie)}));
    }
    if ch.use_source_ip == Some(true) {
        return Some(json!({"connection_properties": {"source_ip": true}}));
    }
    ch.http_query_parameter_name
        .as_ref()
        .map(|q| json!({"query_parameter": {"name": q}}))
}

fn lb_policy(p: &Policy) -> &'static str {
    let Some(lb) = &p.load_balancer else {
        return "LEAST_REQUEST";
    };
    if let Some(ch) = &lb.consistent_hash {
        return if ch.maglev.is_some() {
            "MAGLEV"
        } else {
            "RING_HASH"
        };
    }
    match lb.simple.as_deref() {
        Some("ROUND_ROBIN") => "ROUND_ROBIN",
        Some("RANDOM") => "RANDOM",
        _ => "LEAST_REQUEST",
    }
}

fn circuit_breakers(pool: Option<&ConnectionPool>) -> Value {
    let tcp = pool.and_then(|p| p.tcp.as_ref());
    let http = pool.and_then(|p| p.http.as_ref());
    let v = |x: Option<u32>| x.map(u64::from).unwrap_or(UNLIMITED);
    json!({"thresholds": [{
        "max_connections": v(tcp.and_then(|t| t.max_connections)),
        "max_pending_requests": v(http.and_then(|h| h.http1_max_pending_requests)),
        "max_requests": v(http.and_then(|h| h.http2_max_requests)),
        "max_retries": v(http.and_then(|h| h.max_retries)),
    }]})
}

/// Istio's outlier detection: ejection on failures in a row (enforced at 100 % when a count is
/// given), success-rate ejection off.
fn outlier_detection(od: &OutlierDetection) -> Value {
    let mut m = Map::new();
    m.insert("enforcing_success_rate".into(), json!(0));
    let five = od
        .consecutive5xx_errors
        .or(od.consecutive_5xx_errors_alt)
        .or(od.consecutive_errors);
    if let Some(n) = five {
        m.insert("consecutive_5xx".into(), json!(n));
        m.insert(
            "enforcing_consecutive_5xx".into(),
            json!(if n > 0 { 100 } else { 0 }),
        );
    }
    if let Some(n) = od.consecutive_gateway_errors {
        m.insert("consecutive_gateway_failure".into(), json!(n));
        m.insert(
            "enforcing_consecutive_gateway_failure".into(),
            json!(if n > 0 { 100 } else { 0 }),
        );
    }
    if let Some(i) = &od.interval {
        m.insert("interval".into(), json!(proto_duration(i)));
    }
    if let Some(b) = &od.base_ejection_time {
        m.insert("base_ejection_time".into(), json!(proto_duration(b)));
    }
    if let Some(p) = od.max_ejection_percent {
        m.insert("max_ejection_percent".into(), json!(p));
    }
    if od.split_external_local_origin_errors == Some(true) {
        m.insert("split_external_local_origin_errors".into(), json!(true));
        if let Some(n) = od.consecutive_local_origin_failures.filter(|n| *n > 0) {
            m.insert("consecutive_local_origin_failure".into(), json!(n));
            m.insert(
                "enforcing_consecutive_local_origin_failure".into(),
                json!(100),
            );
        }
        m.insert("enforcing_local_origin_success_rate".into(), json!(0));
    }
    Value::Object(m)
}

fn upstream_tls(tls: &ClientTls, sni: &str) -> Option<Value> {
    let mode = tls.mode.as_deref().unwrap_or("DISABLE");
    if mode == "DISABLE" {
        return None;
    }
    let mut common = Map::new();
    // `insecureSkipVerify` drops the whole validation context: any certificate is accepted.
    let verify = tls.insecure_skip_verify != Some(true);
    if let Some(ca) = tls.ca_certificates.as_ref().filter(|_| verify) {
        common.insert(
            "validation_context".into(),
            validation_context(ca, &tls.subject_alt_names),
        );
    }
    if mode == "MUTUAL" {
        if let (Some(cert), Some(key)) = (&tls.client_certificate, &tls.private_key) {
            common.insert(
                "tls_certificates".into(),
                json!([{"certificate_chain": {"filename": cert}, "private_key": {"filename": key}}]),
            );
        }
    }
    Some(json!({
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": UPSTREAM_TLS_TYPE,
            "sni": tls.sni.clone().unwrap_or_else(|| sni.to_string()),
            "common_tls_context": Value::Object(common),
        }
    }))
}

/// Envoy's `CertificateValidationContext` for Istio's `caCertificates` and `subjectAltNames`
/// (any name type, exact match), upstream and downstream alike.
pub(crate) fn validation_context(ca: &str, subject_alt_names: &[String]) -> Value {
    let mut vc = json!({"trusted_ca": {"filename": ca}});
    if !subject_alt_names.is_empty() {
        let names: Vec<Value> = subject_alt_names
            .iter()
            .map(|n| json!({"exact": n}))
            .collect();
        vc["match_subject_alt_names"] = Value::Array(names);
    }
    vc
}

/// A locality string `region/zone/subzone` as Envoy's `Locality`.
fn locality(text: &str) -> Option<Value> {
    if text.is_empty() {
        return None;
    }
    let mut parts = text.splitn(3, '/');
    let mut m = Map::new();
    for key in ["region", "zone", "sub_zone"] {
        if let Some(p) = parts.next().filter(|p| !p.is_empty()) {
            m.insert(key.into(), json!(p));
        }
    }
    Some(Value::Object(m))
}

/// The endpoints of `svc` on `port` selected by `labels` (a subset), grouped by locality.
fn load_assignment(
    name: &str,
    svc: &Service,
    port: &Port,
    labels: Option<&BTreeMap<String, String>>,
    warnings: &mut Vec<String>,
) -> Value {
    let mut by_locality: BTreeMap<&str, Vec<Value>> = BTreeMap::new();
    for ep in &svc.endpoints {
        if labels.is_some_and(|l| !ep.selected_by(l)) {
            continue;
        }
        let (address, epport) = if ep.address.is_empty() {
            // A DNS service without endpoints: the host itself.
            (svc.fqdn.clone(), port.number)
        } else {
            (ep.address.clone(), svc.endpoint_port(ep, port))
        };
        if svc.resolution == Resolution::Static && address.parse::<std::net::IpAddr>().is_err() {
            warnings.push(format!(
                "{name}: endpoint `{address}` is not an IP address; STATIC services need IPs (use resolution: DNS)"
            ));
            continue;
        }
        by_locality.entry(&ep.locality).or_default().push(json!({
            "endpoint": {"address": {"socket_address": {"address": address, "port_value": epport}}},
            "load_balancing_weight": ep.weight,
        }));
    }
    if svc.endpoints.is_empty() && svc.resolution != Resolution::Static {
        by_locality.entry("").or_default().push(json!({
            "endpoint": {"address": {"socket_address": {"address": svc.fqdn, "port_value": port.number}}},
        }));
    }
    let endpoints: Vec<Value> = by_locality
        .into_iter()
        .map(|(loc, eps)| {
            let mut m = Map::new();
            if let Some(l) = locality(loc) {
                m.insert("locality".into(), l);
            }
            m.insert("lb_endpoints".into(), Value::Array(eps));
            Value::Object(m)
        })
        .collect();
    json!({"cluster_name": name, "endpoints": endpoints})
}

fn cluster(
    name: &str,
    svc: &Service,
    port: &Port,
    p: &Policy,
    cla: Value,
) -> (Value, Option<Value>) {
    let mut c = Map::new();
    c.insert("name".into(), json!(name));
    let mut eds = None;
    match svc.resolution {
        Resolution::Static => {
            c.insert("type".into(), json!("EDS"));
            c.insert(
                "eds_cluster_config".into(),
                json!({"eds_config": {"ads": {}, "resource_api_version": "V3"}, "service_name": name}),
            );
            eds = Some(cla);
        }
        Resolution::Dns | Resolution::DnsRoundRobin => {
            let t = if svc.resolution == Resolution::Dns {
                "STRICT_DNS"
            } else {
                "LOGICAL_DNS"
            };
            c.insert("type".into(), json!(t));
            c.insert("dns_lookup_family".into(), json!("V4_ONLY"));
            c.insert("load_assignment".into(), cla);
        }
    }
    let connect = p
        .connection_pool
        .as_ref()
        .and_then(|cp| cp.tcp.as_ref())
        .and_then(|t| t.connect_timeout.as_deref())
        .map(proto_duration)
        .unwrap_or_else(|| CONNECT_TIMEOUT.into());
    c.insert("connect_timeout".into(), json!(connect));
    let lb = lb_policy(p);
    if lb != "ROUND_ROBIN" {
        c.insert("lb_policy".into(), json!(lb));
    }
    c.insert(
        "circuit_breakers".into(),
        circuit_breakers(p.connection_pool.as_ref()),
    );
    let http = p.connection_pool.as_ref().and_then(|cp| cp.http.as_ref());
    if let Some(n) = http.and_then(|h| h.max_requests_per_connection) {
        c.insert("max_requests_per_connection".into(), json!(n));
    }
    let h2 =
        port.is_http2() || http.and_then(|h| h.h2_upgrade_policy.as_deref()) == Some("UPGRADE");
    let idle = http
        .and_then(|h| h.idle_timeout.as_deref())
        .map(proto_duration);
    if h2 || idle.is_some() {
        let mut opts = Map::new();
        opts.insert("@type".into(), json!(HTTP_OPTIONS_TYPE));
        let explicit = if h2 {
            json!({"http2_protocol_options": {}})
        } else {
            json!({"http_protocol_options": {}})
        };
        opts.insert("explicit_http_config".into(), explicit);
        if let Some(idle) = idle {
            opts.insert(
                "common_http_protocol_options".into(),
                json!({"idle_timeout": idle}),
            );
        }
        c.insert(
            "typed_extension_protocol_options".into(),
            json!({HTTP_OPTIONS_KEY: Value::Object(opts)}),
        );
    }
    if let Some(od) = &p.outlier_detection {
        c.insert("outlier_detection".into(), outlier_detection(od));
        // Istio turns panic mode off (0 %) unless `minHealthPercent` says otherwise.
        c.insert(
            "common_lb_config".into(),
            json!({"healthy_panic_threshold": {"value": od.min_health_percent.unwrap_or(0)}}),
        );
    }
    if let Some(ts) = p.tls.as_ref().and_then(|t| upstream_tls(t, &svc.fqdn)) {
        c.insert("transport_socket".into(), ts);
    }
    (Value::Object(c), eds)
}

/// Every cluster and EDS assignment of the mesh: they are the same for every proxy.
#[derive(Debug, Clone, Default)]
pub struct ClusterSet {
    pub clusters: BTreeMap<String, Value>,
    pub endpoints: BTreeMap<String, Value>,
    /// Route hash policies by cluster name (from consistent-hash load balancers).
    pub hash_policies: BTreeMap<String, Value>,
}

/// Build the clusters of every service port and subset.
pub fn clusters(
    resources: &[Resource],
    registry: &Registry,
    warnings: &mut Vec<String>,
) -> ClusterSet {
    clusters_seen_from(resources, registry, None, warnings)
}

/// The clusters as a proxy in namespace `viewer` sees them (DestinationRules by `exportTo`);
/// `None`: with every DestinationRule.
pub fn clusters_seen_from(
    resources: &[Resource],
    registry: &Registry,
    viewer: Option<&str>,
    warnings: &mut Vec<String>,
) -> ClusterSet {
    let mut out = ClusterSet::default();
    for svc in registry.services.values() {
        let dr = match viewer {
            None => destination_rule(resources, &svc.fqdn),
            Some(v) => destination_rule_seen_from(resources, &svc.fqdn, &svc.namespace, v),
        };
        for port in &svc.ports {
            let mut variants: Vec<(String, Option<&BTreeMap<String, String>>)> =
                vec![(String::new(), None)];
            if let Some(dr) = dr {
                for s in &dr.subsets {
                    variants.push((s.name.clone(), Some(&s.labels)));
                }
            }
            for (subset, labels) in variants {
                let name = cluster_name(port.number, &subset, &svc.fqdn);
                let p = policy(
                    dr,
                    port.number,
                    (!subset.is_empty()).then_some(subset.as_str()),
                );
                let cla = load_assignment(&name, svc, port, labels, warnings);
                let (c, eds) = cluster(&name, svc, port, &p, cla);
                if let Some(h) = hash_policy(&p) {
                    out.hash_policies.insert(name.clone(), h);
                }
                out.clusters.insert(name.clone(), c);
                if let Some(e) = eds {
                    out.endpoints.insert(name, e);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_config::istio::{parse_text, Parsed};

    /// Istio's lookup order with `exportTo`: the viewer's namespace, the service's, the root
    /// namespace, then any other; hidden rules are never used.
    #[test]
    fn destination_rules_are_looked_up_as_istio_does_with_export_to() {
        let r = crate::registry::tests::resources(
            r#"apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: public, namespace: team}
spec: {host: web.shop.svc.cluster.local, subsets: [{name: team}]}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: root, namespace: istio-system}
spec: {host: "*.svc.cluster.local", subsets: [{name: root}]}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: service, namespace: shop}
spec: {host: web.shop.svc.cluster.local, exportTo: [shop, ops], subsets: [{name: service}]}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: own, namespace: ops}
spec: {host: web.shop.svc.cluster.local, exportTo: ["."], subsets: [{name: own}]}
"#,
        );
        let seen = |viewer: &str| {
            destination_rule_seen_from(&r, "web.shop.svc.cluster.local", "shop", viewer)
                .map(|dr| dr.subsets[0].name.clone())
        };
        assert_eq!(seen("ops").as_deref(), Some("own"));
        assert_eq!(seen("shop").as_deref(), Some("service"));
        assert_eq!(
            seen("blog").as_deref(),
            Some("root"),
            "the service's rule is hidden there"
        );
        assert_eq!(seen("team").as_deref(), Some("team"));
        // Without the root namespace's, another namespace falls to any visible one.
        let without_root: Vec<Resource> = r
            .iter()
            .filter(|x| x.metadata.namespace() != "istio-system")
            .cloned()
            .collect();
        assert_eq!(
            destination_rule_seen_from(&without_root, "web.shop.svc.cluster.local", "shop", "blog")
                .map(|dr| dr.subsets[0].name.as_str()),
            Some("team")
        );
    }

    fn tls_of(dr_tls: &str) -> Value {
        let text = format!(
            "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: api}}
spec:
  hosts: [api.example.com]
  ports: [{{number: 443, name: https, protocol: HTTPS}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: api}}
spec:
  host: api.example.com
  trafficPolicy:
    tls: {dr_tls}
"
        );
        let resources: Vec<Resource> = parse_text("t.yaml", &text)
            .unwrap()
            .into_iter()
            .filter_map(|p| match p {
                Parsed::Istio(r) => Some(*r),
                _ => None,
            })
            .collect();
        let registry = Registry::build(&resources);
        let set = clusters(&resources, &registry, &mut Vec::new());
        let cluster = set
            .clusters
            .get("outbound|443||api.example.com")
            .unwrap_or_else(|| panic!("{:?}", set.clusters.keys()));
        cluster["transport_socket"]["typed_config"].clone()
    }

    #[test]
    fn subject_alt_names_become_envoy_san_matchers() {
        let tc = tls_of(
            "{mode: SIMPLE, caCertificates: /ca.pem, subjectAltNames: [api.example.com, spiffe://td/ns/a/sa/b]}",
        );
        assert_eq!(tc["sni"], "api.example.com");
        assert_eq!(
            tc["common_tls_context"]["validation_context"],
            json!({"trusted_ca": {"filename": "/ca.pem"}, "match_subject_alt_names": [
                {"exact": "api.example.com"}, {"exact": "spiffe://td/ns/a/sa/b"}]})
        );
    }

    #[test]
    fn insecure_skip_verify_drops_the_validation_context() {
        let tc = tls_of("{mode: SIMPLE, caCertificates: /ca.pem, insecureSkipVerify: true}");
        assert!(
            tc["common_tls_context"].get("validation_context").is_none(),
            "{tc}"
        );
        let tc = tls_of("{mode: SIMPLE, caCertificates: /ca.pem}");
        assert_eq!(
            tc["common_tls_context"]["validation_context"]["trusted_ca"]["filename"],
            "/ca.pem"
        );
    }

    #[test]
    fn a_cookie_with_a_ttl_asks_the_proxy_to_make_it() {
        let text = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: r}\nspec:\n  host: r\n  trafficPolicy:\n    loadBalancer:\n      consistentHash:\n        httpCookie: {name: user, path: /, ttl: 30s, attributes: [{name: SameSite, value: Strict}]}\n";
        let Some(Parsed::Istio(r)) = parse_text("t.yaml", text).unwrap().pop() else {
            panic!("not read")
        };
        let sluice_config::istio::Spec::DestinationRule(dr) = &r.spec else {
            panic!("not a DestinationRule")
        };
        assert_eq!(
            hash_policy(&policy(Some(dr), 80, None)),
            Some(
                json!({"cookie": {"name": "user", "path": "/", "ttl": "30.000000000s",
                "attributes": [{"name": "SameSite", "value": "Strict"}]}})
            )
        );
    }
}
