//! The fault injection filter (`envoy.filters.http.fault`), through real Envoy 1.40 and through
//! `sluice proxy` on the same bootstrap: aborts, delays, both, header-controlled faults, the
//! cluster and header conditions, per-route configuration replacing the filter's own, gRPC
//! aborts, and a 50 % abort held to binomial bounds. Istio's VirtualService `fault` is served as
//! exactly this configuration.

mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::*;

fn fault(config: Value) -> Value {
    let mut c = config;
    c["@type"] = json!("type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault");
    json!({"envoy.filters.http.fault": c})
}

fn pct(n: u64) -> Value {
    json!({"numerator": n, "denominator": "HUNDRED"})
}

fn config(a: u16, b: u16) -> String {
    let route = |prefix: &str, per_filter: Option<Value>| {
        let mut r = json!({"match": {"prefix": prefix}, "route": {"cluster": "a"}});
        if let Some(f) = per_filter {
            r["typed_per_filter_config"] = f;
        }
        r
    };
    // A delay longer than the route's timeout: Envoy's router starts its timer after the
    // fault filter, so the request is delayed and then answered, not timed out.
    let slow_delay = {
        let mut r = route(
            "/slow-delay",
            Some(fault(
                json!({"delay": {"fixed_delay": "0.3s", "percentage": pct(100)}}),
            )),
        );
        r["route"]["timeout"] = json!("0.2s");
        r
    };
    let routes_json = json!([
        route(
            "/abort",
            Some(fault(
                json!({"abort": {"http_status": 503, "percentage": pct(100)}})
            ))
        ),
        route(
            "/delay",
            Some(fault(
                json!({"delay": {"fixed_delay": "0.3s", "percentage": pct(100)}})
            ))
        ),
        slow_delay,
        route(
            "/both",
            Some(fault(json!({
            "delay": {"fixed_delay": "0.2s", "percentage": pct(100)},
            "abort": {"http_status": 418, "percentage": pct(100)}})))
        ),
        route(
            "/no-percentage",
            Some(fault(json!({"abort": {"http_status": 503}})))
        ),
        route(
            "/header",
            Some(fault(json!({
            "abort": {"header_abort": {}, "percentage": pct(100)},
            "delay": {"header_delay": {}, "percentage": pct(100)}})))
        ),
        route(
            "/other-cluster",
            Some(fault(json!({
            "abort": {"http_status": 503, "percentage": pct(100)}, "upstream_cluster": "b"})))
        ),
        route(
            "/only-jason",
            Some(fault(json!({
            "abort": {"http_status": 500, "percentage": pct(100)},
            "headers": [{"name": "end-user", "string_match": {"exact": "jason"}}]})))
        ),
        route(
            "/grpc",
            Some(fault(
                json!({"abort": {"grpc_status": 14, "percentage": pct(100)}})
            ))
        ),
        route(
            "/half",
            Some(fault(
                json!({"abort": {"http_status": 503, "percentage": pct(50)}})
            ))
        ),
        // No route configuration: the filter's own (abort when `x-fail: yes`).
        route("/", None),
    ]);
    let filter_own = json!({
        "@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault",
        "abort": {"http_status": 502, "percentage": pct(100)},
        "headers": [{"name": "x-fail", "string_match": {"exact": "yes"}}]
    });
    bootstrap(
        routes(routes_json),
        vec![cluster("a", &[a]), cluster("b", &[b])],
        json!({"http_filters": [
            {"name": "envoy.filters.http.fault", "typed_config": filter_own},
            {"name": "envoy.filters.http.router",
             "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}
        ]}),
    )
}

/// What a request's answer must agree on, and how long it took.
async fn ask(p: &ProxyProcess, path: &str, headers: &[(&str, &str)]) -> (Value, Duration) {
    let client = client_h1();
    let mut b = http::Request::builder().uri(p.url("main", path));
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let t = Instant::now();
    let reply = send(
        &client,
        b.body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap(),
    )
    .await;
    let elapsed = t.elapsed();
    let h = |n: &str| {
        reply
            .headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let body = if h("x-upstream").is_empty() {
        String::from_utf8_lossy(&reply.body).to_string()
    } else {
        "<upstream>".to_string()
    };
    let seen = json!({
        "status": reply.status,
        "body": body,
        "upstream": h("x-upstream"),
        "content-type": h("content-type"),
        "grpc-status": h("grpc-status"),
        "grpc-message": h("grpc-message"),
    });
    (seen, elapsed)
}

/// A request every proxy must answer alike: path, headers, and the delay its answer must show.
type Case = (
    &'static str,
    Vec<(&'static str, &'static str)>,
    Option<Duration>,
);

fn cases() -> Vec<Case> {
    let ms = |n| Some(Duration::from_millis(n));
    vec![
        ("/abort", vec![], None),
        ("/delay", vec![], ms(300)),
        ("/slow-delay", vec![], ms(300)),
        ("/both", vec![], ms(200)),
        ("/no-percentage", vec![], None),
        ("/header", vec![], None),
        (
            "/header",
            vec![("x-envoy-fault-abort-request", "429")],
            None,
        ),
        (
            "/header",
            vec![
                ("x-envoy-fault-delay-request", "150"),
                ("x-envoy-fault-abort-request", "451"),
            ],
            ms(150),
        ),
        (
            "/header",
            vec![("x-envoy-fault-abort-request", "700")],
            None,
        ),
        ("/other-cluster", vec![], None),
        ("/only-jason", vec![("end-user", "jason")], None),
        ("/only-jason", vec![("end-user", "mia")], None),
        ("/grpc", vec![("content-type", "application/grpc")], None),
        ("/plain", vec![], None),
        ("/plain", vec![("x-fail", "yes")], None),
    ]
}

async fn answers(kind: &str, p: &ProxyProcess) -> Vec<Value> {
    let mut out = Vec::new();
    for (path, headers, delayed) in cases() {
        let (seen, elapsed) = ask(p, path, &headers).await;
        match delayed {
            // Envoy's timers may fire a few milliseconds early against the client's clock.
            Some(d) => assert!(
                elapsed + Duration::from_millis(20) >= d,
                "{kind} {path}: {elapsed:?} < {d:?}"
            ),
            None => assert!(
                elapsed < Duration::from_millis(120),
                "{kind} {path} {headers:?}: not delayed, took {elapsed:?}"
            ),
        }
        out.push(json!({"request": format!("{path} {headers:?}"), "answer": seen}));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_are_injected_as_envoy_injects_them() {
    let a = upstream("a").await;
    let b = upstream("b").await;
    let config = config(a.port(), b.port());
    let envoy = envoy(&config).await;
    let sluice = sluice(&config).await;
    let want = answers("envoy", &envoy).await;
    let got = answers("sluice", &sluice).await;
    for (e, s) in want.iter().zip(&got) {
        assert_eq!(e, s, "envoy (left) and sluice (right) differ");
    }
    // The answers are the faults, not an accident of both proxies failing alike.
    let status = |i: usize| got[i]["answer"]["status"].as_u64().unwrap_or(0);
    assert_eq!(
        (0..cases().len()).map(status).collect::<Vec<_>>(),
        vec![503, 200, 200, 418, 200, 200, 429, 451, 200, 200, 500, 200, 200, 200, 502]
    );
    assert_eq!(got[0]["answer"]["body"], "fault filter abort");
    assert_eq!(got[12]["answer"]["grpc-status"], "14");

    // A 50 % abort, over 400 requests to each proxy.
    let mut sluice_aborted = 0;
    for (kind, p) in [("envoy", &envoy), ("sluice", &sluice)] {
        let mut aborted = 0;
        for _ in 0..400 {
            if ask(p, "/half", &[]).await.0["status"] == 503 {
                aborted += 1;
            }
        }
        assert!(
            within_binomial(aborted, 400, 0.5, 4.0),
            "{kind}: {aborted} of 400 aborted at 50 %"
        );
        sluice_aborted = aborted;
    }

    // Envoy's statistics, under Envoy's names.
    // Seven aborts above (/abort, /both, two on /header, /only-jason, /grpc, /plain), and /half's.
    let stats = sluice.admin("/stats/prometheus").await;
    for line in [
        format!(
            "envoy_http_fault_aborts_injected{{envoy_http_conn_manager_prefix=\"ingress_http\"}} {}",
            7 + sluice_aborted
        ),
        "envoy_http_fault_delays_injected{envoy_http_conn_manager_prefix=\"ingress_http\"} 4".into(),
        "envoy_http_fault_active_faults{envoy_http_conn_manager_prefix=\"ingress_http\"} 0".into(),
    ] {
        assert!(stats.contains(&line), "{line} missing from:\n{stats}");
    }
    assert!(
        stats.contains("response_flags=\"FI\""),
        "istio_requests_total counts aborts with flag FI"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_active_faults_lets_requests_through_once_reached() {
    let a = upstream("a").await;
    let config = bootstrap(
        routes(json!([{"match": {"prefix": "/"}, "route": {"cluster": "a"}}])),
        vec![cluster("a", &[a.port()])],
        json!({"http_filters": [
            {"name": "envoy.filters.http.fault", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault",
                "delay": {"fixed_delay": "1s", "percentage": pct(100)},
                "max_active_faults": 1}},
            {"name": "envoy.filters.http.router",
             "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}
        ]}),
    );
    let p = sluice(&config).await;
    let held = {
        let client = client_h1();
        let url = p.url("main", "/");
        tokio::spawn(async move { get(&client, &url, &[]).await.status })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    // One fault is active: this request is not delayed.
    let (seen, elapsed) = ask(&p, "/", &[]).await;
    assert_eq!(seen["status"], 200);
    assert!(elapsed < Duration::from_millis(500), "{elapsed:?}");
    assert_eq!(held.await.unwrap(), 200);
    let stats = p.admin("/stats/prometheus").await;
    assert!(
        stats.contains(
            "envoy_http_fault_faults_overflow{envoy_http_conn_manager_prefix=\"ingress_http\"} 1"
        ),
        "{stats}"
    );
}
