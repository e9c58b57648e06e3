//! File-based xDS (`path_config_source` for LDS and CDS, as in Envoy's dynamic-config-fs example)
//! through real Envoy 1.40 and through `sluice proxy` on the same bootstrap and files: the
//! resources are served and a new version moved into place is picked up by both; a version that
//! does not parse leaves Sluice's last good version serving.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::json;
use support::*;

fn cds(port: u16) -> String {
    json!({"resources": [{
        "@type": "type.googleapis.com/envoy.config.cluster.v3.Cluster",
        "name": "app",
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {"cluster_name": "app", "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}
        ]}]}
    }]})
    .to_string()
}

fn lds() -> String {
    json!({"resources": [{
        "@type": "type.googleapis.com/envoy.config.listener.v3.Listener",
        "name": "main",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
        "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": "ingress_http",
                "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"],
                    "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "app"}}]}]},
                "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]
            }
        }]}]
    }]})
    .to_string()
}

/// Replace `name` in `dir` the way Envoy's `watched_directory` expects: write aside, move in.
fn put(dir: &Path, name: &str, text: &str) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

fn bootstrap(dir: &Path) -> String {
    let source = |file: &str| {
        json!({"path_config_source": {
            "path": dir.join(file),
            "watched_directory": {"path": dir}
        }, "resource_api_version": "V3"})
    };
    json!({
        "node": {"id": "file-xds", "cluster": "test"},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "dynamic_resources": {"lds_config": source("lds.yaml"), "cds_config": source("cds.yaml")}
    })
    .to_string()
}

async fn wait_upstream(p: &ProxyProcess, want: &str) {
    let client = client_h1();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = get(&client, &p.url("main", "/"), &[]).await;
        if r.status == 200 && r.upstream() == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} never reached {want}: {} {}",
            p.kind,
            r.status,
            r.upstream()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_and_clusters_come_from_files_and_follow_them() {
    let a = upstream("a").await;
    let b = upstream("b").await;
    let dir = tempfile::tempdir().unwrap();
    put(dir.path(), "cds.yaml", &cds(a.port()));
    put(dir.path(), "lds.yaml", &lds());
    let config = bootstrap(dir.path());
    let envoy = envoy(&config).await;
    let sluice = sluice(&config).await;
    for p in [&envoy, &sluice] {
        wait_upstream(p, "a").await;
    }
    // A new version of the clusters, moved into place.
    put(dir.path(), "cds.yaml", &cds(b.port()));
    for p in [&envoy, &sluice] {
        wait_upstream(p, "b").await;
    }
    // A version that does not parse: refused, the last good one keeps serving.
    put(
        dir.path(),
        "cds.yaml",
        &cds(a.port()).replace("\"port_value\"", "\"port_value\": ["),
    );
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let client = client_h1();
    for _ in 0..5 {
        let r = get(&client, &sluice.url("main", "/"), &[]).await;
        assert_eq!((r.status, r.upstream().as_str()), (200, "b"));
    }
    assert!(
        sluice.stderr().contains("keeping the last good version"),
        "the refusal is logged: {}",
        sluice.stderr()
    );
}
