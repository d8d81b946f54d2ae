//! Fleet-wide session revocation through OpenBao. A revocation writes a tombstone
//! (`PREFIX/tombstones/<id>`), appends it to a revocation log (`PREFIX/log`, one KV v2 version per
//! revocation), and revokes the session's child token by its accessor, which OpenBao cascades to
//! every lease beneath it. Each sidecar records its sessions' accessors at `PREFIX/sessions/<id>`
//! so that anyone with the right policy, even with no sidecar, can do all of this.
//!
//! Every sidecar polls the log with one GET per `poll_interval` (see [`watch`]): on a new version
//! it tombstones the id, refuses it from then on, and tears down its own session with that id.

pub mod config;
mod watch;

pub use config::{FleetConfig, RawFleet};
pub use watch::{plan, Plan};

pub use crate::backend::FleetStore as Store;

use crate::backend::BackendError;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// One line of a revocation report (re-exported as `engine::Step`): the fleet bus reports its
/// steps as the engine's teardown does, and sits below the engine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    pub target: String,
    pub what: String,
    pub count: u32,
    pub detail: String,
}

/// A revocation record: the tombstone and each log entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tombstone {
    pub session_id: String,
    /// Milliseconds since the Unix epoch when the revocation started.
    pub at_ms: u64,
    pub reason: String,
    /// Who revoked: a sidecar id, or `cli:<user>`.
    pub origin: String,
}

/// What a sidecar records when a session opens, so the session can be revoked without it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    pub accessor: String,
    pub sidecar: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub expires_ms: u64,
}

pub fn ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64
}

pub fn from_ms(v: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(v)
}

/// How many log versions OpenBao keeps; a sidecar further behind re-reads the tombstone list.
pub const LOG_VERSIONS: u64 = 256;

fn step(what: &str, count: u32, detail: impl Into<String>) -> Step {
    Step {
        target: "fleet".into(),
        what: what.into(),
        count,
        detail: detail.into(),
    }
}

/// What publishing one revocation achieved.
#[derive(Debug, Default)]
pub struct Published {
    pub done: Vec<Step>,
    /// The first step that failed, with the error; later steps were not tried.
    pub pending: Option<(Step, BackendError)>,
}

/// The session's token accessor, from its session record.
pub async fn lookup_session(
    store: &dyn Store,
    id: &str,
) -> Result<Option<SessionRecord>, BackendError> {
    match store.get(&format!("sessions/{id}"), None).await? {
        None => Ok(None),
        Some((_, v)) => serde_json::from_value(v)
            .map(Some)
            .map_err(|_| BackendError::Internal(format!("session record `{id}` is malformed"))),
    }
}

/// Writes the tombstone, appends it to the log, and (with `revoke_token`) revokes the
/// session's token by the accessor in its session record. Idempotent: safe to repeat.
///
/// A tombstone already stored for the id is kept as it is (its `at` is when the session was
/// first revoked); the log entry then repeats it.
pub async fn publish(store: &dyn Store, t: &Tombstone, revoke_token: bool) -> Published {
    let mut out = Published::default();
    let id = &t.session_id;
    let key = format!("tombstones/{id}");
    let first = match store.get(&key, None).await {
        Ok(found) => found.and_then(|(_, v)| serde_json::from_value::<Tombstone>(v).ok()),
        Err(e) => {
            out.pending = Some((step("tombstone", 1, e.to_string()), e));
            return out;
        }
    };
    let body = match first.filter(|f| &f.session_id == id) {
        Some(f) => {
            out.done.push(step("tombstone", 1, "already recorded"));
            serde_json::to_value(&f).unwrap_or(Value::Null)
        }
        None => {
            let body = serde_json::to_value(t).unwrap_or(Value::Null);
            if let Err(e) = store.put(&key, body.clone()).await {
                out.pending = Some((step("tombstone", 1, e.to_string()), e));
                return out;
            }
            out.done.push(step("tombstone", 1, ""));
            body
        }
    };
    match store.put("log", body).await {
        Ok(v) => out.done.push(step("log", 1, format!("version {v}"))),
        Err(e) => {
            out.pending = Some((step("log", 1, e.to_string()), e));
            return out;
        }
    }
    if revoke_token {
        let rec = match lookup_session(store, id).await {
            Ok(r) => r,
            Err(e) => {
                out.pending = Some((step("token", 1, e.to_string()), e));
                return out;
            }
        };
        match rec {
            None => out.done.push(step(
                "token",
                0,
                "no session record (closed, or never opened)",
            )),
            Some(r) => match store.revoke_accessor(&r.accessor).await {
                Ok(()) => {
                    out.done
                        .push(step("token", 1, format!("accessor {}", r.accessor)));
                    if let Err(e) = store.remove(&format!("sessions/{id}")).await {
                        tracing::debug!(session = %id, error = %e, "could not remove the session record");
                    }
                }
                Err(e) => out.pending = Some((step("token", 1, e.to_string()), e)),
            },
        }
    }
    out
}

/// A publication that failed and is retried until it succeeds.
#[derive(Clone, Debug)]
pub(crate) struct Retry {
    pub tomb: Tombstone,
    pub revoke_token: bool,
    pub attempts: u32,
    pub next_at: SystemTime,
}

/// A sidecar's fleet membership: its settings and the publications it still owes.
pub struct Fleet {
    pub cfg: FleetConfig,
    pub(crate) retries: Mutex<Vec<Retry>>,
    /// Retries taken off the queue and being attempted: still pending until they succeed.
    pub(crate) retrying: std::sync::atomic::AtomicUsize,
}

impl Fleet {
    pub fn new(cfg: FleetConfig) -> Fleet {
        Fleet {
            cfg,
            retries: Mutex::new(Vec::new()),
            retrying: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    pub fn pending_count(&self) -> usize {
        let q = self.retries.lock();
        q.len() + self.retrying.load(std::sync::atomic::Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_trait::async_trait;
    use std::collections::HashMap;

    /// KV v2 in memory: every put is a new version.
    #[derive(Default)]
    struct Mem(Mutex<HashMap<String, Vec<Value>>>);

    #[async_trait]
    impl Store for Mem {
        async fn put(&self, key: &str, data: Value) -> Result<u64, BackendError> {
            let mut m = self.0.lock();
            let v = m.entry(key.to_string()).or_default();
            v.push(data);
            Ok(v.len() as u64)
        }
        async fn get(
            &self,
            key: &str,
            version: Option<u64>,
        ) -> Result<Option<(u64, Value)>, BackendError> {
            let m = self.0.lock();
            let Some(v) = m.get(key) else { return Ok(None) };
            let n = version.unwrap_or(v.len() as u64);
            Ok(v.get(n as usize - 1).map(|d| (n, d.clone())))
        }
        async fn list(&self, _dir: &str) -> Result<Vec<String>, BackendError> {
            Ok(Vec::new())
        }
        async fn remove(&self, key: &str) -> Result<(), BackendError> {
            self.0.lock().remove(key);
            Ok(())
        }
        async fn cap_versions(&self, _key: &str, _max: u64) -> Result<(), BackendError> {
            Ok(())
        }
        async fn revoke_accessor(&self, _accessor: &str) -> Result<(), BackendError> {
            Ok(())
        }
    }

    fn tomb(at_ms: u64, reason: &str) -> Tombstone {
        Tombstone {
            session_id: "s_1".into(),
            at_ms,
            reason: reason.into(),
            origin: "a".into(),
        }
    }

    #[tokio::test]
    async fn a_stored_tombstone_keeps_its_first_at() {
        let store = Mem::default();
        assert!(publish(&store, &tomb(1000, "first"), false)
            .await
            .pending
            .is_none());
        assert!(publish(&store, &tomb(9000, "again"), false)
            .await
            .pending
            .is_none());
        let (_, v) = store.get("tombstones/s_1", None).await.unwrap().unwrap();
        let t: Tombstone = serde_json::from_value(v).unwrap();
        assert_eq!((t.at_ms, t.reason.as_str()), (1000, "first"));
        // The log repeats the first record, so watchers never see a later `at`.
        let (n, v) = store.get("log", None).await.unwrap().unwrap();
        assert_eq!(n, 2);
        assert_eq!(serde_json::from_value::<Tombstone>(v).unwrap().at_ms, 1000);
    }
}
