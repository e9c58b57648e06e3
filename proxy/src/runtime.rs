//! Running the proxy: load and compile the bootstrap, bind listeners and the admin server, and
//! apply reloads (SIGHUP or `--watch-config`) atomically, keeping the last good configuration when
//! a new one fails.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use sluice_config::envoy::LoadedBootstrap;
use tokio::sync::mpsc;

use crate::admin::{self, AdminState};
use crate::ads_client::{self, AdsClientConfig, Outcome, Wanted, XdsUpdate};
use crate::cluster::Discovery;
use crate::compile::{self, CompileOptions};
use crate::metrics::Metrics;
use crate::path_source;
use crate::server::{self, ListenerContext};
use crate::snapshot::Snapshot;
use crate::xds_state::{TypeResources, XdsKind, XdsState};

/// Options of `sluice proxy`.
#[derive(Debug, Clone)]
pub struct ProxyOptions {
    pub config_path: PathBuf,
    pub compile: CompileOptions,
    pub watch_config: bool,
    /// Write the admin server's bound address here (Envoy's `--admin-address-path`).
    pub admin_address_path: Option<PathBuf>,
}

/// Why the proxy could not start or a configuration could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Config(#[from] sluice_config::ConfigError),
    #[error("cannot bind {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("configuration loading task failed: {0}")]
    Join(String),
    #[error("cannot install signal handlers: {0}")]
    Signals(#[source] std::io::Error),
    #[error("{origin}: dynamic_resources: {reason}")]
    Xds { origin: String, reason: String },
}

/// Compile a bootstrap joined with the resources accepted over xDS, then resolve the names of
/// new DNS clusters. Errors in the file carry its lines; errors in xDS resources name the
/// resource.
pub fn compile_with_xds(
    loaded: &LoadedBootstrap,
    xds: &XdsState,
    metrics: &Metrics,
    options: &CompileOptions,
    previous: Option<&Snapshot>,
    version: u64,
) -> Result<Snapshot, RunError> {
    let merged = xds.merged(&loaded.canonical, previous.map(|p| &p.config));
    let mut snapshot = compile::bootstrap(&merged, metrics, options, previous, version)
        .map_err(|errors| located_merged(&loaded.document, &loaded.canonical, &merged, errors))?;
    if !xds.types.is_empty() {
        snapshot.dynamic = xds.dump();
    }
    for c in snapshot.clusters.values() {
        let reused = previous.is_some_and(|p| {
            p.clusters
                .get(&c.name)
                .is_some_and(|old| Arc::ptr_eq(old, c))
        });
        if matches!(c.discovery, Discovery::Dns { .. }) && !reused {
            c.refresh_dns();
        }
    }
    Ok(snapshot)
}

/// Errors of a merged bootstrap: those in the file's own resources get its lines; those in
/// resources received over xDS are named `listener NAME` / `cluster NAME`.
fn located_merged(
    document: &sluice_config::source::Document,
    base: &serde_json::Value,
    merged: &serde_json::Value,
    mut errors: Vec<sluice_config::FieldError>,
) -> sluice_config::ConfigError {
    for e in &mut errors {
        for (key, what) in [("listeners", "listener"), ("clusters", "cluster")] {
            let prefix = format!("static_resources.{key}[");
            let Some(rest) = e.path.strip_prefix(&prefix) else {
                continue;
            };
            let Some((index, tail)) = rest.split_once(']') else {
                continue;
            };
            let Ok(i) = index.parse::<usize>() else {
                continue;
            };
            let count = |v: &serde_json::Value| {
                v.get("static_resources")
                    .and_then(|s| s.get(key))
                    .and_then(serde_json::Value::as_array)
                    .map(Vec::len)
                    .unwrap_or(0)
            };
            if i < count(base) {
                continue;
            }
            let name = merged["static_resources"][key][i]["name"]
                .as_str()
                .unwrap_or("")
                .to_string();
            e.path = format!("{what} `{name}`{tail}");
        }
    }
    located(document, errors)
}

/// Load, validate and compile the bootstrap file (no name resolution).
fn compile_file(
    options: &ProxyOptions,
    metrics: &Metrics,
    previous: Option<&Snapshot>,
    version: u64,
) -> Result<Snapshot, RunError> {
    let loaded = sluice_config::envoy::load_bootstrap_file(&options.config_path)?;
    compile_bootstrap(
        &loaded.document,
        &loaded.canonical,
        metrics,
        &options.compile,
        previous,
        version,
    )
}

/// Compile a validated bootstrap; errors carry the `file:line` of their field, like validation's.
fn compile_bootstrap(
    document: &sluice_config::source::Document,
    canonical: &serde_json::Value,
    metrics: &Metrics,
    options: &CompileOptions,
    previous: Option<&Snapshot>,
    version: u64,
) -> Result<Snapshot, RunError> {
    compile::bootstrap(canonical, metrics, options, previous, version)
        .map_err(|errors| located(document, errors).into())
}

/// Field errors of `document` with their lines, as a configuration error.
fn located(
    document: &sluice_config::source::Document,
    mut errors: Vec<sluice_config::FieldError>,
) -> sluice_config::ConfigError {
    document.locate(&mut errors);
    sluice_config::ConfigError::Invalid {
        origin: document.origin.clone(),
        errors,
    }
}

/// One line describing a compiled bootstrap.
fn summary(origin: &str, s: &Snapshot) -> String {
    let routes: usize = s.listeners.iter().map(|l| l.route_count()).sum();
    format!(
        "configuration '{origin}' OK: {} listener(s), {routes} route(s), {} cluster(s)",
        s.listeners.len(),
        s.clusters.len()
    )
}

/// `--mode validate`: check the file; `Ok` holds a one-line summary.
pub fn validate(options: &ProxyOptions) -> Result<String, RunError> {
    let metrics = Metrics::new()?;
    let s = compile_file(options, &metrics, None, 0)?;
    Ok(summary(&options.config_path.display().to_string(), &s))
}

/// Validate any Envoy document: bootstraps and route configurations are also compiled, so value
/// errors (bad regexes, unknown clusters, duplicate domains) are found too. `Ok` names the kind.
pub fn validate_document(path: &std::path::Path) -> Result<String, String> {
    use sluice_config::envoy::{self, DocumentKind};
    let text = envoy::read_file(path).map_err(|e| e.to_string())?;
    let origin = path.display().to_string();
    // Kubernetes-style resources (Istio, Argo): the control plane's reader and checks.
    let docs = sluice_config::source::parse_documents(&origin, &text).map_err(|e| e.to_string())?;
    if docs
        .first()
        .is_some_and(|d| d.value.get("apiVersion").is_some())
    {
        let parsed = sluice_config::istio::parse_text(&origin, &text).map_err(|e| e.to_string())?;
        let kinds: Vec<String> = parsed
            .iter()
            .map(|p| match p {
                sluice_config::istio::Parsed::Istio(r) => r.spec.kind().to_string(),
                sluice_config::istio::Parsed::Rollout(_) => "Rollout".to_string(),
                sluice_config::istio::Parsed::AnalysisTemplate(t) => if t.cluster {
                    "ClusterAnalysisTemplate"
                } else {
                    "AnalysisTemplate"
                }
                .to_string(),
                sluice_config::istio::Parsed::Other { kind, .. } => {
                    format!("{kind} (not read here)")
                }
            })
            .collect();
        return Ok(format!("{origin}: OK ({})", kinds.join(", ")));
    }
    let v = envoy::validate_text(&origin, &text).map_err(|e| e.to_string())?;
    match v.kind {
        DocumentKind::Bootstrap => {
            let metrics = Metrics::new().map_err(|e| e.to_string())?;
            let canonical = v
                .items
                .first()
                .map(|(_, c)| c)
                .unwrap_or(&serde_json::Value::Null);
            let s = compile_bootstrap(
                &v.document,
                canonical,
                &metrics,
                &CompileOptions::default(),
                None,
                0,
            )
            .map_err(|e| e.to_string())?;
            Ok(summary(&origin, &s))
        }
        DocumentKind::RouteConfiguration | DocumentKind::RouteConfigurationList => {
            let clusters = HashMap::new();
            let resolver = compile::ClusterResolver {
                clusters: &clusters,
                validate: false,
            };
            let mut routes = 0;
            for (at, canonical) in &v.items {
                let table = compile::route_table(canonical, at, &resolver)
                    .map_err(|errors| located(&v.document, errors).to_string())?;
                routes += table.route_count();
            }
            Ok(format!(
                "{origin}: OK ({} route configuration(s), {routes} route(s))",
                v.items.len()
            ))
        }
        DocumentKind::Resources => Ok(format!("{origin}: OK ({} xDS resource(s))", v.items.len())),
    }
}

struct RunningListener {
    address: SocketAddr,
    ctx: Arc<ListenerContext>,
    task: JoinHandle<()>,
}

/// The running proxy.
pub struct Proxy {
    options: ProxyOptions,
    metrics: Metrics,
    snapshot: Arc<ArcSwap<Snapshot>>,
    listeners: HashMap<String, RunningListener>,
    bound: Arc<ArcSwap<Vec<(String, SocketAddr)>>>,
    version: AtomicU64,
    signals: Signals,
    /// The bootstrap as last read from the file.
    base: Arc<LoadedBootstrap>,
    /// Resources accepted over xDS.
    xds: XdsState,
    /// Updates from the ADS client, when the bootstrap has `dynamic_resources`.
    xds_updates: Option<mpsc::Receiver<XdsUpdate>>,
    /// When to give configuration-loading memory back after a burst of xDS updates.
    release_at: Option<tokio::time::Instant>,
}

/// When a compile gives its loading memory back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Release {
    Now,
    /// After [`RELEASE_AFTER`] without another update.
    Later,
}

/// Quiet time after an xDS update before the descriptor cache is dropped and the heap trimmed.
/// Decoding the descriptors is most of the cost of applying an update; a burst (CDS, EDS, LDS,
/// RDS, or a rollout's steps) pays it once.
const RELEASE_AFTER: Duration = Duration::from_secs(5);

/// Wait for the release deadline, or forever when none is set.
async fn release_due(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The management server of `dynamic_resources.ads_config`: the first endpoint of the static
/// cluster its `envoy_grpc` names.
fn ads_server(loaded: &LoadedBootstrap) -> Result<Option<SocketAddr>, RunError> {
    let c = &loaded.canonical;
    let Some(dr) = c.get("dynamic_resources") else {
        return Ok(None);
    };
    let err = |reason: &str| RunError::Xds {
        origin: loaded.document.origin.clone(),
        reason: reason.to_string(),
    };
    let Some(ads) = dr.get("ads_config") else {
        // Without a management server, LDS and CDS must come from files.
        let over_ads = ["lds_config", "cds_config"]
            .iter()
            .any(|k| dr.get(*k).is_some_and(|c| c.get("ads").is_some()));
        if over_ads {
            return Err(err(
                "ads_config is required (lds_config and cds_config come over ADS, or from files with path_config_source)",
            ));
        }
        return Ok(None);
    };
    let cluster_name = ads["grpc_services"][0]["envoy_grpc"]["cluster_name"]
        .as_str()
        .ok_or_else(|| err("ads_config.grpc_services[0].envoy_grpc.cluster_name is required"))?;
    let clusters = c["static_resources"]["clusters"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let cluster = clusters
        .iter()
        .find(|x| x["name"].as_str() == Some(cluster_name))
        .ok_or_else(|| {
            err(&format!(
                "the xDS cluster `{cluster_name}` must be a static cluster"
            ))
        })?;
    let sa = &cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
        ["socket_address"];
    let host = sa["address"].as_str().unwrap_or("");
    let port = sa["port_value"].as_u64().unwrap_or(0) as u16;
    use std::net::ToSocketAddrs;
    (host, port)
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .map(Some)
        .ok_or_else(|| {
            err(&format!(
                "cannot resolve the xDS server `{host}:{port}` of cluster `{cluster_name}`"
            ))
        })
}

/// The node sent to the management server: the bootstrap's, with the command line's overrides.
fn node_json(loaded: &LoadedBootstrap, options: &CompileOptions) -> serde_json::Value {
    let mut node = loaded
        .canonical
        .get("node")
        .cloned()
        .unwrap_or_else(|| serde_json::json!({}));
    if let Some(m) = node.as_object_mut() {
        if let Some(id) = &options.service_node {
            m.insert("id".into(), id.clone().into());
        }
        if let Some(c) = &options.service_cluster {
            m.insert("cluster".into(), c.clone().into());
        }
        m.entry("user_agent_name").or_insert("sluice".into());
    }
    node
}

/// Wait for the next xDS update, or forever when there is no ADS client.
async fn next_update(rx: &mut Option<mpsc::Receiver<XdsUpdate>>) -> Option<XdsUpdate> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Signal handlers, installed before anything is served: a SIGHUP that arrives while the proxy
/// starts must reload, not kill it with the default action.
struct Signals {
    hangup: tokio::signal::unix::Signal,
    /// SIGUSR1: reopen the access log files, as Envoy does.
    user1: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> Result<Self, RunError> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            hangup: signal(SignalKind::hangup()).map_err(RunError::Signals)?,
            user1: signal(SignalKind::user_defined1()).map_err(RunError::Signals)?,
            terminate: signal(SignalKind::terminate()).map_err(RunError::Signals)?,
            interrupt: signal(SignalKind::interrupt()).map_err(RunError::Signals)?,
        })
    }
}

fn bind(addr: SocketAddr) -> Result<TcpListener, RunError> {
    let map = |source| RunError::Bind { addr, source };
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }
    .map_err(map)?;
    socket.set_reuseaddr(true).map_err(map)?;
    socket.bind(addr).map_err(map)?;
    socket.listen(1024).map_err(map)
}

impl Proxy {
    /// Load the configuration and start serving.
    pub async fn start(options: ProxyOptions) -> Result<Self, RunError> {
        let signals = Signals::install()?;
        let metrics = Metrics::new()?;
        let loaded = sluice_config::envoy::load_bootstrap_file(&options.config_path);
        let prepared = loaded.map_err(RunError::from).and_then(|loaded| {
            let snap = compile_with_xds(
                &loaded,
                &XdsState::default(),
                &metrics,
                &options.compile,
                None,
                1,
            )?;
            let ads = match ads_server(&loaded)? {
                Some(server) => {
                    let node = ads_client::node_from_json(&node_json(&loaded, &options.compile))
                        .map_err(|reason| RunError::Xds {
                            origin: loaded.document.origin.clone(),
                            reason: format!("node: {reason}"),
                        })?;
                    let initial = XdsState::default();
                    Some(AdsClientConfig {
                        server,
                        node,
                        initial: Wanted {
                            endpoints: initial.wanted(XdsKind::Endpoint, &loaded.canonical),
                            routes: initial.wanted(XdsKind::Route, &loaded.canonical),
                        },
                    })
                }
                None => None,
            };
            Ok((loaded, snap, ads))
        });
        crate::memory::release_after_load();
        let (loaded, snap, ads) = prepared?;
        start_health_checks(&snap, None).await;
        let snapshot = Arc::new(ArcSwap::from_pointee(snap));
        let files = path_source::sources(&loaded.canonical);
        let xds_updates = (ads.is_some() || !files.is_empty()).then(|| {
            let (tx, rx) = mpsc::channel(4);
            if let Some(config) = ads {
                tracing::info!(server = %config.server, "ADS: connecting to the management server");
                tokio::spawn(ads_client::run(config, tx.clone(), metrics.clone()));
            }
            if !files.is_empty() {
                tokio::spawn(path_source::run(files, tx));
            }
            rx
        });
        let mut proxy = Proxy {
            options,
            metrics: metrics.clone(),
            snapshot: snapshot.clone(),
            listeners: HashMap::new(),
            bound: Arc::new(ArcSwap::from_pointee(Vec::new())),
            version: AtomicU64::new(1),
            signals,
            base: Arc::new(loaded),
            xds: XdsState::default(),
            xds_updates,
            release_at: None,
        };
        proxy.sync_listeners()?;
        let current = snapshot.load();
        if let Some(addr) = current.admin {
            let l = bind(addr)?;
            let bound = l.local_addr().unwrap_or(addr);
            if let Some(path) = &proxy.options.admin_address_path {
                if let Err(e) = std::fs::write(path, bound.to_string()) {
                    tracing::warn!(path = %path.display(), error = %e, "cannot write admin address");
                }
            }
            tracing::info!(address = %bound, "admin listening");
            tokio::spawn(admin::serve(
                l,
                AdminState {
                    snapshot: snapshot.clone(),
                    metrics,
                    started: std::time::SystemTime::now(),
                    listeners: proxy.bound.clone(),
                },
            ));
        }
        tokio::spawn(dns_refresher(snapshot.clone()));
        Ok(proxy)
    }

    fn sync_listeners(&mut self) -> Result<(), RunError> {
        let snap = self.snapshot.load_full();
        let mut keep = std::collections::HashSet::new();
        for l in &snap.listeners {
            keep.insert(l.name.clone());
            match self.listeners.get(&l.name) {
                Some(running) if running.address == l.address => {
                    running.ctx.listener.store(l.clone());
                }
                _ => {
                    if let Some(old) = self.listeners.remove(&l.name) {
                        old.task.abort();
                    }
                    let tcp = bind(l.address)?;
                    let local = tcp.local_addr().unwrap_or(l.address);
                    let ctx = Arc::new(ListenerContext {
                        listener: ArcSwap::new(l.clone()),
                        snapshot: self.snapshot.clone(),
                        local,
                    });
                    let task = tokio::spawn(server::serve(tcp, ctx.clone()));
                    tracing::info!(listener = %l.name, address = %local, "listening");
                    self.listeners.insert(
                        l.name.clone(),
                        RunningListener {
                            address: l.address,
                            ctx,
                            task,
                        },
                    );
                }
            }
        }
        let gone: Vec<String> = self
            .listeners
            .keys()
            .filter(|n| !keep.contains(*n))
            .cloned()
            .collect();
        for name in gone {
            if let Some(l) = self.listeners.remove(&name) {
                l.task.abort();
            }
        }
        let mut bound: Vec<(String, SocketAddr)> = self
            .listeners
            .iter()
            .map(|(n, l)| (n.clone(), l.ctx.local))
            .collect();
        bound.sort();
        self.bound.store(Arc::new(bound));
        Ok(())
    }

    /// Re-read the configuration; on success swap it in, on failure keep the current one.
    pub async fn reload(&mut self) -> Result<u64, RunError> {
        let path = self.options.config_path.clone();
        let read =
            tokio::task::spawn_blocking(move || sluice_config::envoy::load_bootstrap_file(&path))
                .await
                .unwrap_or_else(|e| {
                    Err(sluice_config::ConfigError::Schema {
                        origin: "reload".into(),
                        message: e.to_string(),
                    })
                });
        match read {
            Ok(loaded) => {
                let loaded = Arc::new(loaded);
                let xds = self.xds.clone();
                let v = self.apply(loaded.clone(), xds, Release::Now).await;
                if v.is_ok() {
                    self.base = loaded;
                }
                v.map_err(|(e, _)| e)
            }
            Err(e) => {
                self.metrics.config_reload_failed.inc();
                Err(e.into())
            }
        }
    }

    /// Compile `base` joined with `xds` off the serving threads and swap it in. On failure the
    /// running configuration is untouched and `xds` is handed back.
    async fn apply(
        &mut self,
        base: Arc<LoadedBootstrap>,
        xds: XdsState,
        release: Release,
    ) -> Result<u64, (RunError, XdsState)> {
        let version = self.version.load(Ordering::Relaxed) + 1;
        let current = self.snapshot.load_full();
        let previous = current.clone();
        // Compiling takes milliseconds to tens of milliseconds (reflection, DNS): it runs on a
        // blocking thread so that the workers keep serving requests meanwhile.
        let (metrics, copts) = (self.metrics.clone(), self.options.compile.clone());
        let (compiled, xds) = tokio::task::spawn_blocking(move || {
            let compiled = compile_with_xds(&base, &xds, &metrics, &copts, Some(&current), version);
            drop(current);
            if release == Release::Now {
                crate::memory::release_after_load();
            }
            (compiled, xds)
        })
        .await
        .unwrap_or_else(|e| (Err(RunError::Join(e.to_string())), XdsState::default()));
        match compiled {
            Ok(next) => {
                start_health_checks(&next, Some(&previous)).await;
                drop(previous);
                self.snapshot.store(Arc::new(next));
                self.version.store(version, Ordering::Relaxed);
                if let Err(e) = self.sync_listeners() {
                    self.metrics.config_reload_failed.inc();
                    return Err((e, xds));
                }
                self.xds = xds;
                self.metrics.config_reload_total.inc();
                Ok(version)
            }
            Err(e) => {
                self.metrics.config_reload_failed.inc();
                Err((e, xds))
            }
        }
    }

    /// Apply one xDS response and answer the ADS client (the new subscriptions, and the reason
    /// for a NACK). For CDS and LDS, resources that fail to compile are left out — their
    /// previous version keeps serving — and the rest is applied, as Envoy does.
    async fn apply_xds(&mut self, update: XdsUpdate) {
        // xDS updates come in bursts (CDS, EDS, LDS, RDS): keep the decoded descriptors until
        // the burst is over, then give the memory back.
        self.release_at = Some(tokio::time::Instant::now() + RELEASE_AFTER);
        let kind = update.kind;
        let previous = self.xds.of(kind).cloned().unwrap_or_default();
        let mut resources = update.resources;
        for name in &update.keep {
            if let Some(v) = previous.resources.get(name) {
                resources.insert(name.clone(), v.clone());
            }
        }
        let mut candidate = self.xds.clone();
        candidate.types.insert(
            kind,
            TypeResources {
                version: update.version,
                resources,
            },
        );
        let base = self.base.clone();
        let mut outcome = Outcome::default();
        match self.apply(base.clone(), candidate, Release::Later).await {
            Ok(_) => {}
            Err((e, mut candidate)) => {
                let text = e.to_string();
                let what = match kind {
                    XdsKind::Cluster => Some("cluster"),
                    XdsKind::Listener => Some("listener"),
                    _ => None,
                };
                let failing: BTreeSet<String> = match (&e, what) {
                    (RunError::Config(c), Some(what)) => c
                        .field_errors()
                        .iter()
                        .filter_map(|f| f.path.strip_prefix(&format!("{what} `")))
                        .filter_map(|rest| rest.split_once('`').map(|(n, _)| n.to_string()))
                        .collect(),
                    _ => BTreeSet::new(),
                };
                outcome.error = Some(text);
                if !failing.is_empty() {
                    if let Some(t) = candidate.types.get_mut(&kind) {
                        for name in &failing {
                            match previous.resources.get(name) {
                                Some(v) => t.resources.insert(name.clone(), v.clone()),
                                None => t.resources.remove(name),
                            };
                        }
                    }
                    if let Err((e2, _)) = self.apply(base, candidate, Release::Later).await {
                        tracing::debug!("the rest of the update does not compile either: {e2}");
                        outcome.applied = None;
                        let _ = update.reply.send(outcome);
                        return;
                    }
                } else {
                    let _ = update.reply.send(outcome);
                    return;
                }
            }
        }
        outcome.applied = Some(Wanted {
            endpoints: self.xds.wanted(XdsKind::Endpoint, &self.base.canonical),
            routes: self.xds.wanted(XdsKind::Route, &self.base.canonical),
        });
        let _ = update.reply.send(outcome);
    }

    /// Serve until SIGINT/SIGTERM, reloading on SIGHUP and (with `--watch-config`) on file change,
    /// reopening the access log files on SIGUSR1.
    pub async fn run_until_signalled(mut self) {
        let mut last_mtime = mtime(&self.options.config_path);
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tokio::select! {
                _ = self.signals.hangup.recv() => self.reload_logged("SIGHUP").await,
                _ = self.signals.user1.recv() => {
                    tracing::info!("caught SIGUSR1, reopening access logs");
                    if let Err(e) = crate::access_log_sink::reopen_all_off_thread().await {
                        tracing::warn!(error = %e, "reopening access logs");
                    }
                }
                _ = self.signals.terminate.recv() => break,
                _ = self.signals.interrupt.recv() => break,
                Some(update) = next_update(&mut self.xds_updates) => self.apply_xds(update).await,
                _ = release_due(self.release_at) => {
                    self.release_at = None;
                    let _ = tokio::task::spawn_blocking(crate::memory::release_after_load).await;
                }
                _ = tick.tick(), if self.options.watch_config => {
                    let m = mtime(&self.options.config_path);
                    if m != last_mtime {
                        last_mtime = m;
                        self.reload_logged("file change").await;
                    }
                }
            }
        }
        crate::access_log_sink::flush_all();
        tracing::info!("shutting down");
    }

    async fn reload_logged(&mut self, why: &str) {
        match self.reload().await {
            Ok(v) => tracing::info!(version = v, trigger = why, "configuration reloaded"),
            Err(e) => tracing::error!(
                trigger = why,
                "configuration rejected, keeping the last good one:\n{e}"
            ),
        }
    }
}

fn mtime(p: &std::path::Path) -> Option<std::time::SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

/// Start the health checks of the clusters of `next` that are new (not carried over from
/// `previous`), and wait until each has probed all its endpoints once, as Envoy warms a cluster
/// before using it. A cluster that changed keeps the health of the endpoints it had, so only new
/// endpoints are waited for. The running configuration keeps serving meanwhile.
async fn start_health_checks(next: &Snapshot, previous: Option<&Snapshot>) {
    let mut warming = Vec::new();
    for c in next.clusters.values() {
        let reused = previous.is_some_and(|p| {
            p.clusters
                .get(&c.name)
                .is_some_and(|old| Arc::ptr_eq(old, c))
        });
        if reused {
            continue;
        }
        // The same cluster, changed (new endpoints over EDS, say): keep its endpoints' health.
        let before = previous
            .and_then(|p| p.clusters.get(&c.name))
            .and_then(|old| old.health_checker.as_deref());
        if let (Some(checker), Some(before)) = (c.health_checker.as_deref(), before) {
            checker.inherit(before);
            c.reweigh();
        }
        if let (Some(rx), Some(checker)) = (
            crate::health_check::HealthChecker::start(c),
            c.health_checker.as_ref(),
        ) {
            warming.push(crate::health_check::HealthChecker::warmed(
                rx,
                checker.config.timeout,
            ));
        }
    }
    futures_util::future::join_all(warming).await;
}

async fn dns_refresher(snapshot: Arc<ArcSwap<Snapshot>>) {
    let mut last: HashMap<String, std::time::Instant> = HashMap::new();
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let snap = snapshot.load_full();
        for c in snap.clusters.values() {
            if let Discovery::Dns { refresh, .. } = c.discovery {
                let due = last.get(&c.name).is_none_or(|t| t.elapsed() >= refresh);
                if due {
                    last.insert(c.name.clone(), std::time::Instant::now());
                    let c = c.clone();
                    // Resolution blocks; keep it off the request threads.
                    let _ = tokio::task::spawn_blocking(move || c.refresh_dns()).await;
                }
            }
        }
    }
}
