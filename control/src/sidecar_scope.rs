//! Istio's `Sidecar` resource: which services and VirtualServices a sidecar imports.
//!
//! The Sidecar that applies to a proxy is, as in Istio, the one of its namespace whose
//! `workloadSelector` matches its labels, else the one of its namespace without a selector, else
//! the root namespace's (`istio-system`) without a selector; without one, a sidecar sees
//! everything exported to its namespace. Its `egress` hosts are `namespace/dnsName`: the
//! namespace `*` (any), `.` (the workload's own), `~` (none) or a name; the DNS name `*`, `*.suffix`
//! or a host. A service (by its ServiceEntry's namespace) and a VirtualService (by its own) are
//! imported when one entry matches one of their hosts.

use std::collections::BTreeMap;

use sluice_config::istio::{Resource, Sidecar, Spec};

use crate::authz_translate::ROOT_NAMESPACE;
use crate::naming::host_matches;

/// The hosts one Sidecar imports.
#[derive(Debug, Clone, PartialEq)]
pub struct SidecarScope {
    /// The workload's namespace (for `.`).
    namespace: String,
    /// `(namespace, dnsName)` of each egress host.
    hosts: Vec<(String, String)>,
}

/// The Sidecar applying to a proxy with `labels` in `namespace`, if any.
pub fn for_proxy(
    resources: &[Resource],
    labels: &BTreeMap<String, String>,
    namespace: &str,
) -> Option<SidecarScope> {
    let sidecars: Vec<(&Resource, &Sidecar)> = resources
        .iter()
        .filter_map(|r| match &r.spec {
            Spec::Sidecar(s) => Some((r, s.as_ref())),
            _ => None,
        })
        .collect();
    let selects = |s: &Sidecar| {
        s.workload_selector
            .as_ref()
            .is_some_and(|w| w.labels.iter().all(|(k, v)| labels.get(k) == Some(v)))
    };
    let of = |ns: &str| -> Vec<&(&Resource, &Sidecar)> {
        sidecars
            .iter()
            .filter(|(r, _)| r.metadata.namespace() == ns)
            .collect()
    };
    let (own, root) = (of(namespace), of(ROOT_NAMESPACE));
    let chosen = own
        .iter()
        .find(|(_, s)| selects(s))
        .or_else(|| own.iter().find(|(_, s)| s.workload_selector.is_none()))
        .or_else(|| root.iter().find(|(_, s)| s.workload_selector.is_none()))?;
    let (_, s) = chosen;
    Some(SidecarScope {
        // `.` is the workload's namespace, also for the root namespace's Sidecar (Istio turns it
        // into one of the workload's namespace).
        namespace: namespace.to_string(),
        hosts: s
            .egress
            .iter()
            .flat_map(|e| &e.hosts)
            .filter_map(|h| h.split_once('/'))
            .map(|(ns, dns)| (ns.to_string(), dns.to_string()))
            .collect(),
    })
}

impl SidecarScope {
    /// Whether `host`, of a service or VirtualService in `namespace`, is imported.
    pub fn imports(&self, namespace: &str, host: &str) -> bool {
        self.hosts.iter().any(|(ns, dns)| {
            let ns_ok = match ns.as_str() {
                "*" => true,
                "." => namespace == self.namespace,
                "~" => false,
                other => other == namespace,
            };
            ns_ok && (dns == "*" || host_matches(dns, host) || host_matches(host, dns))
        })
    }
}

/// Whether `scope` (none: everything) imports `host` of `namespace`.
pub fn imported(scope: Option<&SidecarScope>, namespace: &str, host: &str) -> bool {
    scope.is_none_or(|s| s.imports(namespace, host))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::tests::resources;

    #[test]
    fn the_most_specific_sidecar_applies_and_imports_its_hosts() {
        let r = resources(
            r#"apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default, namespace: istio-system}
spec:
  egress: [{hosts: ["./*"]}]
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default, namespace: shop}
spec:
  egress: [{hosts: ["./*", "istio-system/*", "*/*.payments.example.com"]}]
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: cart, namespace: shop}
spec:
  workloadSelector: {labels: {app: cart}}
  egress: [{hosts: ["billing/ledger.billing.svc.cluster.local", "~/*"]}]
"#,
        );
        let labels = |l: &[(&str, &str)]| -> BTreeMap<String, String> {
            l.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let web = for_proxy(&r, &labels(&[("app", "web")]), "shop").unwrap();
        assert!(web.imports("shop", "web.shop.svc.cluster.local"));
        assert!(web.imports("istio-system", "gw.istio-system.svc.cluster.local"));
        assert!(web.imports("billing", "api.payments.example.com"));
        assert!(!web.imports("billing", "ledger.billing.svc.cluster.local"));
        let cart = for_proxy(&r, &labels(&[("app", "cart")]), "shop").unwrap();
        assert!(cart.imports("billing", "ledger.billing.svc.cluster.local"));
        assert!(!cart.imports("shop", "web.shop.svc.cluster.local"));
        // Another namespace falls back to the root namespace's: only its own namespace.
        let other = for_proxy(&r, &labels(&[]), "blog").unwrap();
        assert!(other.imports("blog", "posts.blog.svc.cluster.local"));
        assert!(!other.imports("shop", "web.shop.svc.cluster.local"));
        assert!(imported(None, "shop", "anything"));
    }
}
