//! Upstream clusters: endpoints by priority, load balancing, circuit breakers, DNS refresh.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use crate::hash_ring::HashRing;
use crate::metrics::{ClusterStats, IstioStats};
use crate::outlier::{Detector, FailureCounts, Observed, OutlierConfig};
use crate::upstream_pool::{EndpointPool, PoolSettings};
use crate::weighted_pick::{fast_random, WeightedPick};

/// `lb_policy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LbPolicy {
    RoundRobin,
    LeastRequest,
    Random,
    /// `RING_HASH` or `MAGLEV`: consistent hashing on the route's `hash_policy` (random when the
    /// request has no hash).
    ConsistentHash,
}

/// Which address families a DNS name contributes (`dns_lookup_family`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DnsFamily {
    /// IPv6 addresses if there are any, else IPv4 (Envoy's default).
    Auto,
    V4Only,
    V6Only,
    /// IPv4 addresses if there are any, else IPv6.
    V4Preferred,
    All,
}

impl DnsFamily {
    /// Keep the addresses this setting selects, in resolver order.
    pub fn select(self, addrs: Vec<SocketAddr>) -> Vec<SocketAddr> {
        let (v4, v6): (Vec<SocketAddr>, Vec<SocketAddr>) =
            addrs.into_iter().partition(|a| a.is_ipv4());
        match self {
            DnsFamily::All => v4.into_iter().chain(v6).collect(),
            DnsFamily::V4Only => v4,
            DnsFamily::V6Only => v6,
            DnsFamily::Auto if v6.is_empty() => v4,
            DnsFamily::Auto => v6,
            DnsFamily::V4Preferred if v4.is_empty() => v6,
            DnsFamily::V4Preferred => v4,
        }
    }
}

/// How endpoints are discovered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Discovery {
    Static,
    /// Every address a name resolves to (`STRICT_DNS`), or only the first (`LOGICAL_DNS`).
    Dns {
        logical: bool,
        refresh: Duration,
        family: DnsFamily,
    },
}

/// One configured endpoint (before DNS resolution).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointSpec {
    pub host: String,
    pub port: u16,
    pub weight: u32,
    pub priority: u32,
    pub healthy: bool,
}

/// A resolved endpoint.
#[derive(Debug)]
pub struct Endpoint {
    pub pool: Arc<EndpointPool>,
    pub weight: u32,
    pub healthy: bool,
    pub active_requests: AtomicU64,
    pub total_requests: AtomicU64,
    /// `host:port` as configured (for `/clusters`).
    pub hostname: String,
    /// Failures in a row, for outlier detection.
    pub failures: FailureCounts,
}

/// The endpoints of one priority level.
#[derive(Debug)]
pub struct PriorityLevel {
    pub priority: u32,
    pub endpoints: Vec<Arc<Endpoint>>,
    pick: Option<WeightedPick>,
    /// For consistent-hash clusters.
    ring: Option<HashRing>,
}

/// All endpoints of a cluster.
#[derive(Debug, Default)]
pub struct EndpointSet {
    /// Ascending priority.
    pub levels: Vec<PriorityLevel>,
}

/// Circuit breaker thresholds (`DEFAULT` priority).
#[derive(Debug, Clone, Copy)]
pub struct Breakers {
    pub max_connections: u64,
    pub max_pending_requests: u64,
    pub max_requests: u64,
    /// Retries in progress at once, over the whole cluster.
    pub max_retries: u64,
}

impl Default for Breakers {
    fn default() -> Self {
        // Envoy's defaults.
        Breakers {
            max_connections: 1024,
            max_pending_requests: 1024,
            max_requests: 1024,
            max_retries: 3,
        }
    }
}

/// A cluster.
#[derive(Debug)]
pub struct Cluster {
    pub name: String,
    pub lb: LbPolicy,
    pub discovery: Discovery,
    pub specs: Vec<EndpointSpec>,
    pub endpoints: ArcSwap<EndpointSet>,
    pub settings: PoolSettings,
    pub breakers: Breakers,
    pub active_requests: AtomicU64,
    /// Retries in progress (`max_retries`).
    pub active_retries: AtomicU64,
    rr: AtomicUsize,
    pub stats: ClusterStats,
    pub istio: IstioStats,
    /// Encoded configuration, to reuse the cluster (and its pools) across reloads when unchanged.
    pub fingerprint: Vec<u8>,
    /// `outlier_detection`, when configured.
    pub outlier: Option<Detector>,
}

/// Guard counting one active request on a cluster and an endpoint.
#[derive(Debug)]
pub struct ActiveRequest {
    cluster: Arc<Cluster>,
    endpoint: Arc<Endpoint>,
}

impl Drop for ActiveRequest {
    fn drop(&mut self) {
        self.cluster.active_requests.fetch_sub(1, Ordering::Relaxed);
        self.endpoint
            .active_requests
            .fetch_sub(1, Ordering::Relaxed);
    }
}

/// Why no endpoint could be chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PickError {
    /// No healthy endpoint (`UH`).
    NoHealthyUpstream,
    /// `max_requests` reached (`UO`).
    Overflow,
}

impl Cluster {
    /// Choose an endpoint and count the request as active. `hash` is the request's hash from the
    /// route's `hash_policy`, used by consistent-hash clusters.
    pub fn acquire(
        self: &Arc<Self>,
        hash: Option<u64>,
    ) -> Result<(Arc<Endpoint>, ActiveRequest), PickError> {
        let set = self.endpoints.load();
        let level = set
            .levels
            .iter()
            .find(|l| l.pick.is_some())
            .ok_or(PickError::NoHealthyUpstream)?;
        let Some(pick) = &level.pick else {
            return Err(PickError::NoHealthyUpstream);
        };
        let idx = match self.lb {
            LbPolicy::ConsistentHash => match (hash, &level.ring) {
                (Some(h), Some(ring)) => ring.pick(h),
                _ => pick.pick_random(fast_random()),
            },
            LbPolicy::Random => pick.pick_random(fast_random()),
            LbPolicy::RoundRobin => {
                // Walk the weight intervals in order: deterministic weighted round robin.
                pick.pick_random(self.rr.fetch_add(1, Ordering::Relaxed) as u64)
            }
            LbPolicy::LeastRequest => {
                let a = pick.pick_random(fast_random());
                let b = pick.pick_random(fast_random());
                let ra = level.endpoints[a].active_requests.load(Ordering::Relaxed);
                let rb = level.endpoints[b].active_requests.load(Ordering::Relaxed);
                if rb < ra {
                    b
                } else {
                    a
                }
            }
        };
        let endpoint = level.endpoints[idx].clone();
        let prev = self.active_requests.fetch_add(1, Ordering::Relaxed);
        if prev >= self.breakers.max_requests {
            self.active_requests.fetch_sub(1, Ordering::Relaxed);
            return Err(PickError::Overflow);
        }
        endpoint.active_requests.fetch_add(1, Ordering::Relaxed);
        endpoint.total_requests.fetch_add(1, Ordering::Relaxed);
        Ok((
            endpoint.clone(),
            ActiveRequest {
                cluster: self.clone(),
                endpoint,
            },
        ))
    }

    /// Resolve the endpoint specs and build the endpoint set, reusing pools of `previous`.
    /// Names are resolved only when `resolve` is set (never while validating a configuration).
    pub fn build_endpoints(
        specs: &[EndpointSpec],
        lb: LbPolicy,
        discovery: &Discovery,
        settings: &PoolSettings,
        previous: Option<&EndpointSet>,
        resolve: bool,
        ejected: Option<(&Detector, Instant)>,
    ) -> EndpointSet {
        let mut by_priority: std::collections::BTreeMap<u32, Vec<Arc<Endpoint>>> =
            Default::default();
        for spec in specs {
            let addrs: Vec<SocketAddr> = match spec.host.parse::<std::net::IpAddr>() {
                Ok(ip) => vec![SocketAddr::new(ip, spec.port)],
                Err(_) if !resolve => Vec::new(),
                Err(_) => match (spec.host.as_str(), spec.port).to_socket_addrs() {
                    Ok(it) => {
                        let all: Vec<SocketAddr> = it.collect();
                        match discovery {
                            Discovery::Dns {
                                logical, family, ..
                            } => {
                                let chosen = family.select(all);
                                if *logical {
                                    chosen.into_iter().take(1).collect()
                                } else {
                                    chosen
                                }
                            }
                            Discovery::Static => all,
                        }
                    }
                    Err(e) => {
                        tracing::warn!(host = %spec.host, error = %e, "DNS resolution failed");
                        Vec::new()
                    }
                },
            };
            for addr in addrs {
                let pool = previous
                    .and_then(|p| {
                        p.levels
                            .iter()
                            .flat_map(|l| l.endpoints.iter())
                            .find(|e| e.pool.addr == addr)
                            .map(|e| e.pool.clone())
                    })
                    .unwrap_or_else(|| EndpointPool::new(addr, settings.clone()));
                by_priority
                    .entry(spec.priority)
                    .or_default()
                    .push(Arc::new(Endpoint {
                        pool,
                        weight: spec.weight.max(1),
                        healthy: spec.healthy,
                        active_requests: AtomicU64::new(0),
                        total_requests: AtomicU64::new(0),
                        hostname: format!("{}:{}", spec.host, spec.port),
                        failures: FailureCounts::default(),
                    }));
            }
        }
        Self::levels(by_priority, lb, ejected)
    }

    /// The priority levels of these endpoints: unhealthy and ejected ones get no traffic, unless
    /// ejections would leave less than the panic threshold of a level (then they are ignored
    /// there, as in Envoy's panic mode).
    fn levels(
        by_priority: std::collections::BTreeMap<u32, Vec<Arc<Endpoint>>>,
        lb: LbPolicy,
        ejected: Option<(&Detector, Instant)>,
    ) -> EndpointSet {
        EndpointSet {
            levels: by_priority
                .into_iter()
                .map(|(priority, endpoints)| {
                    let out = |e: &Arc<Endpoint>| {
                        ejected.is_some_and(|(d, now)| d.is_ejected(e.pool.addr, now))
                    };
                    let left = endpoints.iter().filter(|e| e.healthy && !out(e)).count();
                    let panic = ejected.is_some_and(|(d, _)| {
                        (left as u64) * 100 < endpoints.len() as u64 * d.config.panic_threshold
                    });
                    let weight = |e: &Arc<Endpoint>| {
                        if e.healthy && (panic || !out(e)) {
                            e.weight as u64
                        } else {
                            0
                        }
                    };
                    let pick = WeightedPick::new(endpoints.iter().map(weight));
                    let ring = (lb == LbPolicy::ConsistentHash)
                        .then(|| {
                            HashRing::new(
                                endpoints.iter().map(|e| (e.hostname.as_str(), weight(e))),
                            )
                        })
                        .flatten();
                    PriorityLevel {
                        priority,
                        endpoints,
                        pick,
                        ring,
                    }
                })
                .collect(),
        }
    }

    /// Count an attempt's outcome at `endpoint` for outlier detection; eject it when it has
    /// failed too often, and take it back when its time is up.
    pub fn observe(self: &Arc<Self>, endpoint: &Endpoint, outcome: Observed) {
        let Some(detector) = &self.outlier else {
            return;
        };
        if endpoint
            .failures
            .observe(&detector.config, outcome, fast_random())
            .is_none()
        {
            return;
        }
        let total: usize = self
            .endpoints
            .load()
            .levels
            .iter()
            .map(|l| l.endpoints.len())
            .sum();
        let Some(time) = detector.eject(endpoint.pool.addr, total, Instant::now()) else {
            return;
        };
        tracing::info!(cluster = %self.name, endpoint = %endpoint.pool.addr, ?time, "outlier ejected");
        self.stats.outlier_ejections.inc();
        self.reweigh();
        let cluster = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(time).await;
            cluster.reweigh();
        });
    }

    /// Rebuild the picks of the current endpoints with the ejections as they are now.
    fn reweigh(&self) {
        let current = self.endpoints.load();
        let by_priority = current
            .levels
            .iter()
            .map(|l| (l.priority, l.endpoints.clone()))
            .collect();
        let now = Instant::now();
        let next = Self::levels(
            by_priority,
            self.lb,
            self.outlier.as_ref().map(|d| (d, now)),
        );
        if let Some(d) = &self.outlier {
            self.stats
                .outlier_ejections_active
                .set(d.ejected(now) as i64);
        }
        self.endpoints.store(Arc::new(next));
    }

    /// Construct a cluster and resolve its endpoints.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        name: String,
        lb: LbPolicy,
        discovery: Discovery,
        specs: Vec<EndpointSpec>,
        settings: PoolSettings,
        breakers: Breakers,
        stats: ClusterStats,
        istio: IstioStats,
        fingerprint: Vec<u8>,
        outlier: Option<OutlierConfig>,
    ) -> Arc<Self> {
        let set = Self::build_endpoints(&specs, lb, &discovery, &settings, None, false, None);
        Arc::new(Cluster {
            name,
            lb,
            discovery,
            specs,
            endpoints: ArcSwap::from_pointee(set),
            settings,
            breakers,
            active_requests: AtomicU64::new(0),
            active_retries: AtomicU64::new(0),
            rr: AtomicUsize::new(0),
            stats,
            istio,
            fingerprint,
            outlier: outlier.map(Detector::new),
        })
    }

    /// Re-resolve DNS names (for `STRICT_DNS` / `LOGICAL_DNS`), keeping pools of unchanged addresses.
    pub fn refresh_dns(&self) {
        let prev = self.endpoints.load();
        let next = Self::build_endpoints(
            &self.specs,
            self.lb,
            &self.discovery,
            &self.settings,
            Some(&prev),
            true,
            self.outlier.as_ref().map(|d| (d, Instant::now())),
        );
        self.endpoints.store(Arc::new(next));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use crate::upstream_pool::UpstreamProtocol;

    fn cluster(lb: LbPolicy, specs: Vec<EndpointSpec>) -> Arc<Cluster> {
        cluster_with(lb, specs, Breakers::default())
    }

    fn cluster_with(lb: LbPolicy, specs: Vec<EndpointSpec>, breakers: Breakers) -> Arc<Cluster> {
        let m = Metrics::new().unwrap();
        Cluster::new(
            "c".into(),
            lb,
            Discovery::Static,
            specs,
            PoolSettings {
                tls: None,
                budget: crate::upstream_pool::ConnectionBudget::new(1024, 1024),
                protocol: UpstreamProtocol::Http1,
                connect_timeout: Duration::from_secs(1),
                max_requests_per_connection: None,
                idle_timeout: None,
            },
            breakers,
            ClusterStats::new(&m, "c"),
            IstioStats::new(&m, vec!["x".into(); 7]),
            vec![],
            None,
        )
    }

    fn spec(port: u16, weight: u32, priority: u32, healthy: bool) -> EndpointSpec {
        EndpointSpec {
            host: "127.0.0.1".into(),
            port,
            weight,
            priority,
            healthy,
        }
    }

    #[test]
    fn round_robin_follows_weights_exactly() {
        let c = cluster(
            LbPolicy::RoundRobin,
            vec![spec(1, 3, 0, true), spec(2, 1, 0, true)],
        );
        let mut counts = [0; 2];
        for _ in 0..400 {
            let (e, _g) = c.acquire(None).unwrap();
            counts[(e.pool.addr.port() - 1) as usize] += 1;
        }
        assert_eq!(counts, [300, 100]);
    }

    #[test]
    fn lower_priority_is_used_only_without_healthy_higher_one() {
        let c = cluster(
            LbPolicy::Random,
            vec![spec(1, 1, 0, false), spec(2, 1, 1, true)],
        );
        for _ in 0..50 {
            assert_eq!(c.acquire(None).unwrap().0.pool.addr.port(), 2);
        }
        let c = cluster(
            LbPolicy::Random,
            vec![spec(1, 1, 0, true), spec(2, 1, 1, true)],
        );
        for _ in 0..50 {
            assert_eq!(c.acquire(None).unwrap().0.pool.addr.port(), 1);
        }
    }

    #[test]
    fn dns_families() {
        let v4: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let v6: SocketAddr = "[::1]:1".parse().unwrap();
        assert_eq!(DnsFamily::Auto.select(vec![v4, v6]), vec![v6]);
        assert_eq!(DnsFamily::Auto.select(vec![v4]), vec![v4]);
        assert_eq!(DnsFamily::V4Only.select(vec![v6, v4]), vec![v4]);
        assert_eq!(DnsFamily::V6Only.select(vec![v4]), Vec::<SocketAddr>::new());
        assert_eq!(DnsFamily::V4Preferred.select(vec![v6, v4]), vec![v4]);
        assert_eq!(DnsFamily::V4Preferred.select(vec![v6]), vec![v6]);
        assert_eq!(DnsFamily::All.select(vec![v6, v4]), vec![v4, v6]);
    }

    #[test]
    fn no_endpoints_is_no_healthy_upstream() {
        let c = cluster(LbPolicy::RoundRobin, vec![]);
        assert_eq!(c.acquire(None).unwrap_err(), PickError::NoHealthyUpstream);
    }

    #[test]
    fn max_requests_overflows_and_guard_releases() {
        let breakers = Breakers {
            max_requests: 2,
            ..Breakers::default()
        };
        let c = cluster_with(LbPolicy::RoundRobin, vec![spec(1, 1, 0, true)], breakers);
        let a = c.acquire(None).unwrap();
        let _b = c.acquire(None).unwrap();
        assert_eq!(c.acquire(None).unwrap_err(), PickError::Overflow);
        drop(a);
        assert!(c.acquire(None).is_ok());
    }
}
