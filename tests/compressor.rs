//! The compressor filter through real Envoy 1.40 and through `sluice proxy` on the same
//! bootstrap: which responses are compressed with which coding (gzip, brotli or zstd, by the client's
//! `accept-encoding` and q-values), the headers that change (`content-encoding`, `vary`,
//! `content-length`, `etag`), per-route settings, and the filter's statistics. Bodies are
//! decoded and compared; the compressed bytes themselves may differ between zlib builds.

mod support;

use std::io::Read;

use serde_json::{json, Value};
use support::*;

const COMPRESSOR: &str =
    "type.googleapis.com/envoy.extensions.filters.http.compressor.v3.Compressor";
const PER_ROUTE: &str =
    "type.googleapis.com/envoy.extensions.filters.http.compressor.v3.CompressorPerRoute";
const GZIP: &str = "type.googleapis.com/envoy.extensions.compression.gzip.compressor.v3.Gzip";
const BROTLI: &str = "type.googleapis.com/envoy.extensions.compression.brotli.compressor.v3.Brotli";
const ZSTD: &str = "type.googleapis.com/envoy.extensions.compression.zstd.compressor.v3.Zstd";

fn config(app: u16) -> String {
    bootstrap(
        routes(json!([
            {"match": {"prefix": "/off"}, "route": {"cluster": "app"},
             "typed_per_filter_config": {"gzip": {"@type": PER_ROUTE, "disabled": true}}},
            {"match": {"prefix": "/as-brotli"}, "route": {"cluster": "app"},
             "typed_per_filter_config": {"gzip": {"@type": PER_ROUTE, "overrides": {
                "compressor_library": {"name": "per_route", "typed_config": {"@type": BROTLI, "quality": 5}}
             }}}},
            {"match": {"prefix": "/h2"}, "route": {"cluster": "app_h2"}},
            {"match": {"prefix": "/direct"}, "direct_response": {"status": 200, "body": {
                "inline_string": "a direct response long enough to be compressed by the filter"
            }}},
            {"match": {"prefix": "/"}, "route": {"cluster": "app"}}
        ])),
        vec![cluster("app", &[app]), cluster_h2("app_h2", &[app])],
        json!({"http_filters": [
            {"name": "gzip", "typed_config": {
                "@type": COMPRESSOR,
                "compressor_library": {"name": "text", "typed_config": {
                    "@type": GZIP, "compression_level": "BEST_SPEED", "window_bits": 15
                }},
                "response_direction_config": {
                    "common_config": {"min_content_length": 40},
                    "uncompressible_response_codes": [206]
                }
            }},
            {"name": "zstd", "typed_config": {
                "@type": COMPRESSOR,
                "compressor_library": {"name": "text", "typed_config": {
                    "@type": ZSTD, "compression_level": 10, "enable_checksum": true
                }}
            }},
            {"name": "brotli", "typed_config": {
                "@type": COMPRESSOR,
                "disable_on_etag_header": true,
                "remove_accept_encoding_header": true,
                "compressor_library": {"name": "text", "typed_config": {"@type": BROTLI}}
            }},
            {"name": "envoy.filters.http.router", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
            }}
        ]}),
    )
}

/// The requests: path and `accept-encoding` (`-`: none), and whether it is a HEAD.
const CASES: &[(&str, &str, bool)] = &[
    ("/", "gzip", false),
    ("/", "br", false),
    ("/", "gzip;q=0.5, br", false),
    ("/", "br;q=0.5, gzip;q=0.8", false),
    ("/", "*", false),
    ("/", "gzip;q=0, *", false),
    ("/", "deflate", false),
    ("/", "zstd", false),
    ("/", "zstd;q=0.9, br;q=0.5", false),
    ("/?chunked=1", "zstd", false),
    ("/", "identity", false),
    ("/", "-", false),
    ("/", "gzip", true),
    ("/?ctype=image/png", "gzip", false),
    ("/?ctype=text/html;%20charset=utf-8", "gzip", false),
    ("/?ctype=", "gzip", false),
    ("/?cc=public,%20no-transform", "gzip", false),
    ("/?ce=deflate", "gzip", false),
    ("/?etag=%22v1%22", "gzip", false),
    ("/?etag=W/%22v1%22", "gzip", false),
    ("/?etag=%22v1%22", "br", false),
    ("/?vary=Origin", "gzip", false),
    ("/?chunked=1", "gzip", false),
    ("/?status=206", "gzip", false),
    ("/?status=206", "br", false),
    ("/off", "gzip", false),
    ("/off", "gzip, br", false),
    ("/as-brotli", "gzip, br", false),
    ("/as-brotli", "gzip", false),
    ("/direct", "gzip", false),
    ("/h2", "gzip", false),
    ("/h2?chunked=1", "gzip", false),
];

/// What a client sees: status, content-encoding, vary, content-length (or `-`), etag, and the
/// decoded body's meaning: the `accept-encoding` the upstream saw, or a local body.
type Answer = (u16, String, String, String, String, String);

fn decode(coding: &str, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    match coding {
        "gzip" => {
            flate2::read::GzDecoder::new(body)
                .read_to_end(&mut out)
                .expect("gzip body");
        }
        "br" => {
            brotli::Decompressor::new(body, 4096)
                .read_to_end(&mut out)
                .expect("brotli body");
        }
        "zstd" => {
            zstd::stream::read::Decoder::new(body)
                .expect("zstd decoder")
                .read_to_end(&mut out)
                .expect("zstd body");
        }
        _ => out.extend_from_slice(body),
    }
    out
}

async fn answers(p: &ProxyProcess, client: &H1Client) -> Vec<Answer> {
    let mut out = Vec::new();
    for &(path, accept, head) in CASES {
        let mut b = http::Request::builder().uri(p.url("main", path));
        if head {
            b = b.method("HEAD");
        }
        if accept != "-" {
            b = b.header("accept-encoding", accept);
        }
        let r = send(client, b.body(Default::default()).unwrap()).await;
        let h = |name: &str| {
            let v: Vec<&str> = r
                .headers
                .get_all(name)
                .iter()
                .map(|v| v.to_str().unwrap_or("?"))
                .collect();
            if v.is_empty() {
                "-".to_string()
            } else {
                v.join(",")
            }
        };
        let coding = h("content-encoding");
        let plain = decode(&coding, &r.body);
        let meaning = match serde_json::from_slice::<Value>(&plain) {
            Ok(v) => format!(
                "upstream saw accept-encoding {}",
                v["headers"]["accept-encoding"].as_str().unwrap_or("-")
            ),
            Err(_) => String::from_utf8_lossy(&plain).into_owned(),
        };
        out.push((
            r.status,
            coding,
            h("vary"),
            if r.headers.contains_key("content-length") {
                "length".to_string()
            } else {
                "-".to_string()
            },
            h("etag"),
            meaning,
        ));
    }
    out
}

async fn check(kind: &str, app: u16) -> (Vec<Answer>, Vec<Answer>, Vec<String>) {
    let p = proxy_of(kind, &config(app)).await;
    let h1 = answers(&p, &client_h1()).await;
    let h2 = answers(&p, &client_h2()).await;
    // The filters' statistics under Envoy's names; byte totals depend on the bodies, whose
    // request ids and forwarded headers differ between the two proxies.
    let mut stats: Vec<String> = p
        .admin("/stats/prometheus")
        .await
        .lines()
        .filter(|l| l.starts_with("envoy_http_compressor_"))
        .map(|l| match l.split_once("_bytes{") {
            Some((name, _)) => format!("{name}_bytes"),
            None => l.to_string(),
        })
        .collect();
    stats.sort();
    (h1, h2, stats)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compresses_as_envoy() {
    let app = upstream("app").await;
    let (envoy_h1, envoy_h2, envoy_stats) = check("envoy", app.port()).await;
    // The oracle behaves as the cases mean: gzip for `gzip`, brotli for `br`, zstd for `zstd`,
    // nothing for a client that accepts none.
    let coding = |path: &str, accept: &str| {
        let i = CASES
            .iter()
            .position(|c| c.0 == path && c.1 == accept && !c.2)
            .unwrap();
        envoy_h1[i].1.clone()
    };
    assert_eq!(coding("/", "gzip"), "gzip");
    assert_eq!(coding("/", "br"), "br");
    assert_eq!(coding("/", "zstd"), "zstd");
    assert_eq!(coding("/", "zstd;q=0.9, br;q=0.5"), "zstd");
    assert_eq!(coding("/", "-"), "-");
    assert!(
        envoy_stats
            .iter()
            .any(|l| l.starts_with("envoy_http_compressor_text_gzip_response_compressed{")),
        "{envoy_stats:#?}"
    );
    let (sluice_h1, sluice_h2, sluice_stats) = check("sluice", app.port()).await;
    for (i, case) in CASES.iter().enumerate() {
        assert_eq!(sluice_h1[i], envoy_h1[i], "HTTP/1.1 {case:?}");
        assert_eq!(sluice_h2[i], envoy_h2[i], "h2c {case:?}");
    }
    assert_eq!(sluice_stats, envoy_stats, "statistics");
}

#[test]
fn what_is_not_implemented_is_refused_by_name() {
    let refused = |compressor: Value| {
        refusal_of_filters(json!([
            {"name": "c", "typed_config": compressor},
            {"name": "envoy.filters.http.router", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
            }}
        ]))
    };
    let err = refused(
        json!({"@type": COMPRESSOR, "compressor_library": {"name": "z", "typed_config": {
            "@type": ZSTD, "dictionary": {"inline_string": "shared words"}
        }}}),
    );
    assert!(
        err.contains("compressor_library.typed_config.dictionary: not supported"),
        "{err}"
    );
    let err = refused(json!({"@type": COMPRESSOR,
        "compressor_library": {"name": "g", "typed_config": {"@type": GZIP}},
        "request_direction_config": {}}));
    assert!(
        err.contains("http_filters[0].typed_config.request_direction_config"),
        "{err}"
    );
    let err = refused(json!({"@type": COMPRESSOR, "choose_first": true,
        "compressor_library": {"name": "g", "typed_config": {"@type": GZIP}}}));
    assert!(
        err.contains("http_filters[0].typed_config.choose_first: not supported"),
        "{err}"
    );
}
