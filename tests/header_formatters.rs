//! `%REQ(...)%` in `request_headers_to_add` and `response_headers_to_add`, through real Envoy
//! 1.40 and through `sluice proxy` on the same bootstrap: the header, its alternative, a length
//! limit, a missing header, text around it; in responses, the request as sent upstream (with the
//! route's own additions and the request id), on a direct response and at virtual-host level.

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

fn response_config(app: u16) -> String {
    let add = |k: &str, v: &str| json!({"header": {"key": k, "value": v}});
    let mut vhost_routes = routes(json!([
        {
            "match": {"prefix": "/direct"},
            "direct_response": {"status": 200, "body": {"inline_string": "here"}},
            "response_headers_to_add": [add("x-echo", "%REQ(x-src)%")]
        },
        {
            "match": {"prefix": "/"},
            "route": {"cluster": "app"},
            "request_headers_to_add": [add("x-by-route", "route-%REQ(x-src)%")],
            "response_headers_to_add": [
                add("x-echo", "%REQ(x-src)%"),
                add("x-request-id-seen", "%REQ(x-request-id)%"),
                add("x-by-route-seen", "%REQ(x-by-route)%"),
                add("x-none", "%REQ(x-missing)%")
            ]
        }
    ]));
    vhost_routes["virtual_hosts"][0]["response_headers_to_add"] =
        json!([add("x-vhost", "%REQ(x-src):2%")]);
    bootstrap(vhost_routes, vec![cluster("app", &[app])], json!({}))
}

/// Response headers that read the request: (path, header, value), with the request id replaced
/// by whether it is the one the upstream saw.
async fn response_seen(kind: &str, app: u16) -> Vec<(String, String, Option<String>)> {
    let p = proxy_of(kind, &response_config(app)).await;
    let mut out = Vec::new();
    for path in ["/", "/direct"] {
        let r = get(&client_h1(), &p.url("main", path), &[("x-src", "hello")]).await;
        assert_eq!(r.status, 200, "{kind} {path}");
        for h in [
            "x-echo",
            "x-request-id-seen",
            "x-by-route-seen",
            "x-none",
            "x-vhost",
        ] {
            let mut v = r
                .headers
                .get(h)
                .map(|v| v.to_str().unwrap_or("?").to_string());
            if h == "x-request-id-seen" {
                v = v.map(|id| (Some(id) == r.seen("x-request-id")).to_string());
            }
            out.push((path.to_string(), h.to_string(), v));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_header_variables_in_response_headers_as_envoy() {
    let app = upstream("app").await;
    let envoy = response_seen("envoy", app.port()).await;
    let some = |p: &str, h: &str, v: &str| (p.to_string(), h.to_string(), Some(v.to_string()));
    assert!(envoy.contains(&some("/", "x-echo", "hello")), "{envoy:?}");
    assert!(
        envoy.contains(&some("/", "x-request-id-seen", "true")),
        "{envoy:?}"
    );
    assert!(
        envoy.contains(&some("/", "x-by-route-seen", "route-hello")),
        "{envoy:?}"
    );
    assert!(
        envoy.contains(&some("/direct", "x-echo", "hello")),
        "{envoy:?}"
    );
    let sluice = response_seen("sluice", app.port()).await;
    assert_eq!(sluice, envoy);
}
