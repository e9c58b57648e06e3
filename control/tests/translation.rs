//! VirtualService `tcp` and `tls` routes as the control plane translates them: a TCP Gateway
//! server (the published `tcp-echo-20-v2`), a sidecar's listener for a mesh `tls` route (the
//! Argo Rollouts e2e `istio-host-http-tls-split`), a Rollout's `tlsRoutes` / `tcpRoutes`
//! weights carried into those listeners, and `sourceLabels` / `sourceNamespace` matches. Every
//! listener is also encoded through the Envoy descriptor pool, so the JSON is valid Envoy.

use std::path::Path;

use serde_json::{json, Value};
use sluice_config::argo::Rollout;
use sluice_config::istio::{parse_text, Parsed, Resource};
use sluice_control::node_role::Role;
use sluice_control::rollout_engine::{Revision, RolloutStatus};
use sluice_control::translate::{MeshConfig, ProxyResources};
use sluice_control::xds_encode::to_any;

fn corpus(file: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/corpus")
        .join(file);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn parse(texts: &[&str]) -> (Vec<Resource>, Vec<Rollout>) {
    let (mut resources, mut rollouts) = (Vec::new(), Vec::new());
    for (i, t) in texts.iter().enumerate() {
        for p in parse_text(&format!("doc{i}.yaml"), t).unwrap_or_else(|e| panic!("{e}")) {
            match p {
                Parsed::Istio(r) => resources.push(*r),
                Parsed::Rollout(r) => rollouts.push(*r),
                Parsed::Other { .. } | Parsed::AnalysisTemplate(_) => {}
            }
        }
    }
    (resources, rollouts)
}

/// The resources `role` receives, each checked as Envoy protobuf.
fn translate(resources: Vec<Resource>, role: &Role) -> ProxyResources {
    let out = MeshConfig::new(resources).for_proxy(role);
    let pool = sluice_proto::descriptor_pool().unwrap();
    for (ty, map) in out.by_type() {
        for (name, v) in map {
            to_any(&pool, ty, name, v).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }
    out
}

/// Apply `rollout` at `weight`, releasing revision 2 (`canary` labels) over revision 1
/// (`stable` labels); the overlay's warnings.
fn release(
    resources: &mut [Resource],
    rollout: &Rollout,
    [stable, canary]: [&[(&str, &str)]; 2],
    weight: u32,
) -> Vec<String> {
    let rev = |number: u32, labels: &[(&str, &str)]| Revision {
        number,
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        hash: number.to_string(),
        completed: number == 1,
        created_ms: 0,
    };
    let status = RolloutStatus {
        revisions: vec![rev(1, stable), rev(2, canary)],
        stable: 1,
        canary: Some(2),
        weight,
        ..Default::default()
    };
    let mut warnings = Vec::new();
    sluice_control::rollout_overlay::apply(resources, &[(rollout.clone(), status)], &mut warnings);
    warnings
}

fn gateway() -> Role {
    Role::Gateway {
        labels: [("istio".to_string(), "ingressgateway".to_string())].into(),
        bind_ip: "0.0.0.0".into(),
        namespace: "istio-system".into(),
    }
}

fn sidecar() -> Role {
    Role::Sidecar {
        outbound: "127.0.0.1:15001".parse().unwrap(),
        inbound: None,
        labels: Default::default(),
        namespace: "default".into(),
    }
}

fn tcp_proxy(listener: &Value, chain: usize) -> &Value {
    &listener["filter_chains"][chain]["filters"][0]["typed_config"]
}

const TCP_ECHO_MESH: &str = r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: tcp-echo}
spec:
  hosts: [tcp-echo]
  ports: [{number: 9000, name: tcp, protocol: TCP}]
  resolution: STATIC
  endpoints:
  - {address: 10.0.0.1, labels: {version: v1}}
  - {address: 10.0.0.2, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: tcp-echo}
spec:
  host: tcp-echo
  subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: tcp-echo-gateway}
spec:
  selector: {istio: ingressgateway}
  servers: [{port: {number: 31400, name: tcp, protocol: TCP}, hosts: ["*"]}]
"#;

#[test]
fn a_tcp_gateway_server_splits_connections_by_the_tcp_route() {
    let vs = corpus("istio/tcp-echo__tcp-echo-20-v2.yaml");
    let (resources, _) = parse(&[TCP_ECHO_MESH, &vs]);
    let out = translate(resources, &gateway());
    let l = &out.listeners["0.0.0.0_31400"];
    assert_eq!(
        l["filter_chains"].as_array().map(Vec::len),
        Some(1),
        "{l:#}"
    );
    assert_eq!(
        tcp_proxy(l, 0)["weighted_clusters"],
        json!({"clusters": [
            {"name": "outbound|9000|v1|tcp-echo.default.svc.cluster.local", "weight": 80},
            {"name": "outbound|9000|v2|tcp-echo.default.svc.cluster.local", "weight": 20},
        ]})
    );
    assert!(l.get("listener_filters").is_none(), "{l:#}");
    // The route names port 31400: on another port the server has no route, and no listener.
    let other = TCP_ECHO_MESH.replace("number: 31400", "number: 31401");
    let (resources, _) = parse(&[&other, &vs]);
    let mesh = MeshConfig::new(resources);
    assert!(mesh.for_proxy(&gateway()).listeners.is_empty());
    assert!(
        mesh.warnings
            .iter()
            .any(|w| w.contains("port 31401: no VirtualService routes its connections")),
        "{:?}",
        mesh.warnings
    );
}

const HOST_SPLIT_SERVICES: &str = r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: stable}
spec:
  hosts: [istio-host-split-stable]
  ports: [{number: 80, name: http}]
  resolution: STATIC
  endpoints:
  - {address: 10.0.0.1, labels: {app: istio-host-split, version: v1}}
  - {address: 10.0.0.2, labels: {app: istio-host-split, version: v2}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: canary}
spec:
  hosts: [istio-host-split-canary]
  ports: [{number: 80, name: http}]
  resolution: STATIC
  endpoints:
  - {address: 10.0.0.1, labels: {app: istio-host-split, version: v1}}
  - {address: 10.0.0.2, labels: {app: istio-host-split, version: v2}}
"#;

const STABLE: &str = "outbound|80||istio-host-split-stable.default.svc.cluster.local";
const CANARY: &str = "outbound|80||istio-host-split-canary.default.svc.cluster.local";

#[test]
fn a_mesh_tls_route_gets_a_sidecar_listener_chosen_by_sni_and_follows_the_rollout() {
    let file = corpus("argo/test__e2e__istio__istio-host-http-tls-split.yaml");
    let (mut resources, rollouts) = parse(&[HOST_SPLIT_SERVICES, &file]);
    let out = translate(resources.clone(), &sidecar());
    let l = &out.listeners["127.0.0.1_3000"];
    assert_eq!(
        l["address"],
        json!({"socket_address": {"address": "127.0.0.1", "port_value": 3000}})
    );
    assert_eq!(
        l["listener_filters"][0]["name"],
        "envoy.filters.listener.tls_inspector"
    );
    assert_eq!(
        l["filter_chains"][0]["filter_chain_match"],
        json!({"server_names": ["istio-host-split"]})
    );
    // Weight 100 / 0: the stable service alone.
    assert_eq!(tcp_proxy(l, 0)["cluster"], STABLE, "{l:#}");

    // The Rollout at setWeight 10 names the route by port and SNI host.
    let warnings = release(
        &mut resources,
        &rollouts[0],
        [
            &[("app", "istio-host-split"), ("version", "v1")],
            &[("app", "istio-host-split"), ("version", "v2")],
        ],
        10,
    );
    assert!(warnings.is_empty(), "{warnings:?}");
    // The HTTP route named `primary` moves with it.
    let http_weights: Vec<Option<u32>> = resources
        .iter()
        .find_map(|r| match &r.spec {
            sluice_config::istio::Spec::VirtualService(vs) => {
                Some(vs.http[0].route.iter().map(|d| d.weight).collect())
            }
            _ => None,
        })
        .unwrap();
    assert_eq!(http_weights, [Some(90), Some(10)]);
    let out = translate(resources, &sidecar());
    let l = &out.listeners["127.0.0.1_3000"];
    assert_eq!(
        tcp_proxy(l, 0)["weighted_clusters"],
        json!({"clusters": [{"name": STABLE, "weight": 90}, {"name": CANARY, "weight": 10}]})
    );
}

#[test]
fn a_rollout_sets_the_weights_of_the_tcp_route_it_names() {
    let vs = corpus("argo/docs__features__traffic-management__istio.md.block11-tcp-vsvc.yaml");
    let rollout = r#"apiVersion: argoproj.io/v1alpha1
kind: Rollout
metadata: {name: tcp}
spec:
  strategy:
    canary:
      canaryService: canary-svc
      stableService: stable-svc
      trafficRouting:
        istio:
          virtualService:
            name: rollout-vsvc
            tcpRoutes: [{port: 3000}]
      steps: [{setWeight: 25}, {pause: {}}]
  selector: {matchLabels: {app: tcp}}
  template:
    metadata: {labels: {app: tcp}}
"#;
    let services = r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: stable}
spec:
  hosts: [stable-svc]
  ports: [{number: 3000, name: tcp, protocol: TCP}]
  resolution: STATIC
  endpoints: [{address: 10.0.0.1, labels: {app: tcp}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: canary}
spec:
  hosts: [canary-svc]
  ports: [{number: 3000, name: tcp, protocol: TCP}]
  resolution: STATIC
  endpoints: [{address: 10.0.0.1, labels: {app: tcp}}]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: istio-rollout-gateway}
spec:
  selector: {istio: ingressgateway}
  servers: [{port: {number: 3000, name: tcp, protocol: TCP}, hosts: ["*"]}]
"#;
    let (mut resources, rollouts) = parse(&[services, &vs, rollout]);
    let out = translate(resources.clone(), &gateway());
    assert_eq!(
        tcp_proxy(&out.listeners["0.0.0.0_3000"], 0)["cluster"],
        "outbound|3000||stable-svc.default.svc.cluster.local"
    );
    let app: &[(&str, &str)] = &[("app", "tcp")];
    let warnings = release(&mut resources, &rollouts[0], [app, app], 25);
    assert!(warnings.is_empty(), "{warnings:?}");
    let out = translate(resources, &gateway());
    assert_eq!(
        tcp_proxy(&out.listeners["0.0.0.0_3000"], 0)["weighted_clusters"],
        json!({"clusters": [
            {"name": "outbound|3000||stable-svc.default.svc.cluster.local", "weight": 75},
            {"name": "outbound|3000||canary-svc.default.svc.cluster.local", "weight": 25},
        ]})
    );
}

/// `sourceLabels` and `sourceNamespace` (HTTP and TCP matches) decide by the proxy the routes
/// are for, as Istio's source match does; a match that names gateways ignores them.
#[test]
fn source_matches_pick_routes_by_the_proxys_labels_and_namespace() {
    let mesh = r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews}
spec:
  hosts: [reviews]
  ports: [{number: 80, name: http}, {number: 9000, name: tcp, protocol: TCP}]
  resolution: STATIC
  endpoints: [{address: 10.0.0.1, labels: {version: v1}}, {address: 10.0.0.2, labels: {version: v2}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - name: from-productpage-v2
    match: [{sourceLabels: {app: productpage, version: v2}}]
    route: [{destination: {host: reviews, subset: v2}}]
  - name: from-test
    match: [{sourceNamespace: test}]
    route: [{destination: {host: reviews, subset: v2}}]
  - name: default
    route: [{destination: {host: reviews, subset: v1}}]
  tcp:
  - match: [{port: 9000, sourceLabels: {app: productpage}}]
    route: [{destination: {host: reviews, subset: v2, port: {number: 9000}}}]
  - route: [{destination: {host: reviews, subset: v1, port: {number: 9000}}}]
"#;
    let sidecar = |labels: &[(&str, &str)], namespace: &str| Role::Sidecar {
        outbound: "127.0.0.1:15001".parse().unwrap(),
        inbound: None,
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        namespace: namespace.into(),
    };
    let (resources, _) = parse(&[mesh]);
    let names_and_tcp = |role: Role| {
        let out = translate(resources.clone(), &role);
        let vh = out.routes["outbound"]["virtual_hosts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == "reviews.default.svc.cluster.local:80")
            .cloned()
            .unwrap();
        let names: Vec<String> = vh["routes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap_or("").to_string())
            .collect();
        let tcp = tcp_proxy(&out.listeners["127.0.0.1_9000"], 0)["cluster"].clone();
        (names, tcp)
    };
    let v1 = json!("outbound|9000|v1|reviews.default.svc.cluster.local");
    let v2 = json!("outbound|9000|v2|reviews.default.svc.cluster.local");
    assert_eq!(
        names_and_tcp(sidecar(
            &[("app", "productpage"), ("version", "v2")],
            "default"
        )),
        (
            vec!["from-productpage-v2".to_string(), "default".into()],
            v2.clone()
        )
    );
    assert_eq!(
        names_and_tcp(sidecar(
            &[("app", "productpage"), ("version", "v1")],
            "default"
        )),
        (vec!["default".to_string()], v2)
    );
    assert_eq!(
        names_and_tcp(sidecar(&[("app", "ratings")], "test")),
        (vec!["from-test".to_string(), "default".into()], v1)
    );
}

/// Argo's replica-count canary (no `trafficRouting`, the published `rollout-canary` with a
/// `version` label on its template): at setWeight 20 the endpoints of the Rollout's pods are
/// weighted 80/20 between the stable and canary revisions, and an older revision's go.
#[test]
fn a_canary_without_traffic_routing_weighs_the_endpoints_of_its_revisions() {
    let base = corpus("argo/examples__rollout-canary.yaml");
    let from = "  template:\n    metadata:\n      labels:\n        app: rollout-canary\n";
    assert!(base.contains(from));
    let rollout = base.replace(from, &format!("{from}        version: v2\n"));
    let service = r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: rollout-canary}
spec:
  hosts: [rollout-canary]
  ports: [{number: 80, name: http}]
  resolution: STATIC
  endpoints:
  - {address: 10.0.0.1, labels: {app: rollout-canary, version: v1}}
  - {address: 10.0.0.2, labels: {app: rollout-canary, version: v1}}
  - {address: 10.0.0.3, labels: {app: rollout-canary, version: v2}}
  - {address: 10.0.0.9, labels: {app: rollout-canary, version: v0}}
"#;
    let (mut resources, rollouts) = parse(&[service, &rollout]);
    let app = |v: &'static str| -> [(&'static str, &'static str); 2] {
        [("app", "rollout-canary"), ("version", v)]
    };
    let warnings = release(&mut resources, &rollouts[0], [&app("v1"), &app("v2")], 20);
    assert!(warnings.is_empty(), "{warnings:?}");
    let out = translate(resources, &sidecar());
    let eds = &out.endpoints["outbound|80||rollout-canary.default.svc.cluster.local"];
    let weights: Vec<(String, u64)> = eds["endpoints"][0]["lb_endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["endpoint"]["address"]["socket_address"]["address"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
                e["load_balancing_weight"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    // Two stable endpoints of 80 and one canary endpoint of 40: 160 to 40, 80/20.
    assert_eq!(
        weights,
        [
            ("10.0.0.1".to_string(), 80),
            ("10.0.0.2".to_string(), 80),
            ("10.0.0.3".to_string(), 40)
        ]
    );
}

/// `exportTo`: a VirtualService exported to its own namespace (`.`) routes only the proxies of
/// that namespace, and a ServiceEntry exported to one namespace is a host only there.
#[test]
fn export_to_limits_what_each_namespace_sees() {
    let config = r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: web, namespace: shop}
spec:
  hosts: [web.shop.svc.cluster.local]
  ports: [{number: 80, name: http}]
  resolution: STATIC
  endpoints: [{address: 10.0.0.1, labels: {version: v1}}, {address: 10.0.0.2, labels: {version: v2}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: internal, namespace: shop}
spec:
  hosts: [internal.shop.svc.cluster.local]
  exportTo: [shop]
  ports: [{number: 80, name: http}]
  resolution: STATIC
  endpoints: [{address: 10.0.0.3}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: web, namespace: shop}
spec:
  host: web.shop.svc.cluster.local
  subsets: [{name: v2, labels: {version: v2}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web, namespace: shop}
spec:
  hosts: [web.shop.svc.cluster.local]
  exportTo: ["."]
  http:
  - name: to-v2
    route: [{destination: {host: web.shop.svc.cluster.local, subset: v2}}]
"#;
    let (resources, _) = parse(&[config]);
    let in_ns = |namespace: &str| {
        let out = translate(
            resources.clone(),
            &Role::Sidecar {
                outbound: "127.0.0.1:15001".parse().unwrap(),
                inbound: None,
                labels: Default::default(),
                namespace: namespace.into(),
            },
        );
        out.routes["outbound"]["virtual_hosts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| {
                format!(
                    "{} -> {}",
                    v["name"].as_str().unwrap_or(""),
                    v["routes"][0]["name"].as_str().unwrap_or("")
                )
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(
        in_ns("shop"),
        [
            "internal.shop.svc.cluster.local:80 -> default",
            "web.shop.svc.cluster.local:80 -> to-v2"
        ]
    );
    assert_eq!(
        in_ns("default"),
        ["web.shop.svc.cluster.local:80 -> default"]
    );
}

/// Delegation, as in Istio's documentation: a root VirtualService on a gateway hands `/productpage`
/// and `/reviews` to delegates in other namespaces; their routes take the root routes' places,
/// with the root's match merged in and a conflicting route left out.
#[test]
fn delegate_routes_take_their_roots_place_on_the_gateway() {
    let config = r#"apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw}
spec:
  selector: {istio: ingressgateway}
  servers: [{port: {number: 80, name: http, protocol: HTTP}, hosts: ["*"]}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: productpage, namespace: nsa}
spec:
  hosts: [productpage.nsa.svc.cluster.local, productpage-v1.nsa.svc.cluster.local]
  ports: [{number: 9080, name: http}]
  resolution: STATIC
  endpoints: [{address: 10.0.0.1}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews, namespace: nsb}
spec:
  hosts: [reviews.nsb.svc.cluster.local]
  ports: [{number: 9080, name: http}]
  resolution: STATIC
  endpoints: [{address: 10.0.0.2}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: bookinfo}
spec:
  hosts: [bookinfo.com]
  gateways: [gw]
  http:
  - name: pp
    match: [{uri: {prefix: /productpage}}]
    timeout: 5s
    delegate: {name: productpage, namespace: nsa}
  - name: reviews
    match: [{uri: {prefix: /reviews}}]
    delegate: {name: reviews, namespace: nsb}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: productpage, namespace: nsa}
spec:
  http:
  - name: v1
    match: [{uri: {prefix: /productpage/v1/}}]
    route: [{destination: {host: productpage-v1.nsa.svc.cluster.local}}]
  - name: elsewhere
    match: [{uri: {prefix: /static}}]
    route: [{destination: {host: productpage-v1.nsa.svc.cluster.local}}]
  - route: [{destination: {host: productpage.nsa.svc.cluster.local}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: nsb}
spec:
  http:
  - route: [{destination: {host: reviews.nsb.svc.cluster.local}}]
"#;
    let (resources, _) = parse(&[config]);
    let mesh = MeshConfig::new(resources.clone());
    assert!(
        mesh.warnings
            .iter()
            .any(|w| w.contains("route `elsewhere` conflicts")),
        "{:?}",
        mesh.warnings
    );
    let out = translate(resources, &gateway());
    let routes: Vec<String> = out.routes["http.80"]["virtual_hosts"][0]["routes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            format!(
                "{} {} -> {} {}",
                r["name"].as_str().unwrap_or(""),
                r["match"]["prefix"].as_str().unwrap_or(""),
                r["route"]["cluster"].as_str().unwrap_or(""),
                r["route"]["timeout"].as_str().unwrap_or("-"),
            )
        })
        .collect();
    assert_eq!(
        routes,
        [
            "pp-v1 /productpage/v1/ -> outbound|9080||productpage-v1.nsa.svc.cluster.local 5.000000000s",
            "pp /productpage -> outbound|9080||productpage.nsa.svc.cluster.local 5.000000000s",
            "reviews /reviews -> outbound|9080||reviews.nsb.svc.cluster.local 0.000000000s",
        ]
    );
}

/// Sidecars that differ only in labels or namespace share one translation unless a resource
/// reads them (`sourceLabels`, `sourceNamespace`, `exportTo`).
#[test]
fn proxies_share_a_translation_unless_their_labels_or_namespace_matter() {
    let sidecar = |app: &str, namespace: &str| Role::Sidecar {
        outbound: "127.0.0.1:15001".parse().unwrap(),
        inbound: None,
        labels: [("app".to_string(), app.to_string())].into(),
        namespace: namespace.into(),
    };
    let plain = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: r}\nspec:\n  hosts: [r]\n  http:\n  - route: [{destination: {host: r}}]\n";
    let mesh = MeshConfig::new(parse(&[plain]).0);
    assert_eq!(
        mesh.canonical_role(&sidecar("a", "x")),
        mesh.canonical_role(&sidecar("b", "y"))
    );
    let scoped = plain.replace(
        "  - route:",
        "  - match: [{sourceLabels: {app: a}}]\n    route:",
    );
    let mesh = MeshConfig::new(parse(&[&scoped]).0);
    assert_ne!(
        mesh.canonical_role(&sidecar("a", "x")),
        mesh.canonical_role(&sidecar("b", "x"))
    );
    assert_eq!(
        mesh.canonical_role(&sidecar("a", "x")),
        mesh.canonical_role(&sidecar("a", "y")),
        "no resource reads the namespace"
    );
}
