//! The external authorization filter through real Envoy 1.40 and through `sluice proxy` on the
//! same bootstrap, against an HTTP authorization service and a gRPC one run by the test.
//!
//! HTTP service: an allowed request (headers set, appended and removed on the way upstream, a
//! header added to the response), denials (401 with the service's body and headers, a 302),
//! errors (the service answering 503, or too slowly), a route where the check is off, and what
//! the service saw (prefixed path, method, host, the allowed headers and only those).
//! gRPC service: allowed, denied with and without a denied response, a failed call let through
//! by `failure_mode_allow`, and per-route `context_extensions`.
//! Every answer, what the upstream saw, and every `envoy_http_ext_authz_*` statistic must be the
//! same.

mod support;

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};
use sluice_proto::envoy::envoy::config::core::v3::{HeaderValue, HeaderValueOption};
use sluice_proto::envoy::envoy::r#type::v3::HttpStatus;
use sluice_proto::envoy::envoy::service::auth::v3::authorization_server::{
    Authorization, AuthorizationServer,
};
use sluice_proto::envoy::envoy::service::auth::v3::{
    check_response, CheckRequest, CheckResponse, DeniedHttpResponse, OkHttpResponse,
};
use sluice_proto::envoy::google::rpc::Status as RpcStatus;
use support::*;
use tokio::net::TcpListener;

const EXT_AUTHZ: &str = "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz";
const PER_ROUTE: &str =
    "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute";

/// The HTTP authorization service: decides by the `authorization` header it is sent.
async fn authz_http(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let h = req.headers();
    let get = |n: &str| {
        h.get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_string()
    };
    // What the service saw, handed on to the upstream in `x-current-user`.
    let saw = format!(
        "{} {} host={} tenant={} from-proxy={} length={} secret={} cookie={}",
        req.method(),
        req.uri().path_and_query().map(|p| p.as_str()).unwrap_or(""),
        get("host"),
        get("x-tenant"),
        get("x-from-proxy"),
        get("content-length"),
        get("x-secret"),
        get("cookie"),
    );
    let b = Response::builder();
    let resp = match get("authorization").as_str() {
        "Bearer good" => b
            .status(200)
            .header("x-current-user", saw)
            .header("x-auth-extra", "e1")
            .header("x-envoy-auth-headers-to-remove", "x-secret")
            .header("x-resp-ok", "yes")
            .header("x-not-allowed", "nope")
            .body(Full::new(Bytes::new())),
        "Bearer redirect" => b
            .status(302)
            .header("location", "https://login.test/")
            .header("x-deny-reason", "redirect")
            .body(Full::new(Bytes::from_static(b"go log in"))),
        "Bearer boom" => b.status(503).body(Full::new(Bytes::from_static(b"down"))),
        "Bearer slow" => {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            b.status(200).body(Full::new(Bytes::new()))
        }
        _ => b
            .status(401)
            .header("www-authenticate", "Bearer realm=\"test\"")
            .header("x-deny-reason", "missing")
            .header("content-type", "text/html")
            .body(Full::new(Bytes::from_static(b"<b>unauthorized</b>"))),
    };
    Ok(resp.expect("response"))
}

async fn start_http_authz() -> (u16, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service_fn(authz_http))
                    .await;
            });
        }
    });
    (port, task)
}

fn header(key: &str, value: &str, append: bool) -> HeaderValueOption {
    #[allow(deprecated)]
    HeaderValueOption {
        header: Some(HeaderValue {
            key: key.into(),
            value: value.into(),
            ..Default::default()
        }),
        append: append.then_some(sluice_proto::envoy::google::protobuf::BoolValue { value: true }),
        ..Default::default()
    }
}

/// The gRPC authorization service.
struct GrpcAuthz;

#[tonic::async_trait]
impl Authorization for GrpcAuthz {
    async fn check(
        &self,
        request: tonic::Request<CheckRequest>,
    ) -> Result<tonic::Response<CheckResponse>, tonic::Status> {
        let attrs = request.into_inner().attributes.unwrap_or_default();
        let http = attrs.request.and_then(|r| r.http).unwrap_or_default();
        let get = |n: &str| http.headers.get(n).cloned().unwrap_or_else(|| "-".into());
        let mut ctx: Vec<String> = attrs
            .context_extensions
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        ctx.sort();
        let saw = format!(
            "{} {} host={} authority={} tenant={} ctx={} source={} protocol={}",
            http.method,
            http.path,
            http.host,
            get(":authority"),
            get("x-tenant"),
            ctx.join(";"),
            attrs.source.is_some_and(|s| s.address.is_some()),
            http.protocol,
        );
        let ok = |code: i32, response| CheckResponse {
            status: Some(RpcStatus {
                code,
                ..Default::default()
            }),
            http_response: response,
            ..Default::default()
        };
        let answer = match get("authorization").as_str() {
            "Bearer good" => ok(
                0,
                Some(check_response::HttpResponse::OkResponse(OkHttpResponse {
                    headers: vec![
                        header("x-current-user", &saw, false),
                        header("x-auth-extra", "g1", true),
                    ],
                    headers_to_remove: vec!["x-secret".into()],
                    response_headers_to_add: vec![header("x-resp-ok", "grpc", false)],
                    ..Default::default()
                })),
            ),
            "Bearer boom" => return Err(tonic::Status::unavailable("down")),
            "Bearer plain-deny" => ok(7, None),
            _ => ok(
                7,
                Some(check_response::HttpResponse::DeniedResponse(
                    DeniedHttpResponse {
                        status: Some(HttpStatus { code: 401 }),
                        headers: vec![header("www-authenticate", "Bearer", false)],
                        body: "denied by grpc".into(),
                    },
                )),
            ),
        };
        Ok(tonic::Response::new(answer))
    }
}

async fn start_grpc_authz() -> (u16, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let task = tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(AuthorizationServer::new(GrpcAuthz))
            .serve_with_incoming(incoming)
            .await;
    });
    (port, task)
}

fn routes_with_overrides() -> Value {
    routes(json!([
        {"match": {"prefix": "/public"}, "route": {"cluster": "app"},
         "typed_per_filter_config": {"envoy.filters.http.ext_authz": {"@type": PER_ROUTE, "disabled": true}}},
        {"match": {"prefix": "/direct"}, "direct_response": {"status": 200, "body": {"inline_string": "direct"}}},
        {"match": {"prefix": "/ctx"}, "route": {"cluster": "app"},
         "typed_per_filter_config": {"envoy.filters.http.ext_authz": {"@type": PER_ROUTE,
            "check_settings": {"context_extensions": {"route": "ctx", "tier": "gold"}}}}},
        {"match": {"prefix": "/"}, "route": {"cluster": "app"}}
    ]))
}

fn http_config(app: u16, authz: u16) -> String {
    bootstrap(
        routes_with_overrides(),
        vec![cluster("app", &[app]), cluster("authz", &[authz])],
        json!({"http_filters": [
            {"name": "envoy.filters.http.ext_authz", "typed_config": {
                "@type": EXT_AUTHZ,
                "transport_api_version": "V3",
                "http_service": {
                    "server_uri": {"uri": "http://authz", "cluster": "authz", "timeout": "0.5s"},
                    "path_prefix": "/check",
                    "authorization_request": {
                        "allowed_headers": {"patterns": [{"exact": "x-tenant"}]},
                        "headers_to_add": [{"key": "x-from-proxy", "value": "yes"}]
                    },
                    "authorization_response": {
                        "allowed_upstream_headers": {"patterns": [{"exact": "x-current-user"}]},
                        "allowed_upstream_headers_to_append": {"patterns": [{"exact": "x-auth-extra"}]},
                        "allowed_client_headers_on_success": {"patterns": [{"exact": "x-resp-ok"}]}
                    }
                }
            }},
            {"name": "envoy.filters.http.router", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}
        ]}),
    )
}

fn grpc_config(app: u16, authz: u16) -> String {
    bootstrap(
        routes_with_overrides(),
        vec![cluster("app", &[app]), cluster_h2("authz", &[authz])],
        json!({"http_filters": [
            {"name": "envoy.filters.http.ext_authz", "typed_config": {
                "@type": EXT_AUTHZ,
                "transport_api_version": "V3",
                "grpc_service": {"envoy_grpc": {"cluster_name": "authz"}, "timeout": "0.5s"},
                "failure_mode_allow": true,
                "failure_mode_allow_header_add": true,
                "stat_prefix": "grpc_authz"
            }},
            {"name": "envoy.filters.http.router", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}
        ]}),
    )
}

/// Method, path, extra headers.
type Case = (
    &'static str,
    &'static str,
    &'static [(&'static str, &'static str)],
);

const HTTP_CASES: &[Case] = &[
    (
        "GET",
        "/orders?id=7",
        &[
            ("authorization", "Bearer good"),
            ("x-tenant", "t1"),
            ("x-secret", "s3"),
            ("x-auth-extra", "orig"),
            ("cookie", "c=1"),
        ],
    ),
    ("GET", "/orders", &[]),
    ("GET", "/orders", &[("authorization", "Bearer redirect")]),
    ("GET", "/orders", &[("authorization", "Bearer boom")]),
    ("GET", "/orders", &[("authorization", "Bearer slow")]),
    ("GET", "/public/page", &[]),
    ("DELETE", "/orders/7", &[("authorization", "Bearer good")]),
    ("GET", "/direct", &[]),
];

const GRPC_CASES: &[Case] = &[
    (
        "GET",
        "/orders?id=7",
        &[
            ("authorization", "Bearer good"),
            ("x-tenant", "t1"),
            ("x-secret", "s3"),
            ("x-auth-extra", "orig"),
        ],
    ),
    ("GET", "/orders", &[]),
    ("GET", "/orders", &[("authorization", "Bearer plain-deny")]),
    ("GET", "/orders", &[("authorization", "Bearer boom")]),
    ("GET", "/public/page", &[]),
    ("POST", "/ctx/a", &[("authorization", "Bearer good")]),
];

async fn run(kind: &str, config: &str, cases: &[Case], stat: &str) -> (Vec<String>, Vec<String>) {
    let p = proxy_of(kind, config).await;
    let client = client_h1();
    let mut out = Vec::new();
    for (method, path, headers) in cases {
        let r = request(&client, method, &p.url("main", path), "shop.test", headers).await;
        let h = |n: &str| r.header(n);
        let what = if r.upstream() == "-" {
            format!(
                "{:?} www-authenticate={} location={} x-deny-reason={} content-type={}",
                String::from_utf8_lossy(&r.body),
                h("www-authenticate"),
                h("location"),
                h("x-deny-reason"),
                h("content-type"),
            )
        } else {
            let seen = |n: &str| r.seen(n).unwrap_or_else(|| "-".into());
            format!(
                "{} user=[{}] extra={} secret={} not-allowed={} failure-allowed={} resp-ok={}",
                r.upstream(),
                seen("x-current-user"),
                seen("x-auth-extra"),
                seen("x-secret"),
                seen("x-not-allowed"),
                seen("x-envoy-auth-failure-mode-allowed"),
                h("x-resp-ok"),
            )
        };
        out.push(format!(
            "{method} {path} {headers:?} -> {} {what}",
            r.status
        ));
    }
    // Envoy leaves out the filter's prefix label when it has none; Sluice exports it empty.
    let stats = p
        .stats(stat)
        .await
        .into_iter()
        .map(|l| {
            l.replace(",envoy_ext_authz_prefix=\"\"", "")
                .replace("envoy_ext_authz_prefix=\"\",", "")
        })
        .collect();
    (out, stats)
}

/// Run the cases through Envoy, check its status codes, then through Sluice: the answers and the
/// statistics must be the same. Envoy's answers, for further checks.
async fn same_as_envoy(config: &str, cases: &[Case], codes: &[&str]) -> Vec<String> {
    let (envoy, envoy_stats) = run("envoy", config, cases, "envoy_http_ext_authz").await;
    let got: Vec<&str> = envoy
        .iter()
        .map(|l| {
            l.split(" -> ")
                .nth(1)
                .and_then(|s| s.get(..3))
                .unwrap_or("")
        })
        .collect();
    assert_eq!(got, codes, "{envoy:#?}");
    let (sluice, sluice_stats) = run("sluice", config, cases, "envoy_http_ext_authz").await;
    assert_eq!(sluice, envoy);
    assert!(!envoy_stats.is_empty());
    assert_eq!(sluice_stats, envoy_stats, "statistics");
    envoy
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_authorization_service_decides_as_in_envoy() {
    let app = upstream("app").await;
    let (authz, _task) = start_http_authz().await;
    let config = http_config(app.port(), authz);
    let codes = ["200", "401", "302", "403", "403", "200", "200", "401"];
    let envoy = same_as_envoy(&config, HTTP_CASES, &codes).await;
    assert!(
        envoy[0].contains("GET /check/orders?id=7 host=shop.test tenant=t1 from-proxy=yes length=0 secret=- cookie=-"),
        "{envoy:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_authorization_service_decides_as_in_envoy() {
    let app = upstream("app").await;
    let (authz, _task) = start_grpc_authz().await;
    let config = grpc_config(app.port(), authz);
    let codes = ["200", "401", "403", "200", "200", "200"];
    let envoy = same_as_envoy(&config, GRPC_CASES, &codes).await;
    assert!(envoy[3].contains("failure-allowed=true"), "{envoy:#?}");
    assert!(envoy[5].contains("ctx=route=ctx;tier=gold"), "{envoy:#?}");
}

#[test]
fn orders_sluice_cannot_keep_are_refused() {
    let authz = json!({"name": "envoy.filters.http.ext_authz", "typed_config": {
        "@type": EXT_AUTHZ,
        "http_service": {"server_uri": {"uri": "http://a", "cluster": "app", "timeout": "1s"}}}});
    let cors = json!({"name": "envoy.filters.http.cors", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors"}});
    let router = json!({"name": "envoy.filters.http.router", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}});
    let text = refusal_of_filters(json!([authz, cors, router]));
    assert!(
        text.contains("must come before the external authorization filter"),
        "{text}"
    );
    let mut body = authz.clone();
    body["typed_config"]["with_request_body"] = json!({"max_request_bytes": 1024});
    let text = refusal_of_filters(json!([body, router]));
    assert!(text.contains("with_request_body: not supported"), "{text}");
}
