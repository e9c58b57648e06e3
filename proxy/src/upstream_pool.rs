//! Per-endpoint upstream connection pools.
//!
//! HTTP/1.1: idle keep-alive connections wait in a lock-free queue, as many as were in use at once
//! (the cluster's `max_connections` bounds that, as in Envoy); a request takes one (or dials a
//! new one), speaks HTTP/1.1 on it from its own task ([`crate::upstream_http1`]), and the
//! connection returns to the queue when the response body has been read to its end. A response
//! dropped early closes its connection, since it still carries unread bytes.
//! HTTP/2: one multiplexed connection per endpoint, shared by clones of its sender and redialled when
//! it closes.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use crossbeam_queue::SegQueue;
use hyper::client::conn::http2;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::sync::Notify;

use crate::body::{RequestBody, ResponseBody};
use crate::buffer_pool;
use crate::upstream_http1::{self, Http1Connection};

/// Upstream protocol of a cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamProtocol {
    Http1,
    Http2,
}

/// A cluster's connection budget (`circuit_breakers`): open connections across all its endpoints,
/// and requests waiting for a connection. Shared by the endpoint pools of one cluster.
#[derive(Debug)]
pub struct ConnectionBudget {
    pub max_connections: u64,
    pub max_pending_requests: u64,
    open: AtomicU64,
    pending: AtomicU64,
    /// Signalled when a connection returns to a pool or closes.
    released: Notify,
}

impl ConnectionBudget {
    /// A budget with the given limits.
    pub fn new(max_connections: u64, max_pending_requests: u64) -> Arc<Self> {
        Arc::new(ConnectionBudget {
            max_connections,
            max_pending_requests,
            open: AtomicU64::new(0),
            pending: AtomicU64::new(0),
            released: Notify::new(),
        })
    }

    /// Reserve a connection slot; `false` when the cluster is at `max_connections`.
    fn try_reserve(&self) -> bool {
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max_connections).then_some(n + 1)
            })
            .is_ok()
    }

    /// Give a slot back (the connection closed, or dialling it failed).
    pub(crate) fn closed(&self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
        self.released.notify_one();
    }
}

/// Counts a request as pending while it waits for a connection.
struct PendingGuard<'a>(&'a ConnectionBudget);

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.0.pending.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Settings shared by the pools of a cluster.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    /// TLS towards the endpoints (`transport_socket`), if any.
    pub tls: Option<crate::tls::UpstreamTls>,
    /// Connection limits, shared by every endpoint pool of the cluster.
    pub budget: Arc<ConnectionBudget>,
    pub protocol: UpstreamProtocol,
    pub connect_timeout: Duration,
    /// Close a connection after this many requests.
    pub max_requests_per_connection: Option<u32>,
    /// Close idle connections older than this.
    pub idle_timeout: Option<Duration>,
}

/// Why an upstream request failed before response headers.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("upstream per-try timeout")]
    PerTryTimeout,
    #[error("connection failure: {0}")]
    Connect(std::io::Error),
    #[error("connection timeout")]
    ConnectTimeout,
    #[error("upstream reset: {0}")]
    Reset(hyper::Error),
    #[error("upstream reset: {0}")]
    Io(std::io::Error),
    #[error("upstream protocol error: {0}")]
    Protocol(String),
    #[error("connection overflow")]
    Overflow,
    #[error("TLS handshake failed: {0}")]
    Tls(std::io::Error),
}

/// A connection to an endpoint: plain TCP or TLS.
pub type UpstreamStream =
    tokio_util::either::Either<TcpStream, Box<tokio_rustls::client::TlsStream<TcpStream>>>;

/// Pool of one endpoint.
pub struct EndpointPool {
    pub addr: SocketAddr,
    /// Unbounded: a cap below the peak concurrency would close connections only to dial new
    /// ones for the next burst.
    idle: SegQueue<IdleConnection>,
    h2: ArcSwapOption<http2::SendRequest<RequestBody>>,
    /// Open connections (for `/clusters`); shared with each HTTP/1.1 connection, which counts
    /// itself out when it closes.
    pub open_connections: Arc<AtomicU64>,
    pub total_connections: AtomicU64,
    settings: PoolSettings,
}

impl std::fmt::Debug for EndpointPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EndpointPool")
            .field("addr", &self.addr)
            .finish()
    }
}

/// An HTTP/1.1 connection waiting in a pool, and since when (read only with an `idle_timeout`).
/// The instant is kept here rather than in the connection, which a response body carries from
/// layer to layer.
struct IdleConnection {
    conn: Http1Connection,
    since: Option<Instant>,
}

/// What an HTTP/1.1 exchange needs to know of its request once the head is encoded.
#[derive(Clone, Copy)]
struct H1Request {
    /// The body goes in chunks (`transfer-encoding: chunked`).
    chunked: bool,
    /// A HEAD request: its response has no body whatever its framing says.
    head_request: bool,
    /// It may be sent again on another connection (RFC 9110 9.2.2).
    idempotent: bool,
    /// It asks for a fresh connection that may be upgraded.
    upgrade: bool,
}

impl EndpointPool {
    /// A new, empty pool.
    pub fn new(addr: SocketAddr, settings: PoolSettings) -> Arc<Self> {
        let pool = Arc::new(EndpointPool {
            addr,
            idle: SegQueue::new(),
            h2: ArcSwapOption::empty(),
            open_connections: Arc::new(AtomicU64::new(0)),
            total_connections: AtomicU64::new(0),
            settings,
        });
        idle_sweep::register(&pool);
        pool
    }

    async fn dial(&self) -> Result<UpstreamStream, UpstreamError> {
        self.dial_to(self.addr).await
    }

    /// A connection outside the pool (a health-check probe, a TCP proxy's relay), to `port`
    /// instead of the endpoint's when given, with the cluster's TLS; not counted among the pool's
    /// connections.
    pub async fn connect(&self, port: Option<u16>) -> Result<UpstreamStream, UpstreamError> {
        let mut addr = self.addr;
        if let Some(port) = port {
            addr.set_port(port);
        }
        self.dial_to(addr).await
    }

    async fn dial_to(&self, addr: SocketAddr) -> Result<UpstreamStream, UpstreamError> {
        let connect = async {
            let tcp = TcpStream::connect(addr)
                .await
                .map_err(UpstreamError::Connect)?;
            let _ = tcp.set_nodelay(true);
            match &self.settings.tls {
                None => Ok(UpstreamStream::Left(tcp)),
                Some(tls) => {
                    let name = tls
                        .sni
                        .clone()
                        .unwrap_or_else(|| ServerName::IpAddress(addr.ip().into()));
                    let stream = tokio_rustls::TlsConnector::from(tls.config.clone())
                        .connect(name, tcp)
                        .await
                        .map_err(UpstreamError::Tls)?;
                    Ok(UpstreamStream::Right(Box::new(stream)))
                }
            }
        };
        tokio::time::timeout(self.settings.connect_timeout, connect)
            .await
            .map_err(|_| UpstreamError::ConnectTimeout)?
    }

    /// Send a request. `upgrade` asks for a fresh HTTP/1.1 connection that may be upgraded.
    ///
    /// Not an `async fn`: an async function keeps its arguments in its future for as long as it
    /// runs, so the request (264 bytes) would stay in every request's future, beside the copy
    /// the protocol's own future holds. The choice of protocol needs no waiting.
    pub fn send(
        self: &Arc<Self>,
        req: Request<RequestBody>,
        upgrade: bool,
    ) -> impl std::future::Future<Output = Result<Response<ResponseBody>, UpstreamError>> + Send + '_
    {
        use futures_util::future::Either;
        match self.settings.protocol {
            UpstreamProtocol::Http2 if !upgrade => Either::Left(self.send_h2(req)),
            _ => Either::Right(self.send_h1(req, upgrade)),
        }
    }

    /// Take an idle HTTP/1.1 connection that is still usable.
    fn take_idle(&self) -> Option<Http1Connection> {
        while let Some(mut c) = self.idle.pop() {
            if self.still_usable(&mut c) {
                return Some(c.conn);
            }
        }
        None
    }

    /// An idle connection within `idle_timeout` that the upstream has not closed.
    fn still_usable(&self, c: &mut IdleConnection) -> bool {
        let expired = self
            .settings
            .idle_timeout
            .zip(c.since)
            .is_some_and(|(t, since)| since.elapsed() > t);
        !expired && c.conn.is_usable()
    }

    /// Close the idle connections that the upstream has closed or that outlived `idle_timeout`;
    /// the others stay queued.
    fn sweep_idle(&self) {
        for _ in 0..self.idle.len() {
            let Some(mut c) = self.idle.pop() else {
                break;
            };
            if self.still_usable(&mut c) {
                self.idle.push(c);
            }
        }
    }

    /// Give an HTTP/1.1 connection back after a complete exchange; it closes instead when it has
    /// served `max_requests_per_connection`.
    pub(crate) fn release(&self, conn: Http1Connection) {
        idle_sweep::ensure_running();
        let limit = self.settings.max_requests_per_connection;
        if limit.is_some_and(|l| conn.uses >= l) {
            return;
        }
        let since = self.settings.idle_timeout.map(|_| Instant::now());
        self.idle.push(IdleConnection { conn, since });
        self.settings.budget.released.notify_one();
    }

    /// Reserve a connection slot, or (with `reuse`) take an idle connection that comes back while
    /// waiting, counted as a pending request (`max_pending_requests`); overflow when that queue is
    /// full. `Ok(None)` means a slot is reserved: the caller dials, and gives it back on failure.
    async fn wait_for_connection(
        &self,
        reuse: bool,
    ) -> Result<Option<Http1Connection>, UpstreamError> {
        let budget = &self.settings.budget;
        if budget.try_reserve() {
            return Ok(None);
        }
        if budget.pending.fetch_add(1, Ordering::Relaxed) >= budget.max_pending_requests {
            budget.pending.fetch_sub(1, Ordering::Relaxed);
            return Err(UpstreamError::Overflow);
        }
        let _pending = PendingGuard(budget);
        loop {
            let released = budget.released.notified();
            if reuse {
                if let Some(c) = self.take_idle() {
                    return Ok(Some(c));
                }
            }
            if budget.try_reserve() {
                return Ok(None);
            }
            released.await;
        }
    }

    /// Write the request's head (and a body that came whole with it) into a buffer, then send it
    /// over an HTTP/1.1 connection. The head is encoded here, before any waiting, so that the
    /// returned future holds the encoded bytes and the body rather than the request.
    fn send_h1(
        self: &Arc<Self>,
        req: Request<RequestBody>,
        upgrade: bool,
    ) -> impl std::future::Future<Output = Result<Response<ResponseBody>, UpstreamError>> + Send + '_
    {
        let head_request = req.method() == http::Method::HEAD;
        // RFC 9110 9.2.2: only an idempotent request may be sent again by itself.
        let idempotent = req.method().is_idempotent();
        let mut head = buffer_pool::take_write();
        let framing = upstream_http1::encode_head(&mut head, &req);
        let chunked = framing == crate::http1_codec::RequestBodyFraming::Chunked;
        let (parts, body) = req.into_parts();
        crate::header_pool::give(parts.headers);
        self.exchange_h1(
            head,
            body,
            H1Request {
                chunked,
                head_request,
                idempotent,
                upgrade,
            },
        )
    }

    /// An idle HTTP/1.1 connection, or a new one when there is none (or `upgrade` wants a fresh
    /// one).
    async fn connection_h1(
        self: &Arc<Self>,
        upgrade: bool,
    ) -> Result<Http1Connection, UpstreamError> {
        let idle = if upgrade { None } else { self.take_idle() };
        if let Some(c) = idle {
            return Ok(c);
        }
        if let Some(c) = self.wait_for_connection(!upgrade).await? {
            return Ok(c);
        }
        let (open, budget) = (&self.open_connections, &self.settings.budget);
        self.open(
            |stream| async move { Ok(Http1Connection::new(stream, open.clone(), budget.clone())) },
        )
        .await
    }

    /// Send an encoded head and its body, on another kept-alive connection when one turns out
    /// to have been closed by the upstream (idempotent requests only).
    async fn exchange_h1(
        self: &Arc<Self>,
        mut head: Vec<u8>,
        mut body: RequestBody,
        req: H1Request,
    ) -> Result<Response<ResponseBody>, UpstreamError> {
        let H1Request {
            chunked,
            head_request,
            idempotent,
            upgrade,
        } = req;
        // A body taken whole with the head leaves the request retryable.
        if !chunked {
            if let Err(e) = upstream_http1::take_ready_body(&mut head, &mut body).await {
                buffer_pool::give_write(head);
                return Err(UpstreamError::Io(std::io::Error::other(e)));
            }
        }
        let mut attempts = 0;
        let result = loop {
            attempts += 1;
            let mut conn = match self.connection_h1(upgrade).await {
                Ok(c) => c,
                Err(e) => break Err(e),
            };
            let reused = conn.uses > 0;
            conn.uses = conn.uses.saturating_add(1);
            let mut buf = buffer_pool::take_read();
            match conn
                .exchange(&head, &mut body, chunked, &mut buf, head_request)
                .await
            {
                Ok((response_head, complete)) => {
                    let response =
                        upstream_http1::into_response(conn, buf, response_head, complete, self);
                    break Ok(response.map(|b| ResponseBody::Http1(b, Default::default())));
                }
                // A kept-alive connection the upstream had already closed: try another.
                Err(e) if e.retryable && idempotent && reused && attempts < 4 => {
                    buffer_pool::give_read(buf);
                }
                Err(e) => {
                    buffer_pool::give_read(buf);
                    break Err(e.error);
                }
            }
        };
        buffer_pool::give_write(head);
        result
    }

    /// Send a request over the endpoint's HTTP/2 connection, made first when there is none.
    /// An `async move` block rather than an `async fn`, which would keep a second copy of the
    /// request in its future.
    #[allow(clippy::manual_async_fn)] // deliberately not an `async fn`: see above
    fn send_h2(
        self: &Arc<Self>,
        req: Request<RequestBody>,
    ) -> impl std::future::Future<Output = Result<Response<ResponseBody>, UpstreamError>> + Send + '_
    {
        async move {
            let current = self.h2.load_full().filter(|s| !s.is_closed());
            let mut sender = match current {
                Some(s) => (*s).clone(),
                None => {
                    self.wait_for_connection(false).await?;
                    let (sender, conn) = self
                        .open(|stream| async move {
                            http2::Builder::new(TokioExecutor::new())
                                .timer(TokioTimer::new())
                                .handshake(TokioIo::new(stream))
                                .await
                                .map_err(UpstreamError::Reset)
                        })
                        .await?;
                    let pool = self.clone();
                    tokio::spawn(async move {
                        let _ = conn.await;
                        pool.connection_closed();
                    });
                    self.h2.store(Some(Arc::new(sender.clone())));
                    sender
                }
            };
            sender.ready().await.map_err(UpstreamError::Reset)?;
            let response = sender
                .send_request(req)
                .await
                .map_err(UpstreamError::Reset)?;
            Ok(response.map(|b| ResponseBody::Http2(b, Default::default())))
        }
    }

    /// Dial and set the connection up (an HTTP/2 handshake, or wrapping it for HTTP/1.1) on a
    /// reserved budget slot; the slot is given back if either fails.
    async fn open<T, F, Fut>(&self, setup: F) -> Result<T, UpstreamError>
    where
        F: FnOnce(UpstreamStream) -> Fut,
        Fut: std::future::Future<Output = Result<T, UpstreamError>>,
    {
        // Dialling (TCP, then perhaps a TLS handshake) is the large, rare state of a request's
        // upstream exchange: boxed, it does not make every request's future carry its size.
        let result = Box::pin(async { setup(self.dial().await?).await }).await;
        match result {
            Ok(parts) => {
                self.connection_opened();
                Ok(parts)
            }
            Err(e) => {
                self.settings.budget.closed();
                Err(e)
            }
        }
    }

    /// Count a new connection (its budget slot was reserved before dialling).
    fn connection_opened(&self) {
        self.open_connections.fetch_add(1, Ordering::Relaxed);
        self.total_connections.fetch_add(1, Ordering::Relaxed);
    }

    fn connection_closed(&self) {
        self.open_connections.fetch_sub(1, Ordering::Relaxed);
        self.settings.budget.closed();
    }
}

/// Idle HTTP/1.1 connections wait in their pool without a task of their own, so nothing would
/// notice an upstream closing one until a request takes it. A single sweep over every pool, every
/// [`idle_sweep::INTERVAL`], closes those (and those past `idle_timeout`), so that they do not
/// linger in CLOSE_WAIT, nor count as open, while traffic is quiet.
mod idle_sweep {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex, Weak};
    use std::time::Duration;

    use super::EndpointPool;

    pub const INTERVAL: Duration = Duration::from_secs(2);

    static POOLS: Mutex<Vec<Weak<EndpointPool>>> = Mutex::new(Vec::new());
    static RUNNING: AtomicBool = AtomicBool::new(false);

    /// Include a new pool in the sweeps.
    pub fn register(pool: &Arc<EndpointPool>) {
        if let Ok(mut pools) = POOLS.lock() {
            // Dropped pools are forgotten by each sweep, and here whenever the list doubles (so
            // that registering stays O(1) amortized when no sweep runs yet).
            if pools.len().is_power_of_two() {
                pools.retain(|w| w.strong_count() > 0);
            }
            pools.push(Arc::downgrade(pool));
        }
    }

    /// Start the sweeping task on the current runtime unless it runs already (called when a
    /// connection goes idle, which is always on a runtime; one relaxed load otherwise).
    pub fn ensure_running() {
        if RUNNING.load(Ordering::Relaxed) {
            return;
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if !RUNNING.swap(true, Ordering::AcqRel) {
            handle.spawn(sweep_forever());
        }
    }

    /// Clears [`RUNNING`] when the task ends (its runtime shut down), so a later call restarts it.
    struct Running;

    impl Drop for Running {
        fn drop(&mut self) {
            RUNNING.store(false, Ordering::Release);
        }
    }

    async fn sweep_forever() {
        let _running = Running;
        let mut tick = tokio::time::interval(INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let live: Vec<Arc<EndpointPool>> = match POOLS.lock() {
                Ok(mut pools) => {
                    pools.retain(|w| w.strong_count() > 0);
                    pools.iter().filter_map(Weak::upgrade).collect()
                }
                Err(_) => return,
            };
            for pool in live {
                pool.sweep_idle();
            }
        }
    }
}
