//! The fleet watcher: polls the revocation log other sidecars publish to and enforces what it
//! finds here, and retries the publications this sidecar still owes.

use crate::audit::AuditEvent;
use crate::backend::BackendError;
use crate::engine::Engine;
use crate::fleet::{self, plan, Plan, Store, Tombstone};
use crate::metrics::METRICS;
use crate::session::Session;
use serde_json::Value;
use std::sync::Arc;
use tokio::sync::watch;

impl Engine {
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
            let outcome = report.outcome();
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
