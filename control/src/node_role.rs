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
/// Node metadata key: where a sidecar receives traffic for its own workload (Istio: 15006).
pub const INBOUND_ADDRESS_KEY: &str = "SLUICE_INBOUND_ADDRESS";
/// Node metadata key: where the sidecar's own workload listens.
pub const APP_ADDRESS_KEY: &str = "SLUICE_APP_ADDRESS";

/// A sidecar's inbound side: traffic for its workload arrives at `listen` and goes to `app`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Inbound {
    pub listen: SocketAddr,
    pub app: SocketAddr,
    /// The workload's labels (`node.metadata.LABELS`): they tell which service it belongs to.
    pub labels: BTreeMap<String, String>,
}

/// The role of a proxy.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Role {
    /// An ingress/egress gateway: listeners from the Gateways whose selector its labels match.
    Gateway {
        labels: BTreeMap<String, String>,
        bind_ip: String,
        /// The node's namespace (`sourceNamespace` matches read it).
        namespace: String,
    },
    /// A sidecar: one outbound HTTP listener for every mesh service, and optionally an inbound
    /// listener in front of its own workload.
    Sidecar {
        outbound: SocketAddr,
        inbound: Option<Inbound>,
        /// The workload's labels (`sourceLabels` matches read them).
        labels: BTreeMap<String, String>,
        /// The node's namespace.
        namespace: String,
    },
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

/// `node.metadata.LABELS` as a map.
fn labels(metadata: &Value) -> BTreeMap<String, String> {
    metadata
        .get("LABELS")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

/// Decide the role from the node id and metadata (a `google.protobuf.Struct` as JSON).
pub fn role(id: &str, metadata: &Value) -> Result<Role, RoleError> {
    let kind = id.split('~').next().unwrap_or("");
    match kind {
        "router" => {
            let labels = labels(metadata);
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
            Ok(Role::Gateway {
                labels,
                bind_ip,
                namespace: namespace(id),
            })
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
            let addr = |key: &'static str| -> Result<Option<SocketAddr>, RoleError> {
                match metadata.get(key).and_then(Value::as_str) {
                    None => Ok(None),
                    Some(t) => t.parse().map(Some).map_err(|_| RoleError::Address {
                        key,
                        value: t.to_string(),
                    }),
                }
            };
            let inbound = match (addr(INBOUND_ADDRESS_KEY)?, addr(APP_ADDRESS_KEY)?) {
                (Some(listen), Some(app)) => Some(Inbound {
                    listen,
                    app,
                    labels: labels(metadata),
                }),
                _ => None,
            };
            Ok(Role::Sidecar {
                outbound,
                inbound,
                labels: labels(metadata),
                namespace: namespace(id),
            })
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
                bind_ip: "0.0.0.0".into(),
                namespace: "istio-system".into(),
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
                outbound: "127.0.0.1:15001".parse().unwrap(),
                inbound: None,
                labels: Default::default(),
                namespace: "default".into(),
            }
        );
        let md = serde_json::json!({"SLUICE_INBOUND_ADDRESS": "127.0.0.1:15006", "SLUICE_APP_ADDRESS": "127.0.0.1:8080", "LABELS": {"app": "web"}});
        let Ok(Role::Sidecar {
            inbound: Some(i), ..
        }) = role("sidecar~1~web-1.default~x", &md)
        else {
            panic!("inbound expected")
        };
        assert_eq!(
            (i.listen.port(), i.app.port(), i.labels["app"].as_str()),
            (15006, 8080, "web")
        );
        assert!(role("front-proxy", &Value::Null).is_err());
        assert_eq!(namespace("router~1~gw.istio-system~x"), "istio-system");
    }
}
