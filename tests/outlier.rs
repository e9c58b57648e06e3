//! Outlier detection through real Envoy 1.40 and through `sluice proxy` on the same bootstrap:
//! an endpoint that answers 503 is ejected after `consecutive_5xx` failures in a row and comes
//! back after `base_ejection_time`; `max_ejection_percent` keeps it in when ejecting it would pass
//! the limit.

mod support;

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;
use support::*;

/// An upstream that answers every request 503.
async fn broken() -> (u16, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let svc = service_fn(|_req: http::Request<hyper::body::Incoming>| async {
                    Ok::<_, Infallible>(
                        http::Response::builder()
                            .status(503)
                            .header("x-upstream", "broken")
                            .body(Full::new(Bytes::from_static(b"down")))
                            .unwrap(),
                    )
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (port, task)
}

fn config(good: u16, bad: u16) -> String {
    let mut ejecting = cluster("ejecting", &[bad, good]);
    ejecting["outlier_detection"] = json!({
        "consecutive_5xx": 3,
        "interval": "0.1s",
        "base_ejection_time": "2s",
        "max_ejection_percent": 100,
        "enforcing_success_rate": 0
    });
    let mut capped = cluster("capped", &[bad, good]);
    capped["outlier_detection"] = json!({"consecutive_5xx": 3, "enforcing_success_rate": 0});
    bootstrap(
        routes(json!([
            {"match": {"prefix": "/capped"}, "route": {"cluster": "capped"}},
            {"match": {"prefix": "/"}, "route": {"cluster": "ejecting"}}
        ])),
        vec![ejecting, capped],
        json!({}),
    )
}

/// The statuses of `n` requests to `path`, one after another.
async fn statuses(p: &ProxyProcess, path: &str, n: usize) -> Vec<u16> {
    let client = client_h1();
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(get(&client, &p.url("main", path), &[]).await.status);
    }
    out
}

/// Prometheus lines of `p`'s stats that mention outlier detection.
async fn outlier_stats(p: &ProxyProcess) -> String {
    let stats = p.admin("/stats/prometheus").await;
    stats
        .lines()
        .filter(|l| l.contains("outlier"))
        .collect::<Vec<_>>()
        .join("\n")
}

async fn check(kind: &str, p: &ProxyProcess) {
    // Round robin over the broken and the good endpoint: the broken one answers three of the
    // first six requests, and its third 503 in a row ejects it.
    let first = statuses(p, "/", 6).await;
    let failed = first.iter().filter(|s| **s == 503).count();
    assert_eq!(failed, 3, "{kind}: {first:?}");
    // Envoy ejects on its main thread and then tells its workers, so on a loaded machine the
    // ejection can land some milliseconds after the third 503: wait for it to be counted, and
    // give the workers a moment to see the new host set, before asserting that only the good
    // endpoint answers. No request is sent meanwhile, so a fourth 503 cannot be what ejects it.
    // Sluice ejects on the request path of the third 503, so it gets no such wait.
    let enforced = "envoy_cluster_outlier_detection_ejections_enforced_total{envoy_cluster_name=\"ejecting\"} 1";
    let patience = if kind == "envoy" {
        Duration::from_secs(5)
    } else {
        Duration::ZERO
    };
    let deadline = std::time::Instant::now() + patience;
    let mut outlier = outlier_stats(p).await;
    while !outlier.contains(enforced) && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        outlier = outlier_stats(p).await;
    }
    assert!(outlier.contains(enforced), "{kind}: {outlier}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let after = statuses(p, "/", 12).await;
    assert!(
        after.iter().all(|s| *s == 200),
        "{kind}: ejected after its third 503: {after:?}"
    );
    // Back after `base_ejection_time` (2 s; Envoy returns it at its next `interval` tick): it
    // gets requests again. Polled, as a loaded machine delays Envoy's timers.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let second = loop {
        let batch = statuses(p, "/", 6).await;
        if batch.contains(&503) || std::time::Instant::now() > deadline {
            break batch;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(second.contains(&503), "{kind}: not back: {second:?}");
    // One endpoint of two is 50 %, past the default max_ejection_percent (10 %): never ejected.
    let capped = statuses(p, "/capped", 20).await;
    assert_eq!(
        capped.iter().filter(|s| **s == 503).count(),
        10,
        "{kind}: {capped:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outliers_are_ejected_as_envoy_ejects_them() {
    let good = upstream("good").await;
    let (bad, _task) = broken().await;
    let config = config(good.port(), bad);
    let envoy = envoy(&config).await;
    check("envoy", &envoy).await;
    let sluice = sluice(&config).await;
    check("sluice", &sluice).await;
}
