//! Session revocation, locally and across the fleet: the RevokeSession entry point, applying
//! revocations other sidecars published, the watcher that polls for them, the journal replay
//! at start, and the session records that let anyone revoke a session's token by accessor.

use super::{backoff, step, Pending, PendingWork, RevocationReport};
use crate::audit::AuditEvent;
use crate::backend::{BackendError, BackendLease, SessionHandle, SessionMeta};
use crate::engine::Engine;
use crate::error::ApiError;
use crate::fleet::{self, plan, Fleet, FleetConfig, Plan, Retry, SessionRecord, Store, Tombstone};
use crate::journal::{Journal, Record};
use crate::metrics::METRICS;
use crate::session::Session;
use serde_json::Value;
use sidecred_core::identity::PeerIdentity;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::watch;

impl Engine {
    /// Attaches the journal and the fleet at start, and requeues what the journal still owes.
    pub fn attach(&self, journal: Option<(Journal, Vec<Record>)>, fleet: Option<FleetConfig>) {
        if let Some(cfg) = fleet {
            let _ = self.revocation.fleet.set(Arc::new(Fleet::new(cfg)));
        }
        let Some((j, owed)) = journal else { return };
        let now = self.now();
        let n = owed.len();
        for r in owed {
            match r {
                Record::Session {
                    backend,
                    session,
                    handle,
                } => self.push_pending(backend, replayed_session(session, handle), now),
                Record::Lease { backend, lease } => {
                    let work = PendingWork::Lease {
                        lease: BackendLease {
                            id: lease,
                            ttl: Duration::ZERO,
                            renewable: false,
                        },
                        handle: None,
                    };
                    self.push_pending(backend, work, now)
                }
                Record::Revoke {
                    session,
                    reason,
                    at_ms,
                    origin,
                    ..
                } => {
                    self.sessions
                        .tombstone(&session, fleet::from_ms(at_ms), &reason);
                    if let Some(f) = self.revocation.fleet.get() {
                        f.retries.lock().push(Retry {
                            tomb: Tombstone {
                                session_id: session,
                                at_ms,
                                reason,
                                origin,
                            },
                            revoke_token: true,
                            attempts: 0,
                            next_at: now,
                        });
                    }
                }
                Record::Done { .. } => {}
            }
        }
        if n > 0 {
            tracing::info!(
                records = n,
                "journal replayed: unfinished revocations will be retried"
            );
        }
        let _ = self.revocation.journal.set(j);
    }

    fn push_pending(&self, backend: String, work: PendingWork, now: SystemTime) {
        self.revocation.pending.lock().push(Pending {
            backend,
            work,
            attempts: 0,
            next_at: now,
        });
    }

    /// Appends to the journal, when there is one, and waits for the fsync.
    pub(in crate::engine) async fn journal(&self, r: &Record) {
        if let Some(j) = self.revocation.journal.get() {
            j.write(r).await;
        }
    }

    fn fleet_store(&self, f: &Fleet) -> Result<Arc<dyn Store>, BackendError> {
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
    ) -> Result<RevocationReport, ApiError> {
        let open = self.sessions.list().into_iter().find(|s| s.meta.id == id);
        let fleet = self.revocation.fleet.get().cloned();
        let already = self.sessions.is_revoked(id);
        if open.is_none() && !already {
            let Some(f) = &fleet else {
                return Err(ApiError::NotFound(format!("unknown session `{id}`")));
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
                Ok(None) => {
                    return Err(ApiError::NotFound(format!(
                        "unknown session `{id}` (not open here, and no sidecar recorded it)"
                    )))
                }
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
        let outcome = if report.pending.is_empty() {
            "ok"
        } else {
            "pending"
        };
        let mut ev = AuditEvent::new("session_revoke", outcome);
        if let Some(c) = caller {
            ev = ev.caller(c);
        }
        ev.session = Some(id);
        ev.detail = Some(&detail);
        self.audit
            .record(ev)
            .await
            .map_err(|e| ApiError::Unavailable(e.to_string()))?;
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
    async fn retry_publish(&self, f: &Fleet, store: &dyn Store) {
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

    /// Enforces a revocation another sidecar (or the CLI) published: refused from now on, and
    /// torn down (values evicted and zeroized, backend state revoked) if open here.
    async fn apply_fleet(self: &Arc<Self>, t: Tombstone, measured: bool) {
        let at = fleet::from_ms(t.at_ms);
        if !self.sessions.tombstone(&t.session_id, at, &t.reason) {
            return;
        }
        let lag = self.now().duration_since(at).unwrap_or_default();
        if measured {
            METRICS.propagation(lag);
        }
        let open: Option<Arc<Session>> = self
            .sessions
            .list()
            .into_iter()
            .find(|s| s.meta.id == t.session_id);
        tracing::info!(session = %t.session_id, origin = %t.origin, lag_ms = lag.as_millis() as u64, local = open.is_some(), "revocation observed from the fleet");
        let Some(s) = open else { return };
        let engine = self.clone();
        tokio::spawn(async move {
            let report = engine.teardown(&s, "revoked").await;
            METRICS.revocations.inc();
            let detail = format!(
                "reason={} origin={} via=fleet lag_ms={} done={} pending={}",
                t.reason,
                t.origin,
                lag.as_millis(),
                report.done.len(),
                report.pending.len()
            );
            let outcome = if report.pending.is_empty() {
                "ok"
            } else {
                "pending"
            };
            let mut ev = AuditEvent::new("session_revoke", outcome);
            ev.session = Some(&t.session_id);
            ev.detail = Some(&detail);
            let _ = engine.audit.record(ev).await;
        });
    }

    async fn apply_entry(self: &Arc<Self>, data: Value, measured: bool) {
        match serde_json::from_value::<Tombstone>(data) {
            Ok(t) => self.apply_fleet(t, measured).await,
            Err(_) => tracing::warn!("fleet log entry is malformed; skipped"),
        }
    }

    /// Re-reads every tombstone id (one LIST) and enforces those not known yet.
    async fn resync(self: &Arc<Self>, store: &dyn Store) -> Result<(), BackendError> {
        if let Err(e) = store.cap_versions("log", fleet::LOG_VERSIONS).await {
            tracing::debug!(error = %e, "could not cap the fleet log's versions");
        }
        let ids = store.list("tombstones").await?;
        let now = fleet::ms(self.now());
        for id in ids {
            if !self.sessions.is_revoked(&id) {
                let t = Tombstone {
                    session_id: id,
                    at_ms: now,
                    reason: "revoked in the fleet".into(),
                    origin: "fleet".into(),
                };
                self.apply_fleet(t, false).await;
            }
        }
        Ok(())
    }

    /// One look at the revocation log: one GET when nothing changed.
    async fn poll_fleet(
        self: &Arc<Self>,
        store: &dyn Store,
        seen: &mut Option<u64>,
    ) -> Result<(), BackendError> {
        let (cur, data) = store.get("log", None).await?.unwrap_or((0, Value::Null));
        match plan(*seen, cur) {
            Plan::Nothing => {}
            Plan::Latest => self.apply_entry(data, true).await,
            Plan::Range(from, to) => {
                for v in from..to {
                    match store.get("log", Some(v)).await? {
                        Some((_, d)) => self.apply_entry(d, true).await,
                        None => {
                            self.resync(store).await?;
                            break;
                        }
                    }
                }
                self.apply_entry(data, true).await;
            }
            Plan::Resync => self.resync(store).await?,
        }
        *seen = Some(cur);
        Ok(())
    }

    /// The fleet watcher: polls every `poll_interval` and retries owed publications.
    pub fn spawn_fleet_watcher(
        self: &Arc<Self>,
        mut shutdown: watch::Receiver<bool>,
    ) -> Option<tokio::task::JoinHandle<()>> {
        let f = self.revocation.fleet.get()?.clone();
        let engine = self.clone();
        Some(tokio::spawn(async move {
            let mut seen = None;
            let mut failing = false;
            let mut tick = tokio::time::interval(f.cfg.poll_interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = shutdown.changed() => break,
                }
                let store = match engine.fleet_store(&f) {
                    Ok(s) => s,
                    Err(e) => {
                        if !failing {
                            tracing::error!(error = %e, "fleet watcher has no store");
                            failing = true;
                        }
                        continue;
                    }
                };
                let limit = engine.catalog().config.server.backend_timeout;
                let r = tokio::time::timeout(limit, engine.poll_fleet(&*store, &mut seen)).await;
                match r {
                    Ok(Ok(())) if failing => {
                        tracing::info!("fleet revocation log readable again");
                        failing = false;
                    }
                    Ok(Ok(())) => {}
                    Ok(Err(e)) if !failing => {
                        tracing::warn!(error = %e, "cannot read the fleet revocation log; retrying every poll");
                        failing = true;
                    }
                    Err(_) if !failing => {
                        tracing::warn!("fleet revocation log read timed out; retrying every poll");
                        failing = true;
                    }
                    _ => {}
                }
                engine.retry_publish(&f, &*store).await;
            }
        }))
    }
}

/// A session revocation rebuilt from the journal: the handle id (an accessor) is all that
/// survived; the backend revokes by it.
fn replayed_session(session: String, handle: String) -> PendingWork {
    PendingWork::Session {
        meta: SessionMeta {
            id: session,
            labels: BTreeMap::new(),
            ttl: Duration::ZERO,
        },
        handle: SessionHandle {
            id: handle,
            token: None,
        },
    }
}
