//! Envoy resources as proto JSON → `google.protobuf.Any`, through the Envoy descriptor pool.
//! Translation writes JSON (the form Envoy's documentation uses, and the one golden tests read);
//! the wire form is made here, which also checks every resource against Envoy's schema.

use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage};
use serde_json::Value;
use sluice_proto::envoy::google::protobuf::Any;

pub use sluice_proto::xds_type::XdsType;

/// A resource that does not fit Envoy's schema (a translation defect).
#[derive(Debug, thiserror::Error)]
#[error("{type_name} `{name}`: {message}")]
pub struct EncodeError {
    pub type_name: &'static str,
    pub name: String,
    pub message: String,
}

/// Encode one resource.
pub fn to_any(
    pool: &DescriptorPool,
    ty: XdsType,
    name: &str,
    json: &Value,
) -> Result<Any, EncodeError> {
    let err = |message: String| EncodeError {
        type_name: ty.message(),
        name: name.to_string(),
        message,
    };
    let desc = pool
        .get_message_by_name(ty.message())
        .ok_or_else(|| err("type missing from the descriptor pool".into()))?;
    let msg = DynamicMessage::deserialize(desc, json).map_err(|e| err(e.to_string()))?;
    Ok(Any {
        type_url: ty.type_url(),
        value: msg.encode_to_vec(),
    })
}
