//! Differential tests: the same bootstrap and the same requests through real Envoy 1.40 and
//! through `sluice proxy`. Every deterministic decision must be identical: status, upstream reached,
//! method/path/host/headers seen by the upstream, response headers, local reply bodies. Weighted
//! routes must agree in distribution.

mod support;

use std::collections::BTreeMap;

use serde_json::{json, Value};
use support::*;

struct Req {
    method: &'static str,
    path: String,
    headers: Vec<(String, String)>,
}

fn r(path: &str) -> Req {
    Req {
        method: "GET",
        path: path.into(),
        headers: vec![],
    }
}
fn rh(path: &str, headers: &[(&str, &str)]) -> Req {
    Req {
        method: "GET",
        path: path.into(),
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}
fn rm(method: &'static str, path: &str, headers: &[(&str, &str)]) -> Req {
    Req {
        method,
        ..rh(path, headers)
    }
}

/// Response headers that legitimately differ between runs or implementations.
const VOLATILE_RESPONSE: &[&str] = &["date", "x-envoy-upstream-service-time", "x-request-id"];

fn normalise(reply: &Reply, listener: &str) -> Value {
    let mut resp_headers = BTreeMap::new();
    for name in reply.headers.keys() {
        if VOLATILE_RESPONSE.contains(&name.as_str()) {
            continue;
        }
        let v: Vec<&str> = reply
            .headers
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap_or("?"))
            .collect();
        resp_headers.insert(
            name.as_str().to_string(),
            v.join(",").replace(listener, "<listener>"),
        );
    }
    let upstream = reply.headers.get("x-upstream").is_some();
    let mut out = json!({"status": reply.status, "response_headers": resp_headers});
    if upstream {
        resp_headers.remove("content-length");
        let text = String::from_utf8_lossy(&reply.body).replace(listener, "<listener>");
        let mut seen: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if let Some(h) = seen["headers"].as_object_mut() {
            if let Some(id) = h.get_mut("x-request-id") {
                *id = json!(if id.as_str().is_some_and(|s| s.len() == 36) {
                    "<uuid>"
                } else {
                    "<other>"
                });
            }
        }
        out["upstream_saw"] = seen;
    } else if reply.status == 503 && reply.body.starts_with(b"upstream connect error") {
        // The connect-failure text carries OS-specific detail in Envoy.
        out["body"] = json!("upstream connect error...");
    } else {
        out["body"] = json!(String::from_utf8_lossy(&reply.body));
    }
    out
}

async fn run(p: &ProxyProcess, req: &Req) -> Value {
    let client = client_h1();
    let mut b = http::Request::builder()
        .method(req.method)
        .uri(p.url("main", &req.path));
    for (k, v) in &req.headers {
        b = b.header(k.as_str(), v.as_str());
    }
    let reply = send(
        &client,
        b.body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap(),
    )
    .await;
    normalise(&reply, &p.listener("main").to_string())
}

/// Run every request through both proxies; return the number compared and the mismatches.
async fn compare(name: &str, config: &str, reqs: &[Req]) -> (usize, Vec<String>) {
    let envoy = envoy(config).await;
    let sluice = sluice(config).await;
    let mut mismatches = Vec::new();
    for req in reqs {
        let e = run(&envoy, req).await;
        let s = run(&sluice, req).await;
        if e != s {
            mismatches.push(format!(
                "[{name}] {} {} {:?}\n  envoy:  {e}\n  sluice: {s}",
                req.method, req.path, req.headers
            ));
        }
    }
    (reqs.len(), mismatches)
}

fn echo_routes(routes_json: Value) -> Value {
    routes(routes_json)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deterministic_decisions_match_envoy() {
    let a = upstream("a").await;
    let b = upstream("b").await;
    let c = upstream("c").await;
    let dead = closed_port();
    let clusters = || {
        vec![
            cluster("a", &[a.port()]),
            cluster("b", &[b.port()]),
            cluster("c", &[c.port()]),
            cluster("dead", &[dead]),
            {
                let mut e = cluster("empty", &[]);
                e["load_assignment"]["endpoints"] = json!([]);
                e
            },
        ]
    };
    let mut cases: Vec<(&str, String, Vec<Req>)> = Vec::new();

    // 1. Path matching.
    cases.push((
        "paths",
        bootstrap(
            echo_routes(json!([
                {"match": {"path": "/exact"}, "route": {"cluster": "a"}},
                {"match": {"prefix": "/CaseLess", "case_sensitive": false}, "route": {"cluster": "b"}},
                {"match": {"safe_regex": {"regex": "/items/[0-9]+"}}, "route": {"cluster": "c"}},
                {"match": {"path_separated_prefix": "/sep"}, "route": {"cluster": "b"}},
                {"match": {"prefix": "/api"}, "route": {"cluster": "c"}},
                {"match": {"prefix": "/"}, "route": {"cluster": "a"}}
            ])),
            clusters(),
            json!({}),
        ),
        ["/exact", "/exact/", "/exact?x=1", "/caseless/x", "/CASELESS", "/items/42", "/items/42/x", "/items/x",
         "/sep", "/sep/", "/sep/x", "/separate", "/sep?q=1", "/api", "/apis", "/api/v1?q=a%20b", "/", "/other"]
            .iter().map(|p| r(p)).collect(),
    ));

    // 2. Virtual host precedence and host ports.
    let vh = |name: &str, domains: Value, cl: &str| {
        json!({"name": name, "domains": domains,
        "routes": [{"match": {"prefix": "/"}, "route": {"cluster": cl},
                    "response_headers_to_add": [{"header": {"key": "x-vhost", "value": name}}]}]})
    };
    let hosts_rc = json!({"virtual_hosts": [
        vh("exact", json!(["www.example.com", "api.example.com:8080"]), "a"),
        vh("suffix", json!(["*.example.com"]), "b"),
        vh("longsuffix", json!(["*.api.example.com"]), "c"),
        vh("prefix", json!(["foo.*"]), "a"),
        vh("any", json!(["*"]), "c")
    ]});
    let hosts: Vec<Req> = [
        "www.example.com",
        "WWW.Example.COM",
        "x.example.com",
        "x.api.example.com",
        "example.com",
        "foo.bar",
        "foo.example.com",
        "api.example.com:8080",
        "api.example.com:9090",
        "www.example.com:80",
        "unknown",
        "foo.",
    ]
    .iter()
    .map(|h| rh("/", &[("host", h)]))
    .collect();
    cases.push((
        "hosts",
        bootstrap(hosts_rc.clone(), clusters(), json!({})),
        hosts,
    ));
    let hosts_stripped: Vec<Req> = [
        "www.example.com:1234",
        "api.example.com:8080",
        "x.example.com:99",
    ]
    .iter()
    .map(|h| rh("/", &[("host", h)]))
    .collect();
    cases.push((
        "hosts-strip-any-port",
        bootstrap(hosts_rc, clusters(), json!({"strip_any_host_port": true})),
        hosts_stripped,
    ));

    // 3. Header matchers.
    let hm = |m: Value, cl: &str| {
        json!({"match": {"prefix": "/", "headers": [m]}, "route": {"cluster": cl},
        "response_headers_to_add": [{"header": {"key": "x-rule", "value": m.to_string().replace('"', "'")}}]})
    };
    cases.push((
        "headers",
        bootstrap(
            echo_routes(json!([
                hm(json!({"name": "x-exact", "string_match": {"exact": "yes"}}), "a"),
                hm(json!({"name": "x-ic", "string_match": {"exact": "Yes", "ignore_case": true}}), "b"),
                hm(json!({"name": "x-prefix", "string_match": {"prefix": "pre"}}), "c"),
                hm(json!({"name": "x-suffix", "string_match": {"suffix": "fix"}}), "a"),
                hm(json!({"name": "x-contains", "string_match": {"contains": "mid"}}), "b"),
                hm(json!({"name": "x-regex", "string_match": {"safe_regex": {"regex": "v[0-9]+"}}}), "c"),
                hm(json!({"name": "x-legacy", "exact_match": "old"}), "a"),
                hm(json!({"name": "x-present", "present_match": true}), "b"),
                hm(json!({"name": "x-inv", "string_match": {"exact": "no"}, "invert_match": true}), "c"),
                hm(json!({"name": "x-empty", "string_match": {"exact": ""}, "treat_missing_header_as_empty": true}), "a"),
                hm(json!({"name": ":method", "string_match": {"exact": "DELETE"}}), "b"),
                hm(json!({"name": ":path", "string_match": {"prefix": "/pp"}}), "c"),
                {"match": {"prefix": "/"}, "route": {"cluster": "empty"}}
            ])),
            clusters(),
            json!({}),
        ),
        vec![
            rh("/", &[("x-exact", "yes")]), rh("/", &[("x-exact", "Yes")]), rh("/", &[("x-ic", "YES")]),
            rh("/", &[("x-prefix", "prefix")]), rh("/", &[("x-prefix", "xpre")]), rh("/", &[("x-suffix", "suffix")]),
            rh("/", &[("x-contains", "amidst")]), rh("/", &[("x-regex", "v12")]), rh("/", &[("x-regex", "v12x")]),
            rh("/", &[("x-legacy", "old")]), rh("/", &[("x-present", "")]), rh("/", &[("x-inv", "yes")]),
            rh("/", &[("x-inv", "no")]), rh("/", &[("x-empty", "")]), rh("/x", &[]), rm("DELETE", "/", &[]),
            rh("/pp/x", &[]), rh("/", &[("x-exact", "yes"), ("x-inv", "no")]), rh("/", &[("x-regex", "v1"), ("x-regex", "v2")]),
        ],
    ));

    // 4. Query parameters and cookies (Istio style: regex on the cookie header).
    cases.push((
        "query-cookie",
        bootstrap(
            echo_routes(json!([
                {"match": {"prefix": "/", "query_parameters": [{"name": "lane", "string_match": {"exact": "canary"}}]}, "route": {"cluster": "b"}},
                {"match": {"prefix": "/", "query_parameters": [{"name": "debug", "present_match": true}]}, "route": {"cluster": "c"}},
                {"match": {"prefix": "/", "query_parameters": [{"name": "v", "string_match": {"safe_regex": {"regex": "[0-9]+"}}}]}, "route": {"cluster": "b"}},
                {"match": {"prefix": "/", "headers": [{"name": "cookie", "string_match": {"safe_regex": {"regex": "^(.*?;)?(user=jason)(;.*)?$"}}}]}, "route": {"cluster": "c"}},
                {"match": {"prefix": "/"}, "route": {"cluster": "a"}}
            ])),
            clusters(),
            json!({}),
        ),
        vec![
            r("/?lane=canary"), r("/?a=1&lane=canary"), r("/?lane=stable"), r("/?lane=canary2"), r("/?debug"),
            r("/?debug=1"), r("/?debugx=1"), r("/?v=123"), r("/?v=12a"), rh("/", &[("cookie", "user=jason")]),
            rh("/", &[("cookie", "a=1; user=jason")]), rh("/", &[("cookie", "a=1;user=jason;b=2")]),
            rh("/", &[("cookie", "user=jasonx")]), r("/"),
        ],
    ));

    // 5. Rewrites.
    cases.push((
        "rewrites",
        bootstrap(
            echo_routes(json!([
                {"match": {"prefix": "/api/"}, "route": {"cluster": "a", "prefix_rewrite": "/v1/"}},
                {"match": {"prefix": "/strip"}, "route": {"cluster": "a", "prefix_rewrite": "/"}},
                {"match": {"prefix": "/bare"}, "route": {"cluster": "a", "prefix_rewrite": "/x"}},
                {"match": {"safe_regex": {"regex": "/service/[^/]+/.*"}}, "route": {"cluster": "b",
                    "regex_rewrite": {"pattern": {"regex": "^/service/([^/]+)(/.*)$"}, "substitution": "\\2/instance/\\1"}}},
                {"match": {"prefix": "/host"}, "route": {"cluster": "c", "host_rewrite_literal": "backend.internal"}},
                {"match": {"prefix": "/"}, "route": {"cluster": "a"}}
            ])),
            clusters(),
            json!({}),
        ),
        ["/api/users", "/api/users?id=1", "/api/", "/strip", "/strip/", "/strip/a/b?x", "/stripper", "/bare", "/bare/y",
         "/service/foo/v1/x", "/service/foo/v1/x?q=2", "/host/x", "/plain?a=b"]
            .iter().map(|p| r(p)).collect(),
    ));

    // 6. Header additions/removals at every level.
    let add = |k: &str, v: &str, action: &str| json!({"header": {"key": k, "value": v}, "append_action": action});
    cases.push((
        "header-ops",
        bootstrap(
            json!({
                "name": "local",
                "request_headers_to_add": [add("x-level", "config", "APPEND_IF_EXISTS_OR_ADD"), add("x-ow", "config", "OVERWRITE_IF_EXISTS_OR_ADD")],
                "response_headers_to_add": [add("x-resp", "config", "APPEND_IF_EXISTS_OR_ADD")],
                "request_headers_to_remove": ["x-remove-config"],
                "virtual_hosts": [{
                    "name": "all", "domains": ["*"],
                    "request_headers_to_add": [add("x-level", "vhost", "APPEND_IF_EXISTS_OR_ADD"), add("x-ow", "vhost", "OVERWRITE_IF_EXISTS_OR_ADD")],
                    "response_headers_to_add": [add("x-resp", "vhost", "APPEND_IF_EXISTS_OR_ADD")],
                    "response_headers_to_remove": ["x-upstream-drop"],
                    "routes": [
                        {"match": {"prefix": "/w"}, "route": {"weighted_clusters": {"clusters": [
                            {"name": "b", "weight": 1,
                             "request_headers_to_add": [add("x-level", "cluster", "APPEND_IF_EXISTS_OR_ADD")],
                             "request_headers_to_remove": ["x-remove-cluster"],
                             "response_headers_to_add": [add("x-resp", "cluster", "APPEND_IF_EXISTS_OR_ADD")]}]}}},
                        {"match": {"prefix": "/"}, "route": {"cluster": "a"},
                         "request_headers_to_add": [
                            add("x-level", "route", "APPEND_IF_EXISTS_OR_ADD"),
                            add("x-absent", "route", "ADD_IF_ABSENT"),
                            add("x-only-existing", "route", "OVERWRITE_IF_EXISTS"),
                            add("x-ow", "route", "OVERWRITE_IF_EXISTS_OR_ADD"),
                            {"header": {"key": "x-legacy-append-false", "value": "route"}, "append": false},
                            {"header": {"key": "x-empty", "value": ""}},
                            {"header": {"key": "x-empty-kept", "value": ""}, "keep_empty_value": true},
                            {"header": {"key": "x-proto", "value": "%PROTOCOL%"}},
                            {"header": {"key": "x-pct", "value": "100%%"}}],
                         "request_headers_to_remove": ["x-remove-route"],
                         "response_headers_to_add": [add("x-resp", "route", "APPEND_IF_EXISTS_OR_ADD"), add("content-type", "text/x-route", "OVERWRITE_IF_EXISTS_OR_ADD")]}
                    ]
                }]
            }),
            clusters(),
            json!({}),
        ),
        vec![
            r("/"), rh("/", &[("x-level", "client")]), rh("/", &[("x-absent", "client"), ("x-only-existing", "client")]),
            rh("/", &[("x-ow", "client"), ("x-legacy-append-false", "client")]),
            rh("/", &[("x-remove-route", "1"), ("x-remove-config", "1"), ("x-keep", "1")]),
            r("/w"), rh("/w", &[("x-remove-cluster", "1"), ("x-level", "client")]),
        ],
    ));

    // 7. Direct responses and redirects.
    cases.push((
        "local-replies",
        bootstrap(
            echo_routes(json!([
                {"match": {"path": "/teapot"}, "direct_response": {"status": 418, "body": {"inline_string": "short and stout"}}},
                {"match": {"path": "/nobody"}, "direct_response": {"status": 204}},
                {"match": {"path": "/ok"}, "direct_response": {"status": 200, "body": {"inline_string": "ok\n"}},
                 "response_headers_to_add": [{"header": {"key": "x-direct", "value": "1"}}]},
                {"match": {"prefix": "/https"}, "redirect": {"https_redirect": true}},
                {"match": {"prefix": "/scheme"}, "redirect": {"scheme_redirect": "ftp"}},
                {"match": {"prefix": "/host"}, "redirect": {"host_redirect": "new.example", "response_code": "TEMPORARY_REDIRECT"}},
                {"match": {"prefix": "/port"}, "redirect": {"port_redirect": 8443}},
                {"match": {"prefix": "/path"}, "redirect": {"path_redirect": "/elsewhere", "response_code": "FOUND"}},
                {"match": {"prefix": "/pathq"}, "redirect": {"path_redirect": "/elsewhere?z=1"}},
                {"match": {"prefix": "/pfx/"}, "redirect": {"prefix_rewrite": "/new/", "response_code": "SEE_OTHER"}},
                {"match": {"prefix": "/strip"}, "redirect": {"path_redirect": "/s", "strip_query": true, "response_code": "PERMANENT_REDIRECT"}},
                {"match": {"prefix": "/re/"}, "redirect": {"regex_rewrite": {"pattern": {"regex": "^/re/([a-z]+)$"}, "substitution": "/x/\\1"}}}
            ])),
            clusters(),
            json!({}),
        ),
        vec![
            r("/teapot"), r("/nobody"), r("/ok"), r("/https/a?b=1"), rh("/https", &[("host", "h.example:8080")]),
            r("/scheme/x"), r("/host/a?q"), rh("/port/p", &[("host", "h.example")]), rh("/path/x?keep=1", &[("host", "h.example")]),
            r("/pathq/x?keep=1"), r("/pfx/a/b?c=d"), r("/strip?x=1"), r("/re/abc"), r("/re/abc?x=1"), r("/missing"),
        ],
    ));

    // 8. Errors and cluster selection by header.
    cases.push((
        "errors",
        bootstrap(
            json!({"name": "local", "virtual_hosts": [{"name": "v", "domains": ["*"], "routes": [
                {"match": {"prefix": "/dead"}, "route": {"cluster": "dead"}},
                {"match": {"prefix": "/empty"}, "route": {"cluster": "empty"}},
                {"match": {"prefix": "/slow"}, "route": {"cluster": "a", "timeout": "0.25s"}},
                {"match": {"prefix": "/nf404"}, "route": {"cluster_header": "x-cluster", "cluster_not_found_response_code": "NOT_FOUND"}},
                {"match": {"prefix": "/by-header"}, "route": {"cluster_header": "x-cluster"}},
                {"match": {"prefix": "/status"}, "route": {"cluster": "b"}}
            ]}]}),
            clusters(),
            json!({}),
        ),
        vec![
            r("/dead"), r("/empty"), r("/slow?delay_ms=1000"), r("/slow?delay_ms=10"), rh("/by-header", &[("x-cluster", "c")]),
            rh("/by-header", &[("x-cluster", "zzz")]), r("/by-header"), rh("/nf404", &[("x-cluster", "zzz")]),
            r("/status?status=500"), r("/status?status=404"), r("/status?status=201"), r("/nothing-matches"),
        ],
    ));

    // 9. Envoy headers switched off, request ids, XFF with use_remote_address, server name.
    let mut rc = echo_routes(
        json!([{"match": {"prefix": "/"}, "route": {"cluster": "a", "timeout": "3s"}}]),
    );
    rc["name"] = json!("quiet");
    let mut quiet = serde_json::from_str::<Value>(&bootstrap(
        rc,
        clusters(),
        json!({
            "generate_request_id": false, "use_remote_address": true, "server_name": "sluice-test",
        }),
    ))
    .unwrap();
    quiet["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
        ["http_filters"][0]["typed_config"]["suppress_envoy_headers"] = json!(true);
    cases.push((
        "envoy-headers-off",
        quiet.to_string(),
        vec![
            r("/"),
            rh("/", &[("x-forwarded-for", "10.0.0.1")]),
            rh("/", &[("x-request-id", "given")]),
            rh("/", &[("x-forwarded-proto", "https")]),
        ],
    ));
    cases.push((
        "envoy-headers-default",
        bootstrap(
            echo_routes(
                json!([{"match": {"prefix": "/"}, "route": {"cluster": "a", "timeout": "2.5s"}}]),
            ),
            clusters(),
            json!({"server_header_transformation": "PASS_THROUGH"}),
        ),
        vec![
            r("/"),
            rh("/", &[("x-forwarded-for", "10.0.0.1")]),
            rh("/", &[("x-request-id", "given")]),
            rh("/", &[("x-forwarded-proto", "https")]),
            rh(
                "/",
                &[
                    ("connection", "keep-alive, x-hop"),
                    ("x-hop", "1"),
                    ("keep-alive", "timeout=5"),
                ],
            ),
            rh("/", &[("te", "trailers")]),
        ],
    ));

    // 10. Methods and gRPC route match.
    cases.push((
        "methods-grpc",
        bootstrap(
            echo_routes(json!([
                {"match": {"prefix": "/", "grpc": {}}, "route": {"cluster": "c"}},
                {"match": {"prefix": "/", "headers": [{"name": ":method", "string_match": {"exact": "POST"}}]}, "route": {"cluster": "b"}},
                {"match": {"prefix": "/"}, "route": {"cluster": "a"}}
            ])),
            clusters(),
            json!({}),
        ),
        vec![rm("POST", "/m", &[]), rm("PUT", "/m", &[]), rm("HEAD", "/m", &[]), rm("OPTIONS", "/m", &[]), rm("DELETE", "/m", &[]),
             rm("POST", "/svc/M", &[("content-type", "application/grpc+proto")]), rm("POST", "/svc/M", &[("content-type", "application/json")])],
    ));

    // 11. The deterministic corners of weighted routing: weight-0 clusters, fractions of 0 and 100 %.
    let mut corner_reqs = Vec::new();
    for i in 0..15 {
        corner_reqs.push(r(&format!("/only-a/{i}")));
        corner_reqs.push(r(&format!("/never/{i}")));
        corner_reqs.push(r(&format!("/always/{i}")));
    }
    cases.push((
        "weighted-corners",
        bootstrap(
            echo_routes(json!([
                {"match": {"prefix": "/only-a"}, "route": {"weighted_clusters": {"clusters": [{"name": "a", "weight": 5}, {"name": "b", "weight": 0}]}}},
                {"match": {"prefix": "/never", "runtime_fraction": {"default_value": {"numerator": 0}}}, "route": {"cluster": "c"}},
                {"match": {"prefix": "/always", "runtime_fraction": {"default_value": {"numerator": 100, "denominator": "HUNDRED"}}}, "route": {"cluster": "c"}},
                {"match": {"prefix": "/"}, "route": {"weighted_clusters": {"clusters": [{"name": "b", "weight": 1}]}}}
            ])),
            clusters(),
            json!({}),
        ),
        corner_reqs,
    ));

    // 12. More hosts, paths and methods through the Bookinfo-like shape.
    let mut mixed = Vec::new();
    for path in [
        "/productpage",
        "/static/app.js",
        "/login",
        "/logout",
        "/api/v1/products",
        "/api/v1/products/1/reviews",
        "/ratings/0",
    ] {
        for (k, v) in [
            ("end-user", "jason"),
            ("end-user", "other"),
            ("end-user", "JASON"),
            ("x-unused", "1"),
        ] {
            mixed.push(rh(path, &[(k, v)]));
        }
    }
    cases.push((
        "bookinfo-like",
        bootstrap(
            echo_routes(json!([
                {"match": {"prefix": "/", "headers": [{"name": "end-user", "string_match": {"exact": "jason"}}]}, "route": {"cluster": "b"}},
                {"match": {"path": "/productpage"}, "route": {"cluster": "a"}},
                {"match": {"prefix": "/static/"}, "route": {"cluster": "a"}},
                {"match": {"path": "/login"}, "route": {"cluster": "a"}},
                {"match": {"path": "/logout"}, "route": {"cluster": "a"}},
                {"match": {"prefix": "/api/v1/products"}, "route": {"cluster": "c", "prefix_rewrite": "/products"}}
            ])),
            clusters(),
            json!({}),
        ),
        mixed,
    ));

    let mut total = 0;
    let mut all = Vec::new();
    for (name, config, reqs) in &cases {
        let (n, mismatches) = compare(name, config, reqs).await;
        total += n;
        all.extend(mismatches);
    }
    eprintln!(
        "differential: {} bootstraps, {total} requests, {} mismatches",
        cases.len(),
        all.len()
    );
    assert!(
        all.is_empty(),
        "{} of {total} requests differ from Envoy:\n{}",
        all.len(),
        all.join("\n")
    );
    assert!(
        cases.len() >= 10 && total >= 200,
        "{} bootstraps, {total} requests",
        cases.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn weighted_routes_agree_with_envoy_in_distribution() {
    let a = upstream("v1").await;
    let b = upstream("v2").await;
    let c = upstream("v3").await;
    let config = bootstrap(
        echo_routes(json!([
            {"match": {"prefix": "/fraction", "runtime_fraction": {"default_value": {"numerator": 30, "denominator": "HUNDRED"}}}, "route": {"cluster": "c"}},
            {"match": {"prefix": "/"}, "route": {"weighted_clusters": {"clusters": [
                {"name": "a", "weight": 70}, {"name": "b", "weight": 20}, {"name": "c", "weight": 10}, {"name": "dead", "weight": 0}]}}}
        ])),
        vec![
            cluster("a", &[a.port()]),
            cluster("b", &[b.port()]),
            cluster("c", &[c.port()]),
            cluster("dead", &[closed_port()]),
        ],
        json!({}),
    );
    let n = 3000u64;
    for kind in ["envoy", "sluice"] {
        let p = if kind == "envoy" {
            envoy(&config).await
        } else {
            sluice(&config).await
        };
        let client = client_h1();
        let mut counts: BTreeMap<String, u64> = BTreeMap::new();
        let mut fraction = 0u64;
        for _ in 0..n {
            *counts
                .entry(get(&client, &p.url("main", "/"), &[]).await.upstream())
                .or_default() += 1;
            if get(&client, &p.url("main", "/fraction"), &[])
                .await
                .upstream()
                == "v3"
            {
                fraction += 1;
            }
        }
        eprintln!("{kind}: {counts:?}, runtime_fraction 30 %: {fraction}/{n}");
        for (name, p_expected) in [("v1", 0.7), ("v2", 0.2), ("v3", 0.1)] {
            let got = counts.get(name).copied().unwrap_or(0);
            assert!(
                within_binomial(got, n, p_expected, Z_SUITE),
                "{kind}: {name} got {got}/{n}, expected {p_expected}"
            );
        }
        assert_eq!(
            counts.len(),
            3,
            "{kind}: a weight-0 cluster was chosen: {counts:?}"
        );
        // One random value per request drives both choices (Envoy's stream id): r % 100 < 30 takes
        // the fraction route; otherwise r % 100 in [90, 100) picks v3 among the weights. 40 % in all.
        assert!(
            within_binomial(fraction, n, 0.4, Z_SUITE),
            "{kind}: runtime_fraction {fraction}/{n}"
        );
    }
}
