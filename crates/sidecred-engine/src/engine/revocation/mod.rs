//! The revocation component: session teardown and revocation, the fleet's revocation bus, the
//! journal of revocations not yet done at their backends, and their retries.

mod fleet;
mod replay;
mod watcher;

use super::Engine;
use crate::audit::AuditError;
use crate::audit::AuditEvent;
use crate::backend::{BackendLease, SessionHandle, SessionMeta};
use crate::error::{ApiError, SessionRefused};
/// One line of a revocation report; defined with the fleet bus, which reports steps too.
pub use crate::fleet::Step;
use crate::journal::Record;
use crate::session::{Owner, Session};
use parking_lot::Mutex;
use sidecred_core::identity::PeerIdentity;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// What revocation owns: work that failed at a backend and waits for a retry, the fleet bus
/// (set once at start when `[fleet]` is configured) and the journal (when
/// `server.state_dir` is).
#[derive(Default)]
pub(super) struct Revocation {
    pending: Mutex<Vec<Pending>>,
    fleet: std::sync::OnceLock<Arc<crate::fleet::Fleet>>,
    journal: std::sync::OnceLock<crate::journal::Journal>,
}

/// Why CloseSession or RevokeSession was refused (or, for `Audit`, not recorded).
#[derive(Debug, thiserror::Error)]
pub enum RevocationError {
    #[error(transparent)]
    Session(#[from] SessionRefused),
    #[error("unknown session `{0}`")]
    UnknownSession(String),
    /// With a fleet: not open here, and no sidecar recorded it.
    #[error("unknown session `{0}` (not open here, and no sidecar recorded it)")]
    UnknownInFleet(String),
    #[error("{0}")]
    Audit(#[source] AuditError),
}

impl From<RevocationError> for ApiError {
    fn from(e: RevocationError) -> Self {
        match e {
            RevocationError::Session(e) => e.into(),
            e @ (RevocationError::UnknownSession(_) | RevocationError::UnknownInFleet(_)) => {
                ApiError::NotFound(e.to_string())
            }
            e @ RevocationError::Audit(_) => ApiError::Unavailable(e.to_string()),
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct RevocationReport {
    pub done: Vec<Step>,
    pub pending: Vec<Step>,
}

impl RevocationReport {
    /// The audit outcome of a revocation: `pending` while a backend step waits for a retry.
    pub(super) fn outcome(&self) -> &'static str {
        if self.pending.is_empty() {
            "ok"
        } else {
            "pending"
        }
    }
}

/// A backend revocation that failed and is retried with backoff until it succeeds.
#[derive(Clone, Debug)]
pub(super) enum PendingWork {
    Session {
        meta: SessionMeta,
        handle: SessionHandle,
    },
    Lease {
        lease: BackendLease,
        handle: Option<SessionHandle>,
    },
}

impl PendingWork {
    /// The journal line for this work (ids only).
    pub(in crate::engine) fn record(&self, backend: &str) -> Record {
        match self {
            PendingWork::Session { meta, handle } => Record::Session {
                backend: backend.into(),
                session: meta.id.clone(),
                handle: handle.id.clone(),
            },
            PendingWork::Lease { lease, .. } => Record::Lease {
                backend: backend.into(),
                lease: lease.id.clone(),
            },
        }
    }
}

#[derive(Clone, Debug)]
pub(super) struct Pending {
    pub backend: String,
    pub work: PendingWork,
    pub attempts: u32,
    pub next_at: SystemTime,
}

/// Exponential backoff for retries: 1 s doubling to 60 s.
pub(in crate::engine) fn backoff(attempts: u32) -> Duration {
    Duration::from_secs(1u64 << attempts.min(6)).min(Duration::from_secs(60))
}

pub(in crate::engine) fn step(
    target: &str,
    what: &str,
    count: u32,
    detail: impl Into<String>,
) -> Step {
    Step {
        target: target.into(),
        what: what.into(),
        count,
        detail: detail.into(),
    }
}

impl Engine {
    /// Removes a session's leases and values and revokes its backend state.
    pub(in crate::engine) async fn teardown(
        &self,
        session: &Arc<Session>,
        why: &str,
    ) -> RevocationReport {
        let id = &session.meta.id;
        // First the gate: from here on nothing is recorded or replied for the session, and
        // replies already let through are out. What exists now is all there will ever be.
        session.gate.close().await;
        self.sessions.remove(id);
        let (leases, entries) = self.grants.remove_session(id);
        let mut report = RevocationReport::default();
        report
            .done
            .push(step("local", "leases", leases.len() as u32, ""));
        report
            .done
            .push(step("local", "cached values", entries.len() as u32, ""));
        let handles = std::mem::take(&mut *session.handles.lock());
        self.forget_session(id, &handles);
        let cat = self.catalog();
        for (name, handle) in &handles {
            let Some(b) = cat.backends.get(name) else {
                continue;
            };
            let work = PendingWork::Session {
                meta: session.meta.clone(),
                handle: handle.clone(),
            };
            // A revocation is journaled before it starts, so a crash cannot drop it.
            let ahead = why == "revoked";
            if ahead {
                self.journal(&work.record(name)).await;
            }
            match self
                .bounded(name, b.revoke_session(&session.meta, handle))
                .await
            {
                Ok(n) => {
                    report.done.push(step(name, "session", n, ""));
                    if ahead {
                        self.journal(&work.record(name).done()).await;
                    }
                }
                Err(e) => {
                    report.pending.push(step(name, "session", 0, e.to_string()));
                    self.queue(name, work).await;
                }
            }
        }
        // Backend leases not covered by a session handle are revoked one by one.
        let mut revoked = std::collections::BTreeMap::<String, u32>::new();
        for e in &entries {
            let Some(bl) = &e.backend_lease else { continue };
            if handles.contains_key(&e.backend) {
                continue;
            }
            let Some(b) = cat.backends.get(&e.backend) else {
                continue;
            };
            match self.bounded(&e.backend, b.revoke_lease(bl, None)).await {
                Ok(()) => *revoked.entry(e.backend.clone()).or_default() += 1,
                Err(err) => {
                    report
                        .pending
                        .push(step(&e.backend, "lease", 1, err.to_string()));
                    self.queue(
                        &e.backend,
                        PendingWork::Lease {
                            lease: bl.clone(),
                            handle: None,
                        },
                    )
                    .await;
                }
            }
        }
        for (b, n) in revoked {
            report.done.push(step(&b, "leases", n, ""));
        }
        tracing::info!(session = %id, why, leases = leases.len(), pending = report.pending.len(), "session torn down");
        report
    }

    pub async fn close_session(
        &self,
        caller: &PeerIdentity,
        owner: &Owner,
        id: &str,
    ) -> Result<u32, RevocationError> {
        let s = self
            .sessions
            .get(id, owner, self.now())
            .map_err(|e| SessionRefused::new(id, e))?;
        let report = self.teardown(&s, "closed").await;
        let mut ev = AuditEvent::new("session_close", "ok").caller(caller);
        ev.session = Some(id);
        self.audit
            .record(ev)
            .await
            .map_err(RevocationError::Audit)?;
        Ok(report.done.first().map_or(0, |s| s.count))
    }

    /// Queues a failed backend revocation for retry, journaled so a restart retries it too.
    pub(in crate::engine) async fn queue(&self, backend: &str, work: PendingWork) {
        self.journal(&work.record(backend)).await;
        let p = Pending {
            backend: backend.to_string(),
            work,
            attempts: 0,
            next_at: self.now() + backoff(0),
        };
        self.revocation.pending.lock().push(p);
    }

    pub(in crate::engine) async fn queue_lease_revocation(
        &self,
        backend: &str,
        lease: BackendLease,
        handle: Option<SessionHandle>,
    ) {
        self.queue(backend, PendingWork::Lease { lease, handle })
            .await;
    }

    /// Retries due backend revocations; failures back off, nothing is dropped.
    pub(in crate::engine) async fn retry_pending(&self) {
        let now = self.now();
        let due: Vec<Pending> = {
            let mut p = self.revocation.pending.lock();
            let (due, later): (Vec<_>, Vec<_>) = p.drain(..).partition(|x| x.next_at <= now);
            *p = later;
            due
        };
        let cat = self.catalog();
        for mut p in due {
            let Some(b) = cat.backends.get(&p.backend) else {
                tracing::error!(backend = %p.backend, "pending revocation for a backend no longer configured; kept");
                p.next_at = now + backoff(6);
                self.revocation.pending.lock().push(p);
                continue;
            };
            let r = match &p.work {
                PendingWork::Session { meta, handle } => self
                    .bounded(&p.backend, b.revoke_session(meta, handle))
                    .await
                    .map(|_| ()),
                PendingWork::Lease { lease, handle } => {
                    self.bounded(&p.backend, b.revoke_lease(lease, handle.as_ref()))
                        .await
                }
            };
            match r {
                Ok(()) => {
                    self.journal(&p.work.record(&p.backend).done()).await;
                    tracing::info!(backend = %p.backend, attempts = p.attempts + 1, "pending revocation completed")
                }
                Err(e) => {
                    p.attempts += 1;
                    p.next_at = self.now() + backoff(p.attempts);
                    tracing::warn!(backend = %p.backend, attempts = p.attempts, error = %e, "revocation still pending");
                    self.revocation.pending.lock().push(p);
                }
            }
        }
    }

    /// Backend revocations and fleet publications not yet done.
    pub fn pending_count(&self) -> usize {
        let fleet = self.revocation.fleet.get().map_or(0, |f| f.pending_count());
        self.revocation.pending.lock().len() + fleet
    }
}
