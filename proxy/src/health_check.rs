//! Active health checking (a cluster's `health_checks`), as Envoy's HTTP and TCP health checkers.
//!
//! Every endpoint of a cluster is probed on its own schedule. An HTTP probe sends `GET path`
//! (`Host` = `http_health_check.host`, else the endpoint's `health_check_config.hostname` or
//! `hostname`, else the cluster name; `User-Agent: Envoy/HC`) and passes on a status in
//! `expected_statuses` (default 200) with the `receive` payloads in its body; a TCP probe connects,
//! writes `send` and waits for `receive`. The outcome moves the endpoint as Envoy's does:
//!
//! - an endpoint starts failed until its first probe, and one success is enough then;
//! - a failed endpoint comes back after `healthy_threshold` successes in a row;
//! - a healthy endpoint fails at once on an unexpected status (unless it is in
//!   `retriable_statuses`), and after `unhealthy_threshold` failures in a row for a connection
//!   failure, a reset, a timeout (`timeout`) or a retriable status;
//! - the next probe comes after `interval`, `unhealthy_interval`, or the `*_edge_interval` while a
//!   change is pending, plus jitter; while the cluster has never opened an upstream connection,
//!   after `no_traffic_interval` (60 s by default) instead.
//!
//! Failed endpoints get no traffic, within the cluster's panic threshold (see
//! [`crate::cluster`]). A new cluster with health checks is put into service once each of its
//! endpoints has been probed once (Envoy's cluster warming), so no request reaches an endpoint
//! that has never passed. The checker runs off the request path: a request reads only the endpoint
//! picks that the checker rebuilds when an endpoint changes state.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::cluster::Cluster;
use crate::metrics::HealthCheckStats;
use crate::upstream_pool::EndpointPool;
use crate::weighted_pick::fast_random;

/// A compiled `health_checks[0]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheckConfig {
    pub timeout: Duration,
    pub interval: Duration,
    pub unhealthy_interval: Duration,
    pub unhealthy_edge_interval: Duration,
    pub healthy_edge_interval: Duration,
    pub no_traffic_interval: Duration,
    pub no_traffic_healthy_interval: Duration,
    pub initial_jitter: Duration,
    pub interval_jitter: Duration,
    pub interval_jitter_percent: u32,
    pub unhealthy_threshold: u32,
    pub healthy_threshold: u32,
    pub probe: Probe,
}

/// What a probe sends and expects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    Http(HttpProbe),
    /// Connect; write `send`; wait for each of `receive` in order (none: connecting is enough).
    Tcp {
        send: Vec<u8>,
        receive: Vec<Vec<u8>>,
    },
}

/// `http_health_check`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpProbe {
    pub method: String,
    pub path: String,
    /// `host`, when set.
    pub host: Option<String>,
    /// `request_headers_to_add` (name, value), in order.
    pub headers: Vec<(String, String)>,
    /// `request_headers_to_remove` (lowercase names): may remove `user-agent`.
    pub remove: Vec<String>,
    /// `[start, end)` status ranges that pass (default 200 only).
    pub expected: Vec<(u16, u16)>,
    /// Status ranges that fail like a network error (counted toward `unhealthy_threshold`).
    pub retriable: Vec<(u16, u16)>,
    pub send: Vec<u8>,
    pub receive: Vec<Vec<u8>>,
    /// How much of the body is kept to match `receive` (`response_buffer_size`, default 1024).
    pub buffer: usize,
}

/// Per-endpoint health-check settings (`lb_endpoints[].endpoint.health_check_config`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HealthCheckTarget {
    /// `port_value`: probe this port instead of the endpoint's.
    pub port: Option<u16>,
    /// `hostname`, else the endpoint's `hostname`: the probe's `Host`.
    pub hostname: Option<String>,
    /// `disable_active_health_check`: never probed, always healthy as far as checks go.
    pub disabled: bool,
}

/// What one probe came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Passed,
    /// An unexpected status: fails a healthy endpoint at once.
    Failed,
    /// A status in `retriable_statuses`.
    Retriable,
    /// Connection refused or reset, or a malformed answer.
    Network,
    /// No answer within `timeout`.
    Timeout,
}

#[derive(Debug, Clone, Copy)]
struct HostHealth {
    failed: bool,
    checked: bool,
    passes_in_row: u32,
    failures_in_row: u32,
}

impl Default for HostHealth {
    fn default() -> Self {
        HostHealth {
            failed: true,
            checked: false,
            passes_in_row: 0,
            failures_in_row: 0,
        }
    }
}

/// The health of a cluster's endpoints as its checks found it.
#[derive(Debug)]
pub struct HealthChecker {
    pub config: Arc<HealthCheckConfig>,
    hosts: Mutex<HashMap<SocketAddr, HostHealth>>,
    first_round: watch::Sender<bool>,
    stats: HealthCheckStats,
}

impl HealthChecker {
    pub fn new(config: HealthCheckConfig, stats: HealthCheckStats) -> Self {
        HealthChecker {
            config: Arc::new(config),
            hosts: Mutex::new(HashMap::new()),
            first_round: watch::Sender::new(false),
            stats,
        }
    }

    fn hosts(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, HostHealth>> {
        // The map holds plain counters: a panic elsewhere cannot leave it inconsistent.
        self.hosts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether the endpoint at `addr` is failed (or not probed yet).
    pub fn is_failed(&self, addr: SocketAddr) -> bool {
        self.hosts().get(&addr).is_none_or(|h| h.failed)
    }

    /// Count `outcome` for `addr`. Returns whether the endpoint picks must be rebuilt (its
    /// state changed, or this was its first probe) and when to probe it next.
    fn record(&self, addr: SocketAddr, outcome: Outcome, traffic: bool) -> (bool, Duration) {
        let c = &self.config;
        let mut hosts = self.hosts();
        let h = hosts.entry(addr).or_default();
        let first = !h.checked;
        h.checked = true;
        let was_failed = h.failed;
        let mut pending = false;
        if outcome == Outcome::Passed {
            self.stats.success.inc();
            h.failures_in_row = 0;
            if h.failed {
                h.passes_in_row += 1;
                if first || h.passes_in_row >= c.healthy_threshold.max(1) {
                    h.failed = false;
                    h.passes_in_row = 0;
                } else {
                    pending = true;
                }
            }
        } else {
            self.stats.failure.inc();
            if matches!(outcome, Outcome::Network | Outcome::Timeout) {
                self.stats.network_failure.inc();
            }
            h.passes_in_row = 0;
            if !h.failed {
                h.failures_in_row += 1;
                if outcome == Outcome::Failed || h.failures_in_row >= c.unhealthy_threshold.max(1) {
                    h.failed = true;
                } else {
                    pending = true;
                }
            }
        }
        let flipped = was_failed != h.failed;
        let healthy = hosts.values().filter(|h| !h.failed).count();
        drop(hosts);
        self.stats.healthy.set(healthy as i64);
        let passed = outcome == Outcome::Passed;
        let base = if traffic {
            match (passed, pending) {
                (true, true) => c.healthy_edge_interval,
                (true, false) => c.interval,
                (false, true) => c.unhealthy_edge_interval,
                (false, false) => c.unhealthy_interval,
            }
        } else if passed && !pending {
            c.no_traffic_healthy_interval
        } else {
            c.no_traffic_interval
        };
        (flipped || first, self.with_jitter(base))
    }

    fn with_jitter(&self, base: Duration) -> Duration {
        let c = &self.config;
        let ms = base.as_millis() as u64;
        let mut out = ms;
        let by_percent = u64::from(c.interval_jitter_percent) * ms / 100;
        if by_percent > 0 {
            out += fast_random() % by_percent;
        }
        let jitter = c.interval_jitter.as_millis() as u64;
        if jitter > 0 {
            out += fast_random() % jitter;
        }
        Duration::from_millis(out.max(1))
    }

    /// Take over what `previous` (the same cluster's checker before a configuration change)
    /// knew, when it probed the same way: endpoints it has probed keep their state and are not
    /// waited for again, as Envoy keeps hosts' health across endpoint updates.
    pub fn inherit(&self, previous: &HealthChecker) {
        if previous.config != self.config {
            return;
        }
        let known = previous.hosts().clone();
        let mut hosts = self.hosts();
        for (addr, health) in known {
            hosts.entry(addr).or_insert(health);
        }
    }

    /// Drop the state of endpoints no longer in the cluster; tell whether every endpoint in it
    /// has been probed.
    fn retain(&self, current: &HashSet<SocketAddr>) -> bool {
        let mut hosts = self.hosts();
        hosts.retain(|a, _| current.contains(a));
        current
            .iter()
            .all(|a| hosts.get(a).is_some_and(|h| h.checked))
    }

    /// Start probing the endpoints of `cluster` (which holds this checker). The returned
    /// receiver turns true once every endpoint has been probed once.
    pub fn start(cluster: &Arc<Cluster>) -> Option<watch::Receiver<bool>> {
        let checker = cluster.health_checker.clone()?;
        let rx = checker.first_round.subscribe();
        tokio::spawn(run(Arc::downgrade(cluster), checker));
        Some(rx)
    }

    /// Wait until every endpoint has been probed once, at most the probe timeout and a margin.
    pub async fn warmed(rx: watch::Receiver<bool>, timeout: Duration) {
        let mut rx = rx;
        let _ =
            tokio::time::timeout(timeout + Duration::from_secs(1), rx.wait_for(|done| *done)).await;
    }
}

/// One endpoint to probe.
struct Target {
    pool: Arc<EndpointPool>,
    port: Option<u16>,
    host: String,
}

/// Probe the endpoints of `cluster` until the cluster is gone.
async fn run(cluster: Weak<Cluster>, checker: Arc<HealthChecker>) {
    let config = checker.config.clone();
    let mut due: HashMap<SocketAddr, Instant> = HashMap::new();
    let mut in_flight: HashSet<SocketAddr> = HashSet::new();
    let mut running = FuturesUnordered::new();
    loop {
        let now = Instant::now();
        // Look again at least every second: DNS and EDS change the endpoints.
        let mut wake = now + Duration::from_secs(1);
        {
            let Some(cluster) = cluster.upgrade() else {
                return;
            };
            let set = cluster.endpoints.load();
            let mut current = HashSet::new();
            for e in set.levels.iter().flat_map(|l| l.endpoints.iter()) {
                if e.health_check.disabled {
                    continue;
                }
                let addr = e.pool.addr;
                current.insert(addr);
                if in_flight.contains(&addr) {
                    continue;
                }
                let at = *due.entry(addr).or_insert_with(|| {
                    let jitter = config.initial_jitter.as_millis() as u64;
                    now + Duration::from_millis(if jitter > 0 {
                        fast_random() % jitter
                    } else {
                        0
                    })
                });
                if at > now {
                    wake = wake.min(at);
                    continue;
                }
                due.remove(&addr);
                in_flight.insert(addr);
                checker.stats.attempt.inc();
                let target = Target {
                    pool: e.pool.clone(),
                    port: e.health_check.port,
                    host: match &config.probe {
                        Probe::Http(HttpProbe { host: Some(h), .. }) => h.clone(),
                        _ => e
                            .health_check
                            .hostname
                            .clone()
                            .unwrap_or_else(|| cluster.name.clone()),
                    },
                };
                let config = config.clone();
                running.push(Box::pin(async move {
                    let outcome =
                        match tokio::time::timeout(config.timeout, probe(&target, &config)).await {
                            Ok(outcome) => outcome,
                            Err(_) => Outcome::Timeout,
                        };
                    (addr, outcome)
                }));
            }
            due.retain(|a, _| current.contains(a));
            if checker.retain(&current) {
                checker.first_round.send_replace(true);
            }
        }
        tokio::select! {
            Some((addr, outcome)) = running.next(), if !running.is_empty() => {
                in_flight.remove(&addr);
                let Some(cluster) = cluster.upgrade() else {
                    return;
                };
                let (changed, next) = checker.record(addr, outcome, cluster.has_had_traffic());
                if outcome != Outcome::Passed {
                    tracing::debug!(cluster = %cluster.name, endpoint = %addr, ?outcome, "health check failed");
                }
                due.insert(addr, Instant::now() + next);
                if changed {
                    cluster.reweigh();
                }
            }
            _ = tokio::time::sleep_until(wake) => {}
        }
    }
}

/// Run one probe against `target` (without the timeout).
async fn probe(target: &Target, config: &HealthCheckConfig) -> Outcome {
    let Ok(mut stream) = target.pool.connect(target.port).await else {
        return Outcome::Network;
    };
    match &config.probe {
        Probe::Http(http) => probe_http(&mut stream, http, &target.host).await,
        Probe::Tcp { send, receive } => {
            if !send.is_empty() && stream.write_all(send).await.is_err() {
                return Outcome::Network;
            }
            if receive.is_empty() {
                return Outcome::Passed;
            }
            let mut buf = Vec::new();
            loop {
                if contains_in_order(&buf, receive) {
                    return Outcome::Passed;
                }
                match read_some(&mut stream, &mut buf).await {
                    Some(0) | None => return Outcome::Network,
                    Some(_) => {}
                }
            }
        }
    }
}

/// The HTTP/1.1 request of `probe` for `host`.
fn http_request(probe: &HttpProbe, host: &str) -> Vec<u8> {
    let mut out = format!(
        "{} {} HTTP/1.1\r\nhost: {host}\r\n",
        probe.method, probe.path
    );
    if !probe.remove.iter().any(|r| r == "user-agent") {
        out.push_str("user-agent: Envoy/HC\r\n");
    }
    for (name, value) in &probe.headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    if !probe.send.is_empty() {
        out.push_str(&format!("content-length: {}\r\n", probe.send.len()));
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(&probe.send);
    bytes
}

async fn probe_http<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    probe: &HttpProbe,
    host: &str,
) -> Outcome {
    if stream.write_all(&http_request(probe, host)).await.is_err() {
        return Outcome::Network;
    }
    let mut buf = Vec::with_capacity(1024);
    let (status, head_len, length) = loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut response = httparse::Response::new(&mut headers);
        match response.parse(&buf) {
            Ok(httparse::Status::Complete(n)) => {
                let Some(code) = response.code else {
                    return Outcome::Network;
                };
                if (100..200).contains(&code) {
                    // An interim answer: drop it and read on.
                    buf.drain(..n);
                    continue;
                }
                let length = response
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                    .and_then(|h| std::str::from_utf8(h.value).ok())
                    .and_then(|v| v.trim().parse::<usize>().ok());
                break (code, n, length);
            }
            Ok(httparse::Status::Partial) if buf.len() < 64 * 1024 => {}
            _ => return Outcome::Network,
        }
        match read_some(stream, &mut buf).await {
            Some(n) if n > 0 => {}
            _ => return Outcome::Network,
        }
    };
    if !probe.receive.is_empty() {
        // The body, as much as the buffer keeps, until it is complete or the peer closes.
        let want = length.map_or(probe.buffer, |l| l.min(probe.buffer));
        while buf.len() - head_len < want && !contains_in_order(&buf[head_len..], &probe.receive) {
            match read_some(stream, &mut buf).await {
                Some(n) if n > 0 => {}
                _ => break,
            }
        }
        let end = buf.len().min(head_len + probe.buffer);
        if !contains_in_order(&buf[head_len..end], &probe.receive) {
            return Outcome::Failed;
        }
    }
    let within = |ranges: &[(u16, u16)]| ranges.iter().any(|&(a, b)| status >= a && status < b);
    if within(&probe.expected) {
        Outcome::Passed
    } else if within(&probe.retriable) {
        Outcome::Retriable
    } else {
        Outcome::Failed
    }
}

async fn read_some<S: AsyncRead + Unpin>(stream: &mut S, buf: &mut Vec<u8>) -> Option<usize> {
    let mut chunk = [0u8; 4096];
    let n = stream.read(&mut chunk).await.ok()?;
    buf.extend_from_slice(&chunk[..n]);
    Some(n)
}

/// Whether each of `parts` occurs in `haystack`, each after the one before.
fn contains_in_order(haystack: &[u8], parts: &[Vec<u8>]) -> bool {
    let mut from = 0;
    for part in parts {
        if part.is_empty() {
            continue;
        }
        match haystack[from..]
            .windows(part.len())
            .position(|w| w == part.as_slice())
        {
            Some(at) => from += at + part.len(),
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;

    fn config(unhealthy: u32, healthy: u32) -> HealthCheckConfig {
        let s = Duration::from_secs;
        HealthCheckConfig {
            timeout: s(1),
            interval: s(10),
            unhealthy_interval: s(20),
            unhealthy_edge_interval: s(30),
            healthy_edge_interval: s(40),
            no_traffic_interval: s(60),
            no_traffic_healthy_interval: s(70),
            initial_jitter: Duration::ZERO,
            interval_jitter: Duration::ZERO,
            interval_jitter_percent: 0,
            unhealthy_threshold: unhealthy,
            healthy_threshold: healthy,
            probe: Probe::Tcp {
                send: vec![],
                receive: vec![],
            },
        }
    }

    fn checker(unhealthy: u32, healthy: u32) -> HealthChecker {
        let m = Metrics::new().unwrap();
        HealthChecker::new(config(unhealthy, healthy), HealthCheckStats::new(&m, "c"))
    }

    #[test]
    fn transitions_follow_envoy() {
        let c = checker(3, 2);
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        assert!(c.is_failed(a), "not probed yet: failed");
        // The first pass is enough.
        assert_eq!(
            c.record(a, Outcome::Passed, true),
            (true, Duration::from_secs(10))
        );
        assert!(!c.is_failed(a));
        // Network failures count to the threshold, with the edge interval meanwhile.
        assert_eq!(
            c.record(a, Outcome::Timeout, true),
            (false, Duration::from_secs(30))
        );
        assert_eq!(
            c.record(a, Outcome::Network, true),
            (false, Duration::from_secs(30))
        );
        assert!(!c.is_failed(a));
        assert_eq!(
            c.record(a, Outcome::Retriable, true),
            (true, Duration::from_secs(20))
        );
        assert!(c.is_failed(a));
        // Back after two passes in a row.
        assert_eq!(
            c.record(a, Outcome::Passed, true),
            (false, Duration::from_secs(40))
        );
        assert!(c.is_failed(a));
        assert_eq!(
            c.record(a, Outcome::Passed, true),
            (true, Duration::from_secs(10))
        );
        assert!(!c.is_failed(a));
        // An unexpected status fails at once.
        assert_eq!(
            c.record(a, Outcome::Failed, true),
            (true, Duration::from_secs(20))
        );
        assert!(c.is_failed(a));
    }

    #[test]
    fn first_failure_keeps_failed_and_no_traffic_slows_down() {
        let c = checker(2, 2);
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        assert_eq!(
            c.record(a, Outcome::Network, false),
            (true, Duration::from_secs(60))
        );
        assert!(c.is_failed(a));
        assert_eq!(
            c.record(a, Outcome::Passed, false),
            (false, Duration::from_secs(60))
        );
        assert_eq!(
            c.record(a, Outcome::Passed, false),
            (true, Duration::from_secs(70))
        );
        assert!(!c.is_failed(a));
    }

    #[test]
    fn a_new_checker_keeps_what_the_old_one_knew() {
        let old = checker(2, 2);
        let (a, b): (SocketAddr, SocketAddr) = (
            "127.0.0.1:1".parse().unwrap(),
            "127.0.0.1:2".parse().unwrap(),
        );
        old.record(a, Outcome::Passed, true);
        old.record(b, Outcome::Failed, true);
        let new = checker(2, 2);
        new.inherit(&old);
        assert!(!new.is_failed(a));
        assert!(new.is_failed(b));
        let c: SocketAddr = "127.0.0.1:3".parse().unwrap();
        assert!(
            new.retain(&[a, b].into_iter().collect()),
            "both probed before: no wait"
        );
        assert!(!new.retain(&[a, c].into_iter().collect()), "c is new");
        // Probed differently: nothing carried over.
        let other = checker(3, 2);
        other.inherit(&old);
        assert!(other.is_failed(a));
    }

    #[test]
    fn payloads_match_in_order() {
        let parts = vec![b"ab".to_vec(), b"cd".to_vec()];
        assert!(contains_in_order(b"xxabyycd", &parts));
        assert!(!contains_in_order(b"cdab", &parts));
        assert!(contains_in_order(b"", &[]));
    }

    #[test]
    fn request_carries_host_agent_and_headers() {
        let probe = HttpProbe {
            method: "GET".into(),
            path: "/healthz".into(),
            host: None,
            headers: vec![("x-probe".into(), "1".into())],
            remove: vec![],
            expected: vec![(200, 201)],
            retriable: vec![],
            send: vec![],
            receive: vec![],
            buffer: 1024,
        };
        assert_eq!(
            String::from_utf8(http_request(&probe, "svc")).unwrap(),
            "GET /healthz HTTP/1.1\r\nhost: svc\r\nuser-agent: Envoy/HC\r\nx-probe: 1\r\n\r\n"
        );
    }
}
