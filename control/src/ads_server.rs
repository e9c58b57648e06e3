//! The aggregated discovery service (ADS), state of the world, for LDS, RDS, CDS and EDS.
//!
//! Every configuration change publishes a new [`Generation`]. Each connected proxy has one task
//! that, on a new generation or a request, sends for each subscribed type — in the order CDS,
//! EDS, LDS, RDS — the resources it asked for, but only when they differ from what it was last
//! sent. Requests carrying the nonce of the last response are ACKs (`version_info` accepted) or
//! NACKs (`error_detail`); both are recorded in [`ProxyRegistry`] for `sluice proxy-status`.
//! Responses are encoded once per generation and proxy role, so a thousand sidecars cost one
//! translation.

use std::collections::{BTreeSet, HashMap};
use std::hash::{Hash, Hasher};
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use prost_reflect::DescriptorPool;
use sluice_proto::envoy::envoy::config::core::v3::{ControlPlane, Node};
use sluice_proto::envoy::envoy::service::discovery::v3::aggregated_discovery_service_server::AggregatedDiscoveryService;
use sluice_proto::envoy::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use sluice_proto::envoy::google::protobuf::Any;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use crate::node_role::{self, Role};
use crate::proxy_status::{ProxyRegistry, TypeStatus};
use crate::translate::MeshConfig;
use crate::xds_encode::{to_any, XdsType};

/// One encoded resource and the hash of its bytes.
#[derive(Debug, Clone)]
struct EncodedResource {
    any: Any,
    hash: u64,
}

/// A proxy role's resources, encoded.
#[derive(Debug, Default)]
struct Encoded {
    by_type: HashMap<XdsType, Vec<(String, EncodedResource)>>,
}

/// One published configuration.
#[derive(Debug)]
pub struct Generation {
    pub version: u64,
    pub mesh: Arc<MeshConfig>,
    cache: Mutex<HashMap<Role, Arc<Encoded>>>,
}

impl Generation {
    pub fn new(version: u64, mesh: Arc<MeshConfig>) -> Self {
        Generation {
            version,
            mesh,
            cache: Mutex::new(HashMap::new()),
        }
    }

    fn encoded(&self, role: &Role, pool: &DescriptorPool) -> Arc<Encoded> {
        // Proxies that differ only in what no resource reads share one translation.
        let role = &self.mesh.canonical_role(role);
        // A poisoned lock only means another connection panicked while encoding; the cache
        // holds complete entries only, so it is still valid.
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = cache.get(role) {
            return e.clone();
        }
        let res = self.mesh.for_proxy(role);
        let mut enc = Encoded::default();
        for (ty, map) in res.by_type() {
            let list = enc.by_type.entry(ty).or_default();
            for (name, json) in map {
                match to_any(pool, ty, name, json) {
                    Ok(any) => {
                        let mut h = std::collections::hash_map::DefaultHasher::new();
                        any.value.hash(&mut h);
                        list.push((
                            name.clone(),
                            EncodedResource {
                                any,
                                hash: h.finish(),
                            },
                        ));
                    }
                    Err(e) => tracing::error!("translation produced an invalid resource: {e}"),
                }
            }
        }
        let enc = Arc::new(enc);
        cache.insert(role.clone(), enc.clone());
        enc
    }
}

/// State shared by every ADS stream.
#[derive(Clone)]
pub struct AdsService {
    generations: watch::Receiver<Arc<Generation>>,
    registry: Arc<ProxyRegistry>,
    pool: DescriptorPool,
}

impl AdsService {
    pub fn new(
        generations: watch::Receiver<Arc<Generation>>,
        registry: Arc<ProxyRegistry>,
        pool: DescriptorPool,
    ) -> Self {
        AdsService {
            generations,
            registry,
            pool,
        }
    }
}

/// Per connection, per type.
#[derive(Debug, Default)]
struct TypeState {
    subscribed: bool,
    names: BTreeSet<String>,
    /// Hash of what was last sent (names and resource bytes).
    sent: Option<u64>,
    nonce: String,
}

struct Connection {
    id: u64,
    role: Role,
    types: HashMap<XdsType, TypeState>,
    nonce: u64,
    tx: mpsc::Sender<Result<DiscoveryResponse, Status>>,
    pool: DescriptorPool,
    registry: Arc<ProxyRegistry>,
}

impl Connection {
    /// Send `ty` if what the proxy should have differs from what it was sent.
    async fn push(&mut self, ty: XdsType, generation: &Generation) -> bool {
        let enc = generation.encoded(&self.role, &self.pool);
        let Some(state) = self.types.get_mut(&ty) else {
            return true;
        };
        if !state.subscribed {
            return true;
        }
        let all = enc.by_type.get(&ty).map(Vec::as_slice).unwrap_or(&[]);
        let chosen: Vec<&(String, EncodedResource)> = if ty.named() {
            all.iter()
                .filter(|(n, _)| state.names.contains(n))
                .collect()
        } else {
            all.iter().collect()
        };
        let mut h = std::collections::hash_map::DefaultHasher::new();
        for (name, r) in &chosen {
            name.hash(&mut h);
            r.hash.hash(&mut h);
        }
        state.names.len().hash(&mut h);
        let hash = h.finish();
        if state.sent == Some(hash) {
            return true;
        }
        self.nonce += 1;
        let nonce = self.nonce.to_string();
        state.sent = Some(hash);
        state.nonce = nonce.clone();
        let version = generation.version.to_string();
        let response = DiscoveryResponse {
            version_info: version.clone(),
            resources: chosen.iter().map(|(_, r)| r.any.clone()).collect(),
            type_url: ty.type_url(),
            nonce,
            control_plane: Some(ControlPlane {
                identifier: "sluice-control".into(),
            }),
            ..Default::default()
        };
        let count = response.resources.len();
        self.registry.update(self.id, ty, |s: &mut TypeStatus| {
            s.sent_version = version.clone();
            s.sent_at = Some(std::time::SystemTime::now());
            s.resources = count;
        });
        tracing::debug!(conn = self.id, ty = ty.short(), version, count, "push");
        self.tx.send(Ok(response)).await.is_ok()
    }

    /// Handle one request; returns false when the stream is gone.
    async fn request(&mut self, req: DiscoveryRequest, generation: &Generation) -> bool {
        let Some(ty) = XdsType::from_type_url(&req.type_url) else {
            tracing::debug!(type_url = %req.type_url, "request for a type not served");
            return true;
        };
        let state = self.types.entry(ty).or_default();
        if !req.response_nonce.is_empty() {
            if req.response_nonce != state.nonce {
                // A reply to an older response; the newer one is still outstanding.
                return true;
            }
            let nack = req.error_detail.as_ref().map(|s| s.message.clone());
            let version = req.version_info.clone();
            self.registry.update(self.id, ty, |s| match nack {
                Some(ref m) => {
                    s.nack = Some(m.clone());
                    s.nack_version = s.sent_version.clone();
                }
                None => {
                    s.acked_version = version.clone();
                    s.acked_at = Some(std::time::SystemTime::now());
                    s.nack = None;
                }
            });
            if let Some(m) = &nack {
                tracing::warn!(conn = self.id, ty = ty.short(), "NACK: {m}");
            }
        }
        state.subscribed = true;
        state.names = req.resource_names.into_iter().collect();
        self.registry
            .update(self.id, ty, |s| s.subscribed = state.names.len());
        self.push(ty, generation).await
    }
}

fn node_metadata(node: &Node) -> serde_json::Value {
    node.metadata
        .as_ref()
        .map(|s| {
            let fields: serde_json::Map<String, serde_json::Value> = s
                .fields
                .iter()
                .map(|(k, v)| (k.clone(), struct_value(v)))
                .collect();
            serde_json::Value::Object(fields)
        })
        .unwrap_or(serde_json::Value::Null)
}

fn struct_value(v: &sluice_proto::envoy::google::protobuf::Value) -> serde_json::Value {
    use sluice_proto::envoy::google::protobuf::value::Kind;
    match &v.kind {
        Some(Kind::StringValue(s)) => serde_json::Value::String(s.clone()),
        Some(Kind::NumberValue(n)) => serde_json::json!(n),
        Some(Kind::BoolValue(b)) => serde_json::Value::Bool(*b),
        Some(Kind::StructValue(s)) => serde_json::Value::Object(
            s.fields
                .iter()
                .map(|(k, v)| (k.clone(), struct_value(v)))
                .collect(),
        ),
        Some(Kind::ListValue(l)) => {
            serde_json::Value::Array(l.values.iter().map(struct_value).collect())
        }
        _ => serde_json::Value::Null,
    }
}

type ResponseStream = Pin<Box<dyn Stream<Item = Result<DiscoveryResponse, Status>> + Send>>;
type DeltaStream = Pin<Box<dyn Stream<Item = Result<DeltaDiscoveryResponse, Status>> + Send>>;

#[tonic::async_trait]
impl AggregatedDiscoveryService for AdsService {
    type StreamAggregatedResourcesStream = ResponseStream;
    type DeltaAggregatedResourcesStream = DeltaStream;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        let peer = request.remote_addr();
        let mut inbound = request.into_inner();
        let first = match inbound.message().await? {
            Some(r) => r,
            None => return Err(Status::invalid_argument("stream closed before a request")),
        };
        let node = first
            .node
            .clone()
            .ok_or_else(|| Status::invalid_argument("the first request must carry the node"))?;
        let role = node_role::role(&node.id, &node_metadata(&node))
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let (tx, rx) = mpsc::channel(16);
        let id = self.registry.connect(&node.id, role.kind(), peer);
        tracing::info!(conn = id, node = %node.id, role = role.kind(), "proxy connected");
        let mut conn = Connection {
            id,
            role,
            types: HashMap::new(),
            nonce: 0,
            tx,
            pool: self.pool.clone(),
            registry: self.registry.clone(),
        };
        let mut generations = self.generations.clone();
        let registry = self.registry.clone();
        tokio::spawn(async move {
            let generation = generations.borrow_and_update().clone();
            let mut alive = conn.request(first, &generation).await;
            while alive {
                tokio::select! {
                    msg = inbound.message() => match msg {
                        Ok(Some(req)) => {
                            let generation = generations.borrow().clone();
                            alive = conn.request(req, &generation).await;
                        }
                        _ => break,
                    },
                    changed = generations.changed() => {
                        if changed.is_err() {
                            break;
                        }
                        let generation = generations.borrow_and_update().clone();
                        for ty in XdsType::ALL {
                            if !conn.push(ty, &generation).await {
                                alive = false;
                                break;
                            }
                        }
                    }
                }
            }
            registry.disconnect(conn.id);
            tracing::info!(conn = conn.id, "proxy disconnected");
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn delta_aggregated_resources(
        &self,
        _request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        Err(Status::unimplemented(
            "incremental (delta) xDS is not served yet; use state-of-the-world ADS (api_type: GRPC)",
        ))
    }
}
