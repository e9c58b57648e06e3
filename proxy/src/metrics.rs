//! Prometheus metrics in Envoy's and Istio's names.
//!
//! Metric families are created once per process. Handles for fixed label sets are resolved when a
//! configuration is compiled. Series whose labels depend on the response (status code, response
//! flags, protocol) go through a [`LabelCache`]: a copy-on-write map read without locks; only the
//! first request with a new combination takes the slow path that resolves the handle.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

/// Histogram buckets in milliseconds (Envoy's default buckets).
pub const MS_BUCKETS: &[f64] = &[
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];

/// Labels of `istio_requests_total` that are fixed for a destination cluster.
pub const ISTIO_FIXED_LABELS: &[&str] = &[
    "reporter",
    "source_workload",
    "source_app",
    "destination_workload",
    "destination_workload_namespace",
    "destination_service",
    "destination_service_name",
    "destination_service_namespace",
    "destination_version",
];

/// Every metric family the proxy exports.
#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    pub downstream_rq_total: IntCounterVec,
    pub downstream_rq_xx: IntCounterVec,
    pub downstream_cx_active: IntGaugeVec,
    pub fault_delays_injected: IntCounterVec,
    pub fault_aborts_injected: IntCounterVec,
    pub fault_faults_overflow: IntCounterVec,
    pub fault_active_faults: IntGaugeVec,
    pub upstream_rq_total: IntCounterVec,
    pub upstream_rq: IntCounterVec,
    pub upstream_rq_time: HistogramVec,
    pub upstream_rq_timeout: IntCounterVec,
    pub upstream_cx_connect_fail: IntCounterVec,
    pub upstream_rq_pending_overflow: IntCounterVec,
    pub upstream_rq_retry: IntCounterVec,
    pub upstream_rq_retry_success: IntCounterVec,
    pub upstream_rq_retry_overflow: IntCounterVec,
    pub outlier_ejections_enforced: IntCounterVec,
    pub outlier_ejections_active: IntGaugeVec,
    pub health_check_attempt: IntCounterVec,
    pub health_check_success: IntCounterVec,
    pub health_check_failure: IntCounterVec,
    pub health_check_network_failure: IntCounterVec,
    pub health_check_healthy: IntGaugeVec,
    pub tcp_downstream_cx_total: IntCounterVec,
    pub tcp_downstream_cx_no_route: IntCounterVec,
    pub tcp_downstream_cx_rx_bytes_total: IntCounterVec,
    pub tcp_downstream_cx_tx_bytes_total: IntCounterVec,
    pub tcp_idle_timeout: IntCounterVec,
    pub local_rate_limit: [IntCounterVec; 5],
    pub istio_requests_total: IntCounterVec,
    pub istio_request_duration: HistogramVec,
    pub config_reload_total: IntCounter,
    pub config_reload_failed: IntCounter,
    pub control_plane_connected: IntGauge,
    /// Families whose names come from configuration (Envoy puts some configured names, such as a
    /// compressor library's, in the statistic's name rather than in a label).
    named: Arc<Mutex<HashMap<String, IntCounterVec>>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

fn counter_vec(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> Result<IntCounterVec, prometheus::Error> {
    let c = IntCounterVec::new(Opts::new(name, help), labels)?;
    r.register(Box::new(c.clone()))?;
    Ok(c)
}

fn histogram_vec(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> Result<HistogramVec, prometheus::Error> {
    let h = HistogramVec::new(
        HistogramOpts::new(name, help).buckets(MS_BUCKETS.to_vec()),
        labels,
    )?;
    r.register(Box::new(h.clone()))?;
    Ok(h)
}

impl Metrics {
    /// Create and register every family.
    pub fn new() -> Result<Self, prometheus::Error> {
        let r = Registry::new();
        let hcm = &["envoy_http_conn_manager_prefix"];
        let cl = &["envoy_cluster_name"];
        let tcp = &["envoy_tcp_prefix"];
        let rl = &["envoy_local_http_ratelimit_prefix"];
        let rate_limit = |name: &str, help: &str| counter_vec(&r, name, help, rl);
        let mut istio_labels: Vec<&str> = ISTIO_FIXED_LABELS.to_vec();
        istio_labels.extend(["response_code", "request_protocol", "response_flags"]);
        let downstream_cx_active = IntGaugeVec::new(
            Opts::new(
                "envoy_http_downstream_cx_active",
                "Active downstream connections",
            ),
            hcm,
        )?;
        r.register(Box::new(downstream_cx_active.clone()))?;
        let fault_active_faults = IntGaugeVec::new(
            Opts::new(
                "envoy_http_fault_active_faults",
                "Requests with an injected fault in progress",
            ),
            hcm,
        )?;
        r.register(Box::new(fault_active_faults.clone()))?;
        let outlier_ejections_active = IntGaugeVec::new(
            Opts::new(
                "envoy_cluster_outlier_detection_ejections_active",
                "Endpoints ejected by outlier detection now",
            ),
            cl,
        )?;
        r.register(Box::new(outlier_ejections_active.clone()))?;
        let health_check_healthy = IntGaugeVec::new(
            Opts::new(
                "envoy_cluster_health_check_healthy",
                "Endpoints passing their health checks",
            ),
            cl,
        )?;
        r.register(Box::new(health_check_healthy.clone()))?;
        let config_reload_total = IntCounter::new(
            "sluice_config_reload_total",
            "Configuration reloads applied",
        )?;
        r.register(Box::new(config_reload_total.clone()))?;
        let config_reload_failed = IntCounter::new(
            "sluice_config_reload_failed_total",
            "Configuration reloads rejected",
        )?;
        r.register(Box::new(config_reload_failed.clone()))?;
        let control_plane_connected = IntGauge::new(
            "envoy_control_plane_connected_state",
            "1 when connected to the management server",
        )?;
        r.register(Box::new(control_plane_connected.clone()))?;
        Ok(Metrics {
            downstream_rq_total: counter_vec(
                &r,
                "envoy_http_downstream_rq_total",
                "Downstream requests",
                hcm,
            )?,
            downstream_rq_xx: counter_vec(
                &r,
                "envoy_http_downstream_rq_xx",
                "Downstream responses by code class",
                &[
                    "envoy_response_code_class",
                    "envoy_http_conn_manager_prefix",
                ],
            )?,
            downstream_cx_active,
            fault_delays_injected: counter_vec(
                &r,
                "envoy_http_fault_delays_injected",
                "Requests delayed by the fault filter",
                hcm,
            )?,
            fault_aborts_injected: counter_vec(
                &r,
                "envoy_http_fault_aborts_injected",
                "Requests aborted by the fault filter",
                hcm,
            )?,
            fault_faults_overflow: counter_vec(
                &r,
                "envoy_http_fault_faults_overflow",
                "Faults not injected because max_active_faults were active",
                hcm,
            )?,
            fault_active_faults,
            outlier_ejections_enforced: counter_vec(
                &r,
                "envoy_cluster_outlier_detection_ejections_enforced_total",
                "Endpoints ejected by outlier detection",
                cl,
            )?,
            outlier_ejections_active,
            health_check_attempt: counter_vec(
                &r,
                "envoy_cluster_health_check_attempt",
                "Health check probes started",
                cl,
            )?,
            health_check_success: counter_vec(
                &r,
                "envoy_cluster_health_check_success",
                "Health check probes that passed",
                cl,
            )?,
            health_check_failure: counter_vec(
                &r,
                "envoy_cluster_health_check_failure",
                "Health check probes that failed",
                cl,
            )?,
            health_check_network_failure: counter_vec(
                &r,
                "envoy_cluster_health_check_network_failure",
                "Health check probes that failed on the connection or timed out",
                cl,
            )?,
            health_check_healthy,
            tcp_downstream_cx_total: counter_vec(
                &r,
                "envoy_tcp_downstream_cx_total",
                "Connections accepted by a tcp_proxy",
                tcp,
            )?,
            tcp_downstream_cx_no_route: counter_vec(
                &r,
                "envoy_tcp_downstream_cx_no_route",
                "tcp_proxy connections closed for want of a cluster",
                tcp,
            )?,
            tcp_downstream_cx_rx_bytes_total: counter_vec(
                &r,
                "envoy_tcp_downstream_cx_rx_bytes_total",
                "Bytes a tcp_proxy received from downstream",
                tcp,
            )?,
            tcp_downstream_cx_tx_bytes_total: counter_vec(
                &r,
                "envoy_tcp_downstream_cx_tx_bytes_total",
                "Bytes a tcp_proxy sent downstream",
                tcp,
            )?,
            local_rate_limit: [
                rate_limit(
                    "envoy_http_local_rate_limit_enabled",
                    "Requests the local rate limit filter applied to",
                )?,
                rate_limit(
                    "envoy_http_local_rate_limit_ok",
                    "Requests under the local rate limit",
                )?,
                rate_limit(
                    "envoy_http_local_rate_limit_rate_limited",
                    "Requests over the local rate limit",
                )?,
                rate_limit(
                    "envoy_http_local_rate_limit_enforced",
                    "Requests refused by the local rate limit",
                )?,
                rate_limit(
                    "envoy_http_local_rate_limit_shadow_mode",
                    "Requests over the local rate limit let through (not enforced)",
                )?,
            ],
            tcp_idle_timeout: counter_vec(
                &r,
                "envoy_tcp_idle_timeout",
                "tcp_proxy connections closed by idle_timeout",
                tcp,
            )?,
            upstream_rq_total: counter_vec(
                &r,
                "envoy_cluster_upstream_rq_total",
                "Upstream requests",
                cl,
            )?,
            upstream_rq: counter_vec(
                &r,
                "envoy_cluster_upstream_rq",
                "Upstream responses by code",
                &["envoy_response_code", "envoy_cluster_name"],
            )?,
            upstream_rq_time: histogram_vec(
                &r,
                "envoy_cluster_upstream_rq_time",
                "Upstream request time (ms)",
                cl,
            )?,
            upstream_rq_timeout: counter_vec(
                &r,
                "envoy_cluster_upstream_rq_timeout",
                "Upstream timeouts",
                cl,
            )?,
            upstream_cx_connect_fail: counter_vec(
                &r,
                "envoy_cluster_upstream_cx_connect_fail",
                "Upstream connection failures",
                cl,
            )?,
            upstream_rq_pending_overflow: counter_vec(
                &r,
                "envoy_cluster_upstream_rq_pending_overflow",
                "Requests refused by circuit breakers",
                cl,
            )?,
            upstream_rq_retry: counter_vec(&r, "envoy_cluster_upstream_rq_retry", "Retries", cl)?,
            upstream_rq_retry_success: counter_vec(
                &r,
                "envoy_cluster_upstream_rq_retry_success",
                "Retries that succeeded",
                cl,
            )?,
            upstream_rq_retry_overflow: counter_vec(
                &r,
                "envoy_cluster_upstream_rq_retry_overflow",
                "Retries not made because of max_retries",
                cl,
            )?,
            istio_requests_total: counter_vec(
                &r,
                "istio_requests_total",
                "Requests (Istio standard metric)",
                &istio_labels,
            )?,
            istio_request_duration: histogram_vec(
                &r,
                "istio_request_duration_milliseconds",
                "Request duration (Istio standard metric)",
                &istio_labels,
            )?,
            config_reload_total,
            config_reload_failed,
            control_plane_connected,
            named: Arc::default(),
            registry: r,
        })
    }

    /// The counter family `name`, created and registered on first use. Called when a
    /// configuration is compiled, never per request.
    pub fn named_counter(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
    ) -> Result<IntCounterVec, prometheus::Error> {
        let mut named = self.named.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = named.get(name) {
            return Ok(c.clone());
        }
        let family = counter_vec(&self.registry, name, help, labels)?;
        named.insert(name.to_string(), family.clone());
        Ok(family)
    }

    /// Render every metric in the Prometheus text format.
    /// Labels with an empty value are left out, as Envoy leaves out tags it did not extract
    /// (to Prometheus the two are the same series).
    pub fn render(&self) -> String {
        let mut out = String::new();
        let encoder = prometheus::TextEncoder::new();
        let mut families = self.registry.gather();
        for family in &mut families {
            for metric in family.mut_metric().iter_mut() {
                if metric.get_label().iter().any(|l| l.value().is_empty()) {
                    let mut labels = metric.take_label();
                    labels.retain(|l| !l.value().is_empty());
                    metric.set_label(labels);
                }
            }
        }
        if let Err(e) = encoder.encode_utf8(&families, &mut out) {
            out.push_str(&format!("# encode error: {e}\n"));
        }
        out
    }
}

/// A configured name made fit for a Prometheus metric name (letters, digits and `_`), as Envoy
/// converts stat names.
pub fn name_part(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

/// A lock-free-on-read cache of metric handles keyed by the labels that vary per request.
///
/// Keys are a few small values (status code, protocol, flags) with few distinct combinations, so
/// the map hashes with foldhash's fixed-seed fast hasher rather than SipHash: each request looks
/// its handles up, and SipHash cost more than the rest of the recording.
pub struct LabelCache<K, V> {
    map: ArcSwap<HashMap<K, V, foldhash::fast::FixedState>>,
    write: Mutex<()>,
}

impl<K, V> std::fmt::Debug for LabelCache<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LabelCache")
    }
}

impl<K: Eq + Hash + Clone, V: Clone> Default for LabelCache<K, V> {
    fn default() -> Self {
        LabelCache {
            map: ArcSwap::from_pointee(HashMap::default()),
            write: Mutex::new(()),
        }
    }
}

impl<K: Eq + Hash + Clone, V: Clone> LabelCache<K, V> {
    /// The handle for `key`, resolving it with `make` the first time.
    pub fn get(&self, key: K, make: impl FnOnce() -> Option<V>) -> Option<V> {
        if let Some(v) = self.map.load().get(&key) {
            return Some(v.clone());
        }
        let v = make()?;
        // Poisoning only means another thread panicked while inserting; the map itself is intact.
        let _guard = self.write.lock().unwrap_or_else(|e| e.into_inner());
        let mut next = HashMap::clone(&self.map.load());
        next.insert(key, v.clone());
        self.map.store(Arc::new(next));
        Some(v)
    }
}

/// Health-check handles of one cluster (`cluster.NAME.health_check.*` in Envoy).
#[derive(Debug)]
pub struct HealthCheckStats {
    pub attempt: IntCounter,
    pub success: IntCounter,
    pub failure: IntCounter,
    pub network_failure: IntCounter,
    pub healthy: IntGauge,
}

impl HealthCheckStats {
    /// Resolve the handles of cluster `name`.
    pub fn new(m: &Metrics, name: &str) -> Self {
        HealthCheckStats {
            attempt: m.health_check_attempt.with_label_values(&[name]),
            success: m.health_check_success.with_label_values(&[name]),
            failure: m.health_check_failure.with_label_values(&[name]),
            network_failure: m.health_check_network_failure.with_label_values(&[name]),
            healthy: m.health_check_healthy.with_label_values(&[name]),
        }
    }
}

/// Handles of one local rate limit configuration (`STAT_PREFIX.http_local_rate_limit.*`).
#[derive(Debug)]
pub struct LocalRateLimitStats {
    pub enabled: IntCounter,
    pub ok: IntCounter,
    pub rate_limited: IntCounter,
    pub enforced: IntCounter,
    pub shadow_mode: IntCounter,
}

impl LocalRateLimitStats {
    /// Resolve the handles of the configuration with `stat_prefix`.
    pub fn new(m: &Metrics, stat_prefix: &str) -> Self {
        let [enabled, ok, rate_limited, enforced, shadow_mode] = m
            .local_rate_limit
            .each_ref()
            .map(|family| family.with_label_values(&[stat_prefix]));
        LocalRateLimitStats {
            enabled,
            ok,
            rate_limited,
            enforced,
            shadow_mode,
        }
    }
}

/// Handles of one tcp_proxy (`tcp.STAT_PREFIX.*` in Envoy).
#[derive(Debug)]
pub struct TcpProxyStats {
    pub cx_total: IntCounter,
    pub cx_no_route: IntCounter,
    pub rx_bytes: IntCounter,
    pub tx_bytes: IntCounter,
    pub idle_timeout: IntCounter,
}

impl TcpProxyStats {
    /// Resolve the handles of the tcp_proxy with `stat_prefix`.
    pub fn new(m: &Metrics, stat_prefix: &str) -> Self {
        TcpProxyStats {
            cx_total: m.tcp_downstream_cx_total.with_label_values(&[stat_prefix]),
            cx_no_route: m
                .tcp_downstream_cx_no_route
                .with_label_values(&[stat_prefix]),
            rx_bytes: m
                .tcp_downstream_cx_rx_bytes_total
                .with_label_values(&[stat_prefix]),
            tx_bytes: m
                .tcp_downstream_cx_tx_bytes_total
                .with_label_values(&[stat_prefix]),
            idle_timeout: m.tcp_idle_timeout.with_label_values(&[stat_prefix]),
        }
    }
}

/// Handles of one cluster.
#[derive(Debug)]
pub struct ClusterStats {
    pub rq_total: IntCounter,
    pub rq_time: Histogram,
    pub rq_timeout: IntCounter,
    pub cx_connect_fail: IntCounter,
    pub rq_pending_overflow: IntCounter,
    pub rq_retry: IntCounter,
    pub rq_retry_success: IntCounter,
    pub rq_retry_overflow: IntCounter,
    pub outlier_ejections: IntCounter,
    pub outlier_ejections_active: IntGauge,
    by_code: LabelCache<u16, IntCounter>,
    name: String,
    family: IntCounterVec,
}

impl ClusterStats {
    /// Resolve the handles of cluster `name`.
    pub fn new(m: &Metrics, name: &str) -> Self {
        ClusterStats {
            rq_total: m.upstream_rq_total.with_label_values(&[name]),
            rq_time: m.upstream_rq_time.with_label_values(&[name]),
            rq_timeout: m.upstream_rq_timeout.with_label_values(&[name]),
            cx_connect_fail: m.upstream_cx_connect_fail.with_label_values(&[name]),
            rq_pending_overflow: m.upstream_rq_pending_overflow.with_label_values(&[name]),
            rq_retry: m.upstream_rq_retry.with_label_values(&[name]),
            rq_retry_success: m.upstream_rq_retry_success.with_label_values(&[name]),
            rq_retry_overflow: m.upstream_rq_retry_overflow.with_label_values(&[name]),
            outlier_ejections: m.outlier_ejections_enforced.with_label_values(&[name]),
            outlier_ejections_active: m.outlier_ejections_active.with_label_values(&[name]),
            by_code: LabelCache::default(),
            name: name.to_string(),
            family: m.upstream_rq.clone(),
        }
    }

    /// Count an upstream response code.
    pub fn record_code(&self, code: u16) {
        if let Some(c) = self.by_code.get(code, || {
            Some(
                self.family
                    .with_label_values(&[&code.to_string(), &self.name]),
            )
        }) {
            c.inc();
        }
    }
}

/// Handles of one HTTP connection manager.
#[derive(Debug, Clone)]
pub struct HcmStats {
    pub rq_total: IntCounter,
    /// Index 0..5 = 1xx..5xx.
    pub rq_xx: [IntCounter; 5],
    pub cx_active: IntGauge,
    /// The fault filter's `http.<prefix>.fault.*`.
    pub fault_delays: IntCounter,
    pub fault_aborts: IntCounter,
    pub fault_overflow: IntCounter,
    pub fault_active: IntGauge,
}

impl HcmStats {
    /// Resolve the handles of stat prefix `prefix`.
    pub fn new(m: &Metrics, prefix: &str) -> Self {
        let xx = |c: &str| m.downstream_rq_xx.with_label_values(&[c, prefix]);
        HcmStats {
            rq_total: m.downstream_rq_total.with_label_values(&[prefix]),
            rq_xx: [xx("1"), xx("2"), xx("3"), xx("4"), xx("5")],
            cx_active: m.downstream_cx_active.with_label_values(&[prefix]),
            fault_delays: m.fault_delays_injected.with_label_values(&[prefix]),
            fault_aborts: m.fault_aborts_injected.with_label_values(&[prefix]),
            fault_overflow: m.fault_faults_overflow.with_label_values(&[prefix]),
            fault_active: m.fault_active_faults.with_label_values(&[prefix]),
        }
    }

    /// Count a downstream response.
    pub fn record(&self, status: u16) {
        self.rq_total.inc();
        if let Some(c) = self.rq_xx.get((status / 100).wrapping_sub(1) as usize) {
            c.inc();
        }
    }
}

/// Istio destination labels of a cluster, resolved at compile time.
#[derive(Debug)]
pub struct IstioStats {
    fixed: Vec<String>,
    cache: LabelCache<(u16, u8, &'static str), (IntCounter, Histogram)>,
    counter: IntCounterVec,
    histogram: HistogramVec,
}

/// Request protocol label values.
pub const PROTOCOLS: [&str; 2] = ["http", "grpc"];

impl IstioStats {
    /// `fixed` are the values of [`ISTIO_FIXED_LABELS`], in order.
    pub fn new(m: &Metrics, fixed: Vec<String>) -> Self {
        IstioStats {
            fixed,
            cache: LabelCache::default(),
            counter: m.istio_requests_total.clone(),
            histogram: m.istio_request_duration.clone(),
        }
    }

    /// Record one request.
    pub fn record(&self, code: u16, grpc: bool, flags: &'static str, millis: f64) {
        let proto = grpc as u8;
        let handles = self.cache.get((code, proto, flags), || {
            let code_s = code.to_string();
            let mut labels: Vec<&str> = self.fixed.iter().map(String::as_str).collect();
            labels.push(&code_s);
            labels.push(PROTOCOLS[proto as usize]);
            labels.push(flags);
            Some((
                self.counter.with_label_values(&labels),
                self.histogram.with_label_values(&labels),
            ))
        });
        if let Some((c, h)) = handles {
            c.inc();
            h.observe(millis);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_render_with_envoy_and_istio_names() {
        let m = Metrics::new().unwrap();
        let hcm = HcmStats::new(&m, "ingress_http");
        hcm.record(200);
        hcm.record(503);
        let cs = ClusterStats::new(&m, "web");
        cs.rq_total.inc();
        cs.record_code(200);
        cs.record_code(200);
        let istio = IstioStats::new(
            &m,
            [
                "source",
                "gw",
                "gw",
                "unknown",
                "unknown",
                "reviews.default.svc.cluster.local",
                "reviews",
                "default",
                "v2",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        );
        istio.record(200, false, "-", 3.0);
        let text = m.render();
        assert!(
            text.contains(
                "envoy_http_downstream_rq_total{envoy_http_conn_manager_prefix=\"ingress_http\"} 2"
            ),
            "{text}"
        );
        assert!(text.contains("envoy_http_downstream_rq_xx{envoy_http_conn_manager_prefix=\"ingress_http\",envoy_response_code_class=\"5\"} 1"), "{text}");
        assert!(text.contains("envoy_cluster_upstream_rq{envoy_cluster_name=\"web\",envoy_response_code=\"200\"} 2"), "{text}");
        assert!(
            text.contains(
                "istio_requests_total{destination_service=\"reviews.default.svc.cluster.local\""
            ),
            "{text}"
        );
        assert!(text.contains("destination_version=\"v2\""), "{text}");
        assert!(
            text.contains("istio_request_duration_milliseconds_bucket"),
            "{text}"
        );
    }
}
