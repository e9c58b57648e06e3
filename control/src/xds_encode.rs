//! Envoy resources as proto JSON → `google.protobuf.Any`, through the Envoy descriptor pool.
//! Translation writes JSON (the form Envoy's documentation uses, and the one golden tests read);
//! the wire form is made here, which also checks every resource against Envoy's schema.

use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage};
use serde_json::Value;
use sluice_proto::envoy::google::protobuf::Any;

/// The xDS resource types served, in the order they are pushed (Envoy's make-before-break order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum XdsType {
    Cluster,
    Endpoint,
    Listener,
    Route,
}

impl XdsType {
    pub const ALL: [XdsType; 4] = [
        XdsType::Cluster,
        XdsType::Endpoint,
        XdsType::Listener,
        XdsType::Route,
    ];

    /// The protobuf message of the type.
    pub fn message(self) -> &'static str {
        match self {
            XdsType::Cluster => "envoy.config.cluster.v3.Cluster",
            XdsType::Endpoint => "envoy.config.endpoint.v3.ClusterLoadAssignment",
            XdsType::Listener => "envoy.config.listener.v3.Listener",
            XdsType::Route => "envoy.config.route.v3.RouteConfiguration",
        }
    }

    /// The type URL used in discovery requests and responses.
    pub fn type_url(self) -> String {
        format!("type.googleapis.com/{}", self.message())
    }

    /// The type of a type URL.
    pub fn from_type_url(url: &str) -> Option<XdsType> {
        let name = url.rsplit('/').next()?;
        XdsType::ALL.into_iter().find(|t| t.message() == name)
    }

    /// Envoy's short name (CDS, EDS, LDS, RDS).
    pub fn short(self) -> &'static str {
        match self {
            XdsType::Cluster => "CDS",
            XdsType::Endpoint => "EDS",
            XdsType::Listener => "LDS",
            XdsType::Route => "RDS",
        }
    }

    /// Types whose requests name the resources they want (the others are wildcards).
    pub fn named(self) -> bool {
        matches!(self, XdsType::Endpoint | XdsType::Route)
    }
}

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
