//! Shared pieces of the end-to-end tests: an echo upstream server, and real `sluice` and `envoy`
//! processes started on dynamic loopback ports.

#![allow(dead_code)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};
use tokio::net::TcpListener;

pub type BoxBody = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

fn full(b: impl Into<Bytes>) -> BoxBody {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

/// An echo upstream: answers with JSON describing the request it saw.
///
/// Query parameters steer it: `status=N` (response code), `delay_ms=N` (wait before answering),
/// `bytes=N` (stream N bytes instead of JSON). A request body is counted (`body_len`). gRPC
/// requests get their body back with `grpc-status`/`grpc-message` trailers. WebSocket upgrades are
/// accepted and every byte is echoed.
pub struct Upstream {
    pub addr: SocketAddr,
    pub name: String,
    task: tokio::task::JoinHandle<()>,
    /// Another upstream this one depends on (a TLS front relaying to a plain echo server).
    inner: Option<Box<Upstream>>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Upstream {
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// An upstream served by `task` at `addr`, keeping `inner` alive as long as it lives.
    pub fn wrap(
        addr: SocketAddr,
        name: &str,
        task: tokio::task::JoinHandle<()>,
        inner: Upstream,
    ) -> Upstream {
        Upstream {
            addr,
            name: name.to_string(),
            task,
            inner: Some(Box::new(inner)),
        }
    }
}

fn query_param<'a>(q: &'a str, name: &str) -> Option<&'a str> {
    q.split('&').find_map(|p| {
        let (k, v) = p.split_once('=').unwrap_or((p, ""));
        (k == name).then_some(v)
    })
}

fn headers_json(h: &HeaderMap) -> Value {
    let mut m = serde_json::Map::new();
    for name in h.keys() {
        let v: Vec<&str> = h
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap_or(""))
            .collect();
        m.insert(name.as_str().to_string(), Value::String(v.join(",")));
    }
    Value::Object(m)
}

async fn echo(name: String, mut req: Request<Incoming>) -> Response<BoxBody> {
    let q = req.uri().query().unwrap_or("").to_string();
    if let Some(ms) = query_param(&q, "delay_ms").and_then(|v| v.parse::<u64>().ok()) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let is_ws = req
        .headers()
        .get("upgrade")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
    if is_ws {
        let up = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(io) = up.await {
                let mut io = TokioIo::new(io);
                let (mut r, mut w) = tokio::io::split(&mut io);
                let _ = tokio::io::copy(&mut r, &mut w).await;
            }
        });
        return Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .header("x-upstream", name.as_str())
            .body(full(Bytes::new()))
            .unwrap();
    }
    let grpc = req
        .headers()
        .get("content-type")
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    if grpc {
        let body = req
            .into_body()
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", "0".parse().unwrap());
        trailers.insert("grpc-message", format!("from-{name}").parse().unwrap());
        let frames = vec![
            Ok::<_, std::io::Error>(Frame::data(body)),
            Ok(Frame::trailers(trailers)),
        ];
        let stream = futures_util::stream::iter(frames);
        return Response::builder()
            .header("content-type", "application/grpc")
            .header("x-upstream", name.as_str())
            .body(BodyExt::boxed(StreamBody::new(stream)))
            .unwrap();
    }
    if let Some(n) = query_param(&q, "bytes").and_then(|v| v.parse::<usize>().ok()) {
        let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
        let chunks = n / chunk.len();
        let rest = n % chunk.len();
        let mut frames: Vec<Bytes> = Vec::new();
        frames.resize(chunks, chunk.clone());
        if rest > 0 {
            frames.push(chunk.slice(..rest));
        }
        let stream = futures_util::stream::iter(
            frames
                .into_iter()
                .map(|b| Ok::<_, std::io::Error>(Frame::data(b))),
        );
        return Response::builder()
            .header("content-length", n)
            .header("x-upstream", name.as_str())
            .body(BodyExt::boxed(StreamBody::new(stream)))
            .unwrap();
    }
    let status = query_param(&q, "status")
        .and_then(|v| v.parse::<u16>().ok())
        .unwrap_or(200);
    let method = req.method().to_string();
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_default();
    let version = format!("{:?}", req.version());
    let host = req
        .headers()
        .get("host")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| req.uri().authority().map(|a| a.to_string()))
        .unwrap_or_default();
    let headers = headers_json(req.headers());
    let mut body_len = 0usize;
    let mut body = req.into_body();
    while let Some(Ok(frame)) = body.frame().await {
        if let Some(d) = frame.data_ref() {
            body_len += d.len();
        }
    }
    let out = json!({
        "upstream": name, "method": method, "path": path, "host": host,
        "headers": headers, "body_len": body_len, "version": version,
    });
    // Response head steering for filters that read it (compressor): `ctype` replaces the
    // content type (empty: none), `etag`, `cc` (cache-control), `ce` (content-encoding) and
    // `vary` add headers, `chunked=1` streams the body in two chunks without a length.
    let mut b = Response::builder()
        .status(status)
        .header("x-upstream", name.as_str());
    match query_param(&q, "ctype").map(percent_decode) {
        Some(t) if t.is_empty() => {}
        Some(t) => b = b.header("content-type", t),
        None => b = b.header("content-type", "application/json"),
    }
    for (param, header) in [
        ("etag", "etag"),
        ("cc", "cache-control"),
        ("ce", "content-encoding"),
        ("vary", "vary"),
    ] {
        if let Some(v) = query_param(&q, param) {
            b = b.header(header, percent_decode(v));
        }
    }
    if query_param(&q, "chunked") == Some("1") {
        let text = Bytes::from(out.to_string());
        let half = text.len() / 2;
        let frames = [text.slice(..half), text.slice(half..)]
            .map(|d| Ok::<_, std::io::Error>(Frame::data(d)));
        let stream = futures_util::stream::iter(frames);
        return b.body(BodyExt::boxed(StreamBody::new(stream))).unwrap();
    }
    b.body(full(out.to_string())).unwrap()
}

/// `%XX` escapes of a query value decoded (enough for header values in tests).
fn percent_decode(v: &str) -> String {
    let bytes = v.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(c)) => {
                out.push(c);
                i += 3;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Start an echo upstream on a dynamic loopback port (HTTP/1.1 and h2c).
pub async fn upstream(name: &str) -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let n = name.to_string();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let n = n.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let n = n.clone();
                    async move { Ok::<_, Infallible>(echo(n, req).await) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Upstream {
        addr,
        name: name.to_string(),
        task,
        inner: None,
    }
}

/// One upstream (`app`) behind a proxy routing everything to it, with extra connection-manager
/// settings.
pub async fn app_proxy(hcm_extra: serde_json::Value) -> (Upstream, ProxyProcess) {
    let up = upstream("app").await;
    let rc = routes(json!([{"match": {"prefix": "/"}, "route": {"cluster": "app"}}]));
    let p = sluice(&bootstrap(
        rc,
        vec![cluster("app", &[up.port()])],
        hcm_extra,
    ))
    .await;
    (up, p)
}

/// A free port with nothing listening on it: for a listener a test configures, or a dead upstream.
///
/// It is taken below the kernel's ephemeral range (`ip_local_port_range`), where `bind(0)` and
/// outgoing connections take theirs: a port from `bind(0)` could be taken by a connection some
/// other test makes before the process given the port binds it (seen once: a gateway listener
/// that never came up).
pub fn closed_port() -> u16 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .unwrap_or(32_768);
    const LOW: u64 = 10_000;
    let span = ephemeral_low.saturating_sub(LOW).max(1);
    let seed = u64::from(std::process::id()) * 7_919
        + std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| u64::from(d.subsec_nanos()))
            .unwrap_or(0);
    for _ in 0..1_000 {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (LOW + (seed + n * 104_729) % span) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// A running proxy process (Sluice or Envoy).
pub struct ProxyProcess {
    pub child: Child,
    pub admin: SocketAddr,
    pub listeners: HashMap<String, SocketAddr>,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    pub kind: &'static str,
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl ProxyProcess {
    /// The address of the only (or named) listener.
    pub fn listener(&self, name: &str) -> SocketAddr {
        *self
            .listeners
            .get(name)
            .unwrap_or_else(|| panic!("no listener {name}: {:?}", self.listeners))
    }
    pub fn url(&self, listener: &str, path: &str) -> String {
        format!("http://{}{}", self.listener(listener), path)
    }
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr")).unwrap_or_default()
    }
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
    /// Resident memory high-water mark (KiB).
    pub fn vm_hwm_kib(&self) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        s.lines()
            .find(|l| l.starts_with("VmHWM:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }
}

/// Path of the sluice binary under test.
pub fn sluice_bin() -> &'static str {
    env!("CARGO_BIN_EXE_sluice")
}

/// Replace `{{name}}` placeholders.
pub fn render(template: &str, vars: &[(&str, String)]) -> String {
    let mut s = template.to_string();
    for (k, v) in vars {
        s = s.replace(&format!("{{{{{k}}}}}"), v);
    }
    s
}

fn wait_for_admin(child: &mut Child, path: &Path, dir: &Path) -> SocketAddr {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(s) = std::fs::read_to_string(path) {
            if let Ok(a) = s.trim().parse() {
                return a;
            }
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "proxy exited with {status} before it was ready:\n{}",
                std::fs::read_to_string(dir.join("stderr")).unwrap_or_default()
            );
        }
        assert!(Instant::now() < deadline, "proxy did not start in time");
        std::thread::sleep(Duration::from_millis(20));
    }
}

async fn admin_get(admin: SocketAddr, path: &str) -> Option<(u16, String)> {
    admin_request(admin, "GET", path).await
}

/// The status and body of an admin request, or None when it could not be made.
async fn admin_request(admin: SocketAddr, method: &str, path: &str) -> Option<(u16, String)> {
    let req = Request::builder()
        .method(method)
        .uri(format!("http://{admin}{path}"))
        .body(Full::new(Bytes::new()))
        .ok()?;
    let resp = client_h1().request(req).await.ok()?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.ok()?.to_bytes();
    Some((status, String::from_utf8_lossy(&body).to_string()))
}

async fn listeners_of(admin: SocketAddr) -> HashMap<String, SocketAddr> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some((200, body)) = admin_get(admin, "/listeners?format=json").await {
            let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
            let mut out = HashMap::new();
            for l in v["listener_statuses"]
                .as_array()
                .cloned()
                .unwrap_or_default()
            {
                let sa = &l["local_address"]["socket_address"];
                let addr = format!(
                    "{}:{}",
                    sa["address"].as_str().unwrap_or(""),
                    sa["port_value"]
                );
                if let Ok(a) = addr.parse::<SocketAddr>() {
                    if a.port() != 0 {
                        out.insert(l["name"].as_str().unwrap_or("").to_string(), a);
                    }
                }
            }
            if !out.is_empty() {
                return out;
            }
        }
        assert!(Instant::now() < deadline, "listeners did not come up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_ready(admin: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !matches!(admin_get(admin, "/ready").await, Some((200, _))) {
        assert!(Instant::now() < deadline, "proxy not ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn start(kind: &'static str, config: &str, extra: &[&str]) -> ProxyProcess {
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("bootstrap.yaml");
    std::fs::write(&config_path, config).unwrap();
    let admin_path = dir.path().join("admin-address");
    let stderr = std::fs::File::create(dir.path().join("stderr")).unwrap();
    let mut cmd = match kind {
        "sluice" => {
            let mut c = Command::new(sluice_bin());
            c.arg("proxy").args(["--concurrency", "2", "-l", "warn"]);
            c
        }
        _ => {
            let mut c = Command::new("envoy");
            c.args(["--concurrency", "1", "--disable-hot-restart", "-l", "error"]);
            c
        }
    };
    cmd.arg("-c")
        .arg(&config_path)
        .arg("--admin-address-path")
        .arg(&admin_path)
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr);
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {kind}: {e}"));
    let admin = wait_for_admin(&mut child, &admin_path, dir.path());
    wait_ready(admin).await;
    let listeners = listeners_of(admin).await;
    ProxyProcess {
        child,
        admin,
        listeners,
        dir,
        config_path,
        kind,
    }
}

/// Start `sluice proxy` on a bootstrap (its listeners and admin should use port 0).
pub async fn sluice(config: &str) -> ProxyProcess {
    start("sluice", config, &[]).await
}

/// Start `sluice proxy` with extra flags.
pub async fn sluice_with(config: &str, extra: &[&str]) -> ProxyProcess {
    start("sluice", config, extra).await
}

/// Start real Envoy on a bootstrap. Panics when `envoy` is not installed: the differential tests
/// must not pass without their oracle.
pub async fn envoy(config: &str) -> ProxyProcess {
    start("envoy", config, &[]).await
}

/// Start real Envoy with extra flags.
pub async fn envoy_with(config: &str, extra: &[&str]) -> ProxyProcess {
    start("envoy", config, extra).await
}

impl ProxyProcess {
    /// The status and body of an admin request with `method`.
    pub async fn admin_call(&self, method: &str, path: &str) -> (u16, String) {
        admin_request(self.admin, method, path)
            .await
            .unwrap_or_else(|| panic!("{} {method} {path}: no answer", self.kind))
    }

    pub async fn admin(&self, path: &str) -> String {
        admin_get(self.admin, path)
            .await
            .map(|(_, b)| b)
            .unwrap_or_default()
    }

    /// The Prometheus lines whose names start with `prefix`, sorted, each with its labels in
    /// name order (an order Prometheus does not care about, and the proxies differ in).
    pub async fn stats(&self, prefix: &str) -> Vec<String> {
        let mut lines: Vec<String> = self
            .admin("/stats/prometheus")
            .await
            .lines()
            .filter(|l| l.starts_with(prefix))
            .map(|l| match (l.find('{'), l.find('}')) {
                (Some(a), Some(b)) if a < b => {
                    let mut labels: Vec<&str> = l[a + 1..b].split(',').collect();
                    labels.sort();
                    format!("{}{{{}}}{}", &l[..a], labels.join(","), &l[b + 1..])
                }
                _ => l.to_string(),
            })
            .collect();
        lines.sort();
        lines
    }
}

pub type H1Client = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Full<Bytes>,
>;

pub fn client_h1() -> H1Client {
    hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http()
}

pub fn client_h2() -> H1Client {
    hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

/// A response, with the body read whole.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
    pub fn upstream(&self) -> String {
        self.headers
            .get("x-upstream")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_string()
    }
    /// A response header's value, `-` when absent.
    pub fn header(&self, name: &str) -> String {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_string()
    }
    /// A header the upstream saw.
    pub fn seen(&self, name: &str) -> Option<String> {
        self.json()["headers"][name].as_str().map(str::to_string)
    }
}

/// Send a request and read the reply.
pub async fn send(client: &H1Client, req: Request<Full<Bytes>>) -> Reply {
    let resp = client.request(req).await.expect("request failed");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp
        .into_body()
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    Reply {
        status,
        headers,
        body,
    }
}

/// GET `url` with extra headers.
pub async fn get(client: &H1Client, url: &str, headers: &[(&str, &str)]) -> Reply {
    let mut b = Request::builder().uri(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    send(client, b.body(Full::new(Bytes::new())).unwrap()).await
}

/// A request without a body: `method` to `url` with `host` and the extra `headers`.
pub async fn request(
    client: &H1Client,
    method: &str,
    url: &str,
    host: &str,
    headers: &[(&str, &str)],
) -> Reply {
    let mut b = Request::builder()
        .method(method)
        .uri(url)
        .header("host", host);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    send(client, b.body(Full::new(Bytes::new())).unwrap()).await
}

/// z for the suite's binomial checks: 4.42 is a two-sided 99.999 % bound, so the few dozen
/// statistical checks of a test run fail by chance about once in 3,000 runs, not once in 30.
pub const Z_SUITE: f64 = 4.42;

/// Two-sided binomial bound: |observed - n*p| <= z * sqrt(n p (1-p)).
pub fn within_binomial(observed: u64, n: u64, p: f64, z: f64) -> bool {
    let mean = n as f64 * p;
    let sd = (n as f64 * p * (1.0 - p)).sqrt();
    (observed as f64 - mean).abs() <= z * sd
}

/// What `sluice proxy --mode validate` says of a bootstrap with these HTTP filters (one route to
/// a cluster nobody listens on); the validation must fail.
pub fn refusal_of_filters(filters: Value) -> String {
    let dir = tempfile::tempdir().expect("temporary directory");
    let text = bootstrap(
        routes(json!([{"match": {"prefix": "/"}, "route": {"cluster": "app"}}])),
        vec![cluster("app", &[closed_port()])],
        json!({"http_filters": filters}),
    );
    let path = dir.path().join("b.json");
    std::fs::write(&path, text).expect("bootstrap written");
    let out = std::process::Command::new(sluice_bin())
        .args(["proxy", "--mode", "validate", "-c"])
        .arg(&path)
        .output()
        .expect("sluice runs");
    assert!(!out.status.success(), "the bootstrap was accepted");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A bootstrap with one listener `main` (port 0), an admin on port 0, the given route
/// configuration and clusters. `hcm_extra` fields are merged into the connection manager.
pub fn bootstrap(route_config: Value, clusters: Vec<Value>, hcm_extra: Value) -> String {
    let mut hcm = json!({
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "ingress_http",
        "route_config": route_config,
        "http_filters": [{
            "name": "envoy.filters.http.router",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}
        }]
    });
    if let (Some(h), Some(extra)) = (hcm.as_object_mut(), hcm_extra.as_object()) {
        for (k, v) in extra {
            h.insert(k.clone(), v.clone());
        }
    }
    json!({
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {
            "listeners": [{
                "name": "main",
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": hcm
                }]}]
            }],
            "clusters": clusters
        }
    })
    .to_string()
}

/// A STATIC round-robin cluster over loopback ports.
pub fn cluster(name: &str, ports: &[u16]) -> Value {
    json!({
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": ports.iter().map(|p| json!({
                "endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": p}}}
            })).collect::<Vec<_>>()}]
        }
    })
}

/// The same cluster speaking HTTP/2 to its endpoints.
pub fn cluster_h2(name: &str, ports: &[u16]) -> Value {
    let mut c = cluster(name, ports);
    c["typed_extension_protocol_options"] = json!({
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}}
        }
    });
    c
}

/// A route configuration with one virtual host `*` holding `routes`.
pub fn routes(routes: Value) -> Value {
    json!({"name": "local", "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": routes}]})
}

/// A running `sluice control` process over a configuration directory.
pub struct ControlPlane {
    pub child: Child,
    pub dir: tempfile::TempDir,
    pub xds: SocketAddr,
    pub api: SocketAddr,
    /// Extra flags, kept for restarts.
    extra: Vec<String>,
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_control(dir: &Path, xds: &str, extra: &[String]) -> (Child, SocketAddr, SocketAddr) {
    let address_file = dir.join("addresses.json");
    let _ = std::fs::remove_file(&address_file);
    let stderr = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("control.stderr"))
        .unwrap();
    let mut child = Command::new(sluice_bin())
        .args(["control", "--config-dir"])
        .arg(dir.join("config"))
        .args(["--xds-address", xds, "--api-address", "127.0.0.1:0"])
        .args(["--debounce", "10ms", "-l", "info", "--address-file"])
        .arg(&address_file)
        .args(extra)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("start sluice control");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(text) = std::fs::read_to_string(&address_file) {
            if let Ok(v) = serde_json::from_str::<Value>(&text) {
                let xds = v["xds"].as_str().unwrap_or("").parse().unwrap();
                let api = v["api"].as_str().unwrap_or("").parse().unwrap();
                return (child, xds, api);
            }
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "control plane exited with {status}:\n{}",
                std::fs::read_to_string(dir.join("control.stderr")).unwrap_or_default()
            );
        }
        assert!(Instant::now() < deadline, "control plane did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl ControlPlane {
    /// Start a control plane on `files` (name → YAML), xDS on a dynamic port.
    pub fn start(files: &[(&str, String)]) -> ControlPlane {
        Self::start_with(files, &[])
    }

    /// [`ControlPlane::start`] with extra flags; the process runs in its own temporary
    /// directory, so relative paths (`--data-dir state`) stay inside it.
    pub fn start_with(files: &[(&str, String)], extra: &[&str]) -> ControlPlane {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("config")).unwrap();
        for (name, text) in files {
            std::fs::write(dir.path().join("config").join(name), text).unwrap();
        }
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let (child, xds, api) = spawn_control(dir.path(), "127.0.0.1:0", &extra);
        ControlPlane {
            child,
            dir,
            xds,
            api,
            extra,
        }
    }

    /// Replace a configuration file (written whole, then renamed, as editors and GitOps do).
    pub fn write(&self, name: &str, text: &str) {
        let tmp = self.dir.path().join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, self.dir.path().join("config").join(name)).unwrap();
    }

    /// Kill the process (SIGKILL).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Start it again on the same xDS address.
    pub fn restart(&mut self) {
        let (child, xds, api) = spawn_control(self.dir.path(), &self.xds.to_string(), &self.extra);
        self.child = child;
        self.xds = xds;
        self.api = api;
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("control.stderr")).unwrap_or_default()
    }

    /// The proxy-status document.
    pub async fn status(&self) -> Value {
        admin_get(self.api, "/api/v1/proxy-status")
            .await
            .and_then(|(_, b)| serde_json::from_str(&b).ok())
            .unwrap_or(Value::Null)
    }

    /// Wait until every proxy has every subscribed type SYNCED (or `timeout` passes).
    pub async fn wait_synced(&self, proxies: usize, timeout: Duration) -> Value {
        self.wait_synced_types(proxies, 4, timeout).await
    }

    /// [`Self::wait_synced`] for proxies that subscribe to `types` xDS types (3: a gateway with
    /// only TCP servers has no route configuration).
    pub async fn wait_synced_types(
        &self,
        proxies: usize,
        types: usize,
        timeout: Duration,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.status().await;
            let list = s["proxies"].as_array().cloned().unwrap_or_default();
            let synced = list.len() == proxies
                && list.iter().all(|p| {
                    let st = p["state"].as_object().cloned().unwrap_or_default();
                    st.len() == types && st.values().all(|v| v == "SYNCED")
                });
            if synced || Instant::now() > deadline {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A bootstrap that takes everything from the control plane over ADS. `node_id` decides the
/// role (`router~…` gateway, `sidecar~…`); `metadata` is the node metadata.
pub fn ads_bootstrap(xds: SocketAddr, node_id: &str, metadata: Value) -> String {
    let b = json!({
        "node": {"id": node_id, "cluster": "test", "metadata": metadata},
        "dynamic_resources": {
            "ads_config": {
                "api_type": "GRPC",
                "transport_api_version": "V3",
                "grpc_services": [{"envoy_grpc": {"cluster_name": "xds"}}],
            },
            "lds_config": {"ads": {}, "resource_api_version": "V3"},
            "cds_config": {"ads": {}, "resource_api_version": "V3"},
        },
        "static_resources": {"clusters": [{
            "name": "xds",
            "type": "STATIC",
            "connect_timeout": "1s",
            "typed_extension_protocol_options": {
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                    "explicit_http_config": {"http2_protocol_options": {}},
                }
            },
            "load_assignment": {"cluster_name": "xds", "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": xds.ip().to_string(), "port_value": xds.port()}}}}]}]},
        }]},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
    });
    serde_json::to_string_pretty(&b).unwrap()
}

/// Start a proxy of `kind` ("sluice" or "envoy") on a bootstrap.
pub async fn proxy_of(kind: &str, config: &str) -> ProxyProcess {
    match kind {
        "sluice" => sluice(config).await,
        _ => envoy(config).await,
    }
}

/// A real Prometheus server (Debian's `prometheus`) scraping `targets` (`HOST:PORT` of admin
/// servers, path `/stats/prometheus`) every second. Panics when Prometheus is not installed:
/// the analysis tests must not pass without it.
pub struct Prometheus {
    pub child: Child,
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    pub async fn start(targets: &[SocketAddr]) -> Prometheus {
        let addr: SocketAddr = format!("127.0.0.1:{}", closed_port()).parse().unwrap();
        Self::start_at(targets, addr).await
    }

    /// Start on a given address.
    pub async fn start_at(targets: &[SocketAddr], addr: SocketAddr) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let targets: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        let config = format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\nscrape_configs:\n- job_name: sluice\n  metrics_path: /stats/prometheus\n  static_configs: [{{targets: [{}]}}]\n",
            targets.join(", ")
        );
        std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start prometheus (apt-get install prometheus): {e}")
            });
        let p = Prometheus { child, addr, dir };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !matches!(admin_get(addr, "/-/ready").await, Some((200, _))) {
            assert!(Instant::now() < deadline, "prometheus did not become ready");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        p
    }

    /// Stop it (SIGKILL).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Wait until `q` has a non-empty result (the scrapes have produced data).
    pub async fn wait_for(&self, q: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let v = self.query(q).await;
            if v["data"]["result"]
                .as_array()
                .is_some_and(|r| !r.is_empty())
            {
                return;
            }
            assert!(Instant::now() < deadline, "no data for {q}: {v}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// An instant query's JSON answer.
    pub async fn query(&self, q: &str) -> Value {
        let enc: String = q
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        admin_get(self.addr, &format!("/api/v1/query?query={enc}"))
            .await
            .and_then(|(_, b)| serde_json::from_str(&b).ok())
            .unwrap_or(Value::Null)
    }
}

/// A `web` service with v1 and v2 endpoints, `stable`/`canary` subsets both selecting `app: web`
/// (a Rollout points them at revisions), a gateway on `gw`, and a VirtualService whose `primary`
/// route sends everything to `stable`.
pub fn demo_mesh(v1: u16, v2: u16, gw: u16) -> String {
    render(
        &(String::from(
            r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: web}
spec:
  hosts: [web]
  ports: [{number: 80, name: http}]
  resolution: STATIC
  endpoints:
  - {address: 127.0.0.1, ports: {http: {{v1}}}, labels: {app: web, version: v1}}
  - {address: 127.0.0.1, ports: {http: {{v2}}}, labels: {app: web, version: v2}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: web}
spec:
  host: web
  subsets: [{name: stable, labels: {app: web}}, {name: canary, labels: {app: web}}]
---
"#,
        ) + &http_gateway(gw)
            + r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web}
spec:
  hosts: ["*"]
  gateways: [gw]
  http:
  - name: primary
    route:
    - {destination: {host: web, subset: stable}, weight: 100}
    - {destination: {host: web, subset: canary}, weight: 0}
"#),
        &[("v1", v1.to_string()), ("v2", v2.to_string())],
    )
}

/// The node id of the test gateways (Istio's `router~…` form).
pub const GATEWAY_NODE: &str = "router~127.0.0.1~gw-1.istio-system~istio-system.svc.cluster.local";

/// A ServiceEntry `name` (one STATIC endpoint, 127.0.0.1:`port`) and a Gateway `gw` serving
/// every host over HTTP on port `gw_port`: the start of a mesh file; VirtualServices follow.
pub fn service_behind_gateway(name: &str, port: u16, gw_port: u16) -> String {
    render(
        r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: {{name}}}
spec:
  hosts: [{{name}}]
  ports: [{number: 80, name: http}]
  resolution: STATIC
  endpoints: [{address: 127.0.0.1, ports: {http: {{port}}}}]
---
"#,
        &[("name", name.to_string()), ("port", port.to_string())],
    ) + &http_gateway(gw_port)
}

/// A Gateway `gw` (selector `istio: ingressgateway`) serving every host over HTTP on `port`, and
/// the document separator after it.
pub fn http_gateway(port: u16) -> String {
    render(
        r#"apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw}
spec:
  selector: {istio: ingressgateway}
  servers: [{port: {number: {{gw}}, name: http, protocol: HTTP}, hosts: ["*"]}]
---
"#,
        &[("gw", port.to_string())],
    )
}

/// Real Envoy and `sluice proxy` as gateways of one control plane, Envoy's listeners on
/// 127.0.0.2 and Sluice's on 127.0.0.1, once both have acknowledged their configuration.
pub async fn envoy_and_sluice_gateways(control: &ControlPlane) -> (ProxyProcess, ProxyProcess) {
    envoy_and_sluice_gateways_of(control, 4).await
}

/// [`envoy_and_sluice_gateways`] for gateways that subscribe to `types` xDS types.
pub async fn envoy_and_sluice_gateways_of(
    control: &ControlPlane,
    types: usize,
) -> (ProxyProcess, ProxyProcess) {
    let meta =
        |ip: &str| json!({"LABELS": {"istio": "ingressgateway"}, "SLUICE_GATEWAY_ADDRESS": ip});
    let envoy = proxy_of(
        "envoy",
        &ads_bootstrap(control.xds, GATEWAY_NODE, meta("127.0.0.2")),
    )
    .await;
    let sluice = proxy_of(
        "sluice",
        &ads_bootstrap(control.xds, GATEWAY_NODE, meta("127.0.0.1")),
    )
    .await;
    let st = control
        .wait_synced_types(2, types, Duration::from_secs(15))
        .await;
    assert_eq!(st["proxies"].as_array().map(Vec::len), Some(2), "{st:#}");
    (envoy, sluice)
}

/// A sidecar proxy of `kind` on the control plane at `xds` for workload `app` of `namespace`
/// (node id as Istio writes it), its outbound listener on 127.0.0.1:`outbound`, with `extra`
/// node metadata (`LABELS`, the inbound addresses, …).
pub async fn sidecar_proxy(
    kind: &str,
    xds: SocketAddr,
    app: &str,
    namespace: &str,
    outbound: u16,
    extra: Value,
) -> ProxyProcess {
    let mut metadata = json!({
        "SLUICE_OUTBOUND_ADDRESS": format!("127.0.0.1:{outbound}"),
        "NAMESPACE": namespace,
    });
    for (k, v) in extra.as_object().cloned().unwrap_or_default() {
        metadata[k] = v;
    }
    let node = format!("sidecar~127.0.0.1~{app}-1.{namespace}~{namespace}.svc.cluster.local");
    proxy_of(kind, &ads_bootstrap(xds, &node, metadata)).await
}

/// A gateway proxy of `kind` on the control plane at `xds`: labels `istio: ingressgateway`,
/// Gateway ports bound on 127.0.0.1.
pub async fn gateway_proxy(kind: &str, xds: SocketAddr) -> ProxyProcess {
    let metadata =
        json!({"LABELS": {"istio": "ingressgateway"}, "SLUICE_GATEWAY_ADDRESS": "127.0.0.1"});
    proxy_of(kind, &ads_bootstrap(xds, GATEWAY_NODE, metadata)).await
}

/// A TCP server that greets with `NAME\n`, echoes what it reads, and after the client's FIN
/// sends `bye` and closes.
pub async fn tcp_greeter(name: &'static str) -> (u16, tokio::task::JoinHandle<()>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                if s.write_all(format!("{name}\n").as_bytes()).await.is_err() {
                    return;
                }
                let mut buf = [0u8; 4096];
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if s.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
                let _ = s.write_all(b"bye").await;
                let _ = s.shutdown().await;
            });
        }
    });
    (port, task)
}
