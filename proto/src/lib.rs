//! # sluice-proto
//!
//! Protocol types shared by the Sluice data plane and control plane.
//!
//! * [`envoy`]: the Envoy v3 API (bootstrap, listeners, routes, clusters, xDS services), re-exported
//!   from the `envoy-types` crate so the whole project uses one set of generated types.
//! * [`descriptor_pool`]: the protobuf descriptors of those same types. Configuration files are read
//!   by reflection against this pool, which gives Envoy's exact proto3 JSON mapping (both field name
//!   spellings, durations such as `"1.5s"`, enums by name, `"@type"` inside `typed_config`) and lets the
//!   validator name any field by its full path.

use std::sync::OnceLock;

use prost_reflect::DescriptorPool;

/// The Envoy v3 API types.
pub mod envoy {
    pub use envoy_types::pb::*;
}

static DESCRIPTOR_BYTES: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/envoy_descriptors.bin"));

/// Error decoding the embedded descriptor set (a build defect, never caused by user input).
#[derive(Debug, thiserror::Error)]
#[error("embedded Envoy descriptor set is invalid: {0}")]
pub struct DescriptorError(String);

static POOL: OnceLock<Result<DescriptorPool, String>> = OnceLock::new();

/// The descriptor pool holding every Envoy message type known to `envoy-types`.
pub fn descriptor_pool() -> Result<&'static DescriptorPool, DescriptorError> {
    POOL.get_or_init(|| DescriptorPool::decode(DESCRIPTOR_BYTES).map_err(|e| e.to_string()))
        .as_ref()
        .map_err(|e| DescriptorError(e.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_knows_bootstrap_and_extensions() {
        let pool = descriptor_pool().unwrap();
        for name in [
            "envoy.config.bootstrap.v3.Bootstrap",
            "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "envoy.extensions.filters.http.router.v3.Router",
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
        ] {
            assert!(pool.get_message_by_name(name).is_some(), "{name}");
        }
    }
}
