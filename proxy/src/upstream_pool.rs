//! Per-endpoint upstream connection pools.
//!
//! HTTP/1.1: idle keep-alive connections wait in a lock-free queue; a request takes one (or dials a
//! new one), and the connection returns to the queue when the response body has been read to its
//! end. A response dropped early closes its connection, since it still carries unread bytes.
//! HTTP/2: one multiplexed connection per endpoint, shared by clones of its sender and redialled when
//! it closes.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use crossbeam_queue::ArrayQueue;
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;

use crate::body::RequestBody;

/// Most idle HTTP/1.1 connections kept per endpoint.
const MAX_IDLE: usize = 256;

/// Upstream protocol of a cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamProtocol {
    Http1,
    Http2,
}

/// Settings shared by the pools of a cluster.
#[derive(Debug, Clone)]
pub struct PoolSettings {
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
    #[error("connection failure: {0}")]
    Connect(std::io::Error),
    #[error("connection timeout")]
    ConnectTimeout,
    #[error("upstream reset: {0}")]
    Reset(hyper::Error),
    #[error("connection overflow")]
    Overflow,
}

struct IdleConn {
    sender: http1::SendRequest<RequestBody>,
    uses: u32,
    idle_since: Instant,
}

/// Pool of one endpoint.
pub struct EndpointPool {
    pub addr: SocketAddr,
    idle: ArrayQueue<IdleConn>,
    h2: ArcSwapOption<http2::SendRequest<RequestBody>>,
    /// Open connections (for `max_connections` and `/clusters`).
    pub open_connections: AtomicU64,
    pub total_connections: AtomicU64,
    settings: PoolSettings,
    h2_redials: AtomicU32,
}

impl std::fmt::Debug for EndpointPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EndpointPool")
            .field("addr", &self.addr)
            .finish()
    }
}

/// Returns an HTTP/1.1 connection to its pool when the response body is finished.
#[derive(Debug)]
pub struct PoolReturn {
    pool: Arc<EndpointPool>,
    conn: Option<http1::SendRequest<RequestBody>>,
    uses: u32,
}

impl std::fmt::Debug for IdleConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdleConn")
            .field("uses", &self.uses)
            .finish()
    }
}

impl PoolReturn {
    /// Give the connection back (called when the response body ended cleanly).
    pub fn release(mut self) {
        if let Some(sender) = self.conn.take() {
            let limit = self.pool.settings.max_requests_per_connection;
            if limit.is_some_and(|l| self.uses >= l) || sender.is_closed() {
                return;
            }
            let _ = self.pool.idle.push(IdleConn {
                sender,
                uses: self.uses,
                idle_since: Instant::now(),
            });
        }
    }
}

/// A response and, for HTTP/1.1, the handle that returns its connection.
pub struct UpstreamResponse {
    pub response: Response<Incoming>,
    pub pool_return: Option<PoolReturn>,
}

impl EndpointPool {
    /// A new, empty pool.
    pub fn new(addr: SocketAddr, settings: PoolSettings) -> Arc<Self> {
        Arc::new(EndpointPool {
            addr,
            idle: ArrayQueue::new(MAX_IDLE),
            h2: ArcSwapOption::empty(),
            open_connections: AtomicU64::new(0),
            total_connections: AtomicU64::new(0),
            settings,
            h2_redials: AtomicU32::new(0),
        })
    }

    async fn dial(&self) -> Result<TcpStream, UpstreamError> {
        let stream =
            tokio::time::timeout(self.settings.connect_timeout, TcpStream::connect(self.addr))
                .await
                .map_err(|_| UpstreamError::ConnectTimeout)?
                .map_err(UpstreamError::Connect)?;
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }

    /// Send a request. `upgrade` asks for a fresh HTTP/1.1 connection that may be upgraded.
    pub async fn send(
        self: &Arc<Self>,
        req: Request<RequestBody>,
        max_connections: Option<u64>,
        upgrade: bool,
    ) -> Result<UpstreamResponse, UpstreamError> {
        match self.settings.protocol {
            UpstreamProtocol::Http2 if !upgrade => self.send_h2(req, max_connections).await,
            _ => self.send_h1(req, max_connections, upgrade).await,
        }
    }

    async fn send_h1(
        self: &Arc<Self>,
        req: Request<RequestBody>,
        max_connections: Option<u64>,
        upgrade: bool,
    ) -> Result<UpstreamResponse, UpstreamError> {
        let mut reused = None;
        if !upgrade {
            while let Some(c) = self.idle.pop() {
                if c.sender.is_closed() {
                    continue;
                }
                if self
                    .settings
                    .idle_timeout
                    .is_some_and(|t| c.idle_since.elapsed() > t)
                {
                    continue;
                }
                let mut c = c;
                if c.sender.ready().await.is_ok() {
                    reused = Some(c);
                    break;
                }
            }
        }
        let (mut sender, uses) = match reused {
            Some(c) => (c.sender, c.uses),
            None => {
                if max_connections
                    .is_some_and(|m| self.open_connections.load(Ordering::Relaxed) >= m)
                {
                    return Err(UpstreamError::Overflow);
                }
                let stream = self.dial().await?;
                let (sender, conn) = http1::Builder::new()
                    .handshake(TokioIo::new(stream))
                    .await
                    .map_err(UpstreamError::Reset)?;
                self.open_connections.fetch_add(1, Ordering::Relaxed);
                self.total_connections.fetch_add(1, Ordering::Relaxed);
                let pool = self.clone();
                tokio::spawn(async move {
                    let _ = conn.with_upgrades().await;
                    pool.open_connections.fetch_sub(1, Ordering::Relaxed);
                });
                (sender, 0)
            }
        };
        let response = sender
            .send_request(req)
            .await
            .map_err(UpstreamError::Reset)?;
        let pool_return = (!upgrade).then(|| PoolReturn {
            pool: self.clone(),
            conn: Some(sender),
            uses: uses + 1,
        });
        Ok(UpstreamResponse {
            response,
            pool_return,
        })
    }

    async fn send_h2(
        self: &Arc<Self>,
        req: Request<RequestBody>,
        max_connections: Option<u64>,
    ) -> Result<UpstreamResponse, UpstreamError> {
        let current = self.h2.load_full().filter(|s| !s.is_closed());
        let mut sender = match current {
            Some(s) => (*s).clone(),
            None => {
                if max_connections
                    .is_some_and(|m| self.open_connections.load(Ordering::Relaxed) >= m)
                {
                    return Err(UpstreamError::Overflow);
                }
                let stream = self.dial().await?;
                let (sender, conn) = http2::Builder::new(TokioExecutor::new())
                    .timer(TokioTimer::new())
                    .handshake(TokioIo::new(stream))
                    .await
                    .map_err(UpstreamError::Reset)?;
                self.open_connections.fetch_add(1, Ordering::Relaxed);
                self.total_connections.fetch_add(1, Ordering::Relaxed);
                self.h2_redials.fetch_add(1, Ordering::Relaxed);
                let pool = self.clone();
                tokio::spawn(async move {
                    let _ = conn.await;
                    pool.open_connections.fetch_sub(1, Ordering::Relaxed);
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
        Ok(UpstreamResponse {
            response,
            pool_return: None,
        })
    }

    /// Idle HTTP/1.1 connections waiting in the pool.
    pub fn idle_count(&self) -> usize {
        self.idle.len()
    }
}
