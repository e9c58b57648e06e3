//! Upstream clusters: endpoints by priority, load balancing, circuit breakers, DNS refresh.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use crate::hash_ring::HashRing;
use crate::health_check::{HealthCheckTarget, HealthChecker};
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
    /// `health_check_config`.
    pub health_check: HealthCheckTarget,
    /// Which locality of the cluster's `load_assignment` (its index) and its
    /// `load_balancing_weight` (used with `locality_weighted_lb_config` only, as in Envoy).
    pub locality: u32,
    pub locality_weight: u32,
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
    /// How active health checks probe it.
    pub health_check: HealthCheckTarget,
    pub locality: u32,
    pub locality_weight: u32,
}

/// The endpoints of one priority level.
#[derive(Debug)]
pub struct PriorityLevel {
    pub priority: u32,
    pub endpoints: Vec<Arc<Endpoint>>,
    pick: Option<WeightedPick>,
    /// For consistent-hash clusters.
    ring: Option<HashRing>,
    /// With `locality_weighted_lb_config`, outside panic mode: a locality by its weight scaled
    /// by its available share, then one of its endpoints.
    localities: Option<LocalityPick>,
}

/// Locality-weighted choice within a priority level.
#[derive(Debug)]
struct LocalityPick {
    pick: WeightedPick,
    /// Per locality (as `pick` numbers them): its endpoints' indices in the level, and the
    /// choice among them.
    members: Vec<(Vec<usize>, Option<WeightedPick>)>,
}

/// All endpoints of a cluster.
#[derive(Debug, Default)]
pub struct EndpointSet {
    /// Ascending priority.
    pub levels: Vec<PriorityLevel>,
    /// The share of traffic of each level (percent, as Envoy's priority load), when more than one
    /// level takes traffic; otherwise `first` takes it all.
    load: Option<WeightedPick>,
    first: usize,
}

impl EndpointSet {
    fn choose_level(&self) -> Option<&PriorityLevel> {
        match &self.load {
            None => self.levels.get(self.first),
            Some(load) => self.levels.get(load.pick_random(fast_random())),
        }
    }
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
    /// `health_checks`, when configured.
    pub health_checker: Option<Arc<HealthChecker>>,
    /// `common_lb_config.healthy_panic_threshold` (default 50 %).
    pub panic_threshold: u64,
    /// `common_lb_config.locality_weighted_lb_config`: locality weights count.
    pub locality_weighted: bool,
}

/// How a cluster tells healthy endpoints from the rest.
#[derive(Debug)]
pub struct HealthSettings {
    pub outlier: Option<OutlierConfig>,
    /// `health_checks`, with the cluster's health-check stats.
    pub health_check: Option<HealthChecker>,
    pub panic_threshold: u64,
    pub locality_weighted: bool,
}

impl Default for HealthSettings {
    fn default() -> Self {
        HealthSettings {
            outlier: None,
            health_check: None,
            panic_threshold: 50,
            locality_weighted: false,
        }
    }
}

impl LocalityPick {
    /// Each locality weighs its `load_balancing_weight` × min(1, 1.4 × its available share).
    /// `None` when no locality has an available endpoint.
    fn new(endpoints: &[Arc<Endpoint>], available: impl Fn(&Endpoint) -> bool) -> Option<Self> {
        let mut order: Vec<u32> = endpoints.iter().map(|e| e.locality).collect();
        order.sort_unstable();
        order.dedup();
        let mut weights = Vec::with_capacity(order.len());
        let mut members = Vec::with_capacity(order.len());
        for locality in order {
            let idx: Vec<usize> = (0..endpoints.len())
                .filter(|&i| endpoints[i].locality == locality)
                .collect();
            let left = idx.iter().filter(|&&i| available(&endpoints[i])).count() as u64;
            let share = (1400 * left / idx.len().max(1) as u64).min(1000);
            let locality_weight = idx
                .first()
                .map_or(0, |&i| u64::from(endpoints[i].locality_weight));
            weights.push(locality_weight * share);
            let pick = WeightedPick::new(idx.iter().map(|&i| {
                if available(&endpoints[i]) {
                    u64::from(endpoints[i].weight)
                } else {
                    0
                }
            }));
            members.push((idx, pick));
        }
        Some(LocalityPick {
            pick: WeightedPick::new(weights)?,
            members,
        })
    }
}

/// What excludes an endpoint from load balancing right now, and how levels balance.
#[derive(Clone, Copy)]
pub struct HealthView<'a> {
    outlier: Option<(&'a Detector, Instant)>,
    checker: Option<&'a HealthChecker>,
    panic_threshold: u64,
    locality_weighted: bool,
}

impl HealthView<'_> {
    /// Only the endpoints' own (EDS) health, for clusters without health checks or outlier
    /// detection, and while validating.
    pub const NONE: HealthView<'static> = HealthView {
        outlier: None,
        checker: None,
        panic_threshold: 50,
        locality_weighted: false,
    };

    fn available(&self, e: &Endpoint) -> bool {
        e.healthy
            && !self
                .outlier
                .is_some_and(|(d, now)| d.is_ejected(e.pool.addr, now))
            && !(self
                .checker
                .is_some_and(|c| !e.health_check.disabled && c.is_failed(e.pool.addr)))
    }
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
        let level = set.choose_level().ok_or(PickError::NoHealthyUpstream)?;
        let Some(mut pick) = level.pick.as_ref() else {
            return Err(PickError::NoHealthyUpstream);
        };
        let mut members: Option<&[usize]> = None;
        if let (Some(lp), false) = (&level.localities, self.lb == LbPolicy::ConsistentHash) {
            if let Some((m, Some(p))) = lp.members.get(lp.pick.pick_random(fast_random())) {
                pick = p;
                members = Some(m);
            }
        }
        let idx = match self.lb {
            LbPolicy::ConsistentHash => match (hash, &level.ring) {
                (Some(h), Some(ring)) => ring.pick(h),
                _ => pick.pick_random(fast_random()),
            },
            // As Envoy's: uniform among the endpoints (of the locality chosen by its weight).
            LbPolicy::Random => pick.pick_uniform(fast_random()),
            LbPolicy::RoundRobin => {
                // Walk the weight intervals in order: deterministic weighted round robin.
                pick.pick_random(self.rr.fetch_add(1, Ordering::Relaxed) as u64)
            }
            LbPolicy::LeastRequest => {
                let at = |i: usize| members.map_or(i, |m| m.get(i).copied().unwrap_or(i));
                let a = pick.pick_random(fast_random());
                let b = pick.pick_random(fast_random());
                let active = |i: usize| {
                    level
                        .endpoints
                        .get(at(i))
                        .map_or(u64::MAX, |e| e.active_requests.load(Ordering::Relaxed))
                };
                if active(b) < active(a) {
                    b
                } else {
                    a
                }
            }
        };
        let idx = members.map_or(idx, |m| m.get(idx).copied().unwrap_or(idx));
        let Some(endpoint) = level.endpoints.get(idx).cloned() else {
            return Err(PickError::NoHealthyUpstream);
        };
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
        health: HealthView<'_>,
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
                        health_check: spec.health_check.clone(),
                        locality: spec.locality,
                        locality_weight: spec.locality_weight,
                    }));
            }
        }
        Self::levels(by_priority, lb, health)
    }

    /// The priority levels of these endpoints and their share of traffic, as Envoy computes
    /// them. Each level is available for its share of available endpoints × 1.4 (at most 100 %);
    /// the traffic goes to the levels in order, each taking its availability scaled to the sum
    /// of all (so a level half available takes 70 % and the next level the rest). Unhealthy,
    /// failed and ejected endpoints get no traffic, unless the levels together are less than
    /// 100 % available and a level has less than the panic threshold of its endpoints available:
    /// that level then uses all of its endpoints (panic mode); when every level is in panic, each
    /// takes traffic in proportion to its number of endpoints. A panic threshold of 0 turns panic
    /// mode off.
    fn levels(
        by_priority: std::collections::BTreeMap<u32, Vec<Arc<Endpoint>>>,
        lb: LbPolicy,
        health: HealthView<'_>,
    ) -> EndpointSet {
        let counts: Vec<(u64, u64)> = by_priority
            .values()
            .map(|eps| {
                let left = eps.iter().filter(|e| health.available(e)).count();
                (left as u64, eps.len() as u64)
            })
            .collect();
        let availability: Vec<u64> = counts
            .iter()
            .map(|&(left, n)| (140 * left).checked_div(n).unwrap_or(0).min(100))
            .collect();
        let total = availability.iter().sum::<u64>().min(100);
        let threshold = health.panic_threshold;
        let panic: Vec<bool> = counts
            .iter()
            .map(|&(left, n)| total < 100 && threshold > 0 && left * 100 < n * threshold)
            .collect();
        let mut load = vec![0u64; counts.len()];
        if !load.is_empty() {
            if total == 0 && threshold == 0 {
                load[0] = 100;
            } else if panic.iter().all(|p| *p) {
                let hosts: u64 = counts.iter().map(|c| c.1).sum();
                for (l, c) in load.iter_mut().zip(&counts) {
                    *l = (c.1 * 100).checked_div(hosts).unwrap_or(0);
                }
                let first = counts.iter().position(|c| c.1 > 0).unwrap_or(0);
                load[first] += 100 - load.iter().sum::<u64>();
            } else {
                let mut left = 100u64;
                for (l, a) in load.iter_mut().zip(&availability) {
                    *l = (a * 100 / total).min(left);
                    left -= *l;
                }
                let first = availability.iter().position(|a| *a > 0).unwrap_or(0);
                load[first] += left;
            }
        }
        let levels: Vec<PriorityLevel> = by_priority
            .into_iter()
            .zip(&panic)
            .map(|((priority, endpoints), &panic)| {
                let weight = |e: &Arc<Endpoint>| {
                    if panic || health.available(e) {
                        e.weight as u64
                    } else {
                        0
                    }
                };
                let pick = WeightedPick::new(endpoints.iter().map(weight));
                let ring = (lb == LbPolicy::ConsistentHash)
                    .then(|| {
                        HashRing::new(endpoints.iter().map(|e| (e.hostname.as_str(), weight(e))))
                    })
                    .flatten();
                let localities = (health.locality_weighted && !panic)
                    .then(|| LocalityPick::new(&endpoints, |e| health.available(e)))
                    .flatten();
                PriorityLevel {
                    priority,
                    endpoints,
                    pick,
                    ring,
                    localities,
                }
            })
            .collect();
        let taking = load.iter().filter(|l| **l > 0).count();
        EndpointSet {
            levels,
            first: load.iter().position(|l| *l > 0).unwrap_or(0),
            load: (taking > 1).then(|| WeightedPick::new(load)).flatten(),
        }
    }

    /// What excludes endpoints now.
    fn health_view(&self) -> HealthView<'_> {
        HealthView {
            outlier: self.outlier.as_ref().map(|d| (d, Instant::now())),
            checker: self.health_checker.as_deref(),
            panic_threshold: self.panic_threshold,
            locality_weighted: self.locality_weighted,
        }
    }

    /// The endpoint's health as Envoy's `/clusters` shows it: `healthy`, or its flags
    /// (`/failed_active_hc`, `/failed_outlier_check`, `/failed_eds_health`).
    pub fn health_flags(&self, e: &Endpoint) -> String {
        let mut flags = String::new();
        if self
            .health_checker
            .as_ref()
            .is_some_and(|c| !e.health_check.disabled && c.is_failed(e.pool.addr))
        {
            flags.push_str("/failed_active_hc");
        }
        if self
            .outlier
            .as_ref()
            .is_some_and(|d| d.is_ejected(e.pool.addr, Instant::now()))
        {
            flags.push_str("/failed_outlier_check");
        }
        if !e.healthy {
            flags.push_str("/failed_eds_health");
        }
        if flags.is_empty() {
            flags.push_str("healthy");
        }
        flags
    }

    /// How many endpoints are healthy (not unhealthy by EDS, failed checks or ejection), of
    /// how many (Envoy's `membership_healthy` and `membership_total`).
    pub fn membership(&self) -> (usize, usize) {
        let view = self.health_view();
        let set = self.endpoints.load();
        let all = set.levels.iter().flat_map(|l| l.endpoints.iter());
        let total = all.clone().count();
        (all.filter(|e| view.available(e)).count(), total)
    }

    /// Whether the cluster has ever opened an upstream connection (health checks slow down to
    /// `no_traffic_interval` until it has).
    pub fn has_had_traffic(&self) -> bool {
        self.endpoints.load().levels.iter().any(|l| {
            l.endpoints
                .iter()
                .any(|e| e.pool.total_connections.load(Ordering::Relaxed) > 0)
        })
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

    /// Rebuild the picks of the current endpoints with the ejections and health as they are now.
    pub fn reweigh(&self) {
        let current = self.endpoints.load();
        let by_priority = current
            .levels
            .iter()
            .map(|l| (l.priority, l.endpoints.clone()))
            .collect();
        let now = Instant::now();
        let next = Self::levels(by_priority, self.lb, self.health_view());
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
        health: HealthSettings,
    ) -> Arc<Self> {
        let health_checker = health.health_check.map(Arc::new);
        let view = HealthView {
            outlier: None,
            checker: health_checker.as_deref(),
            panic_threshold: health.panic_threshold,
            locality_weighted: health.locality_weighted,
        };
        let set = Self::build_endpoints(&specs, lb, &discovery, &settings, None, false, view);
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
            outlier: health.outlier.map(Detector::new),
            health_checker,
            panic_threshold: health.panic_threshold,
            locality_weighted: health.locality_weighted,
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
            self.health_view(),
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
            HealthSettings::default(),
        )
    }

    fn spec(port: u16, weight: u32, priority: u32, healthy: bool) -> EndpointSpec {
        EndpointSpec {
            host: "127.0.0.1".into(),
            port,
            weight,
            priority,
            healthy,
            health_check: HealthCheckTarget::default(),
            locality: 0,
            locality_weight: 1,
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
    fn panic_mode_follows_envoy() {
        let ports = |c: &Arc<Cluster>| {
            let mut seen: Vec<u16> = (0..60)
                .map(|_| c.acquire(None).unwrap().0.pool.addr.port())
                .collect();
            seen.sort_unstable();
            seen.dedup();
            seen
        };
        // One of three left (33 % < 50 %, 47 % with the 1.4 factor < 100 %): all are used.
        let c = cluster(
            LbPolicy::RoundRobin,
            vec![
                spec(1, 1, 0, true),
                spec(2, 1, 0, false),
                spec(3, 1, 0, false),
            ],
        );
        assert_eq!(ports(&c), vec![1, 2, 3]);
        // One of two left (50 %): no panic.
        let c = cluster(
            LbPolicy::RoundRobin,
            vec![spec(1, 1, 0, true), spec(2, 1, 0, false)],
        );
        assert_eq!(ports(&c), vec![1]);
        // None left anywhere: every level in panic, each uses all of its endpoints.
        let c = cluster(
            LbPolicy::RoundRobin,
            vec![
                spec(1, 1, 0, false),
                spec(2, 1, 0, false),
                spec(3, 1, 1, false),
            ],
        );
        assert_eq!(ports(&c), vec![1, 2, 3]);
        // One of two left in P0 (70 %): the rest spills to P1.
        let c = cluster(
            LbPolicy::RoundRobin,
            vec![
                spec(1, 1, 0, true),
                spec(2, 1, 0, false),
                spec(3, 1, 1, true),
            ],
        );
        assert_eq!(ports(&c), vec![1, 3]);
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
