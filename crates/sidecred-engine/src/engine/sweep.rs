//! The housekeeping loop: lease and session expiry, renewal ahead of expiry, grace-window
//! retirement, scheduled rotation, and revocation retries. One tracked task, stopped by the shutdown signal.

use super::Engine;
use crate::clock::renew_at;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// How often the loop runs; bounds how late an expiry can be.
pub const TICK: Duration = Duration::from_millis(200);

impl Engine {
    pub fn spawn_sweeper(
        self: &Arc<Self>,
        mut shutdown: watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
        let engine = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(TICK);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        engine.sweep().await;
                        engine.spawn_rechecks();
                        drop(engine.spawn_scheduled());
                    }
                    _ = shutdown.changed() => break,
                }
            }
        })
    }

    /// One whole housekeeping pass that returns only when it is done: the sweep, then every
    /// scheduled rotation due at the clock's `now`, awaited instead of left running. The seam
    /// for callers that drive time themselves (a manual clock in tests); the loop above spawns
    /// the same work without waiting for it.
    pub async fn tick(self: &Arc<Self>) {
        self.sweep().await;
        for slot in self.spawn_scheduled() {
            let _ = slot.await;
        }
    }

    /// One pass of housekeeping.
    pub async fn sweep(&self) {
        let now = self.now();
        let expired = self.grants.take_expired(now);
        for l in expired {
            self.end_lease(&l, "expired").await;
            let mut ev = crate::audit::AuditEvent::new("lease_expire", "ok");
            ev.session = Some(&l.session_id);
            ev.secret = Some(&l.secret);
            ev.lease = Some(&l.id);
            let _ = self.audit.record(ev).await;
        }
        for id in self.sessions.expired(now) {
            if let Some(s) = self.sessions.list().into_iter().find(|s| s.meta.id == id) {
                self.teardown(&s, "expired").await;
                let mut ev = crate::audit::AuditEvent::new("session_expire", "ok");
                ev.session = Some(&id);
                let _ = self.audit.record(ev).await;
            }
        }
        let window = self.catalog().config.server.stale_window;
        for e in self.grants.evict_dead(now, window) {
            if let Some(bl) = &e.backend_lease {
                let cat = self.catalog();
                if let Some(b) = cat.backends.get(&e.backend) {
                    if let Err(err) = self.bounded(&e.backend, b.revoke_lease(bl, None)).await {
                        tracing::debug!(backend = %e.backend, error = %err, "revoking a dead cached lease failed");
                    }
                }
            }
        }
        self.renew_due().await;
        let due = self.rotation.take_expired(now);
        for (name, version) in due {
            self.retire(&name, &version).await;
        }
        self.retry_pending().await;
        if let Some(before) = now.checked_sub(Duration::from_secs(7 * 86400)) {
            self.sessions.prune_tombstones(before);
        }
    }

    /// Renews backend leases at about two thirds of their life; on failure the value lives out its ttl.
    async fn renew_due(&self) {
        let now = self.now();
        let cat = self.catalog();
        for (key, e) in self.grants.due_for_renewal(now) {
            let Some(bl) = &e.backend_lease else { continue };
            let Some(b) = cat.backends.get(&e.backend) else {
                continue;
            };
            let handle = match &key.scope {
                crate::lease::cache::ScopeKey::Session(s)
                | crate::lease::cache::ScopeKey::Call(s, _) => self.sessions.handle(s, &e.backend),
                crate::lease::cache::ScopeKey::Shared => None,
            };
            // Claim first so a slow renewal is not started twice.
            if !e.claim_refresh(now, bl.ttl / 4) {
                continue;
            }
            match self
                .bounded(&e.backend, b.renew_lease(bl, handle.as_ref()))
                .await
            {
                Ok(ttl) if !ttl.is_zero() => {
                    let r: f64 = rand::random();
                    let now = self.now();
                    e.extend(now + ttl, renew_at(now, ttl, 0.66, 0.1, r));
                    tracing::debug!(secret = %key.secret, ttl = ttl.as_secs(), "backend lease renewed");
                }
                Ok(_) => {
                    tracing::debug!(secret = %key.secret, "lease at its max ttl; it will be replaced on expiry")
                }
                Err(err) => {
                    tracing::warn!(secret = %key.secret, error = %err, "lease renewal failed; keeping it until expiry")
                }
            }
        }
    }
}
