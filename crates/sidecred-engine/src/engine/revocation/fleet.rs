//! Session revocation across the fleet: the RevokeSession entry point, publishing tombstones
//! (journaled, retried until done) and the session records that let anyone revoke a session's
//! token by accessor.

use super::{backoff, step, RevocationError, RevocationReport};
use crate::audit::AuditEvent;
use crate::backend::{BackendError, SessionHandle, SessionMeta};
use crate::engine::Engine;
use crate::fleet::{self, Fleet, Retry, SessionRecord, Store, Tombstone};
use crate::journal::Record;
use crate::metrics::METRICS;
use serde_json::Value;
use sidecred_core::identity::PeerIdentity;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

impl Engine {
    pub(super) fn fleet_store(&self, f: &Fleet) -> Result<Arc<dyn Store>, BackendError> {
        let cat = self.catalog();
        cat.backends
            .get(&f.cfg.backend)
            .and_then(|b| b.fleet_store(&f.cfg.mount, &f.cfg.prefix))
            .ok_or_else(|| {
                BackendError::Internal(format!(
                    "fleet backend `{}` is not running or cannot hold fleet records",
                    f.cfg.backend
                ))
            })
    }

    /// Records a new session's token accessor in the fleet so it can be revoked from anywhere.
    pub(in crate::engine) async fn record_session(
        &self,
        meta: &SessionMeta,
        handles: &BTreeMap<String, SessionHandle>,
        expires: SystemTime,
    ) {
        let Some(f) = self.revocation.fleet.get() else {
            return;
        };
        let Some(h) = handles.get(&f.cfg.backend) else {
            return;
        };
        let rec = SessionRecord {
            accessor: h.id.clone(),
            sidecar: f.cfg.sidecar_id.clone(),
            labels: meta.labels.clone(),
            expires_ms: fleet::ms(expires),
        };
        let r = match self.fleet_store(f) {
            Ok(store) => {
                let body = serde_json::to_value(&rec).unwrap_or(Value::Null);
                self.bounded("fleet", store.put(&format!("sessions/{}", meta.id), body))
                    .await
                    .map(|_| ())
            }
            Err(e) => Err(e),
        };
        if let Err(e) = r {
            tracing::warn!(session = %meta.id, error = %e, "could not record the session in the fleet; only sidecars can revoke it");
        }
    }

    /// Drops a closed session's fleet record in the background.
    pub(in crate::engine) fn forget_session(
        &self,
        id: &str,
        handles: &BTreeMap<String, SessionHandle>,
    ) {
        let Some(f) = self.revocation.fleet.get() else {
            return;
        };
        if !handles.contains_key(&f.cfg.backend) {
            return;
        }
        let Ok(store) = self.fleet_store(f) else {
            return;
        };
        let key = format!("sessions/{id}");
        tokio::spawn(async move {
            if let Err(e) = store.remove(&key).await {
                tracing::debug!(key = %key, error = %e, "could not remove a session record");
            }
        });
    }

    /// Session ids as they are revoked, here or fleet-wide (the proxy's hook: it closes the
    /// session's open tunnels and keep-alive connections on each one).
    pub fn subscribe_revocations(&self) -> tokio::sync::broadcast::Receiver<Arc<str>> {
        self.sessions.subscribe_revocations()
    }

    /// Revokes a session: refused from now on here and, with a fleet, on every sidecar; its
    /// credentials revoked at their backends. Unfinished parts are retried and reported pending.
    pub async fn revoke_session(
        &self,
        caller: Option<&PeerIdentity>,
        id: &str,
        reason: &str,
    ) -> Result<RevocationReport, RevocationError> {
        let open = self.sessions.list().into_iter().find(|s| s.meta.id == id);
        let fleet = self.revocation.fleet.get().cloned();
        let already = self.sessions.is_revoked(id);
        if open.is_none() && !already {
            let Some(f) = &fleet else {
                return Err(RevocationError::UnknownSession(id.to_string()));
            };
            // Not ours: revoke it fleet-wide if some sidecar recorded it.
            let found = match self.fleet_store(f) {
                Ok(store) => {
                    self.bounded("fleet", fleet::lookup_session(&*store, id))
                        .await
                }
                Err(e) => Err(e),
            };
            match found {
                Ok(Some(_)) => {}
                Ok(None) => return Err(RevocationError::UnknownInFleet(id.to_string())),
                Err(e) => {
                    tracing::warn!(session = %id, error = %e, "cannot check the fleet for this session; revoking it anyway")
                }
            }
        }
        let now = self.now();
        self.sessions.tombstone(id, now, reason);
        let local = async {
            match &open {
                Some(s) => self.teardown(s, "revoked").await,
                None => RevocationReport {
                    done: vec![step(
                        "local",
                        "session",
                        0,
                        if already {
                            "already revoked"
                        } else {
                            "not open on this sidecar"
                        },
                    )],
                    pending: vec![],
                },
            }
        };
        let remote = async {
            let f = fleet.as_ref()?;
            let tomb = Tombstone {
                session_id: id.to_string(),
                at_ms: fleet::ms(now),
                reason: reason.to_string(),
                origin: f.cfg.sidecar_id.clone(),
            };
            Some(self.publish(f, tomb, open.is_none()).await)
        };
        let (mut report, published) = tokio::join!(local, remote);
        if let Some((done, pending)) = published {
            report.done.extend(done);
            report.pending.extend(pending);
        }
        METRICS.revocations.inc();
        let detail = format!(
            "reason={reason} done={} pending={}",
            report.done.len(),
            report.pending.len()
        );
        let outcome = report.outcome();
        let mut ev = AuditEvent::new("session_revoke", outcome);
        if let Some(c) = caller {
            ev = ev.caller(c);
        }
        ev.session = Some(id);
        ev.detail = Some(&detail);
        self.audit
            .record(ev)
            .await
            .map_err(RevocationError::Audit)?;
        Ok(report)
    }

    /// Publishes a revocation to the fleet, journaled first; a failure is queued for retry.
    async fn publish(
        &self,
        f: &Fleet,
        tomb: Tombstone,
        revoke_token: bool,
    ) -> (Vec<super::Step>, Vec<super::Step>) {
        let rec = Record::Revoke {
            session: tomb.session_id.clone(),
            reason: tomb.reason.clone(),
            at_ms: tomb.at_ms,
            origin: tomb.origin.clone(),
            accessor: None,
        };
        self.journal(&rec).await;
        let out = match self.fleet_store(f) {
            Ok(store) => fleet::publish(&*store, &tomb, revoke_token).await,
            Err(e) => fleet::Published {
                done: vec![],
                pending: Some((step("fleet", "tombstone", 1, e.to_string()), e)),
            },
        };
        match out.pending {
            None => {
                self.journal(&rec.done()).await;
                (out.done, vec![])
            }
            Some((s, e)) => {
                tracing::warn!(session = %tomb.session_id, error = %e, "fleet revocation pending; retrying");
                let mut q = f.retries.lock();
                if !q.iter().any(|r| r.tomb.session_id == tomb.session_id) {
                    q.push(Retry {
                        tomb,
                        revoke_token,
                        attempts: 0,
                        next_at: self.now() + backoff(0),
                    });
                }
                (out.done, vec![s])
            }
        }
    }

    /// Retries due fleet publications; nothing is dropped.
    pub(super) async fn retry_publish(&self, f: &Fleet, store: &dyn Store) {
        let now = self.now();
        let due: Vec<Retry> = {
            let mut q = f.retries.lock();
            let (due, later): (Vec<Retry>, Vec<Retry>) =
                q.drain(..).partition(|r| r.next_at <= now);
            *q = later;
            // Counted as pending while attempted, so status never shows a gap mid-retry.
            f.retrying
                .fetch_add(due.len(), std::sync::atomic::Ordering::AcqRel);
            due
        };
        for mut r in due {
            let out = fleet::publish(store, &r.tomb, r.revoke_token).await;
            match out.pending {
                None => {
                    let key = format!("revoke/{}", r.tomb.session_id);
                    self.journal(&Record::Done { key }).await;
                    tracing::info!(session = %r.tomb.session_id, attempts = r.attempts + 1, "pending fleet revocation completed");
                }
                Some((_, e)) => {
                    r.attempts += 1;
                    r.next_at = self.now() + backoff(r.attempts).min(Duration::from_secs(10));
                    tracing::warn!(session = %r.tomb.session_id, attempts = r.attempts, error = %e, "fleet revocation still pending");
                    // Back on the queue before leaving the in-flight count, under the queue's lock.
                    let mut q = f.retries.lock();
                    q.push(r);
                    f.retrying.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
                    continue;
                }
            }
            f.retrying.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
        }
    }
}
