//! HTTP/2 on the wire, through a real `sluice proxy`: the proxy's own HTTP/2 server codec under
//! flow control (bodies larger than every window, both ways, many streams at once), and its
//! answers to broken or hostile frames compared with real Envoy's on the same bootstrap.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;
use sluice_proxy::hpack::{Decoder, Field, Pseudo};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const DATA: u8 = 0;
const HEADERS: u8 = 1;
const RST_STREAM: u8 = 3;
const SETTINGS: u8 = 4;
const PUSH_PROMISE: u8 = 5;
const PING: u8 = 6;
const GOAWAY: u8 = 7;
const WINDOW_UPDATE: u8 = 8;
const END_STREAM: u8 = 1;
const END_HEADERS: u8 = 4;

/// A raw frame: type, flags, stream, payload.
type RawFrame = (u8, u8, u32, Vec<u8>);

/// How a stream (or the connection) ended, as a client sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Response(u16),
    Reset(u32),
    GoAway(u32),
    PingAck(Vec<u8>),
    Closed,
    Silent,
}

/// A minimal HTTP/2 client speaking raw frames.
struct Raw {
    s: TcpStream,
    buf: Vec<u8>,
    decoder: Decoder,
}

fn put_int(out: &mut Vec<u8>, value: usize, prefix: u8, flags: u8) {
    let max = (1usize << prefix) - 1;
    if value < max {
        out.push(flags | value as u8);
        return;
    }
    out.push(flags | max as u8);
    let mut rest = value - max;
    while rest >= 128 {
        out.push((rest % 128) as u8 | 0x80);
        rest /= 128;
    }
    out.push(rest as u8);
}

/// A header block of literals without indexing.
fn block(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (n, v) in fields {
        out.push(0);
        put_int(&mut out, n.len(), 7, 0);
        out.extend_from_slice(n.as_bytes());
        put_int(&mut out, v.len(), 7, 0);
        out.extend_from_slice(v.as_bytes());
    }
    out
}

fn get_fields<'a>(extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut f = vec![
        (":method", "GET"),
        (":scheme", "http"),
        (":path", "/"),
        (":authority", "example.com"),
    ];
    f.extend_from_slice(extra);
    f
}

impl Raw {
    async fn connect(addr: std::net::SocketAddr) -> Raw {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.set_nodelay(true).unwrap();
        s.write_all(PREFACE).await.unwrap();
        let mut raw = Raw {
            s,
            buf: Vec::new(),
            decoder: Decoder::default(),
        };
        raw.send(SETTINGS, 0, 0, &[]).await;
        raw
    }

    async fn send(&mut self, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
        let len = payload.len();
        let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        // The peer may already have closed: what it said is read afterwards.
        let _ = self.s.write_all(&f).await;
    }

    /// The next frame, or `None` at the end of the connection or after `wait` of silence.
    async fn frame(&mut self, wait: Duration) -> Option<Option<RawFrame>> {
        loop {
            if self.buf.len() >= 9 {
                let len = (usize::from(self.buf[0]) << 16)
                    | (usize::from(self.buf[1]) << 8)
                    | usize::from(self.buf[2]);
                if self.buf.len() >= 9 + len {
                    let head: Vec<u8> = self.buf.drain(..9).collect();
                    let payload: Vec<u8> = self.buf.drain(..len).collect();
                    let stream =
                        u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
                    return Some(Some((head[3], head[4], stream, payload)));
                }
            }
            let mut chunk = [0u8; 16384];
            match tokio::time::timeout(wait, self.s.read(&mut chunk)).await {
                Err(_) => return None,
                Ok(Ok(0)) => return Some(None),
                Ok(Err(e)) => {
                    if std::env::var("H2_DEBUG").is_ok() {
                        eprintln!("  read error {e}");
                    }
                    return Some(None);
                }
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Read until stream `id` ends, the connection ends, or a PING is answered.
    async fn outcome(&mut self, id: u32) -> Outcome {
        let mut status = None;
        loop {
            let Some(frame) = self.frame(Duration::from_secs(3)).await else {
                return Outcome::Silent;
            };
            let Some((kind, flags, stream, payload)) = frame else {
                return Outcome::Closed;
            };
            if std::env::var("H2_DEBUG").is_ok() {
                eprintln!("  frame kind {kind} flags {flags} stream {stream} {payload:?}");
            }
            match kind {
                GOAWAY => {
                    return Outcome::GoAway(u32::from_be_bytes([
                        payload[4], payload[5], payload[6], payload[7],
                    ]))
                }
                PING if flags & 1 != 0 => return Outcome::PingAck(payload),
                RST_STREAM if stream == id => {
                    return Outcome::Reset(u32::from_be_bytes([
                        payload[0], payload[1], payload[2], payload[3],
                    ]))
                }
                HEADERS if stream == id => {
                    // Padding and priority are not used by either server.
                    let block = Bytes::from(payload);
                    let mut s = None;
                    self.decoder
                        .decode(&block, |f| {
                            if let Field::Pseudo(Pseudo::Status, v) = f {
                                s = std::str::from_utf8(&v).ok().and_then(|v| v.parse().ok());
                            }
                        })
                        .unwrap();
                    if s.is_some_and(|s: u16| s >= 200) {
                        status = s;
                    }
                    if flags & END_STREAM != 0 {
                        return Outcome::Response(status.unwrap_or(0));
                    }
                }
                HEADERS => {
                    // Another stream's head still updates the table.
                    let _ = self.decoder.decode(&Bytes::from(payload), |_| {});
                }
                DATA if stream == id && flags & END_STREAM != 0 => {
                    return Outcome::Response(status.unwrap_or(0));
                }
                _ => {}
            }
        }
    }
}

/// One case: frames sent on a fresh connection, then the outcome for stream 1.
async fn case(addr: std::net::SocketAddr, frames: &[RawFrame]) -> Outcome {
    let mut raw = Raw::connect(addr).await;
    for (kind, flags, stream, payload) in frames {
        raw.send(*kind, *flags, *stream, payload).await;
    }
    raw.outcome(1).await
}

fn headers(stream: u32, fields: &[(&str, &str)], end_stream: bool) -> RawFrame {
    let flags = END_HEADERS | if end_stream { END_STREAM } else { 0 };
    (HEADERS, flags, stream, block(fields))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_and_hostile_frames_get_envoys_answers() {
    let up = upstream("app").await;
    let rc = routes(json!([{"match": {"prefix": "/"}, "route": {"cluster": "app"}}]));
    let config = bootstrap(
        rc,
        vec![cluster("app", &[up.port()])],
        json!({"codec_type": "HTTP2", "max_request_headers_kb": 8}),
    );
    let envoy = envoy(&config).await;
    let sluice = sluice(&config).await;
    let big = "a".repeat(9 * 1024);
    let cases: Vec<(&str, Vec<RawFrame>)> = vec![
        ("a plain GET", vec![headers(1, &get_fields(&[]), true)]),
        (
            "a POST with its body",
            vec![
                headers(
                    1,
                    &[
                        (":method", "POST"),
                        (":scheme", "http"),
                        (":path", "/"),
                        (":authority", "x"),
                        ("content-length", "3"),
                    ],
                    false,
                ),
                (DATA, END_STREAM, 1, b"abc".to_vec()),
            ],
        ),
        ("PING", vec![(PING, 0, 0, b"12345678".to_vec())]),
        (
            "upper-case header name",
            vec![headers(1, &get_fields(&[("X-Up", "1")]), true)],
        ),
        (
            "connection-specific header",
            vec![headers(
                1,
                &get_fields(&[("connection", "keep-alive")]),
                true,
            )],
        ),
        (
            "te other than trailers",
            vec![headers(1, &get_fields(&[("te", "gzip")]), true)],
        ),
        (
            "no :path",
            vec![headers(
                1,
                &[(":method", "GET"), (":scheme", "http"), (":authority", "x")],
                true,
            )],
        ),
        (
            "pseudo-header after a regular one",
            vec![headers(
                1,
                &[
                    (":method", "GET"),
                    (":scheme", "http"),
                    ("x-a", "1"),
                    (":path", "/"),
                ],
                true,
            )],
        ),
        (
            "unknown pseudo-header",
            vec![headers(1, &get_fields(&[(":foo", "1")]), true)],
        ),
        (
            "body longer than content-length",
            vec![
                headers(
                    1,
                    &get_fields(&[("content-length", "2")])
                        .into_iter()
                        .map(|(n, v)| if n == ":method" { (n, "POST") } else { (n, v) })
                        .collect::<Vec<_>>(),
                    false,
                ),
                (DATA, END_STREAM, 1, b"abc".to_vec()),
            ],
        ),
        (
            "header list over max_request_headers_kb",
            vec![headers(1, &get_fields(&[("x-big", big.as_str())]), true)],
        ),
        ("even stream id", vec![headers(2, &get_fields(&[]), true)]),
        (
            "HPACK index out of the table",
            vec![(HEADERS, END_HEADERS | END_STREAM, 1, vec![0xff, 0x7f])],
        ),
        (
            "frame over SETTINGS_MAX_FRAME_SIZE",
            vec![(DATA, 0, 1, vec![0; 20_000])],
        ),
        (
            "DATA on a stream never opened",
            vec![(DATA, 0, 1, b"x".to_vec())],
        ),
        (
            "connection window overflow",
            vec![(WINDOW_UPDATE, 0, 0, 0x7fff_ffffu32.to_be_bytes().to_vec())],
        ),
        (
            "zero WINDOW_UPDATE on the connection",
            vec![(WINDOW_UPDATE, 0, 0, 0u32.to_be_bytes().to_vec())],
        ),
        (
            "SETTINGS_ENABLE_PUSH = 2",
            vec![(SETTINGS, 0, 0, vec![0, 2, 0, 0, 0, 2])],
        ),
        (
            "PUSH_PROMISE from the client",
            vec![(PUSH_PROMISE, END_HEADERS, 1, vec![0, 0, 0, 3])],
        ),
    ];
    let mut mismatches = Vec::new();
    for (name, frames) in &cases {
        let want = case(envoy.listener("main"), frames).await;
        let got = case(sluice.listener("main"), frames).await;
        eprintln!("{name}: envoy {want:?}, sluice {got:?}");
        // Envoy closes the connection at once on some errors, so its GOAWAY is lost to the
        // reset of the close; a client sees the connection end either way.
        let same = want == got
            || (want == Outcome::Closed && matches!(got, Outcome::GoAway(code) if code != 0));
        if !same {
            mismatches.push(format!("{name}: envoy {want:?}, sluice {got:?}"));
        }
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
}

/// A proxy in front of one echo upstream, HTTP/2 only, with these connection-manager settings.
async fn h2_proxy(hcm: serde_json::Value) -> (Upstream, Upstream, ProxyProcess) {
    let up = upstream("app").await;
    let grpc = upstream("grpc").await;
    let rc = routes(json!([
        {"match": {"prefix": "/", "grpc": {}}, "route": {"cluster": "grpc"}},
        {"match": {"prefix": "/"}, "route": {"cluster": "app"}}
    ]));
    let mut extra = json!({"codec_type": "HTTP2"});
    for (k, v) in hcm.as_object().unwrap() {
        extra[k] = v.clone();
    }
    let p = sluice(&bootstrap(
        rc,
        vec![
            cluster("app", &[up.port()]),
            cluster_h2("grpc", &[grpc.port()]),
        ],
        extra,
    ))
    .await;
    (up, grpc, p)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_larger_than_every_window_flow_both_ways() {
    // Small windows on both sides: the proxy waits for the client's WINDOW_UPDATEs to send, and
    // gives its own back as the upstream takes the request bodies.
    let (_up, _grpc, p) = h2_proxy(json!({"http2_protocol_options": {
        "initial_stream_window_size": 65535, "initial_connection_window_size": 131072}}))
    .await;
    let io = TcpStream::connect(p.listener("main")).await.unwrap();
    let (send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .initial_stream_window_size(65_535)
        .initial_connection_window_size(100_000)
        .handshake(TokioIo::new(io))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..3u64 {
        // Downloads of 3 MB, all at once on the one connection.
        let mut down = send.clone();
        tasks.spawn(async move {
            let n = 3_000_000 + i;
            let req = Request::get(format!("http://x/?bytes={n}"))
                .body(Full::new(Bytes::new()))
                .unwrap();
            let r = down.send_request(req).await.unwrap();
            assert_eq!(r.status(), 200);
            let body = r.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(body.len() as u64, n, "download {i}");
            assert!(body.iter().all(|b| *b == b'x'));
        });
        // Uploads of 5 MB, counted by the upstream.
        let mut up = send.clone();
        tasks.spawn(async move {
            let n = 5_000_000 + i as usize;
            let req = Request::post("http://x/upload")
                .body(Full::new(Bytes::from(vec![b'u'; n])))
                .unwrap();
            let r = up.send_request(req).await.unwrap();
            assert_eq!(r.status(), 200);
            let body = r.into_body().collect().await.unwrap().to_bytes();
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(v["body_len"], n, "upload {i}");
        });
    }
    // And a gRPC call echoed back through an HTTP/2 upstream, trailers included.
    let mut echo = send.clone();
    tasks.spawn(async move {
        let payload: Vec<u8> = (0..2_000_000u32).map(|i| (i % 251) as u8).collect();
        let req = Request::post("http://x/pkg.Echo/Big")
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(Full::new(Bytes::from(payload.clone())))
            .unwrap();
        let r = echo.send_request(req).await.unwrap();
        assert_eq!(r.status(), 200);
        let collected = r.into_body().collect().await.unwrap();
        let trailers = collected.trailers().cloned().expect("trailers");
        assert_eq!(trailers["grpc-status"], "0");
        assert!(collected.to_bytes() == payload, "echoed body differs");
    });
    let all = async {
        while let Some(r) = tasks.join_next().await {
            r.unwrap();
        }
    };
    tokio::time::timeout(Duration::from_secs(60), all)
        .await
        .expect("bodies stalled: a window was never given back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_over_the_limit_are_refused_and_the_rest_go_on() {
    let (_up, _grpc, p) =
        h2_proxy(json!({"http2_protocol_options": {"max_concurrent_streams": 2}})).await;
    let slow = get_fields(&[]);
    let slow: Vec<(&str, &str)> = slow
        .into_iter()
        .map(|(n, v)| {
            if n == ":path" {
                (n, "/?delay_ms=300")
            } else {
                (n, v)
            }
        })
        .collect();
    let mut raw = Raw::connect(p.listener("main")).await;
    raw.send(HEADERS, END_HEADERS | END_STREAM, 1, &block(&slow))
        .await;
    raw.send(HEADERS, END_HEADERS | END_STREAM, 3, &block(&slow))
        .await;
    raw.send(HEADERS, END_HEADERS | END_STREAM, 5, &block(&slow))
        .await;
    // The third stream is over the limit of two.
    assert_eq!(raw.outcome(5).await, Outcome::Reset(7));
    // A reset stream ends alone: the others still get their answers.
    raw.send(RST_STREAM, 0, 1, &8u32.to_be_bytes()).await;
    assert_eq!(raw.outcome(3).await, Outcome::Response(200));
    raw.send(
        HEADERS,
        END_HEADERS | END_STREAM,
        7,
        &block(&get_fields(&[])),
    )
    .await;
    assert_eq!(raw.outcome(7).await, Outcome::Response(200));

    // Many streams at once on one connection: the client keeps to the limit the proxy announced.
    let io = TcpStream::connect(p.listener("main")).await.unwrap();
    let (send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake(TokioIo::new(io))
        .await
        .unwrap();
    tokio::spawn(conn);
    // One exchange first: the proxy's SETTINGS come before its first response, so the client
    // knows the limit before it opens the rest (streams sent earlier would be refused, as RFC 9113
    // allows and Envoy does).
    let mut first = send.clone();
    let req = Request::get("http://x/first")
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(first.send_request(req).await.unwrap().status(), 200);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..100 {
        let mut send = send.clone();
        tasks.spawn(async move {
            send.ready().await.unwrap();
            let req = Request::get(format!("http://x/many/{i}"))
                .body(Full::new(Bytes::new()))
                .unwrap();
            send.send_request(req).await.unwrap().status()
        });
    }
    while let Some(status) = tasks.join_next().await {
        assert_eq!(status.unwrap(), 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_resets_streams_faster_than_it_lets_them_finish_is_closed() {
    let (_up, _grpc, p) = h2_proxy(json!({})).await;
    let slow: Vec<(&str, &str)> = get_fields(&[])
        .into_iter()
        .map(|(n, v)| {
            if n == ":path" {
                (n, "/?delay_ms=5000")
            } else {
                (n, v)
            }
        })
        .collect();
    let mut raw = Raw::connect(p.listener("main")).await;
    let mut id = 1;
    for _ in 0..250 {
        raw.send(HEADERS, END_HEADERS | END_STREAM, id, &block(&slow))
            .await;
        raw.send(RST_STREAM, 0, id, &8u32.to_be_bytes()).await;
        id += 2;
    }
    // ENHANCE_YOUR_CALM.
    assert_eq!(raw.outcome(id).await, Outcome::GoAway(11));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_authority_goes_upstream_as_the_one_host_as_in_envoy() {
    // An HTTP/2 request's `:authority` is the HTTP/1.1 upstream's `Host`; a `host` field that
    // differs from it (RFC 9113 §8.3.1) does not get through beside it. Routing, host rewrites
    // and the stripped port work from the same value.
    let up = upstream("app").await;
    let rc = json!({"virtual_hosts": [
        {"name": "a", "domains": ["a.example"], "routes": [
            {"match": {"prefix": "/rewrite"},
             "route": {"cluster": "app", "host_rewrite_literal": "rewritten.example"}},
            {"match": {"prefix": "/"}, "route": {"cluster": "app"}}]},
        {"name": "other", "domains": ["*"], "routes": [
            {"match": {"prefix": "/"}, "direct_response": {"status": 404}}]}
    ]});
    let config = bootstrap(
        rc,
        vec![cluster("app", &[up.port()])],
        json!({"codec_type": "HTTP2", "strip_any_host_port": true}),
    );
    let envoy = envoy(&config).await;
    let sluice = sluice(&config).await;
    type Case<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)]);
    let cases: [Case; 5] = [
        ("plain", "http://a.example/", &[]),
        ("with its port", "http://a.example:8080/", &[]),
        ("mixed case", "http://A.Example/", &[]),
        (
            "a host beside it",
            "http://a.example/",
            &[("host", "b.example")],
        ),
        ("rewritten", "http://a.example:9/rewrite", &[]),
    ];
    for (name, url, headers) in cases {
        let mut seen = Vec::new();
        for p in [&envoy, &sluice] {
            let mut b = Request::get(url);
            for (k, v) in headers {
                b = b.header(*k, *v);
            }
            // The connection goes to the proxy; the URL's authority is the request's.
            let req = b.body(Full::new(Bytes::new())).unwrap();
            let io = TcpStream::connect(p.listener("main")).await.unwrap();
            let (mut send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
                .handshake(TokioIo::new(io))
                .await
                .unwrap();
            tokio::spawn(conn);
            let r = send.send_request(req).await.unwrap();
            let status = r.status().as_u16();
            let body = r.into_body().collect().await.unwrap().to_bytes();
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            seen.push((
                status,
                v["host"].clone(),
                v["headers"]["x-envoy-original-host"].clone(),
                v["headers"]["host"].clone(),
            ));
        }
        assert_eq!(seen[0], seen[1], "{name}: envoy, then sluice");
        if name == "plain" {
            assert_eq!(seen[1].1, "a.example", "{name}");
        }
    }
}
