//! The immutable runtime configuration that requests read.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::HeaderValue;

use crate::cluster::Cluster;
use crate::metrics::{HcmStats, IstioStats};
use crate::route_table::RouteTable;

/// Downstream codec (`codec_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    Auto,
    Http1,
    Http2,
}

/// `server_header_transformation`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerHeader {
    Overwrite,
    AppendIfAbsent,
    PassThrough,
}

/// An HTTP connection manager, compiled.
#[derive(Debug)]
pub struct HcmConfig {
    pub stat_prefix: String,
    pub codec: Codec,
    pub routes: Arc<RouteTable>,
    pub generate_request_id: bool,
    /// `preserve_external_request_id`: an edge request keeps the `x-request-id` it came with.
    pub preserve_external_request_id: bool,
    /// `always_set_request_id_in_response`: every response carries the request's id.
    pub always_set_request_id_in_response: bool,
    /// `via`: appended to the `via` of requests and responses.
    pub via: Option<HeaderValue>,
    pub use_remote_address: bool,
    pub xff_num_trusted_hops: u32,
    pub skip_xff_append: bool,
    pub strip_matching_host_port: bool,
    pub strip_any_host_port: bool,
    pub request_timeout: Option<Duration>,
    /// `stream_idle_timeout`, when configured: how long a request may wait for its response
    /// head (a route's `idle_timeout` replaces it).
    pub stream_idle_timeout: Option<Duration>,
    pub request_headers_timeout: Option<Duration>,
    pub idle_timeout: Option<Duration>,
    pub max_request_headers_kb: u32,
    /// `http_protocol_options.accept_http_10`: serve HTTP/1.0 requests (else 426, as Envoy).
    pub accept_http_10: bool,
    /// `http2_protocol_options`: what the listener's HTTP/2 connections announce.
    pub http2: Http2Options,
    pub websocket: bool,
    pub suppress_envoy_headers: bool,
    /// The fault filter (`envoy.filters.http.fault`) when the connection manager has one: its
    /// own configuration, which routes and virtual hosts may replace.
    pub fault: Option<Arc<crate::fault::FaultConfig>>,
    /// The connection manager has the CORS filter (`envoy.filters.http.cors`): routes' and
    /// virtual hosts' CORS policies apply.
    pub cors: bool,
    /// The health-check filter (`envoy.filters.http.health_check`), when present.
    pub health_check: Option<Arc<crate::health_check_filter::HealthCheckFilter>>,
    /// The local rate limit filter (`envoy.filters.http.local_ratelimit`), when present: its own
    /// configuration, which routes and virtual hosts may replace.
    pub local_ratelimit: Option<Arc<crate::local_ratelimit::LocalRateLimit>>,
    /// The compressor filters (`envoy.filters.http.compressor`), in chain order, when present.
    pub compressors: Option<Arc<crate::compressor::CompressorChain>>,
    /// The decompressor filters (`envoy.filters.http.decompressor`), in chain order.
    pub decompressors: Option<Arc<crate::decompressor::DecompressorChain>>,
    /// `normalize_path`, `merge_slashes`, `path_with_escaped_slashes_action`,
    /// `headers_with_underscores_action`.
    pub path_rules: crate::path_normalize::PathRules,
    /// The CSRF filter (`envoy.filters.http.csrf`), when present.
    pub csrf: Option<Arc<crate::csrf::CsrfFilter>>,
    /// The CSRF filter comes after the CORS filter: its refusals carry the CORS headers.
    pub csrf_after_cors: bool,
    /// The external authorization filter (`envoy.filters.http.ext_authz`), when present.
    pub ext_authz: Option<Arc<crate::ext_authz::ExtAuthz>>,
    /// The access logs (`access_log`), when there are any.
    pub access_log: Option<Arc<crate::access_log::AccessLogs>>,
    /// The RBAC filters (`envoy.filters.http.rbac`), in order: a request must pass each.
    pub rbac: Vec<crate::rbac::RbacFilter>,
    pub server_name: HeaderValue,
    pub server_header: ServerHeader,
    pub stats: HcmStats,
    /// `istio_requests_total` for requests that reach no cluster (`NR`, `NC`), with unknown
    /// destination labels, as Istio reports them.
    pub unrouted: IstioStats,
}

/// `http2_protocol_options` of a connection manager.
///
/// The windows are also the most request body a connection buffers for a slow upstream, so the
/// defaults are smaller than Envoy's (256 MiB each, bounded there by its buffer limits instead).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Http2Options {
    pub max_concurrent_streams: u32,
    pub initial_stream_window_size: u32,
    pub initial_connection_window_size: u32,
}

impl Default for Http2Options {
    fn default() -> Self {
        Http2Options {
            max_concurrent_streams: 1024,
            initial_stream_window_size: 1 << 20,
            initial_connection_window_size: 4 << 20,
        }
    }
}

/// One filter chain of a listener: the server names it serves (SNI), its TLS configuration, and
/// its HTTP connection manager.
#[derive(Debug)]
pub struct FilterChain {
    pub server_names: Vec<String>,
    /// `filter_chain_match.transport_protocol` (`tls`, `raw_buffer`); empty: any.
    pub transport_protocol: String,
    /// `filter_chain_match.application_protocols`; empty: any.
    pub application_protocols: Vec<String>,
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Network RBAC filters before the terminal filter, in order: each may close a connection.
    pub rbac: Vec<crate::rbac::NetworkRbac>,
    pub filter: NetworkFilter,
}

/// What serves a filter chain's connections.
#[derive(Debug, Clone)]
pub enum NetworkFilter {
    /// The HTTP connection manager.
    Http(Arc<HcmConfig>),
    /// `envoy.filters.network.tcp_proxy`.
    Tcp(Arc<crate::tcp_proxy::TcpProxyConfig>),
}

/// A listener, compiled.
#[derive(Debug)]
pub struct ListenerConfig {
    pub name: String,
    pub address: SocketAddr,
    pub chains: Vec<FilterChain>,
    /// The listener has the TLS inspector: a connection's ClientHello is read (not consumed)
    /// before its chain is chosen. Without it, as in Envoy, no SNI is known then.
    pub inspect_tls: bool,
}

impl ListenerConfig {
    /// The chain that serves a connection of which `seen` is known.
    pub fn select_chain(&self, seen: &crate::filter_chain_match::Seen) -> Option<usize> {
        crate::filter_chain_match::select(
            self.chains
                .iter()
                .map(|c| crate::filter_chain_match::Criteria {
                    server_names: &c.server_names,
                    transport_protocol: &c.transport_protocol,
                    application_protocols: &c.application_protocols,
                }),
            seen,
        )
    }

    /// Routes in all chains.
    pub fn route_count(&self) -> usize {
        self.chains
            .iter()
            .map(|c| match &c.filter {
                NetworkFilter::Http(hcm) => hcm.routes.route_count(),
                NetworkFilter::Tcp(_) => 0,
            })
            .sum()
    }
}

/// Who this proxy is (`node`, `--service-node`, `--service-cluster`).
#[derive(Debug, Clone, Default)]
pub struct NodeInfo {
    pub id: String,
    pub cluster: String,
}

/// Everything a running proxy serves, swapped as one piece.
#[derive(Debug)]
pub struct Snapshot {
    pub version: u64,
    pub listeners: Vec<Arc<ListenerConfig>>,
    pub clusters: HashMap<String, Arc<Cluster>>,
    pub admin: Option<SocketAddr>,
    pub node: NodeInfo,
    /// The configuration as canonical JSON (for `/config_dump`).
    pub config: serde_json::Value,
    /// Resources received over xDS with their versions (Envoy's dynamic config dumps), or null.
    pub dynamic: serde_json::Value,
    pub loaded_at: SystemTime,
}
