//! The CSRF filter through real Envoy 1.40 and through `sluice proxy` on the same bootstrap:
//! mutating requests from their own origin (by `origin` or `referer`), from another, from none;
//! safe methods; per-route shadow mode, `additional_origins` and a route where the filter is
//! off; a refusal on a route whose CORS policy allows the origin. Every answer and every
//! `envoy_http_csrf_*` statistic must be the same.

mod support;

use serde_json::{json, Value};
use support::*;

const CSRF: &str = "type.googleapis.com/envoy.extensions.filters.http.csrf.v3.CsrfPolicy";

fn policy(enabled: u32, extra: Value) -> Value {
    let mut p = json!({"@type": CSRF, "filter_enabled": {"default_value": {"numerator": enabled, "denominator": "HUNDRED"}}});
    for (k, v) in extra.as_object().cloned().unwrap_or_default() {
        p[k] = v;
    }
    p
}

fn config(app: u16) -> String {
    let route = |prefix: &str, per_filter: Value| {
        let mut r = json!({"match": {"prefix": prefix}, "route": {"cluster": "app"}});
        if !per_filter.is_null() {
            r["typed_per_filter_config"] = per_filter;
        }
        r
    };
    bootstrap(
        routes(json!([
            route(
                "/shadow",
                json!({"envoy.filters.http.csrf": policy(0, json!({
                    "shadow_enabled": {"default_value": {"numerator": 100, "denominator": "HUNDRED"}}
                }))})
            ),
            route(
                "/additional",
                json!({"envoy.filters.http.csrf": policy(100, json!({
                    "additional_origins": [{"suffix": ".partner.test"}]
                }))})
            ),
            route(
                "/off",
                json!({"envoy.filters.http.csrf": policy(0, json!({}))})
            ),
            route(
                "/cors",
                json!({"envoy.filters.http.cors": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy",
                    "allow_origin_string_match": [{"exact": "https://evil.test"}]
                }})
            ),
            route("/", Value::Null)
        ])),
        vec![cluster("app", &[app])],
        json!({"http_filters": [
            {"name": "envoy.filters.http.cors", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors"}},
            {"name": "envoy.filters.http.csrf", "typed_config": policy(100, json!({}))},
            {"name": "envoy.filters.http.router", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}
        ]}),
    )
}

/// Method, host, path, extra headers.
type Case = (
    &'static str,
    &'static str,
    &'static str,
    &'static [(&'static str, &'static str)],
);

const CASES: &[Case] = &[
    ("POST", "a.test", "/", &[("origin", "http://a.test")]),
    ("POST", "a.test", "/", &[("origin", "https://evil.test")]),
    ("POST", "a.test", "/", &[]),
    (
        "POST",
        "a.test",
        "/",
        &[("referer", "http://a.test/page?x=1")],
    ),
    ("POST", "a.test", "/", &[("referer", "https://evil.test/")]),
    ("GET", "a.test", "/", &[("origin", "https://evil.test")]),
    ("PATCH", "a.test", "/", &[("origin", "https://evil.test")]),
    (
        "PUT",
        "a.test",
        "/shadow",
        &[("origin", "https://evil.test")],
    ),
    (
        "DELETE",
        "a.test",
        "/additional",
        &[("origin", "https://x.partner.test")],
    ),
    (
        "DELETE",
        "a.test",
        "/additional",
        &[("origin", "https://evil.test")],
    ),
    ("POST", "a.test", "/off", &[("origin", "https://evil.test")]),
    (
        "POST",
        "a.test",
        "/cors",
        &[("origin", "https://evil.test")],
    ),
    (
        "POST",
        "a.test:8080",
        "/",
        &[("origin", "http://a.test:8080")],
    ),
    ("POST", "a.test", "/", &[("origin", "null")]),
];

async fn check(kind: &str, app: u16) -> (Vec<String>, Vec<String>) {
    let p = proxy_of(kind, &config(app)).await;
    let client = client_h1();
    let mut out = Vec::new();
    for (method, host, path, headers) in CASES {
        let r = request(&client, method, &p.url("main", path), host, headers).await;
        let acao = r
            .headers
            .get("access-control-allow-origin")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_string();
        let what = if r.upstream() == "-" {
            format!("{:?}", String::from_utf8_lossy(&r.body))
        } else {
            r.upstream()
        };
        out.push(format!(
            "{method} {host}{path} {headers:?} -> {} {what} acao={acao}",
            r.status
        ));
    }
    (out, p.stats("envoy_http_csrf").await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csrf_decides_as_envoy() {
    let app = upstream("app").await;
    let (envoy, envoy_stats) = check("envoy", app.port()).await;
    let status = |i: usize| {
        envoy[i]
            .split(" -> ")
            .nth(1)
            .unwrap_or("")
            .get(..3)
            .unwrap_or("")
            .to_string()
    };
    let codes: Vec<String> = (0..CASES.len()).map(status).collect();
    assert_eq!(
        codes,
        [
            "200", "403", "403", "200", "403", "200", "403", "200", "200", "403", "200", "403",
            "200", "403"
        ],
        "{envoy:#?}"
    );
    assert!(envoy[1].contains("\"Invalid origin\""), "{envoy:#?}");
    let (sluice, sluice_stats) = check("sluice", app.port()).await;
    assert_eq!(sluice, envoy);
    assert_eq!(sluice_stats, envoy_stats, "statistics");
}
