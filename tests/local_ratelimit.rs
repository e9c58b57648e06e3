//! The local rate limit filter through real Envoy 1.40 and through `sluice proxy` on the same
//! bootstrap: the filter's own bucket, a route's own bucket and status, and the shadow mode
//! (limited but not enforced), answer for answer, and the filter's statistics.

mod support;

use serde_json::{json, Value};
use support::*;

const TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit";

fn limit(max: u32, enforced: bool, extra: Value) -> Value {
    let mut c = json!({
        "@type": TYPE,
        "stat_prefix": "rl",
        "token_bucket": {"max_tokens": max, "tokens_per_fill": 1, "fill_interval": "60s"},
        "filter_enabled": {"default_value": {"numerator": 100, "denominator": "HUNDRED"}, "runtime_key": "rl_enabled"}
    });
    if enforced {
        c["filter_enforced"] = json!({"default_value": {"numerator": 100, "denominator": "HUNDRED"}, "runtime_key": "rl_enforced"});
    }
    if let (Some(c), Some(extra)) = (c.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            c.insert(k.clone(), v.clone());
        }
    }
    c
}

fn config(app: u16) -> String {
    let per_route = |l: Value| json!({"envoy.filters.http.local_ratelimit": l});
    bootstrap(
        routes(json!([
            {"match": {"prefix": "/route"}, "route": {"cluster": "app"},
             "typed_per_filter_config": per_route(limit(1, true, json!({"stat_prefix": "rl_route", "status": {"code": "ServiceUnavailable"}})))},
            {"match": {"prefix": "/shadow"}, "route": {"cluster": "app"},
             "typed_per_filter_config": per_route(limit(1, false, json!({
                "stat_prefix": "rl_shadow",
                "request_headers_to_add_when_not_enforced": [{"header": {"key": "x-shadow-limited", "value": "true"}}]
             })))},
            {"match": {"prefix": "/"}, "route": {"cluster": "app"}}
        ])),
        vec![cluster("app", &[app])],
        json!({"http_filters": [
            {"name": "envoy.filters.http.local_ratelimit", "typed_config": limit(3, true, json!({
                "response_headers_to_add": [{"header": {"key": "x-limited", "value": "yes"}}]
            }))},
            {"name": "envoy.filters.http.router", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
            }}
        ]}),
    )
}

/// Status, upstream, `x-limited`, content type, the body if the proxy answered, and whether the
/// upstream saw `x-shadow-limited`.
type Answer = (u16, String, String, String, String, bool);

async fn answers(p: &ProxyProcess, path: &str, n: usize) -> Vec<Answer> {
    let client = client_h1();
    let mut out = Vec::new();
    for _ in 0..n {
        let r = get(&client, &p.url("main", path), &[]).await;
        let h = |name: &str| {
            r.headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-")
                .to_string()
        };
        let local = r.upstream() == "-";
        out.push((
            r.status,
            r.upstream(),
            h("x-limited"),
            if local { h("content-type") } else { "-".into() },
            if local {
                String::from_utf8_lossy(&r.body).into_owned()
            } else {
                "-".into()
            },
            r.seen("x-shadow-limited").is_some(),
        ));
    }
    out
}

async fn check(kind: &str, app: u16) -> (Vec<Vec<Answer>>, Vec<String>) {
    let p = proxy_of(kind, &config(app)).await;
    let answers = vec![
        answers(&p, "/limited", 5).await,
        answers(&p, "/route", 2).await,
        answers(&p, "/shadow", 2).await,
    ];
    // The filter's statistics, per stat_prefix, under Envoy's names.
    let mut stats: Vec<String> = p
        .admin("/stats/prometheus")
        .await
        .lines()
        .filter(|l| l.starts_with("envoy_http_local_rate_limit_"))
        .map(str::to_string)
        .collect();
    stats.sort();
    (answers, stats)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_rate_limits_as_envoy() {
    let app = upstream("app").await;
    let (envoy, envoy_stats) = check("envoy", app.port()).await;
    assert!(
        envoy_stats.contains(
            &"envoy_http_local_rate_limit_enforced{envoy_local_http_ratelimit_prefix=\"rl\"} 2"
                .to_string()
        ),
        "{envoy_stats:?}"
    );
    let ok = (
        200,
        "app".to_string(),
        "-".to_string(),
        "-".to_string(),
        "-".to_string(),
        false,
    );
    let limited = (
        429,
        "-".to_string(),
        "yes".to_string(),
        "text/plain".to_string(),
        "local_rate_limited".to_string(),
        false,
    );
    assert_eq!(
        envoy[0],
        vec![ok.clone(), ok.clone(), ok.clone(), limited.clone(), limited],
        "envoy: the filter's bucket of 3"
    );
    assert_eq!(envoy[1][0], ok, "envoy: the route's bucket of 1");
    assert_eq!(envoy[1][1].0, 503, "envoy: the route's status");
    assert_eq!(
        envoy[2],
        vec![
            ok.clone(),
            (200, "app".into(), "-".into(), "-".into(), "-".into(), true)
        ],
        "envoy: shadow mode"
    );
    let (sluice, sluice_stats) = check("sluice", app.port()).await;
    assert_eq!(sluice, envoy);
    assert_eq!(sluice_stats, envoy_stats, "statistics");
}

#[test]
fn what_is_not_implemented_is_refused_by_name() {
    let refused = refusal_of_filters;
    let router = json!({"name": "envoy.filters.http.router", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
    }});
    let cors = json!({"name": "envoy.filters.http.cors", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors"
    }});
    let with_descriptors = limit(
        1,
        true,
        json!({"descriptors": [{"entries": [{"key": "k", "value": "v"}],
        "token_bucket": {"max_tokens": 1, "fill_interval": "1s"}}]}),
    );
    let lr = json!({"name": "envoy.filters.http.local_ratelimit", "typed_config": limit(1, true, json!({}))});
    let err = refused(
        json!([{"name": "envoy.filters.http.local_ratelimit", "typed_config": with_descriptors}, router]),
    );
    assert!(
        err.contains("http_filters[0].typed_config.descriptors: not supported"),
        "{err}"
    );
    let err = refused(json!([cors, lr, router]));
    assert!(
        err.contains("http_filters[1]: the local rate limit filter must come before the CORS, CSRF and fault filters"),
        "{err}"
    );
}
