//! HTTP/1.1 on the wire, through a real `sluice proxy`: what a client sees byte for byte from the
//! proxy's own connection driver (pipelining, chunked bodies both ways, `Expect: 100-continue`,
//! HTTP/1.0), refused requests compared with real Envoy's answers, and that idle keep-alive
//! connections hold no buffers.

mod support;

use std::time::Duration;

use serde_json::json;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A response read off the wire.
#[derive(Debug)]
struct Wire {
    status: u16,
    /// Lower-cased head.
    head: String,
    body: Vec<u8>,
    /// Lower-cased trailers of a chunked body.
    trailers: String,
}

impl Wire {
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&self.body)))
    }
}

/// Read one response (head, then a `content-length` or chunked body) from `s`, with `buf`
/// holding bytes read past the previous response.
async fn read_response(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Wire> {
    read_message(s, buf, false).await
}

/// [`read_response`] for a response that has no body whatever its headers say (to HEAD).
async fn read_head_response(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Wire> {
    read_message(s, buf, true).await
}

async fn read_message(s: &mut TcpStream, buf: &mut Vec<u8>, bodiless: bool) -> Option<Wire> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if fill(s, buf, deadline).await == 0 {
            return None;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
    buf.drain(..head_end);
    let status = head[9..12].parse().unwrap();
    let header = |name: &str| {
        head.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")).map(str::to_string))
    };
    let mut body = Vec::new();
    let mut trailers = String::new();
    if bodiless || status == 100 || status == 204 || status == 304 {
        // no body
    } else if let Some(n) = header("content-length") {
        let n: usize = n.trim().parse().unwrap();
        while buf.len() < n {
            assert!(fill(s, buf, deadline).await > 0, "closed inside a body");
        }
        body = buf.drain(..n).collect();
    } else if header("transfer-encoding").as_deref() == Some("chunked") {
        loop {
            let line_end = loop {
                if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
                    break i;
                }
                assert!(
                    fill(s, buf, deadline).await > 0,
                    "closed inside a chunk size"
                );
            };
            let size =
                usize::from_str_radix(std::str::from_utf8(&buf[..line_end]).unwrap().trim(), 16)
                    .unwrap();
            buf.drain(..line_end + 2);
            if size == 0 {
                // Trailers (if any), then the empty line.
                let end = loop {
                    if buf.starts_with(b"\r\n") {
                        break 2;
                    }
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break i + 4;
                    }
                    assert!(fill(s, buf, deadline).await > 0, "closed inside trailers");
                };
                trailers = String::from_utf8_lossy(&buf[..end]).to_lowercase();
                buf.drain(..end);
                break;
            }
            while buf.len() < size + 2 {
                assert!(fill(s, buf, deadline).await > 0, "closed inside a chunk");
            }
            body.extend(buf.drain(..size));
            buf.drain(..2);
        }
    } else {
        while fill(s, buf, deadline).await > 0 {}
        body = std::mem::take(buf);
    }
    Some(Wire {
        status,
        head,
        body,
        trailers,
    })
}

/// Read what arrives into `buf`; 0 at end of stream.
async fn fill(s: &mut TcpStream, buf: &mut Vec<u8>, deadline: tokio::time::Instant) -> usize {
    let mut chunk = [0u8; 4096];
    let n = tokio::time::timeout_at(deadline, s.read(&mut chunk))
        .await
        .expect("response timed out")
        .unwrap_or(0);
    buf.extend_from_slice(&chunk[..n]);
    n
}

async fn is_closed(s: &mut TcpStream) -> bool {
    let mut b = [0u8; 16];
    matches!(
        tokio::time::timeout(Duration::from_secs(5), s.read(&mut b)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_chunked_and_100_continue_requests_are_proxied_in_order() {
    let (_up, p) = app_proxy(json!({})).await;
    let mut s = TcpStream::connect(p.listener("main")).await.unwrap();
    let mut buf = Vec::new();

    // Three requests in one write: answered one after another, in order.
    s.write_all(
        b"GET /one HTTP/1.1\r\nHost: x\r\n\r\n\
          POST /two HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello\
          GET /three HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await
    .unwrap();
    for (path, len) in [("/one", 0), ("/two", 5), ("/three", 0)] {
        let r = read_response(&mut s, &mut buf).await.expect("response");
        assert_eq!(r.status, 200, "{}", r.head);
        let j = r.json();
        assert_eq!(j["path"], path);
        assert_eq!(j["body_len"], len);
    }

    // A chunked body, sent in pieces with a pause, with chunk extensions and trailers.
    s.write_all(b"POST /chunked HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    s.write_all(b"6\r\n world\r\n0\r\nx-trailer: t\r\n\r\n")
        .await
        .unwrap();
    let r = read_response(&mut s, &mut buf).await.expect("response");
    assert_eq!(r.json()["body_len"], 11, "{}", r.head);

    // Expect: 100-continue is answered by the proxy and not forwarded.
    s.write_all(
        b"PUT /expect HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n",
    )
    .await
    .unwrap();
    let cont = read_response(&mut s, &mut buf).await.expect("100");
    assert_eq!(cont.status, 100);
    s.write_all(b"abc").await.unwrap();
    let r = read_response(&mut s, &mut buf).await.expect("response");
    let j = r.json();
    assert_eq!(j["body_len"], 3);
    assert!(j["headers"].get("expect").is_none(), "{j}");

    // `Connection: close` ends the connection after the response, which says so.
    s.write_all(b"GET /last HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let r = read_response(&mut s, &mut buf).await.expect("response");
    assert!(r.head.contains("connection: close"), "{}", r.head);
    assert!(is_closed(&mut s).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http10_is_served_when_accepted() {
    let (_up, p) = app_proxy(json!({"http_protocol_options": {"accept_http_10": true}})).await;
    let addr = p.listener("main");

    // Without keep-alive: answered, then closed.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /old HTTP/1.0\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let r = read_response(&mut s, &mut Vec::new())
        .await
        .expect("response");
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["path"], "/old");
    assert!(is_closed(&mut s).await);

    // With keep-alive: the response says keep-alive and the connection stays open.
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut buf = Vec::new();
    for _ in 0..2 {
        s.write_all(b"GET /ka HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\n\r\n")
            .await
            .unwrap();
        let r = read_response(&mut s, &mut buf).await.expect("response");
        assert!(r.head.contains("connection: keep-alive"), "{}", r.head);
    }
}

/// What a client learns from a refused request: status, body, and whether the proxy closed.
async fn refusal(addr: std::net::SocketAddr, req: &[u8]) -> (u16, String, bool) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(req).await.unwrap();
    let r = read_response(&mut s, &mut Vec::new())
        .await
        .expect("response");
    let closed = r.head.contains("connection: close") && is_closed(&mut s).await;
    (
        r.status,
        String::from_utf8_lossy(&r.body).into_owned(),
        closed,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_are_refused_exactly_as_envoy_refuses_them() {
    // Real Envoy 1.40 is the oracle: the same bootstrap, the same bytes, the same answer.
    let up = upstream("app").await;
    let rc = routes(json!([{"match": {"prefix": "/"}, "route": {"cluster": "app"}}]));
    let config = bootstrap(
        rc,
        vec![cluster("app", &[up.port()])],
        json!({"max_request_headers_kb": 8, "request_headers_timeout": "0.3s"}),
    );
    let envoy = envoy(&config).await;
    let sluice = sluice(&config).await;
    let many_headers: String = (0..101).map(|i| format!("h{i}: v\r\n")).collect();
    let cases: Vec<(&str, String)> = vec![
        ("garbage", "NOT HTTP AT ALL\r\n\r\n".into()),
        (
            "content-length and chunked",
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".into(),
        ),
        (
            "a coding other than chunked",
            "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n".into(),
        ),
        (
            "head over max_request_headers_kb",
            format!("GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "a".repeat(9 * 1024)),
        ),
        (
            "101 headers",
            format!("GET / HTTP/1.1\r\nHost: x\r\n{many_headers}\r\n"),
        ),
        ("HTTP/1.0 (accept_http_10 off)", "GET / HTTP/1.0\r\nHost: x\r\n\r\n".into()),
        ("HTTP/1.1 without a host", "GET / HTTP/1.1\r\n\r\n".into()),
        (
            "head not complete within request_headers_timeout",
            "GET / HTTP/1.1\r\nHost: x\r\n".into(),
        ),
    ];
    for (name, req) in &cases {
        let want = refusal(envoy.listener("main"), req.as_bytes()).await;
        let got = refusal(sluice.listener("main"), req.as_bytes()).await;
        assert!(want.0 >= 400, "{name}: Envoy accepted it: {want:?}");
        assert_eq!(got, want, "{name}: sluice (left) vs Envoy (right)");
    }
}

/// An upstream that answers every request with a chunked body and a trailer (HEAD: no body).
async fn chunked_upstream() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                loop {
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut chunk).await {
                            Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                            _ => return,
                        }
                    }
                    let head = buf.starts_with(b"HEAD ");
                    buf.clear();
                    let reply: &[u8] = if head {
                        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                    } else {
                        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
                        4\r\nWiki\r\n5\r\npedia\r\n0\r\nx-checksum: 42\r\n\r\n"
                    };
                    if s.write_all(reply).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_response_is_streamed_chunked_and_the_connection_reused() {
    let port = chunked_upstream().await;
    let rc = routes(json!([{"match": {"prefix": "/"}, "route": {"cluster": "chunky"}}]));
    let p = sluice(&bootstrap(rc, vec![cluster("chunky", &[port])], json!({}))).await;
    let mut s = TcpStream::connect(p.listener("main")).await.unwrap();
    let mut buf = Vec::new();
    for _ in 0..3 {
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let r = read_response(&mut s, &mut buf).await.expect("response");
        assert_eq!(r.status, 200);
        assert!(r.head.contains("transfer-encoding: chunked"), "{}", r.head);
        assert_eq!(r.body, b"Wikipedia");
        // Envoy's HTTP/1 codec drops trailers unless `enable_trailers` is set; so does Sluice.
        assert_eq!(r.trailers, "\r\n");
    }
    // A HEAD response has no body, whatever its framing says.
    s.write_all(b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let r = read_head_response(&mut s, &mut buf)
        .await
        .expect("the HEAD response");
    assert_eq!(r.status, 200);
    let r = read_response(&mut s, &mut buf)
        .await
        .expect("the GET after the HEAD");
    assert_eq!(r.body, b"Wikipedia");
}

/// Open `n` connections that each send one request, read the response, and then stay idle.
async fn open_idle(addr: std::net::SocketAddr, n: u64, conns: &mut Vec<TcpStream>) {
    for _ in 0..n {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        read_response(&mut s, &mut Vec::new())
            .await
            .expect("response");
        conns.push(s);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connections_hold_no_buffers() {
    // Each connection sends a request and then stays open, idle. The proxy's memory growth per
    // connection must stay far below one 8 KiB read buffer plus one write buffer, which is what a
    // connection holding its buffers would cost (hyper's HTTP/1 server kept 16 KiB and more).
    let (_up, p) = app_proxy(json!({})).await;
    let addr = p.listener("main");
    let rss = || {
        let status = std::fs::read_to_string(format!("/proc/{}/status", p.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap()
    };
    // Warm up: the first connections allocate the runtime's and pools' fixed memory.
    let mut conns = Vec::new();
    open_idle(addr, 50, &mut conns).await;
    let before = rss();
    const N: u64 = 1500;
    open_idle(addr, N, &mut conns).await;
    let per_conn = (rss().saturating_sub(before)) * 1024 / N;
    eprintln!("{N} idle connections: {per_conn} bytes each");
    assert!(per_conn < 12 * 1024, "{per_conn} bytes per idle connection");
}
