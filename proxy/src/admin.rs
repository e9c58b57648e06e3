//! The admin server, on Envoy's paths: `/ready`, `/stats/prometheus`, `/config_dump`, `/clusters`,
//! `/server_info`, and `POST /reopen_logs`.

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

use crate::metrics::Metrics;
use crate::snapshot::Snapshot;

/// What the admin server reads.
#[derive(Debug, Clone)]
pub struct AdminState {
    pub snapshot: Arc<ArcSwap<Snapshot>>,
    pub metrics: Metrics,
    pub started: std::time::SystemTime,
    /// Bound listener addresses by name (differs from the configuration for port 0).
    pub listeners: Arc<ArcSwap<Vec<(String, std::net::SocketAddr)>>>,
}

/// Serve the admin API until aborted.
pub async fn serve(listener: TcpListener, state: AdminState) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<Incoming>| {
                let state = state.clone();
                async move {
                    if req.uri().path() == "/reopen_logs" {
                        return Ok::<_, Infallible>(reopen_logs(req.method()).await);
                    }
                    Ok(respond(&req, &state))
                }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn text(status: StatusCode, ct: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
    r
}

/// `POST /reopen_logs`: open every access log file again at its path, as after a log rotation.
/// Like Envoy's, the endpoint changes state and takes POST only.
async fn reopen_logs(method: &http::Method) -> Response<Full<Bytes>> {
    if method != http::Method::POST {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            format!("Method {method} not allowed, POST required.\n"),
        );
    }
    match crate::access_log_sink::reopen_all_off_thread().await {
        Ok(_) => text(StatusCode::OK, "text/plain", "OK\n".into()),
        Err(e) => {
            tracing::warn!(error = %e, "reopening access logs");
            text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/plain",
                format!("{e}\n"),
            )
        }
    }
}

fn respond(req: &Request<Incoming>, state: &AdminState) -> Response<Full<Bytes>> {
    let snap = state.snapshot.load();
    match req.uri().path() {
        "/ready" => text(StatusCode::OK, "text/plain", "LIVE\n".into()),
        "/stats/prometheus" | "/metrics" => text(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            state.metrics.render(),
        ),
        "/config_dump" => {
            let dump = serde_json::json!({
                "configs": [{
                    "@type": "type.googleapis.com/envoy.admin.v3.BootstrapConfigDump",
                    "bootstrap": snap.config,
                    "last_updated": humantime(snap.loaded_at),
                    "version_info": snap.version.to_string(),
                }]
            });
            text(
                StatusCode::OK,
                "application/json",
                serde_json::to_string_pretty(&dump).unwrap_or_default(),
            )
        }
        "/clusters" => {
            let mut out = String::new();
            let mut names: Vec<&String> = snap.clusters.keys().collect();
            names.sort();
            for name in names {
                let c = &snap.clusters[name];
                out.push_str(&format!(
                    "{name}::default_priority::max_requests::{}\n",
                    c.breakers.max_requests
                ));
                out.push_str(&format!(
                    "{name}::active_requests::{}\n",
                    c.active_requests.load(Ordering::Relaxed)
                ));
                for level in &c.endpoints.load().levels {
                    for e in &level.endpoints {
                        let a = e.pool.addr;
                        out.push_str(&format!("{name}::{a}::hostname::{}\n", e.hostname));
                        out.push_str(&format!("{name}::{a}::priority::{}\n", level.priority));
                        out.push_str(&format!("{name}::{a}::weight::{}\n", e.weight));
                        out.push_str(&format!(
                            "{name}::{a}::health_flags::{}\n",
                            c.health_flags(e)
                        ));
                        out.push_str(&format!(
                            "{name}::{a}::rq_active::{}\n",
                            e.active_requests.load(Ordering::Relaxed)
                        ));
                        out.push_str(&format!(
                            "{name}::{a}::rq_total::{}\n",
                            e.total_requests.load(Ordering::Relaxed)
                        ));
                        out.push_str(&format!(
                            "{name}::{a}::cx_active::{}\n",
                            e.pool.open_connections.load(Ordering::Relaxed)
                        ));
                        out.push_str(&format!(
                            "{name}::{a}::cx_total::{}\n",
                            e.pool.total_connections.load(Ordering::Relaxed)
                        ));
                    }
                }
            }
            text(StatusCode::OK, "text/plain", out)
        }
        "/listeners" => {
            let listeners = state.listeners.load();
            if req.uri().query().is_some_and(|q| q.contains("format=json")) {
                let statuses: Vec<serde_json::Value> = listeners
                    .iter()
                    .map(|(name, addr)| {
                        serde_json::json!({
                            "name": name,
                            "local_address": {"socket_address": {"address": addr.ip().to_string(), "port_value": addr.port()}}
                        })
                    })
                    .collect();
                let body = serde_json::json!({ "listener_statuses": statuses });
                text(StatusCode::OK, "application/json", body.to_string())
            } else {
                let out: String = listeners
                    .iter()
                    .map(|(n, a)| format!("{n}::{a}\n"))
                    .collect();
                text(StatusCode::OK, "text/plain", out)
            }
        }
        "/server_info" => {
            let info = serde_json::json!({
                "version": concat!("sluice/", env!("CARGO_PKG_VERSION")),
                "state": "LIVE",
                "uptime_current_epoch": format!("{}s", state.started.elapsed().map(|d| d.as_secs()).unwrap_or(0)),
                "node": { "id": snap.node.id, "cluster": snap.node.cluster },
                "config_version": snap.version,
            });
            text(
                StatusCode::OK,
                "application/json",
                serde_json::to_string_pretty(&info).unwrap_or_default(),
            )
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "text/plain",
            "admin paths: /ready /stats/prometheus /config_dump /clusters /server_info /reopen_logs (POST)\n".into(),
        ),
    }
}

fn humantime(t: std::time::SystemTime) -> String {
    let secs = t
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    format!("{secs}")
}
