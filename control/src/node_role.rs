//! What a connected proxy is, from its Envoy `node`, the way Istio decides it: a node id
//! `router~IP~NAME.NAMESPACE~NAMESPACE.svc.cluster.local` is a gateway, `sidecar~…` a sidecar.
//! Gateways are matched against Gateway `selector`s by `node.metadata.LABELS`.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde_json::Value;

/// Node metadata key: the address of a sidecar's outbound HTTP listener.
pub const OUTBOUND_ADDRESS_KEY: &str = "SLUICE_OUTBOUND_ADDRESS";
/// Node metadata key: the IP a gateway binds its server ports on (Istio binds `0.0.0.0`).
pub const GATEWAY_ADDRESS_KEY: &str = "SLUICE_GATEWAY_ADDRESS";
/// A sidecar's outbound listener when the node does not say (Istio's outbound port).
pub const DEFAULT_OUTBOUND: &str = "127.0.0.1:15001";

/// The role of a proxy.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Role {
    /// An ingress/egress gateway: listeners from the Gateways whose selector its labels match.
    Gateway {
        labels: BTreeMap<String, String>,
        bind_ip: String,
    },
    /// A sidecar: one outbound HTTP listener for every mesh service.
    Sidecar { outbound: SocketAddr },
}

impl Role {
    /// A short name for status output.
    pub fn kind(&self) -> &'static str {
        match self {
            Role::Gateway { .. } => "gateway",
            Role::Sidecar { .. } => "sidecar",
        }
    }
}

/// Why a node could not be given a role.
#[derive(Debug, thiserror::Error)]
pub enum RoleError {
    #[error("node id `{0}` is not `router~IP~NAME.NAMESPACE~DOMAIN` or `sidecar~IP~NAME.NAMESPACE~DOMAIN`")]
    Id(String),
    #[error("node metadata {key} `{value}` is not an IP:port")]
    Address { key: &'static str, value: String },
}

/// The node's namespace (`NAME.NAMESPACE` in the id's third part), `default` when absent.
pub fn namespace(id: &str) -> String {
    id.split('~')
        .nth(2)
        .and_then(|p| p.split_once('.'))
        .map(|(_, ns)| ns.to_string())
        .unwrap_or_else(|| "default".into())
}

/// Decide the role from the node id and metadata (a `google.protobuf.Struct` as JSON).
pub fn role(id: &str, metadata: &Value) -> Result<Role, RoleError> {
    let kind = id.split('~').next().unwrap_or("");
    match kind {
        "router" => {
            let labels = metadata
                .get("LABELS")
                .and_then(Value::as_object)
                .map(|m| {
                    m.iter()
                        .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_string())))
                        .collect()
                })
                .unwrap_or_default();
            let bind_ip = metadata
                .get(GATEWAY_ADDRESS_KEY)
                .and_then(Value::as_str)
                .unwrap_or("0.0.0.0")
                .to_string();
            if bind_ip.parse::<std::net::IpAddr>().is_err() {
                return Err(RoleError::Address {
                    key: GATEWAY_ADDRESS_KEY,
                    value: bind_ip,
                });
            }
            Ok(Role::Gateway { labels, bind_ip })
        }
        "sidecar" => {
            let text = metadata
                .get(OUTBOUND_ADDRESS_KEY)
                .and_then(Value::as_str)
                .unwrap_or(DEFAULT_OUTBOUND);
            let outbound = text.parse().map_err(|_| RoleError::Address {
                key: OUTBOUND_ADDRESS_KEY,
                value: text.to_string(),
            })?;
            Ok(Role::Sidecar { outbound })
        }
        _ => Err(RoleError::Id(id.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_and_sidecar_ids() {
        let md = serde_json::json!({"LABELS": {"istio": "ingressgateway"}});
        let r = role(
            "router~10.0.0.1~gw-1.istio-system~istio-system.svc.cluster.local",
            &md,
        )
        .unwrap();
        assert_eq!(
            r,
            Role::Gateway {
                labels: [("istio".to_string(), "ingressgateway".to_string())].into(),
                bind_ip: "0.0.0.0".into()
            }
        );
        let r = role(
            "sidecar~10.0.0.2~app.default~default.svc.cluster.local",
            &Value::Null,
        )
        .unwrap();
        assert_eq!(
            r,
            Role::Sidecar {
                outbound: "127.0.0.1:15001".parse().unwrap()
            }
        );
        assert!(role("front-proxy", &Value::Null).is_err());
        assert_eq!(namespace("router~1~gw.istio-system~x"), "istio-system");
    }
}
