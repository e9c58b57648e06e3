//! The compiled, immutable route table: virtual hosts, routes in order (first match wins), and
//! what each route does. Built by [`crate::compile`] from Envoy `RouteConfiguration`s, static or
//! received over xDS, and read lock-free by every request through the current snapshot.

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue, StatusCode};
use regex::Regex;

use crate::cluster::Cluster;
use crate::cors::CorsPolicy;
use crate::fault::FaultConfig;
use crate::hash_policy::HashPolicy;
use crate::header_ops::HeaderOps;
use crate::matcher::{HeaderMatcher, PathMatch, QueryMatcher, RequestView};
use crate::retry_policy::RetryPolicy;
use crate::vhost_select::VhostSelector;
use crate::weighted_pick::WeightedPick;

/// A route configuration.
#[derive(Debug)]
pub struct RouteTable {
    pub name: String,
    /// Match hosts without their port (`ignore_port_in_host_matching`).
    pub ignore_port_in_host_matching: bool,
    pub vhosts: Vec<VirtualHost>,
    pub selector: VhostSelector,
    pub request_headers: HeaderOps,
    pub response_headers: HeaderOps,
    /// Some virtual host has `require_tls`: requests are checked before routing.
    pub requires_tls: bool,
}

/// `VirtualHost.require_tls`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RequireTls {
    #[default]
    None,
    /// Every request not made over HTTPS is redirected to it.
    All,
    /// Only external requests (every request, while no address counts as internal).
    ExternalOnly,
}

/// A virtual host.
#[derive(Debug)]
pub struct VirtualHost {
    pub name: String,
    pub routes: Vec<Route>,
    pub request_headers: HeaderOps,
    pub response_headers: HeaderOps,
    /// The fault filter's configuration for this virtual host (`typed_per_filter_config`).
    pub fault: Option<Arc<FaultConfig>>,
    /// The local rate limit filter's configuration for this virtual host.
    pub local_ratelimit: Option<Arc<crate::local_ratelimit::LocalRateLimit>>,
    /// The CORS filter's policy for this virtual host.
    pub cors: Option<Arc<CorsPolicy>>,
    /// The compressor filters' settings for this virtual host, by filter name.
    pub compressors: crate::compressor::PerRouteCompressors,
    /// The RBAC filter's rules for this virtual host (`RBACPerRoute`).
    pub rbac: Option<Arc<crate::rbac::RbacRules>>,
    /// The CSRF filter's policy for this virtual host.
    pub csrf: Option<Arc<crate::csrf::CsrfPolicy>>,
    /// The external authorization filter's settings for this virtual host (`ExtAuthzPerRoute`).
    pub ext_authz: Option<Arc<crate::ext_authz::PerRoute>>,
    pub require_tls: RequireTls,
}

/// One route: a match and an action.
#[derive(Debug)]
pub struct Route {
    pub name: String,
    pub matcher: RouteMatch,
    pub action: RouteAction,
    pub request_headers: HeaderOps,
    pub response_headers: HeaderOps,
    /// The fault filter's configuration for this route (`typed_per_filter_config`); it replaces
    /// the virtual host's and the filter's own.
    pub fault: Option<Arc<FaultConfig>>,
    /// The local rate limit filter's configuration for this route (replaces the virtual host's
    /// and the filter's own).
    pub local_ratelimit: Option<Arc<crate::local_ratelimit::LocalRateLimit>>,
    /// The CORS filter's policy for this route; its settings come before the virtual host's.
    pub cors: Option<Arc<CorsPolicy>>,
    /// The compressor filters' settings for this route, by filter name (before the virtual
    /// host's).
    pub compressors: crate::compressor::PerRouteCompressors,
    /// The RBAC filter's rules for this route (replace the virtual host's and the filter's own).
    pub rbac: Option<Arc<crate::rbac::RbacRules>>,
    /// The CSRF filter's policy for this route (replaces the virtual host's and the filter's).
    pub csrf: Option<Arc<crate::csrf::CsrfPolicy>>,
    /// The external authorization filter's settings for this route (`disabled` replaces the
    /// virtual host's; `context_extensions` are merged over the virtual host's).
    pub ext_authz: Option<Arc<crate::ext_authz::PerRoute>>,
}

/// `envoy.config.route.v3.RouteMatch`.
#[derive(Debug)]
pub struct RouteMatch {
    pub path: PathMatch,
    pub case_sensitive: bool,
    pub headers: Vec<HeaderMatcher>,
    pub query: Vec<QueryMatcher>,
    /// `runtime_fraction.default_value` as (numerator, denominator): the route matches when
    /// `random % denominator < numerator`, with the request's random value (as Envoy).
    pub runtime_fraction: Option<(u64, u64)>,
    /// Only gRPC requests (`content-type: application/grpc*`).
    pub grpc: bool,
}

impl RouteMatch {
    /// Does the request match? `random` decides `runtime_fraction`.
    pub fn matches(&self, req: &RequestView<'_>, random: u64) -> bool {
        if !self.path.matches(req, self.case_sensitive) {
            return false;
        }
        if self.grpc {
            let ct = req
                .headers
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if !ct.starts_with("application/grpc") {
                return false;
            }
        }
        if !self.headers.iter().all(|h| h.matches(req)) {
            return false;
        }
        if !self.query.iter().all(|q| q.matches(req.query)) {
            return false;
        }
        if let Some((numerator, denominator)) = self.runtime_fraction {
            if random % denominator >= numerator {
                return false;
            }
        }
        true
    }
}

/// What a matched route does.
#[derive(Debug)]
pub enum RouteAction {
    Forward(Box<ForwardAction>),
    Redirect(Box<RedirectAction>),
    Direct(DirectResponse),
}

/// A resolved cluster reference (the cluster may be missing: 503 at request time).
#[derive(Debug, Clone)]
pub struct ClusterRef {
    pub name: Arc<str>,
    pub cluster: Option<Arc<Cluster>>,
}

/// Where a forwarded request goes.
#[derive(Debug)]
pub enum Target {
    Cluster(ClusterRef),
    /// The cluster named by a request header.
    Header(HeaderName),
    Weighted(WeightedTarget),
}

/// `weighted_clusters`.
#[derive(Debug)]
pub struct WeightedTarget {
    pub pick: WeightedPick,
    pub entries: Vec<WeightedEntry>,
    pub use_hash_policy: bool,
}

/// One cluster of a `weighted_clusters` list.
#[derive(Debug)]
pub struct WeightedEntry {
    pub cluster: ClusterRef,
    pub request_headers: HeaderOps,
    pub response_headers: HeaderOps,
    pub host_rewrite: Option<HeaderValue>,
}

/// Where mirrored requests go.
#[derive(Debug)]
pub enum MirrorTarget {
    Cluster(ClusterRef),
    /// The cluster named by a request header.
    Header(HeaderName),
}

/// A `request_mirror_policies` entry.
#[derive(Debug)]
pub struct MirrorPolicy {
    pub cluster: MirrorTarget,
    /// Share of requests mirrored, as (numerator, denominator).
    pub fraction: (u64, u64),
    pub append_shadow_suffix: bool,
}

/// `route` action.
#[derive(Debug)]
pub struct ForwardAction {
    pub target: Target,
    /// `None` = no timeout (`timeout: 0s`).
    pub timeout: Option<Duration>,
    /// `auto_host_rewrite`: the host becomes the DNS name of the endpoint chosen.
    pub auto_host_rewrite: bool,
    /// The route's `idle_timeout` (`Some(None)`: `0s`, no idle timeout on this route); `None`:
    /// the connection manager's `stream_idle_timeout` applies.
    pub idle_timeout: Option<Option<Duration>>,
    /// `x-envoy-expected-rq-timeout-ms` for this timeout (or the shorter per-try timeout),
    /// formatted once.
    pub timeout_header: Option<HeaderValue>,
    /// `retry_policy`.
    pub retry: Option<Arc<RetryPolicy>>,
    pub prefix_rewrite: Option<String>,
    pub regex_rewrite: Option<(Regex, String)>,
    pub host_rewrite: Option<HeaderValue>,
    pub mirrors: Vec<MirrorPolicy>,
    pub hash_policy: Vec<HashPolicy>,
    /// Route-level `upgrade_configs` for websocket: overrides the connection manager's setting.
    pub websocket: Option<bool>,
    pub cluster_not_found_status: StatusCode,
}

/// `redirect` action.
#[derive(Debug)]
pub struct RedirectAction {
    pub scheme: Option<String>,
    pub host: Option<String>,
    pub port: Option<u16>,
    pub path: Option<String>,
    pub prefix_rewrite: Option<String>,
    pub regex_rewrite: Option<(Regex, String)>,
    pub status: StatusCode,
    pub strip_query: bool,
}

/// `direct_response` action.
#[derive(Debug)]
pub struct DirectResponse {
    pub status: StatusCode,
    pub body: Option<bytes::Bytes>,
}

/// The result of routing a request.
#[derive(Debug, Clone, Copy)]
pub struct RouteHit<'a> {
    pub vhost: &'a VirtualHost,
    pub route: &'a Route,
}

impl RouteTable {
    /// Select the virtual host and the first matching route.
    pub fn route<'a>(&'a self, req: &RequestView<'_>, random: u64) -> Option<RouteHit<'a>> {
        let vhost = &self.vhosts[self.selector.select(req.authority)?];
        let route = vhost
            .routes
            .iter()
            .find(|r| r.matcher.matches(req, random))?;
        Some(RouteHit { vhost, route })
    }

    /// The virtual host a request's host selects.
    pub fn vhost(&self, req: &RequestView<'_>) -> Option<&VirtualHost> {
        self.vhosts.get(self.selector.select(req.authority)?)
    }

    /// Number of routes in all virtual hosts.
    pub fn route_count(&self) -> usize {
        self.vhosts.iter().map(|v| v.routes.len()).sum()
    }

    /// Every route's and virtual host's RBAC rules.
    pub fn rbac_overrides(&self) -> impl Iterator<Item = &crate::rbac::RbacRules> {
        self.vhosts.iter().flat_map(|v| {
            v.rbac
                .as_deref()
                .into_iter()
                .chain(v.routes.iter().filter_map(|r| r.rbac.as_deref()))
        })
    }

    /// The local rate limit configurations of its virtual hosts and routes.
    pub fn local_ratelimits(
        &self,
    ) -> impl Iterator<Item = &crate::local_ratelimit::LocalRateLimit> {
        self.vhosts.iter().flat_map(|v| {
            v.local_ratelimit
                .as_deref()
                .into_iter()
                .chain(v.routes.iter().filter_map(|r| r.local_ratelimit.as_deref()))
        })
    }
}
