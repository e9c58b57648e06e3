//! End-to-end routing through a real `sluice proxy` process and real upstream servers on loopback.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use serde_json::json;
use support::*;

fn split_routes() -> serde_json::Value {
    routes(json!([
        {"match": {"prefix": "/", "headers": [{"name": "lane", "string_match": {"exact": "test-v2"}}]},
         "route": {"cluster": "canary"}},
        {"match": {"prefix": "/", "headers": [{"name": "cookie", "string_match": {"safe_regex": {"regex": ".*user=jason.*"}}}]},
         "route": {"cluster": "canary"}},
        {"match": {"prefix": "/", "query_parameters": [{"name": "lane", "string_match": {"exact": "canary"}}]},
         "route": {"cluster": "canary"}},
        {"match": {"path": "/canary-only"}, "route": {"cluster": "canary"}},
        {"match": {"safe_regex": {"regex": "/v2/.*"}}, "route": {"cluster": "canary"}},
        {"match": {"prefix": "/"}, "route": {"weighted_clusters": {"clusters": [
            {"name": "stable", "weight": 80}, {"name": "canary", "weight": 20}]}}}
    ]))
}

/// Two upstreams (`v1`, `v2`) behind a proxy serving [`split_routes`].
async fn split_proxy() -> (Upstream, Upstream, ProxyProcess) {
    let stable = upstream("v1").await;
    let canary = upstream("v2").await;
    let p = sluice(&bootstrap(
        split_routes(),
        vec![
            cluster("stable", &[stable.port()]),
            cluster("canary", &[canary.port()]),
        ],
        json!({}),
    ))
    .await;
    (stable, canary, p)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn weighted_split_is_within_a_binomial_bound_over_10000_requests() {
    let (_stable, _canary, p) = split_proxy().await;
    let client = client_h1();
    let n = 10_000u64;
    let mut tasks = Vec::new();
    for t in 0..8 {
        let client = client.clone();
        let url = p.url("main", "/split");
        tasks.push(tokio::spawn(async move {
            let mut canary = 0u64;
            for _ in 0..(n / 8) {
                let r = get(&client, &url, &[]).await;
                assert_eq!(r.status, 200, "task {t}");
                if r.upstream() == "v2" {
                    canary += 1;
                }
            }
            canary
        }));
    }
    let mut canary_count = 0;
    for t in tasks {
        canary_count += t.await.unwrap();
    }
    eprintln!(
        "split: {canary_count} of {n} to canary ({:.2} %)",
        canary_count as f64 * 100.0 / n as f64
    );
    assert!(
        within_binomial(canary_count, n, 0.2, Z_SUITE),
        "canary share {canary_count}/{n} outside the 99.999 % binomial bound of 20 %"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_cookie_query_and_uri_rules_pin_the_canary() {
    let (_stable, _canary, p) = split_proxy().await;
    let c = client_h1();
    for _ in 0..50 {
        assert_eq!(
            get(&c, &p.url("main", "/"), &[("lane", "test-v2")])
                .await
                .upstream(),
            "v2"
        );
        assert_eq!(
            get(
                &c,
                &p.url("main", "/"),
                &[("cookie", "a=1; user=jason; b=2")]
            )
            .await
            .upstream(),
            "v2"
        );
        assert_eq!(
            get(&c, &p.url("main", "/?x=1&lane=canary"), &[])
                .await
                .upstream(),
            "v2"
        );
        assert_eq!(
            get(&c, &p.url("main", "/canary-only"), &[])
                .await
                .upstream(),
            "v2"
        );
        assert_eq!(
            get(&c, &p.url("main", "/v2/items"), &[]).await.upstream(),
            "v2"
        );
    }
    // Near misses do not pin: over 200 requests, both versions must show up.
    let mut seen = std::collections::HashSet::new();
    for _ in 0..200 {
        seen.insert(
            get(
                &c,
                &p.url("main", "/canary-only/x?lane=stable"),
                &[("lane", "test-v1"), ("cookie", "user=bob")],
            )
            .await
            .upstream(),
        );
    }
    assert!(seen.contains("v1") && seen.contains("v2"), "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hash_policy_keeps_a_user_on_one_version() {
    let stable = upstream("v1").await;
    let canary = upstream("v2").await;
    let rc = routes(json!([{"match": {"prefix": "/"}, "route": {
        "hash_policy": [{"cookie": {"name": "user"}}],
        "weighted_clusters": {"use_hash_policy": true, "clusters": [{"name": "stable", "weight": 50}, {"name": "canary", "weight": 50}]}}}]));
    let p = sluice(&bootstrap(
        rc,
        vec![
            cluster("stable", &[stable.port()]),
            cluster("canary", &[canary.port()]),
        ],
        json!({}),
    ))
    .await;
    let c = client_h1();
    let mut versions = std::collections::HashSet::new();
    for user in 0..40 {
        let cookie = format!("user=u{user}");
        let first = get(&c, &p.url("main", "/"), &[("cookie", &cookie)])
            .await
            .upstream();
        for _ in 0..10 {
            assert_eq!(
                get(&c, &p.url("main", "/"), &[("cookie", &cookie)])
                    .await
                    .upstream(),
                first,
                "user {user} moved"
            );
        }
        versions.insert(first);
    }
    assert_eq!(versions.len(), 2, "40 users all landed on one version");
}

/// A cookie hash policy with a `ttl` on a ring-hash cluster: the first answer sets the cookie
/// (Envoy's form: quoted value, `Max-Age`, `Path`, attributes, `HttpOnly`), and requests that send
/// it back stay on one endpoint; the same through real Envoy and Sluice.
async fn generated_cookie(kind: &str, ports: &[u16]) -> (String, usize) {
    let rc = routes(json!([{"match": {"prefix": "/"}, "route": {
        "cluster": "ring",
        "hash_policy": [{"cookie": {"name": "sticky", "ttl": "3600s", "path": "/",
                                    "attributes": [{"name": "SameSite", "value": "Lax"}]}}]
    }}]));
    let mut ring = cluster("ring", ports);
    ring["lb_policy"] = json!("RING_HASH");
    let p = proxy_of(kind, &bootstrap(rc, vec![ring], json!({}))).await;
    let c = client_h1();
    let first = get(&c, &p.url("main", "/"), &[]).await;
    let set = first
        .headers
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let value = set.split(';').next().unwrap_or("").to_string();
    // The value is a hash of the connection's addresses: only its form is compared.
    let hex = value
        .strip_prefix("sticky=\"")
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or("");
    assert!(
        hex.len() == 16 && hex.chars().all(|c| c.is_ascii_hexdigit()),
        "{kind}: {set}"
    );
    let form = set.replace(hex, "HEX");
    let mut upstreams = std::collections::HashSet::new();
    for _ in 0..20 {
        let r = get(&c, &p.url("main", "/"), &[("cookie", &value)]).await;
        assert!(
            r.headers.get("set-cookie").is_none(),
            "{kind}: a second cookie"
        );
        upstreams.insert(r.upstream());
    }
    (form, upstreams.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generated_hash_cookie_is_set_and_keeps_the_client_on_one_endpoint() {
    let ups = [
        upstream("a").await,
        upstream("b").await,
        upstream("c").await,
    ];
    let ports: Vec<u16> = ups.iter().map(|u| u.port()).collect();
    let envoy = generated_cookie("envoy", &ports).await;
    assert_eq!(
        envoy,
        (
            "sticky=\"HEX\"; Max-Age=3600; Path=/; SameSite=Lax; HttpOnly".to_string(),
            1
        )
    );
    assert_eq!(generated_cookie("sluice", &ports).await, envoy);
}

/// `require_tls` on virtual hosts (Istio's `httpsRedirect`): requests over plain HTTP get a 301 to
/// `https://` + host + path, unless `x-forwarded-proto` says HTTPS (not an edge); EXTERNAL_ONLY
/// does not believe a client's `x-envoy-internal`; the same through real Envoy and Sluice.
async fn tls_redirects(kind: &str, app: u16) -> Vec<String> {
    let rc = json!({"name": "local", "virtual_hosts": [
        {"name": "all-tls", "domains": ["secure.test", "secure.test:*"], "require_tls": "ALL",
         "routes": [{"match": {"prefix": "/only"}, "route": {"cluster": "app"}}]},
        {"name": "external-tls", "domains": ["ext.test"], "require_tls": "EXTERNAL_ONLY",
         "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "app"}}]},
        {"name": "plain", "domains": ["*"],
         "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "app"}}]}
    ]});
    let p = proxy_of(
        kind,
        &bootstrap(rc, vec![cluster("app", &[app])], json!({})),
    )
    .await;
    let c = client_h1();
    type Case<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)]);
    let cases: &[Case] = &[
        ("secure.test", "/a/b?c=1", &[]),
        ("secure.test:8080", "/only", &[]),
        ("secure.test", "/only", &[("x-forwarded-proto", "https")]),
        ("ext.test", "/", &[]),
        ("ext.test", "/", &[("x-envoy-internal", "true")]),
        ("other.test", "/", &[]),
    ];
    let mut out = Vec::new();
    for (host, path, headers) in cases {
        let r = request(&c, "GET", &p.url("main", path), host, headers).await;
        let location = r
            .headers
            .get("location")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_string();
        out.push(format!(
            "{host}{path} {headers:?} -> {} {location} {}",
            r.status,
            r.upstream()
        ));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_tls_redirects_as_envoy() {
    let app = upstream("app").await;
    let envoy = tls_redirects("envoy", app.port()).await;
    assert!(
        envoy[0].ends_with("-> 301 https://secure.test/a/b?c=1 -"),
        "{envoy:#?}"
    );
    assert_eq!(tls_redirects("sluice", app.port()).await, envoy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewrites_and_header_changes_reach_the_upstream() {
    let up = upstream("app").await;
    let rc = json!({
        "name": "local",
        "request_headers_to_add": [{"header": {"key": "x-level", "value": "config"}, "append_action": "APPEND_IF_EXISTS_OR_ADD"}],
        "response_headers_to_add": [{"header": {"key": "x-resp-config", "value": "1"}}],
        "virtual_hosts": [{
            "name": "all", "domains": ["*"],
            "request_headers_to_add": [{"header": {"key": "x-level", "value": "vhost"}}],
            "request_headers_to_remove": ["x-drop-vhost"],
            "routes": [
                {"match": {"prefix": "/api/"}, "route": {"cluster": "app", "prefix_rewrite": "/v1/",
                    "host_rewrite_literal": "backend.internal"},
                 "request_headers_to_add": [
                    {"header": {"key": "x-route", "value": "r1"}},
                    {"header": {"key": "x-over", "value": "new"}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"},
                    {"header": {"key": "x-client", "value": "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%"}}],
                 "request_headers_to_remove": ["x-secret"],
                 "response_headers_to_add": [{"header": {"key": "x-resp-route", "value": "r1"}}],
                 "response_headers_to_remove": ["x-upstream-private"]},
                {"match": {"safe_regex": {"regex": "/service/[^/]+/.*"}}, "route": {"cluster": "app",
                    "regex_rewrite": {"pattern": {"regex": "^/service/([^/]+)(/.*)$"}, "substitution": "\\2/instance/\\1"}}},
                {"match": {"prefix": "/weighted"}, "route": {"weighted_clusters": {"clusters": [
                    {"name": "app", "weight": 1, "request_headers_to_add": [{"header": {"key": "x-wc", "value": "app"}}],
                     "response_headers_to_add": [{"header": {"key": "x-wc-resp", "value": "app"}}]}]}}}
            ]
        }]
    });
    let p = sluice(&bootstrap(
        rc,
        vec![cluster("app", &[up.port()])],
        json!({}),
    ))
    .await;
    let c = client_h1();
    let r = get(
        &c,
        &p.url("main", "/api/users?id=7"),
        &[("x-secret", "s"), ("x-over", "old"), ("x-drop-vhost", "d")],
    )
    .await;
    assert_eq!(r.status, 200);
    let j = r.json();
    assert_eq!(j["path"], "/v1/users?id=7");
    assert_eq!(j["host"], "backend.internal");
    assert_eq!(r.seen("x-route").as_deref(), Some("r1"));
    assert_eq!(r.seen("x-over").as_deref(), Some("new"));
    assert_eq!(r.seen("x-client").as_deref(), Some("127.0.0.1"));
    assert_eq!(r.seen("x-secret"), None);
    assert_eq!(r.seen("x-drop-vhost"), None);
    assert_eq!(
        r.seen("x-level").as_deref(),
        Some("vhost,config"),
        "route, then vhost, then route config"
    );
    assert_eq!(
        r.seen("x-envoy-original-path").as_deref(),
        Some("/api/users?id=7")
    );
    assert_eq!(r.seen("x-forwarded-proto").as_deref(), Some("http"));
    assert!(r.seen("x-request-id").is_some_and(|v| v.len() == 36));
    assert_eq!(
        r.seen("x-envoy-expected-rq-timeout-ms").as_deref(),
        Some("15000")
    );
    assert_eq!(r.headers["x-resp-route"], "r1");
    assert_eq!(r.headers["x-resp-config"], "1");
    assert_eq!(r.headers["server"], "envoy");

    let r = get(&c, &p.url("main", "/service/foo/v1/api?q=1"), &[]).await;
    assert_eq!(r.json()["path"], "/v1/api/instance/foo?q=1");

    let r = get(&c, &p.url("main", "/weighted"), &[]).await;
    assert_eq!(r.seen("x-wc").as_deref(), Some("app"));
    assert_eq!(r.headers["x-wc-resp"], "app");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_replies_and_errors_match_envoy_codes() {
    let up = upstream("app").await;
    let dead = closed_port();
    let rc = json!({"name": "local", "virtual_hosts": [
        {"name": "only", "domains": ["known.example"], "routes": [
            {"match": {"prefix": "/slow"}, "route": {"cluster": "app", "timeout": "0.2s"}},
            {"match": {"prefix": "/dead"}, "route": {"cluster": "dead"}},
            {"match": {"prefix": "/empty"}, "route": {"cluster": "empty"}},
            {"match": {"prefix": "/by-header"}, "route": {"cluster_header": "x-cluster"}},
            {"match": {"prefix": "/direct"}, "direct_response": {"status": 418, "body": {"inline_string": "teapot"}}},
            {"match": {"prefix": "/old"}, "redirect": {"path_redirect": "/new", "response_code": "FOUND"}},
            {"match": {"prefix": "/secure"}, "redirect": {"https_redirect": true}},
            {"match": {"prefix": "/"}, "route": {"cluster": "app"}}
        ]}
    ]});
    let mut empty = cluster("empty", &[]);
    empty["load_assignment"]["endpoints"] = json!([]);
    let p = sluice(&bootstrap(
        rc,
        vec![
            cluster("app", &[up.port()]),
            cluster("dead", &[dead]),
            empty,
        ],
        json!({}),
    ))
    .await;
    let c = client_h1();
    let h = [("host", "known.example")];
    assert_eq!(
        get(&c, &p.url("main", "/"), &[("host", "other.example")])
            .await
            .status,
        404,
        "no virtual host"
    );
    assert_eq!(get(&c, &p.url("main", "/"), &h).await.status, 200);
    let slow = get(&c, &p.url("main", "/slow?delay_ms=1000"), &h).await;
    assert_eq!(slow.status, 504);
    assert_eq!(&slow.body[..], b"upstream request timeout");
    assert_eq!(get(&c, &p.url("main", "/dead"), &h).await.status, 503);
    let empty = get(&c, &p.url("main", "/empty"), &h).await;
    assert_eq!(
        (empty.status, &empty.body[..]),
        (503, &b"no healthy upstream"[..])
    );
    assert_eq!(
        get(
            &c,
            &p.url("main", "/by-header"),
            &[("host", "known.example"), ("x-cluster", "nope")]
        )
        .await
        .status,
        503
    );
    assert_eq!(
        get(
            &c,
            &p.url("main", "/by-header"),
            &[("host", "known.example"), ("x-cluster", "app")]
        )
        .await
        .upstream(),
        "app"
    );
    let d = get(&c, &p.url("main", "/direct"), &h).await;
    assert_eq!((d.status, &d.body[..]), (418, &b"teapot"[..]));
    let r = get(&c, &p.url("main", "/old?a=1"), &h).await;
    assert_eq!(r.status, 302);
    assert_eq!(r.headers["location"], "http://known.example/new?a=1");
    let r = get(&c, &p.url("main", "/secure/x"), &h).await;
    assert_eq!(
        (r.status, r.headers["location"].to_str().unwrap()),
        (301, "https://known.example/secure/x")
    );
    assert_eq!(
        get(&c, &p.url("main", "/?status=503"), &h).await.status,
        503,
        "upstream codes pass through"
    );

    let stats = p.admin("/stats/prometheus").await;
    for needle in [
        "envoy_cluster_upstream_rq_timeout{envoy_cluster_name=\"app\"} 1",
        "response_flags=\"UT\"",
        "response_flags=\"UF\"",
        "response_flags=\"UH\"",
        "destination_service=\"unknown\",destination_service_name=\"unknown\",destination_service_namespace=\"unknown\",destination_version=\"unknown\",destination_workload=\"unknown\",destination_workload_namespace=\"unknown\",reporter=\"source\",request_protocol=\"http\",response_code=\"404\",response_flags=\"NR\"",
        "response_code=\"503\",response_flags=\"NC\"",
        "envoy_http_downstream_rq_xx{envoy_http_conn_manager_prefix=\"ingress_http\",envoy_response_code_class=\"4\"}",
    ] {
        assert!(stats.contains(needle), "missing {needle} in\n{stats}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_downstream_and_h2_upstream() {
    let up = upstream("app").await;
    let rc = routes(json!([
        {"match": {"prefix": "/h2"}, "route": {"cluster": "app_h2"}},
        {"match": {"prefix": "/"}, "route": {"cluster": "app"}}
    ]));
    let p = sluice(&bootstrap(
        rc,
        vec![
            cluster("app", &[up.port()]),
            cluster_h2("app_h2", &[up.port()]),
        ],
        json!({}),
    ))
    .await;
    let c = client_h2();
    let r = get(&c, &p.url("main", "/x"), &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["version"], "HTTP/1.1");
    let r = get(&c, &p.url("main", "/h2/x"), &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["version"], "HTTP/2.0");
    assert!(
        r.json()["host"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{}",
        r.json()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_passes_through_with_trailers() {
    let up = upstream("grpc").await;
    let rc = routes(json!([{"match": {"prefix": "/", "grpc": {}}, "route": {"cluster": "grpc"}}]));
    let p = sluice(&bootstrap(
        rc,
        vec![cluster_h2("grpc", &[up.port()])],
        json!({}),
    ))
    .await;
    let c = client_h2();
    let payload = Bytes::from_static(b"\x00\x00\x00\x00\x05hello");
    let req = Request::post(p.url("main", "/pkg.Service/Method"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(payload.clone()))
        .unwrap();
    let resp = c.request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    use http_body_util::BodyExt;
    let collected = resp.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned().expect("trailers");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(trailers["grpc-message"], "from-grpc");
    assert_eq!(collected.to_bytes(), payload);
    // A non-gRPC request does not match the grpc route.
    assert_eq!(
        get(&c, &p.url("main", "/pkg.Service/Method"), &[])
            .await
            .status,
        404
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrade_is_passed_through() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = upstream("ws").await;
    let rc = routes(json!([{"match": {"prefix": "/"}, "route": {"cluster": "ws"}}]));
    let p = sluice(&bootstrap(
        rc.clone(),
        vec![cluster("ws", &[up.port()])],
        json!({"upgrade_configs": [{"upgrade_type": "websocket"}]}),
    ))
    .await;
    let mut s = tokio::net::TcpStream::connect(p.listener("main"))
        .await
        .unwrap();
    s.write_all(b"GET /chat HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").await.unwrap();
    let mut buf = vec![0u8; 1024];
    let mut head = Vec::new();
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed before the 101");
        head.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&head).to_lowercase();
    assert!(text.starts_with("http/1.1 101"), "{text}");
    assert!(text.contains("upgrade: websocket"), "{text}");
    for msg in [&b"ping-1"[..], b"second message", &[0x81, 0x02, b'h', b'i']] {
        s.write_all(msg).await.unwrap();
        let mut got = vec![0u8; msg.len()];
        s.read_exact(&mut got).await.unwrap();
        assert_eq!(got, msg);
    }
    // Without upgrade_configs the upgrade is refused (as Envoy does).
    let p2 = sluice(&bootstrap(rc, vec![cluster("ws", &[up.port()])], json!({}))).await;
    let r = get(
        &client_h1(),
        &p2.url("main", "/chat"),
        &[("connection", "upgrade"), ("upgrade", "websocket")],
    )
    .await;
    assert_eq!(r.status, 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_100_mib_body_streams_both_ways_in_bounded_memory() {
    use http_body_util::BodyExt;
    let up = upstream("big").await;
    let rc =
        routes(json!([{"match": {"prefix": "/"}, "route": {"cluster": "big", "timeout": "0s"}}]));
    let p = sluice(&bootstrap(
        rc,
        vec![cluster("big", &[up.port()])],
        json!({}),
    ))
    .await;
    let before = p.vm_hwm_kib();
    const SIZE: usize = 100 * 1024 * 1024;
    // Download.
    let c = client_h1();
    let resp = c
        .get(p.url("main", &format!("/dl?bytes={SIZE}")).parse().unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut total = 0usize;
    while let Some(f) = body.frame().await {
        if let Some(d) = f.unwrap().data_ref() {
            total += d.len();
        }
    }
    assert_eq!(total, SIZE);
    // Upload, streamed from a generator.
    let chunk = Bytes::from(vec![b'y'; 256 * 1024]);
    let frames = (0..SIZE / chunk.len())
        .map(move |_| Ok::<_, std::io::Error>(hyper::body::Frame::data(chunk.clone())));
    let stream_body = http_body_util::StreamBody::new(futures_util::stream::iter(frames));
    let uc: hyper_util::client::legacy::Client<_, http_body_util::StreamBody<_>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    let req = Request::post(p.url("main", "/ul"))
        .body(stream_body)
        .unwrap();
    let resp = uc.request(req).await.unwrap();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let j: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(j["body_len"], SIZE);
    let after = p.vm_hwm_kib();
    eprintln!("proxy VmHWM before {before} KiB, after 2 x 100 MiB: {after} KiB");
    assert!(
        after < before + 32 * 1024,
        "proxy memory grew by {} KiB",
        after - before
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hot_reload_under_load_has_zero_failures_and_bad_files_keep_the_last_config() {
    let stable = upstream("v1").await;
    let canary = upstream("v2").await;
    let clusters = vec![
        cluster("stable", &[stable.port()]),
        cluster("canary", &[canary.port()]),
    ];
    let weights = |s: u32, c: u32| {
        bootstrap(
            routes(
                json!([{"match": {"prefix": "/"}, "route": {"weighted_clusters": {"clusters": [
                {"name": "stable", "weight": s}, {"name": "canary", "weight": c}]}}}]),
            ),
            clusters.clone(),
            json!({}),
        )
    };
    let p = sluice(&weights(100, 0)).await;
    let listener = p.url("main", "/");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (url, stop, c) = (listener.clone(), stop.clone(), client_h1());
        load.push(tokio::spawn(async move {
            let (mut ok, mut failed) = (0u64, 0u64);
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            while !stop.load(std::sync::atomic::Ordering::Relaxed)
                && std::time::Instant::now() < deadline
            {
                let req = Request::get(url.as_str())
                    .body(Full::new(Bytes::new()))
                    .unwrap();
                match c.request(req).await {
                    Ok(r) if r.status() == 200 => ok += 1,
                    _ => failed += 1,
                }
            }
            (ok, failed)
        }));
    }
    let pid = p.pid().to_string();
    // Signals sent while a reload runs coalesce, so each edit waits until its reload is counted.
    let wait_for = |needle: String| {
        let p = &p;
        async move {
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while !p.admin("/stats/prometheus").await.contains(&needle) {
                assert!(
                    std::time::Instant::now() < deadline,
                    "timed out waiting for {needle}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    for round in 0..20 {
        let cfg = if round % 2 == 0 {
            weights(0, 100)
        } else {
            weights(100, 0)
        };
        std::fs::write(&p.config_path, cfg).unwrap();
        assert!(std::process::Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap()
            .success());
        wait_for(format!("sluice_config_reload_total {}\n", round + 1)).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A broken file: logged, and the last good config (100 % stable after 20 rounds) keeps serving.
    std::fs::write(&p.config_path, "static_resources: [not, a, bootstrap").unwrap();
    std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap();
    wait_for("sluice_config_reload_failed_total 1\n".to_string()).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut ok, mut failed) = (0, 0);
    for t in load {
        let (o, f) = t.await.unwrap();
        ok += o;
        failed += f;
    }
    eprintln!("reload under load: {ok} ok, {failed} failed over 20 swaps");
    assert_eq!(failed, 0);
    assert!(ok > 100);
    let c = client_h1();
    for _ in 0..20 {
        assert_eq!(get(&c, &p.url("main", "/"), &[]).await.upstream(), "v1");
    }
    let stats = p.admin("/stats/prometheus").await;
    assert!(stats.contains("sluice_config_reload_total 20"), "{stats}");
    assert!(
        stats.contains("sluice_config_reload_failed_total 1"),
        "{stats}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absolute_form_targets_route_by_their_authority() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let a = upstream("a").await;
    let b = upstream("b").await;
    let rc = json!({"virtual_hosts": [
        {"name": "a", "domains": ["a.example"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "a"}}]},
        {"name": "b", "domains": ["b.example"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "b"}}]}
    ]});
    let p = sluice(&bootstrap(
        rc,
        vec![cluster("a", &[a.port()]), cluster("b", &[b.port()])],
        json!({}),
    ))
    .await;
    let mut s = tokio::net::TcpStream::connect(p.listener("main"))
        .await
        .unwrap();
    s.write_all(
        b"GET http://b.example/path HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out);
    assert!(text.contains("x-upstream: b"), "{text}");
    assert!(text.contains("\"path\":\"/path\""), "{text}");
}

#[test]
fn validate_mode_reports_unsupported_fields_with_path_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.yaml");
    std::fs::write(
        &good,
        bootstrap(
            routes(json!([{"match": {"prefix": "/"}, "route": {"cluster": "a"}}])),
            vec![cluster("a", &[1])],
            json!({}),
        ),
    )
    .unwrap();
    let out = std::process::Command::new(sluice_bin())
        .args(["proxy", "--mode", "validate", "-c"])
        .arg(&good)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "static_resources:\n  clusters:\n  - name: a\n    connect_timeout: 1s\n    outlier_detection: {}\n    lb_policy: CLUSTER_PROVIDED\n").unwrap();
    let out = std::process::Command::new(sluice_bin())
        .args(["proxy", "--mode", "validate", "-c"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "bad.yaml:6: static_resources.clusters[0].lb_policy: value CLUSTER_PROVIDED not supported"
        ),
        "{err}"
    );
    let unknown_cluster = dir.path().join("unknown.yaml");
    std::fs::write(
        &unknown_cluster,
        bootstrap(
            routes(json!([{"match": {"prefix": "/"}, "route": {"cluster": "nope"}}])),
            vec![],
            json!({}),
        ),
    )
    .unwrap();
    let out = std::process::Command::new(sluice_bin())
        .args(["proxy", "--mode", "validate", "-c"])
        .arg(&unknown_cluster)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown cluster `nope`"), "{err}");
    assert_eq!(
        err.trim().lines().count(),
        1,
        "one problem, one error:\n{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_connections_are_reused() {
    let (_up, p) = app_proxy(json!({})).await;
    let c = client_h1();
    for i in 0..200 {
        // Bodies of every shape: with content-length, empty, and HEAD.
        let path = match i % 3 {
            0 => "/x",
            1 => "/x?bytes=0",
            _ => "/x?bytes=100000",
        };
        assert_eq!(get(&c, &p.url("main", path), &[]).await.status, 200);
    }
    let head = Request::head(p.url("main", "/h"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(send(&c, head).await.status, 200);
    let clusters = p.admin("/clusters").await;
    let cx_total: u64 = clusters
        .lines()
        .find(|l| l.contains("::cx_total::"))
        .and_then(|l| l.rsplit("::").next())
        .and_then(|v| v.parse().ok())
        .expect("cx_total in /clusters");
    assert!(
        cx_total <= 2,
        "201 sequential requests opened {cx_total} upstream connections:\n{clusters}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn circuit_breakers_queue_then_overflow_with_503_uo() {
    let up = upstream("slow").await;
    let mut conn_limited = cluster("conn_limited", &[up.port()]);
    conn_limited["circuit_breakers"] =
        json!({"thresholds": [{"max_connections": 1, "max_pending_requests": 1}]});
    let mut rq_limited = cluster("rq_limited", &[up.port()]);
    rq_limited["circuit_breakers"] = json!({"thresholds": [{"max_requests": 2}]});
    let rc = routes(json!([
        {"match": {"prefix": "/conn"}, "route": {"cluster": "conn_limited"}},
        {"match": {"prefix": "/rq"}, "route": {"cluster": "rq_limited"}}
    ]));
    let p = sluice(&bootstrap(rc, vec![conn_limited, rq_limited], json!({}))).await;
    for (path, want) in [
        ("/conn?delay_ms=400", vec![200, 200, 503]),
        ("/rq?delay_ms=400", vec![200, 200, 503]),
    ] {
        let mut tasks = Vec::new();
        for i in 0..3u64 {
            let url = p.url("main", path);
            tasks.push(tokio::spawn(async move {
                // Staggered so that the first request holds the connection before the others arrive.
                tokio::time::sleep(Duration::from_millis(50 * i)).await;
                let r = get(&client_h1(), &url, &[]).await;
                (r.status, String::from_utf8_lossy(&r.body).to_string())
            }));
        }
        let mut got = Vec::new();
        for t in tasks {
            got.push(t.await.unwrap());
        }
        let mut codes: Vec<u16> = got.iter().map(|(s, _)| *s).collect();
        codes.sort();
        assert_eq!(codes, want, "{path}: {got:?}");
        let overflow = got.iter().find(|(s, _)| *s == 503).unwrap();
        assert!(
            overflow.1.ends_with("reset reason: overflow"),
            "{overflow:?}"
        );
    }
    let stats = p.admin("/stats/prometheus").await;
    assert!(
        stats.contains(
            "envoy_cluster_upstream_rq_pending_overflow{envoy_cluster_name=\"conn_limited\"} 1"
        ),
        "{stats}"
    );
    assert!(
        stats.contains(
            "envoy_cluster_upstream_rq_pending_overflow{envoy_cluster_name=\"rq_limited\"} 1"
        ),
        "{stats}"
    );
    assert!(stats.contains("response_flags=\"UO\""), "{stats}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_downstream_connections_are_closed_after_idle_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (_up, p) =
        app_proxy(json!({"common_http_protocol_options": {"idle_timeout": "0.3s"}})).await;
    let mut s = tokio::net::TcpStream::connect(p.listener("main"))
        .await
        .unwrap();
    // A request slower than the idle timeout is not cut: the timer counts from the last request.
    s.write_all(b"GET /?delay_ms=500 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).await.unwrap();
    assert!(
        String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
    let started = std::time::Instant::now();
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("connection not closed")
        .unwrap();
    assert_eq!(n, 0, "expected the proxy to close the idle connection");
    let idle = started.elapsed();
    assert!(
        idle >= Duration::from_millis(250) && idle < Duration::from_secs(2),
        "closed after {idle:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_clusters_resolve_names() {
    let up = upstream("dns").await;
    let mut strict = cluster("strict", &[up.port()]);
    strict["type"] = json!("STRICT_DNS");
    strict["dns_lookup_family"] = json!("V4_ONLY");
    strict["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
        ["socket_address"]["address"] = json!("localhost");
    let mut logical = strict.clone();
    logical["name"] = json!("logical");
    logical["type"] = json!("LOGICAL_DNS");
    logical["load_assignment"]["cluster_name"] = json!("logical");
    let rc = routes(json!([
        {"match": {"prefix": "/strict"}, "route": {"cluster": "strict"}},
        {"match": {"prefix": "/logical"}, "route": {"cluster": "logical"}}
    ]));
    let p = sluice(&bootstrap(rc, vec![strict, logical], json!({}))).await;
    let c = client_h1();
    for _ in 0..10 {
        assert_eq!(
            get(&c, &p.url("main", "/strict"), &[]).await.upstream(),
            "dns"
        );
        assert_eq!(
            get(&c, &p.url("main", "/logical"), &[]).await.upstream(),
            "dns"
        );
    }
    let clusters = p.admin("/clusters").await;
    assert!(clusters.contains("strict::127.0.0.1:"), "{clusters}");
    assert!(clusters.contains("::hostname::localhost:"), "{clusters}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loading_memory_is_given_back_when_idle() {
    let (_up, p) = app_proxy(json!({})).await;
    let anon_kib = |pid: u32| -> u64 {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with("RssAnon:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(u64::MAX)
    };
    let peak = p.vm_hwm_kib();
    let idle = anon_kib(p.pid());
    eprintln!("peak RSS {peak} KiB, idle anonymous memory {idle} KiB");
    // Loading decodes the Envoy descriptors (tens of MiB); none of it may stay resident.
    assert!(
        idle < 8 * 1024,
        "idle anonymous memory {idle} KiB (peak {peak} KiB)"
    );
    std::process::Command::new("kill")
        .args(["-HUP", &p.pid().to_string()])
        .status()
        .unwrap();
    // The reload runs on a blocking thread: measure once it has been applied.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !p
        .admin("/stats/prometheus")
        .await
        .contains("sluice_config_reload_total 1\n")
    {
        assert!(std::time::Instant::now() < deadline, "reload not applied");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let after_reload = anon_kib(p.pid());
    assert!(
        after_reload < 8 * 1024,
        "after a reload: {after_reload} KiB"
    );
}

/// The connection manager's path and header rules from Envoy's edge best practices —
/// `normalize_path`, `merge_slashes`, `path_with_escaped_slashes_action`,
/// `headers_with_underscores_action` — and the stream idle timeouts (the connection manager's and
/// a route's), through real Envoy and Sluice: the status, the `location`, and the path and
/// headers the upstream saw must be the same.
async fn edge_rules(kind: &str, app: u16) -> Vec<String> {
    let hcm = |escaped: &str, underscores: &str| {
        json!({
            "normalize_path": true,
            "merge_slashes": true,
            "path_with_escaped_slashes_action": escaped,
            "common_http_protocol_options": {"headers_with_underscores_action": underscores},
            "stream_idle_timeout": "0.4s"
        })
    };
    let rc = routes(json!([
        {"match": {"prefix": "/idle"}, "route": {"cluster": "app", "timeout": "0s", "idle_timeout": "0.3s"}},
        {"match": {"prefix": "/stream"}, "route": {"cluster": "app", "timeout": "5s"}},
        {"match": {"prefix": "/"}, "route": {"cluster": "app"}}
    ]));
    let mut out = Vec::new();
    for (escaped, underscores, cases) in [
        (
            "UNESCAPE_AND_REDIRECT",
            "REJECT_REQUEST",
            &[
                ("/a/./b/../c?q=/../x", None),
                ("//a///c", None),
                ("/a%2Fc%2f", None),
                ("/%7Euser/%41", None),
                ("/ok", Some(("x_under", "1"))),
                ("/idle?delay_ms=1000", None),
                ("/stream?delay_ms=1000", None),
            ][..],
        ),
        (
            "UNESCAPE_AND_FORWARD",
            "DROP_HEADER",
            &[("/a%2fc", None), ("/ok", Some(("x_under", "1")))][..],
        ),
        (
            "REJECT_REQUEST",
            "ALLOW",
            &[("/a%5Cb", None), ("/ok", Some(("x_under", "1")))][..],
        ),
    ] {
        let p = proxy_of(
            kind,
            &bootstrap(
                rc.clone(),
                vec![cluster("app", &[app])],
                hcm(escaped, underscores),
            ),
        )
        .await;
        let c = client_h1();
        for (path, header) in cases {
            let headers: Vec<(&str, &str)> = header.iter().copied().collect();
            let r = get(&c, &p.url("main", path), &headers).await;
            let seen = r.json();
            out.push(format!(
                "{escaped}/{underscores} {path} -> {} {:?} path={} x_under={} body={:?}",
                r.status,
                r.headers.get("location"),
                seen["path"],
                seen["headers"]["x_under"],
                if seen.is_null() {
                    String::from_utf8_lossy(&r.body).to_string()
                } else {
                    String::new()
                }
            ));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_path_rules_and_idle_timeouts_as_envoy() {
    let app = upstream("app").await;
    let envoy = edge_rules("envoy", app.port()).await;
    assert!(envoy[0].contains("path=\"/a/c?q=/../x\""), "{envoy:#?}");
    assert!(
        envoy[5].contains("-> 504") && envoy[5].contains("stream timeout"),
        "{envoy:#?}"
    );
    assert_eq!(edge_rules("sluice", app.port()).await, envoy);
}

/// `auto_host_rewrite`: a request to a STRICT_DNS cluster carries the DNS name of its endpoint
/// as host (and the original in `x-envoy-original-host`); one to a STATIC cluster keeps its host;
/// the same through real Envoy and Sluice.
async fn auto_host(kind: &str, app: u16) -> Vec<String> {
    let mut dns = cluster("dns", &[]);
    dns["type"] = json!("STRICT_DNS");
    dns["dns_lookup_family"] = json!("V4_ONLY");
    dns["load_assignment"]["endpoints"] = json!([{"lb_endpoints": [{"endpoint": {"address": {
        "socket_address": {"address": "localhost", "port_value": app}}}}]}]);
    let rc = routes(json!([
        {"match": {"prefix": "/dns"}, "route": {"cluster": "dns", "auto_host_rewrite": true}},
        {"match": {"prefix": "/"}, "route": {"cluster": "static", "auto_host_rewrite": true}}
    ]));
    let p = proxy_of(
        kind,
        &bootstrap(rc, vec![dns, cluster("static", &[app])], json!({})),
    )
    .await;
    let c = client_h1();
    let mut out = Vec::new();
    for path in ["/dns", "/static"] {
        let r = request(&c, "GET", &p.url("main", path), "front.example.com", &[]).await;
        let seen = r.json();
        out.push(format!(
            "{path} -> {} host={} original={}",
            r.status, seen["host"], seen["headers"]["x-envoy-original-host"]
        ));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_host_rewrite_uses_the_dns_name_as_envoy() {
    let app = upstream("app").await;
    let envoy = auto_host("envoy", app.port()).await;
    assert!(envoy[0].contains("host=\"localhost\""), "{envoy:#?}");
    assert_eq!(auto_host("sluice", app.port()).await, envoy);
}

/// `via` (appended to requests and responses, local answers too),
/// `preserve_external_request_id` and `always_set_request_id_in_response` on an edge connection
/// manager; the same through real Envoy and Sluice.
async fn via_and_request_id(kind: &str, app: u16) -> Vec<String> {
    let rc = routes(json!([{"match": {"prefix": "/app"}, "route": {"cluster": "app"}}]));
    let hcm = json!({"via": "1.1 edge", "use_remote_address": true, "preserve_external_request_id": true,
                     "always_set_request_id_in_response": true});
    let p = proxy_of(kind, &bootstrap(rc, vec![cluster("app", &[app])], hcm)).await;
    let c = client_h1();
    let mut out = Vec::new();
    for (path, headers) in [
        ("/app", &[("x-request-id", "from-client")][..]),
        ("/app", &[("via", "1.0 fred")][..]),
        ("/missing", &[][..]),
    ] {
        let r = get(&c, &p.url("main", path), headers).await;
        let seen = r.json();
        // The response's id is the one the upstream saw (a generated one differs each time).
        let response_id = r.headers.get("x-request-id").and_then(|v| v.to_str().ok());
        let same = seen.is_null() || seen["headers"]["x-request-id"].as_str() == response_id;
        out.push(format!(
            "{path} {headers:?} -> {} via={:?} upstream via={} id={} response id {}",
            r.status,
            r.headers.get("via"),
            seen["headers"]["via"],
            if headers.is_empty() || headers[0].0 != "x-request-id" {
                "-".to_string()
            } else {
                seen["headers"]["x-request-id"].to_string()
            },
            match (response_id.is_some(), same) {
                (true, true) => "matches",
                (true, false) => "differs",
                (false, _) => "missing",
            }
        ));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn via_and_preserved_request_ids_as_envoy() {
    let app = upstream("app").await;
    let envoy = via_and_request_id("envoy", app.port()).await;
    assert!(envoy[0].contains("id=\"from-client\""), "{envoy:#?}");
    assert!(
        envoy.iter().all(|l| l.ends_with("response id matches")),
        "{envoy:#?}"
    );
    assert_eq!(via_and_request_id("sluice", app.port()).await, envoy);
}

/// A gRPC request (h2c, `application/grpc`) answered by the proxy itself gets a gRPC status in a
/// trailers-only response, as from Envoy: no route (404 → 12), no upstream (503 → 14), a route's
/// redirect (keeping its `location`) and a direct response (its body as `grpc-message`).
async fn grpc_local_replies(kind: &str) -> Vec<String> {
    let rc = routes(json!([
        {"match": {"prefix": "/pkg.Svc/Down"}, "route": {"cluster": "down"}},
        {"match": {"prefix": "/pkg.Svc/Moved"}, "redirect": {"path_redirect": "/elsewhere"}},
        {"match": {"prefix": "/pkg.Svc/Direct"}, "direct_response": {"status": 503, "body": {"inline_string": "maintenance 100%"}}}
    ]));
    let p = proxy_of(
        kind,
        &bootstrap(rc, vec![cluster("down", &[closed_port()])], json!({})),
    )
    .await;
    let c = client_h2();
    let mut out = Vec::new();
    for path in [
        "/pkg.Svc/Missing",
        "/pkg.Svc/Down",
        "/pkg.Svc/Moved",
        "/pkg.Svc/Direct",
    ] {
        let req = http::Request::post(p.url("main", path))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(Full::new(Bytes::from_static(b"\0\0\0\0\0")))
            .unwrap();
        let r = send(&c, req).await;
        let h = |n: &str| r.header(n);
        out.push(format!(
            "{path} -> {} ct={} grpc-status={} grpc-message={} location={} body={}",
            r.status,
            h("content-type"),
            h("grpc-status"),
            h("grpc-message"),
            h("location").rsplit('/').next().unwrap_or(""),
            r.body.len()
        ));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_requests_get_local_replies_as_grpc_statuses_as_envoy() {
    let envoy = grpc_local_replies("envoy").await;
    assert!(envoy[0].contains("grpc-status=12"), "{envoy:#?}");
    assert_eq!(grpc_local_replies("sluice").await, envoy);
}
