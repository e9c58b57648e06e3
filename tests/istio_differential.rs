//! Differential: one `sluice control` translating a set of Istio resources that exercise many
//! VirtualService features, served at once to real Envoy 1.40 (gateway on 127.0.0.2) and to
//! `sluice proxy` (gateway on 127.0.0.1). Every request goes through both; status, the upstream
//! reached, the method, path and host it saw, chosen headers, redirect locations, direct
//! response bodies, fault injection (abort and delay) and CORS must be identical.

mod support;

use std::time::Duration;

use serde_json::json;
use support::*;

/// One request: method, host, path and query, extra headers.
type Case = (
    &'static str,
    &'static str,
    &'static str,
    &'static [(&'static str, &'static str)],
);

fn config(v1: u16, v2: u16, gw: u16) -> String {
    render(
        r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: web}
spec:
  hosts: [web]
  ports: [{number: 80, name: http}]
  resolution: STATIC
  endpoints:
  - {address: 127.0.0.1, ports: {http: {{v1}}}, labels: {version: v1}}
  - {address: 127.0.0.1, ports: {http: {{v2}}}, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: web}
spec:
  host: web
  subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw}
spec:
  selector: {istio: ingressgateway}
  servers: [{port: {number: {{gw}}, name: http, protocol: HTTP}, hosts: ["*"]}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: shop}
spec:
  hosts: [shop.example.com]
  gateways: [gw]
  http:
  - name: exact-and-method
    match: [{uri: {exact: /checkout}, method: {exact: POST}}]
    route: [{destination: {host: web, subset: v2}}]
  - name: regex-ignore-case
    match: [{uri: {regex: "/items/[0-9]+"}, ignoreUriCase: true}]
    route: [{destination: {host: web, subset: v2}}]
  - name: query-and-without-headers
    match: [{queryParams: {beta: {exact: "1"}}, withoutHeaders: {x-internal: {}}}]
    route: [{destination: {host: web, subset: v2}}]
  - name: rewrite
    match: [{uri: {prefix: /old/}}]
    rewrite: {uri: /new/, authority: backend.internal}
    route: [{destination: {host: web, subset: v1}}]
  - name: regex-rewrite
    match: [{uri: {prefix: /svc/}}]
    rewrite: {uriRegexRewrite: {match: "^/svc/([^/]+)/(.*)$", rewrite: '/\2/of/\1'}}
    route: [{destination: {host: web, subset: v1}}]
  - name: headers
    match: [{uri: {prefix: /headers}}]
    headers:
      request: {set: {x-set: one}, add: {x-added: two}, remove: [x-drop]}
      response: {set: {x-resp: three}}
    route: [{destination: {host: web, subset: v1}, headers: {request: {set: {x-dest: four}}}}]
  - name: redirect
    match: [{uri: {prefix: /moved}}]
    redirect: {uri: /landing, authority: new.example.com, redirectCode: 308}
  - name: direct
    match: [{uri: {exact: /health}}]
    directResponse: {status: 418, body: {string: "short and stout"}}
  - name: header-prefix
    match: [{headers: {x-user: {prefix: beta-}}}]
    route: [{destination: {host: web, subset: v2}}]
  - name: cors
    match: [{uri: {prefix: /api}}]
    corsPolicy:
      allowOrigins: [{exact: "https://shop.example.com"}, {regex: "https://[a-z]+[.]partner[.]test"}]
      allowMethods: [GET, POST]
      allowHeaders: [x-token]
      exposeHeaders: [x-trace]
      maxAge: 24h
      allowCredentials: true
    route: [{destination: {host: web, subset: v1}}]
  - name: fault-abort
    match: [{uri: {prefix: /ratings}, headers: {end-user: {exact: jason}}}]
    fault: {abort: {httpStatus: 500, percentage: {value: 100}}}
    route: [{destination: {host: web, subset: v1}}]
  - name: fault-delay
    match: [{uri: {prefix: /slow}}]
    fault: {delay: {fixedDelay: 0.2s, percentage: {value: 100}}}
    route: [{destination: {host: web, subset: v2}}]
  - name: default
    route: [{destination: {host: web, subset: v1}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: other}
spec:
  hosts: ["*.internal.example.com"]
  gateways: [gw]
  http:
  - route: [{destination: {host: web, subset: v2}}]
"#,
        &[
            ("v1", v1.to_string()),
            ("v2", v2.to_string()),
            ("gw", gw.to_string()),
        ],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_and_sluice_route_the_same_istio_config_identically() {
    let v1 = upstream("v1").await;
    let v2 = upstream("v2").await;
    let gw = closed_port();
    let control = ControlPlane::start(&[("mesh.yaml", config(v1.port(), v2.port(), gw))]);
    let _gateways = envoy_and_sluice_gateways(&control).await;

    let cases: &[Case] = &[
        ("POST", "shop.example.com", "/checkout", &[]),
        ("GET", "shop.example.com", "/checkout", &[]),
        ("GET", "shop.example.com", "/ITEMS/42", &[]),
        ("GET", "shop.example.com", "/items/abc", &[]),
        ("GET", "shop.example.com", "/x?beta=1", &[]),
        (
            "GET",
            "shop.example.com",
            "/x?beta=1",
            &[("x-internal", "yes")],
        ),
        ("GET", "shop.example.com", "/old/page?q=2", &[]),
        ("GET", "shop.example.com", "/svc/cart/list", &[]),
        (
            "GET",
            "shop.example.com",
            "/headers",
            &[("x-drop", "gone"), ("x-added", "zero")],
        ),
        ("GET", "shop.example.com", "/moved/here", &[]),
        ("GET", "shop.example.com", "/health", &[]),
        ("GET", "shop.example.com", "/", &[("x-user", "beta-anna")]),
        ("GET", "shop.example.com", "/", &[("x-user", "anna")]),
        ("GET", "shop.example.com:80", "/", &[]),
        ("GET", "api.internal.example.com", "/", &[]),
        ("GET", "unknown.example.com", "/", &[]),
        (
            "GET",
            "shop.example.com",
            "/ratings",
            &[("end-user", "jason")],
        ),
        (
            "GET",
            "shop.example.com",
            "/ratings",
            &[("end-user", "mia")],
        ),
        ("GET", "shop.example.com", "/slow", &[]),
        (
            "OPTIONS",
            "shop.example.com",
            "/api/cart",
            &[
                ("origin", "https://shop.example.com"),
                ("access-control-request-method", "POST"),
            ],
        ),
        (
            "GET",
            "shop.example.com",
            "/api/cart",
            &[("origin", "https://eu.partner.test")],
        ),
        (
            "GET",
            "shop.example.com",
            "/api/cart",
            &[("origin", "https://evil.test")],
        ),
    ];
    let client = client_h1();
    let mut mismatches = Vec::new();
    let mut envoy_outcomes = Vec::new();
    for (method, host, path, headers) in cases {
        let mut outcomes = Vec::new();
        for ip in ["127.0.0.2", "127.0.0.1"] {
            let mut b = http::Request::builder()
                .method(*method)
                .uri(format!("http://{ip}:{gw}{path}"))
                .header("host", *host);
            for (k, v) in *headers {
                b = b.header(*k, *v);
            }
            let t = std::time::Instant::now();
            let r = send(
                &client,
                b.body(http_body_util::Full::new(bytes::Bytes::new()))
                    .unwrap(),
            )
            .await;
            // Envoy's timers may fire a little early against a client's clock.
            let delayed = t.elapsed() >= Duration::from_millis(150);
            let seen = r.json();
            let h = |name: &str| {
                r.headers
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string()
            };
            let mut upstream_headers = Vec::new();
            for name in [
                "x-set",
                "x-added",
                "x-drop",
                "x-dest",
                "x-envoy-original-path",
                "x-envoy-original-host",
            ] {
                upstream_headers.push(format!("{name}={}", seen["headers"][name]));
            }
            outcomes.push(json!({
                "status": r.status,
                "upstream": r.upstream(),
                "method": seen["method"],
                "path": seen["path"],
                "host": seen["host"],
                "upstream_headers": upstream_headers,
                "location": h("location"),
                "x-resp": h("x-resp"),
                "body": if seen.is_null() { String::from_utf8_lossy(&r.body).to_string() } else { String::new() },
                "delayed": delayed,
                "cors": r
                    .headers
                    .iter()
                    .filter(|(n, _)| n.as_str().starts_with("access-control-"))
                    .map(|(n, v)| format!("{n}={}", v.to_str().unwrap_or("?")))
                    .collect::<Vec<_>>(),
            }));
        }
        envoy_outcomes.push(outcomes[0].clone());
        if outcomes[0] != outcomes[1] {
            mismatches.push(format!(
                "{method} {host}{path} {headers:?}\n  envoy:  {}\n  sluice: {}",
                outcomes[0], outcomes[1]
            ));
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} of {} requests differ:\n{}",
        mismatches.len(),
        cases.len(),
        mismatches.join("\n")
    );
    // And what Istio means, for the cases where a translation could go wrong.
    let expect: &[(usize, &str, &str)] = &[
        (0, "upstream", "v2"), // exact path and method
        (1, "upstream", "v1"), // method differs
        (2, "upstream", "v2"), // regex with ignoreUriCase
        (3, "upstream", "v1"), // regex not matched
        (4, "upstream", "v2"), // query parameter
        (5, "upstream", "v1"), // withoutHeaders excludes it
        (6, "path", "/new/page?q=2"),
        (6, "host", "backend.internal"),
        (7, "path", "/list/of/cart"),
        (9, "location", "http://new.example.com/landing"),
        (10, "body", "short and stout"),
        (11, "upstream", "v2"),             // header prefix
        (14, "upstream", "v2"),             // wildcard host
        (16, "body", "fault filter abort"), // Istio fault abort for end-user jason
        (17, "upstream", "v1"),
        (18, "upstream", "v2"), // after the fault delay
        (20, "upstream", "v1"), // a CORS request goes upstream
    ];
    for (i, field, want) in expect {
        let got = &envoy_outcomes[*i][*field];
        assert_eq!(
            got.as_str(),
            Some(*want),
            "case {i} ({:?}) {field}: {got}",
            cases[*i]
        );
    }
    assert_eq!(envoy_outcomes[10]["status"], 418);
    assert_eq!(envoy_outcomes[16]["status"], 500);
    assert_eq!(envoy_outcomes[18]["delayed"], true);
    assert_eq!(envoy_outcomes[17]["delayed"], false);
    // The preflight is answered by the proxy, with the policy Istio wrote.
    assert_eq!(envoy_outcomes[19]["upstream"], "-");
    let cors = envoy_outcomes[19]["cors"].to_string();
    for want in [
        "access-control-allow-methods=GET,POST",
        "access-control-max-age=86400",
        "access-control-allow-credentials=true",
    ] {
        assert!(cors.contains(want), "{cors}");
    }
    assert!(envoy_outcomes[20]["cors"]
        .to_string()
        .contains("access-control-allow-origin=https://eu.partner.test"));
    assert_eq!(envoy_outcomes[21]["cors"], json!([]));
    assert_eq!(envoy_outcomes[9]["status"], 308);
}
