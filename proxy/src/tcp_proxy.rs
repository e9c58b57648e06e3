//! The `envoy.filters.network.tcp_proxy` network filter: a filter chain that relays bytes.
//!
//! Each downstream connection (plain, or TLS terminated by the chain) goes to one cluster:
//! `cluster`, or one of `weighted_clusters` drawn by weight per connection (a canary at L4). An
//! endpoint is chosen by the cluster's load balancer and health, and dialled (with the cluster's
//! upstream TLS when it has one), up to `max_connect_attempts` times. Bytes then flow both ways;
//! a half-close (FIN) on one side is passed to the other while the other direction keeps
//! flowing, as Envoy's tcp_proxy does. The connection closes after `idle_timeout` (default 1 h;
//! 0 turns it off) without bytes in either direction. An unknown cluster, no healthy endpoint, or
//! connect failures on every attempt close the downstream connection.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::metrics::TcpProxyStats;
use crate::route_table::ClusterRef;
use crate::weighted_pick::{fast_random, WeightedPick};

/// Envoy's default `idle_timeout`.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

/// A compiled `TcpProxy`.
#[derive(Debug)]
pub struct TcpProxyConfig {
    pub stat_prefix: String,
    pub stats: TcpProxyStats,
    /// The clusters named (a missing one closes the connection).
    pub targets: Vec<ClusterRef>,
    /// Over `targets`, for `weighted_clusters`; `None` for a single `cluster`.
    pub weights: Option<WeightedPick>,
    pub idle_timeout: Option<Duration>,
    pub max_connect_attempts: u32,
}

impl TcpProxyConfig {
    fn pick(&self) -> Option<&ClusterRef> {
        match &self.weights {
            Some(w) => self.targets.get(w.pick_random(fast_random())),
            None => self.targets.first(),
        }
    }
}

/// Decides, at the downstream's first bytes (or its end), whether the connection may go on: the
/// chain's network RBAC filters, which Envoy runs then (`ONE_TIME_ON_FIRST_BYTE`), after the
/// upstream connection is made.
pub type FirstByteGate = Box<dyn FnOnce() -> bool + Send>;

/// Relay one downstream connection.
pub async fn serve<T: AsyncRead + AsyncWrite + Unpin>(
    downstream: T,
    config: Arc<TcpProxyConfig>,
    gate: Option<FirstByteGate>,
) {
    config.stats.cx_total.inc();
    let Some(target) = config.pick() else {
        return;
    };
    let Some(cluster) = target.cluster.clone() else {
        config.stats.cx_no_route.inc();
        tracing::debug!(cluster = %target.name, "tcp_proxy: unknown cluster, closing");
        return;
    };
    for _ in 0..config.max_connect_attempts.max(1) {
        let Ok((endpoint, active)) = cluster.acquire(None) else {
            return;
        };
        match endpoint.pool.connect(None).await {
            Ok(upstream) => {
                relay(
                    downstream,
                    upstream,
                    config.idle_timeout,
                    &config.stats,
                    gate,
                )
                .await;
                drop(active);
                return;
            }
            Err(e) => {
                cluster.stats.cx_connect_fail.inc();
                tracing::debug!(cluster = %cluster.name, endpoint = %endpoint.pool.addr, error = %e, "tcp_proxy: connect failed");
            }
        }
    }
}

/// Copy bytes both ways until both sides have finished, either fails, or `idle` passes without
/// bytes.
async fn relay<A, B>(
    a: A,
    b: B,
    idle: Option<Duration>,
    stats: &TcpProxyStats,
    mut gate: Option<FirstByteGate>,
) where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let (mut a_read, mut a_write) = tokio::io::split(a);
    let (mut b_read, mut b_write) = tokio::io::split(b);
    let mut a_buf = vec![0u8; 16 * 1024];
    let mut b_buf = vec![0u8; 16 * 1024];
    let (mut a_open, mut b_open) = (true, true);
    while a_open || b_open {
        let quiet = async {
            match idle {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = a_read.read(&mut a_buf), if a_open => match r {
                // The downstream's first bytes (or its end) meet the network RBAC filters.
                _ if gate.take().is_some_and(|allows| !allows()) => return,
                Ok(0) => {
                    a_open = false;
                    let _ = b_write.shutdown().await;
                }
                Ok(n) => {
                    stats.rx_bytes.inc_by(n as u64);
                    if b_write.write_all(&a_buf[..n]).await.is_err() {
                        return;
                    }
                }
                Err(_) => return,
            },
            r = b_read.read(&mut b_buf), if b_open => match r {
                Ok(0) => {
                    b_open = false;
                    let _ = a_write.shutdown().await;
                }
                Ok(n) => {
                    stats.tx_bytes.inc_by(n as u64);
                    if a_write.write_all(&b_buf[..n]).await.is_err() {
                        return;
                    }
                }
                Err(_) => return,
            },
            _ = quiet => {
                stats.idle_timeout.inc();
                return;
            }
        }
    }
}
