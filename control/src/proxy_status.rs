//! What every connected proxy has been sent and has acknowledged, per xDS type — the data behind
//! `sluice proxy-status` (like `istioctl proxy-status`). Updated by the ADS streams, read by the
//! status endpoint; never on a request path.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::SystemTime;

use serde::Serialize;

use crate::xds_encode::XdsType;

/// One xDS type of one proxy.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TypeStatus {
    /// The version of the last response sent.
    pub sent_version: String,
    /// The last version the proxy ACKed.
    pub acked_version: String,
    /// The text of the last NACK, while the proxy has not ACKed a later response.
    pub nack: Option<String>,
    /// The version the NACK rejected.
    pub nack_version: String,
    /// Resources in the last response.
    pub resources: usize,
    /// Names the proxy subscribed to (EDS, RDS); 0 for wildcard types.
    pub subscribed: usize,
    #[serde(skip)]
    pub sent_at: Option<SystemTime>,
    #[serde(skip)]
    pub acked_at: Option<SystemTime>,
}

impl TypeStatus {
    /// `SYNCED` when the last response was ACKed, `NACKED` when it was rejected, `STALE` while
    /// it is unanswered.
    pub fn state(&self) -> &'static str {
        if self.sent_version.is_empty() {
            "NOT SENT"
        } else if self.nack.is_some() && self.nack_version == self.sent_version {
            "NACKED"
        } else if self.acked_version == self.sent_version {
            "SYNCED"
        } else {
            "STALE"
        }
    }
}

/// One connected proxy.
#[derive(Debug, Clone, Serialize)]
pub struct ProxyEntry {
    pub connection: u64,
    pub node_id: String,
    /// `gateway` or `sidecar`.
    pub role: &'static str,
    pub peer: Option<SocketAddr>,
    #[serde(serialize_with = "unix_seconds")]
    pub connected_at: SystemTime,
    pub types: BTreeMap<&'static str, TypeStatus>,
}

fn unix_seconds<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    s.serialize_u64(secs)
}

/// Every connected proxy, by connection id.
#[derive(Debug, Default)]
pub struct ProxyRegistry {
    proxies: Mutex<BTreeMap<u64, ProxyEntry>>,
    next: Mutex<u64>,
}

impl ProxyRegistry {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, ProxyEntry>> {
        // A poisoned lock means a stream task panicked mid-update; entries are plain data.
        self.proxies.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Register a new stream; returns its connection id.
    pub fn connect(&self, node_id: &str, role: &'static str, peer: Option<SocketAddr>) -> u64 {
        let id = {
            let mut n = self.next.lock().unwrap_or_else(|e| e.into_inner());
            *n += 1;
            *n
        };
        self.lock().insert(
            id,
            ProxyEntry {
                connection: id,
                node_id: node_id.to_string(),
                role,
                peer,
                connected_at: SystemTime::now(),
                types: BTreeMap::new(),
            },
        );
        id
    }

    /// Forget a closed stream.
    pub fn disconnect(&self, id: u64) {
        self.lock().remove(&id);
    }

    /// Change the status of one type of one connection.
    pub fn update(&self, id: u64, ty: XdsType, f: impl FnOnce(&mut TypeStatus)) {
        if let Some(p) = self.lock().get_mut(&id) {
            f(p.types.entry(ty.short()).or_default());
        }
    }

    /// A copy of every entry.
    pub fn list(&self) -> Vec<ProxyEntry> {
        self.lock().values().cloned().collect()
    }
}

/// The status document served to `sluice proxy-status`.
#[derive(Debug, Serialize)]
pub struct StatusDocument {
    /// The control plane's current configuration version.
    pub version: u64,
    pub proxies: Vec<ProxyView>,
    /// Configuration files rejected (their last good content is serving).
    pub config_errors: Vec<String>,
    /// Translation warnings (routes that will not work as written).
    pub warnings: Vec<String>,
}

/// One proxy in the status document.
#[derive(Debug, Serialize)]
pub struct ProxyView {
    #[serde(flatten)]
    pub entry: ProxyEntry,
    /// Per type: SYNCED, STALE, NACKED, NOT SENT.
    pub state: BTreeMap<&'static str, &'static str>,
}

impl From<ProxyEntry> for ProxyView {
    fn from(entry: ProxyEntry) -> Self {
        let state = entry.types.iter().map(|(k, v)| (*k, v.state())).collect();
        ProxyView { entry, state }
    }
}

/// Render the status document as the `proxy-status` table.
pub fn render_table(doc: &serde_json::Value) -> String {
    let mut out = String::new();
    let empty = Vec::new();
    let proxies = doc
        .get("proxies")
        .and_then(|p| p.as_array())
        .unwrap_or(&empty);
    let w = proxies
        .iter()
        .filter_map(|p| p.get("node_id").and_then(|v| v.as_str()))
        .map(str::len)
        .max()
        .unwrap_or(0)
        .max(4);
    out.push_str(&format!(
        "{:<w$}  {:<8} {:<14} {:<14} {:<14} {:<14}\n",
        "NAME", "TYPE", "CDS", "EDS", "LDS", "RDS"
    ));
    for p in proxies {
        let s = |k: &str| p.get(k).and_then(|v| v.as_str()).unwrap_or("").to_string();
        let col = |ty: &str| {
            let st = p
                .get("state")
                .and_then(|m| m.get(ty))
                .and_then(|v| v.as_str())
                .unwrap_or("-");
            let ver = p
                .get("types")
                .and_then(|m| m.get(ty))
                .and_then(|t| t.get("acked_version"))
                .and_then(|v| v.as_str())
                .unwrap_or("");
            if ver.is_empty() {
                st.to_string()
            } else {
                format!("{st} ({ver})")
            }
        };
        out.push_str(&format!(
            "{:<w$}  {:<8} {:<14} {:<14} {:<14} {:<14}\n",
            s("node_id"),
            s("role"),
            col("CDS"),
            col("EDS"),
            col("LDS"),
            col("RDS")
        ));
        if let Some(types) = p.get("types").and_then(|t| t.as_object()) {
            for (ty, t) in types {
                if let Some(n) = t.get("nack").and_then(|v| v.as_str()) {
                    out.push_str(&format!("    {ty} NACK: {n}\n"));
                }
            }
        }
    }
    let v = doc.get("version").and_then(|v| v.as_u64()).unwrap_or(0);
    out.push_str(&format!(
        "control plane version {v}, {} proxies\n",
        proxies.len()
    ));
    for key in ["config_errors", "warnings"] {
        if let Some(list) = doc.get(key).and_then(|l| l.as_array()) {
            for e in list.iter().filter_map(|e| e.as_str()) {
                let label = if key == "config_errors" {
                    "config error"
                } else {
                    "warning"
                };
                out.push_str(&format!("{label}: {e}\n"));
            }
        }
    }
    out
}

/// Fetch the status document from a control plane's API address (`HOST:PORT`).
pub async fn fetch(server: &str) -> Result<serde_json::Value, crate::api_client::ApiClientError> {
    crate::api_client::ApiClient {
        server: server.to_string(),
        token: None,
        user: None,
    }
    .get("/api/v1/proxy-status")
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states() {
        let mut t = TypeStatus::default();
        assert_eq!(t.state(), "NOT SENT");
        t.sent_version = "2".into();
        assert_eq!(t.state(), "STALE");
        t.acked_version = "2".into();
        assert_eq!(t.state(), "SYNCED");
        t.sent_version = "3".into();
        t.nack = Some("bad".into());
        t.nack_version = "3".into();
        assert_eq!(t.state(), "NACKED");
    }
}
