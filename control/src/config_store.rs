//! The configuration directory: every `*.yaml`, `*.yml` and `*.json` file below it, read as
//! multi-document YAML. Each file's last good content is kept: a file that stops parsing or
//! validating is reported (`file:line: path: reason`) and its previous resources keep serving.
//! Changes are found by polling file metadata (size, modification time), which needs no
//! platform-specific watcher and notices edits within one poll interval.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use sluice_config::argo::Rollout;
use sluice_config::argo_analysis::AnalysisTemplate;
use sluice_config::istio::{self, Parsed, Resource};
use sluice_config::source::Document;

/// A document of a kind the Istio reader does not handle (kept for other readers).
#[derive(Debug, Clone)]
pub struct OtherDocument {
    pub api_version: String,
    pub kind: String,
    pub name: String,
    pub document: Document,
}

#[derive(Debug, Clone, Default)]
struct FileState {
    stamp: Option<(SystemTime, u64)>,
    /// The last good content of the file.
    resources: Vec<Resource>,
    rollouts: Vec<(Rollout, String)>,
    templates: Vec<AnalysisTemplate>,
    others: Vec<OtherDocument>,
    /// The current content's error, when it has one.
    error: Option<String>,
}

/// What one scan found.
#[derive(Debug, Default)]
pub struct ScanReport {
    /// Something that serves changed (a file was added, removed, or changed and is valid).
    pub changed: bool,
    /// Files whose new content was rejected, with their errors.
    pub errors: Vec<String>,
    /// Files added, changed or removed, for the log.
    pub touched: Vec<PathBuf>,
}

/// The watched configuration directory.
#[derive(Debug)]
pub struct ConfigStore {
    dir: PathBuf,
    files: BTreeMap<PathBuf, FileState>,
}

fn is_config_file(p: &Path) -> bool {
    matches!(
        p.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml" | "json")
    )
}

fn list_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        // Editors' temporary and hidden files are not configuration.
        if p.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with('.'))
        {
            continue;
        }
        if p.is_dir() {
            list_files(&p, out);
        } else if is_config_file(&p) {
            out.push(p);
        }
    }
}

fn stamp(p: &Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(p).ok()?;
    Some((m.modified().ok()?, m.len()))
}

impl ConfigStore {
    /// A store over `dir` (nothing is read until [`ConfigStore::scan`]).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        ConfigStore {
            dir: dir.into(),
            files: BTreeMap::new(),
        }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Re-read the files that changed since the last scan.
    pub fn scan(&mut self) -> ScanReport {
        let mut report = ScanReport::default();
        let mut present = Vec::new();
        list_files(&self.dir, &mut present);
        let gone: Vec<PathBuf> = self
            .files
            .keys()
            .filter(|p| !present.contains(p))
            .cloned()
            .collect();
        for p in gone {
            self.files.remove(&p);
            report.changed = true;
            report.touched.push(p);
        }
        for p in present {
            let st = stamp(&p);
            let state = self.files.entry(p.clone()).or_default();
            if state.stamp == st && st.is_some() {
                continue;
            }
            state.stamp = st;
            report.touched.push(p.clone());
            let parsed = std::fs::read_to_string(&p)
                .map_err(|e| format!("{}: {e}", p.display()))
                .and_then(|text| {
                    istio::parse_text(&p.display().to_string(), &text).map_err(|e| e.to_string())
                });
            match parsed {
                Ok(docs) => {
                    let mut resources = Vec::new();
                    let mut rollouts = Vec::new();
                    let mut templates = Vec::new();
                    let mut others = Vec::new();
                    for d in docs {
                        match d {
                            Parsed::Istio(r) => resources.push(*r),
                            Parsed::Rollout(r) => rollouts.push((*r, p.display().to_string())),
                            Parsed::AnalysisTemplate(t) => templates.push(*t),
                            Parsed::Other {
                                api_version,
                                kind,
                                name,
                                document,
                            } => others.push(OtherDocument {
                                api_version,
                                kind,
                                name,
                                document,
                            }),
                        }
                    }
                    let same = state.resources == resources
                        && state.rollouts == rollouts
                        && state.templates == templates
                        && state.error.is_none();
                    state.resources = resources;
                    state.rollouts = rollouts;
                    state.templates = templates;
                    state.others = others;
                    state.error = None;
                    report.changed |= !same;
                }
                Err(e) => {
                    state.error = Some(e.clone());
                    report.errors.push(e);
                }
            }
        }
        report
    }

    /// Every Istio resource (the last good version of each file), sorted by kind, namespace and
    /// name. The same resource in two files: the first file (by path) wins.
    pub fn resources(&self) -> (Vec<Resource>, Vec<String>) {
        let mut by_key: BTreeMap<(String, String, String), Resource> = BTreeMap::new();
        let mut warnings = Vec::new();
        for state in self.files.values() {
            for r in &state.resources {
                let key = (
                    r.spec.kind().to_string(),
                    r.metadata.namespace().to_string(),
                    r.metadata.name.clone(),
                );
                if let Some(first) = by_key.get(&key) {
                    warnings.push(format!(
                        "{} is defined in {} and {}; the first is used",
                        r.key(),
                        first.origin,
                        r.origin
                    ));
                    continue;
                }
                by_key.insert(key, r.clone());
            }
        }
        (by_key.into_values().collect(), warnings)
    }

    /// Every Rollout (the last good version of each file) with its file, sorted by namespace and
    /// name; the first file (by path) wins when two define the same Rollout.
    pub fn rollouts(&self) -> Vec<(Rollout, String)> {
        let mut by_key: BTreeMap<(String, String), (Rollout, String)> = BTreeMap::new();
        for state in self.files.values() {
            for (r, origin) in &state.rollouts {
                let key = (r.metadata.namespace().to_string(), r.metadata.name.clone());
                by_key
                    .entry(key)
                    .or_insert_with(|| (r.clone(), origin.clone()));
            }
        }
        by_key.into_values().collect()
    }

    /// Every analysis template (namespaced and cluster-wide).
    pub fn templates(&self) -> Vec<AnalysisTemplate> {
        self.files
            .values()
            .flat_map(|s| s.templates.iter().cloned())
            .collect()
    }

    /// Documents of other kinds (Kubernetes objects …), with their files.
    pub fn others(&self) -> Vec<OtherDocument> {
        self.files
            .values()
            .flat_map(|s| s.others.iter().cloned())
            .collect()
    }

    /// Files whose current content is rejected, with the error (the last good content serves).
    pub fn errors(&self) -> Vec<String> {
        self.files
            .values()
            .filter_map(|s| s.error.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SE: &str = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: a}\nspec:\n  hosts: [a.example]\n  ports: [{number: 80, name: http}]\n  resolution: STATIC\n  endpoints: [{address: 127.0.0.1}]\n";

    #[test]
    fn a_broken_file_keeps_its_last_good_content() {
        let dir = std::env::temp_dir().join(format!("sluice-store-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("a.yaml");
        std::fs::write(&f, SE).unwrap();
        let mut store = ConfigStore::new(&dir);
        let r = store.scan();
        assert!(r.changed && r.errors.is_empty());
        assert_eq!(store.resources().0.len(), 1);
        assert!(!store.scan().changed, "nothing changed");

        std::fs::write(&f, SE.replace("ports:", "portz:")).unwrap();
        let r = store.scan();
        assert!(!r.changed);
        assert_eq!(r.errors.len(), 1);
        assert!(
            r.errors[0].contains("a.yaml:6: spec.portz: not supported"),
            "{}",
            r.errors[0]
        );
        assert_eq!(store.resources().0.len(), 1, "last good version kept");

        std::fs::remove_file(&f).unwrap();
        assert!(store.scan().changed);
        assert!(store.resources().0.is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
