//! VirtualService `tcp` and `tls` routes to Envoy `tcp_proxy` filters, as Istio builds them.
//!
//! * A **TCP route** applies to a listener when one of its matches (or, without matches, the
//!   route itself) names the listener's port, or no port, and the proxy's gateway. The first
//!   route that applies, in VirtualService order, takes every connection of the listener.
//! * A **TLS route** match names SNI hosts: each match that applies becomes a filter chain
//!   selected by `server_names`, whose connections pass through unterminated. A host already
//!   claimed on the listener is not claimed twice (Envoy refuses duplicate chain matches); the
//!   later match is left out with a warning, as Istio does.
//! * Destinations become `tcp_proxy`'s `cluster` when one has weight (or there is one), else
//!   `weighted_clusters`. Destinations with weight 0 are left out, as Istio leaves them out.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Map, Value};
use sluice_config::istio::{L4Match, RouteDestination, TlsMatch, VirtualService};

use crate::route_translate::{gateway_ref, RouteContext};

pub const TCP_PROXY_FILTER: &str = "envoy.filters.network.tcp_proxy";
const TCP_PROXY_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy";

/// The gateways a match applies to: its own `gateways`, else the VirtualService's (`mesh` when
/// it names none), as `namespace/name` references.
pub fn applies_to(match_gateways: &[String], vs: &VirtualService, namespace: &str) -> Vec<String> {
    let names = if match_gateways.is_empty() {
        &vs.gateways
    } else {
        match_gateways
    };
    if names.is_empty() {
        return vec!["mesh".into()];
    }
    names.iter().map(|g| gateway_ref(g, namespace)).collect()
}

/// An L4 match's conditions.
struct L4<'m> {
    port: Option<u32>,
    gateways: &'m [String],
    source_labels: &'m BTreeMap<String, String>,
    source_namespace: Option<&'m str>,
}

impl<'m> From<&'m L4Match> for L4<'m> {
    fn from(m: &'m L4Match) -> Self {
        L4 {
            port: m.port,
            gateways: &m.gateways,
            source_labels: &m.source_labels,
            source_namespace: m.source_namespace.as_deref(),
        }
    }
}

impl<'m> From<&'m TlsMatch> for L4<'m> {
    fn from(m: &'m TlsMatch) -> Self {
        L4 {
            port: m.port,
            gateways: &m.gateways,
            source_labels: &m.source_labels,
            source_namespace: m.source_namespace.as_deref(),
        }
    }
}

/// Whether an L4 match (port, gateways, source) applies at `ctx`.
fn l4_applies(ctx: &RouteContext<'_>, vs: &VirtualService, namespace: &str, m: L4<'_>) -> bool {
    m.port.is_none_or(|p| p == ctx.port)
        && applies_to(m.gateways, vs, namespace)
            .iter()
            .any(|g| ctx.gateways.contains(g))
        && ctx
            .source
            .matches(m.gateways, m.source_labels, m.source_namespace)
}

/// The `tcp_proxy` filter of the first `tcp` route of `vs` that applies at `ctx`.
pub fn tcp_route_filter(
    ctx: &RouteContext<'_>,
    vs: &VirtualService,
    namespace: &str,
    stat_prefix: &str,
    warnings: &mut Vec<String>,
) -> Option<Value> {
    let route = vs.tcp.iter().find(|r| {
        if r.matches.is_empty() {
            l4_applies(ctx, vs, namespace, (&L4Match::default()).into())
        } else {
            r.matches
                .iter()
                .any(|m| l4_applies(ctx, vs, namespace, m.into()))
        }
    })?;
    Some(tcp_proxy(
        ctx,
        &route.route,
        namespace,
        stat_prefix,
        warnings,
    ))
}

/// One passthrough filter chain per `tls` route match of `vs` that applies at `ctx`. `claimed`
/// holds the SNI hosts already routed on the listener (`""` for a chain without names).
pub fn tls_route_chains(
    ctx: &RouteContext<'_>,
    vs: &VirtualService,
    namespace: &str,
    stat_prefix: &str,
    claimed: &mut BTreeSet<String>,
    out: &mut Vec<Value>,
    warnings: &mut Vec<String>,
) {
    for (i, r) in vs.tls.iter().enumerate() {
        for m in &r.matches {
            if !l4_applies(ctx, vs, namespace, m.into()) {
                continue;
            }
            let names = sni_names(&m.sni_hosts);
            if !claim(claimed, &names) {
                warnings.push(format!(
                    "port {}: tls[{i}] SNI hosts {:?} are already routed on this port; left out",
                    ctx.port, m.sni_hosts
                ));
                continue;
            }
            let mut chain = Map::new();
            if !names.is_empty() {
                chain.insert("filter_chain_match".into(), json!({"server_names": names}));
            }
            chain.insert(
                "filters".into(),
                json!([tcp_proxy(ctx, &r.route, namespace, stat_prefix, warnings)]),
            );
            out.push(Value::Object(chain));
        }
    }
}

/// SNI hosts as `server_names`: lower case, `*` (every name) as no names at all.
pub fn sni_names(hosts: &[String]) -> Vec<String> {
    if hosts.iter().any(|h| h == "*") {
        return Vec::new();
    }
    let mut names: Vec<String> = hosts.iter().map(|h| h.to_ascii_lowercase()).collect();
    names.sort();
    names.dedup();
    names
}

/// Record `names` (no names: the catch-all chain) as routed on a listener; false when one of
/// them already is.
pub fn claim(claimed: &mut BTreeSet<String>, names: &[String]) -> bool {
    let keys: Vec<String> = if names.is_empty() {
        vec![String::new()]
    } else {
        names.to_vec()
    };
    if keys.iter().any(|k| claimed.contains(k)) {
        return false;
    }
    claimed.extend(keys);
    true
}

/// A `tcp_proxy` filter to `route`'s destinations.
pub fn tcp_proxy(
    ctx: &RouteContext<'_>,
    route: &[RouteDestination],
    namespace: &str,
    stat_prefix: &str,
    warnings: &mut Vec<String>,
) -> Value {
    let weighted: Vec<&RouteDestination> = if route.len() == 1 {
        route.iter().collect()
    } else {
        route.iter().filter(|d| d.weight.unwrap_or(0) > 0).collect()
    };
    let mut m = Map::new();
    m.insert("@type".into(), json!(TCP_PROXY_TYPE));
    match weighted.as_slice() {
        [] => {
            // Validation requires a weight when there are several; all zero sends nowhere.
            warnings.push(format!(
                "port {}: a tcp/tls route whose destinations all have weight 0 refuses connections",
                ctx.port
            ));
            m.insert("stat_prefix".into(), json!(stat_prefix));
            m.insert("cluster".into(), json!("BlackHoleCluster"));
        }
        [one] => {
            let cluster = ctx.cluster_for(&one.destination, namespace, warnings);
            m.insert("stat_prefix".into(), json!(cluster));
            m.insert("cluster".into(), json!(cluster));
        }
        many => {
            let clusters: Vec<Value> = many
                .iter()
                .map(|d| {
                    json!({
                        "name": ctx.cluster_for(&d.destination, namespace, warnings),
                        "weight": d.weight.unwrap_or(0),
                    })
                })
                .collect();
            m.insert("stat_prefix".into(), json!(stat_prefix));
            m.insert("weighted_clusters".into(), json!({"clusters": clusters}));
        }
    }
    json!({"name": TCP_PROXY_FILTER, "typed_config": Value::Object(m)})
}
