//! The RBAC filter through real Envoy 1.40 and through `sluice proxy` on the same bootstrap:
//! ALLOW policies over methods, paths (with and without the query, ignoring case), headers, the
//! client address from `x-forwarded-for`, the peer and destination addresses and ports; a DENY
//! list and a LOG engine per route, a route where the filter is off, a virtual host that denies
//! everything, a request without a route; shadow rules that count but never refuse. Every answer
//! and every `envoy_http_rbac_*` statistic must be the same.

mod support;

use serde_json::{json, Value};
use support::*;

const RBAC: &str = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC";
const PER_ROUTE: &str = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBACPerRoute";

fn header(name: &str, m: Value) -> Value {
    json!({"header": {"name": name, "string_match": m}})
}

fn path(m: Value) -> Value {
    json!({"url_path": {"path": m}})
}

fn per_route(rbac: Option<Value>) -> Value {
    let mut c = json!({"@type": PER_ROUTE});
    if let Some(r) = rbac {
        c["rbac"] = json!({"rules": r});
    }
    json!({"envoy.filters.http.rbac": c})
}

fn config(app: u16) -> String {
    let any = json!([{"any": true}]);
    let rules = json!({
        "action": "ALLOW",
        "policies": {
            "admins": {
                "permissions": [{"and_rules": {"rules": [
                    header(":method", json!({"exact": "GET"})),
                    path(json!({"prefix": "/admin"}))
                ]}}],
                "principals": [header("x-role", json!({"exact": "admin"}))]
            },
            "public": {
                "permissions": [{"or_rules": {"rules": [
                    path(json!({"prefix": "/public"})),
                    header(":path", json!({"exact": "/health?full=1"}))
                ]}}],
                "principals": any
            },
            "office": {
                "permissions": [{"not_rule": path(json!({"prefix": "/admin"}))}],
                "principals": [{"remote_ip": {"address_prefix": "10.1.0.0", "prefix_len": 16}}]
            },
            "loopback": {
                "permissions": [{"and_rules": {"rules": [
                    {"destination_ip": {"address_prefix": "127.0.0.0", "prefix_len": 8}},
                    path(json!({"exact": "/dest"}))
                ]}}, {"and_rules": {"rules": [
                    {"destination_port_range": {"start": 1, "end": 65535}},
                    path(json!({"exact": "/range"}))
                ]}}],
                "principals": [{"direct_remote_ip": {"address_prefix": "127.0.0.1", "prefix_len": 32}}]
            },
            "case": {
                "permissions": [path(json!({"exact": "/CaseX", "ignore_case": true}))],
                "principals": [{"not_id": header("x-role", json!({"exact": "banned"}))}]
            }
        }
    });
    let shadow = json!({
        "action": "DENY",
        "policies": {"no-posts": {"permissions": [header(":method", json!({"exact": "POST"}))], "principals": any}}
    });
    let route = |prefix: &str, extra: Value| {
        let mut r = json!({"match": {"prefix": prefix}, "route": {"cluster": "app"}});
        if !extra.is_null() {
            r["typed_per_filter_config"] = extra;
        }
        r
    };
    let route_config = json!({"name": "local", "virtual_hosts": [
        {"name": "closed", "domains": ["closed.example.com"], "routes": [route("/", Value::Null)],
         "typed_per_filter_config": per_route(Some(json!({"action": "ALLOW"})))},
        {"name": "sparse", "domains": ["sparse.example.com"], "routes": [route("/only", Value::Null)]},
        {"name": "all", "domains": ["*"], "routes": [
            route("/open", per_route(None)),
            route("/deny-list", per_route(Some(json!({"action": "DENY", "policies": {"no-bots": {
                "permissions": any, "principals": [header("user-agent", json!({"contains": "bot"}))]
            }}})))),
            route("/log", per_route(Some(json!({"action": "LOG", "policies": {"logged": {
                "permissions": [path(json!({"exact": "/log/yes"}))], "principals": any
            }}})))),
            route("/", Value::Null)
        ]}
    ]});
    bootstrap(
        route_config,
        vec![cluster("app", &[app])],
        json!({"http_filters": [
            {"name": "envoy.filters.http.rbac", "typed_config": {
                "@type": RBAC,
                "rules": rules,
                "rules_stat_prefix": "main_",
                "shadow_rules": shadow,
                "shadow_rules_stat_prefix": "sh_"
            }},
            {"name": "envoy.filters.http.router", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
            }}
        ]}),
    )
}

/// Method, host, path and query, extra headers.
type Case = (
    &'static str,
    &'static str,
    &'static str,
    &'static [(&'static str, &'static str)],
);

const CASES: &[Case] = &[
    ("GET", "a.example.com", "/admin/x", &[("x-role", "admin")]),
    ("GET", "a.example.com", "/admin/x", &[]),
    ("POST", "a.example.com", "/admin/x", &[("x-role", "admin")]),
    ("GET", "a.example.com", "/public/a", &[]),
    ("POST", "a.example.com", "/public/a", &[]),
    ("GET", "a.example.com", "/health?full=1", &[]),
    ("GET", "a.example.com", "/health", &[]),
    (
        "GET",
        "a.example.com",
        "/other",
        &[("x-forwarded-for", "10.1.2.3")],
    ),
    (
        "GET",
        "a.example.com",
        "/other",
        &[("x-forwarded-for", "10.1.2.3, 192.0.2.7")],
    ),
    (
        "GET",
        "a.example.com",
        "/admin/y",
        &[("x-forwarded-for", "10.1.2.3")],
    ),
    ("GET", "a.example.com", "/dest", &[]),
    ("GET", "a.example.com", "/range", &[]),
    ("GET", "a.example.com", "/casex", &[]),
    ("GET", "a.example.com", "/CASEX", &[("x-role", "banned")]),
    ("GET", "a.example.com", "/open/anything", &[]),
    ("GET", "a.example.com", "/deny-list", &[]),
    (
        "GET",
        "a.example.com",
        "/deny-list",
        &[("user-agent", "googlebot/2.1")],
    ),
    ("GET", "a.example.com", "/log/yes", &[]),
    ("GET", "a.example.com", "/log/no", &[]),
    ("GET", "closed.example.com", "/public/a", &[]),
    (
        "GET",
        "sparse.example.com",
        "/other",
        &[("x-forwarded-for", "10.1.2.3")],
    ),
    ("GET", "sparse.example.com", "/other", &[]),
];

async fn check(kind: &str, config: &str, cases: &[Case]) -> (Vec<String>, Vec<String>) {
    let p = proxy_of(kind, config).await;
    let client = client_h1();
    let mut out = Vec::new();
    for (method, host, path, headers) in cases {
        let r = request(&client, method, &p.url("main", path), host, headers).await;
        let local = r.upstream() == "-";
        out.push(format!(
            "{method} {host}{path} {headers:?} -> {} {}",
            r.status,
            if local {
                format!(
                    "{:?} {:?}",
                    r.headers.get("content-type"),
                    String::from_utf8_lossy(&r.body)
                )
            } else {
                r.upstream()
            }
        ));
    }
    (out, p.stats("envoy_http_rbac").await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rbac_decides_as_envoy() {
    let app = upstream("app").await;
    let (envoy, envoy_stats) = check("envoy", &config(app.port()), CASES).await;
    let denied =
        |i: usize| envoy[i].contains("-> 403 Some(\"text/plain\") \"RBAC: access denied\"");
    let allowed = |i: usize| envoy[i].ends_with("-> 200 app");
    // Pin Envoy's own answers for the cases that say the most.
    assert!(allowed(0) && denied(1) && denied(2), "{envoy:#?}");
    assert!(allowed(4), "shadow rules never refuse: {envoy:#?}");
    assert!(allowed(7) && denied(8) && denied(9), "{envoy:#?}");
    assert!(allowed(14) && denied(16) && allowed(18), "{envoy:#?}");
    assert!(
        denied(19) && envoy[20].contains("-> 404") && denied(21),
        "{envoy:#?}"
    );
    assert!(
        envoy_stats
            .iter()
            .any(|l| l.starts_with("envoy_http_rbac_shadow_denied")
                && l.contains("envoy_rbac_http_prefix=\"sh_\"")
                && l.ends_with(" 2")),
        "{envoy_stats:?}"
    );
    let (sluice, sluice_stats) = check("sluice", &config(app.port()), CASES).await;
    assert_eq!(sluice, envoy);
    assert_eq!(sluice_stats, envoy_stats, "statistics");
}

/// A predicate on one input with a string matcher.
fn single(input: Value, m: Value) -> Value {
    json!({"single_predicate": {"input": {"name": "i", "typed_config": input}, "value_match": m}})
}

fn header_input(name: &str) -> Value {
    json!({"@type": "type.googleapis.com/envoy.type.matcher.v3.HttpRequestHeaderMatchInput", "header_name": name})
}

fn network_input(ty: &str) -> Value {
    json!({"@type": format!("type.googleapis.com/envoy.extensions.matching.common_inputs.network.v3.{ty}")})
}

fn on_match(action: &str) -> Value {
    json!({"action": {"name": "a", "typed_config": {"@type": "type.googleapis.com/envoy.config.rbac.v3.Action", "name": action.to_lowercase(), "action": action}}})
}

/// The `matcher` form: predicates over request headers and addresses, first match wins, then
/// `on_no_match`; a route's matcher without `on_no_match`.
fn matcher_config(app: u16) -> String {
    let matcher = json!({
        "matcher_list": {"matchers": [
            {"predicate": {"and_matcher": {"predicate": [
                single(header_input("x-tier"), json!({"exact": "gold"})),
                {"not_matcher": single(header_input("x-suspended"), json!({"safe_regex": {"google_re2": {}, "regex": ".*"}}))}
            ]}}, "on_match": on_match("ALLOW")},
            {"predicate": single(network_input("SourceIPInput"), json!({"exact": "10.9.9.9"})),
             "on_match": on_match("DENY")},
            {"predicate": {"or_matcher": {"predicate": [
                single(header_input("referer"), json!({"safe_regex": {"google_re2": {}, "regex": "https?://(www[.])?envoyproxy[.]io/.*"}})),
                single(header_input("x-multi"), json!({"exact": "a,b"}))
            ]}}, "on_match": on_match("ALLOW")},
            {"predicate": single(network_input("DirectSourceIPInput"), json!({"exact": "127.0.0.1"})),
             "on_match": on_match("LOG")}
        ]},
        "on_no_match": on_match("DENY")
    });
    let route_matcher = json!({"matcher_list": {"matchers": [
        {"predicate": single(header_input("x-ok"), json!({"exact": "1"})), "on_match": on_match("ALLOW")}
    ]}});
    bootstrap(
        routes(json!([
            {"match": {"prefix": "/strict"}, "route": {"cluster": "app"}, "typed_per_filter_config": {
                "envoy.filters.http.rbac": {"@type": PER_ROUTE, "rbac": {"matcher": route_matcher}}
            }},
            {"match": {"prefix": "/"}, "route": {"cluster": "app"}}
        ])),
        vec![cluster("app", &[app])],
        json!({"http_filters": [
            {"name": "envoy.filters.http.rbac", "typed_config": {"@type": RBAC, "matcher": matcher}},
            {"name": "envoy.filters.http.router", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
            }}
        ]}),
    )
}

const MATCHER_CASES: &[Case] = &[
    (
        "GET",
        "a",
        "/",
        &[("x-tier", "gold"), ("x-forwarded-for", "10.9.9.9")],
    ),
    (
        "GET",
        "a",
        "/",
        &[("x-tier", "gold"), ("x-suspended", "yes")],
    ),
    ("GET", "a", "/", &[("x-forwarded-for", "10.9.9.9")]),
    (
        "GET",
        "a",
        "/",
        &[("referer", "https://www.envoyproxy.io/docs/envoy/")],
    ),
    ("GET", "a", "/", &[("referer", "https://evil.test/")]),
    ("GET", "a", "/", &[("x-multi", "a"), ("x-multi", "b")]),
    ("GET", "a", "/", &[("x-multi", "a")]),
    ("GET", "a", "/", &[("x-forwarded-for", "192.0.2.1")]),
    ("GET", "a", "/strict", &[("x-ok", "1")]),
    ("GET", "a", "/strict", &[("x-tier", "gold")]),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rbac_matcher_form_decides_as_envoy() {
    let app = upstream("app").await;
    let config = matcher_config(app.port());
    let (envoy, envoy_stats) = check("envoy", &config, MATCHER_CASES).await;
    let codes: Vec<&str> = envoy
        .iter()
        .map(|l| l.split(" -> ").nth(1).unwrap_or("").get(..3).unwrap_or(""))
        .collect();
    assert_eq!(
        codes,
        ["200", "200", "403", "200", "200", "200", "200", "200", "200", "403"],
        "{envoy:#?}"
    );
    let (sluice, sluice_stats) = check("sluice", &config, MATCHER_CASES).await;
    assert_eq!(sluice, envoy);
    assert_eq!(sluice_stats, envoy_stats, "statistics");
}

#[test]
fn what_is_not_implemented_is_refused_by_name() {
    let router = json!({"name": "envoy.filters.http.router", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
    }});
    let rbac = |rules: Value| json!({"name": "envoy.filters.http.rbac", "typed_config": {"@type": RBAC, "rules": rules}});
    let e = refusal_of_filters(json!([
        rbac(
            json!({"policies": {"p": {"permissions": [{"metadata": {"filter": "x", "path": [{"key": "k"}], "value": {"present_match": true}}}], "principals": [{"any": true}]}}})
        ),
        router
    ]));
    assert!(
        e.contains("rules.policies[\"p\"].permissions[0].metadata: not supported"),
        "{e}"
    );
    let e = refusal_of_filters(json!([
        rbac(
            json!({"policies": {"p": {"permissions": [{"any": true}], "principals": [{"any": true}], "condition": {"const_expr": {"bool_value": true}}}}})
        ),
        router
    ]));
    assert!(
        e.contains("rules.policies[\"p\"].condition: not supported"),
        "{e}"
    );
    let e = refusal_of_filters(json!([
        {"name": "envoy.filters.http.cors", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors"}},
        rbac(json!({})),
        router
    ]));
    assert!(e.contains("the RBAC filter must come before"), "{e}");
}
