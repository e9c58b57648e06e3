//! `tcp_proxy` filter chains through real Envoy 1.40 and through `sluice proxy` on the same
//! bootstrap: weighted clusters split connections 80/20 (within binomial bounds), bytes are
//! relayed both ways, a half-close reaches the upstream while its answer still comes back, an
//! unknown cluster closes the connection, and `idle_timeout` closes a quiet one; the
//! `envoy_tcp_*` statistics agree.

mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn tcp_listener(name: &str, proxy: Value) -> Value {
    let mut proxy = proxy;
    proxy["@type"] =
        json!("type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy");
    proxy["stat_prefix"] = json!(name);
    json!({
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
        "filter_chains": [{"filters": [{"name": "envoy.filters.network.tcp_proxy", "typed_config": proxy}]}]
    })
}

fn config(a: u16, b: u16) -> String {
    let text = bootstrap(
        routes(json!([{"match": {"prefix": "/"}, "route": {"cluster": "a"}}])),
        vec![cluster("a", &[a]), cluster("b", &[b])],
        json!({}),
    );
    let mut boot: Value = serde_json::from_str(&text).unwrap();
    let listeners = boot["static_resources"]["listeners"]
        .as_array_mut()
        .unwrap();
    listeners.push(tcp_listener(
        "split",
        json!({"weighted_clusters": {"clusters": [{"name": "a", "weight": 80}, {"name": "b", "weight": 20}]}}),
    ));
    listeners.push(tcp_listener("missing", json!({"cluster": "nowhere"})));
    listeners.push(tcp_listener(
        "quiet",
        json!({"cluster": "a", "idle_timeout": "0.5s"}),
    ));
    boot.to_string()
}

/// Read until EOF (or 3 s), as text.
async fn read_to_end(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

async fn check(kind: &str, a: u16, b: u16) -> Vec<String> {
    let p = proxy_of(kind, &config(a, b)).await;
    let split = p.listener("split");

    // Relay both ways, then a half-close: the upstream sees it and its answer still arrives.
    let mut s = TcpStream::connect(split).await.unwrap();
    s.write_all(b"ping").await.unwrap();
    let mut first = vec![0u8; 64];
    let mut got = String::new();
    while !got.ends_with("ping") {
        let n = s.read(&mut first).await.unwrap();
        assert!(n > 0, "{kind}: closed early after {got:?}");
        got.push_str(&String::from_utf8_lossy(&first[..n]));
    }
    s.shutdown().await.unwrap();
    let rest = read_to_end(&mut s).await;
    assert_eq!(rest, "bye", "{kind}: after the half-close");

    // Weighted clusters: 80/20 by connection.
    let n = 400u64;
    let mut to_a = 0;
    for _ in 0..n {
        let mut s = TcpStream::connect(split).await.unwrap();
        let mut line = [0u8; 2];
        s.read_exact(&mut line).await.unwrap();
        if &line == b"a\n" {
            to_a += 1;
        }
    }
    assert!(
        within_binomial(to_a, n, 0.8, 4.5),
        "{kind}: {to_a} of {n} connections to a"
    );

    // An unknown cluster: the connection is closed without a byte.
    let mut s = TcpStream::connect(p.listener("missing")).await.unwrap();
    assert_eq!(read_to_end(&mut s).await, "", "{kind}: unknown cluster");

    // idle_timeout: a quiet connection is closed after 0.5 s.
    let mut s = TcpStream::connect(p.listener("quiet")).await.unwrap();
    let started = Instant::now();
    let text = read_to_end(&mut s).await;
    let took = started.elapsed();
    assert_eq!(text, "a\n", "{kind}: idle connection");
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_millis(2500),
        "{kind}: closed after {took:?}"
    );

    // The tcp_proxy statistics, under Envoy's names.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stats = p.admin("/stats/prometheus").await;
    let mut lines: Vec<String> = stats
        .lines()
        .filter(|l| {
            l.starts_with("envoy_tcp_downstream_cx_total")
                || l.starts_with("envoy_tcp_downstream_cx_no_route")
                || l.starts_with("envoy_tcp_downstream_cx_rx_bytes_total")
                || l.starts_with("envoy_tcp_downstream_cx_tx_bytes_total")
                || l.starts_with("envoy_tcp_idle_timeout")
        })
        .map(str::to_string)
        .collect();
    lines.sort();
    lines
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_proxy_relays_and_splits_as_envoy_does() {
    let (a, _ta) = tcp_greeter("a").await;
    let (b, _tb) = tcp_greeter("b").await;
    let envoy = check("envoy", a, b).await;
    assert!(
        envoy.contains(
            &"envoy_tcp_downstream_cx_no_route{envoy_tcp_prefix=\"missing\"} 1".to_string()
        ),
        "{envoy:?}"
    );
    let sluice = check("sluice", a, b).await;
    assert_eq!(sluice, envoy, "tcp_proxy statistics");
}

/// Istio's TCP traffic shifting, with the published `tcp-echo-20-v2` VirtualService (its port
/// made the test's): `sluice control` translates it for a TCP Gateway server, and real Envoy and
/// `sluice proxy`, both gateways of that control plane, split connections 80/20 between the
/// subsets. As sidecars of the same control plane, both send a mesh `tcp` route's connections
/// to its one destination.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn istio_tcp_routes_shift_connections_through_envoy_and_sluice() {
    let (v1, _t1) = tcp_greeter("one").await;
    let (v2, _t2) = tcp_greeter("two").await;
    let gw = closed_port();
    let corpus = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../shared/corpus/istio/tcp-echo__tcp-echo-20-v2.yaml"),
    )
    .unwrap();
    assert!(corpus.contains("- port: 31400"), "{corpus}");
    let vs = corpus.replace("- port: 31400", &format!("- port: {gw}"));
    let mesh = render(
        r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: tcp-echo}
spec:
  hosts: [tcp-echo]
  ports: [{number: 9000, name: tcp, protocol: TCP}]
  resolution: STATIC
  endpoints:
  - {address: 127.0.0.1, ports: {tcp: {{v1}}}, labels: {version: v1}}
  - {address: 127.0.0.1, ports: {tcp: {{v2}}}, labels: {version: v2}}
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
  servers: [{port: {number: {{gw}}, name: tcp, protocol: TCP}, hosts: ["*"]}]
"#,
        &[
            ("v1", v1.to_string()),
            ("v2", v2.to_string()),
            ("gw", gw.to_string()),
        ],
    );
    // Inside the mesh, every connection to tcp-echo goes to v2: sidecars listen for it on
    // their outbound IP at the service's port.
    let mesh_vs = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: tcp-echo-mesh}\nspec:\n  hosts: [tcp-echo]\n  tcp:\n  - route: [{destination: {host: tcp-echo, subset: v2}}]\n";
    let control = ControlPlane::start(&[
        ("mesh.yaml", mesh),
        ("tcp-echo.yaml", vs),
        ("tcp-echo-mesh.yaml", mesh_vs.to_string()),
    ]);
    let sidecar = |ip: &str| {
        ads_bootstrap(
            control.xds,
            "sidecar~127.0.0.1~app.default~default.svc.cluster.local",
            json!({"SLUICE_OUTBOUND_ADDRESS": format!("{ip}:{}", closed_port())}),
        )
    };
    let _envoy_sidecar = proxy_of("envoy", &sidecar("127.0.0.7")).await;
    let _sluice_sidecar = proxy_of("sluice", &sidecar("127.0.0.8")).await;
    let meta =
        |ip: &str| json!({"LABELS": {"istio": "ingressgateway"}, "SLUICE_GATEWAY_ADDRESS": ip});
    let _envoy = proxy_of(
        "envoy",
        &ads_bootstrap(control.xds, GATEWAY_NODE, meta("127.0.0.2")),
    )
    .await;
    let _sluice = proxy_of(
        "sluice",
        &ads_bootstrap(control.xds, GATEWAY_NODE, meta("127.0.0.1")),
    )
    .await;
    control.wait_synced(4, Duration::from_secs(15)).await;
    for (kind, ip) in [("envoy", "127.0.0.7"), ("sluice", "127.0.0.8")] {
        for _ in 0..20 {
            let mut s = TcpStream::connect(format!("{ip}:9000")).await.unwrap();
            s.shutdown().await.unwrap();
            assert_eq!(read_to_end(&mut s).await, "two\nbye", "{kind} sidecar");
        }
    }
    for (kind, ip) in [("envoy", "127.0.0.2"), ("sluice", "127.0.0.1")] {
        let addr: std::net::SocketAddr = format!("{ip}:{gw}").parse().unwrap();
        // Echo through the route, then a half-close.
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"ping").await.unwrap();
        s.shutdown().await.unwrap();
        let text = read_to_end(&mut s).await;
        assert!(
            text == "one\npingbye" || text == "two\npingbye",
            "{kind}: {text:?}"
        );
        let n = 400u64;
        let mut to_v2 = 0;
        for _ in 0..n {
            let mut s = TcpStream::connect(addr).await.unwrap();
            let mut line = [0u8; 4];
            s.read_exact(&mut line).await.unwrap();
            if &line == b"two\n" {
                to_v2 += 1;
            }
        }
        assert!(
            within_binomial(to_v2, n, 0.2, 4.5),
            "{kind}: {to_v2} of {n} connections to v2"
        );
    }
}
