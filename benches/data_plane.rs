//! Micro-benchmarks of the per-request routing and HTTP/1.1 codec work and of configuration
//! compilation.
//!
//! `cargo bench --bench data_plane` (add `-- --quick` for a fast pass). Route tables are compiled
//! with the same code that serves requests, from canonical Envoy JSON.

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Arc;

use arc_swap::ArcSwap;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use http::HeaderMap;
use serde_json::{json, Value};
use sluice_proxy::compile::{route_table, ClusterResolver};
use sluice_proxy::matcher::RequestView;
use sluice_proxy::metrics::{ClusterStats, IstioStats, Metrics};
use sluice_proxy::route_table::RouteTable;
use sluice_proxy::weighted_pick::WeightedPick;

fn compile(rc: &Value) -> RouteTable {
    let clusters = HashMap::new();
    let resolver = ClusterResolver {
        clusters: &clusters,
        validate: false,
    };
    match route_table(rc, "", &resolver) {
        Ok(t) => t,
        Err(e) => panic!("benchmark route table does not compile: {e:?}"),
    }
}

fn route(m: Value) -> Value {
    json!({"match": m, "route": {"cluster": "backend"}})
}

/// `n` virtual hosts, one exact domain each.
fn exact_hosts(n: usize) -> Value {
    let vhosts: Vec<Value> = (0..n)
        .map(|i| json!({"name": format!("v{i}"), "domains": [format!("svc{i}.example.com")], "routes": [route(json!({"prefix": "/"}))]}))
        .collect();
    json!({"virtual_hosts": vhosts})
}

/// `n` virtual hosts, one `*.suffix` domain each.
fn wildcard_hosts(n: usize) -> Value {
    let vhosts: Vec<Value> = (0..n)
        .map(|i| json!({"name": format!("v{i}"), "domains": [format!("*.svc{i}.example.com")], "routes": [route(json!({"prefix": "/"}))]}))
        .collect();
    json!({"virtual_hosts": vhosts})
}

/// One virtual host with `n` prefix routes; the request matches the last one.
fn many_routes(n: usize) -> Value {
    let routes: Vec<Value> = (0..n)
        .map(|i| route(json!({"prefix": format!("/p{i}/")})))
        .collect();
    json!({"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": routes}]})
}

fn header_routes(n: usize) -> Value {
    let routes: Vec<Value> = (0..n)
        .map(|i| route(json!({"prefix": "/", "headers": [{"name": "x-lane", "string_match": {"exact": format!("lane-{i}")}}]})))
        .collect();
    json!({"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": routes}]})
}

fn regex_routes(n: usize) -> Value {
    let routes: Vec<Value> = (0..n)
        .map(|i| route(json!({"safe_regex": {"regex": format!("/r{i}/[0-9]+")}})))
        .collect();
    json!({"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": routes}]})
}

fn view<'a>(host: &'a str, path: &'a str, headers: &'a HeaderMap) -> RequestView<'a> {
    RequestView {
        method: "GET",
        scheme: "http",
        authority: host,
        path,
        query: "",
        path_and_query: path,
        headers,
    }
}

fn route_matching(c: &mut Criterion) {
    let headers = HeaderMap::new();
    let mut g = c.benchmark_group("route_match");
    for n in [10usize, 1_000, 10_000] {
        let t = compile(&exact_hosts(n));
        let host = format!("svc{}.example.com", n / 2);
        g.bench_with_input(BenchmarkId::new("exact_hosts", n), &n, |b, _| {
            b.iter(|| {
                black_box(
                    t.route(&view(black_box(&host), "/x", &headers), 7)
                        .is_some(),
                )
            })
        });
        let t = compile(&wildcard_hosts(n));
        let host = format!("a.svc{}.example.com", n / 2);
        g.bench_with_input(BenchmarkId::new("wildcard_hosts", n), &n, |b, _| {
            b.iter(|| {
                black_box(
                    t.route(&view(black_box(&host), "/x", &headers), 7)
                        .is_some(),
                )
            })
        });
        let t = compile(&many_routes(n));
        let path = format!("/p{}/x", n - 1);
        g.bench_with_input(
            BenchmarkId::new("prefix_routes_last_matches", n),
            &n,
            |b, _| {
                b.iter(|| black_box(t.route(&view("h", black_box(&path), &headers), 7).is_some()))
            },
        );
    }
    let mut h = HeaderMap::new();
    h.insert(
        "x-lane",
        "lane-9"
            .parse()
            .unwrap_or(http::HeaderValue::from_static("lane-9")),
    );
    let t = compile(&header_routes(10));
    g.bench_function("header_routes_10_last_matches", |b| {
        b.iter(|| black_box(t.route(&view("h", "/", &h), 7).is_some()))
    });
    let t = compile(&regex_routes(10));
    g.bench_function("regex_routes_10_last_matches", |b| {
        b.iter(|| black_box(t.route(&view("h", "/r9/123", &headers), 7).is_some()))
    });
    g.finish();
}

fn picks_and_metrics(c: &mut Criterion) {
    let pick = WeightedPick::new([80, 20]).unwrap_or_else(|| unreachable!());
    let mut x = 0u64;
    c.bench_function("weighted_pick", |b| {
        b.iter(|| {
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            black_box(pick.pick_random(black_box(x)))
        })
    });
    let metrics = Metrics::new().unwrap_or_else(|e| panic!("{e}"));
    let cluster = ClusterStats::new(&metrics, "backend");
    let istio = IstioStats::new(
        &metrics,
        // One value per `ISTIO_FIXED_LABELS` entry.
        vec![
            "source".into(),
            "gw".into(),
            "gw".into(),
            "svc".into(),
            "ns".into(),
            "svc.ns.svc.cluster.local".into(),
            "svc".into(),
            "ns".into(),
            "v1".into(),
        ],
    );
    c.bench_function("record_metrics", |b| {
        b.iter(|| {
            cluster.rq_total.inc();
            cluster.record_code(black_box(200));
            cluster.rq_time.observe(1.0);
            istio.record(black_box(200), false, "-", 1.0);
        })
    });
}

/// The HTTP/1.1 codec's per-request work: parsing a typical request head (in place, from a pooled
/// buffer) and writing a response head.
fn http1_codec(c: &mut Criterion) {
    use sluice_proxy::{buffer_pool, http1_codec};
    const REQUEST: &[u8] = b"GET /api/v1/items?page=2 HTTP/1.1\r\nHost: shop.example.com\r\n\
        User-Agent: curl/8.5.0\r\nAccept: */*\r\nCookie: session=abc; user=jason\r\n\
        X-Request-Id: 7f1c2b3a-1111-4222-8333-944455556666\r\n\r\n";
    c.bench_function("http1_parse_request_head", |b| {
        b.iter(|| {
            let mut buf = buffer_pool::take_read();
            buf.extend_from_slice(REQUEST);
            let head = http1_codec::parse_request(&mut buf, 60 * 1024);
            black_box(&head);
            drop(head);
            buffer_pool::give_read(buf);
        })
    });
    let mut headers = HeaderMap::new();
    for (k, v) in [
        ("content-type", "application/json"),
        ("content-length", "512"),
        ("server", "envoy"),
        ("x-envoy-upstream-service-time", "1"),
    ] {
        headers.insert(k, http::HeaderValue::from_static(v));
    }
    c.bench_function("http1_encode_response_head", |b| {
        b.iter(|| {
            let mut out = buffer_pool::take_write();
            http1_codec::encode_response_head(
                &mut out,
                http::StatusCode::OK,
                black_box(&headers),
                http1_codec::HeadExtras::default(),
            );
            black_box(&out);
            buffer_pool::give_write(out);
        })
    });
}

fn compiling(c: &mut Criterion) {
    let rc = many_routes(10_000);
    let hosts = exact_hosts(10_000);
    let slot = ArcSwap::from_pointee(compile(&many_routes(1)));
    let mut g = c.benchmark_group("compile");
    g.sample_size(10);
    g.bench_function("10000_routes_and_swap", |b| {
        b.iter(|| slot.store(Arc::new(compile(black_box(&rc)))))
    });
    g.bench_function("10000_virtual_hosts_and_swap", |b| {
        b.iter(|| slot.store(Arc::new(compile(black_box(&hosts)))))
    });
    g.finish();
}

criterion_group!(
    benches,
    route_matching,
    picks_and_metrics,
    http1_codec,
    compiling
);
criterion_main!(benches);
