//! The CORS filter (`envoy.filters.http.cors`) through real Envoy 1.40 and through `sluice proxy`
//! on the same bootstrap: preflights answered, simple requests given their headers, origins not
//! allowed left alone (their preflights forwarded, or answered without an origin when
//! `forward_not_matching_preflights` is false), route policies overriding the virtual host's
//! setting by setting, `*` for methods, and a policy switched off with `filter_enabled`.

mod support;

use serde_json::{json, Value};
use support::*;

fn policy(extra: Value) -> Value {
    let mut p = extra;
    p["@type"] = json!("type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy");
    json!({"envoy.filters.http.cors": p})
}

fn config(app: u16) -> String {
    let route = |prefix: &str, per_filter: Option<Value>| {
        let mut r = json!({"match": {"prefix": prefix}, "route": {"cluster": "app"}});
        if let Some(f) = per_filter {
            r["typed_per_filter_config"] = f;
        }
        r
    };
    let vhost_policy = policy(json!({
        "allow_origin_string_match": [
            {"exact": "https://app.example.com"},
            {"safe_regex": {"regex": "https://[a-z]+\\.example\\.org"}}
        ],
        "allow_methods": "GET,POST",
        "allow_headers": "x-custom",
        "expose_headers": "x-trace",
        "max_age": "600",
        "allow_credentials": true
    }));
    let mut rc = routes(json!([
        route(
            "/disabled",
            Some(policy(
                json!({"filter_enabled": {"default_value": {"numerator": 0, "denominator": "HUNDRED"}}})
            ))
        ),
        route(
            "/restricted",
            Some(policy(json!({
            "allow_origin_string_match": [{"suffix": ".internal.test"}],
            "allow_methods": "*"})))
        ),
        route(
            "/strict",
            Some(policy(json!({"forward_not_matching_preflights": false})))
        ),
        route(
            "/any",
            Some(policy(
                json!({"allow_origin_string_match": [{"exact": "*"}]})
            ))
        ),
        route("/", None),
    ]));
    rc["virtual_hosts"][0]["typed_per_filter_config"] = vhost_policy;
    bootstrap(
        rc,
        vec![cluster("app", &[app])],
        json!({"http_filters": [
            {"name": "envoy.filters.http.cors",
             "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors"}},
            {"name": "envoy.filters.http.router",
             "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}
        ]}),
    )
}

type Case = (
    &'static str,
    &'static str,
    Vec<(&'static str, &'static str)>,
);

fn cases() -> Vec<Case> {
    let pre = |origin, method| {
        vec![
            ("origin", origin),
            ("access-control-request-method", method),
            ("access-control-request-headers", "x-custom"),
        ]
    };
    vec![
        ("OPTIONS", "/open", pre("https://app.example.com", "POST")),
        ("GET", "/open", vec![("origin", "https://app.example.com")]),
        ("GET", "/open", vec![("origin", "https://shop.example.org")]),
        ("GET", "/open", vec![("origin", "https://evil.test")]),
        ("OPTIONS", "/open", pre("https://evil.test", "POST")),
        ("GET", "/open", vec![]),
        (
            "OPTIONS",
            "/disabled",
            pre("https://app.example.com", "GET"),
        ),
        (
            "OPTIONS",
            "/restricted",
            pre("https://a.internal.test", "PATCH"),
        ),
        (
            "GET",
            "/restricted",
            vec![("origin", "https://app.example.com")],
        ),
        ("OPTIONS", "/strict", pre("https://evil.test", "GET")),
        ("OPTIONS", "/strict", pre("https://app.example.com", "GET")),
        ("GET", "/any", vec![("origin", "https://whoever.test")]),
    ]
}

async fn answers(p: &ProxyProcess) -> Vec<Value> {
    let client = client_h1();
    let mut out = Vec::new();
    for (method, path, headers) in cases() {
        let mut b = http::Request::builder()
            .method(method)
            .uri(p.url("main", path));
        for (k, v) in &headers {
            b = b.header(*k, *v);
        }
        let r = send(
            &client,
            b.body(http_body_util::Full::new(bytes::Bytes::new()))
                .unwrap(),
        )
        .await;
        let mut seen = serde_json::Map::new();
        for (name, value) in r.headers.iter() {
            if name.as_str().starts_with("access-control-") || name == "x-upstream" {
                seen.insert(name.to_string(), json!(value.to_str().unwrap_or("?")));
            }
        }
        if r.headers.get("x-upstream").is_none() {
            seen.insert(
                "content-length".into(),
                json!(r
                    .headers
                    .get("content-length")
                    .and_then(|v| v.to_str().ok())),
            );
        }
        out.push(json!({"request": format!("{method} {path} {headers:?}"), "status": r.status, "headers": seen}));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_answers_as_envoy_does() {
    let app = upstream("app").await;
    let config = config(app.port());
    let envoy = envoy(&config).await;
    let sluice = sluice(&config).await;
    let want = answers(&envoy).await;
    let got = answers(&sluice).await;
    for (e, s) in want.iter().zip(&got) {
        assert_eq!(e, s, "envoy (left) and sluice (right) differ");
    }
    // The answers are CORS at work, not both proxies ignoring it.
    let h = |i: usize, name: &str| got[i]["headers"][name].as_str().map(str::to_string);
    assert_eq!(
        h(0, "access-control-allow-methods").as_deref(),
        Some("GET,POST")
    );
    assert_eq!(h(0, "x-upstream"), None, "preflight answered by the proxy");
    assert_eq!(
        h(1, "access-control-expose-headers").as_deref(),
        Some("x-trace")
    );
    assert_eq!(
        h(3, "access-control-allow-origin"),
        None,
        "origin not allowed"
    );
    assert_eq!(
        h(4, "x-upstream").as_deref(),
        Some("app"),
        "preflight forwarded"
    );
    assert_eq!(
        h(7, "access-control-allow-methods").as_deref(),
        Some("PATCH")
    );
    assert_eq!(h(9, "access-control-allow-origin"), None);
    assert_eq!(h(9, "x-upstream"), None, "not forwarded");
    assert_eq!(
        h(11, "access-control-allow-origin").as_deref(),
        Some("https://whoever.test")
    );
}
