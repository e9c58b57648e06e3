//! # sluice-control
//!
//! The Sluice control plane. It reads Istio `networking.istio.io` resources from a directory,
//! translates them into Envoy resources named as Istio names them, and serves them over Envoy's
//! aggregated discovery service (ADS, state of the world) to every connected proxy — real Envoy
//! or `sluice proxy`.
//!
//! * [`config_store`]: the watched directory; the last good version of every file.
//! * [`registry`]: services and endpoints from ServiceEntry / WorkloadEntry.
//! * [`delegation`] (delegate VirtualServices merged into their roots), [`cluster_translate`],
//!   [`route_translate`] (HTTP), [`l4_translate`] (TCP and TLS routes), [`authz_translate`]
//!   (AuthorizationPolicy → RBAC filters), [`sidecar_scope`] (what a `Sidecar` resource lets a
//!   sidecar see), [`translate`]: Istio → Envoy JSON per proxy role
//!   ([`node_role`]: gateway or sidecar, from the node id as Istio reads it).
//! * [`xds_encode`]: JSON → `google.protobuf.Any` through the Envoy descriptor pool.
//! * [`ads_server`]: the ADS gRPC service: per-type versions and nonces, ACK/NACK per proxy,
//!   CDS → EDS → LDS → RDS push order, only what changed.
//! * [`proxy_status`]: what each connected proxy has acknowledged, served as JSON for
//!   `sluice proxy-status`.
//! * [`server`]: `sluice control` itself: watch, debounce, translate, push.
//! * Metric analysis: [`analysis_run`] (Argo's measurement and run semantics),
//!   [`analysis_provider`] (Prometheus and web measurements), [`provider_tls`] (their `https://`).

pub mod ads_server;
pub mod analysis_provider;
pub mod analysis_run;
pub mod api_client;
pub mod authz_translate;
pub mod cluster_translate;
pub mod config_store;
pub mod delegation;
pub mod demo;
pub mod grpc_api;
pub mod l4_translate;
pub mod naming;
pub mod node_role;
pub mod provider_tls;
pub mod proxy_status;
pub mod registry;
pub(crate) mod release_api;
pub mod rollout_create;
pub mod rollout_engine;
pub mod rollout_manager;
pub mod rollout_overlay;
pub mod rollout_store;
pub mod rollout_view;
pub mod route_translate;
pub mod route_weights;
pub mod server;
pub mod sidecar_scope;
pub mod translate;
pub mod verify;
pub mod xds_encode;
