//! Rotation with one meaning for every backend: a new version becomes current, the previous one
//! stays valid for the grace window, then is retired at its backend.
//!
//! - Versioned secrets (dev, KV v2, AWS, the internal CA): the backend writes a new version;
//!   cached values of the old one are dropped so every holder reads the new one next; a shared
//!   secret's `previous` is served beside the current one during grace; after it the backend
//!   retires the old version and whatever is still cached from it (for the CA: the leaves it
//!   signed, while the old CA leaves the trust bundle) is no longer served.
//! - Secrets issued per read (dynamic leases, certificates): a rotation starts a new epoch. Every
//!   cached credential of the secret is dropped, so the next read gets a fresh one; the dropped
//!   credentials stay valid for the window, then their backend leases are revoked.
//!
//! Open windows are journaled (see `retirements`) and survive a restart.

mod recheck;
mod retire;
mod retirements;
mod scheduler;

use super::{Engine, WatchEvent, WatchKind};
use crate::appender::Appender;
use crate::audit::AuditError;
use crate::audit::AuditEvent;
use crate::backend::SecretSpec;
use crate::backend::{BackendLease, SessionHandle};
use crate::clock::unix_millis;
use crate::engine::LookupError;
use crate::error::{ApiError, BackendFailure};
use crate::lease::cache::{CacheKey, ScopeKey};
use crate::rotation::{Previous, RotationState};
use crate::secret::SecretBytes;
use parking_lot::Mutex;
use retirements::{HeldLease, Line};
use sidecred_core::identity::PeerIdentity;
use std::collections::{HashMap, HashSet};
use std::time::{Duration, SystemTime};

/// Why a rotation did not happen (or, for `Audit`, was not recorded).
#[derive(Debug, thiserror::Error)]
pub enum RotationError {
    #[error(transparent)]
    Lookup(#[from] LookupError),
    #[error("`{0}` is issued fresh per read; a rotation cannot supply its value")]
    ValueForReissued(String),
    /// An admin's rotation: the backend's own text is shown.
    #[error(transparent)]
    Backend(#[from] BackendFailure),
    #[error("{0}")]
    Audit(#[source] AuditError),
}

impl From<RotationError> for ApiError {
    fn from(e: RotationError) -> Self {
        match e {
            RotationError::Lookup(e) => e.into(),
            e @ RotationError::ValueForReissued(_) => ApiError::InvalidArgument(e.to_string()),
            RotationError::Backend(e) => e.into(),
            e @ RotationError::Audit(_) => ApiError::Unavailable(e.to_string()),
        }
    }
}

#[derive(Clone, Debug)]
pub struct RotateOutcome {
    pub version: String,
    pub previous_version: Option<String>,
    pub previous_retires_at: Option<SystemTime>,
}

/// A replaced credential of a reissued secret, valid until its epoch retires.
struct Held {
    secret: String,
    epoch: String,
    backend: String,
    lease: BackendLease,
    handle: Option<SessionHandle>,
}

/// The rotation component: each secret's current version and grace window, credentials held
/// until their epoch retires, retired versions, the retirement journal, scheduled rotation
/// slots and the drift rechecks.
pub(super) struct Rotation {
    windows: Mutex<HashMap<String, RotationState>>,
    held: Mutex<Vec<Held>>,
    /// Versions retired per secret (from the journal across restarts): never served again,
    /// whatever the backend still keeps.
    retired: Mutex<HashMap<String, HashSet<String>>>,
    journal: Mutex<Option<Appender>>,
    /// This process's id in lock records.
    instance: String,
    scheduler: scheduler::Scheduler,
    rechecks: recheck::Rechecks,
}

impl Default for Rotation {
    fn default() -> Self {
        Self {
            windows: Mutex::new(HashMap::new()),
            held: Mutex::new(Vec::new()),
            retired: Mutex::new(HashMap::new()),
            journal: Mutex::new(None),
            instance: crate::session::new_id("sc"),
            scheduler: Default::default(),
            rechecks: Default::default(),
        }
    }
}

/// What the other components may ask of rotation.
impl Rotation {
    /// The previous version of `secret` while its grace window is open.
    pub(super) fn previous_valid(&self, secret: &str, now: SystemTime) -> Option<Previous> {
        self.windows
            .lock()
            .get(secret)?
            .previous_valid(now)
            .cloned()
    }

    /// The version a rotation made current, if one did.
    pub(super) fn current(&self, secret: &str) -> Option<String> {
        self.windows.lock().get(secret)?.current.clone()
    }

    /// Secrets whose previous version still awaits retirement.
    pub(super) fn pending_retirements(&self) -> usize {
        self.windows
            .lock()
            .values()
            .filter(|r| r.previous.is_some())
            .count()
    }

    /// Takes the versions whose grace window has closed; the caller retires them.
    pub(super) fn take_expired(&self, now: SystemTime) -> Vec<(String, String)> {
        self.windows
            .lock()
            .iter_mut()
            .filter_map(|(n, st)| st.take_expired(now).map(|v| (n.clone(), v)))
            .collect()
    }

    /// Whether `version` of `secret` was retired (here, or before a restart).
    pub(super) fn is_retired(&self, secret: &str, version: &str) -> bool {
        self.retired
            .lock()
            .get(secret)
            .is_some_and(|v| v.contains(version))
    }

    fn mark_retired(&self, secret: &str, version: &str) {
        self.retired
            .lock()
            .entry(secret.to_string())
            .or_default()
            .insert(version.to_string());
    }
}

/// How a rotation came about, for the audit line.
pub(in crate::engine) enum Origin<'a> {
    Admin(&'a PeerIdentity),
    Schedule(u64),
}

impl Engine {
    /// The previous version of `secret` while its grace window is open.
    pub fn previous_version(&self, secret: &str) -> Option<String> {
        self.rotation
            .previous_valid(secret, self.now())
            .map(|p| p.version)
    }

    /// Makes a new version current; the previous stays valid for `grace`.
    pub async fn rotate(
        &self,
        caller: &PeerIdentity,
        name: &str,
        grace: Option<Duration>,
        value: Option<SecretBytes>,
    ) -> Result<RotateOutcome, RotationError> {
        self.rotate_as(Origin::Admin(caller), name, grace, value)
            .await
    }

    pub(in crate::engine) async fn rotate_as(
        &self,
        origin: Origin<'_>,
        name: &str,
        grace: Option<Duration>,
        value: Option<SecretBytes>,
    ) -> Result<RotateOutcome, RotationError> {
        let cat = self.catalog();
        let spec = cat.secret(name)?.clone();
        let backend = cat.backend(&spec.backend)?;
        let grace = grace.unwrap_or(spec.grace);
        let (version, previous) = if backend.reissues(&spec) {
            if value.is_some() {
                return Err(RotationError::ValueForReissued(name.to_string()));
            }
            let old = self.current_epoch(name);
            (format!("r{}", unix_millis(self.now())), Some(old))
        } else {
            let r = self
                .bounded(&spec.backend, backend.rotate(&spec, value))
                .await
                .map_err(|e| BackendFailure::admin(name, e))?;
            (r.version, r.previous_version)
        };
        let retires_at = self.now() + grace;
        let prev = self
            .record_rotation(&spec, previous.clone(), &version, retires_at)
            .await;
        crate::metrics::METRICS.rotation(name);
        let out = RotateOutcome {
            version,
            previous_version: previous,
            previous_retires_at: prev,
        };
        if matches!(origin, Origin::Admin(_)) {
            self.publish_rotation(name, &out).await;
        }
        let detail = match &origin {
            Origin::Admin(_) => format!("grace={}s", grace.as_secs()),
            Origin::Schedule(slot) => format!("grace={}s slot={slot}", grace.as_secs()),
        };
        let mut ev = AuditEvent::new("rotate", "ok");
        if let Origin::Admin(c) = origin {
            ev = ev.caller(c);
        }
        ev.secret = Some(name);
        ev.version = Some(&out.version);
        ev.detail = Some(&detail);
        self.audit.record(ev).await.map_err(RotationError::Audit)?;
        Ok(out)
    }

    /// Takes over a rotation another sidecar made (from its rotation record). The record is
    /// shared storage another writer may forge: its end of grace never exceeds this secret's
    /// own `grace` from now.
    pub(in crate::engine) async fn apply_remote(
        &self,
        spec: &SecretSpec,
        version: &str,
        previous: &str,
        retires_at: SystemTime,
    ) {
        let retires_at = bounded_retirement(retires_at, self.now(), spec.grace);
        let old = if self
            .catalog()
            .backend(&spec.backend)
            .is_ok_and(|b| b.reissues(spec))
        {
            self.current_epoch(&spec.name)
        } else {
            previous.to_string()
        };
        let old = (!old.is_empty()).then_some(old);
        self.record_rotation(spec, old, version, retires_at).await;
        let detail = format!("previous={previous}");
        let mut ev = AuditEvent::new("rotation_applied", "ok");
        ev.secret = Some(&spec.name);
        ev.version = Some(version);
        ev.detail = Some(&detail);
        let _ = self.audit.record(ev).await;
    }

    fn current_epoch(&self, name: &str) -> String {
        self.rotation
            .windows
            .lock()
            .get(name)
            .and_then(|r| r.current.clone())
            .unwrap_or_else(|| "r0".into())
    }

    /// Applies a rotation locally: grace window, cache, held credentials, journal, watchers.
    /// Returns when the previous version retires, if it is still valid.
    async fn record_rotation(
        &self,
        spec: &SecretSpec,
        old: Option<String>,
        new: &str,
        retires_at: SystemTime,
    ) -> Option<SystemTime> {
        let name = &spec.name;
        let now = self.now();
        let (applied, prev) = {
            let mut rot = self.rotation.windows.lock();
            let st = rot.entry(name.clone()).or_default();
            let a = st.apply_until(old.clone(), new.to_string(), now, retires_at);
            (a, st.previous_valid(now).cloned())
        };
        let reissues = self
            .catalog()
            .backend(&spec.backend)
            .is_ok_and(|b| b.reissues(spec));
        let mut held = Vec::new();
        if reissues {
            let epoch = old.clone().unwrap_or_default();
            for (key, e) in self.grants.take_secret(name) {
                let Some(lease) = e.backend_lease.clone() else {
                    continue;
                };
                let handle = match &key.scope {
                    ScopeKey::Session(s) | ScopeKey::Call(s, _) => {
                        self.sessions.handle(s, &e.backend)
                    }
                    ScopeKey::Shared => None,
                };
                held.push(HeldLease {
                    backend: e.backend.clone(),
                    id: lease.id.clone(),
                });
                self.rotation.held.lock().push(Held {
                    secret: name.clone(),
                    epoch: epoch.clone(),
                    backend: e.backend.clone(),
                    lease,
                    handle,
                });
            }
        } else {
            let key = CacheKey {
                secret: name.clone(),
                version: None,
                scope: ScopeKey::Shared,
            };
            self.grants.remove_current(name);
            self.grants.settle(&key, new).await;
        }
        if let (Some(p), Some(old)) = (&prev, &old) {
            self.journal_retirement(Line::Grace {
                secret: name.clone(),
                current: new.to_string(),
                version: old.clone(),
                retires_at_ms: unix_millis(p.retires_at),
                leases: held,
            })
            .await;
        }
        for v in applied.retire_now {
            self.retire(name, &v).await;
        }
        self.notify(
            name,
            WatchEvent {
                kind: WatchKind::Rotated,
                version: new.to_string(),
                previous_version: old.unwrap_or_default(),
                previous_retires_at: prev.as_ref().map(|p| p.retires_at),
                at: now,
            },
        );
        prev.map(|p| p.retires_at)
    }
}

/// The end of a grace window read from a record, bounded by the secret's configured grace.
pub(in crate::engine) fn bounded_retirement(
    retires_at: SystemTime,
    now: SystemTime,
    grace: Duration,
) -> SystemTime {
    retires_at.min(now + grace)
}

#[cfg(test)]
mod tests {
    use super::bounded_retirement;
    use std::time::{Duration, SystemTime};

    #[test]
    fn a_record_cannot_extend_grace() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let g = Duration::from_secs(60);
        let far = now + Duration::from_secs(365 * 86400);
        assert_eq!(bounded_retirement(far, now, g), now + g);
        let soon = now + Duration::from_secs(5);
        assert_eq!(bounded_retirement(soon, now, g), soon);
        assert_eq!(bounded_retirement(now, now, g), now);
    }
}
