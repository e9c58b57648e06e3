//! The release tasks of a running control plane: the Rollouts (from the configuration
//! directory and the API), their durable statuses, and the views the API and CLI show.
//!
//! Every change of a status is committed to the [`RolloutStore`] before the caller publishes
//! the traffic it implies, so a crash between the two replays the same state.

use std::collections::BTreeMap;

use serde_json::{json, Value};
use sluice_config::argo::Rollout;

use crate::proxy_status::ProxyEntry;
use crate::rollout_engine::{Operation, OperationError, RolloutStatus};
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
            if status.reconcile(&r.spec, now) {
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
        next.operate(&r.spec, op, now_ms(), by)?;
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
        let synced = proxies
            .iter()
            .filter(|p| {
                p.types
                    .get("RDS")
                    .and_then(|t| t.acked_version.parse::<u64>().ok())
                    .is_some_and(|v| v >= version)
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
        }))
    }
}
