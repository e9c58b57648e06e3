//! The proxy as an ADS client (state of the world, Envoy's protocol).
//!
//! One stream to the management server named by `dynamic_resources.ads_config` carries CDS,
//! EDS, LDS and RDS. Each response is decoded and checked with the same field support table as
//! a static file ([`sluice_config::envoy::canonical_resource`]), then handed to the proxy, which
//! compiles it together with everything else it serves. The answer goes back to the server: an
//! ACK (`version_info` of the response) or a NACK with `error_detail`, in which case the proxy
//! keeps serving its last good configuration. After CDS and LDS the EDS and RDS subscriptions
//! follow the clusters and listeners that need them.
//!
//! When the stream fails the proxy keeps routing on what it has, and reconnects with jittered
//! exponential backoff; `envoy_control_plane_connected_state` says which state it is in.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::time::Duration;

use prost::Message;
use serde_json::Value;
use sluice_proto::envoy::envoy::config::core::v3::Node;
use sluice_proto::envoy::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use sluice_proto::envoy::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use sluice_proto::envoy::google::rpc::Status as RpcStatus;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;

use crate::metrics::Metrics;
use crate::xds_state::XdsKind;

/// The subscriptions that follow from an accepted configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Wanted {
    pub endpoints: BTreeSet<String>,
    pub routes: BTreeSet<String>,
}

/// A decoded response, for the proxy to apply.
#[derive(Debug)]
pub struct XdsUpdate {
    pub kind: XdsKind,
    pub version: String,
    pub resources: BTreeMap<String, Value>,
    /// Resources of the response that were refused: their previously accepted version (if any)
    /// stays (CDS and LDS accept the rest of a response, as Envoy does).
    pub keep: BTreeSet<String>,
    pub reply: oneshot::Sender<Outcome>,
}

/// What the proxy did with an update.
#[derive(Debug, Default)]
pub struct Outcome {
    /// The subscriptions of the configuration now serving, when something was applied.
    pub applied: Option<Wanted>,
    /// Why (part of) the update was refused: the NACK's `error_detail`.
    pub error: Option<String>,
}

/// Where and as whom to connect.
#[derive(Debug, Clone)]
pub struct AdsClientConfig {
    pub server: SocketAddr,
    pub node: Node,
    /// Subscriptions known from the bootstrap (static listeners using RDS, static EDS clusters).
    pub initial: Wanted,
}

/// Why a stream ended.
#[derive(Debug, thiserror::Error)]
enum StreamError {
    #[error("connect: {0}")]
    Connect(#[from] tonic::transport::Error),
    #[error("stream: {0}")]
    Rpc(#[from] tonic::Status),
    #[error("the proxy stopped")]
    ProxyGone,
}

/// The node as the bootstrap describes it (canonical JSON), for the first request.
pub fn node_from_json(node: &Value) -> Result<Node, String> {
    let pool = sluice_proto::descriptor_pool().map_err(|e| e.to_string())?;
    let desc = pool
        .get_message_by_name("envoy.config.core.v3.Node")
        .ok_or("envoy.config.core.v3.Node missing from the descriptor pool")?;
    let msg = prost_reflect::DynamicMessage::deserialize(desc, node).map_err(|e| e.to_string())?;
    Node::decode(msg.encode_to_vec().as_slice()).map_err(|e| e.to_string())
}

/// A response decoded and checked: the good resources, and the problems of the others.
struct Decoded {
    resources: BTreeMap<String, Value>,
    refused: BTreeSet<String>,
    problems: Vec<String>,
}

/// Decode and check every resource of a response.
fn decode(kind: XdsKind, resp: &DiscoveryResponse) -> Decoded {
    let mut d = Decoded {
        resources: BTreeMap::new(),
        refused: BTreeSet::new(),
        problems: Vec::new(),
    };
    for (i, any) in resp.resources.iter().enumerate() {
        if XdsKind::from_type_url(&any.type_url) != Some(kind) {
            d.problems.push(format!(
                "resource {i}: type {} in a {} response",
                any.type_url,
                kind.short()
            ));
            continue;
        }
        match sluice_config::envoy::canonical_resource(kind.message(), &any.value) {
            Ok(v) => {
                let name = crate::xds_state::name_of(kind, &v);
                if d.resources.insert(name.clone(), v).is_some() {
                    d.problems
                        .push(format!("{} `{name}`: sent twice", kind.short()));
                }
            }
            Err(errors) => {
                let name = sluice_config::envoy::resource_name(kind.message(), &any.value)
                    .unwrap_or_else(|| format!("#{i}"));
                for e in errors {
                    d.problems.push(format!("{} `{name}`: {e}", kind.short()));
                }
                d.refused.insert(name);
            }
        }
    }
    d
}

/// Jittered exponential backoff: 250 ms doubling to 5 s, each wait a random 50–100 % of it.
struct Backoff {
    next: Duration,
}

impl Backoff {
    const BASE: Duration = Duration::from_millis(250);
    const MAX: Duration = Duration::from_secs(5);

    fn new() -> Self {
        Backoff { next: Self::BASE }
    }

    fn reset(&mut self) {
        self.next = Self::BASE;
    }

    fn wait(&mut self) -> Duration {
        let d = self.next.mul_f64(0.5 + rand::random::<f64>() * 0.5);
        self.next = (self.next * 2).min(Self::MAX);
        d
    }
}

struct Session {
    node: Node,
    /// The version accepted per type (sent back on reconnect and in every request).
    accepted: HashMap<XdsKind, String>,
    nonces: HashMap<XdsKind, String>,
    wanted: Wanted,
}

impl Session {
    fn request(&mut self, kind: XdsKind, error: Option<String>) -> DiscoveryRequest {
        let names = match kind {
            XdsKind::Endpoint => self.wanted.endpoints.iter().cloned().collect(),
            XdsKind::Route => self.wanted.routes.iter().cloned().collect(),
            _ => Vec::new(),
        };
        // Envoy sends the node on the first request of a stream only when asked to; sending it
        // every time is always accepted.
        let node = Some(self.node.clone());
        DiscoveryRequest {
            version_info: self.accepted.get(&kind).cloned().unwrap_or_default(),
            node,
            resource_names: names,
            type_url: kind.type_url(),
            response_nonce: self.nonces.get(&kind).cloned().unwrap_or_default(),
            error_detail: error.map(|message| RpcStatus {
                code: 3, // INVALID_ARGUMENT, as Envoy reports rejected configuration
                message,
                details: Vec::new(),
            }),
            ..Default::default()
        }
    }
}

/// Run the client until the proxy goes away: connect, stream, and reconnect on failure.
pub async fn run(config: AdsClientConfig, updates: mpsc::Sender<XdsUpdate>, metrics: Metrics) {
    let mut session = Session {
        node: config.node.clone(),
        accepted: HashMap::new(),
        nonces: HashMap::new(),
        wanted: config.initial.clone(),
    };
    let mut backoff = Backoff::new();
    loop {
        let result = stream_once(&config, &mut session, &updates, &metrics, &mut backoff).await;
        metrics.control_plane_connected.set(0);
        match result {
            Err(StreamError::ProxyGone) => return,
            Err(e) => {
                tracing::warn!(server = %config.server, "xDS stream failed: {e}; keeping the last configuration")
            }
            Ok(()) => {
                tracing::warn!(server = %config.server, "xDS stream closed by the server; keeping the last configuration")
            }
        }
        session.nonces.clear();
        tokio::time::sleep(backoff.wait()).await;
    }
}

async fn stream_once(
    config: &AdsClientConfig,
    session: &mut Session,
    updates: &mpsc::Sender<XdsUpdate>,
    metrics: &Metrics,
    backoff: &mut Backoff,
) -> Result<(), StreamError> {
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{}", config.server))?
        .connect_timeout(Duration::from_secs(1))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30));
    let channel = endpoint.connect().await?;
    let mut client =
        AggregatedDiscoveryServiceClient::new(channel).max_decoding_message_size(64 << 20);
    let (tx, rx) = mpsc::channel(32);
    let send = |req: DiscoveryRequest| {
        let tx = tx.clone();
        async move { tx.send(req).await.map_err(|_| StreamError::ProxyGone) }
    };
    // Wildcard subscriptions first; EDS and RDS follow what is already known (on reconnect).
    for kind in [XdsKind::Cluster, XdsKind::Listener] {
        send(session.request(kind, None)).await?;
    }
    if !session.wanted.endpoints.is_empty() {
        send(session.request(XdsKind::Endpoint, None)).await?;
    }
    if !session.wanted.routes.is_empty() {
        send(session.request(XdsKind::Route, None)).await?;
    }
    let mut inbound = client
        .stream_aggregated_resources(ReceiverStream::new(rx))
        .await?
        .into_inner();
    while let Some(resp) = inbound.message().await? {
        if metrics.control_plane_connected.get() == 0 {
            metrics.control_plane_connected.set(1);
            backoff.reset();
            tracing::info!(server = %config.server, "connected to the management server");
        }
        let Some(kind) = XdsKind::from_type_url(&resp.type_url) else {
            tracing::debug!(type_url = %resp.type_url, "ignoring a response of a type not subscribed");
            continue;
        };
        session.nonces.insert(kind, resp.nonce.clone());
        let decoded = tokio::task::spawn_blocking({
            let resp = resp.clone();
            move || decode(kind, &resp)
        })
        .await
        .unwrap_or_else(|e| Decoded {
            resources: BTreeMap::new(),
            refused: BTreeSet::new(),
            problems: vec![format!("decoding task failed: {e}")],
        });
        // CDS and LDS take the valid resources of a response and NACK the others (as Envoy);
        // EDS and RDS responses are taken whole or not at all.
        let partial = matches!(kind, XdsKind::Cluster | XdsKind::Listener);
        let outcome = if decoded.problems.is_empty() || partial {
            let (reply, answer) = oneshot::channel();
            updates
                .send(XdsUpdate {
                    kind,
                    version: resp.version_info.clone(),
                    resources: decoded.resources,
                    keep: decoded.refused,
                    reply,
                })
                .await
                .map_err(|_| StreamError::ProxyGone)?;
            let mut o = answer.await.map_err(|_| StreamError::ProxyGone)?;
            if !decoded.problems.is_empty() {
                let mut all = decoded.problems;
                all.extend(o.error.take());
                o.error = Some(all.join("; "));
            }
            o
        } else {
            Outcome {
                applied: None,
                error: Some(decoded.problems.join("; ")),
            }
        };
        if let Some(wanted) = outcome.applied {
            if wanted.endpoints != session.wanted.endpoints {
                session.wanted.endpoints = wanted.endpoints;
                send(session.request(XdsKind::Endpoint, None)).await?;
            }
            if wanted.routes != session.wanted.routes {
                session.wanted.routes = wanted.routes;
                send(session.request(XdsKind::Route, None)).await?;
            }
        }
        match outcome.error {
            None => {
                tracing::info!(ty = kind.short(), version = %resp.version_info, resources = resp.resources.len(), "xDS update accepted");
                session.accepted.insert(kind, resp.version_info.clone());
                send(session.request(kind, None)).await?;
            }
            Some(message) => {
                tracing::error!(ty = kind.short(), version = %resp.version_info, "xDS update rejected, keeping the last good configuration: {message}");
                send(session.request(kind, Some(message))).await?;
            }
        }
    }
    Ok(())
}
