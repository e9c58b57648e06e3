//! `%REQ(...)%` in `request_headers_to_add`, through real Envoy 1.40 and through `sluice proxy`
//! on the same bootstrap: the header, its alternative, a length limit, a missing header, and
//! text around it.

mod support;

use serde_json::json;
use support::*;

fn config(app: u16) -> String {
    let add = |k: &str, v: &str| json!({"header": {"key": k, "value": v}});
    bootstrap(
        routes(json!([{
            "match": {"prefix": "/"},
            "route": {"cluster": "app"},
            "request_headers_to_add": [
                add("x-copy", "%REQ(x-src)%"),
                add("x-alt", "%REQ(x-missing?X-Src)%"),
                add("x-cut", "%REQ(x-src):3%"),
                add("x-none", "%REQ(x-missing)%"),
                add("x-mixed", "v=%REQ(x-src)%;")
            ]
        }])),
        vec![cluster("app", &[app])],
        json!({}),
    )
}

async fn seen(kind: &str, app: u16) -> Vec<(String, Option<String>)> {
    let p = proxy_of(kind, &config(app)).await;
    let r = get(&client_h1(), &p.url("main", "/"), &[("x-src", "hello")]).await;
    assert_eq!(r.status, 200, "{kind}");
    ["x-copy", "x-alt", "x-cut", "x-none", "x-mixed"]
        .into_iter()
        .map(|h| (h.to_string(), r.seen(h)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_header_variables_as_envoy() {
    let app = upstream("app").await;
    let envoy = seen("envoy", app.port()).await;
    let want: Vec<(String, Option<String>)> = [
        ("x-copy", Some("hello")),
        ("x-alt", Some("hello")),
        ("x-cut", Some("hel")),
        ("x-none", None),
        ("x-mixed", Some("v=hello;")),
    ]
    .into_iter()
    .map(|(h, v)| (h.to_string(), v.map(str::to_string)))
    .collect();
    assert_eq!(envoy, want, "envoy");
    let sluice = seen("sluice", app.port()).await;
    assert_eq!(sluice, envoy);
}
