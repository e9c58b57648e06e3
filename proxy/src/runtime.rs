//! Running the proxy: load and compile the bootstrap, bind listeners and the admin server, and
//! apply reloads (SIGHUP or `--watch-config`) atomically, keeping the last good configuration when
//! a new one fails.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::admin::{self, AdminState};
use crate::cluster::Discovery;
use crate::compile::{self, CompileOptions};
use crate::metrics::Metrics;
use crate::server::{self, ListenerContext};
use crate::snapshot::Snapshot;

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
}

/// Load, validate and compile the bootstrap file, then resolve the names of new DNS clusters.
pub fn load(
    options: &ProxyOptions,
    metrics: &Metrics,
    previous: Option<&Snapshot>,
    version: u64,
) -> Result<Snapshot, RunError> {
    let snapshot = compile_file(options, metrics, previous, version)?;
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
}

/// Signal handlers, installed before anything is served: a SIGHUP that arrives while the proxy
/// starts must reload, not kill it with the default action.
struct Signals {
    hangup: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> Result<Self, RunError> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            hangup: signal(SignalKind::hangup()).map_err(RunError::Signals)?,
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
        let snap = load(&options, &metrics, None, 1);
        crate::memory::release_after_load();
        let snap = snap?;
        let snapshot = Arc::new(ArcSwap::from_pointee(snap));
        let mut proxy = Proxy {
            options,
            metrics: metrics.clone(),
            snapshot: snapshot.clone(),
            listeners: HashMap::new(),
            bound: Arc::new(ArcSwap::from_pointee(Vec::new())),
            version: AtomicU64::new(1),
            signals,
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
        let version = self.version.load(Ordering::Relaxed) + 1;
        let current = self.snapshot.load_full();
        // Reading and compiling takes tens of milliseconds (reflection, DNS): it runs on a
        // blocking thread so that the workers keep serving requests meanwhile.
        let (options, metrics) = (self.options.clone(), self.metrics.clone());
        let loaded = tokio::task::spawn_blocking(move || {
            let loaded = load(&options, &metrics, Some(&current), version);
            drop(current);
            crate::memory::release_after_load();
            loaded
        })
        .await
        .unwrap_or_else(|e| Err(RunError::Join(e.to_string())));
        match loaded {
            Ok(next) => {
                self.snapshot.store(Arc::new(next));
                self.version.store(version, Ordering::Relaxed);
                if let Err(e) = self.sync_listeners() {
                    self.metrics.config_reload_failed.inc();
                    return Err(e);
                }
                self.metrics.config_reload_total.inc();
                Ok(version)
            }
            Err(e) => {
                self.metrics.config_reload_failed.inc();
                Err(e)
            }
        }
    }

    /// Serve until SIGINT/SIGTERM, reloading on SIGHUP and (with `--watch-config`) on file change.
    pub async fn run_until_signalled(mut self) {
        let mut last_mtime = mtime(&self.options.config_path);
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tokio::select! {
                _ = self.signals.hangup.recv() => self.reload_logged("SIGHUP").await,
                _ = self.signals.terminate.recv() => break,
                _ = self.signals.interrupt.recv() => break,
                _ = tick.tick(), if self.options.watch_config => {
                    let m = mtime(&self.options.config_path);
                    if m != last_mtime {
                        last_mtime = m;
                        self.reload_logged("file change").await;
                    }
                }
            }
        }
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
