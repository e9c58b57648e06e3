//! File-based xDS: `lds_config` and `cds_config` with `path_config_source` (or the older `path`)
//! name a file holding a discovery response (`resources:` of `Listener` or `Cluster`, YAML or
//! JSON), as in Envoy's dynamic-config-fs example.
//!
//! The files are read at start and read again whenever they change (their modification time or
//! size; checked four times a second, and `watched_directory` is accepted for the usual
//! move-into-place updates). Each version goes through the same path as an ADS update: every
//! resource is checked like a static one, a listener or cluster that does not compile is refused
//! by name while the others apply, and a file that does not parse keeps the last good version.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use crate::ads_client::XdsUpdate;
use crate::xds_state::{name_of, XdsKind};

/// One file-based resource type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathSource {
    pub kind: XdsKind,
    pub path: PathBuf,
}

/// The file-based sources of a bootstrap (canonical JSON).
pub fn sources(bootstrap: &Value) -> Vec<PathSource> {
    let Some(dr) = bootstrap.get("dynamic_resources") else {
        return Vec::new();
    };
    // Clusters first, as Envoy asks for them first: listeners name them.
    [
        ("cds_config", XdsKind::Cluster),
        ("lds_config", XdsKind::Listener),
    ]
    .into_iter()
    .filter_map(|(key, kind)| {
        let cs = dr.get(key)?;
        let path = cs
            .get("path_config_source")
            .and_then(|p| p.get("path"))
            .or_else(|| cs.get("path"))
            .and_then(Value::as_str)?;
        Some(PathSource {
            kind,
            path: PathBuf::from(path),
        })
    })
    .collect()
}

/// Read one file: its version (`version_info`, else the modification time) and resources.
fn read(source: &PathSource) -> Result<(String, BTreeMap<String, Value>), String> {
    let origin = source.path.display().to_string();
    let text = std::fs::read_to_string(&source.path).map_err(|e| format!("{origin}: {e}"))?;
    let document =
        sluice_config::source::parse_document(&origin, &text).map_err(|e| e.to_string())?;
    let want = source.kind.type_url();
    let mut resources = BTreeMap::new();
    let list = document
        .value
        .get("resources")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for (i, r) in list.iter().enumerate() {
        let at = format!("resources[{i}]");
        let mut body = r.clone();
        let ty = body
            .as_object_mut()
            .and_then(|m| m.remove("@type"))
            .and_then(|t| t.as_str().map(str::to_string))
            .unwrap_or_default();
        if ty != want {
            return Err(format!(
                "{origin}: {at}: type `{ty}` in a {} file (expected {want})",
                source.kind.short()
            ));
        }
        let canonical =
            sluice_config::envoy::checked_canonical(&document, source.kind.message(), &body, &at)
                .map_err(|e| e.to_string())?;
        let name = name_of(source.kind, &canonical);
        if resources.insert(name.clone(), canonical).is_some() {
            return Err(format!(
                "{origin}: {} `{name}` is defined twice",
                source.kind.short()
            ));
        }
    }
    let version = match document.value.get("version_info").and_then(Value::as_str) {
        Some(v) => v.to_string(),
        None => stamp(source).map_or_else(String::new, |(t, _)| {
            t.duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_nanos().to_string())
                .unwrap_or_default()
        }),
    };
    Ok((version, resources))
}

/// What tells a file changed: its modification time and size.
fn stamp(source: &PathSource) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(&source.path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

/// Watch `sources` and send each new version to the proxy, until the proxy stops listening.
pub async fn run(sources: Vec<PathSource>, updates: mpsc::Sender<XdsUpdate>) {
    let mut seen: Vec<Option<(SystemTime, u64)>> = vec![None; sources.len()];
    // A version refused is tried again after another file applies (a listener may wait for the
    // cluster it names).
    let mut refused = vec![false; sources.len()];
    let mut first = true;
    loop {
        let mut applied_any = false;
        for (i, source) in sources.iter().enumerate() {
            let now = stamp(source);
            let retry = refused[i] && applied_any;
            if !first && now == seen[i] && !retry {
                continue;
            }
            seen[i] = now;
            let (version, resources) = match read(source) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(error = %e, "file-based xDS: keeping the last good version");
                    continue;
                }
            };
            let (reply, outcome) = oneshot::channel();
            let update = XdsUpdate {
                kind: source.kind,
                version: version.clone(),
                resources,
                keep: Default::default(),
                reply,
            };
            if updates.send(update).await.is_err() {
                return;
            }
            match outcome.await {
                Ok(o) => {
                    refused[i] = o.error.is_some();
                    applied_any |= o.applied.is_some();
                    match o.error {
                        Some(e) => tracing::warn!(
                            file = %source.path.display(),
                            error = %e,
                            "file-based xDS: update refused (in part or whole)"
                        ),
                        None => tracing::info!(
                            file = %source.path.display(),
                            %version,
                            "file-based xDS: applied"
                        ),
                    }
                }
                Err(_) => return,
            }
        }
        first = false;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn path_config_source_and_legacy_path_are_found() {
        let b = json!({"dynamic_resources": {
            "lds_config": {"path_config_source": {"path": "/etc/lds.yaml", "watched_directory": {"path": "/etc"}}},
            "cds_config": {"path": "/etc/cds.yaml"}
        }});
        assert_eq!(
            sources(&b),
            vec![
                PathSource {
                    kind: XdsKind::Cluster,
                    path: "/etc/cds.yaml".into()
                },
                PathSource {
                    kind: XdsKind::Listener,
                    path: "/etc/lds.yaml".into()
                },
            ]
        );
        assert!(sources(&json!({"dynamic_resources": {"ads_config": {}}})).is_empty());
    }
}
