//! `sluice control`: read the configuration directory, run the release tasks, translate, serve
//! ADS, and push every change.
//!
//! One controller loop owns the directory and publishing: it polls the directory (a burst of
//! edits is debounced into one generation), reconciles the Rollouts (timed pauses end on time),
//! and wakes at once when an API operation changed a release. Release state is committed to the
//! state database before the configuration that carries it is published.
//!
//! The API (`--api-address`, HTTP/JSON): `GET /ready`, `GET /api/v1/proxy-status`,
//! `GET /api/v1/rollouts`, `GET /api/v1/rollouts/{namespace}/{name}`,
//! `POST /api/v1/rollouts/{namespace}/{name}/{action}` (promote, pause, resume, abort, retry,
//! undo, set-weight; JSON body `{"full": true}`, `{"revision": 2}`, `{"weight": 30}`), and
//! `POST /api/v1/apply` (a YAML body of Rollouts and Istio resources). With a token file, every
//! `POST` needs `Authorization: Bearer <token>`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, StatusCode};
use serde_json::{json, Value};
use sluice_config::argo::Rollout;
use sluice_config::istio::{Parsed, Resource};
use sluice_proto::envoy::envoy::service::discovery::v3::aggregated_discovery_service_server::AggregatedDiscoveryServiceServer;
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};

use crate::ads_server::{AdsService, Generation};
use crate::config_store::ConfigStore;
use crate::proxy_status::{ProxyRegistry, ProxyView, StatusDocument};
use crate::release_api;
use crate::rollout_engine::Operation;
use crate::rollout_manager::RolloutManager;
use crate::rollout_store::{RolloutStore, StoreError};
use crate::route_weights::Weights;
use crate::translate::MeshConfig;

/// How often the configuration directory is checked for changes (and timed pauses for their
/// deadline).
const POLL: Duration = Duration::from_millis(50);

/// Options of `sluice control`.
#[derive(Debug, Clone)]
pub struct ControlOptions {
    pub config_dir: PathBuf,
    pub xds_address: SocketAddr,
    pub api_address: SocketAddr,
    /// Quiet time after an edit before translating (one push per burst of edits).
    pub debounce: Duration,
    /// Write `{"xds": ADDR, "api": ADDR}` here once listening (for ports chosen by the system).
    pub address_file: Option<PathBuf>,
    /// Where release state is kept; in memory only when `None`.
    pub data_dir: Option<PathBuf>,
    /// A file holding the bearer token that mutating API calls must present.
    pub api_token_file: Option<PathBuf>,
}

/// Why the control plane could not start.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("config directory {0}: not a directory")]
    ConfigDir(PathBuf),
    #[error("cannot bind {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Descriptors(#[from] sluice_proto::DescriptorError),
    #[error("xDS server: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("cannot write {path}: {source}")]
    AddressFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("API token file {path}: {reason}")]
    Token { path: PathBuf, reason: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The control plane's shared state.
pub(crate) struct State {
    pub(crate) generations: watch::Sender<Arc<Generation>>,
    pub(crate) registry: Arc<ProxyRegistry>,
    pub(crate) config_errors: Mutex<Vec<String>>,
    pub(crate) manager: Mutex<RolloutManager>,
    /// Documents applied through the API, parsed.
    pub(crate) applied: Mutex<Vec<Parsed>>,
    /// Route weights set through the API, by `namespace/virtualservice/route`.
    pub(crate) route_weights: Mutex<BTreeMap<String, Weights>>,
    /// The Istio resources of the last build, before releases rewrote them (for validation).
    pub(crate) resources: Mutex<Vec<Resource>>,
    /// Wakes the controller after an API call changed something.
    pub(crate) wake: Notify,
    pub(crate) token: Option<String>,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A poisoned lock means a handler panicked mid-update; the data is plain values and the
    // next reconcile or scan rewrites it.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn log_scan(report: &crate::config_store::ScanReport) {
    for e in &report.errors {
        tracing::error!("configuration rejected, the file's last good version keeps serving:\n{e}");
    }
}

/// Parse the stored API-applied documents.
pub(crate) fn parse_applied(store: &RolloutStore) -> Result<Vec<Parsed>, StoreError> {
    let mut out = Vec::new();
    for (key, text) in store.applied()? {
        match sluice_config::istio::parse_text(&format!("api:{key}"), &text) {
            Ok(docs) => out.extend(docs),
            Err(e) => tracing::error!("stored document {key} no longer validates: {e}"),
        }
    }
    Ok(out)
}

/// Istio resources and Rollouts from the directory and the API (the directory wins a name
/// clash).
/// Analysis templates from the directory and the API.
fn templates(
    store: &ConfigStore,
    applied: &[Parsed],
) -> Vec<sluice_config::argo_analysis::AnalysisTemplate> {
    let mut out = store.templates();
    for p in applied {
        if let Parsed::AnalysisTemplate(t) = p {
            out.push((**t).clone());
        }
    }
    out
}

fn inputs(
    store: &ConfigStore,
    applied: &[Parsed],
) -> (Vec<Resource>, Vec<(Rollout, String)>, Vec<String>) {
    let (mut resources, warnings) = store.resources();
    let mut rollouts = store.rollouts();
    for p in applied {
        match p {
            Parsed::Istio(r) => {
                let clash = resources.iter().any(|x| {
                    x.spec.kind() == r.spec.kind()
                        && x.metadata.namespace() == r.metadata.namespace()
                        && x.metadata.name == r.metadata.name
                });
                if !clash {
                    resources.push((**r).clone());
                }
            }
            Parsed::Rollout(r) => {
                let clash = rollouts.iter().any(|(x, _)| {
                    x.metadata.namespace() == r.metadata.namespace()
                        && x.metadata.name == r.metadata.name
                });
                if !clash {
                    rollouts.push(((**r).clone(), "api".into()));
                }
            }
            Parsed::Other { .. } | Parsed::AnalysisTemplate(_) => {}
        }
    }
    resources.sort_by(|a, b| {
        (a.spec.kind(), a.metadata.namespace(), &a.metadata.name).cmp(&(
            b.spec.kind(),
            b.metadata.namespace(),
            &b.metadata.name,
        ))
    });
    (resources, rollouts, warnings)
}

/// Translate the mesh with the releases' traffic applied.
fn build(store: &ConfigStore, state: &State) -> Result<(MeshConfig, Vec<String>), StoreError> {
    let applied = lock(&state.applied);
    let (mut resources, rollouts, mut warnings) = inputs(store, &applied);
    let analysis_templates = templates(store, &applied);
    drop(applied);
    *lock(&state.resources) = resources.clone();
    crate::route_weights::apply(&mut resources, &lock(&state.route_weights));
    let mut manager = lock(&state.manager);
    manager.set_templates(analysis_templates);
    manager.set_rollouts(rollouts);
    manager.reconcile()?;
    crate::rollout_overlay::apply(&mut resources, &manager.overlay_input(), &mut warnings);
    drop(manager);
    let mesh = MeshConfig::new(resources);
    warnings.extend(mesh.warnings.iter().cloned());
    Ok((mesh, warnings))
}

/// Run the control plane until the process is stopped.
pub async fn run(options: ControlOptions) -> Result<(), ControlError> {
    if !options.config_dir.is_dir() {
        return Err(ControlError::ConfigDir(options.config_dir.clone()));
    }
    let token = match &options.api_token_file {
        Some(path) => {
            let t = std::fs::read_to_string(path).map_err(|e| ControlError::Token {
                path: path.clone(),
                reason: e.to_string(),
            })?;
            let t = t.trim().to_string();
            if t.is_empty() {
                return Err(ControlError::Token {
                    path: path.clone(),
                    reason: "empty".into(),
                });
            }
            Some(t)
        }
        None => None,
    };
    let rollout_store = match &options.data_dir {
        Some(dir) => RolloutStore::open(dir)?,
        None => {
            tracing::warn!("no --data-dir: release state is kept in memory and lost on restart");
            RolloutStore::in_memory()
        }
    };
    let applied = parse_applied(&rollout_store)?;
    let mut route_weights = BTreeMap::new();
    for (k, v) in rollout_store.route_weights()? {
        match serde_json::from_str::<Weights>(&v) {
            Ok(w) => {
                route_weights.insert(k, w);
            }
            Err(e) => tracing::error!("stored weights of {k} are unreadable: {e}"),
        }
    }
    let manager = RolloutManager::new(rollout_store)?;
    let pool = sluice_proto::descriptor_pool()?;
    let mut store = ConfigStore::new(&options.config_dir);
    log_scan(&store.scan());
    for o in store.others() {
        tracing::info!(kind = %o.kind, api_version = %o.api_version, name = %o.name, "skipping a kind this control plane does not translate");
    }
    let (tx, rx) = watch::channel(Arc::new(Generation::new(
        0,
        Arc::new(MeshConfig::default()),
    )));
    let state = Arc::new(State {
        generations: tx,
        registry: Arc::new(ProxyRegistry::default()),
        config_errors: Mutex::new(store.errors()),
        manager: Mutex::new(manager),
        applied: Mutex::new(applied),
        route_weights: Mutex::new(route_weights),
        resources: Mutex::new(Vec::new()),
        wake: Notify::new(),
        token,
    });
    // The first generation: state restored from the database is pushed to every proxy that
    // connects.
    publish(&store, &state, 1, &[])?;

    let bind = |addr: SocketAddr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|source| ControlError::Bind { addr, source })
    };
    let xds = bind(options.xds_address).await?;
    let xds_addr = xds.local_addr().unwrap_or(options.xds_address);
    let api = bind(options.api_address).await?;
    let api_addr = api.local_addr().unwrap_or(options.api_address);
    tracing::info!(xds = %xds_addr, api = %api_addr, dir = %options.config_dir.display(), "control plane listening");
    if let Some(path) = &options.address_file {
        let text = json!({"xds": xds_addr.to_string(), "api": api_addr.to_string()}).to_string();
        std::fs::write(path, text).map_err(|source| ControlError::AddressFile {
            path: path.clone(),
            source,
        })?;
    }

    let ads = AdsService::new(rx, state.registry.clone(), pool);
    let grpc = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .add_service(AggregatedDiscoveryServiceServer::new(ads).max_decoding_message_size(64 << 20))
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(xds));
    tokio::spawn(serve_api(api, state.clone()));
    tokio::spawn(controller(store, options.debounce, state.clone()));
    grpc.await?;
    Ok(())
}

/// Translate and publish generation `version`.
fn publish(
    store: &ConfigStore,
    state: &State,
    version: u64,
    touched: &[PathBuf],
) -> Result<(), StoreError> {
    let (mesh, warnings) = build(store, state)?;
    for w in &warnings {
        tracing::warn!("{w}");
    }
    tracing::info!(
        version,
        services = mesh.registry.services.len(),
        clusters = mesh.clusters.clusters.len(),
        files = ?touched,
        "publishing configuration"
    );
    *lock(&state.config_errors) = store.errors();
    state
        .generations
        .send_replace(Arc::new(Generation::new(version, Arc::new(mesh))));
    lock(&state.manager).published(version);
    Ok(())
}

/// Poll the directory and the release deadlines; publish what changed.
async fn controller(mut store: ConfigStore, debounce: Duration, state: Arc<State>) {
    let mut version = 1;
    let (measured_tx, mut measured) = tokio::sync::mpsc::unbounded_channel();
    loop {
        // Measurements due: taken concurrently, their results come back on `measured`.
        for due in lock(&state.manager).due() {
            let tx = measured_tx.clone();
            tokio::spawn(async move {
                let value = crate::analysis_provider::measure(&due.provider).await;
                let _ = tx.send((due, value));
            });
        }
        let woken = tokio::select! {
            _ = tokio::time::sleep(POLL) => false,
            _ = state.wake.notified() => true,
            Some((due, value)) = measured.recv() => {
                tracing::info!(rollout = %due.rollout, run = %due.run, metric = due.metric, value = ?value, "measurement");
                if let Err(e) = lock(&state.manager).record(&due, &value) {
                    tracing::error!("cannot store a measurement: {e}");
                }
                true
            }
        };
        let mut report = store.scan();
        log_scan(&report);
        if report.changed {
            // Debounce: keep reading while edits keep coming (bounded, so a file rewritten
            // continuously still gets pushed).
            for _ in 0..100 {
                tokio::time::sleep(debounce).await;
                let more = store.scan();
                log_scan(&more);
                if !more.changed && more.touched.is_empty() {
                    break;
                }
                report.touched.extend(more.touched);
            }
        }
        let due = match lock(&state.manager).reconcile() {
            Ok(changed) => changed,
            Err(e) => {
                tracing::error!("cannot store release state, not pushing: {e}");
                continue;
            }
        };
        if !(report.changed || woken || due) {
            *lock(&state.config_errors) = store.errors();
            continue;
        }
        version += 1;
        if let Err(e) = publish(&store, &state, version, &report.touched) {
            tracing::error!("cannot store release state, not pushing: {e}");
        }
    }
}

fn json_response(status: StatusCode, body: Value) -> Response<Full<Bytes>> {
    let text = serde_json::to_string_pretty(&body).unwrap_or_else(|_| "{}".into());
    let mut r = Response::new(Full::new(Bytes::from(text)));
    *r.status_mut() = status;
    if let Ok(v) = http::HeaderValue::from_str("application/json") {
        r.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    r
}

fn error(status: StatusCode, message: impl Into<String>) -> Response<Full<Bytes>> {
    json_response(status, json!({"error": message.into()}))
}

fn authorized(req: &Request<hyper::body::Incoming>, state: &State) -> bool {
    let Some(token) = &state.token else {
        return true;
    };
    let authorization = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    release_api::bearer_matches(authorization, token)
}

fn operation(action: &str, body: &Value) -> Result<Operation, String> {
    Ok(match action {
        "promote" => Operation::Promote {
            full: body.get("full").and_then(Value::as_bool).unwrap_or(false),
        },
        "pause" => Operation::Pause,
        "resume" => Operation::Resume,
        "abort" => Operation::Abort,
        "retry" => Operation::Retry,
        "undo" => Operation::Undo {
            to_revision: body
                .get("revision")
                .and_then(Value::as_u64)
                .map(|n| n as u32),
        },
        "set-weight" => Operation::SetWeight(
            body.get("weight")
                .and_then(Value::as_u64)
                .ok_or("set-weight needs {\"weight\": N}")? as u32,
        ),
        other => {
            return Err(format!(
                "unknown action `{other}` (promote, pause, resume, abort, retry, undo, set-weight)"
            ))
        }
    })
}

async fn respond(req: Request<hyper::body::Incoming>, state: Arc<State>) -> Response<Full<Bytes>> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    if method == http::Method::POST && !authorized(&req, &state) {
        return error(
            StatusCode::UNAUTHORIZED,
            "unauthenticated: Authorization: Bearer <token> required",
        );
    }
    let by = req
        .headers()
        .get("x-sluice-user")
        .and_then(|v| v.to_str().ok())
        .map(|u| format!("api ({u})"))
        .unwrap_or_else(|| "api".into());
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let proxies = || state.registry.list();
    match (method.as_str(), segments.as_slice()) {
        ("GET", ["ready"]) => json_response(StatusCode::OK, json!("LIVE")),
        ("GET", ["api", "v1", "proxy-status"]) => {
            let generation = state.generations.borrow().clone();
            let doc = StatusDocument {
                version: generation.version,
                proxies: proxies().into_iter().map(ProxyView::from).collect(),
                config_errors: lock(&state.config_errors).clone(),
                warnings: generation.mesh.warnings.clone(),
            };
            json_response(
                StatusCode::OK,
                serde_json::to_value(&doc).unwrap_or(Value::Null),
            )
        }
        ("GET", ["api", "v1", "rollouts"]) => {
            json_response(StatusCode::OK, release_api::list(&state))
        }
        ("GET", ["api", "v1", "rollouts", ns, name]) => reply(release_api::get(&state, ns, name)),
        ("POST", ["api", "v1", "rollouts"]) => match serde_json::from_slice(&body) {
            Ok(req) => reply(release_api::create(&state, &req, &by)),
            Err(e) => error(StatusCode::BAD_REQUEST, format!("body: {e}")),
        },
        ("POST", ["api", "v1", "rollouts", ns, name, action]) => {
            let args: Value = if body.is_empty() {
                Value::Null
            } else {
                match serde_json::from_slice(&body) {
                    Ok(v) => v,
                    Err(e) => return error(StatusCode::BAD_REQUEST, format!("body: {e}")),
                }
            };
            match operation(action, &args) {
                Ok(op) => reply(release_api::operate(&state, ns, name, &op, &by)),
                Err(e) => error(StatusCode::BAD_REQUEST, e),
            }
        }
        ("POST", ["api", "v1", "virtualservices", ns, vs, "routes", route, "weights"]) => {
            let weights = serde_json::from_slice::<Value>(&body)
                .ok()
                .and_then(|v| serde_json::from_value::<Weights>(v.get("weights")?.clone()).ok());
            match weights {
                Some(w) => reply(release_api::set_route_weights(
                    &state, ns, vs, route, w, &by,
                )),
                None => error(
                    StatusCode::BAD_REQUEST,
                    "body: expected {\"weights\": {\"SUBSET\": PERCENT, ...}}",
                ),
            }
        }
        ("POST", ["api", "v1", "apply"]) => reply(release_api::apply(&state, &body)),
        _ => error(StatusCode::NOT_FOUND, "not found"),
    }
}

fn reply(r: Result<Value, release_api::ApiError>) -> Response<Full<Bytes>> {
    match r {
        Ok(v) => json_response(StatusCode::OK, v),
        Err(e) => error(
            StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            e.message,
        ),
    }
}

async fn serve_api(listener: TcpListener, state: Arc<State>) {
    use tonic::codegen::Service;
    let grpc = sluice_proto::control::v1::releases_server::ReleasesServer::new(
        crate::grpc_api::ReleaseService {
            state: state.clone(),
        },
    );
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let (state, grpc) = (state.clone(), grpc.clone());
        tokio::spawn(async move {
            // One address, two protocols: gRPC (HTTP/2, `content-type: application/grpc`) and
            // the HTTP/JSON API (HTTP/1.1 or HTTP/2).
            let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let (state, mut grpc) = (state.clone(), grpc.clone());
                async move {
                    let is_grpc = req
                        .headers()
                        .get(http::header::CONTENT_TYPE)
                        .and_then(|v| v.to_str().ok())
                        .is_some_and(|v| v.starts_with("application/grpc"));
                    if is_grpc {
                        grpc.call(req).await
                    } else {
                        Ok(respond(req, state).await.map(tonic::body::Body::new))
                    }
                }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            let _ =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(io, svc)
                    .await;
        });
    }
}
