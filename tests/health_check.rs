//! Active health checks through real Envoy 1.40 and through `sluice proxy` on the same bootstrap:
//! an endpoint whose `/healthz` fails gets no traffic from the first request on, comes back after
//! `healthy_threshold` passes, and leaves again at its first unexpected status; a TCP check on
//! another port (`health_check_config.port_value`) that nobody listens on keeps its endpoint out;
//! below the panic threshold the failed endpoint is used anyway; the probes carry the same
//! `Host` and `User-Agent`.

mod support;

use std::convert::Infallible;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;
use support::*;

/// An upstream whose `/healthz` answers `health` and that records each probe's `Host` and
/// `User-Agent`; every other path answers 200 with `x-upstream: NAME`.
struct Checked {
    port: u16,
    health: Arc<AtomicU16>,
    probes: Arc<Mutex<Vec<(String, String)>>>,
    _task: tokio::task::JoinHandle<()>,
}

async fn checked(name: &'static str, health: u16) -> Checked {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let status = Arc::new(AtomicU16::new(health));
    let probes: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let (s, p) = (status.clone(), probes.clone());
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let (s, p) = (s.clone(), p.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let (s, p) = (s.clone(), p.clone());
                    async move {
                        let header = |n: &str| {
                            req.headers()
                                .get(n)
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("")
                                .to_string()
                        };
                        let code = if req.uri().path() == "/healthz" {
                            p.lock()
                                .unwrap()
                                .push((header("host"), header("user-agent")));
                            s.load(Ordering::SeqCst)
                        } else {
                            200
                        };
                        Ok::<_, Infallible>(
                            http::Response::builder()
                                .status(code)
                                .header("x-upstream", name)
                                .body(Full::new(Bytes::from_static(b"ok")))
                                .unwrap(),
                        )
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Checked {
        port,
        health: status,
        probes,
        _task: task,
    }
}

fn http_check(extra: serde_json::Value) -> serde_json::Value {
    let mut hc = json!({
        "timeout": "1s",
        "interval": "0.2s",
        "no_traffic_interval": "0.2s",
        "unhealthy_threshold": 2,
        "healthy_threshold": 2,
        "http_health_check": {"path": "/healthz"}
    });
    if let (Some(hc), Some(extra)) = (hc.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            hc.insert(k.clone(), v.clone());
        }
    }
    hc
}

fn config(a: u16, b: u16, c: u16, closed: u16) -> String {
    let mut main = cluster("checked", &[a, b]);
    main["health_checks"] = json!([http_check(json!({}))]);
    // B is probed on a port nobody listens on.
    let mut tcp = cluster("tcp", &[a, b]);
    tcp["health_checks"] = json!([{
        "timeout": "1s", "interval": "0.2s", "no_traffic_interval": "0.2s",
        "unhealthy_threshold": 1, "healthy_threshold": 1, "tcp_health_check": {}
    }]);
    tcp["load_assignment"]["endpoints"][0]["lb_endpoints"][1]["endpoint"]["health_check_config"] =
        json!({"port_value": closed});
    // C always fails its probe; one endpoint of two left is below a 60 % panic threshold.
    let mut panicky = cluster("panicky", &[a, c]);
    panicky["health_checks"] = json!([http_check(json!({
        "http_health_check": {"path": "/healthz", "host": "probe.example"}
    }))]);
    panicky["common_lb_config"] = json!({"healthy_panic_threshold": {"value": 60}});
    bootstrap(
        routes(json!([
            {"match": {"prefix": "/tcp"}, "route": {"cluster": "tcp"}},
            {"match": {"prefix": "/panic"}, "route": {"cluster": "panicky"}},
            {"match": {"prefix": "/"}, "route": {"cluster": "checked"}}
        ])),
        vec![main, tcp, panicky],
        json!({}),
    )
}

/// Which upstream answered each of `n` requests to `path`, one after another.
async fn answered(p: &ProxyProcess, path: &str, n: usize) -> Vec<String> {
    let client = client_h1();
    let mut out = Vec::new();
    for _ in 0..n {
        let r = get(&client, &p.url("main", path), &[]).await;
        out.push(format!("{}:{}", r.status, r.upstream()));
    }
    out
}

fn count(seen: &[String], what: &str) -> usize {
    seen.iter().filter(|s| *s == what).count()
}

/// Send requests until `done` holds for a batch of 10, for at most 5 s; the last batch.
async fn until(p: &ProxyProcess, done: impl Fn(&[String]) -> bool) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let batch = answered(p, "/", 10).await;
        if done(&batch) || Instant::now() > deadline {
            return batch;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn check(kind: &str) -> Vec<(String, String, String)> {
    let a = checked("a", 200).await;
    let b = checked("b", 503).await;
    let c = checked("c", 503).await;
    let p = proxy_of(kind, &config(a.port, b.port, c.port, closed_port())).await;

    // B has failed its first probe before the proxy serves: from the first request on, only A.
    let first = answered(&p, "/", 20).await;
    assert_eq!(count(&first, "200:a"), 20, "{kind}: {first:?}");

    // B passes again: back after two passes in a row, then round robin over both.
    b.health.store(200, Ordering::SeqCst);
    let back = until(&p, |s| count(s, "200:b") > 0).await;
    assert!(
        count(&back, "200:b") > 0,
        "{kind}: B never came back: {back:?}"
    );
    let both = answered(&p, "/", 40).await;
    assert_eq!(
        (count(&both, "200:a"), count(&both, "200:b")),
        (20, 20),
        "{kind}: {both:?}"
    );

    // One unexpected status fails B at once.
    b.health.store(500, Ordering::SeqCst);
    let gone = until(&p, |s| count(s, "200:a") == 10).await;
    assert_eq!(count(&gone, "200:a"), 10, "{kind}: B still used: {gone:?}");
    let after = answered(&p, "/", 20).await;
    assert_eq!(count(&after, "200:a"), 20, "{kind}: {after:?}");

    // The TCP check of B's other port is refused: only A, from the start.
    let tcp = answered(&p, "/tcp", 20).await;
    assert_eq!(count(&tcp, "200:a"), 20, "{kind}: {tcp:?}");

    // Panic: half the endpoints left is below 60 %, so the failed one is used too.
    let panic = answered(&p, "/panic", 20).await;
    assert_eq!(
        (count(&panic, "200:a"), count(&panic, "200:c")),
        (10, 10),
        "{kind}: {panic:?}"
    );

    let stats = p.admin("/stats/prometheus").await;
    assert!(
        stats
            .lines()
            .any(|l| l
                .starts_with("envoy_cluster_health_check_attempt{envoy_cluster_name=\"checked\"}")),
        "{kind}: no health-check stats"
    );
    // What the probes looked like: at A, those of all three clusters; at C, with an explicit host.
    let mut seen = Vec::new();
    for (name, up) in [("a", &a), ("c", &c)] {
        let mut probes: Vec<(String, String)> = up.probes.lock().unwrap().clone();
        probes.sort();
        probes.dedup();
        seen.extend(probes.into_iter().map(|(h, ua)| (name.to_string(), h, ua)));
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks_steer_traffic_as_envoy_does() {
    let (envoy, sluice) = tokio::join!(check("envoy"), check("sluice"));
    assert!(!envoy.is_empty(), "Envoy sent no probes");
    assert_eq!(sluice, envoy, "probe Host and User-Agent");
}

#[tokio::test]
async fn bad_health_checks_are_refused_with_the_field() {
    let mut c = cluster("c", &[closed_port()]);
    c["health_checks"] = json!([{
        "timeout": "1s", "interval": "1s", "unhealthy_threshold": 1, "healthy_threshold": 1,
        "http_health_check": {"path": "/", "expected_statuses": [{"start": 200, "end": 700}]}
    }]);
    let config = bootstrap(
        routes(json!([{"match": {"prefix": "/"}, "route": {"cluster": "c"}}])),
        vec![c],
        json!({}),
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.json");
    std::fs::write(&path, &config).unwrap();
    let out = std::process::Command::new(sluice_bin())
        .args(["proxy", "--mode", "validate", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("health_checks[0].http_health_check.expected_statuses[0]"),
        "{err}"
    );
}

/// A bootstrap whose connection manager runs the health-check filter before the router, with
/// `node.cluster` `front` and a cluster with one endpoint of two healthy.
fn filter_config(pass_through: bool, min_healthy: u32, app: u16) -> String {
    let mut c = cluster("app", &[app, closed_port()]);
    c["load_assignment"]["endpoints"][0]["lb_endpoints"][1]["health_status"] = json!("UNHEALTHY");
    let text = bootstrap(
        routes(json!([{"match": {"prefix": "/"}, "route": {"cluster": "app"}}])),
        vec![c],
        json!({"http_filters": [
            {"name": "envoy.filters.http.health_check", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.health_check.v3.HealthCheck",
                "pass_through_mode": pass_through,
                "headers": [{"name": ":path", "string_match": {"exact": "/healthz"}}],
                "cluster_min_healthy_percentages": {"app": {"value": min_healthy}}
            }},
            {"name": "envoy.filters.http.router", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
            }}
        ]}),
    );
    let mut b: serde_json::Value = serde_json::from_str(&text).unwrap();
    b["node"] = json!({"id": "n1", "cluster": "front"});
    b.to_string()
}

/// Status, upstream, `x-envoy-upstream-healthchecked-cluster` and local body length of a request.
async fn probe_filter(p: &ProxyProcess, path: &str) -> (u16, String, String, usize) {
    let r = get(&client_h1(), &p.url("main", path), &[]).await;
    let checked = r
        .headers
        .get("x-envoy-upstream-healthchecked-cluster")
        .map(|v| v.to_str().unwrap_or("?").to_string())
        .unwrap_or_else(|| "-".into());
    // The body of a local answer (an upstream's echoes headers that differ per request).
    let len = if r.upstream() == "-" { r.body.len() } else { 0 };
    (r.status, r.upstream(), checked, len)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_check_filter_answers_as_envoy_does() {
    let app = upstream("app").await;
    let mut seen = Vec::new();
    for kind in ["envoy", "sluice"] {
        let mut answers = Vec::new();
        // Answered by the proxy: half the endpoints healthy meets 50 %, not 60 %.
        for (pass_through, min) in [(false, 50), (false, 60), (true, 60)] {
            let p = proxy_of(kind, &filter_config(pass_through, min, app.port())).await;
            answers.push(probe_filter(&p, "/healthz").await);
            answers.push(probe_filter(&p, "/other").await);
        }
        seen.push(answers);
    }
    let expected = vec![
        (200, "-".to_string(), "front".to_string(), 0),
        (200, "app".to_string(), "-".to_string(), 0),
        (503, "-".to_string(), "front".to_string(), 0),
        (200, "app".to_string(), "-".to_string(), 0),
        // Passed through to the upstream, marked on the way back.
        (200, "app".to_string(), "front".to_string(), 0),
        (200, "app".to_string(), "-".to_string(), 0),
    ];
    assert_eq!(seen[0], expected, "envoy");
    assert_eq!(seen[1], seen[0], "sluice differs from envoy");
}
