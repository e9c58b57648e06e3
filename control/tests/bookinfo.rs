//! Golden translation of Istio's Bookinfo: the published gateway, DestinationRules and the
//! 80/20 reviews VirtualService (from `../shared/corpus/istio/`) over the ServiceEntries of
//! `examples/bookinfo/services.yaml`. The whole output is compared with
//! `tests/golden/bookinfo.json` (regenerate with `SLUICE_UPDATE_GOLDEN=1`), and the parts that
//! matter are asserted by name, so a golden file updated by mistake still fails here.

use std::path::Path;

use serde_json::{json, Value};
use sluice_config::istio::{parse_text, Parsed, Resource};
use sluice_control::node_role::Role;
use sluice_control::translate::MeshConfig;

fn read(path: &Path) -> Vec<Resource> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    parse_text(&path.display().to_string(), &text)
        .unwrap_or_else(|e| panic!("{e}"))
        .into_iter()
        .filter_map(|p| match p {
            Parsed::Istio(r) => Some(*r),
            Parsed::Other { .. } | Parsed::Rollout(_) | Parsed::AnalysisTemplate(_) => None,
        })
        .collect()
}

fn bookinfo() -> MeshConfig {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let corpus = root.join("../shared/corpus/istio");
    let mut resources = read(&root.join("examples/bookinfo/services.yaml"));
    for f in [
        "bookinfo-gateway.yaml",
        "destination-rule-all.yaml",
        "virtual-service-reviews-80-20.yaml",
    ] {
        resources.extend(read(&corpus.join(f)));
    }
    resources.sort_by_key(|r| {
        (
            r.spec.kind(),
            r.metadata.namespace().to_string(),
            r.metadata.name.clone(),
        )
    });
    MeshConfig::new(resources)
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

#[test]
fn bookinfo_translates_like_istio_names_it() {
    let mesh = bookinfo();
    let gw = mesh.for_proxy(&gateway());
    let sc = mesh.for_proxy(&sidecar());

    let clusters: std::collections::BTreeSet<&str> =
        gw.clusters.keys().map(String::as_str).collect();
    assert_eq!(
        clusters,
        std::collections::BTreeSet::from([
            "outbound|9080||details.default.svc.cluster.local",
            "outbound|9080||productpage.default.svc.cluster.local",
            "outbound|9080||ratings.default.svc.cluster.local",
            "outbound|9080||reviews.default.svc.cluster.local",
            "outbound|9080|v1|details.default.svc.cluster.local",
            "outbound|9080|v1|productpage.default.svc.cluster.local",
            "outbound|9080|v1|ratings.default.svc.cluster.local",
            "outbound|9080|v1|reviews.default.svc.cluster.local",
            "outbound|9080|v2-mysql-vm|ratings.default.svc.cluster.local",
            "outbound|9080|v2-mysql|ratings.default.svc.cluster.local",
            "outbound|9080|v2|details.default.svc.cluster.local",
            "outbound|9080|v2|ratings.default.svc.cluster.local",
            "outbound|9080|v2|reviews.default.svc.cluster.local",
            "outbound|9080|v3|reviews.default.svc.cluster.local",
        ])
    );
    let v2 = &gw.endpoints["outbound|9080|v2|reviews.default.svc.cluster.local"];
    assert_eq!(
        v2["endpoints"][0]["lb_endpoints"],
        json!([{"endpoint": {"address": {"socket_address": {"address": "127.0.0.22", "port_value": 9080}}}, "load_balancing_weight": 1}])
    );
    assert_eq!(
        gw.clusters["outbound|9080|v1|reviews.default.svc.cluster.local"]["type"],
        "EDS"
    );

    // The gateway: one listener on 8080, route configuration http.8080 with the five matches of
    // the bookinfo VirtualService, all to productpage.
    assert_eq!(gw.listeners.keys().collect::<Vec<_>>(), ["0.0.0.0_8080"]);
    let rc = &gw.routes["http.8080"];
    let vh = &rc["virtual_hosts"][0];
    assert_eq!(vh["domains"], json!(["*"]));
    let matches: Vec<Value> = vh["routes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["match"].clone())
        .collect();
    assert_eq!(
        matches,
        [
            json!({"path": "/productpage"}),
            json!({"prefix": "/static"}),
            json!({"path": "/login"}),
            json!({"path": "/logout"}),
            json!({"prefix": "/api/v1/products"})
        ]
    );
    for r in vh["routes"].as_array().unwrap() {
        assert_eq!(
            r["route"]["cluster"],
            "outbound|9080||productpage.default.svc.cluster.local"
        );
    }

    // The sidecar: reviews by every name, split 80/20 between v1 and v2.
    let outbound = &sc.routes["outbound"];
    let reviews = outbound["virtual_hosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "reviews.default.svc.cluster.local:9080")
        .expect("reviews virtual host");
    for d in [
        "reviews",
        "reviews:9080",
        "reviews.default",
        "reviews.default.svc.cluster.local:9080",
    ] {
        assert!(
            reviews["domains"].as_array().unwrap().contains(&json!(d)),
            "{d}"
        );
    }
    assert_eq!(
        reviews["routes"][0]["route"]["weighted_clusters"]["clusters"],
        json!([
            {"name": "outbound|9080|v1|reviews.default.svc.cluster.local", "weight": 80},
            {"name": "outbound|9080|v2|reviews.default.svc.cluster.local", "weight": 20},
        ])
    );

    let whole =
        json!({"gateway": gw_json(&gw), "sidecar": gw_json(&sc), "warnings": mesh.warnings});
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/bookinfo.json");
    let text = serde_json::to_string_pretty(&whole).unwrap() + "\n";
    if std::env::var_os("SLUICE_UPDATE_GOLDEN").is_some() {
        std::fs::write(&golden, &text).unwrap();
    }
    let expected = std::fs::read_to_string(&golden).unwrap_or_default();
    assert!(
        expected == text,
        "translation differs from {} (SLUICE_UPDATE_GOLDEN=1 to accept):\n{text}",
        golden.display()
    );
}

fn gw_json(r: &sluice_control::translate::ProxyResources) -> Value {
    json!({"clusters": r.clusters, "endpoints": r.endpoints, "listeners": r.listeners, "routes": r.routes})
}

/// Every translated resource is a valid Envoy message (encodes through the descriptor pool).
#[test]
fn bookinfo_resources_encode() {
    let mesh = bookinfo();
    let pool = sluice_proto::descriptor_pool().unwrap();
    use sluice_control::xds_encode::to_any;
    for role in [gateway(), sidecar()] {
        let r = mesh.for_proxy(&role);
        for (ty, map) in r.by_type() {
            for (name, v) in map {
                to_any(&pool, ty, name, v).unwrap_or_else(|e| panic!("{e}"));
            }
        }
    }
}
