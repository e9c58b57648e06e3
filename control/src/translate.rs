//! From the Istio resources of the whole mesh to the Envoy resources one proxy receives.
//!
//! [`MeshConfig::new`] resolves services and builds the clusters (the same for every proxy);
//! [`MeshConfig::for_proxy`] adds the listeners and route configurations of the proxy's role:
//!
//! * a **gateway** gets one listener per port of the Gateways its labels select, with RDS route
//!   configuration `http.PORT` (HTTPS servers: one TLS filter chain per server, selected by SNI,
//!   route configuration `https.PORT.SERVER.GATEWAY.NAMESPACE`), holding the VirtualServices bound
//!   to those Gateways; TCP servers and TLS servers relay connections by `tcp` routes, PASSTHROUGH
//!   servers by the SNI hosts of `tls` routes ([`crate::l4_translate`]);
//! * a **sidecar** gets one outbound HTTP listener (used through `HTTP_PROXY`) with route
//!   configuration `outbound`: a virtual host per HTTP port of every service, reachable by the
//!   FQDN, `name`, `name.namespace` forms with `:port`, and routed by the `mesh` VirtualService of
//!   that host (or straight to `outbound|PORT||FQDN`); plus a listener on the same IP for each
//!   port that mesh `tcp` / `tls` routes name.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Map, Value};
use sluice_config::istio::{Gateway, Resource, Server, Spec, VirtualService};

use crate::authz_translate;
use crate::cluster_translate::{self, ClusterSet};
use crate::l4_translate;
use crate::naming::{cluster_name, host_aliases, host_matches, resolve_host};
use crate::node_role::Role;
use crate::registry::Registry;
use crate::route_translate::{self, cors_filter, fault_filter, RouteContext, RouteNeeds, Source};
use crate::sidecar_scope::{self, SidecarScope};

pub const HCM_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
const ROUTER_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router";
const DOWNSTREAM_TLS_TYPE: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext";
const TLS_INSPECTOR_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector";
/// Name of a sidecar's outbound listener and of its route configuration.
pub const OUTBOUND: &str = "outbound";
/// Name of a sidecar's inbound listener and of its route configuration.
pub const INBOUND: &str = "inbound";

/// The Envoy resources for one proxy, by resource name, as proto JSON.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProxyResources {
    pub clusters: BTreeMap<String, Value>,
    pub endpoints: BTreeMap<String, Value>,
    pub listeners: BTreeMap<String, Value>,
    pub routes: BTreeMap<String, Value>,
}

impl ProxyResources {
    /// Each type's resources, in push order.
    pub fn by_type(&self) -> [(crate::xds_encode::XdsType, &BTreeMap<String, Value>); 4] {
        use crate::xds_encode::XdsType;
        [
            (XdsType::Cluster, &self.clusters),
            (XdsType::Endpoint, &self.endpoints),
            (XdsType::Listener, &self.listeners),
            (XdsType::Route, &self.routes),
        ]
    }
}

/// The translated mesh: services, clusters, and the inputs listeners are built from.
#[derive(Debug, Clone, Default)]
pub struct MeshConfig {
    pub resources: Vec<Resource>,
    pub registry: Registry,
    pub clusters: ClusterSet,
    /// When a DestinationRule's `exportTo` limits who sees it: the clusters as proxies of each
    /// namespace the configuration names see them, and as any other namespace sees them.
    scoped_clusters: Option<(BTreeMap<String, ClusterSet>, ClusterSet)>,
    /// Things that translate but will not work as written (unknown subsets, missing ports).
    pub warnings: Vec<String>,
}

impl MeshConfig {
    /// Translate the mesh-wide part. `resources` are taken in order (sort them for stable output).
    pub fn new(resources: Vec<Resource>) -> Self {
        let mut resources = resources;
        let mut warnings = Vec::new();
        crate::delegation::expand(&mut resources, &mut warnings);
        let registry = Registry::build(&resources);
        let clusters = cluster_translate::clusters(&resources, &registry, &mut warnings);
        let scoped_clusters = scoped_clusters(&resources, &registry);
        let mut mesh = MeshConfig {
            resources,
            registry,
            clusters,
            scoped_clusters,
            warnings,
        };
        // Translate once for a sidecar and for every Gateway, so that warnings about routes show
        // up when the configuration is loaded rather than when the first proxy connects.
        let mut w = Vec::new();
        let anywhere = BTreeMap::new();
        if let Ok(addr) = crate::node_role::DEFAULT_OUTBOUND.parse() {
            let source = Source {
                labels: &anywhere,
                namespace: "default",
            };
            mesh.sidecar(&[addr], &source, &mut w);
        }
        for (gw, ns) in mesh.gateways() {
            let source = Source {
                labels: &gw.1.selector,
                namespace: &ns,
            };
            mesh.gateway_listeners(
                &[(format!("{ns}/{}", gw.0), gw.1.clone())],
                "0.0.0.0",
                &source,
                &mut w,
            );
        }
        w.sort();
        w.dedup();
        mesh.warnings.extend(w);
        mesh
    }

    /// The clusters a proxy of `namespace` sees (DestinationRules by `exportTo`).
    fn clusters_for(&self, namespace: &str) -> &ClusterSet {
        match &self.scoped_clusters {
            None => &self.clusters,
            Some((by_namespace, elsewhere)) => by_namespace.get(namespace).unwrap_or(elsewhere),
        }
    }

    fn gateways(&self) -> Vec<((String, Gateway), String)> {
        self.resources
            .iter()
            .filter_map(|r| match &r.spec {
                Spec::Gateway(g) => Some((
                    (r.metadata.name.clone(), g.clone()),
                    r.metadata.namespace().to_string(),
                )),
                _ => None,
            })
            .collect()
    }

    /// The VirtualServices a proxy in namespace `viewer` sees (`exportTo`).
    fn virtual_services<'s>(
        &'s self,
        viewer: &'s str,
    ) -> impl Iterator<Item = (&'s VirtualService, &'s str)> {
        self.resources.iter().filter_map(move |r| match &r.spec {
            Spec::VirtualService(vs)
                if exported_to(&vs.export_to, r.metadata.namespace(), viewer) =>
            {
                Some((vs, r.metadata.namespace()))
            }
            _ => None,
        })
    }

    /// `role` without what no resource reads: a sidecar's labels when no match has
    /// `sourceLabels`, and its namespace too when nothing has `sourceNamespace` or an `exportTo`
    /// other than `*` (gateways keep theirs: Gateway selectors read the labels). Proxies that
    /// differ only there get one translation.
    pub fn canonical_role(&self, role: &Role) -> Role {
        let Role::Sidecar {
            outbound,
            inbound,
            labels,
            namespace,
        } = role
        else {
            return role.clone();
        };
        let (by_labels, by_namespace) = self.source_reads();
        Role::Sidecar {
            outbound: *outbound,
            inbound: inbound.clone(),
            labels: if by_labels {
                labels.clone()
            } else {
                BTreeMap::new()
            },
            namespace: if by_namespace {
                namespace.clone()
            } else {
                "default".into()
            },
        }
    }

    /// Whether some resource reads a proxy's labels (`sourceLabels`) and its namespace
    /// (`sourceNamespace`, `exportTo`).
    fn source_reads(&self) -> (bool, bool) {
        let (mut labels, mut namespace) = (false, false);
        for r in &self.resources {
            match &r.spec {
                Spec::VirtualService(vs) => {
                    namespace |= vs.export_to.iter().any(|e| e != "*");
                    let l4 = vs.tcp.iter().flat_map(|t| {
                        t.matches
                            .iter()
                            .map(|m| (&m.source_labels, &m.source_namespace))
                    });
                    let tls = vs.tls.iter().flat_map(|t| {
                        t.matches
                            .iter()
                            .map(|m| (&m.source_labels, &m.source_namespace))
                    });
                    let http = vs.http.iter().flat_map(|h| {
                        h.matches
                            .iter()
                            .map(|m| (&m.source_labels, &m.source_namespace))
                    });
                    for (l, n) in http.chain(l4).chain(tls) {
                        labels |= !l.is_empty();
                        namespace |= n.is_some();
                    }
                }
                Spec::ServiceEntry(se) => namespace |= se.export_to.iter().any(|e| e != "*"),
                Spec::DestinationRule(dr) => namespace |= dr.export_to.iter().any(|e| e != "*"),
                // Which policies reach a sidecar's inbound side depends on both.
                Spec::AuthorizationPolicy(_) => {
                    labels = true;
                    namespace = true;
                }
                // Which Sidecar applies depends on the namespace, and on labels with a selector.
                Spec::Sidecar(sc) => {
                    namespace = true;
                    labels |= sc.workload_selector.is_some();
                }
                _ => {}
            }
        }
        (labels, namespace)
    }

    /// Everything `role` receives.
    pub fn for_proxy(&self, role: &Role) -> ProxyResources {
        let namespace = match role {
            Role::Sidecar { namespace, .. } | Role::Gateway { namespace, .. } => namespace,
        };
        let seen = self.clusters_for(namespace);
        let mut out = ProxyResources {
            clusters: seen.clusters.clone(),
            endpoints: seen.endpoints.clone(),
            ..Default::default()
        };
        let mut warnings = Vec::new();
        let (listeners, routes) = match role {
            Role::Sidecar {
                outbound,
                inbound,
                labels,
                namespace,
            } => {
                let source = Source { labels, namespace };
                let (mut listeners, mut routes) =
                    self.sidecar(std::slice::from_ref(outbound), &source, &mut warnings);
                if let Some(inbound) = inbound {
                    let (name, cluster, listener, route) = self.inbound(inbound, &source);
                    out.clusters.insert(name, cluster);
                    listeners.insert(INBOUND.to_string(), listener);
                    routes.insert(INBOUND.to_string(), route);
                }
                (listeners, routes)
            }
            Role::Gateway {
                labels,
                bind_ip,
                namespace,
            } => {
                let source = Source { labels, namespace };
                let selected: Vec<(String, Gateway)> = self
                    .gateways()
                    .into_iter()
                    .filter(|((_, g), _)| g.selector.iter().all(|(k, v)| labels.get(k) == Some(v)))
                    .map(|((name, g), ns)| (format!("{ns}/{name}"), g))
                    .collect();
                self.gateway_listeners(&selected, bind_ip, &source, &mut warnings)
            }
        };
        out.listeners = listeners;
        out.routes = routes;
        out
    }

    fn sidecar(
        &self,
        outbound: &[std::net::SocketAddr],
        source: &Source<'_>,
        warnings: &mut Vec<String>,
    ) -> (BTreeMap<String, Value>, BTreeMap<String, Value>) {
        let Some(addr) = outbound.first() else {
            return Default::default();
        };
        let mesh: BTreeSet<String> = ["mesh".to_string()].into();
        let mut seen_domains = BTreeSet::new();
        let mut vhosts = Vec::new();
        let mut needs = RouteNeeds::default();
        let scope = sidecar_scope::for_proxy(&self.resources, source.labels, source.namespace);
        let scope = scope.as_ref();
        for svc in self.registry.services.values() {
            if !exported_to(&svc.export_to, &svc.namespace, source.namespace)
                || !sidecar_scope::imported(scope, &svc.namespace, &svc.fqdn)
            {
                continue;
            }
            let http_ports: Vec<_> = svc.ports.iter().filter(|p| p.is_http()).collect();
            for port in &http_ports {
                let ctx = RouteContext {
                    registry: &self.registry,
                    clusters: self.clusters_for(source.namespace),
                    gateways: &mesh,
                    port: port.number,
                    service_port: Some(port.number),
                    source,
                };
                let mut routes = Vec::new();
                if let Some((vs, ns)) = self.virtual_service_for(&svc.fqdn, source, scope) {
                    ctx.routes(vs, ns, &mut routes, &mut needs, warnings);
                }
                if routes.is_empty() {
                    routes.push(json!({
                        "name": "default",
                        "match": {"prefix": "/"},
                        "route": {
                            "cluster": cluster_name(port.number, "", &svc.fqdn),
                            "timeout": "0s",
                            "retry_policy": route_translate::default_retry_policy(),
                        },
                    }));
                }
                let unported = port.number == 80 || http_ports.len() == 1;
                let mut domains = Vec::new();
                for alias in host_aliases(&svc.fqdn) {
                    let mut forms = vec![format!("{alias}:{}", port.number)];
                    if unported {
                        forms.push(alias.clone());
                    }
                    for d in forms {
                        if seen_domains.insert(d.clone()) {
                            domains.push(d);
                        } else {
                            warnings.push(format!(
                                "domain `{d}` is used by two services; the first keeps it"
                            ));
                        }
                    }
                }
                if domains.is_empty() {
                    continue;
                }
                vhosts.push(json!({
                    "name": format!("{}:{}", svc.fqdn, port.number),
                    "domains": domains,
                    "routes": routes,
                }));
            }
        }
        let route_config =
            json!({"name": OUTBOUND, "virtual_hosts": vhosts, "validate_clusters": false});
        let listener = json!({
            "name": OUTBOUND,
            "address": {"socket_address": {"address": addr.ip().to_string(), "port_value": addr.port()}},
            "filter_chains": [{"filters": [hcm(
                &format!("outbound_{}_{}", addr.ip(), addr.port()),
                OUTBOUND,
                false,
                &needs,
                // Istio enforces AuthorizationPolicies where traffic arrives, not where it leaves.
                &[],
            )]}],
        });
        let mut listeners: BTreeMap<String, Value> = [(OUTBOUND.to_string(), listener)].into();
        listeners.extend(self.sidecar_l4_listeners(*addr, source, scope, warnings));
        (listeners, [(OUTBOUND.to_string(), route_config)].into())
    }

    /// A sidecar's listeners for the `tcp` and `tls` routes of mesh VirtualServices: one per
    /// port those routes name (or, for routes without a port, per non-HTTP port of the services
    /// the VirtualService names), on the outbound listener's address. TLS routes become chains
    /// selected by SNI; the first VirtualService with a TCP route for the port takes the rest.
    fn sidecar_l4_listeners(
        &self,
        outbound: std::net::SocketAddr,
        source: &Source<'_>,
        scope: Option<&SidecarScope>,
        warnings: &mut Vec<String>,
    ) -> Vec<(String, Value)> {
        let mesh: BTreeSet<String> = ["mesh".to_string()].into();
        let for_mesh = |gateways: &[String], vs: &VirtualService, ns: &str| {
            l4_translate::applies_to(gateways, vs, ns)
                .iter()
                .any(|g| g == "mesh")
        };
        let mut ports = BTreeSet::new();
        for (vs, ns) in self.virtual_services(source.namespace) {
            if !vs_imported(scope, vs, ns) {
                continue;
            }
            let mut portless = false;
            let matches = vs
                .tcp
                .iter()
                .flat_map(|r| {
                    portless |= r.matches.is_empty() && for_mesh(&[], vs, ns);
                    r.matches.iter().map(|m| (m.port, &m.gateways))
                })
                .chain(
                    vs.tls
                        .iter()
                        .flat_map(|r| r.matches.iter().map(|m| (m.port, &m.gateways))),
                )
                .collect::<Vec<_>>();
            for (port, gateways) in matches {
                if !for_mesh(gateways, vs, ns) {
                    continue;
                }
                match port {
                    Some(p) => {
                        ports.insert(p);
                    }
                    None => portless = true,
                }
            }
            if portless {
                for h in &vs.hosts {
                    if let Some(svc) = self.registry.get(&resolve_host(h, ns)) {
                        ports.extend(svc.ports.iter().filter(|p| !p.is_http()).map(|p| p.number));
                    }
                }
            }
        }
        let ip = outbound.ip().to_string();
        let mut out = Vec::new();
        for port in ports {
            if port == u32::from(outbound.port()) {
                warnings.push(format!(
                    "port {port}: TCP/TLS routes on the sidecar's outbound HTTP port are left out"
                ));
                continue;
            }
            let stat_prefix = format!("outbound_{ip}_{port}");
            let ctx = RouteContext {
                registry: &self.registry,
                clusters: self.clusters_for(source.namespace),
                gateways: &mesh,
                port,
                service_port: Some(port),
                source,
            };
            let mut claimed = BTreeSet::new();
            let mut chains = Vec::new();
            for (vs, ns) in self.virtual_services(source.namespace) {
                l4_translate::tls_route_chains(
                    &ctx,
                    vs,
                    ns,
                    &stat_prefix,
                    &mut claimed,
                    &mut chains,
                    warnings,
                );
            }
            let mut tcp = self
                .virtual_services(source.namespace)
                .filter_map(|(vs, ns)| {
                    l4_translate::tcp_route_filter(&ctx, vs, ns, &stat_prefix, warnings)
                        .map(|f| (vs, f))
                });
            if let Some((_, filter)) = tcp.next() {
                if tcp.next().is_some() {
                    warnings.push(format!(
                        "port {port}: several mesh VirtualServices route TCP on this port; the first takes it"
                    ));
                }
                if l4_translate::claim(&mut claimed, &[]) {
                    chains.push(json!({"filters": [filter]}));
                } else {
                    warnings.push(format!(
                        "port {port}: a TLS route for every SNI host hides the TCP route"
                    ));
                }
            }
            if chains.is_empty() {
                continue;
            }
            let name = format!("{ip}_{port}");
            let mut l = Map::new();
            l.insert("name".into(), json!(name));
            l.insert(
                "address".into(),
                json!({"socket_address": {"address": ip, "port_value": port}}),
            );
            if claimed.iter().any(|k| !k.is_empty()) {
                l.insert(
                    "listener_filters".into(),
                    json!([{
                        "name": "envoy.filters.listener.tls_inspector",
                        "typed_config": {"@type": TLS_INSPECTOR_TYPE},
                    }]),
                );
            }
            l.insert("filter_chains".into(), Value::Array(chains));
            out.push((name, Value::Object(l)));
        }
        out
    }

    /// A sidecar's inbound side: a listener at `inbound.listen` sending everything to its
    /// workload through the cluster `inbound|PORT||FQDN` (the service whose endpoints carry the
    /// workload's labels), which the proxy reports with `reporter="destination"`.
    fn inbound(
        &self,
        inbound: &crate::node_role::Inbound,
        source: &Source<'_>,
    ) -> (String, Value, Value, Value) {
        let service = self.registry.services.values().find_map(|svc| {
            let mine = svc.endpoints.iter().any(|e| {
                !e.labels.is_empty()
                    && e.labels
                        .iter()
                        .all(|(k, v)| inbound.labels.get(k) == Some(v))
            });
            let port = svc.ports.iter().find(|p| p.is_http())?;
            mine.then(|| (svc.fqdn.clone(), port.number))
        });
        let (fqdn, port) =
            service.unwrap_or_else(|| ("unknown".into(), u32::from(inbound.app.port())));
        let name = format!("inbound|{port}||{fqdn}");
        let cluster = json!({
            "name": name,
            "type": "STATIC",
            "connect_timeout": "10s",
            "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {
                "address": inbound.app.ip().to_string(), "port_value": inbound.app.port()}}}}]}]},
        });
        let route = json!({"name": INBOUND, "validate_clusters": false, "virtual_hosts": [{
            "name": "inbound",
            "domains": ["*"],
            "routes": [{"name": "default", "match": {"prefix": "/"}, "route": {"cluster": name, "timeout": "0s"}}],
        }]});
        let l = inbound.listen;
        let authz = authz_translate::rbac_filters(&self.resources, source.labels, source.namespace);
        let listener = json!({
            "name": INBOUND,
            "address": {"socket_address": {"address": l.ip().to_string(), "port_value": l.port()}},
            "filter_chains": [{"filters": [hcm(&format!("inbound_{}_{}", l.ip(), l.port()), INBOUND, false, &RouteNeeds::default(), &authz)]}],
        });
        (name, cluster, listener, route)
    }

    /// The mesh VirtualService for a host: one naming it exactly, else the most specific
    /// wildcard; among equals the first (resources are sorted by namespace and name).
    fn virtual_service_for<'s>(
        &'s self,
        fqdn: &str,
        source: &Source<'s>,
        scope: Option<&SidecarScope>,
    ) -> Option<(&'s VirtualService, &'s str)> {
        let mut best: Option<(usize, (&VirtualService, &str))> = None;
        for (vs, ns) in self.virtual_services(source.namespace) {
            if !vs_imported(scope, vs, ns) {
                continue;
            }
            for h in &vs.hosts {
                let h = resolve_host(h, ns);
                if !host_matches(&h, fqdn) {
                    continue;
                }
                let score = if h == fqdn { usize::MAX } else { h.len() };
                if best.is_none_or(|(s, _)| score > s) {
                    best = Some((score, (vs, ns)));
                }
            }
        }
        best.map(|(_, v)| v)
    }

    /// Virtual hosts for the VirtualServices bound to `gateways` whose hosts the servers accept.
    #[allow(clippy::too_many_arguments)]
    fn gateway_virtual_hosts(
        &self,
        gateways: &BTreeSet<String>,
        server_hosts: &[String],
        port: u32,
        source: &Source<'_>,
        needs: &mut RouteNeeds,
        warnings: &mut Vec<String>,
    ) -> Vec<Value> {
        let ctx = RouteContext {
            registry: &self.registry,
            clusters: self.clusters_for(source.namespace),
            gateways,
            port,
            service_port: None,
            source,
        };
        let mut by_host: Vec<(String, Vec<Value>)> = Vec::new();
        for (vs, ns) in self.virtual_services(source.namespace) {
            for host in &vs.hosts {
                let host = resolve_host(host, ns);
                let accepted = server_hosts
                    .iter()
                    .any(|s| host_matches(s, &host) || host_matches(&host, s));
                if !accepted {
                    continue;
                }
                let mut routes = Vec::new();
                ctx.routes(vs, ns, &mut routes, needs, warnings);
                if routes.is_empty() {
                    continue;
                }
                match by_host.iter_mut().find(|(h, _)| *h == host) {
                    Some((_, existing)) => existing.extend(routes),
                    None => by_host.push((host, routes)),
                }
            }
        }
        by_host
            .into_iter()
            .map(|(host, routes)| {
                let domains = if host == "*" {
                    json!(["*"])
                } else {
                    json!([host, format!("{host}:{port}")])
                };
                json!({"name": format!("{host}:{port}"), "domains": domains, "routes": routes})
            })
            .collect()
    }

    /// Where a gateway's L4 routes are built: `gateways` on `port`.
    fn l4_context<'a>(
        &'a self,
        gateways: &'a BTreeSet<String>,
        port: u32,
        source: &'a Source<'a>,
    ) -> RouteContext<'a> {
        RouteContext {
            registry: &self.registry,
            clusters: self.clusters_for(source.namespace),
            gateways,
            port,
            service_port: None,
            source,
        }
    }

    /// The `tcp_proxy` of a TCP server: the first `tcp` route that applies, of the
    /// VirtualServices bound to its gateway whose hosts it accepts.
    #[allow(clippy::too_many_arguments)]
    fn gateway_tcp_filter(
        &self,
        gref: &str,
        s: &Server,
        port: u32,
        stat_prefix: &str,
        source: &Source<'_>,
        warnings: &mut Vec<String>,
    ) -> Option<Value> {
        let refs: BTreeSet<String> = [gref.to_string()].into();
        let ctx = self.l4_context(&refs, port, source);
        let hosts = server_hosts(s);
        self.virtual_services(source.namespace)
            .filter(|(vs, ns)| vs_accepted(vs, ns, &hosts))
            .find_map(|(vs, ns)| {
                l4_translate::tcp_route_filter(&ctx, vs, ns, stat_prefix, warnings)
            })
    }

    fn gateway_listeners(
        &self,
        selected: &[(String, Gateway)],
        bind_ip: &str,
        source: &Source<'_>,
        warnings: &mut Vec<String>,
    ) -> (BTreeMap<String, Value>, BTreeMap<String, Value>) {
        // Servers by port: (gateway ref, server).
        let mut ports: BTreeMap<u32, Vec<(&str, &Server)>> = BTreeMap::new();
        for (gref, gw) in selected {
            for s in &gw.servers {
                ports.entry(s.port.number).or_default().push((gref, s));
            }
        }
        let mut listeners = BTreeMap::new();
        let mut routes = BTreeMap::new();
        let authz = authz_translate::rbac_filters(&self.resources, source.labels, source.namespace);
        let tcp_authz =
            authz_translate::network_rbac_filters(&self.resources, source.labels, source.namespace);
        for (port, servers) in ports {
            let name = format!("{bind_ip}_{port}");
            let stat_prefix = format!("outbound_{bind_ip}_{port}");
            let (plain, tls): (Vec<_>, Vec<_>) =
                servers.iter().partition(|(_, s)| !terminates_tls(s));
            let mut chains = Vec::new();
            let mut listener_filters = None;
            if !plain.is_empty() {
                if !tls.is_empty() {
                    warnings.push(format!(
                        "port {port}: plaintext and TLS servers on one port; the TLS servers are left out"
                    ));
                }
                let (tcp, http): (Vec<_>, Vec<_>) = plain
                    .iter()
                    .partition(|(_, s)| server_kind(s) == ServerKind::Tcp);
                if !http.is_empty() {
                    if !tcp.is_empty() {
                        warnings.push(format!(
                            "port {port}: HTTP and TCP servers on one port; the TCP servers are left out"
                        ));
                    }
                    let refs: BTreeSet<String> = http.iter().map(|(g, _)| g.to_string()).collect();
                    let hosts: Vec<String> =
                        http.iter().flat_map(|(_, s)| server_hosts(s)).collect();
                    let rds = format!("http.{port}");
                    let mut needs = RouteNeeds::default();
                    let mut vhosts = self
                        .gateway_virtual_hosts(&refs, &hosts, port, source, &mut needs, warnings);
                    // `httpsRedirect`: the hosts of those servers answer with a redirect to
                    // HTTPS, with or without a VirtualService.
                    let redirect: Vec<String> = http
                        .iter()
                        .filter(|(_, s)| s.tls.as_ref().is_some_and(|t| t.https_redirect))
                        .flat_map(|(_, s)| server_hosts(s))
                        .collect();
                    https_redirects(&mut vhosts, &redirect, port);
                    routes.insert(
                        rds.clone(),
                        json!({"name": rds, "virtual_hosts": vhosts, "validate_clusters": false}),
                    );
                    chains
                        .push(json!({"filters": [hcm(&stat_prefix, &rds, true, &needs, &authz)]}));
                } else if let Some(filter) = tcp.iter().find_map(|(gref, s)| {
                    self.gateway_tcp_filter(gref, s, port, &stat_prefix, source, warnings)
                }) {
                    chains.push(json!({"filters": [filter]}));
                }
            } else {
                let mut claimed = BTreeSet::new();
                for (i, (gref, s)) in tls.iter().enumerate() {
                    let sname = if s.name.is_empty() {
                        i.to_string()
                    } else {
                        s.name.clone()
                    };
                    let hosts = server_hosts(s);
                    let filters = match server_kind(s) {
                        ServerKind::Passthrough => {
                            let refs: BTreeSet<String> = [gref.to_string()].into();
                            let ctx = self.l4_context(&refs, port, source);
                            for (vs, ns) in self.virtual_services(source.namespace) {
                                if vs_accepted(vs, ns, &hosts) {
                                    l4_translate::tls_route_chains(
                                        &ctx,
                                        vs,
                                        ns,
                                        &stat_prefix,
                                        &mut claimed,
                                        &mut chains,
                                        warnings,
                                    );
                                }
                            }
                            continue;
                        }
                        ServerKind::Tcp => {
                            match self.gateway_tcp_filter(
                                gref,
                                s,
                                port,
                                &stat_prefix,
                                source,
                                warnings,
                            ) {
                                Some(f) => json!([f]),
                                None => continue,
                            }
                        }
                        ServerKind::Http => {
                            let (gns, gname) = gref.split_once('/').unwrap_or(("default", gref));
                            let rds = format!("https.{port}.{sname}.{gname}.{gns}");
                            let refs: BTreeSet<String> = [gref.to_string()].into();
                            let mut needs = RouteNeeds::default();
                            let vhosts = self.gateway_virtual_hosts(
                                &refs, &hosts, port, source, &mut needs, warnings,
                            );
                            routes.insert(
                                rds.clone(),
                                json!({"name": rds, "virtual_hosts": vhosts, "validate_clusters": false}),
                            );
                            json!([hcm(&stat_prefix, &rds, true, &needs, &authz)])
                        }
                    };
                    let sni = l4_translate::sni_names(&hosts);
                    if !l4_translate::claim(&mut claimed, &sni) {
                        warnings.push(format!(
                            "port {port}: server `{sname}` of {gref}: its hosts are already served on this port; left out"
                        ));
                        continue;
                    }
                    let mut chain = Map::new();
                    if !sni.is_empty() {
                        chain.insert("filter_chain_match".into(), json!({"server_names": sni}));
                    }
                    if let Some(t) = &s.tls {
                        chain.insert("transport_socket".into(), downstream_tls(t));
                    }
                    chain.insert("filters".into(), filters);
                    chains.push(Value::Object(chain));
                }
                listener_filters = Some(json!([{
                    "name": "envoy.filters.listener.tls_inspector",
                    "typed_config": {"@type": TLS_INSPECTOR_TYPE},
                }]));
            }
            if chains.is_empty() {
                warnings.push(format!(
                    "port {port}: no VirtualService routes its connections; no listener"
                ));
                continue;
            }
            // TCP and TLS-passthrough chains: AuthorizationPolicies as network RBAC filters
            // before the relay.
            if !tcp_authz.is_empty() {
                for chain in &mut chains {
                    if let Some(filters) = chain["filters"].as_array_mut() {
                        if filters.first().and_then(|f| f["name"].as_str())
                            == Some(l4_translate::TCP_PROXY_FILTER)
                        {
                            filters.splice(0..0, tcp_authz.iter().cloned());
                        }
                    }
                }
            }
            let mut l = Map::new();
            l.insert("name".into(), json!(name));
            l.insert(
                "address".into(),
                json!({"socket_address": {"address": bind_ip, "port_value": port}}),
            );
            if let Some(lf) = listener_filters {
                l.insert("listener_filters".into(), lf);
            }
            l.insert("filter_chains".into(), Value::Array(chains));
            listeners.insert(name, Value::Object(l));
        }
        (listeners, routes)
    }
}

/// Whether a resource of namespace `owner` with `exportTo` is visible in namespace `viewer`:
/// `*` (or nothing) everywhere, `.` in its own namespace, `~` nowhere, else the namespaces named.
pub fn exported_to(export_to: &[String], owner: &str, viewer: &str) -> bool {
    export_to.is_empty()
        || export_to.iter().any(|e| match e.as_str() {
            "*" => true,
            "." => owner == viewer,
            "~" => false,
            ns => ns == viewer,
        })
}

/// Whether a Gateway server terminates TLS (a `tls` block with only `httpsRedirect` does not).
fn terminates_tls(s: &Server) -> bool {
    s.tls
        .as_ref()
        .is_some_and(|t| t.mode.is_some() || !t.https_redirect)
}

/// Mark the virtual hosts of `hosts` `require_tls: ALL`, adding one (without routes) for a host
/// no VirtualService serves.
fn https_redirects(vhosts: &mut Vec<Value>, hosts: &[String], port: u32) {
    for h in hosts {
        let mut found = false;
        for v in vhosts.iter_mut() {
            let name = v["name"].as_str().unwrap_or("");
            let vhost_host = name.rsplit_once(':').map_or(name, |(h, _)| h);
            if host_matches(h, vhost_host) {
                v["require_tls"] = json!("ALL");
                found = true;
            }
        }
        if !found {
            let domains = if h == "*" {
                json!(["*"])
            } else {
                json!([h, format!("{h}:{port}")])
            };
            vhosts.push(json!({
                "name": format!("{h}:{port}"),
                "domains": domains,
                "routes": [],
                "require_tls": "ALL",
            }));
        }
    }
}

/// What a Gateway server carries, from its protocol and TLS mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ServerKind {
    /// HTTP routes (HTTP, HTTP2, GRPC; HTTPS terminated here).
    Http,
    /// `tcp` routes (TCP; TLS terminated here).
    Tcp,
    /// `tls` routes: TLS passed through unterminated, by SNI.
    Passthrough,
}

fn server_kind(s: &Server) -> ServerKind {
    if s.tls
        .as_ref()
        .is_some_and(|t| t.mode.as_deref() == Some("PASSTHROUGH"))
    {
        return ServerKind::Passthrough;
    }
    match s.port.protocol.to_ascii_uppercase().as_str() {
        "TCP" | "TLS" => ServerKind::Tcp,
        _ => ServerKind::Http,
    }
}

/// Whether one of `vs`'s hosts is one of the server's hosts, or matches one.
fn vs_accepted(vs: &VirtualService, namespace: &str, server_hosts: &[String]) -> bool {
    vs.hosts.iter().any(|h| {
        let h = resolve_host(h, namespace);
        server_hosts
            .iter()
            .any(|s| host_matches(s, &h) || host_matches(&h, s))
    })
}

/// A server's hosts without their namespace part (`ns/host`, `./host`, `*/host`).
fn server_hosts(s: &Server) -> Vec<String> {
    s.hosts
        .iter()
        .map(|h| {
            h.rsplit_once('/')
                .map(|(_, h)| h)
                .unwrap_or(h)
                .to_ascii_lowercase()
        })
        .collect()
}

fn downstream_tls(t: &sluice_config::istio::ServerTls) -> Value {
    let mut common = Map::new();
    if let (Some(cert), Some(key)) = (&t.server_certificate, &t.private_key) {
        common.insert(
            "tls_certificates".into(),
            json!([{"certificate_chain": {"filename": cert}, "private_key": {"filename": key}}]),
        );
    }
    common.insert("alpn_protocols".into(), json!(["h2", "http/1.1"]));
    let version = |v: &Option<String>| match v.as_deref() {
        Some("TLSV1_2") => Some("TLSv1_2"),
        Some("TLSV1_3") => Some("TLSv1_3"),
        _ => None,
    };
    let mut params = Map::new();
    if let Some(v) = version(&t.min_protocol_version) {
        params.insert("tls_minimum_protocol_version".into(), json!(v));
    }
    if let Some(v) = version(&t.max_protocol_version) {
        params.insert("tls_maximum_protocol_version".into(), json!(v));
    }
    if !params.is_empty() {
        common.insert("tls_params".into(), Value::Object(params));
    }
    let mutual = t.mode.as_deref() == Some("MUTUAL");
    if let (true, Some(ca)) = (mutual, &t.ca_certificates) {
        common.insert(
            "validation_context".into(),
            crate::cluster_translate::validation_context(ca, &t.subject_alt_names),
        );
    }
    let mut ctx = Map::new();
    ctx.insert("@type".into(), json!(DOWNSTREAM_TLS_TYPE));
    ctx.insert("common_tls_context".into(), Value::Object(common));
    if mutual {
        ctx.insert("require_client_certificate".into(), json!(true));
    }
    json!({"name": "envoy.transport_sockets.tls", "typed_config": Value::Object(ctx)})
}

/// An HTTP connection manager that takes its routes from RDS over ADS.
/// With a DestinationRule `exportTo` other than `*`: the clusters seen from each namespace the
/// configuration names (resources' namespaces, `exportTo` names, `default`), and from any other.
fn scoped_clusters(
    resources: &[Resource],
    registry: &Registry,
) -> Option<(BTreeMap<String, ClusterSet>, ClusterSet)> {
    let scoped = resources.iter().any(
        |r| matches!(&r.spec, Spec::DestinationRule(dr) if dr.export_to.iter().any(|e| e != "*")),
    );
    if !scoped {
        return None;
    }
    let mut namespaces: BTreeSet<String> = ["default".to_string()].into();
    for r in resources {
        namespaces.insert(r.metadata.namespace().to_string());
        if let Spec::DestinationRule(dr) = &r.spec {
            namespaces.extend(
                dr.export_to
                    .iter()
                    .filter(|e| !matches!(e.as_str(), "*" | "." | "~"))
                    .cloned(),
            );
        }
    }
    // Warnings were given by the mesh-wide translation.
    let mut ignored = Vec::new();
    let by_namespace = namespaces
        .into_iter()
        .map(|ns| {
            let set =
                cluster_translate::clusters_seen_from(resources, registry, Some(&ns), &mut ignored);
            (ns, set)
        })
        .collect();
    // A namespace named nowhere sees only what is exported to every namespace.
    let elsewhere =
        cluster_translate::clusters_seen_from(resources, registry, Some(""), &mut ignored);
    Some((by_namespace, elsewhere))
}

/// Whether a sidecar's `Sidecar` scope (none: everything) imports one of `vs`'s hosts.
fn vs_imported(scope: Option<&SidecarScope>, vs: &VirtualService, namespace: &str) -> bool {
    vs.hosts
        .iter()
        .any(|h| sidecar_scope::imported(scope, namespace, &resolve_host(h, namespace)))
}

fn hcm(
    stat_prefix: &str,
    route_config: &str,
    edge: bool,
    needs: &RouteNeeds,
    authz: &[Value],
) -> Value {
    // Istio's order: authorization (AuthorizationPolicy's RBAC filters), CORS, then faults, then
    // the router.
    let mut filters = authz.to_vec();
    if needs.cors_filter {
        filters.push(cors_filter());
    }
    if needs.fault_filter {
        filters.push(fault_filter());
    }
    filters
        .push(json!({"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER_TYPE}}));
    let mut m = Map::new();
    m.insert("@type".into(), json!(HCM_TYPE));
    m.insert("stat_prefix".into(), json!(stat_prefix));
    m.insert(
        "rds".into(),
        json!({"route_config_name": route_config, "config_source": {"ads": {}, "resource_api_version": "V3"}}),
    );
    m.insert("http_filters".into(), Value::Array(filters));
    m.insert(
        "upgrade_configs".into(),
        json!([{"upgrade_type": "websocket"}]),
    );
    if edge {
        // Gateways face clients: Istio trusts the peer address there.
        m.insert("use_remote_address".into(), json!(true));
    }
    json!({"name": "envoy.filters.network.http_connection_manager", "typed_config": Value::Object(m)})
}
