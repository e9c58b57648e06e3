//! Services and their endpoints without Kubernetes: every ServiceEntry host is a service, with
//! the ServiceEntry's own `endpoints` or the WorkloadEntries its `workloadSelector` selects (in
//! its namespace). A DestinationRule subset holds the endpoints whose labels include its labels.

use std::collections::{BTreeMap, BTreeSet};

use sluice_config::istio::{Resource, ServicePort, Spec, WorkloadEntry};

use crate::naming::resolve_host;

/// How a service's endpoint addresses are used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    /// IP addresses, served over EDS.
    Static,
    /// Host names resolved by the proxy, every address used (`STRICT_DNS`).
    Dns,
    /// Host names resolved by the proxy, one address at a time (`LOGICAL_DNS`).
    DnsRoundRobin,
}

/// One service port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Port {
    pub number: u32,
    pub name: String,
    pub protocol: String,
    pub target_port: Option<u32>,
}

impl Port {
    fn from_spec(p: &ServicePort) -> Self {
        Port {
            number: p.number,
            name: p.name.clone(),
            protocol: p.protocol.clone().unwrap_or_default().to_ascii_uppercase(),
            target_port: p.target_port,
        }
    }

    /// Istio's protocol selection: the declared protocol, else the port name's prefix
    /// (`http-web`, `grpc`); HTTP when nothing says otherwise, since Sluice routes HTTP.
    pub fn protocol(&self) -> &str {
        if !self.protocol.is_empty() {
            return &self.protocol;
        }
        let n = self.name.to_ascii_lowercase();
        for p in [
            "http2", "grpc", "https", "tls", "tcp", "mongo", "mysql", "redis", "http",
        ] {
            if n == p || n.starts_with(&format!("{p}-")) {
                return match p {
                    "http2" => "HTTP2",
                    "grpc" => "GRPC",
                    "https" => "HTTPS",
                    "tls" => "TLS",
                    "http" => "HTTP",
                    _ => "TCP",
                };
            }
        }
        "HTTP"
    }

    /// Routed as HTTP (an outbound virtual host is made for it).
    pub fn is_http(&self) -> bool {
        matches!(self.protocol(), "HTTP" | "HTTP2" | "GRPC" | "GRPC-WEB")
    }

    /// Upstream speaks HTTP/2.
    pub fn is_http2(&self) -> bool {
        matches!(self.protocol(), "HTTP2" | "GRPC")
    }
}

/// One endpoint of a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub address: String,
    pub ports: BTreeMap<String, u32>,
    pub labels: BTreeMap<String, String>,
    pub weight: u32,
    pub locality: String,
}

impl Endpoint {
    fn from_spec(w: &WorkloadEntry, extra_labels: &BTreeMap<String, String>) -> Self {
        let mut labels = extra_labels.clone();
        labels.extend(w.labels.clone());
        Endpoint {
            address: w.address.clone(),
            ports: w.ports.clone(),
            labels,
            weight: w.weight.unwrap_or(1).max(1),
            locality: w.locality.clone().unwrap_or_default(),
        }
    }

    /// Does this endpoint carry every label of `selector`?
    pub fn selected_by(&self, selector: &BTreeMap<String, String>) -> bool {
        selector
            .iter()
            .all(|(k, v)| self.labels.get(k).is_some_and(|l| l == v))
    }
}

/// A service: one ServiceEntry host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    pub fqdn: String,
    pub namespace: String,
    /// The ServiceEntry's `exportTo`: which namespaces' proxies see the service.
    pub export_to: Vec<String>,
    pub ports: Vec<Port>,
    pub resolution: Resolution,
    pub endpoints: Vec<Endpoint>,
}

impl Service {
    /// The port of the service with this number.
    pub fn port(&self, number: u32) -> Option<&Port> {
        self.ports.iter().find(|p| p.number == number)
    }

    /// The port an endpoint listens on for a service port: the endpoint's own mapping for the
    /// port's name, else the port's `targetPort`, else its number.
    pub fn endpoint_port(&self, ep: &Endpoint, port: &Port) -> u32 {
        ep.ports
            .get(&port.name)
            .copied()
            .or(port.target_port)
            .unwrap_or(port.number)
    }
}

/// Every service known to the control plane, by FQDN.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Registry {
    pub services: BTreeMap<String, Service>,
}

impl Registry {
    /// Build the registry from the ServiceEntries and WorkloadEntries among `resources`.
    /// Several ServiceEntries naming one host add their ports and endpoints together.
    pub fn build(resources: &[Resource]) -> Registry {
        let workloads: Vec<(&str, &WorkloadEntry)> = resources
            .iter()
            .filter_map(|r| match &r.spec {
                Spec::WorkloadEntry(w) => Some((r.metadata.namespace(), w)),
                _ => None,
            })
            .collect();
        let mut services: BTreeMap<String, Service> = BTreeMap::new();
        for r in resources {
            let Spec::ServiceEntry(se) = &r.spec else {
                continue;
            };
            let ns = r.metadata.namespace();
            let resolution = match se.resolution.as_deref() {
                Some("DNS") => Resolution::Dns,
                Some("DNS_ROUND_ROBIN") => Resolution::DnsRoundRobin,
                _ => Resolution::Static,
            };
            let mut endpoints: Vec<Endpoint> = se
                .endpoints
                .iter()
                .map(|e| Endpoint::from_spec(e, &BTreeMap::new()))
                .collect();
            if let Some(sel) = &se.workload_selector {
                for (wns, w) in &workloads {
                    let ep = Endpoint::from_spec(w, &BTreeMap::new());
                    if *wns == ns && ep.selected_by(&sel.labels) && !w.address.is_empty() {
                        endpoints.push(ep);
                    }
                }
            }
            for host in &se.hosts {
                let fqdn = resolve_host(host, ns);
                let svc = services.entry(fqdn.clone()).or_insert_with(|| Service {
                    fqdn: fqdn.clone(),
                    namespace: ns.to_string(),
                    export_to: se.export_to.clone(),
                    ports: Vec::new(),
                    resolution,
                    endpoints: Vec::new(),
                });
                let mut seen: BTreeSet<u32> = svc.ports.iter().map(|p| p.number).collect();
                for p in &se.ports {
                    if seen.insert(p.number) {
                        svc.ports.push(Port::from_spec(p));
                    }
                }
                svc.endpoints.extend(endpoints.iter().cloned());
            }
        }
        Registry { services }
    }

    /// The service with this FQDN.
    pub fn get(&self, fqdn: &str) -> Option<&Service> {
        self.services.get(fqdn)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use sluice_config::istio::{parse_text, Parsed};

    /// The Istio resources of a YAML text (a test fixture; panics on a parse error).
    pub(crate) fn resources(text: &str) -> Vec<Resource> {
        parse_text("t.yaml", text)
            .unwrap()
            .into_iter()
            .filter_map(|p| match p {
                Parsed::Istio(r) => Some(*r),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn endpoints_from_service_entry_and_workload_entries() {
        let r = resources(
            r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews}
spec:
  hosts: [reviews]
  ports: [{number: 9080, name: http}]
  resolution: STATIC
  workloadSelector: {labels: {app: reviews}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: reviews-v1}
spec: {address: 127.0.0.1, labels: {app: reviews, version: v1}, ports: {http: 8081}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: reviews-v2, namespace: other}
spec: {address: 127.0.0.2, labels: {app: reviews, version: v2}}
"#,
        );
        let reg = Registry::build(&r);
        let svc = reg.get("reviews.default.svc.cluster.local").unwrap();
        assert_eq!(
            svc.endpoints.len(),
            1,
            "the other namespace's workload is not selected"
        );
        let port = svc.port(9080).unwrap();
        assert_eq!(svc.endpoint_port(&svc.endpoints[0], port), 8081);
        assert!(port.is_http());
    }

    #[test]
    fn protocol_from_port_name() {
        let p = |name: &str, proto: &str| Port {
            number: 1,
            name: name.into(),
            protocol: proto.into(),
            target_port: None,
        };
        assert!(p("grpc-api", "").is_http2());
        assert!(!p("https", "").is_http());
        assert!(!p("x", "TCP").is_http());
        assert!(p("web", "").is_http());
    }
}
