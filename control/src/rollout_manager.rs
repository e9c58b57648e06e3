//! The release tasks of a running control plane: the Rollouts (from the configuration
//! directory and the API), their durable statuses, and the views the API and CLI show.
//!
//! Every change of a status is committed to the [`RolloutStore`] before the caller publishes
//! the traffic it implies, so a crash between the two replays the same state.

use std::collections::BTreeMap;

use serde_json::{json, Value};
use sluice_config::argo::Rollout;

use crate::analysis_run::Provider;
use crate::proxy_status::ProxyEntry;
use crate::rollout_engine::{Env, Operation, OperationError, RolloutStatus};
use crate::rollout_store::{RolloutStore, StoreError};

/// Why an API operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    #[error("rollout {0} not found")]
    NotFound(String),
    #[error(transparent)]
    Operation(#[from] OperationError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The release tasks.
#[derive(Debug)]
pub struct RolloutManager {
    store: RolloutStore,
    statuses: BTreeMap<String, RolloutStatus>,
    rollouts: Vec<(Rollout, String)>,
    /// Per rollout: the weight last published and the configuration version it went out in.
    published: BTreeMap<String, (u32, u64)>,
    templates: Vec<sluice_config::argo_analysis::AnalysisTemplate>,
    /// Measurements being taken (rollout, run, metric), so none is taken twice at once.
    in_flight: std::collections::BTreeSet<(String, String, usize)>,
}

/// A measurement to take.
#[derive(Debug, Clone)]
pub struct Due {
    pub rollout: String,
    pub run: String,
    pub metric: usize,
    pub provider: Provider,
}

/// A JSON value without its null fields (unset options), for display.
fn compact(v: Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.into_iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k, compact(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.into_iter().map(compact).collect()),
        other => other,
    }
}

/// `namespace/name`.
pub fn key(r: &Rollout) -> String {
    format!("{}/{}", r.metadata.namespace(), r.metadata.name)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl RolloutManager {
    /// Load the stored statuses.
    pub fn new(store: RolloutStore) -> Result<Self, StoreError> {
        let statuses = store.statuses()?;
        Ok(RolloutManager {
            store,
            statuses,
            rollouts: Vec::new(),
            published: BTreeMap::new(),
            templates: Vec::new(),
            in_flight: Default::default(),
        })
    }

    /// Whether state survives a restart.
    pub fn durable(&self) -> bool {
        self.store.durable()
    }

    /// The store (for documents applied through the API).
    pub fn store(&self) -> &RolloutStore {
        &self.store
    }

    /// Replace the set of Rollouts (with the file or source each came from).
    pub fn set_rollouts(&mut self, rollouts: Vec<(Rollout, String)>) {
        self.rollouts = rollouts;
    }

    /// Replace the analysis templates runs are started from.
    pub fn set_templates(
        &mut self,
        templates: Vec<sluice_config::argo_analysis::AnalysisTemplate>,
    ) {
        self.templates = templates;
    }

    /// Measurements due now (each is marked in flight until [`RolloutManager::record`]).
    pub fn due(&mut self) -> Vec<Due> {
        let now = now_ms();
        let mut out = Vec::new();
        for (k, s) in &self.statuses {
            if s.aborted {
                continue;
            }
            for r in &s.runs {
                for i in r.due(now) {
                    let key = (k.clone(), r.id.clone(), i);
                    if self.in_flight.insert(key) {
                        out.push(Due {
                            rollout: k.clone(),
                            run: r.id.clone(),
                            metric: i,
                            provider: r.metrics[i].provider.clone(),
                        });
                    }
                }
            }
        }
        out
    }

    /// Record a measurement; the status (and what it implies) is stored before this returns.
    pub fn record(
        &mut self,
        due: &Due,
        value: &Result<sluice_config::analysis_expr::Value, String>,
    ) -> Result<(), StoreError> {
        self.in_flight
            .remove(&(due.rollout.clone(), due.run.clone(), due.metric));
        let Some(status) = self.statuses.get_mut(&due.rollout) else {
            return Ok(());
        };
        if status.record_measurement(&due.run, due.metric, now_ms(), value) {
            if let Some((r, _)) = self.rollouts.iter().find(|(r, _)| key(r) == due.rollout) {
                let env = Env {
                    namespace: r.metadata.namespace(),
                    templates: &self.templates,
                };
                status.reconcile_in(&r.spec, &env, now_ms());
            }
            self.store.save_status(&due.rollout, status)?;
        }
        Ok(())
    }

    /// Reconcile every Rollout at the current time; changed statuses are stored before this
    /// returns. Returns whether any changed.
    pub fn reconcile(&mut self) -> Result<bool, StoreError> {
        self.reconcile_at(now_ms())
    }

    /// [`RolloutManager::reconcile`] at a given time.
    pub fn reconcile_at(&mut self, now: u64) -> Result<bool, StoreError> {
        let mut changed = false;
        for (r, _) in &self.rollouts {
            let k = key(r);
            let status = self.statuses.entry(k.clone()).or_default();
            let env = Env {
                namespace: r.metadata.namespace(),
                templates: &self.templates,
            };
            if status.reconcile_in(&r.spec, &env, now) {
                self.store.save_status(&k, status)?;
                changed = true;
            }
        }
        Ok(changed)
    }

    /// Whether a Rollout of this name exists.
    pub fn exists(&self, k: &str) -> bool {
        self.rollouts.iter().any(|(r, _)| key(r) == k) || self.statuses.contains_key(k)
    }

    /// Start a Rollout's history at `rollout` (its first revision, stable at once), stored
    /// before this returns.
    pub fn seed(&mut self, rollout: &Rollout) -> Result<(), StoreError> {
        let k = key(rollout);
        let mut status = RolloutStatus::default();
        status.reconcile(&rollout.spec, now_ms());
        self.store.save_status(&k, &status)?;
        self.statuses.insert(k, status);
        Ok(())
    }

    /// Apply an operation; the new status is stored before this returns.
    pub fn operate(&mut self, k: &str, op: &Operation, by: &str) -> Result<(), ManagerError> {
        let (r, _) = self
            .rollouts
            .iter()
            .find(|(r, _)| key(r) == k)
            .ok_or_else(|| ManagerError::NotFound(k.to_string()))?;
        let status = self.statuses.entry(k.to_string()).or_default();
        let mut next = status.clone();
        let env = Env {
            namespace: r.metadata.namespace(),
            templates: &self.templates,
        };
        next.operate_in(&r.spec, &env, op, now_ms(), by)?;
        if next != *status {
            self.store.save_status(k, &next)?;
            *status = next;
        }
        Ok(())
    }

    /// The Rollouts with their statuses, for the traffic overlay.
    pub fn overlay_input(&self) -> Vec<(Rollout, RolloutStatus)> {
        self.rollouts
            .iter()
            .filter_map(|(r, _)| self.statuses.get(&key(r)).map(|s| (r.clone(), s.clone())))
            .collect()
    }

    /// Record that configuration `version` carries the current weights.
    pub fn published(&mut self, version: u64) {
        for (r, _) in &self.rollouts {
            let k = key(r);
            let w = self.statuses.get(&k).map(|s| s.weight).unwrap_or(0);
            match self.published.get(&k) {
                Some((pw, _)) if *pw == w => {}
                _ => {
                    self.published.insert(k, (w, version));
                }
            }
        }
    }

    /// The earliest time a status is due to change by itself (a timed pause ending).
    pub fn next_deadline_ms(&self) -> Option<u64> {
        self.statuses
            .values()
            .filter_map(RolloutStatus::next_deadline_ms)
            .min()
    }

    /// Names of every Rollout.
    pub fn keys(&self) -> Vec<String> {
        self.rollouts.iter().map(|(r, _)| key(r)).collect()
    }

    /// The view of one Rollout shown by the API and `sluice rollout get`.
    pub fn view(&self, k: &str, proxies: &[ProxyEntry]) -> Option<Value> {
        let (r, origin) = self.rollouts.iter().find(|(r, _)| key(r) == k)?;
        let s = self.statuses.get(k).cloned().unwrap_or_default();
        let now = now_ms();
        let steps: Vec<Value> = r
            .spec
            .strategy
            .canary
            .as_ref()
            .map(|c| {
                c.steps
                    .iter()
                    .enumerate()
                    .map(|(i, st)| {
                        let text = serde_json::to_value(st)
                            .ok()
                            .map(compact)
                            .and_then(|v| {
                                v.as_object()
                                    .and_then(|m| m.iter().next().map(|(k, v)| format!("{k}: {v}")))
                            })
                            .unwrap_or_default();
                        let state = if s.canary.is_none() || i < s.step {
                            "done"
                        } else if i == s.step {
                            "current"
                        } else {
                            "pending"
                        };
                        json!({"index": i + 1, "step": text, "state": state})
                    })
                    .collect()
            })
            .unwrap_or_default();
        let strategy = if r.spec.strategy.blue_green.is_some() {
            "blueGreen"
        } else {
            "canary"
        };
        let (weight, version) = self.published.get(k).copied().unwrap_or((s.weight, 0));
        // A proxy has the weight once something was sent to it at (or after) the version that
        // published it, and all of that was ACKed: routes (RDS) for traffic-routed canaries,
        // endpoints (EDS) for canaries without traffic routing and for blue-green.
        let synced = proxies
            .iter()
            .filter(|p| {
                let number = |v: &str| v.parse::<u64>().unwrap_or(0);
                let recent: Vec<_> = p
                    .types
                    .values()
                    .filter(|t| number(&t.sent_version) >= version)
                    .collect();
                !recent.is_empty()
                    && recent
                        .iter()
                        .all(|t| number(&t.acked_version) >= number(&t.sent_version))
            })
            .count();
        let revision = |n: u32| {
            s.revision(n)
                .map(|r| json!({"number": r.number, "labels": r.labels, "completed": r.completed}))
        };
        Some(json!({
            "namespace": r.metadata.namespace(),
            "name": r.metadata.name,
            "source": origin,
            "strategy": strategy,
            "phase": s.phase,
            "message": s.message,
            "pause_reason": s.pause_reason,
            "pause_remaining_s": s.pause_until_ms.map(|u| u.saturating_sub(now) as f64 / 1000.0),
            "step": (s.step + 1).min(steps.len().max(1)),
            "steps": steps,
            "stable_revision": revision(s.stable),
            "canary_revision": s.canary.and_then(revision),
            "revisions": s.revisions.iter().map(|r| json!({"number": r.number, "labels": r.labels, "completed": r.completed})).collect::<Vec<_>>(),
            "desired_weight": {"stable": 100 - s.weight.min(100), "canary": s.weight},
            "acked": {"weight": weight, "version": version, "proxies": proxies.len(), "synced": synced},
            "header_routes": s.header_routes,
            "mirror_routes": s.mirror_routes,
            "aborted": s.aborted,
            "age_s": s.revisions.first().map(|r| now.saturating_sub(r.created_ms) / 1000),
            "events": s.events.iter().rev().take(20).collect::<Vec<_>>(),
            "analysis": s.runs.iter().map(|run| json!({
                "id": run.id,
                "kind": run.kind,
                "templates": run.templates,
                "phase": run.phase,
                "message": run.message,
                "metrics": run.metrics.iter().map(|m| json!({
                    "name": m.name,
                    "phase": m.phase,
                    "successful": m.successful,
                    "failed": m.failed,
                    "inconclusive": m.inconclusive,
                    "errors": m.errors,
                    "measurements": m.measurements.iter().rev().take(5).collect::<Vec<_>>(),
                })).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
        }))
    }
}
