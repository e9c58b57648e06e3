//! How traffic spreads over priority levels and localities, through real Envoy 1.40 and through
//! `sluice proxy` on the same bootstrap: a level half available keeps 70 % of the traffic and
//! spills the rest to the next one; when every level is in panic, each takes traffic by its
//! number of endpoints; locality weights count only with `locality_weighted_lb_config`; RANDOM
//! ignores endpoint weights.
//! Shares are checked within binomial bounds (z = 4.5) for both proxies.

mod support;

use serde_json::{json, Value};
use support::*;

const N: u64 = 600;

fn endpoint(port: u16, healthy: bool) -> Value {
    let mut e = json!({"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}});
    if !healthy {
        e["health_status"] = json!("UNHEALTHY");
    }
    e
}

fn cluster_of(name: &str, localities: Value, locality_weighted: bool) -> Value {
    let mut c = json!({
        "name": name, "type": "STATIC", "connect_timeout": "1s",
        "load_assignment": {"cluster_name": name, "endpoints": localities}
    });
    if locality_weighted {
        c["common_lb_config"] = json!({"locality_weighted_lb_config": {}});
    }
    c
}

fn config(p: &[u16]) -> String {
    let (a, b, c, d, e, f) = (p[0], p[1], p[2], p[3], p[4], p[5]);
    let localities = json!([
        {"locality": {"zone": "z1"}, "load_balancing_weight": 1, "lb_endpoints": [endpoint(d, true)]},
        {"locality": {"zone": "z2"}, "load_balancing_weight": 3, "lb_endpoints": [endpoint(e, true), endpoint(f, true)]}
    ]);
    bootstrap(
        routes(json!([
            {"match": {"prefix": "/spill"}, "route": {"cluster": "spill"}},
            {"match": {"prefix": "/panic"}, "route": {"cluster": "panic"}},
            {"match": {"prefix": "/weighted"}, "route": {"cluster": "weighted"}},
            {"match": {"prefix": "/random"}, "route": {"cluster": "random"}},
            {"match": {"prefix": "/"}, "route": {"cluster": "plain"}}
        ])),
        vec![
            cluster_of(
                "spill",
                json!([
                    {"priority": 0, "lb_endpoints": [endpoint(a, true), endpoint(b, false)]},
                    {"priority": 1, "lb_endpoints": [endpoint(c, true)]}
                ]),
                false,
            ),
            cluster_of(
                "panic",
                json!([
                    {"priority": 0, "lb_endpoints": [endpoint(a, false), endpoint(b, false)]},
                    {"priority": 1, "lb_endpoints": [endpoint(c, false)]}
                ]),
                false,
            ),
            cluster_of("weighted", localities.clone(), true),
            {
                let mut c = cluster_of(
                    "random",
                    json!([{"lb_endpoints": [
                        {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": a}}}, "load_balancing_weight": 3},
                        {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": b}}}, "load_balancing_weight": 1}
                    ]}]),
                    false,
                );
                c["lb_policy"] = json!("RANDOM");
                c
            },
            cluster_of("plain", localities, false),
        ],
        json!({}),
    )
}

/// How many of `N` requests to `path` each upstream answered.
async fn spread(p: &ProxyProcess, path: &str) -> std::collections::BTreeMap<String, u64> {
    let client = client_h1();
    let mut out = std::collections::BTreeMap::new();
    for _ in 0..N {
        let r = get(&client, &p.url("main", path), &[]).await;
        *out.entry(r.upstream()).or_insert(0) += 1;
    }
    out
}

fn expect(
    kind: &str,
    path: &str,
    seen: &std::collections::BTreeMap<String, u64>,
    want: &[(&str, f64)],
) {
    let total: u64 = seen.values().sum();
    let named: u64 = want
        .iter()
        .map(|(n, _)| seen.get(*n).copied().unwrap_or(0))
        .sum();
    assert_eq!(named, total, "{kind} {path}: unexpected upstreams {seen:?}");
    for (name, p) in want {
        let got = seen.get(*name).copied().unwrap_or(0);
        assert!(
            within_binomial(got, N, *p, 4.5),
            "{kind} {path}: {name} answered {got} of {N}, expected {p}: {seen:?}"
        );
    }
}

async fn check(kind: &str, ports: &[u16]) {
    let p = proxy_of(kind, &config(ports)).await;
    // P0 has one of two endpoints: 140 % × 1/2 = 70 % stays there, 30 % spills to P1.
    expect(
        kind,
        "/spill",
        &spread(&p, "/spill").await,
        &[("a", 0.7), ("c", 0.3)],
    );
    // Nothing healthy anywhere: every level in panic, load by endpoint count (67 / 33).
    expect(
        kind,
        "/panic",
        &spread(&p, "/panic").await,
        &[("a", 0.335), ("b", 0.335), ("c", 0.33)],
    );
    // Localities weigh 1 and 3: z1's one endpoint takes 25 %, z2's two 37.5 % each.
    expect(
        kind,
        "/weighted",
        &spread(&p, "/weighted").await,
        &[("d", 0.25), ("e", 0.375), ("f", 0.375)],
    );
    // RANDOM ignores endpoint weights (3 and 1): half each.
    expect(
        kind,
        "/random",
        &spread(&p, "/random").await,
        &[("a", 0.5), ("b", 0.5)],
    );
    // Without locality_weighted_lb_config locality weights are ignored.
    let third = 1.0 / 3.0;
    expect(
        kind,
        "/plain",
        &spread(&p, "/plain").await,
        &[("d", third), ("e", third), ("f", third)],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn priority_load_and_locality_weights_as_envoy() {
    let ups = [
        upstream("a").await,
        upstream("b").await,
        upstream("c").await,
        upstream("d").await,
        upstream("e").await,
        upstream("f").await,
    ];
    let ports: Vec<u16> = ups.iter().map(|u| u.port()).collect();
    check("envoy", &ports).await;
    check("sluice", &ports).await;
}
