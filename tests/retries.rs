//! Route `retry_policy` through real Envoy 1.40 and through `sluice proxy` on the same bootstrap:
//! what is retried (`5xx`, `gateway-error`, `retriable-status-codes`, `connect-failure`, per-try
//! timeouts), how many tries each request makes (counted by the upstream), request bodies sent
//! again, the next host chosen with `previous_hosts`, and `x-envoy-expected-rq-timeout-ms`; and
//! Istio's retry policies (its default on routes without `retries`) as `sluice control` serves
//! them to both.

mod support;

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;
use support::*;

type Tries = Arc<Mutex<HashMap<String, u32>>>;

/// An upstream that fails the first `fail` requests for each path with status `code` (503 by
/// default), after sleeping `sleep` ms when given, then answers 200. It counts the requests per
/// path and reports the body length and the expected-timeout header it saw.
async fn flaky() -> (u16, Tries, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let tries: Tries = Arc::default();
    let seen = tries.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let seen = seen.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let seen = seen.clone();
                    async move {
                        let path = req.uri().path().to_string();
                        let q = req.uri().query().unwrap_or("").to_string();
                        let param = |k: &str| {
                            q.split('&')
                                .find_map(|kv| kv.strip_prefix(&format!("{k}=")))
                                .and_then(|v| v.parse::<u64>().ok())
                        };
                        let timeout = req
                            .headers()
                            .get("x-envoy-expected-rq-timeout-ms")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("")
                            .to_string();
                        let body = req.into_body().collect().await.map(|b| b.to_bytes());
                        let n = {
                            let mut t = seen.lock().unwrap();
                            let n = t.entry(path).or_insert(0);
                            *n += 1;
                            *n
                        };
                        let failing = u64::from(n) <= param("fail").unwrap_or(0);
                        if failing {
                            if let Some(ms) = param("sleep") {
                                tokio::time::sleep(Duration::from_millis(ms)).await;
                            }
                        }
                        let status = if failing {
                            param("code").unwrap_or(503)
                        } else {
                            200
                        };
                        Ok::<_, Infallible>(
                            http::Response::builder()
                                .status(status as u16)
                                .header("x-try", n.to_string())
                                .header(
                                    "x-body-len",
                                    body.map(|b| b.len()).unwrap_or(0).to_string(),
                                )
                                .header("x-seen-timeout", timeout)
                                .body(Full::new(Bytes::from_static(b"flaky")))
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
    (port, tries, task)
}

fn config(flaky: u16, dead: u16) -> String {
    let retry = |extra: serde_json::Value| {
        let mut r = json!({"num_retries": 2, "retry_back_off": {"base_interval": "0.01s"}});
        for (k, v) in extra.as_object().cloned().unwrap_or_default() {
            r[k] = v;
        }
        r
    };
    let route = |prefix: &str, cluster: &str, policy: serde_json::Value| json!({"match": {"prefix": prefix}, "route": {"cluster": cluster, "retry_policy": policy}});
    bootstrap(
        routes(json!([
            route("/five/", "flaky", retry(json!({"retry_on": "5xx"}))),
            route("/gateway/", "flaky", retry(json!({"retry_on": "gateway-error"}))),
            route("/codes/", "flaky", retry(json!({"retry_on": "retriable-status-codes", "retriable_status_codes": [418]}))),
            route("/per-try/", "flaky", retry(json!({"retry_on": "5xx", "per_try_timeout": "0.2s"}))),
            route("/connect/", "half-dead", retry(json!({
                "retry_on": "connect-failure", "num_retries": 1,
                "retry_host_predicate": [{"name": "envoy.retry_host_predicates.previous_hosts",
                    "typed_config": {"@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"}}],
                "host_selection_retry_max_attempts": 5}))),
            {"match": {"prefix": "/none/"}, "route": {"cluster": "flaky"}},
        ])),
        vec![
            cluster("flaky", &[flaky]),
            cluster("half-dead", &[dead, flaky]),
        ],
        json!({}),
    )
}

/// (method, path, body): the requests, and for each the status and tries every proxy must show.
const CASES: &[(&str, &str, &str, u16, u32)] = &[
    ("GET", "/five/a?fail=1", "", 200, 2),
    ("GET", "/five/b?fail=3", "", 503, 3),
    ("GET", "/five/c?fail=1&code=500", "", 200, 2),
    ("GET", "/gateway/d?fail=1&code=500", "", 500, 1),
    ("GET", "/gateway/e?fail=2&code=504", "", 200, 3),
    ("GET", "/codes/f?fail=1&code=418", "", 200, 2),
    ("GET", "/codes/g?fail=1", "", 503, 1),
    ("POST", "/five/h?fail=1", "hello, again", 200, 2),
    ("GET", "/per-try/i?fail=1&sleep=1000", "", 200, 2),
    ("GET", "/none/j?fail=1", "", 503, 1),
];

async fn check(kind: &str, p: &ProxyProcess, tries: &Tries) {
    let client = client_h1();
    for (method, path, body, status, want_tries) in CASES {
        // Each proxy has its own paths, so that the upstream counts its tries apart.
        let (route, rest) = path[1..].split_once('/').unwrap_or(("", ""));
        let path = format!("/{route}/{kind}-{rest}");
        let req = http::Request::builder()
            .method(*method)
            .uri(p.url("main", &path))
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap();
        let r = send(&client, req).await;
        let key = path.split('?').next().unwrap_or("").to_string();
        let counted = tries.lock().unwrap().get(&key).copied().unwrap_or(0);
        assert_eq!(
            (r.status, counted),
            (*status, *want_tries),
            "{kind} {method} {path}: (status, tries)"
        );
        if !body.is_empty() && r.status == 200 {
            assert_eq!(
                r.headers.get("x-body-len").and_then(|v| v.to_str().ok()),
                Some(body.len().to_string().as_str()),
                "{kind}: the body is sent again"
            );
        }
        if path.starts_with("/per-try/") {
            assert_eq!(
                r.headers
                    .get("x-seen-timeout")
                    .and_then(|v| v.to_str().ok()),
                Some("200"),
                "{kind}: the per-try timeout is announced"
            );
        }
    }
    // A dead endpoint beside a live one: every request reaches the live one, on a second try
    // when the first went to the dead one.
    for i in 0..10 {
        let r = get(
            &client,
            &p.url("main", &format!("/connect/{kind}-{i}")),
            &[],
        )
        .await;
        assert_eq!(r.status, 200, "{kind} /connect/{i}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_happen_as_in_envoy() {
    let (port, tries, _task) = flaky().await;
    let config = config(port, closed_port());
    let envoy = envoy(&config).await;
    check("envoy", &envoy, &tries).await;
    let sluice = sluice(&config).await;
    check("sluice", &sluice, &tries).await;
    let stats = sluice.admin("/stats/prometheus").await;
    // Retries in the cases above: 1+2+1+0+2+1+0+1+1+0 = 9, plus those of /connect/.
    let retried = stats
        .lines()
        .find(|l| l.starts_with("envoy_cluster_upstream_rq_retry{envoy_cluster_name=\"flaky\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<u64>().ok());
    assert_eq!(retried, Some(9), "{stats}");
}

/// Istio's retry policies, translated by `sluice control` and served to real Envoy (gateway on
/// 127.0.0.2) and to `sluice proxy` (127.0.0.1): a route without `retries` gets Istio's default
/// (503 and connection failures retried twice), `attempts: 0` turns retries off, and `retryOn`
/// replaces the conditions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn istio_routes_retry_as_istio_configures_them() {
    let (port, tries, _task) = flaky().await;
    let gw = closed_port();
    let mesh = service_behind_gateway("flaky", port, gw)
        + r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: flaky}
spec:
  hosts: ["*"]
  gateways: [gw]
  http:
  - match: [{uri: {prefix: /off/}}]
    retries: {attempts: 0}
    route: [{destination: {host: flaky}}]
  - match: [{uri: {prefix: /five/}}]
    retries: {attempts: 3, retryOn: 5xx, backoff: 5ms}
    route: [{destination: {host: flaky}}]
  - route: [{destination: {host: flaky}}]
"#;
    let control = ControlPlane::start(&[("mesh.yaml", mesh)]);
    let _gateways = envoy_and_sluice_gateways(&control).await;
    let client = client_h1();
    // (path, status, tries)
    let cases = [
        ("/default/a?fail=1", 200, 2),
        ("/default/b?fail=3", 503, 3),
        ("/default/c?fail=1&code=500", 500, 1),
        ("/off/d?fail=1", 503, 1),
        ("/five/e?fail=3&code=500", 200, 4),
        ("/five/f?fail=1&code=404", 404, 1),
    ];
    for (kind, ip) in [("envoy", "127.0.0.2"), ("sluice", "127.0.0.1")] {
        for (path, status, want) in cases {
            let (route, rest) = path[1..].split_once('/').unwrap_or(("", ""));
            let path = format!("/{route}/{kind}-{rest}");
            let r = get(&client, &format!("http://{ip}:{gw}{path}"), &[]).await;
            let key = path.split('?').next().unwrap_or("").to_string();
            let counted = tries.lock().unwrap().get(&key).copied().unwrap_or(0);
            assert_eq!((r.status, counted), (status, want), "{kind} {path}");
        }
    }
}
