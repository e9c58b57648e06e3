//! Listeners and the per-request proxy path.
//!
//! A listener accepts connections and serves them with Sluice's own connection drivers: HTTP/1.1
//! ([`downstream_http1`]) and HTTP/2 ([`downstream_h2`]: h2c prior knowledge, the preface on an AUTO
//! listener, or ALPN `h2`). Each request reads the listener's current [`HcmConfig`] (one atomic load), routes,
//! and answers locally (direct response, redirect, error) or forwards to an upstream endpoint.
//! Local errors follow Envoy: no route 404 (`NR`), unknown cluster 503 (`NC`), no healthy upstream
//! 503 (`UH`), connect failure 503 (`UF`), overflow 503 (`UO`), upstream timeout 504 (`UT`).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body as _;
use tokio::net::TcpListener;

use crate::access_log::{AccessLogs, LogEntry, LogSlot, SentHead};
use crate::body::{RequestBody, ResponseBody};
use crate::cluster::{Cluster, PickError};
use crate::cors::{CorsDecision, Policies};
use crate::downstream_h2::{self, H2Settings};
use crate::downstream_http1::{self, Http1Settings};
use crate::fault::{Abort, FaultConfig, FaultDecision, FaultInput};
use crate::filter_chain_match::Seen;
use crate::hash_policy::request_hash;
use crate::header_lookup;
use crate::header_ops::{HeaderOps, RequestContext};
use crate::health_check_filter::{HealthCheckFilter, HEALTHCHECKED_CLUSTER};
use crate::local_ratelimit::Decision as RateDecision;
use crate::matcher::RequestView;
use crate::outlier::Observed;
use crate::rbac::{RbacFilter, Subject as RbacSubject};
use crate::retry_policy::{Outcome, RetryPolicy};
use crate::route_table::RequireTls;
use crate::route_table::{
    ClusterRef, ForwardAction, MirrorTarget, RedirectAction, RouteAction, RouteHit, Target,
};
use crate::snapshot::{Codec, HcmConfig, ListenerConfig, NetworkFilter, ServerHeader, Snapshot};
use crate::tls_inspector;
use crate::transport::Transport;
use crate::upstream_http1::UpgradedUpstream;
use crate::upstream_pool::{UpstreamError, UpstreamProtocol};
use crate::weighted_pick::fast_random;
use crate::{edge, request_id};
use rustls::server::Acceptor;
use tokio_rustls::LazyConfigAcceptor;

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
// Header names as constants: `from_static` outside a const context validates the name at run
// time, on every request.
const ORIGINAL_PATH: HeaderName = HeaderName::from_static("x-envoy-original-path");
const ORIGINAL_HOST: HeaderName = HeaderName::from_static("x-envoy-original-host");
const EXPECTED_RQ_TIMEOUT_MS: HeaderName =
    HeaderName::from_static("x-envoy-expected-rq-timeout-ms");
const UPSTREAM_SERVICE_TIME: HeaderName = HeaderName::from_static("x-envoy-upstream-service-time");

/// What a listener's connections share.
#[derive(Debug)]
pub struct ListenerContext {
    /// The listener (filter chains and their connection managers); replaced on reload.
    pub listener: ArcSwap<ListenerConfig>,
    /// The whole snapshot (for `cluster_header` lookups).
    pub snapshot: Arc<ArcSwap<Snapshot>>,
    pub local: SocketAddr,
}

impl ListenerContext {
    /// The connection manager of filter chain `chain` in the current configuration.
    fn filter(&self, chain: usize) -> Option<NetworkFilter> {
        let listener = self.listener.load();
        listener
            .chains
            .get(chain)
            .or_else(|| listener.chains.first())
            .map(|c| c.filter.clone())
    }

    fn hcm(&self, chain: usize) -> Option<Arc<HcmConfig>> {
        match self.filter(chain)? {
            NetworkFilter::Http(hcm) => Some(hcm),
            NetworkFilter::Tcp(_) => None,
        }
    }
}

/// What a request knows about its downstream connection.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub remote: SocketAddr,
    /// Index of the filter chain chosen for the connection.
    pub chain: usize,
    /// The connection is TLS.
    pub secure: bool,
    /// The SNI and client certificate of a TLS connection, kept only when an RBAC filter of its
    /// connection manager reads them.
    pub tls: Option<Arc<crate::rbac::TlsPeer>>,
}

/// Longest a TLS handshake may take.
const TLS_HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Accept connections until the task is aborted.
pub async fn serve(listener: TcpListener, ctx: Arc<ListenerContext>) {
    loop {
        let (stream, remote) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let config = ctx.listener.load_full();
            let seen = if config.inspect_tls {
                // Boxed: only listeners with the inspector carry its state.
                match Box::pin(tls_inspector::inspect(&stream)).await {
                    Some(seen) => seen,
                    None => return,
                }
            } else {
                Seen::raw()
            };
            let Some(chain) = config.select_chain(&seen) else {
                tracing::debug!(?seen, %remote, "no filter chain matches");
                return;
            };
            let tls = config.chains.get(chain).and_then(|c| c.tls.clone());
            // The network RBAC filters decide at the connection's first bytes, with the SNI the
            // inspector saw; a TLS-terminated connection's, after its handshake.
            let gate = match tls {
                None => network_rbac_gate(&config, chain, remote, ctx.local, &seen, None),
                Some(_) => None,
            };
            drop(config);
            match tls {
                // Boxed: a TLS connection's state is large, and a plain connection's task should
                // not carry room for it (10,000 idle connections would pay for it).
                Some(tls) => Box::pin(serve_tls(stream, remote, ctx, chain, tls)).await,
                None => {
                    let conn = ConnInfo {
                        remote,
                        chain,
                        secure: false,
                        tls: None,
                    };
                    serve_connection(stream, ctx, conn, gate).await;
                }
            }
        });
    }
}

/// The network RBAC filters of filter chain `chain`, as a decision to take at the connection's
/// first bytes (`None` without filters). `tls` is the terminated session's SNI and certificate;
/// without it, the SNI the TLS inspector saw.
fn network_rbac_gate(
    config: &Arc<ListenerConfig>,
    chain: usize,
    peer: SocketAddr,
    local: SocketAddr,
    seen: &Seen,
    tls: Option<Arc<crate::rbac::TlsPeer>>,
) -> Option<crate::tcp_proxy::FirstByteGate> {
    if config.chains.get(chain).is_none_or(|c| c.rbac.is_empty()) {
        return None;
    }
    let tls = tls.or_else(|| {
        seen.server_name
            .as_deref()
            .map(|name| Arc::new(crate::rbac::TlsPeer::new(Some(name), None)))
    });
    let config = config.clone();
    Some(Box::new(move || {
        let Some(c) = config.chains.get(chain) else {
            return true;
        };
        let allowed = c.rbac.iter().all(|r| r.allows(peer, local, tls.as_deref()));
        if !allowed {
            tracing::debug!(%peer, "network RBAC: connection denied");
        }
        allowed
    }))
}

/// Terminate TLS on a connection whose filter chain is chosen, then serve it like a plain one.
async fn serve_tls(
    stream: tokio::net::TcpStream,
    remote: SocketAddr,
    ctx: Arc<ListenerContext>,
    chain: usize,
    tls: Arc<rustls::ServerConfig>,
) {
    let acceptor = LazyConfigAcceptor::new(Acceptor::default(), stream);
    let handshake = async move { acceptor.await?.into_stream(tls).await };
    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, handshake).await {
        Ok(Ok(stream)) => {
            let config = ctx.listener.load_full();
            let network_rbac = config.chains.get(chain).is_some_and(|c| !c.rbac.is_empty());
            let keep_tls = network_rbac
                || matches!(
                    ctx.filter(chain),
                    Some(NetworkFilter::Http(hcm)) if hcm.rbac.iter().any(|r| r.reads_tls)
                        || hcm.access_log.as_ref().is_some_and(|l| l.reads_tls)
                );
            let tls = keep_tls.then(|| {
                let (_, session) = stream.get_ref();
                let cert = session
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .map(|c| c.as_ref());
                Arc::new(crate::rbac::TlsPeer::new(session.server_name(), cert))
            });
            let gate = if network_rbac {
                network_rbac_gate(&config, chain, remote, ctx.local, &Seen::raw(), tls.clone())
            } else {
                None
            };
            drop(config);
            let conn = ConnInfo {
                remote,
                chain,
                secure: true,
                tls,
            };
            serve_connection(stream, ctx, conn, gate).await;
        }
        Ok(Err(e)) => tracing::debug!(error = %e, %remote, "TLS handshake failed"),
        Err(_) => tracing::debug!(%remote, "TLS handshake timed out"),
    }
}

/// Serve one established connection (plain or TLS) with Sluice's own connection drivers: HTTP/1.1,
/// or HTTP/2 (by configuration, or by its preface on an AUTO listener).
async fn serve_connection<T: Transport>(
    io: T,
    ctx: Arc<ListenerContext>,
    conn: ConnInfo,
    gate: Option<crate::tcp_proxy::FirstByteGate>,
) {
    let hcm = match ctx.filter(conn.chain) {
        Some(NetworkFilter::Http(hcm)) => hcm,
        Some(NetworkFilter::Tcp(tcp)) => {
            drop(ctx);
            // Boxed: an HTTP connection's task should not carry room for a relay's state.
            return Box::pin(crate::tcp_proxy::serve(io, tcp, gate)).await;
        }
        None => return,
    };
    // Before a connection manager the network RBAC filters decide at once: an HTTP client speaks
    // first, so its first bytes are already on their way.
    if let Some(allows) = gate {
        if !allows() {
            return;
        }
    }
    hcm.stats.cx_active.inc();
    let stats = hcm.stats.cx_active.clone();
    let settings = Http1Settings {
        max_head: (hcm.max_request_headers_kb as usize * 1024).max(1024),
        headers_timeout: hcm.request_headers_timeout,
        idle_timeout: hcm.idle_timeout,
        detect_h2: hcm.codec == Codec::Auto,
        accept_http_10: hcm.accept_http_10,
        server: match hcm.server_header {
            ServerHeader::PassThrough => None,
            _ => Some(hcm.server_name.clone()),
        },
    };
    let h2 = H2Settings {
        max_header_list: settings.max_head,
        idle_timeout: hcm.idle_timeout,
        max_concurrent_streams: hcm.http2.max_concurrent_streams,
        stream_window: hcm.http2.initial_stream_window_size,
        connection_window: hcm.http2.initial_connection_window_size,
    };
    let codec = hcm.codec;
    drop(hcm);
    if codec == Codec::Http2 {
        downstream_h2::serve(io, bytes::Bytes::new(), ctx, conn, h2).await;
    } else if let downstream_http1::Outcome::Http2 { io, prefix } =
        downstream_http1::serve(io, ctx.clone(), conn.clone(), settings).await
    {
        downstream_h2::serve(io, prefix, ctx, conn, h2).await;
    }
    stats.dec();
}

/// Envoy's response flags.
#[derive(Debug, Clone, Copy)]
#[repr(u8)]
pub enum Flag {
    None,
    NoRoute,
    NoCluster,
    NoHealthyUpstream,
    UpstreamConnectFailure,
    UpstreamOverflow,
    UpstreamTimeout,
    UpstreamReset,
    UpstreamProtocolError,
    RequestTimeout,
    StreamIdleTimeout,
    FaultInjected,
    DelayInjected,
    RetryLimitExceeded,
}

impl Flag {
    /// Every flag, in declaration order (`ALL[flag as usize]` is `flag`).
    pub const ALL: [Flag; 14] = [
        Flag::None,
        Flag::NoRoute,
        Flag::NoCluster,
        Flag::NoHealthyUpstream,
        Flag::UpstreamConnectFailure,
        Flag::UpstreamOverflow,
        Flag::UpstreamTimeout,
        Flag::UpstreamReset,
        Flag::UpstreamProtocolError,
        Flag::RequestTimeout,
        Flag::StreamIdleTimeout,
        Flag::FaultInjected,
        Flag::DelayInjected,
        Flag::RetryLimitExceeded,
    ];

    /// The flag whose `flag as u8` is `i` (`None` for any other value).
    pub fn from_index(i: u8) -> Flag {
        Flag::ALL.get(i as usize).copied().unwrap_or(Flag::None)
    }

    /// The short code in access logs and `response_flags` labels.
    pub fn code(self) -> &'static str {
        match self {
            Flag::None => "-",
            Flag::NoRoute => "NR",
            Flag::NoCluster => "NC",
            Flag::NoHealthyUpstream => "UH",
            Flag::UpstreamConnectFailure => "UF",
            Flag::UpstreamOverflow => "UO",
            Flag::UpstreamTimeout => "UT",
            Flag::UpstreamReset => "UC",
            Flag::UpstreamProtocolError => "UPE",
            Flag::RequestTimeout => "DT",
            Flag::StreamIdleTimeout => "SI",
            Flag::FaultInjected => "FI",
            Flag::DelayInjected => "DI",
            Flag::RetryLimitExceeded => "URX",
        }
    }
}

/// A response made by the proxy itself: `text/plain` when it has a body, always a length.
fn local_response(status: StatusCode, body: bytes::Bytes) -> Response<ResponseBody> {
    let len = body.len();
    let mut resp = Response::new(ResponseBody::full(body));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    if len > 0 {
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    }
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    resp
}

fn local_reply(hcm: &HcmConfig, status: StatusCode, body: &'static str) -> Response<ResponseBody> {
    let mut resp = local_response(status, bytes::Bytes::from_static(body.as_bytes()));
    set_server(hcm, resp.headers_mut());
    resp.extensions_mut()
        .insert(LocalReply(bytes::Bytes::from_static(body.as_bytes())));
    resp
}

/// Marks an answer made by the proxy (Envoy's local reply: errors, redirects, direct responses),
/// with its text: a gRPC client gets it as a gRPC status.
#[derive(Debug, Clone)]
struct LocalReply(bytes::Bytes);

/// A local reply to a gRPC request, as Envoy sends it: HTTP 200, `application/grpc`, and the
/// status in `grpc-status` (from the HTTP code) and `grpc-message` (the text), with no body.
#[cold]
fn grpc_local_reply(hcm: &HcmConfig, resp: &mut Response<ResponseBody>, text: &[u8]) {
    let code = match resp.status().as_u16() {
        400 => 13,
        401 => 16,
        403 => 7,
        404 => 12,
        429 | 502 | 503 | 504 => 14,
        _ => 2,
    };
    let mut out = grpc_reply(hcm, code, text);
    let h = out.headers_mut();
    // Headers the reply gained on its way (filters, `via`) stay.
    for (name, value) in resp.headers() {
        if !matches!(
            *name,
            header::CONTENT_TYPE | header::CONTENT_LENGTH | header::SERVER
        ) {
            h.append(name.clone(), value.clone());
        }
    }
    *resp = out;
}

/// A trailers-only gRPC answer: HTTP 200, `application/grpc`, `grpc-status`, and `grpc-message`
/// when there is a text.
fn grpc_reply(hcm: &HcmConfig, code: u32, text: &[u8]) -> Response<ResponseBody> {
    let mut out = local_response(StatusCode::OK, bytes::Bytes::new());
    let h = out.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    h.insert("grpc-status", HeaderValue::from(code));
    if !text.is_empty() {
        if let Ok(v) = HeaderValue::from_str(&grpc_percent_encode(text)) {
            h.insert("grpc-message", v);
        }
    }
    set_server(hcm, h);
    out
}

/// gRPC's `grpc-message` encoding: bytes outside printable ASCII, and `%`, as `%XX`.
fn grpc_percent_encode(text: &[u8]) -> String {
    let mut out = String::with_capacity(text.len());
    for &b in text {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn set_server(hcm: &HcmConfig, h: &mut HeaderMap) {
    match hcm.server_header {
        ServerHeader::Overwrite => {
            h.insert(header::SERVER, hcm.server_name.clone());
        }
        ServerHeader::AppendIfAbsent => {
            if !h.contains_key(header::SERVER) {
                h.insert(header::SERVER, hcm.server_name.clone());
            }
        }
        ServerHeader::PassThrough => {}
    }
}

fn protocol_name(v: Version) -> &'static str {
    match v {
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_10 => "HTTP/1.0",
        _ => "HTTP/1.1",
    }
}

/// The request's authority: from an absolute-form target or `:authority`, else `Host`.
fn request_authority<'a>(uri: &'a Uri, headers: &'a HeaderMap) -> &'a str {
    uri.authority()
        .map(|a| a.as_str())
        .or_else(|| header_lookup::get(headers, &header::HOST).and_then(|v| v.to_str().ok()))
        .unwrap_or("")
}

/// Host used for matching: lower-case, port stripped as configured.
fn match_host<'a>(raw: &'a str, hcm: &HcmConfig, local_port: u16, buf: &'a mut String) -> &'a str {
    let mut host = raw;
    let any_port = hcm.strip_any_host_port || hcm.routes.ignore_port_in_host_matching;
    if any_port || hcm.strip_matching_host_port {
        if let Some((h, port)) = raw.rsplit_once(':') {
            // Leave IPv6 literals without a port (`[::1]`) alone.
            if !h.ends_with(']') || raw.starts_with('[') {
                let strip = any_port || port.parse::<u16>().ok() == Some(local_port);
                if strip && !port.contains(']') {
                    host = h;
                }
            }
        }
    }
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        *buf = host.to_ascii_lowercase();
        return buf.as_str();
    }
    host
}

const HOP_BY_HOP: [HeaderName; 6] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::TE,
];

/// One of [`HOP_BY_HOP`], compared without building the constant's names. (A `static` list with
/// `contains` instead cost about 330 more instructions per request under callgrind.) The test
/// `hop_by_hop_test_matches_the_list` keeps the two in step.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    name == header::CONNECTION
        || name == header::TRANSFER_ENCODING
        || name == header::UPGRADE
        || name == header::TE
        || matches!(name.as_str(), "keep-alive" | "proxy-connection")
}

fn strip_hop_by_hop(h: &mut HeaderMap, keep_upgrade: bool) {
    // Most messages carry none of these: one pass over the names decides.
    if !h.keys().any(is_hop_by_hop) {
        return;
    }
    // Headers named in `Connection` are hop-by-hop too. The values are shared, not copied, and
    // names are looked up without being built (`keep-alive` and `close`, the usual tokens, cost no
    // allocation).
    let mut connection = h.get_all(header::CONNECTION).iter();
    match (connection.next().cloned(), connection.next().is_some()) {
        (None, _) => {}
        (Some(only), false) => remove_named(h, &only, keep_upgrade),
        (Some(_), true) => {
            let all: Vec<HeaderValue> = h.get_all(header::CONNECTION).iter().cloned().collect();
            for v in &all {
                remove_named(h, v, keep_upgrade);
            }
        }
    }
    let te_trailers = h
        .get(header::TE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|p| p.trim().eq_ignore_ascii_case("trailers"))
        });
    for n in &HOP_BY_HOP {
        if keep_upgrade && (n == header::UPGRADE || n == header::CONNECTION) {
            continue;
        }
        h.remove(n);
    }
    if te_trailers {
        h.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// Remove the headers a `Connection` value names.
fn remove_named(h: &mut HeaderMap, connection: &HeaderValue, keep_upgrade: bool) {
    let Ok(v) = connection.to_str() else {
        return;
    };
    for token in v.split(',').map(str::trim) {
        if token.is_empty() || (keep_upgrade && token.eq_ignore_ascii_case("upgrade")) {
            continue;
        }
        h.remove(token);
    }
}

/// A header value for a count of milliseconds. Values below 1,000 (nearly every upstream service
/// time) come from a table built once, so that a request does not allocate one.
fn millis_value(ms: u64) -> HeaderValue {
    const TABLE: usize = 1000;
    static SMALL: std::sync::OnceLock<Vec<HeaderValue>> = std::sync::OnceLock::new();
    if ms >= TABLE as u64 {
        return HeaderValue::from(ms);
    }
    let table = SMALL.get_or_init(|| {
        (0..TABLE)
            .map(|n| {
                // A static slice: clones of the value share it without reference counting.
                let text: &'static str = Box::leak(n.to_string().into_boxed_str());
                HeaderValue::from_static(text)
            })
            .collect()
    });
    table[ms as usize].clone()
}

fn is_websocket(h: &HeaderMap) -> bool {
    header_lookup::get(h, &header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

/// Handle one request (with `request_timeout` when set).
///
/// The arguments are owned, so that the future is `'static` and its box can be pooled
/// (`handler_pool`). Not an `async fn`: such a function copies its arguments into locals of its
/// future and keeps both while any is borrowed; the `async move` block keeps one copy.
#[allow(clippy::manual_async_fn)] // deliberately not an `async fn`: see above
pub fn handle(
    mut req: Request<RequestBody>,
    ctx: Arc<ListenerContext>,
    conn: ConnInfo,
) -> impl std::future::Future<Output = Response<ResponseBody>> + Send + 'static {
    async move {
        let ctx = &*ctx;
        let Some(hcm) = ctx.hcm(conn.chain) else {
            let mut r = Response::new(ResponseBody::empty());
            *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            return r;
        };
        // With access logs, the request's entry (boxed: it must not grow every request's future).
        let log = hcm
            .access_log
            .as_ref()
            .map(|logs| start_log(&mut req, ctx, &conn, &hcm, logs));
        let grpc = is_grpc(req.headers());
        // `always_set_request_id_in_response`: the request's id is settled here, before routing
        // (which then keeps it), so that the response can carry it.
        let response_id = hcm
            .always_set_request_id_in_response
            .then(|| settle_request_id(&hcm, &mut req))
            .flatten();
        // Pinned where it is made, so that the timeout holds a reference rather than a copy.
        let route = std::pin::pin!(route_request(req, ctx, &hcm, conn));
        let resp = match hcm.request_timeout {
            Some(t) => match tokio::time::timeout(t, route).await {
                Ok(r) => r,
                Err(_) => local_reply(&hcm, StatusCode::REQUEST_TIMEOUT, "request timeout"),
            },
            None => route.await,
        };
        let mut resp = resp;
        if grpc {
            if let Some(LocalReply(text)) = resp.extensions().get::<LocalReply>().cloned() {
                grpc_local_reply(&hcm, &mut resp, &text);
            }
        }
        hcm.stats.record(resp.status().as_u16());
        if let Some(via) = &hcm.via {
            append_via(resp.headers_mut(), via);
        }
        if let Some(id) = response_id {
            resp.headers_mut().insert(REQUEST_ID, id);
        }
        match log {
            Some(entry) => end_log(resp, entry),
            None => resp,
        }
    }
}

/// The access log entry of a request, made from its head. The request gets the `LogSlot` that
/// routing fills in, its settled id, and a body that counts its bytes.
#[cold]
fn start_log(
    req: &mut Request<RequestBody>,
    ctx: &ListenerContext,
    conn: &ConnInfo,
    hcm: &Arc<HcmConfig>,
    logs: &Arc<AccessLogs>,
) -> Box<LogEntry> {
    let wall = std::time::SystemTime::now();
    let start = Instant::now();
    // The id routing gives the request, settled now so that the log sees it.
    if hcm.generate_request_id {
        settle_request_id(hcm, req);
    }
    let slot = Arc::new(LogSlot::default());
    req.extensions_mut().insert(slot.clone());
    let mut headers = req.headers().clone();
    edge::sanitize_request(&mut headers, hcm, conn.remote, conn.secure);
    let received = Arc::new(std::sync::atomic::AtomicU64::new(0));
    crate::body::count_request_body(req.body_mut(), &received);
    let health_check = hcm.health_check.as_ref().is_some_and(|h| {
        let mut buf = String::new();
        let raw = request_authority(req.uri(), req.headers());
        let host = match_host(raw, hcm, ctx.local.port(), &mut buf);
        h.matches(&request_view(req, host, conn.secure))
    });
    Box::new(LogEntry {
        logs: logs.clone(),
        slot,
        wall,
        start,
        method: req.method().clone(),
        path: req
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/")),
        authority: HeaderValue::from_str(request_authority(req.uri(), req.headers())).ok(),
        secure: conn.secure,
        version: req.version(),
        headers,
        remote: conn.remote,
        local: ctx.local,
        server_name: conn.tls.as_ref().and_then(|t| t.server_name.clone()),
        health_check,
        received,
        status: 0,
        response: HeaderMap::new(),
        sent_bytes: 0,
    })
}

/// The response, carrying its request's access log entry: the lines are written when its body
/// ends.
#[cold]
fn end_log(resp: Response<ResponseBody>, mut entry: Box<LogEntry>) -> Response<ResponseBody> {
    entry.status = resp.status().as_u16();
    entry.response = resp.headers().clone();
    resp.map(|body| ResponseBody::logged(body, entry))
}

/// The request's access log slot, when its connection manager has access logs.
fn log_slot<'r>(hcm: &HcmConfig, req: &'r Request<RequestBody>) -> Option<&'r Arc<LogSlot>> {
    hcm.access_log.as_ref()?;
    req.extensions().get::<Arc<LogSlot>>()
}

/// Marks a request whose `x-request-id` is settled already (routing must not replace it).
#[derive(Debug, Clone, Copy)]
struct RequestIdSettled;

/// Give the request the id routing would give it, now; the id.
#[cold]
fn settle_request_id(hcm: &HcmConfig, req: &mut Request<RequestBody>) -> Option<HeaderValue> {
    if req.extensions().get::<RequestIdSettled>().is_some() {
        return req.headers().get(REQUEST_ID).cloned();
    }
    let regenerate = hcm.generate_request_id
        && ((hcm.use_remote_address && !hcm.preserve_external_request_id)
            || !req.headers().contains_key(REQUEST_ID));
    if regenerate {
        req.headers_mut().insert(REQUEST_ID, request_id::generate());
    }
    req.extensions_mut().insert(RequestIdSettled);
    req.headers().get(REQUEST_ID).cloned()
}

/// `via` of the connection manager, appended (after `, `) to a request's or response's `via`.
#[cold]
fn append_via(headers: &mut HeaderMap, via: &HeaderValue) {
    let value = match headers.get(header::VIA).and_then(|v| v.to_str().ok()) {
        Some(prev) if !prev.is_empty() => {
            HeaderValue::from_str(&format!("{prev}, {}", via.to_str().unwrap_or(""))).ok()
        }
        _ => Some(via.clone()),
    };
    if let Some(v) = value {
        headers.insert(header::VIA, v);
    }
}

/// Route a request: answered here, or an upstream exchange to run. The routing and the building
/// of the upstream request are synchronous, so that their locals are not part of the request's
/// future: that future is boxed and moved per request, and its size is copied each time.
fn route_request<'a>(
    req: Request<RequestBody>,
    ctx: &'a ListenerContext,
    hcm: &'a Arc<HcmConfig>,
    conn: ConnInfo,
) -> impl std::future::Future<Output = Response<ResponseBody>> + 'a {
    use futures_util::future::Either;
    match route(req, ctx, hcm, conn) {
        Routed::Respond(r) => Either::Left(std::future::ready(r)),
        Routed::Forward(x) => Either::Right(Either::Left(x.run())),
        // Boxed: delayed and CORS requests are rare, and their futures must not grow every
        // request's.
        other => Either::Right(Either::Right(boxed_routed(other, ctx))),
    }
}

type BoxedResponse<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Response<ResponseBody>> + Send + 'a>>;

/// The response of a routing decision, as a boxed future.
fn boxed_routed<'a>(routed: Routed<'a>, ctx: &'a ListenerContext) -> BoxedResponse<'a> {
    match routed {
        Routed::Respond(r) => Box::pin(std::future::ready(r)),
        Routed::Forward(x) => Box::pin(x.run()),
        Routed::Delayed(d) => Box::pin(d.run(ctx)),
        Routed::WithHeaders(c) => {
            let (inner, headers) = *c;
            let response = boxed_routed(inner, ctx);
            Box::pin(async move {
                let mut r = response.await;
                let h = r.headers_mut();
                for (name, value) in &headers {
                    h.insert(name.clone(), value.clone());
                }
                r
            })
        }
        Routed::Compressed(c) => {
            let (inner, plan) = *c;
            let response = boxed_routed(inner, ctx);
            Box::pin(async move { plan.apply(response.await) })
        }
        Routed::Decompressed(d) => {
            let (inner, plan) = *d;
            let response = boxed_routed(inner, ctx);
            Box::pin(async move { plan.apply(response.await) })
        }
        Routed::Authorizing(a) => Box::pin(a.run(ctx)),
    }
}

/// What routing decided.
// A forward is what nearly every request becomes, and the value is moved once: boxing it would
// allocate per request to save stack on the rare local answers.
#[allow(clippy::large_enum_variant)]
enum Routed<'a> {
    /// A response made here (direct response, redirect, or a local error reply).
    Respond(Response<ResponseBody>),
    Forward(Exchange<'a>),
    /// A fault delay first (`envoy.filters.http.fault`).
    Delayed(Box<Delayed<'a>>),
    /// These headers go on whatever answers it: a CORS request's (`envoy.filters.http.cors`),
    /// a health check's passed through (`envoy.filters.http.health_check`).
    WithHeaders(Box<(Routed<'a>, HeaderMap)>),
    /// The compressor filters decide on the response (`envoy.filters.http.compressor`).
    Compressed(Box<(Routed<'a>, crate::compressor::Plan)>),
    /// A response decoded by the decompressor filters once its head is known.
    Decompressed(Box<(Routed<'a>, crate::decompressor::ResponsePlan)>),
    /// The external authorization filter checks the request first (`envoy.filters.http.ext_authz`).
    Authorizing(Box<Authorizing<'a>>),
}

/// A matched request waiting for the external authorization service's decision.
struct Authorizing<'a> {
    m: Matched<'a>,
    hcm: &'a Arc<HcmConfig>,
    authz: &'a crate::ext_authz::ExtAuthz,
    /// The CORS filter's headers, for whatever answers.
    cors_headers: Option<HeaderMap>,
}

impl<'a> Authorizing<'a> {
    async fn run(self, ctx: &'a ListenerContext) -> Response<ResponseBody> {
        use crate::ext_authz::{Decision, Peers};
        let Authorizing {
            mut m,
            hcm,
            authz,
            cors_headers,
        } = self;
        // The virtual host's context extensions, then the route's over them.
        let mut context: Vec<(String, String)> = Vec::new();
        for per in [
            m.hit.vhost.ext_authz.as_deref(),
            m.hit.route.ext_authz.as_deref(),
        ]
        .into_iter()
        .flatten()
        {
            for (k, v) in &per.context_extensions {
                context.retain(|(ck, _)| ck != k);
                context.push((k.clone(), v.clone()));
            }
        }
        let authority = request_authority(m.req.uri(), m.req.headers()).to_string();
        let peers = Peers {
            remote: m.conn.remote,
            local: ctx.local,
            secure: m.conn.secure,
        };
        let clusters = ctx.snapshot.load_full();
        let decision = authz
            .check(&m.req, &authority, peers, &context, &clusters.clusters)
            .await;
        drop(clusters);
        let mut resp = match decision {
            Decision::Allow(changes) => {
                changes.apply_to_request(&mut m.req);
                let routed = route_action(m, ctx, hcm);
                let mut resp = boxed_routed(routed, ctx).await;
                changes.apply_to_response(resp.headers_mut());
                resp
            }
            Decision::Deny(status, headers, body) => {
                let mut resp = local_response(status, body.clone());
                resp.extensions_mut().insert(LocalReply(body));
                let h = resp.headers_mut();
                for (name, _) in &headers {
                    h.remove(name);
                }
                for (name, value) in headers {
                    h.append(name, value);
                }
                set_server(hcm, h);
                resp
            }
        };
        if let Some(headers) = cors_headers {
            let h = resp.headers_mut();
            for (name, value) in &headers {
                h.insert(name.clone(), value.clone());
            }
        }
        resp
    }
}

/// A request the fault filter holds for `delay`, then aborts or forwards.
struct Delayed<'a> {
    delay: std::time::Duration,
    abort: Option<Abort>,
    req: Request<RequestBody>,
    hcm: &'a Arc<HcmConfig>,
    hit: RouteHit<'a>,
    f: &'a ForwardAction,
    conn: ConnInfo,
    rctx: RequestContext<'a>,
    new_id: Option<HeaderValue>,
    random: u64,
    cluster: Arc<Cluster>,
    start: Instant,
    _active: ActiveFault,
}

impl<'a> Delayed<'a> {
    async fn run(self, ctx: &'a ListenerContext) -> Response<ResponseBody> {
        tokio::time::sleep(self.delay).await;
        let grpc = is_grpc(self.req.headers());
        if let Some(abort) = self.abort {
            let log = log_slot(self.hcm, &self.req).map(|l| &**l);
            return fault_abort(self.hcm, &self.cluster, abort, grpc, self.start, log);
        }
        match prepare_forward(
            self.req,
            ctx,
            self.hcm,
            self.hit,
            self.f,
            self.conn,
            self.rctx,
            self.new_id,
            self.random,
            self.start,
            Flag::DelayInjected,
        ) {
            Ok(x) => x.run().await,
            Err(r) => r,
        }
    }
}

/// One fault in progress, counted in `active_faults` (for `max_active_faults`) while it lives.
struct ActiveFault(prometheus::IntGauge);

impl ActiveFault {
    fn new(gauge: &prometheus::IntGauge) -> Self {
        gauge.inc();
        ActiveFault(gauge.clone())
    }
}

impl Drop for ActiveFault {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// What route matching reads of a request, borrowed; `host` as prepared for matching.
fn request_view<'r>(req: &'r Request<RequestBody>, host: &'r str, secure: bool) -> RequestView<'r> {
    RequestView {
        method: req.method().as_str(),
        scheme: if secure { "https" } else { "http" },
        authority: host,
        path: req.uri().path(),
        query: req.uri().query().unwrap_or(""),
        path_and_query: req
            .uri()
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/"),
        headers: req.headers(),
    }
}

fn is_grpc(headers: &HeaderMap) -> bool {
    header_lookup::get(headers, &header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

/// The fault filter's answer: the status with body `fault filter abort`, or a gRPC status in a
/// trailers-only response; counted with flag `FI` for the route's cluster.
fn fault_abort(
    hcm: &HcmConfig,
    cluster: &Cluster,
    abort: Abort,
    grpc: bool,
    start: Instant,
    log: Option<&LogSlot>,
) -> Response<ResponseBody> {
    hcm.stats.fault_aborts.inc();
    match abort {
        Abort::Http(status) => {
            record(
                cluster,
                status.as_u16(),
                grpc,
                Flag::FaultInjected,
                start,
                log,
            );
            local_reply(hcm, status, "fault filter abort")
        }
        Abort::Grpc(code) => {
            record(cluster, 200, true, Flag::FaultInjected, start, log);
            grpc_reply(hcm, code, b"fault filter abort")
        }
    }
}

/// Apply the fault filter to a forwarded request: `Err` gives the request back unchanged.
// Both variants are large and moved once; boxing either would allocate.
#[allow(clippy::too_many_arguments, clippy::result_large_err)]
fn inject_fault<'a>(
    fault: &FaultConfig,
    req: Request<RequestBody>,
    view_host: &str,
    ctx: &ListenerContext,
    hcm: &'a Arc<HcmConfig>,
    hit: RouteHit<'a>,
    f: &'a ForwardAction,
    conn: ConnInfo,
    rctx: RequestContext<'a>,
    new_id: Option<HeaderValue>,
    random: u64,
) -> Result<Routed<'a>, Request<RequestBody>> {
    // The cluster the router will pick: the same random value and hash give the same choice.
    let snapshot = ctx.snapshot.load();
    let hash = (!f.hash_policy.is_empty())
        .then(|| {
            request_hash(
                &f.hash_policy,
                req.headers(),
                req.uri().query().unwrap_or(""),
                (conn.remote, ctx.local),
                &mut None,
            )
        })
        .flatten();
    let (cluster, _) = choose_cluster(f, &snapshot, req.headers(), hash, random);
    let decision = {
        let view = request_view(&req, view_host, conn.secure);
        fault.decide(&FaultInput {
            view: &view,
            cluster: cluster.as_ref().map(|c| c.name.as_str()),
            active: hcm.stats.fault_active.get().max(0) as u64,
            random: [fast_random(), fast_random()],
        })
    };
    let plan = match decision {
        FaultDecision::None => return Err(req),
        FaultDecision::Overflow => {
            hcm.stats.fault_overflow.inc();
            return Err(req);
        }
        FaultDecision::Inject(plan) => plan,
    };
    // Without a cluster there is nothing to count against; the router answers as usual.
    let Some(cluster) = cluster else {
        return Err(req);
    };
    let start = Instant::now();
    let Some(delay) = plan.delay else {
        let abort = plan.abort.unwrap_or(Abort::Http(StatusCode::OK));
        let _active = ActiveFault::new(&hcm.stats.fault_active);
        let grpc = is_grpc(req.headers());
        let log = log_slot(hcm, &req).map(|l| &**l);
        return Ok(Routed::Respond(fault_abort(
            hcm, &cluster, abort, grpc, start, log,
        )));
    };
    hcm.stats.fault_delays.inc();
    Ok(Routed::Delayed(Box::new(Delayed {
        delay,
        abort: plan.abort,
        _active: ActiveFault::new(&hcm.stats.fault_active),
        req,
        hcm,
        hit,
        f,
        conn,
        rctx,
        new_id,
        random,
        cluster,
        start,
    })))
}

#[inline(always)]
fn route<'a>(
    req: Request<RequestBody>,
    ctx: &ListenerContext,
    hcm: &'a Arc<HcmConfig>,
    conn: ConnInfo,
) -> Routed<'a> {
    match hcm.health_check.as_deref() {
        Some(hc) => route_with_health_check(req, ctx, hcm, conn, hc),
        None => route_request_to(req, ctx, hcm, conn),
    }
}

/// Match the route and start its action.
fn route_request_to<'a>(
    mut req: Request<RequestBody>,
    ctx: &ListenerContext,
    hcm: &'a Arc<HcmConfig>,
    conn: ConnInfo,
) -> Routed<'a> {
    if hcm.path_rules.any() {
        if let Some(answer) = check_path(hcm, &mut req) {
            return answer;
        }
    }
    let remote = conn.remote;
    let raw_host = request_authority(req.uri(), req.headers());
    let mut buf = String::new();
    let host = match_host(raw_host, hcm, ctx.local.port(), &mut buf);
    let view = request_view(&req, host, conn.secure);
    // Envoy regenerates x-request-id for edge requests (use_remote_address) and adds one when
    // missing. One random value per request drives both `runtime_fraction` and the weighted
    // cluster choice, as Envoy's stream random value does (so the two are correlated the same way).
    let new_id = (hcm.generate_request_id
        && ((hcm.use_remote_address && !hcm.preserve_external_request_id)
            || !header_lookup::contains(req.headers(), &REQUEST_ID))
        && !((hcm.always_set_request_id_in_response || hcm.access_log.is_some())
            && req.extensions().get::<RequestIdSettled>().is_some()))
    .then(request_id::generate);
    let random = fast_random();
    if hcm.routes.requires_tls {
        if let Some(location) = tls_redirect(hcm, &view, &req, &conn) {
            let mut resp = local_reply(hcm, StatusCode::MOVED_PERMANENTLY, "");
            resp.headers_mut().insert(header::LOCATION, location);
            return Routed::Respond(resp);
        }
    }
    let hit = hcm.routes.route(&view, random);
    for rbac in &hcm.rbac {
        if !rbac_allows(rbac, &view, hit.as_ref(), &conn, ctx, hcm) {
            return Routed::Respond(local_reply(
                hcm,
                StatusCode::FORBIDDEN,
                "RBAC: access denied",
            ));
        }
    }
    let Some(hit) = hit else {
        if let Some(log) = log_slot(hcm, &req) {
            log.set_flag(Flag::NoRoute);
        }
        hcm.unrouted.record(404, false, Flag::NoRoute.code(), 0.0);
        return Routed::Respond(local_reply(hcm, StatusCode::NOT_FOUND, ""));
    };
    if let Some(log) = log_slot(hcm, &req) {
        log.set_route(&hit.route.name);
    }
    let rctx = RequestContext {
        remote,
        local: ctx.local,
        protocol: protocol_name(req.version()),
        upstream_host: None,
        request: None,
    };
    let mut m = Matched {
        req,
        hit,
        conn,
        rctx,
        new_id,
        random,
    };
    let decompressors = hcm.decompressors.as_ref();
    if let Some(d) = decompressors.filter(|d| d.before_compressors) {
        d.on_request(&mut m.req);
    }
    let plan = hcm.compressors.as_ref().map(|chain| {
        let head = m.req.method() == Method::HEAD;
        chain.plan(
            head,
            m.req.headers_mut(),
            &m.hit.route.compressors,
            &m.hit.vhost.compressors,
        )
    });
    if let Some(d) = decompressors.filter(|d| !d.before_compressors) {
        d.on_request(&mut m.req);
    }
    // One call site each for `route_matched` and `route_action`, both inlined: the matched
    // request is built once and not copied from function to function.
    let inner = route_matched(m, ctx, hcm);
    let inner = match decompressors.filter(|d| d.decodes_responses()) {
        Some(d) => Routed::Decompressed(Box::new((
            inner,
            crate::decompressor::ResponsePlan(d.clone()),
        ))),
        None => inner,
    };
    match plan {
        Some(plan) => Routed::Compressed(Box::new((inner, plan))),
        None => inner,
    }
}

/// `require_tls` of the request's virtual host: where a request that should have come over
/// HTTPS is sent (`https://` + its host and path, as Envoy). Envoy reads the scheme from
/// `x-forwarded-proto`, which an edge connection manager sets from the connection.
#[cold]
fn tls_redirect(
    hcm: &HcmConfig,
    view: &RequestView<'_>,
    req: &Request<RequestBody>,
    conn: &ConnInfo,
) -> Option<HeaderValue> {
    let vhost = hcm.routes.vhost(view)?;
    let scheme = if conn.secure { "https" } else { "http" };
    let proto = if hcm.use_remote_address {
        scheme
    } else {
        req.headers()
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
            .unwrap_or(scheme)
    };
    // EXTERNAL_ONLY spares internal requests, and as in Envoy 1.40 without
    // `internal_address_config` no request is internal (a client's `x-envoy-internal` is not
    // believed): it redirects like ALL.
    let redirect = vhost.require_tls != RequireTls::None && proto != "https";
    if !redirect {
        return None;
    }
    let host = request_authority(req.uri(), req.headers());
    HeaderValue::from_str(&format!("https://{host}{}", view.path_and_query)).ok()
}

/// The connection manager's path and header rules, before routing: the request's path may be
/// rewritten; an answer (400, or a redirect to the unescaped path) ends it here.
#[cold]
fn check_path<'a>(hcm: &HcmConfig, req: &mut Request<RequestBody>) -> Option<Routed<'a>> {
    use crate::path_normalize::Outcome;
    let path = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    match hcm.path_rules.apply(&path, req.headers_mut()) {
        Outcome::Continue(None) => None,
        Outcome::Continue(Some(pq)) => {
            let mut parts = req.uri().clone().into_parts();
            parts.path_and_query = Some(pq);
            match http::Uri::from_parts(parts) {
                Ok(uri) => {
                    *req.uri_mut() = uri;
                    None
                }
                Err(_) => Some(Routed::Respond(local_reply(
                    hcm,
                    StatusCode::BAD_REQUEST,
                    "",
                ))),
            }
        }
        Outcome::Reject => Some(Routed::Respond(local_reply(
            hcm,
            StatusCode::BAD_REQUEST,
            "",
        ))),
        Outcome::BadHeader => Some(Routed::Respond(local_reply(
            hcm,
            StatusCode::BAD_REQUEST,
            "Bad Request",
        ))),
        Outcome::Redirect(location) => {
            let mut resp = local_reply(hcm, StatusCode::TEMPORARY_REDIRECT, "");
            if let Ok(v) = HeaderValue::from_str(&location) {
                resp.headers_mut().insert(header::LOCATION, v);
            }
            Some(Routed::Respond(resp))
        }
    }
}

/// The RBAC filter's decision: the route's rules, else the virtual host's, else the filter's
/// own (a request without a route meets the filter's own).
#[cold]
fn rbac_allows(
    rbac: &RbacFilter,
    view: &RequestView<'_>,
    hit: Option<&RouteHit<'_>>,
    conn: &ConnInfo,
    ctx: &ListenerContext,
    hcm: &HcmConfig,
) -> bool {
    let rules = hit
        .and_then(|h| h.route.rbac.as_deref().or(h.vhost.rbac.as_deref()))
        .unwrap_or(&rbac.own);
    let subject = RbacSubject {
        request: view,
        peer: conn.remote,
        remote: crate::edge::downstream_remote(view.headers, hcm, conn.remote),
        local: ctx.local,
        tls: conn.tls.as_deref(),
    };
    rbac.decide(rules, &subject)
}

/// A request that matched a route, with what routing drew for it.
struct Matched<'a> {
    req: Request<RequestBody>,
    hit: RouteHit<'a>,
    conn: ConnInfo,
    rctx: RequestContext<'a>,
    /// A new `x-request-id`, when one is to be set.
    new_id: Option<HeaderValue>,
    /// The request's random value (runtime fractions, the weighted pick).
    random: u64,
}

/// A matched request through the local rate limit and CORS filters to its route's action.
#[inline(always)]
fn route_matched<'a>(m: Matched<'a>, ctx: &ListenerContext, hcm: &'a Arc<HcmConfig>) -> Routed<'a> {
    let mut m = m;
    let hit = &m.hit;
    if let Some(own) = hcm.local_ratelimit.as_deref() {
        let limit = hit
            .route
            .local_ratelimit
            .as_deref()
            .or(hit.vhost.local_ratelimit.as_deref())
            .unwrap_or(own);
        match limit.decide(fast_random()) {
            RateDecision::Allow => {}
            RateDecision::Shadow => limit
                .request_headers_when_not_enforced
                .apply(m.req.headers_mut(), &m.rctx),
            RateDecision::Refuse => {
                let mut resp = local_reply(hcm, limit.status, "local_rate_limited");
                limit.response_headers.apply(resp.headers_mut(), &m.rctx);
                return Routed::Respond(resp);
            }
        }
    }
    let mut cors_headers = None;
    if hcm.cors && (hit.route.cors.is_some() || hit.vhost.cors.is_some()) {
        let policies = Policies([hit.route.cors.as_deref(), hit.vhost.cors.as_deref()]);
        match policies.decide(m.req.method(), m.req.headers(), fast_random()) {
            CorsDecision::None => {}
            CorsDecision::Preflight(headers) => {
                let mut resp = local_response(StatusCode::OK, bytes::Bytes::new());
                resp.headers_mut().extend(headers);
                set_server(hcm, resp.headers_mut());
                return Routed::Respond(resp);
            }
            CorsDecision::Response(headers) => cors_headers = Some(headers),
        }
    }
    if let Some(csrf) = hcm.csrf.as_deref() {
        let policy = hit
            .route
            .csrf
            .as_deref()
            .or(hit.vhost.csrf.as_deref())
            .unwrap_or(&csrf.own);
        let host = request_authority(m.req.uri(), m.req.headers());
        if !csrf.allows(policy, m.req.method(), host, m.req.headers(), m.random) {
            let resp = Routed::Respond(local_reply(hcm, StatusCode::FORBIDDEN, "Invalid origin"));
            return match cors_headers.filter(|_| hcm.csrf_after_cors) {
                Some(headers) => Routed::WithHeaders(Box::new((resp, headers))),
                None => resp,
            };
        }
    }
    if let Some(authz) = hcm.ext_authz.as_deref() {
        let per_route = m
            .hit
            .route
            .ext_authz
            .as_deref()
            .or(m.hit.vhost.ext_authz.as_deref());
        if authz.applies(per_route, fast_random()) {
            return Routed::Authorizing(Box::new(Authorizing {
                m,
                hcm,
                authz,
                cors_headers,
            }));
        }
    }
    let inner = route_action(m, ctx, hcm);
    match cors_headers {
        Some(headers) => Routed::WithHeaders(Box::new((inner, headers))),
        None => inner,
    }
}

/// A request to a connection manager with the health-check filter: a health check is answered
/// here, or routed with the filter's header on its response (`pass_through_mode`).
#[cold]
fn route_with_health_check<'a>(
    req: Request<RequestBody>,
    ctx: &ListenerContext,
    hcm: &'a Arc<HcmConfig>,
    conn: ConnInfo,
    hc: &HealthCheckFilter,
) -> Routed<'a> {
    let is_check = {
        let raw_host = request_authority(req.uri(), req.headers());
        let mut buf = String::new();
        let host = match_host(raw_host, hcm, ctx.local.port(), &mut buf);
        hc.matches(&request_view(&req, host, conn.secure))
    };
    if !is_check {
        return route_request_to(req, ctx, hcm, conn);
    }
    let mut headers = HeaderMap::new();
    headers.insert(HEALTHCHECKED_CLUSTER, hc.local_cluster.clone());
    if hc.pass_through {
        let inner = route_request_to(req, ctx, hcm, conn);
        return Routed::WithHeaders(Box::new((inner, headers)));
    }
    let status = hc.status(&ctx.snapshot.load().clusters);
    let mut resp = local_reply(hcm, status, "");
    resp.headers_mut().extend(headers);
    Routed::Respond(resp)
}

/// Run the route's action: a direct response, a redirect, or a forward (after the fault filter).
#[inline(always)]
fn route_action<'a>(m: Matched<'a>, ctx: &ListenerContext, hcm: &'a Arc<HcmConfig>) -> Routed<'a> {
    let Matched {
        req,
        hit,
        conn,
        rctx,
        new_id,
        random,
    } = m;
    match &hit.route.action {
        RouteAction::Direct(d) => {
            if let Some(log) = log_slot(hcm, &req) {
                log.set_details("direct_response");
            }
            let body = d.body.clone().unwrap_or_default();
            let mut resp = local_response(d.status, body.clone());
            resp.extensions_mut().insert(LocalReply(body));
            let h = resp.headers_mut();
            let rctx = RequestContext {
                request: Some(req.headers()),
                ..rctx
            };
            apply_response_ops(hcm, hit, None, h, &rctx);
            set_server(hcm, h);
            Routed::Respond(resp)
        }
        RouteAction::Redirect(r) => {
            if let Some(log) = log_slot(hcm, &req) {
                log.set_details("direct_response");
            }
            let location = redirect_location(r, &req, conn.secure, hit);
            let mut resp = local_reply(hcm, r.status, "");
            if let Ok(v) = HeaderValue::from_str(&location) {
                resp.headers_mut().insert(header::LOCATION, v);
            }
            let rctx = RequestContext {
                request: Some(req.headers()),
                ..rctx
            };
            apply_response_ops(hcm, hit, None, resp.headers_mut(), &rctx);
            Routed::Respond(resp)
        }
        RouteAction::Forward(f) => {
            // The fault filter, when the connection manager has one: the route's configuration,
            // else the virtual host's, else the filter's own.
            let req = match hcm.fault.as_ref().map(|own| {
                hit.route
                    .fault
                    .as_ref()
                    .or(hit.vhost.fault.as_ref())
                    .unwrap_or(own)
            }) {
                Some(fault) if fault.is_active() => {
                    let mut buf = String::new();
                    let raw_host = request_authority(req.uri(), req.headers());
                    let host = match_host(raw_host, hcm, ctx.local.port(), &mut buf).to_string();
                    match inject_fault(
                        fault,
                        req,
                        &host,
                        ctx,
                        hcm,
                        hit,
                        f,
                        conn.clone(),
                        rctx,
                        new_id.clone(),
                        random,
                    ) {
                        Ok(routed) => return routed,
                        Err(req) => req,
                    }
                }
                _ => req,
            };
            match prepare_forward(
                req,
                ctx,
                hcm,
                hit,
                f,
                conn,
                rctx,
                new_id,
                random,
                Instant::now(),
                Flag::None,
            ) {
                Ok(x) => Routed::Forward(x),
                Err(r) => Routed::Respond(r),
            }
        }
    }
}

/// Apply header operations from the most specific level to the least specific (Envoy's order).
fn apply_levels(
    levels: [Option<&HeaderOps>; 4],
    headers: &mut HeaderMap,
    rctx: &RequestContext<'_>,
) {
    for ops in levels.into_iter().flatten() {
        if !ops.is_empty() {
            ops.apply(headers, rctx);
        }
    }
}

fn apply_response_ops(
    hcm: &HcmConfig,
    hit: RouteHit<'_>,
    entry: Option<&HeaderOps>,
    h: &mut HeaderMap,
    rctx: &RequestContext<'_>,
) {
    apply_levels(
        [
            entry,
            Some(&hit.route.response_headers),
            Some(&hit.vhost.response_headers),
            Some(&hcm.routes.response_headers),
        ],
        h,
        rctx,
    );
}

fn redirect_location(
    r: &RedirectAction,
    req: &Request<RequestBody>,
    secure: bool,
    hit: RouteHit<'_>,
) -> String {
    let orig_scheme = req
        .headers()
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .unwrap_or(if secure { "https" } else { "http" });
    let scheme = r.scheme.as_deref().unwrap_or(orig_scheme);
    let raw_host = request_authority(req.uri(), req.headers());
    let (orig_host, orig_port) = match raw_host.rsplit_once(':') {
        Some((h, p)) if p.parse::<u16>().is_ok() && !h.is_empty() => (h, Some(p)),
        _ => (raw_host, None),
    };
    let host = r.host.as_deref().unwrap_or(orig_host);
    let port = match (r.port, orig_port) {
        (Some(p), _) => Some(p.to_string()),
        (None, Some(p)) if r.host.is_none() => {
            let default_of_original =
                (orig_scheme == "http" && p == "80") || (orig_scheme == "https" && p == "443");
            (!(r.scheme.is_some() && default_of_original)).then(|| p.to_string())
        }
        _ => None,
    };
    let port =
        port.filter(|p| !((scheme == "http" && p == "80") || (scheme == "https" && p == "443")));
    let path = req.uri().path();
    let query = req.uri().query();
    let prefix_len = hit.route.matcher.path.prefix_len().unwrap_or(0);
    let mut new_path = match &r.path {
        Some(p) => p.clone(),
        None => rewrite_path(
            r.prefix_rewrite.as_deref(),
            r.regex_rewrite.as_ref(),
            prefix_len,
            path,
        )
        .unwrap_or_else(|| path.to_string()),
    };
    if r.path.as_deref().is_some_and(|p| p.contains('?')) {
        // path_redirect with its own query replaces the query.
    } else if let (Some(q), false) = (query, r.strip_query) {
        new_path.push('?');
        new_path.push_str(q);
    }
    match port {
        Some(p) => format!("{scheme}://{host}:{p}{new_path}"),
        None => format!("{scheme}://{host}{new_path}"),
    }
}

/// `prefix_rewrite` (the matched prefix replaced) or `regex_rewrite` applied to a path without its
/// query; `None` when the route rewrites nothing.
fn rewrite_path(
    prefix: Option<&str>,
    regex: Option<&(regex::Regex, String)>,
    matched_prefix_len: usize,
    path: &str,
) -> Option<String> {
    if let Some(prefix) = prefix {
        let n = matched_prefix_len.min(path.len());
        if path.is_char_boundary(n) {
            return Some(format!("{prefix}{}", &path[n..]));
        }
    }
    regex.map(|(re, sub)| re.replace_all(path, sub.as_str()).into_owned())
}

/// Choose the cluster for a forward action.
fn choose_cluster<'a>(
    f: &'a ForwardAction,
    snapshot: &Snapshot,
    headers: &HeaderMap,
    hash: Option<u64>,
    random: u64,
) -> (
    Option<Arc<Cluster>>,
    Option<&'a crate::route_table::WeightedEntry>,
) {
    match &f.target {
        Target::Cluster(ClusterRef { cluster, name }) => (
            cluster
                .clone()
                .or_else(|| snapshot.clusters.get(name.as_ref()).cloned()),
            None,
        ),
        Target::Header(h) => (
            headers
                .get(h)
                .and_then(|v| v.to_str().ok())
                .and_then(|name| snapshot.clusters.get(name).cloned()),
            None,
        ),
        Target::Weighted(w) => {
            let idx = match hash {
                Some(h) if w.use_hash_policy => w.pick.pick_hash(h),
                _ => w.pick.pick_random(random),
            };
            let entry = &w.entries[idx];
            (
                entry
                    .cluster
                    .cluster
                    .clone()
                    .or_else(|| snapshot.clusters.get(entry.cluster.name.as_ref()).cloned()),
                Some(entry),
            )
        }
    }
}

/// An upstream request ready to go, with what its response needs on the way back.
struct Exchange<'a> {
    hcm: &'a Arc<HcmConfig>,
    hit: RouteHit<'a>,
    f: &'a ForwardAction,
    entry: Option<&'a crate::route_table::WeightedEntry>,
    rctx: RequestContext<'a>,
    cluster: Arc<Cluster>,
    endpoint: Arc<crate::cluster::Endpoint>,
    active: crate::cluster::ActiveRequest,
    start: Instant,
    grpc: bool,
    upgrade: bool,
    up: Request<RequestBody>,
    /// `DI` when the fault filter delayed the request.
    flag: Flag,
    /// The request's hash, for the endpoint of a retry.
    hash: Option<u64>,
    /// The upstream request's headers, kept only when a response header reads them
    /// (`%REQ(...)%`).
    request_headers: Option<Box<HeaderMap>>,
    /// A cookie made by a cookie hash policy, for the response.
    set_cookie: Option<Box<HeaderValue>>,
    /// What the access logs write of the request, when the connection manager has any.
    log: Option<Arc<LogSlot>>,
}

/// Pick the cluster and endpoint of a forward action and build the upstream request (headers,
/// path rewrites, host, mirrors), or answer here when that fails.
// Both variants are large and moved once; boxing either would allocate per request.
#[allow(clippy::too_many_arguments, clippy::result_large_err)]
fn prepare_forward<'a>(
    req: Request<RequestBody>,
    ctx: &ListenerContext,
    hcm: &'a Arc<HcmConfig>,
    hit: RouteHit<'a>,
    f: &'a ForwardAction,
    conn: ConnInfo,
    mut rctx: RequestContext<'a>,
    new_id: Option<HeaderValue>,
    random: u64,
    start: Instant,
    flag: Flag,
) -> Result<Exchange<'a>, Response<ResponseBody>> {
    let remote = conn.remote;
    let snapshot = ctx.snapshot.load();
    let log = log_slot(hcm, &req).cloned();
    // The request hash (route `hash_policy`) serves both the sticky weighted pick and
    // consistent-hash clusters; it is computed once, and only when the route has a policy.
    let mut set_cookie = None;
    let hash = if f.hash_policy.is_empty() {
        None
    } else {
        request_hash(
            &f.hash_policy,
            req.headers(),
            req.uri().query().unwrap_or(""),
            (remote, ctx.local),
            &mut set_cookie,
        )
    };
    let (cluster, entry) = choose_cluster(f, &snapshot, req.headers(), hash, random);
    let Some(cluster) = cluster else {
        if let Some(log) = &log {
            log.set_flag(Flag::NoCluster);
        }
        let status = f.cluster_not_found_status;
        hcm.unrouted
            .record(status.as_u16(), false, Flag::NoCluster.code(), 0.0);
        return Err(local_reply(hcm, status, ""));
    };
    if let Some(log) = &log {
        log.set_cluster(&cluster);
    }
    let grpc = is_grpc(req.headers());
    let upgrade = is_websocket(req.headers());
    if upgrade && !f.websocket.unwrap_or(hcm.websocket) {
        return Err(local_reply(hcm, StatusCode::FORBIDDEN, ""));
    }
    let (endpoint, active) = match cluster.acquire(hash) {
        Ok(x) => x,
        Err(PickError::NoHealthyUpstream) => {
            record(
                &cluster,
                503,
                grpc,
                Flag::NoHealthyUpstream,
                start,
                log.as_deref(),
            );
            return Err(local_reply(
                hcm,
                StatusCode::SERVICE_UNAVAILABLE,
                "no healthy upstream",
            ));
        }
        Err(PickError::Overflow) => {
            cluster.stats.rq_pending_overflow.inc();
            record(
                &cluster,
                503,
                grpc,
                Flag::UpstreamOverflow,
                start,
                log.as_deref(),
            );
            return Err(local_reply(
                hcm,
                StatusCode::SERVICE_UNAVAILABLE,
                "upstream connect error or disconnect/reset before headers. reset reason: overflow",
            ));
        }
    };
    rctx.upstream_host = Some(endpoint.pool.addr);
    if let Some(log) = &log {
        log.set_host(endpoint.pool.addr);
    }

    // ---- build the upstream request ----
    let (parts, body) = req.into_parts();
    let mut headers = parts.headers;
    // The authority as received: from the target (absolute form, HTTP/2) or the Host header,
    // which is then reused without copying. (The HTTP/2 codec puts `:authority` in the map as
    // the one `Host`, sharing its bytes.)
    // When it is the map's one `Host` and goes upstream unchanged, the map is left as it is.
    let (mut received_host, mut host_in_place) = {
        let host = header_lookup::first(&headers, &header::HOST);
        match (parts.uri.authority(), host) {
            (Some(a), Some((h, true))) if h.as_bytes() == a.as_str().as_bytes() => {
                (Some(h.clone()), true)
            }
            (Some(a), _) => (HeaderValue::from_str(a.as_str()).ok(), false),
            (None, Some((h, only))) => (Some(h.clone()), only),
            (None, None) => (None, true),
        }
    };
    strip_hop_by_hop(&mut headers, upgrade);
    let orig_path_and_query = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let path = parts.uri.path();
    let query = parts.uri.query();
    let prefix_len = hit.route.matcher.path.prefix_len().unwrap_or(0);
    let rewritten = rewrite_path(
        f.prefix_rewrite.as_deref(),
        f.regex_rewrite.as_ref(),
        prefix_len,
        path,
    )
    .map(|p| match query {
        Some(q) => format!("{p}?{q}"),
        None => p,
    });
    if rewritten.is_some() && !hcm.suppress_envoy_headers {
        if let Ok(v) = HeaderValue::from_str(orig_path_and_query) {
            headers.insert(ORIGINAL_PATH, v);
        }
    }
    let new_pq = rewritten.as_deref().unwrap_or(orig_path_and_query);
    if hcm.strip_any_host_port || hcm.strip_matching_host_port {
        if let Some(h) = received_host.as_ref().and_then(|v| v.to_str().ok()) {
            let mut buf = String::new();
            let kept = match_host(h, hcm, ctx.local.port(), &mut buf).len();
            // Keep the original case; only drop the port.
            if kept < h.len() {
                received_host = HeaderValue::from_str(&h[..kept]).ok();
                host_in_place = false;
            }
        }
    }
    let rewritten_host = entry
        .and_then(|e| e.host_rewrite.clone())
        .or_else(|| f.host_rewrite.clone())
        .or_else(|| {
            // `auto_host_rewrite`: a DNS cluster's endpoint gives its name (Envoy's host name;
            // other endpoints have none).
            let dns = matches!(cluster.discovery, crate::cluster::Discovery::Dns { .. });
            (f.auto_host_rewrite && dns)
                .then(|| endpoint.hostname.rsplit_once(':').map(|(h, _)| h))
                .flatten()
                .and_then(|h| HeaderValue::from_str(h).ok())
        });
    // Moved, not cloned, when it is not rewritten: a clone of a value copied from an HTTP/2
    // `:authority` would allocate.
    let host_value = match rewritten_host {
        Some(rewritten) => {
            if !hcm.suppress_envoy_headers {
                if let Some(v) = received_host {
                    headers.insert(ORIGINAL_HOST, v);
                }
            }
            host_in_place = false;
            Some(rewritten)
        }
        None => received_host,
    };
    // From here on the map's `host` is the upstream authority.
    if let Some(h) = host_value.filter(|_| !host_in_place) {
        headers.insert(header::HOST, h);
    }
    edge::sanitize_request(&mut headers, hcm, remote, conn.secure);
    if let Some(id) = new_id {
        headers.insert(REQUEST_ID, id);
    }
    if let Some(via) = &hcm.via {
        append_via(&mut headers, via);
    }
    let bodiless_method = matches!(
        parts.method,
        Method::GET | Method::HEAD | Method::DELETE | Method::TRACE | Method::CONNECT
    );
    if !bodiless_method
        && body.is_end_stream()
        && !headers.contains_key(header::CONTENT_LENGTH)
        && !upgrade
    {
        // Envoy's HTTP/1 codec states an empty body explicitly on methods that may carry one.
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    }
    if !hcm.suppress_envoy_headers {
        if let Some(v) = &f.timeout_header {
            headers.insert(EXPECTED_RQ_TIMEOUT_MS, v.clone());
        }
    }
    apply_levels(
        [
            entry.map(|e| &e.request_headers),
            Some(&hit.route.request_headers),
            Some(&hit.vhost.request_headers),
            Some(&hcm.routes.request_headers),
        ],
        &mut headers,
        &rctx,
    );

    // Mirrors: fire and forget, without the body.
    for m in &f.mirrors {
        if fast_random() % m.fraction.1 >= m.fraction.0 {
            continue;
        }
        let mirror_cluster = match &m.cluster {
            MirrorTarget::Cluster(c) => c
                .cluster
                .clone()
                .or_else(|| snapshot.clusters.get(c.name.as_ref()).cloned()),
            MirrorTarget::Header(h) => headers
                .get(h)
                .and_then(|v| v.to_str().ok())
                .and_then(|name| snapshot.clusters.get(name).cloned()),
        };
        let Some(mc) = mirror_cluster else {
            continue;
        };
        let mut mh = headers.clone();
        if m.append_shadow_suffix {
            if let Some(h) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) {
                let shadow = match h.rsplit_once(':') {
                    Some((name, port)) if port.parse::<u16>().is_ok() => {
                        format!("{name}-shadow:{port}")
                    }
                    _ => format!("{h}-shadow"),
                };
                if let Ok(v) = HeaderValue::from_str(&shadow) {
                    mh.insert(header::HOST, v);
                }
            }
        }
        mh.remove(header::CONTENT_LENGTH);
        let method = parts.method.clone();
        let pq = new_pq.to_string();
        tokio::spawn(async move {
            if let Ok((ep, _guard)) = mc.acquire(None) {
                let mut b = Request::builder().method(method).uri(pq);
                if let Some(h) = b.headers_mut() {
                    *h = mh;
                }
                if let Ok(r) = b.body(RequestBody::Empty) {
                    if let Ok(resp) = ep.pool.send(r, false).await {
                        // Drain so that an HTTP/1.1 connection can be reused.
                        use http_body_util::BodyExt;
                        let mut body = resp.into_body();
                        while let Some(Ok(_)) = body.frame().await {}
                    }
                }
            }
        });
    }

    let h2 = cluster.settings.protocol == UpstreamProtocol::Http2 && !upgrade;
    let mut uri_parts = http::uri::Parts::default();
    uri_parts.path_and_query = match &rewritten {
        // Unchanged path: share the received bytes instead of parsing them again.
        None => Some(
            parts
                .uri
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/")),
        ),
        Some(p) => match p.parse() {
            Ok(pq) => Some(pq),
            Err(_) => return Err(local_reply(hcm, StatusCode::BAD_REQUEST, "")),
        },
    };
    if h2 {
        uri_parts.scheme = Some(http::uri::Scheme::HTTP);
        let auth = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("localhost");
        match auth.parse() {
            Ok(a) => uri_parts.authority = Some(a),
            Err(_) => return Err(local_reply(hcm, StatusCode::BAD_REQUEST, "")),
        }
    }
    let uri = match Uri::from_parts(uri_parts) {
        Ok(u) => u,
        Err(_) => return Err(local_reply(hcm, StatusCode::BAD_REQUEST, "")),
    };
    let mut up = Request::new(body);
    *up.method_mut() = parts.method.clone();
    *up.uri_mut() = uri;
    *up.headers_mut() = headers;
    if h2 {
        *up.version_mut() = Version::HTTP_2;
        up.headers_mut().remove(header::HOST);
    }

    let reads_request = [
        entry.map(|e| &e.response_headers),
        Some(&hit.route.response_headers),
        Some(&hit.vhost.response_headers),
        Some(&hcm.routes.response_headers),
    ]
    .into_iter()
    .flatten()
    .any(HeaderOps::reads_request);
    let request_headers = reads_request.then(|| Box::new(up.headers().clone()));
    if let Some(log) = &log {
        log.set_sent(SentHead {
            path: up
                .uri()
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/")),
            authority: up
                .uri()
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok()),
            headers: up.headers().clone(),
        });
    }
    Ok(Exchange {
        log,
        request_headers,
        set_cookie,
        hcm,
        hit,
        f,
        entry,
        rctx,
        cluster,
        endpoint,
        active,
        start,
        grpc,
        upgrade,
        up,
        flag,
        hash,
    })
}

impl<'a> Exchange<'a> {
    /// Send the request upstream and turn the answer into the downstream response.
    ///
    /// Not an `async fn`: its future would keep the exchange twice, as the argument and as the
    /// fields taken out of it.
    #[inline(always)]
    fn run(self) -> impl std::future::Future<Output = Response<ResponseBody>> + 'a {
        let Exchange {
            hcm,
            hit,
            f,
            entry,
            rctx,
            cluster,
            endpoint,
            active,
            start,
            grpc,
            upgrade,
            up,
            mut flag,
            hash,
            request_headers,
            set_cookie,
            log,
        } = self;
        let mut active = Some(active);
        // Decided before the future is made, so that it holds either the boxed retry loop or
        // the request, not the request and then a copy of the decision.
        let sending = with_retries(f, upgrade, &cluster, &endpoint, &mut active, hash, up);
        async move {
            cluster.stats.rq_total.inc();
            // The wait for the response head ends at the route timeout or, when it comes first, at
            // the stream idle timeout (504 `stream timeout`, as Envoy's router answers it).
            let idle = f.idle_timeout.unwrap_or(hcm.stream_idle_timeout);
            let head_limit = match (f.timeout, idle) {
                (Some(t), Some(i)) if i < t => Some((i, true)),
                (Some(t), _) => Some((t, false)),
                (None, Some(i)) => Some((i, true)),
                (None, None) => None,
            };
            // The limit counts from the instant routing read the clock (no second reading), or from
            // now after a fault delay, which Envoy's router does not count.
            // A limit too far out to represent is no limit.
            let head_limit = head_limit.and_then(|(t, idle)| {
                let from = if matches!(flag, Flag::DelayInjected) {
                    Instant::now()
                } else {
                    start
                };
                let at = from.checked_add(t)?;
                Some((tokio::time::Instant::from_std(at), idle))
            });
            let timed_out = |cluster: &Cluster| {
                if head_limit.is_some_and(|(_, idle)| idle) {
                    record(
                        cluster,
                        504,
                        grpc,
                        Flag::StreamIdleTimeout,
                        start,
                        log.as_deref(),
                    );
                    return local_reply(hcm, StatusCode::GATEWAY_TIMEOUT, "stream timeout");
                }
                cluster.stats.rq_timeout.inc();
                record(
                    cluster,
                    504,
                    grpc,
                    Flag::UpstreamTimeout,
                    start,
                    log.as_deref(),
                );
                local_reply(hcm, StatusCode::GATEWAY_TIMEOUT, "upstream request timeout")
            };
            let result = match sending {
                Ok(retried) => {
                    let (result, last, exhausted) = match head_limit {
                        Some((t, _)) => match tokio::time::timeout_at(t, retried).await {
                            Ok(r) => r,
                            Err(_) => return timed_out(&cluster),
                        },
                        None => retried.await,
                    };
                    active = last;
                    if exhausted && result.is_ok() && matches!(flag, Flag::None) {
                        flag = Flag::RetryLimitExceeded;
                    }
                    result
                }
                Err(up) => {
                    // Pinned where it is made: the exchange's future is large, and moving it into
                    // the timeout and then into this future's state would copy it each time.
                    let send = std::pin::pin!(endpoint.pool.send(up, upgrade));
                    let result = match head_limit {
                        Some((t, _)) => match tokio::time::timeout_at(t, send).await {
                            Ok(r) => r,
                            Err(_) => {
                                observe(&cluster, &endpoint, &Err(UpstreamError::PerTryTimeout));
                                return timed_out(&cluster);
                            }
                        },
                        None => send.await,
                    };
                    observe(&cluster, &endpoint, &result);
                    result
                }
            };
            let mut response = match result {
                Ok(r) => r,
                Err(UpstreamError::PerTryTimeout) => return timed_out(&cluster),
                Err(e) => {
                    let (flag, body) = match &e {
                    UpstreamError::Connect(_) | UpstreamError::ConnectTimeout | UpstreamError::Tls(_) => {
                        cluster.stats.cx_connect_fail.inc();
                        (Flag::UpstreamConnectFailure, "upstream connect error or disconnect/reset before headers. reset reason: remote connection failure")
                    }
                    UpstreamError::Overflow => {
                        cluster.stats.rq_pending_overflow.inc();
                        (Flag::UpstreamOverflow, "upstream connect error or disconnect/reset before headers. reset reason: overflow")
                    }
                    UpstreamError::Reset(_) | UpstreamError::Io(_) => (
                        Flag::UpstreamReset,
                        "upstream connect error or disconnect/reset before headers. reset reason: connection termination",
                    ),
                    UpstreamError::Protocol(_) => (
                        Flag::UpstreamProtocolError,
                        "upstream connect error or disconnect/reset before headers. reset reason: protocol error",
                    ),
                    UpstreamError::PerTryTimeout => (Flag::UpstreamTimeout, "upstream request timeout"),
                };
                    tracing::debug!(cluster = %cluster.name, error = %e, "upstream request failed");
                    if let Some(log) = &log {
                        match &e {
                            UpstreamError::Connect(io) => log.set_connect_failure(io),
                            UpstreamError::ConnectTimeout => log.set_details(
                                "upstream_reset_before_response_started{connection_timeout}",
                            ),
                            _ => {}
                        }
                    }
                    // Envoy answers an upstream protocol error with 502, every other failure with 503.
                    let status = if matches!(flag, Flag::UpstreamProtocolError) {
                        StatusCode::BAD_GATEWAY
                    } else {
                        StatusCode::SERVICE_UNAVAILABLE
                    };
                    record(&cluster, status.as_u16(), grpc, flag, start, log.as_deref());
                    return local_reply(hcm, status, body);
                }
            };
            let status = response.status();
            // One reading of the clock for the histograms and `x-envoy-upstream-service-time`.
            let service_time = record(&cluster, status.as_u16(), grpc, flag, start, log.as_deref());
            if let Some(log) = &log {
                log.set_details("via_upstream");
            }
            drop(active);

            if status == StatusCode::SWITCHING_PROTOCOLS {
                let up_upgrade = response.extensions_mut().remove::<UpgradedUpstream>();
                let (rp, _) = response.into_parts();
                let mut resp = Response::from_parts(rp, ResponseBody::empty());
                if let Some(u) = up_upgrade.filter(|_| upgrade) {
                    resp.extensions_mut().insert(u);
                }
                set_server(hcm, resp.headers_mut());
                return resp;
            }

            let (mut rp, rbody) = response.into_parts();
            strip_hop_by_hop(&mut rp.headers, false);
            if !hcm.suppress_envoy_headers {
                rp.headers.insert(
                    UPSTREAM_SERVICE_TIME,
                    millis_value(service_time.as_millis() as u64),
                );
            }
            set_server(hcm, &mut rp.headers);
            let rctx = RequestContext {
                request: request_headers.as_deref(),
                ..rctx
            };
            apply_response_ops(
                hcm,
                hit,
                entry.map(|e| &e.response_headers),
                &mut rp.headers,
                &rctx,
            );
            if let Some(c) = set_cookie {
                rp.headers.append(header::SET_COOKIE, *c);
            }
            rp.version = Version::HTTP_11;
            // The route timeout covers the whole response, as in Envoy, not only its head.
            let rbody = match f.timeout {
                Some(t) => rbody.with_deadline(start + t, cluster),
                None => rbody,
            };
            Response::from_parts(rp, rbody)
        }
    }
}

/// The retry loop of a route with a retry policy, boxed so that it does not grow the future of
/// requests without one (it holds its own reference to the cluster); or the request back when it
/// gets one try (an upgrade, or a streamed body, which cannot be sent twice). The loop keeps what
/// it needs to send the request again.
#[allow(clippy::result_large_err)]
fn with_retries<'c>(
    f: &'c ForwardAction,
    upgrade: bool,
    cluster: &Arc<Cluster>,
    endpoint: &Arc<crate::cluster::Endpoint>,
    active: &mut Option<crate::cluster::ActiveRequest>,
    hash: Option<u64>,
    up: Request<RequestBody>,
) -> Result<std::pin::Pin<Box<impl std::future::Future<Output = Retried> + 'c>>, Request<RequestBody>>
{
    let Some(policy) = f.retry.as_deref().filter(|_| !upgrade) else {
        return Err(up);
    };
    let Some(replay) = Replay::of(&up) else {
        return Err(up);
    };
    Ok(Box::pin(send_with_retries(
        policy,
        cluster.clone(),
        endpoint.clone(),
        active.take(),
        hash,
        up,
        replay,
    )))
}

/// What the retry loop ends with: the last try's result, the active-request count it holds, and
/// whether the retries ran out.
type Retried = (
    Result<Response<ResponseBody>, UpstreamError>,
    Option<crate::cluster::ActiveRequest>,
    bool,
);

/// What a request keeps to be sent again: its head and a body that arrived whole.
struct Replay {
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
    body: Option<bytes::Bytes>,
}

impl Replay {
    /// `None` when the body is streamed: it cannot be sent twice.
    fn of(req: &Request<RequestBody>) -> Option<Replay> {
        let body = match req.body() {
            RequestBody::Empty => None,
            RequestBody::Full(Some(b)) => Some(b.clone()),
            _ => return None,
        };
        Some(Replay {
            method: req.method().clone(),
            uri: req.uri().clone(),
            version: req.version(),
            headers: req.headers().clone(),
            body,
        })
    }

    fn request(&self) -> Request<RequestBody> {
        let body = match &self.body {
            Some(b) => RequestBody::Full(Some(b.clone())),
            None => RequestBody::Empty,
        };
        let mut r = Request::new(body);
        *r.method_mut() = self.method.clone();
        *r.uri_mut() = self.uri.clone();
        *r.version_mut() = self.version;
        *r.headers_mut() = self.headers.clone();
        r
    }
}

/// One retry in progress, counted against the cluster's `max_retries`.
struct RetryGuard(Arc<Cluster>);

impl Drop for RetryGuard {
    fn drop(&mut self) {
        self.0.active_retries.fetch_sub(1, Ordering::Relaxed);
    }
}

fn outcome_of(result: &Result<Response<ResponseBody>, UpstreamError>) -> Option<Outcome> {
    Some(match result {
        Ok(r) => Outcome::Status(r.status().as_u16()),
        Err(UpstreamError::Connect(_) | UpstreamError::ConnectTimeout | UpstreamError::Tls(_)) => {
            Outcome::ConnectFailure
        }
        Err(UpstreamError::PerTryTimeout) => Outcome::PerTryTimeout,
        Err(UpstreamError::Reset(e)) if refused_stream(e) => Outcome::RefusedStream,
        Err(UpstreamError::Reset(_) | UpstreamError::Io(_) | UpstreamError::Protocol(_)) => {
            Outcome::Reset
        }
        // A full connection pool is not retried (Envoy answers `UO` at once).
        Err(UpstreamError::Overflow) => return None,
    })
}

/// Tell the cluster's outlier detection how an attempt at `endpoint` went.
fn observe(
    cluster: &Arc<Cluster>,
    endpoint: &crate::cluster::Endpoint,
    result: &Result<Response<ResponseBody>, UpstreamError>,
) {
    if cluster.outlier.is_none() {
        return;
    }
    let o = match result {
        Ok(r) => Observed::Status(r.status().as_u16()),
        // The pool was full: nothing was asked of the endpoint.
        Err(UpstreamError::Overflow) => return,
        Err(_) => Observed::LocalOrigin,
    };
    cluster.observe(endpoint, o);
}

fn refused_stream(e: &hyper::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = source {
        if s.to_string().contains("REFUSED_STREAM") {
            return true;
        }
        source = s.source();
    }
    false
}

/// Send under a retry policy. Returns the last try's result, the active-request guard of its
/// endpoint, and whether the retries ran out on an outcome the policy would have retried.
async fn send_with_retries(
    policy: &RetryPolicy,
    cluster: Arc<Cluster>,
    mut endpoint: Arc<crate::cluster::Endpoint>,
    mut active: Option<crate::cluster::ActiveRequest>,
    hash: Option<u64>,
    first: Request<RequestBody>,
    replay: Replay,
) -> Retried {
    let mut next = Some(first);
    let mut retries = 0;
    let mut tried: Vec<SocketAddr> = Vec::new();
    let mut _retrying: Option<RetryGuard> = None;
    loop {
        let req = next.take().unwrap_or_else(|| replay.request());
        let result = match policy.per_try_timeout {
            Some(t) => tokio::time::timeout(t, endpoint.pool.send(req, false))
                .await
                .unwrap_or(Err(UpstreamError::PerTryTimeout)),
            None => endpoint.pool.send(req, false).await,
        };
        observe(&cluster, &endpoint, &result);
        let retriable = outcome_of(&result)
            .is_some_and(|o| policy.retriable(o, result.as_ref().ok().map(Response::headers)));
        if !retriable {
            if retries > 0 {
                cluster.stats.rq_retry_success.inc();
            }
            return (result, active, false);
        }
        if retries >= policy.num_retries {
            return (result, active, true);
        }
        if cluster.active_retries.load(Ordering::Relaxed) >= cluster.breakers.max_retries {
            cluster.stats.rq_retry_overflow.inc();
            return (result, active, true);
        }
        // The next host: with `previous_hosts`, one not tried yet if a few picks find one.
        if policy.previous_hosts {
            tried.push(endpoint.pool.addr);
        }
        let mut pick = cluster.acquire(hash);
        for _ in 1..policy.host_selection_max_attempts {
            match &pick {
                Ok((ep, _)) if tried.contains(&ep.pool.addr) => pick = cluster.acquire(hash),
                _ => break,
            }
        }
        let Ok((ep, guard)) = pick else {
            return (result, active, true);
        };
        cluster.active_retries.fetch_add(1, Ordering::Relaxed);
        _retrying = Some(RetryGuard(cluster.clone()));
        // The answer being retried is dropped, which closes its connection if unread.
        drop(result);
        drop(active.take());
        endpoint = ep;
        active = Some(guard);
        retries += 1;
        cluster.stats.rq_retry.inc();
        tokio::time::sleep(policy.backoff(retries, fast_random())).await;
    }
}

fn record(
    cluster: &Cluster,
    code: u16,
    grpc: bool,
    flag: Flag,
    start: Instant,
    log: Option<&LogSlot>,
) -> std::time::Duration {
    if let Some(log) = log {
        log.set_flag(flag);
    }
    let elapsed = start.elapsed();
    let ms = elapsed.as_secs_f64() * 1000.0;
    if !matches!(flag, Flag::None) || code < 600 {
        cluster.stats.record_code(code);
        cluster.stats.rq_time.observe(ms);
    }
    cluster.istio.record(code, grpc, flag.code(), ms);
    elapsed
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A request's future is written into pooled memory once per request, so its whole size is
    /// copied each time. It holds the request once, and the upstream exchange's state; an
    /// `async fn` that takes the request by value and borrows it keeps a second copy, which
    /// shows here: the future was 4,176 bytes when `handle`, the exchange and the upstream send
    /// were `async fn`s, and 1,944 (1,952 in a test build) once they were not.
    #[test]
    fn a_request_future_holds_the_request_once() {
        let local: SocketAddr = ([127, 0, 0, 1], 1).into();
        let snapshot = crate::snapshot::Snapshot {
            version: 0,
            listeners: Vec::new(),
            clusters: Default::default(),
            admin: None,
            node: Default::default(),
            config: serde_json::Value::Null,
            dynamic: serde_json::Value::Null,
            loaded_at: std::time::SystemTime::UNIX_EPOCH,
        };
        let ctx = Arc::new(ListenerContext {
            listener: ArcSwap::from_pointee(ListenerConfig {
                name: "l".into(),
                address: local,
                chains: Vec::new(),
                inspect_tls: false,
            }),
            snapshot: Arc::new(ArcSwap::from_pointee(snapshot)),
            local,
        });
        let conn = ConnInfo {
            remote: local,
            chain: 0,
            secure: false,
            tls: None,
        };
        let request = std::mem::size_of::<Request<RequestBody>>();
        let future = handle(Request::new(RequestBody::Empty), ctx, conn);
        let size = std::mem::size_of_val(&future);
        eprintln!("a request's future: {size} bytes; a request: {request} bytes");
        const LIMIT: usize = 2304;
        assert!(size <= LIMIT, "a request's future grew to {size} bytes");
    }

    fn map(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_are_removed() {
        let mut h = map(&[
            ("connection", "keep-alive, X-Secret"),
            ("connection", "x-other"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("x-other", "2"),
            ("te", "trailers, gzip"),
            ("x-kept", "3"),
        ]);
        strip_hop_by_hop(&mut h, false);
        let names: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        assert_eq!(names, ["x-kept", "te"]);
        assert_eq!(h["te"], "trailers");

        // A WebSocket upgrade keeps `upgrade` and `connection`.
        let mut h = map(&[("connection", "Upgrade"), ("upgrade", "websocket")]);
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h.len(), 2);
    }

    #[test]
    fn hop_by_hop_test_matches_the_list() {
        for name in &HOP_BY_HOP {
            assert!(is_hop_by_hop(name), "{name}");
        }
        for name in [
            "host",
            "content-length",
            "x-keep-alive",
            "te-x",
            "upgrades",
            "server",
        ] {
            assert!(!is_hop_by_hop(&HeaderName::from_static(name)), "{name}");
        }
    }

    #[test]
    fn service_times_share_static_values() {
        assert_eq!(millis_value(0), "0");
        assert_eq!(millis_value(42), "42");
        assert_eq!(millis_value(999), "999");
        assert_eq!(millis_value(123_456), "123456");
    }
}
