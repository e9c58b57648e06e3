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
//! * [`control`]: Sluice's release API (`sluice.control.v1.Releases`), generated from
//!   `proto/sluice/control/v1/releases.proto`.
//! * [`xds_type`]: the xDS resource types (CDS, EDS, LDS, RDS) and their type URLs.

use std::sync::Mutex;

use prost_reflect::DescriptorPool;

pub mod xds_type;

/// Sluice's own gRPC API: `sluice.control.v1.Releases`, the release operations.
pub mod control {
    pub mod v1 {
        #![allow(clippy::all, missing_docs)]
        tonic::include_proto!("sluice.control.v1");
    }
}

/// The Envoy v3 API types.
pub mod envoy {
    pub use envoy_types::pb::*;
}

static DESCRIPTOR_BYTES: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/envoy_descriptors.bin"));

/// Error decoding the embedded descriptor set (a build defect, never caused by user input).
#[derive(Debug, thiserror::Error)]
#[error("embedded Envoy descriptor set is invalid: {0}")]
pub struct DescriptorError(String);

/// The decoded pool, kept while configuration is being loaded (see [`release_descriptor_pool`]).
static POOL: Mutex<Option<DescriptorPool>> = Mutex::new(None);

/// The descriptor pool holding every Envoy message type known to `envoy-types`. Decoding it takes
/// tens of milliseconds and tens of MiB, so it is cached until [`release_descriptor_pool`].
pub fn descriptor_pool() -> Result<DescriptorPool, DescriptorError> {
    // A poisoned lock only means another thread panicked while decoding; the cache is still valid.
    let mut cached = POOL.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(pool) = cached.as_ref() {
        return Ok(pool.clone());
    }
    let pool =
        DescriptorPool::decode(DESCRIPTOR_BYTES).map_err(|e| DescriptorError(e.to_string()))?;
    *cached = Some(pool.clone());
    Ok(pool)
}

/// The embedded descriptor set (read-only data of the binary). After a load it can be given back
/// to the operating system: its pages are clean and come back from the executable when needed.
pub fn descriptor_bytes() -> &'static [u8] {
    DESCRIPTOR_BYTES
}

/// Drop the cached pool once configuration is loaded; a running proxy does not need it until the
/// next load. (Messages still holding descriptors keep their pool alive until they are dropped.)
pub fn release_descriptor_pool() {
    POOL.lock().unwrap_or_else(|e| e.into_inner()).take();
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
