//! `sluice control`: read the configuration directory, translate, serve ADS, and push every
//! change: the directory is polled, a burst of edits is debounced into one generation, and every
//! connected proxy gets what changed for it.
//!
//! The status endpoint (`--api-address`, HTTP) serves `GET /api/v1/proxy-status` (JSON) and
//! `GET /ready`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use sluice_proto::envoy::envoy::service::discovery::v3::aggregated_discovery_service_server::AggregatedDiscoveryServiceServer;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::ads_server::{AdsService, Generation};
use crate::config_store::ConfigStore;
use crate::proxy_status::{ProxyRegistry, ProxyView, StatusDocument};
use crate::translate::MeshConfig;

/// How often the configuration directory is checked for changes.
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
}

/// The control plane's shared state.
struct State {
    generations: watch::Sender<Arc<Generation>>,
    registry: Arc<ProxyRegistry>,
    config_errors: Mutex<Vec<String>>,
}

fn build(store: &ConfigStore) -> (MeshConfig, Vec<String>) {
    let (resources, mut warnings) = store.resources();
    let mesh = MeshConfig::new(resources);
    warnings.extend(mesh.warnings.iter().cloned());
    (mesh, warnings)
}

fn log_scan(report: &crate::config_store::ScanReport) {
    for e in &report.errors {
        tracing::error!("configuration rejected, the file's last good version keeps serving:\n{e}");
    }
}

/// Run the control plane until the process is stopped.
pub async fn run(options: ControlOptions) -> Result<(), ControlError> {
    if !options.config_dir.is_dir() {
        return Err(ControlError::ConfigDir(options.config_dir.clone()));
    }
    let pool = sluice_proto::descriptor_pool()?;
    let mut store = ConfigStore::new(&options.config_dir);
    let report = store.scan();
    log_scan(&report);
    let (mesh, warnings) = build(&store);
    for w in &warnings {
        tracing::warn!("{w}");
    }
    tracing::info!(
        resources = mesh.resources.len(),
        services = mesh.registry.services.len(),
        clusters = mesh.clusters.clusters.len(),
        "configuration loaded"
    );
    for o in store.others() {
        tracing::info!(kind = %o.kind, api_version = %o.api_version, name = %o.name, "skipping a kind this control plane does not translate");
    }
    let (tx, rx) = watch::channel(Arc::new(Generation::new(1, Arc::new(mesh))));
    let state = Arc::new(State {
        generations: tx,
        registry: Arc::new(ProxyRegistry::default()),
        config_errors: Mutex::new(store.errors()),
    });

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
        let text = serde_json::json!({"xds": xds_addr.to_string(), "api": api_addr.to_string()})
            .to_string();
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
    tokio::spawn(watch_dir(store, options.debounce, state.clone()));
    grpc.await?;
    Ok(())
}

/// Poll the directory; after a change, wait for `debounce` of quiet, then publish.
async fn watch_dir(mut store: ConfigStore, debounce: Duration, state: Arc<State>) {
    let mut version = 1;
    loop {
        tokio::time::sleep(POLL).await;
        let mut report = store.scan();
        log_scan(&report);
        if !report.changed {
            *state
                .config_errors
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = store.errors();
            continue;
        }
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
        let (mesh, warnings) = build(&store);
        for w in &warnings {
            tracing::warn!("{w}");
        }
        version += 1;
        tracing::info!(version, files = ?report.touched, "configuration changed; pushing");
        *state
            .config_errors
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = store.errors();
        state
            .generations
            .send_replace(Arc::new(Generation::new(version, Arc::new(mesh))));
    }
}

fn respond(req: &Request<hyper::body::Incoming>, state: &State) -> Response<Full<Bytes>> {
    let json = |status: StatusCode, body: String| {
        Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .unwrap_or_default()
    };
    match (req.method().as_str(), req.uri().path()) {
        ("GET", "/ready") => json(StatusCode::OK, "\"LIVE\"".into()),
        ("GET", "/api/v1/proxy-status") => {
            let generation = state.generations.borrow().clone();
            let doc = StatusDocument {
                version: generation.version,
                proxies: state
                    .registry
                    .list()
                    .into_iter()
                    .map(ProxyView::from)
                    .collect(),
                config_errors: state
                    .config_errors
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone(),
                warnings: generation.mesh.warnings.clone(),
            };
            json(
                StatusCode::OK,
                serde_json::to_string_pretty(&doc)
                    .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}")),
            )
        }
        _ => json(StatusCode::NOT_FOUND, "{\"error\": \"not found\"}".into()),
    }
}

async fn serve_api(listener: TcpListener, state: Arc<State>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let r = respond(&req, &state);
                async move { Ok::<_, Infallible>(r) }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, svc)
                .await;
        });
    }
}
