//! The `envoy.filters.http.health_check` HTTP filter: the proxy answers its own health checks.
//!
//! A request whose headers match every one of `headers` (typically `:path` `/healthz`) is a
//! health check. Without `pass_through_mode` the proxy answers it before routing: 200, or 503
//! when a cluster of `cluster_min_healthy_percentages` is missing, empty (unless its minimum is
//! 0) or has fewer healthy endpoints than its minimum share. With `pass_through_mode` it is routed
//! like any request. Either way its response carries `x-envoy-upstream-healthchecked-cluster`
//! with this proxy's cluster (`node.cluster` or `--service-cluster`), as Envoy's does.

use std::collections::HashMap;
use std::sync::Arc;

use http::{HeaderValue, StatusCode};

use crate::cluster::Cluster;
use crate::matcher::{HeaderMatcher, RequestView};

/// `x-envoy-upstream-healthchecked-cluster`.
pub const HEALTHCHECKED_CLUSTER: http::HeaderName =
    http::HeaderName::from_static("x-envoy-upstream-healthchecked-cluster");

/// A compiled `envoy.extensions.filters.http.health_check.v3.HealthCheck`.
#[derive(Debug)]
pub struct HealthCheckFilter {
    pub pass_through: bool,
    /// All must match for a request to be a health check.
    pub headers: Vec<HeaderMatcher>,
    /// `cluster_min_healthy_percentages`: cluster name and minimum percent of healthy endpoints.
    pub min_healthy: Vec<(String, f64)>,
    /// This proxy's cluster, for `x-envoy-upstream-healthchecked-cluster`.
    pub local_cluster: HeaderValue,
}

impl HealthCheckFilter {
    /// Whether the request is a health check.
    pub fn matches(&self, req: &RequestView<'_>) -> bool {
        self.headers.iter().all(|m| m.matches(req))
    }

    /// The answer to a health check that the proxy answers itself.
    pub fn status(&self, clusters: &HashMap<String, Arc<Cluster>>) -> StatusCode {
        for (name, min) in &self.min_healthy {
            let Some(cluster) = clusters.get(name) else {
                return StatusCode::SERVICE_UNAVAILABLE;
            };
            let (healthy, total) = cluster.membership();
            if total == 0 {
                if *min == 0.0 {
                    continue;
                }
                return StatusCode::SERVICE_UNAVAILABLE;
            }
            if (healthy as f64) * 100.0 < total as f64 * min {
                return StatusCode::SERVICE_UNAVAILABLE;
            }
        }
        StatusCode::OK
    }
}
