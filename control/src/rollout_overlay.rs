//! How a release moves traffic: the Rollout's status rewrites the Istio resources it references
//! before they are translated, as Argo Rollouts rewrites them in Kubernetes.
//!
//! * **Subset split** (`destinationRule`): the stable subset selects the stable revision's
//!   template labels and the canary subset the canary revision's (Argo adds
//!   `rollouts-pod-template-hash`; here the template labels are the revision's identity). In the
//!   named VirtualService routes, destinations of the stable subset get `100 - weight` and those
//!   of the canary subset `weight`.
//! * **Host split** (`canaryService` / `stableService`): the ServiceEntries of those hosts select
//!   the canary and stable revisions' endpoints; VirtualService destinations of those hosts get
//!   the weights.
//! * **TCP and TLS routes**: the `tcpRoutes` (by port) and `tlsRoutes` (by port and SNI hosts)
//!   the Rollout names get the same weights as its HTTP routes.
//! * **Managed routes**: active `setHeaderRoute`s send their header matches to the canary;
//!   `setMirrorRoute`s copy their matching requests to it. They go first in the VirtualService,
//!   in `managedRoutes` order, and disappear when the release ends.
//! * **No traffic routing** (Argo's replica-count canary): the endpoints of the Rollout's pods
//!   (`selector.matchLabels`) are weighted so that the canary revision's get the step's weight,
//!   as its replica share would behind one Service; other revisions' endpoints go.
//! * **Blue-green**: the `activeService` ServiceEntry selects the active revision, the
//!   `previewService` the revision being released (or the previous one during the scale-down
//!   delay, for an instant rollback).

use std::collections::BTreeMap;

use sluice_config::argo::{Rollout, StringMatchValue, TcpRouteRef, TlsRouteRef};
use sluice_config::istio::{
    Destination, HttpMatch, HttpRoute, Percent, Resource, RouteDestination, Spec, StringMatch,
    TcpRoute, TlsRoute, WorkloadEntry,
};

use crate::naming::resolve_host;
use crate::rollout_engine::RolloutStatus;

fn string_match(m: &StringMatchValue) -> StringMatch {
    StringMatch {
        exact: m.exact.clone(),
        prefix: m.prefix.clone(),
        regex: m.regex.clone(),
    }
}

fn find<'a>(
    resources: &'a mut [Resource],
    kind: &str,
    ns: &str,
    name: &str,
) -> Option<&'a mut Resource> {
    resources
        .iter_mut()
        .find(|r| r.spec.kind() == kind && r.metadata.namespace() == ns && r.metadata.name == name)
}

/// Restrict the ServiceEntry (or ServiceEntries) of `host` to the endpoints of a revision.
fn select_revision(
    resources: &mut [Resource],
    ns: &str,
    host: &str,
    labels: &BTreeMap<String, String>,
    warnings: &mut Vec<String>,
) {
    let fqdn = resolve_host(host, ns);
    let mut found = false;
    for r in resources.iter_mut() {
        let rns = r.metadata.namespace().to_string();
        let Spec::ServiceEntry(se) = &mut r.spec else {
            continue;
        };
        if !se.hosts.iter().any(|h| resolve_host(h, &rns) == fqdn) {
            continue;
        }
        found = true;
        match &mut se.workload_selector {
            Some(sel) => sel.labels.extend(labels.clone()),
            None => se
                .endpoints
                .retain(|e: &WorkloadEntry| labels.iter().all(|(k, v)| e.labels.get(k) == Some(v))),
        }
    }
    if !found {
        warnings.push(format!("service `{host}`: no ServiceEntry for {fqdn}"));
    }
}

/// Whether `r` is the tcp route `r#ref` names: one of its matches is on the named port (a
/// reference without a port names a route without port matches).
fn tcp_route_named(r: &TcpRoute, r#ref: &TcpRouteRef) -> bool {
    match r#ref.port {
        Some(p) => r.matches.iter().any(|m| m.port == Some(p)),
        None => r.matches.iter().all(|m| m.port.is_none()),
    }
}

/// Whether `r` is the tls route `r#ref` names: its matches cover the named port (when given)
/// and every named SNI host.
fn tls_route_named(r: &TlsRoute, r#ref: &TlsRouteRef) -> bool {
    let port = r#ref
        .port
        .is_none_or(|p| r.matches.iter().any(|m| m.port == Some(p)));
    port && r#ref
        .sni_hosts
        .iter()
        .all(|h| r.matches.iter().any(|m| m.sni_hosts.contains(h)))
}

/// `selector.matchLabels` of a Rollout.
fn match_labels(selector: Option<&serde_json::Value>) -> BTreeMap<String, String> {
    selector
        .and_then(|s| s.get("matchLabels"))
        .and_then(serde_json::Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

/// A canary without traffic routing. Argo moves its traffic by replica counts behind one
/// Service; here the endpoints of the Rollout's pods (ServiceEntry `endpoints` and
/// WorkloadEntries whose labels include `selector.matchLabels`) are weighted so that the canary
/// revision's get `weight` percent of the requests, and those of other revisions none.
struct EndpointSplit<'a> {
    selector: &'a BTreeMap<String, String>,
    stable: &'a BTreeMap<String, String>,
    canary: &'a BTreeMap<String, String>,
    weight: u32,
}

/// Which revision an endpoint runs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Revision {
    Stable,
    Canary,
    Other,
    NotOurs,
}

impl EndpointSplit<'_> {
    fn revision(&self, labels: &BTreeMap<String, String>) -> Revision {
        let has =
            |want: &BTreeMap<String, String>| want.iter().all(|(k, v)| labels.get(k) == Some(v));
        if self.selector.is_empty() || !has(self.selector) {
            Revision::NotOurs
        } else if has(self.canary) && self.canary != self.stable {
            Revision::Canary
        } else if has(self.stable) {
            Revision::Stable
        } else {
            Revision::Other
        }
    }

    /// The weight of each endpoint of a revision, given how many each revision has: the
    /// shares cross-multiplied so that they stay whole numbers. `None`: the endpoint goes.
    fn weight_of(&self, r: Revision, stable: u64, canary: u64) -> Option<Option<u32>> {
        match r {
            Revision::NotOurs => Some(None),
            Revision::Other => None,
            _ if canary == 0 || self.canary == self.stable => {
                (r == Revision::Stable).then_some(None)
            }
            Revision::Stable if self.weight >= 100 => None,
            Revision::Canary if self.weight == 0 => None,
            Revision::Stable => Some(u32::try_from(u64::from(100 - self.weight) * canary).ok()),
            _ => Some(u32::try_from(u64::from(self.weight) * stable).ok()),
        }
    }

    fn apply(&self, resources: &mut [Resource], ns: &str, who: &str, warnings: &mut Vec<String>) {
        if self.selector.is_empty() {
            warnings.push(format!(
                "{who}: no selector.matchLabels; no endpoints to weigh"
            ));
            return;
        }
        let in_ns = |r: &Resource| r.metadata.namespace() == ns;
        // Count each revision's endpoints, inline and WorkloadEntries alike.
        let (mut stable, mut canary) = (0u64, 0u64);
        let mut count = |labels: &BTreeMap<String, String>| match self.revision(labels) {
            Revision::Stable => stable += 1,
            Revision::Canary => canary += 1,
            _ => {}
        };
        for r in resources.iter().filter(|r| in_ns(r)) {
            match &r.spec {
                Spec::ServiceEntry(se) => se.endpoints.iter().for_each(|e| count(&e.labels)),
                Spec::WorkloadEntry(we) => count(&we.labels),
                _ => {}
            }
        }
        if self.canary != self.stable && canary == 0 && self.weight > 0 {
            warnings.push(format!(
                "{who}: no endpoint carries the canary revision's labels; its weight is not served"
            ));
        }
        for r in resources.iter_mut() {
            if r.metadata.namespace() != ns {
                continue;
            }
            match &mut r.spec {
                Spec::ServiceEntry(se) => se.endpoints.retain_mut(|e| {
                    match self.weight_of(self.revision(&e.labels), stable, canary) {
                        Some(Some(w)) => {
                            e.weight = Some(w);
                            true
                        }
                        Some(None) => true,
                        None => false,
                    }
                }),
                Spec::WorkloadEntry(we) => {
                    match self.weight_of(self.revision(&we.labels), stable, canary) {
                        Some(Some(w)) => we.weight = Some(w),
                        Some(None) => {}
                        // A WorkloadEntry cannot be removed here: one that no selector reaches
                        // serves nothing, so its labels are cleared.
                        None => we.labels.clear(),
                    }
                }
                _ => {}
            }
        }
    }
}

/// How a Rollout tells its stable destinations from its canary ones.
enum Split {
    /// DestinationRule subsets.
    Subsets { stable: String, canary: String },
    /// Service hosts (FQDNs).
    Hosts { stable: String, canary: String },
}

impl Split {
    fn is_stable(&self, d: &Destination, vs_namespace: &str) -> bool {
        match self {
            Split::Subsets { stable, .. } => d.subset.as_deref() == Some(stable.as_str()),
            Split::Hosts { stable, .. } => resolve_host(&d.host, vs_namespace) == *stable,
        }
    }

    fn is_canary(&self, d: &Destination, vs_namespace: &str) -> bool {
        match self {
            Split::Subsets { canary, .. } => d.subset.as_deref() == Some(canary.as_str()),
            Split::Hosts { canary, .. } => resolve_host(&d.host, vs_namespace) == *canary,
        }
    }
}

/// Rewrite `resources` for every Rollout's status.
pub fn apply(
    resources: &mut [Resource],
    rollouts: &[(Rollout, RolloutStatus)],
    warnings: &mut Vec<String>,
) {
    for (rollout, status) in rollouts {
        let ns = rollout.metadata.namespace();
        let name = &rollout.metadata.name;
        let labels_of = |n: u32| {
            status
                .revision(n)
                .map(|r| r.labels.clone())
                .unwrap_or_default()
        };
        let stable = labels_of(status.stable);
        let canary = status
            .canary
            .map(labels_of)
            .unwrap_or_else(|| stable.clone());
        if let Some(bg) = &rollout.spec.strategy.blue_green {
            // After the switch (post-promotion analysis running) the active service serves the
            // new revision; an abort switches it back.
            let active = if status.switched {
                canary.clone()
            } else {
                stable.clone()
            };
            select_revision(resources, ns, &bg.active_service, &active, warnings);
            if let Some(preview) = &bg.preview_service {
                let shown = match (status.canary, status.previous) {
                    (Some(c), _) => labels_of(c),
                    (None, Some(p)) => labels_of(p),
                    (None, None) => stable.clone(),
                };
                select_revision(resources, ns, preview, &shown, warnings);
            }
            continue;
        }
        let Some(canary_spec) = &rollout.spec.strategy.canary else {
            continue;
        };
        let Some(tr) = &canary_spec.traffic_routing else {
            let selector = match_labels(rollout.spec.selector.as_ref());
            let split = EndpointSplit {
                selector: &selector,
                stable: &stable,
                canary: &canary,
                weight: status.weight.min(100),
            };
            split.apply(resources, ns, &format!("Rollout {ns}/{name}"), warnings);
            continue;
        };
        let Some(istio) = &tr.istio else { continue };
        let weight = status.weight.min(100);
        // Which destinations are stable and which canary.
        let split = match &istio.destination_rule {
            Some(dr) => {
                match find(resources, "DestinationRule", ns, &dr.name) {
                    Some(Resource {
                        spec: Spec::DestinationRule(d),
                        ..
                    }) => {
                        for s in &mut d.subsets {
                            if s.name == dr.stable_subset_name {
                                s.labels = stable.clone();
                            } else if s.name == dr.canary_subset_name {
                                s.labels = canary.clone();
                            }
                        }
                    }
                    _ => warnings.push(format!(
                        "Rollout {ns}/{name}: DestinationRule `{}` not found",
                        dr.name
                    )),
                }
                Split::Subsets {
                    stable: dr.stable_subset_name.clone(),
                    canary: dr.canary_subset_name.clone(),
                }
            }
            None => {
                let st = canary_spec.stable_service.clone().unwrap_or_default();
                let ca = canary_spec.canary_service.clone().unwrap_or_default();
                select_revision(resources, ns, &st, &stable, warnings);
                select_revision(resources, ns, &ca, &canary, warnings);
                Split::Hosts {
                    stable: resolve_host(&st, ns),
                    canary: resolve_host(&ca, ns),
                }
            }
        };
        let is_stable = |d: &Destination, vns: &str| split.is_stable(d, vns);
        let is_canary = |d: &Destination, vns: &str| split.is_canary(d, vns);
        let refs: Vec<_> = istio
            .virtual_service
            .iter()
            .chain(&istio.virtual_services)
            .collect();
        for vref in refs {
            let Some(Resource {
                spec: Spec::VirtualService(vs),
                metadata,
                ..
            }) = find(resources, "VirtualService", ns, &vref.name)
            else {
                warnings.push(format!(
                    "Rollout {ns}/{name}: VirtualService `{}` not found",
                    vref.name
                ));
                continue;
            };
            let vns = metadata.namespace().to_string();
            let set_weights = |route: &mut [RouteDestination]| {
                for d in route {
                    if is_stable(&d.destination, &vns) {
                        d.weight = Some(100 - weight);
                    } else if is_canary(&d.destination, &vns) {
                        d.weight = Some(weight);
                    }
                }
            };
            for tref in &vref.tcp_routes {
                match vs.tcp.iter_mut().find(|r| tcp_route_named(r, tref)) {
                    Some(r) => set_weights(&mut r.route),
                    None => warnings.push(format!(
                        "Rollout {ns}/{name}: VirtualService `{}` has no tcp route on port {:?}",
                        vref.name, tref.port
                    )),
                }
            }
            for tref in &vref.tls_routes {
                match vs.tls.iter_mut().find(|r| tls_route_named(r, tref)) {
                    Some(r) => set_weights(&mut r.route),
                    None => warnings.push(format!(
                        "Rollout {ns}/{name}: VirtualService `{}` has no tls route on port {:?} for {:?}",
                        vref.name, tref.port, tref.sni_hosts
                    )),
                }
            }
            let l4_only = vref.routes.is_empty()
                && (!vref.tcp_routes.is_empty() || !vref.tls_routes.is_empty());
            let single = vs.http.len() == 1;
            let mut primary: Option<HttpRoute> = None;
            for r in &mut vs.http {
                let named =
                    vref.routes.contains(&r.name) || (vref.routes.is_empty() && single && !l4_only);
                if !named {
                    continue;
                }
                set_weights(&mut r.route);
                primary.get_or_insert_with(|| r.clone());
            }
            let Some(primary) = primary else {
                if !l4_only {
                    warnings.push(format!(
                        "Rollout {ns}/{name}: VirtualService `{}` has no route named {:?}",
                        vref.name, vref.routes
                    ));
                }
                continue;
            };
            let canary_dest = primary
                .route
                .iter()
                .find(|d| is_canary(&d.destination, &vns))
                .map(|d| d.destination.clone());
            let Some(canary_dest) = canary_dest else {
                warnings.push(format!(
                    "Rollout {ns}/{name}: the named routes of `{}` have no canary destination",
                    vref.name
                ));
                continue;
            };
            // Managed routes first, in managedRoutes order.
            let mut managed = Vec::new();
            for m in &tr.managed_routes {
                if let Some(matches) = status.header_routes.get(&m.name) {
                    managed.push(HttpRoute {
                        name: m.name.clone(),
                        matches: matches
                            .iter()
                            .map(|h| HttpMatch {
                                headers: [(
                                    h.header_name.to_ascii_lowercase(),
                                    string_match(&h.header_value),
                                )]
                                .into(),
                                ..Default::default()
                            })
                            .collect(),
                        route: vec![RouteDestination {
                            destination: canary_dest.clone(),
                            weight: Some(100),
                            headers: None,
                        }],
                        ..Default::default()
                    });
                }
                if let Some(mr) = status.mirror_routes.get(&m.name) {
                    let mut route = primary.clone();
                    route.name = m.name.clone();
                    route.matches = mr
                        .matches
                        .iter()
                        .map(|mm| HttpMatch {
                            method: mm.method.as_ref().map(string_match),
                            uri: mm.path.as_ref().map(string_match),
                            headers: mm
                                .headers
                                .iter()
                                .map(|(k, v)| (k.to_ascii_lowercase(), string_match(v)))
                                .collect(),
                            ..Default::default()
                        })
                        .collect();
                    route.mirror = Some(canary_dest.clone());
                    route.mirror_percentage = Some(Percent {
                        value: f64::from(mr.percentage.unwrap_or(100)),
                    });
                    route.mirrors.clear();
                    route.mirror_percent = None;
                    managed.push(route);
                }
            }
            if !managed.is_empty() {
                vs.http
                    .retain(|r| !tr.managed_routes.iter().any(|m| m.name == r.name));
                managed.append(&mut vs.http);
                vs.http = managed;
            }
        }
    }
}
