//! # sluice-config
//!
//! Sluice's typed configuration model and its validation.
//!
//! Sluice reads the configuration formats its users already have. This crate turns their files into
//! typed values and decides, before anything is applied, whether Sluice can honour every field:
//!
//! * [`source`] reads YAML or JSON text into a JSON tree and can point back at the `file:line` of a
//!   field path.
//! * [`envoy`] reads Envoy v3 messages (a bootstrap, a route configuration, an xDS resource) by
//!   reflection over the Envoy descriptors, using protobuf's JSON mapping, and yields them as
//!   canonical proto JSON for the compiler.
//! * [`field_support`] walks every field that is set in such a message and rejects the ones Sluice
//!   does not implement, naming the full field path (`static_resources.listeners[0]...retry_policy:
//!   not supported`). A field that would change routing is never ignored silently.
//!
//! * [`istio`] reads Istio `networking.istio.io` resources, [`istio_security`] Istio's
//!   `AuthorizationPolicy`, and [`argo`] Argo `Rollout`s into typed structs that refuse unknown
//!   fields, naming `file:line: path`.
//!
//! The same reading and validation code serves static files and resources received over xDS, so a
//! resource is accepted or refused for the same reasons wherever it comes from.

pub mod analysis_expr;
pub mod argo;
pub mod argo_analysis;
pub mod envoy;
pub mod error;
pub mod field_support;
pub mod istio;
pub mod istio_security;
pub mod source;

pub use error::{ConfigError, FieldError};
