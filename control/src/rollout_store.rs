//! Durable release state: an embedded redb database in `--data-dir`. Each Rollout's status is
//! written (and the transaction committed, which redb makes crash-safe) before the traffic
//! change it implies is pushed to any proxy, so after `kill -9` at any moment a restart finds
//! the same step, the same pause and the same deadline. Resources applied through the API are
//! stored here too.

use std::collections::BTreeMap;
use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use crate::rollout_engine::RolloutStatus;

const STATUS: TableDefinition<&str, &str> = TableDefinition::new("rollout_status");
const APPLIED: TableDefinition<&str, &str> = TableDefinition::new("applied_documents");
const ROUTE_WEIGHTS: TableDefinition<&str, &str> = TableDefinition::new("route_weights");

/// A storage failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state database: {0}")]
    Db(#[from] redb::Error),
    #[error("state database {path}: {source}")]
    Dir {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("stored status of {key} is unreadable: {source}")]
    Decode {
        key: String,
        #[source]
        source: serde_json::Error,
    },
}

fn db_err<E: Into<redb::Error>>(e: E) -> StoreError {
    StoreError::Db(e.into())
}

/// The state database; `None` inside means state lives in memory only (no `--data-dir`).
#[derive(Debug)]
pub struct RolloutStore {
    db: Option<Database>,
}

impl RolloutStore {
    /// Open (or create) `DIR/state.redb`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Dir {
            path: dir.display().to_string(),
            source,
        })?;
        let db = Database::create(dir.join("state.redb")).map_err(db_err)?;
        let txn = db.begin_write().map_err(db_err)?;
        txn.open_table(STATUS).map_err(db_err)?;
        txn.open_table(APPLIED).map_err(db_err)?;
        txn.open_table(ROUTE_WEIGHTS).map_err(db_err)?;
        txn.commit().map_err(db_err)?;
        Ok(RolloutStore { db: Some(db) })
    }

    /// State in memory only.
    pub fn in_memory() -> Self {
        RolloutStore { db: None }
    }

    /// Whether state survives a restart.
    pub fn durable(&self) -> bool {
        self.db.is_some()
    }

    fn read(
        &self,
        table: TableDefinition<&str, &str>,
    ) -> Result<BTreeMap<String, String>, StoreError> {
        let Some(db) = &self.db else {
            return Ok(BTreeMap::new());
        };
        let txn = db.begin_read().map_err(db_err)?;
        let t = txn.open_table(table).map_err(db_err)?;
        let mut out = BTreeMap::new();
        for entry in t.iter().map_err(db_err)? {
            let (k, v) = entry.map_err(db_err)?;
            out.insert(k.value().to_string(), v.value().to_string());
        }
        Ok(out)
    }

    fn write(
        &self,
        table: TableDefinition<&str, &str>,
        key: &str,
        value: Option<&str>,
    ) -> Result<(), StoreError> {
        let Some(db) = &self.db else {
            return Ok(());
        };
        let txn = db.begin_write().map_err(db_err)?;
        {
            let mut t = txn.open_table(table).map_err(db_err)?;
            match value {
                Some(v) => {
                    t.insert(key, v).map_err(db_err)?;
                }
                None => {
                    t.remove(key).map_err(db_err)?;
                }
            }
        }
        txn.commit().map_err(db_err)
    }

    /// Every stored status, by `namespace/name`.
    pub fn statuses(&self) -> Result<BTreeMap<String, RolloutStatus>, StoreError> {
        self.read(STATUS)?
            .into_iter()
            .map(|(k, v)| {
                serde_json::from_str(&v)
                    .map(|s| (k.clone(), s))
                    .map_err(|source| StoreError::Decode { key: k, source })
            })
            .collect()
    }

    /// Store one status durably.
    pub fn save_status(&self, key: &str, status: &RolloutStatus) -> Result<(), StoreError> {
        let text = serde_json::to_string(status).map_err(|source| StoreError::Decode {
            key: key.to_string(),
            source,
        })?;
        self.write(STATUS, key, Some(&text))
    }

    /// Documents applied through the API, by `Kind/namespace/name`.
    pub fn applied(&self) -> Result<BTreeMap<String, String>, StoreError> {
        self.read(APPLIED)
    }

    /// Route weights set by hand (`sluice route set-weight`), by `namespace/virtualservice/route`,
    /// as JSON `{"subset or host": percent}`.
    pub fn route_weights(&self) -> Result<BTreeMap<String, String>, StoreError> {
        self.read(ROUTE_WEIGHTS)
    }

    /// Store the weights of one route.
    pub fn save_route_weights(&self, key: &str, json: &str) -> Result<(), StoreError> {
        self.write(ROUTE_WEIGHTS, key, Some(json))
    }

    /// Store (or, with `None`, remove) a document applied through the API.
    pub fn save_applied(&self, key: &str, text: Option<&str>) -> Result<(), StoreError> {
        self.write(APPLIED, key, text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_survive_reopening() {
        let dir = std::env::temp_dir().join(format!("sluice-state-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let s = RolloutStatus {
            step: 3,
            weight: 40,
            pause_until_ms: Some(123),
            ..Default::default()
        };
        {
            let store = RolloutStore::open(&dir).unwrap();
            store.save_status("default/web", &s).unwrap();
            store
                .save_applied("Rollout/default/web", Some("kind: Rollout"))
                .unwrap();
        }
        let store = RolloutStore::open(&dir).unwrap();
        assert_eq!(store.statuses().unwrap()["default/web"], s);
        assert_eq!(
            store.applied().unwrap()["Rollout/default/web"],
            "kind: Rollout"
        );
        store.save_applied("Rollout/default/web", None).unwrap();
        assert!(store.applied().unwrap().is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
