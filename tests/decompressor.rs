//! The decompressor filter through real Envoy 1.40 and through `sluice proxy` on the same
//! bootstrap: gzip and brotli request bodies decoded on their way up (or left alone for another
//! coding or `no-transform`), `accept-encoding` advertised, gzip responses decoded on their way
//! down, a gzip bomb stopped by `max_inflate_ratio`; what the upstream and the client see, and
//! every `envoy_http_decompressor_*` statistic, must be the same.

mod support;

use std::io::Write;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use support::*;

const TEXT: &str = "the quick brown fox jumps over the lazy dog, again and again and again; ";

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn brotli(data: &[u8]) -> Vec<u8> {
    let mut w = brotli::CompressorWriter::new(Vec::new(), 4096, 5, 22);
    w.write_all(data).unwrap();
    w.into_inner()
}

/// An upstream that answers with what it received (the headers that matter and the body), or,
/// for `/gz`, a gzip body (with `?nt` also `cache-control: no-transform`).
async fn recorder() -> (u16, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let service = service_fn(|req: http::Request<hyper::body::Incoming>| async move {
                    let path = req.uri().path().to_string();
                    let query = req.uri().query().unwrap_or("").to_string();
                    let h = |name: &str| {
                        req.headers()
                            .get(name)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("-")
                            .to_string()
                    };
                    let seen = json!({
                        "content-encoding": h("content-encoding"),
                        "content-length": h("content-length"),
                        "transfer-encoding": h("transfer-encoding"),
                        "accept-encoding": h("accept-encoding"),
                    });
                    let body = req
                        .into_body()
                        .collect()
                        .await
                        .map(|c| c.to_bytes())
                        .unwrap_or_default();
                    let resp = if path == "/gz" {
                        let mut b = http::Response::builder().header("content-encoding", "gzip");
                        if query.contains("nt") {
                            b = b.header("cache-control", "no-transform");
                        }
                        b.body(Full::new(Bytes::from(gzip(TEXT.repeat(20).as_bytes()))))
                    } else {
                        let mut seen = seen;
                        seen["body"] = json!(String::from_utf8_lossy(&body));
                        http::Response::builder().body(Full::new(Bytes::from(seen.to_string())))
                    };
                    Ok::<_, std::convert::Infallible>(resp.unwrap())
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    (port, task)
}

fn decompressor(name: &str, library: Value, response: bool) -> Value {
    let mut c = json!({
        "@type": "type.googleapis.com/envoy.extensions.filters.http.decompressor.v3.Decompressor",
        "decompressor_library": {"name": name, "typed_config": library},
    });
    if !response {
        c["response_direction_config"] =
            json!({"common_config": {"enabled": {"default_value": false, "runtime_key": "off"}}});
    }
    json!({"name": format!("decompressor-{name}"), "typed_config": c})
}

fn config(app: u16) -> String {
    bootstrap(
        routes(json!([{"match": {"prefix": "/"}, "route": {"cluster": "app"}}])),
        vec![cluster("app", &[app])],
        json!({"http_filters": [
            decompressor("gz", json!({
                "@type": "type.googleapis.com/envoy.extensions.compression.gzip.decompressor.v3.Gzip",
                "max_inflate_ratio": 200
            }), true),
            decompressor("brotli-up", json!({
                "@type": "type.googleapis.com/envoy.extensions.compression.brotli.decompressor.v3.Brotli"
            }), false),
            {"name": "envoy.filters.http.router", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
            }}
        ]}),
    )
}

/// Path, request headers, request body.
type Case = (&'static str, Vec<(&'static str, &'static str)>, Vec<u8>);

fn cases() -> Vec<Case> {
    let text = TEXT.repeat(40);
    let bomb = gzip(&vec![b'z'; 1 << 20]);
    vec![
        (
            "/",
            vec![("content-encoding", "gzip")],
            gzip(text.as_bytes()),
        ),
        (
            "/",
            vec![("content-encoding", "GZIP ")],
            gzip(text.as_bytes()),
        ),
        (
            "/",
            vec![("content-encoding", "br")],
            brotli(text.as_bytes()),
        ),
        (
            "/",
            vec![
                ("content-encoding", "gzip"),
                ("cache-control", "no-transform"),
            ],
            gzip(text.as_bytes()),
        ),
        ("/", vec![("content-encoding", "deflate")], b"raw".to_vec()),
        ("/", vec![("content-encoding", "gzip")], bomb),
        ("/", vec![("accept-encoding", "br")], Vec::new()),
        ("/", vec![("accept-encoding", "gzip;q=0.5")], Vec::new()),
        ("/gz", vec![], Vec::new()),
        ("/gz?nt", vec![], Vec::new()),
    ]
}

async fn check(kind: &str, app: u16) -> (Vec<String>, Vec<String>) {
    let p = proxy_of(kind, &config(app)).await;
    let client = client_h1();
    let mut out = Vec::new();
    for (path, headers, body) in cases() {
        let method = if body.is_empty() { "GET" } else { "POST" };
        let mut b = http::Request::builder()
            .method(method)
            .uri(p.url("main", path));
        for (k, v) in &headers {
            b = b.header(*k, *v);
        }
        let r = send(&client, b.body(Full::new(Bytes::from(body))).unwrap()).await;
        let h = |name: &str| {
            r.headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-")
                .to_string()
        };
        let body = String::from_utf8_lossy(&r.body);
        let shown = match serde_json::from_str::<Value>(&body) {
            Ok(mut v) => {
                // Long bodies by length and head.
                if let Some(b) = v["body"].as_str().map(str::to_string) {
                    v["body"] = json!(format!("{} bytes: {:.40}", b.len(), b));
                }
                v.to_string()
            }
            Err(_) => format!("{} bytes: {:.40}", r.body.len(), body),
        };
        out.push(format!(
            "{method} {path} {headers:?} -> {} ce={} cl={} {shown}",
            r.status,
            h("content-encoding"),
            h("content-length") != "-",
        ));
    }
    (out, p.stats("envoy_http_decompressor").await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decompressor_decodes_as_envoy() {
    let (app, _task) = recorder().await;
    let (envoy, envoy_stats) = check("envoy", app).await;
    // Pin what Envoy does with the cases that say the most.
    assert!(
        envoy[0].contains("2880 bytes") && envoy[0].contains("\"content-length\":\"-\""),
        "{envoy:#?}"
    );
    assert!(
        envoy[3].contains("\"content-encoding\":\"gzip\""),
        "no-transform: {envoy:#?}"
    );
    assert!(
        envoy[5].contains("212992 bytes"),
        "the bomb stops: {envoy:#?}"
    );
    assert!(
        envoy[7].contains("\"accept-encoding\":\"gzip\""),
        "{envoy:#?}"
    );
    assert!(envoy[8].contains("ce=- cl=false 1440 bytes"), "{envoy:#?}");
    let (sluice, sluice_stats) = check("sluice", app).await;
    assert_eq!(sluice, envoy);
    assert_eq!(sluice_stats, envoy_stats, "statistics");
}

#[test]
fn response_decoding_before_a_compressor_is_refused() {
    let e = refusal_of_filters(json!([
        decompressor("gz", json!({
            "@type": "type.googleapis.com/envoy.extensions.compression.gzip.decompressor.v3.Gzip"
        }), true),
        {"name": "envoy.filters.http.compressor", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.compressor.v3.Compressor",
            "compressor_library": {"name": "gzip", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.compression.gzip.compressor.v3.Gzip"
            }}
        }},
        {"name": "envoy.filters.http.router", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
        }}
    ]));
    assert!(
        e.contains("http_filters[1]: a compressor filter must come before the decompressor filters that decode responses"),
        "{e}"
    );
}
