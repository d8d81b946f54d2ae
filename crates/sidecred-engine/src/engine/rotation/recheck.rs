//! Change detection for values changed outside sidecred: every `recheck_interval` of its
//! backend, each shared cached value is compared with the backend's current version id
//! (`Backend::current_version`, e.g. DescribeSecret), which is cheaper than fetching the value.
//! On a difference the entry is evicted (the next read fetches the new value), the new current
//! version is recorded, and watchers get a `Changed` event. When the change is a rotation another
//! sidecar published (see `scheduler`), it is taken over instead: `previous` is served for the
//! rest of that rotation's grace window and watchers get `Rotated`.

use crate::backend::Backend;
use crate::backend::SecretSpec;
use crate::engine::{Engine, WatchEvent, WatchKind};
use crate::lease::cache::{CacheKey, Entry, ScopeKey};
use parking_lot::Mutex;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// When each secret is next due, and which checks are running.
#[derive(Default)]
pub(in crate::engine) struct Rechecks {
    next: Mutex<HashMap<String, SystemTime>>,
    running: Mutex<HashSet<String>>,
}

/// Pure scheduling: whether a check is due now, and the next due time to store.
/// A secret seen for the first time waits one interval (its value was just fetched).
pub(in crate::engine) fn schedule(
    next: Option<SystemTime>,
    now: SystemTime,
    every: Duration,
) -> (bool, SystemTime) {
    match next {
        Some(t) if now < t => (false, t),
        Some(_) => (true, now + every),
        None => (false, now + every),
    }
}

impl Rechecks {
    fn claim(&self, secret: &str, now: SystemTime, every: Duration) -> bool {
        if self.running.lock().contains(secret) {
            return false;
        }
        let mut next = self.next.lock();
        let (due, at) = schedule(next.get(secret).copied(), now, every);
        next.insert(secret.to_string(), at);
        if due {
            self.running.lock().insert(secret.to_string());
        }
        due
    }

    fn done(&self, secret: &str) {
        self.running.lock().remove(secret);
    }

    /// Forgets secrets that are no longer cached.
    fn retain(&self, live: &HashSet<String>) {
        self.next.lock().retain(|k, _| live.contains(k));
    }
}

impl Engine {
    /// Starts the checks that are due; never waits for them (a slow backend must not hold up
    /// lease expiry). Called from the housekeeping tick.
    pub(in crate::engine) fn spawn_rechecks(self: &Arc<Self>) {
        let now = self.now();
        let cat = self.catalog();
        let mut live = HashSet::new();
        for (key, entry) in self.grants.shared_current() {
            let Ok(spec) = cat.secret(&key.secret) else {
                continue;
            };
            let Some(backend) = cat.backends.get(&spec.backend) else {
                continue;
            };
            let Some(every) = backend.recheck_interval() else {
                continue;
            };
            live.insert(key.secret.clone());
            if !self.rotation.rechecks.claim(&key.secret, now, every) {
                continue;
            }
            let (engine, spec, backend) = (self.clone(), spec.clone(), backend.clone());
            tokio::spawn(async move {
                engine.recheck(&spec, backend, entry).await;
                engine.rotation.rechecks.done(&spec.name);
            });
        }
        self.rotation.rechecks.retain(&live);
    }

    async fn recheck(&self, spec: &SecretSpec, backend: Arc<dyn Backend>, entry: Arc<Entry>) {
        let current = match self
            .bounded(&spec.backend, backend.current_version(spec))
            .await
        {
            Ok(Some(v)) => v,
            Ok(None) => return,
            Err(e) => {
                tracing::debug!(secret = %spec.name, error = %e, "recheck failed; keeping the cached value");
                return;
            }
        };
        if current == entry.version {
            return;
        }
        let key = CacheKey {
            secret: spec.name.clone(),
            version: None,
            scope: ScopeKey::Shared,
        };
        // A newer entry replaced this one meanwhile: that fetch already saw the change.
        if !self.grants.remove_if_same(&key, &entry) {
            return;
        }
        // Another sidecar's rotation: serve its previous version until its window ends.
        if self.take_over_published(spec, &current).await {
            return;
        }
        self.rotation
            .windows
            .lock()
            .entry(spec.name.clone())
            .or_default()
            .current = Some(current.clone());
        tracing::info!(secret = %spec.name, version = %current, previous = %entry.version, "changed at the backend; cached value evicted");
        let now = self.now();
        self.notify(
            &spec.name,
            WatchEvent {
                kind: WatchKind::Changed,
                version: current.clone(),
                previous_version: entry.version.clone(),
                previous_retires_at: None,
                at: now,
            },
        );
        let detail = format!("previous={}", entry.version);
        let mut ev = crate::audit::AuditEvent::new("changed", "ok");
        ev.secret = Some(&spec.name);
        ev.version = Some(&current);
        ev.detail = Some(&detail);
        let _ = self.audit.record(ev).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    fn t(ms: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(ms)
    }

    #[test]
    fn schedule_table() {
        let every = Duration::from_millis(1000);
        // (stored next, now, due?, next stored)
        let cases = [
            (None, 5_000, false, 6_000),
            (Some(6_000), 5_999, false, 6_000),
            (Some(6_000), 6_000, true, 7_000),
            (Some(6_000), 9_500, true, 10_500),
        ];
        for (next, now, due, at) in cases {
            assert_eq!(schedule(next.map(t), t(now), every), (due, t(at)), "{now}");
        }
    }

    #[test]
    fn one_check_at_a_time_per_secret() {
        let r = Rechecks::default();
        let every = Duration::from_millis(100);
        assert!(!r.claim("s", t(0), every));
        assert!(r.claim("s", t(100), every));
        assert!(!r.claim("s", t(500), every), "still running");
        r.done("s");
        assert!(r.claim("s", t(500), every));
        r.retain(&HashSet::new());
        assert!(r.next.lock().is_empty());
    }
}
