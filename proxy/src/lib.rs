//! # sluice-proxy
//!
//! The Sluice data plane: an HTTP/1.1 and HTTP/2 (h2c) reverse proxy configured by an Envoy v3
//! bootstrap.
//!
//! A configuration is compiled ([`compile`]) into an immutable [`snapshot::Snapshot`]: listeners,
//! their [`route_table::RouteTable`]s and the [`cluster::Cluster`]s they send to, with metric
//! handles already resolved. Each listener reads the current snapshot through `arc-swap`, so a
//! request never takes a lock and a reload (SIGHUP, file change, later xDS) swaps the whole snapshot
//! atomically while requests in flight finish on the one they started with.
//!
//! Request path ([`server`]): accept → HTTP codec (HTTP/1.1: [`downstream_http1`]; HTTP/2: [`downstream_h2`] with
//! [`h2_frame`] and [`hpack`]) → [`vhost_select`] by `:authority` →
//! first matching route ([`matcher`]) → HTTP filters ([`rbac`], [`decompressor`],
//! [`local_ratelimit`], [`cors`], [`csrf`], [`fault`], [`compressor`]) → action: direct response,
//! redirect, or forward to a cluster (chosen by [`weighted_pick`], sticky with [`hash_policy`]) →
//! endpoint by the cluster's load
//! balancer → pooled upstream connection ([`upstream_pool`]; HTTP/1.1 spoken inline by
//! [`upstream_http1`], HTTP/2 by hyper) → response streamed back.

pub mod access_log;
pub mod access_log_sink;
pub mod admin;
pub mod ads_client;
pub mod body;
pub mod buffer_pool;
pub mod cluster;
pub mod compile;
pub mod compressor;
pub mod cors;
pub mod csrf;
pub mod data_source;
pub mod decompressor;
pub mod demo_upstream;
pub mod downstream_h2;
pub mod downstream_http1;
pub mod edge;
pub mod ext_authz;
pub mod fault;
pub mod filter_chain_match;
pub mod h2_frame;
pub mod handler_pool;
pub mod hash_policy;
pub mod hash_ring;
pub mod header_lookup;
pub mod header_name;
pub mod header_ops;
pub mod header_pool;
pub mod health_check;
pub mod health_check_filter;
pub mod hpack;
pub mod http1_codec;
pub mod local_ratelimit;
pub mod matcher;
pub mod memory;
pub mod metrics;
pub mod outlier;
pub mod path_normalize;
pub mod path_source;
pub mod peer_validation;
pub mod rbac;
pub mod request_id;
pub mod retry_policy;
pub mod route_table;
pub mod runtime;
pub mod server;
pub mod snapshot;
pub mod tcp_proxy;
pub mod tls;
pub mod tls_inspector;
pub mod transport;
pub mod upstream_http1;
pub mod upstream_pool;
pub mod vhost_select;
pub mod weighted_pick;
pub mod xds_state;
