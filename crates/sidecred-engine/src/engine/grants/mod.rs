//! The grants component: the cache, the lease table and GetSecret. It owns both tables;
//! the other components reach them only through the methods at the end of this file.

mod error;
mod fetch;

pub use error::GrantError;

use fetch::{late_revoke, test_panic};

use super::Catalog;
use super::Engine;
use crate::audit::AuditEvent;
use crate::backend::SecretSpec;
use crate::error::{GateRefused, SessionRefused};
use crate::lease::cache::{Cache, CacheKey, Entry, Lookup, ScopeKey};
use crate::lease::{Lease, LeaseTable};
use crate::session::{new_id, Owner, Session};
use parking_lot::Mutex;
use sidecred_core::identity::PeerIdentity;
use sidecred_core::spec::Scope;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// The caller's SPIFFE ID and allowed SANs, for certificate issuers, and the release count a
/// call-scoped request saw at its start (see `session::Gate`).
type CertIdent<'a> = (
    Option<&'a str>,
    Option<&'a sidecred_core::san::SanPolicy>,
    u64,
);

/// One credential handed out.
pub struct Grant {
    pub entry: Arc<Entry>,
    pub lease_id: String,
    pub expires_at: SystemTime,
    pub previous: Option<(Arc<Entry>, SystemTime)>,
    pub stale: bool,
    /// Held until the reply is handed to the transport: revoking the session waits for it,
    /// and once revocation returns no reply for the session gets this far.
    pub hold: tokio::sync::OwnedRwLockReadGuard<()>,
}

pub struct GetRequest<'a> {
    /// The caller's identity, which must be the session's owner.
    pub owner: &'a Owner,
    pub session_id: &'a str,
    pub call_id: Option<&'a str>,
    pub version: Option<&'a str>,
    pub spiffe_id: Option<&'a str>,
    /// SANs the caller's policy rule allows in certificates.
    pub sans: Option<&'a sidecred_core::san::SanPolicy>,
}

/// What grants own: the lease table, the value cache and per-backend read counters.
#[derive(Default)]
pub(super) struct Grants {
    leases: Mutex<LeaseTable>,
    cache: Arc<Cache>,
    backend_calls: Mutex<HashMap<String, Arc<AtomicU64>>>,
}

impl Engine {
    /// Hands out one credential under a lease. Policy has already allowed it.
    pub async fn get_secret(
        &self,
        cat: &Catalog,
        spec: &SecretSpec,
        caller: &PeerIdentity,
        req: GetRequest<'_>,
    ) -> Result<Grant, GrantError> {
        let now = self.now();
        let session = self
            .sessions
            .get(req.session_id, req.owner, now)
            .map_err(|e| SessionRefused::new(req.session_id, e))?;
        let gate_err = |e| GateRefused::new(req.session_id, e);
        let call_key = match req.call_id {
            Some(c) => {
                let max = cat.config.server.max_calls_per_session;
                let seen = session
                    .gate
                    .admit_call(c, &spec.name, max)
                    .map_err(gate_err)?;
                Some((c, spec.name.as_str(), seen))
            }
            None => None,
        };
        let scope = match (spec.scope, req.call_id) {
            (Scope::Shared, _) => ScopeKey::Shared,
            (Scope::Session, _) => ScopeKey::Session(session.meta.id.clone()),
            (Scope::Call, Some(c)) => ScopeKey::Call(session.meta.id.clone(), c.to_string()),
            (Scope::Call, None) => return Err(GrantError::NeedsCallId(spec.name.clone())),
        };
        if req.version.is_some() && scope != ScopeKey::Shared {
            return Err(GrantError::NotVersioned(spec.name.clone()));
        }
        let retired = |v: &str| GrantError::Retired {
            secret: spec.name.clone(),
            version: v.to_string(),
        };
        if let Some(v) = req
            .version
            .filter(|v| self.rotation.is_retired(&spec.name, v))
        {
            return Err(retired(v));
        }
        let key = CacheKey {
            secret: spec.name.clone(),
            version: req.version.map(str::to_string),
            scope,
        };
        let seen = call_key.map_or(0, |(_, _, n)| n);
        let (entry, stale) = self
            .entry(
                cat,
                spec,
                &session,
                caller,
                &key,
                (req.spiffe_id, req.sans, seen),
            )
            .await?;
        // A pinned read that was in flight while its version retired is not served either.
        // (Unpinned reads serve what the backend calls current: a backend that starts its
        // numbering over, such as dev after a restart, reuses retired version ids.)
        if req.version.is_some() && self.rotation.is_retired(&spec.name, &entry.version) {
            return Err(retired(&entry.version));
        }

        let owned = matches!(key.scope, ScopeKey::Call(..));
        let previous = if key.scope == ScopeKey::Shared && req.version.is_none() {
            self.previous_in_grace(cat, spec, &session, caller, now)
                .await
        } else {
            None
        };
        let hook = cat.config.server.test_hold_dir.as_deref();
        let recorded = session.gate.record(call_key, || {
            let mut t = self.grants.leases.lock();
            test_panic(hook);
            let again = (req.call_id.is_none() && req.version.is_none())
                .then(|| t.reusable(&session.meta.id, &spec.name, &entry.version, now))
                .flatten()
                .map(|l| (l.id.clone(), l.expires_at));
            match again {
                Some(found) => found,
                None => {
                    let mut expires_at = (now + spec.ttl).min(session.expires_at);
                    if entry.backend_lease.is_some() {
                        expires_at = expires_at.min(entry.fresh_until().max(now));
                    }
                    let lease = Lease {
                        id: new_id("lse"),
                        session_id: session.meta.id.clone(),
                        secret: spec.name.clone(),
                        version: entry.version.clone(),
                        call_id: req.call_id.map(str::to_string),
                        issued_at: now,
                        expires_at,
                        owned_entry: owned.then(|| key.clone()),
                        backend_lease: if owned {
                            entry
                                .backend_lease
                                .clone()
                                .map(|l| (entry.backend.clone(), l))
                        } else {
                            None
                        },
                    };
                    let id = lease.id.clone();
                    t.insert(lease);
                    (id, expires_at)
                }
            }
        });
        // Refused: the session ended (or the call was released) while the value was fetched;
        // teardown (or the release) already took, or will never see, what this read made.
        let (lease_id, expires_at) = recorded.map_err(gate_err)?;

        let mut ev = AuditEvent::new("grant", if stale { "ok_stale" } else { "ok" }).caller(caller);
        ev.session = Some(&session.meta.id);
        ev.secret = Some(&spec.name);
        ev.version = Some(&entry.version);
        ev.lease = Some(&lease_id);
        ev.call = req.call_id;
        if let Err(e) = self.audit.record(ev).await {
            self.grants.leases.lock().remove(&lease_id);
            return Err(GrantError::Audit(e));
        }
        let hold = match session.gate.reply(call_key).await {
            Ok(h) => h,
            Err(e) => {
                // Released meanwhile: this request's lease goes too (a closed session's
                // leases are teardown's).
                let mine = self.grants.leases.lock().remove(&lease_id);
                if let Some(l) = mine {
                    self.end_lease(&l, "released").await;
                }
                return Err(gate_err(e).into());
            }
        };
        Ok(Grant {
            entry,
            lease_id,
            expires_at,
            previous,
            stale,
            hold,
        })
    }

    async fn previous_in_grace(
        &self,
        cat: &Catalog,
        spec: &SecretSpec,
        session: &Arc<Session>,
        caller: &PeerIdentity,
        now: SystemTime,
    ) -> Option<(Arc<Entry>, SystemTime)> {
        // A reissued secret's previous credentials belong to their holders; none is shared.
        if cat.backend(&spec.backend).ok()?.reissues(spec) {
            return None;
        }
        let prev = self.rotation.previous_valid(&spec.name, now)?;
        let key = CacheKey {
            secret: spec.name.clone(),
            version: Some(prev.version.clone()),
            scope: ScopeKey::Shared,
        };
        match self
            .entry(cat, spec, session, caller, &key, (None, None, 0))
            .await
        {
            Ok((e, _)) => Some((e, prev.retires_at)),
            Err(e) => {
                tracing::warn!(secret = %spec.name, version = %prev.version, error = %e, "previous version unavailable during grace");
                None
            }
        }
    }

    /// Ends one lease early; a call-scoped credential dies at its backend once no other lease
    /// of the call holds it. Like a revocation, it is final for requests of the call's secret
    /// that began before it: they are refused, and whatever they fetched is revoked.
    pub async fn release_lease(
        &self,
        caller: &PeerIdentity,
        owner: &Owner,
        session_id: &str,
        lease_id: &str,
    ) -> Result<(), GrantError> {
        let session = self
            .sessions
            .get(session_id, owner, self.now())
            .map_err(|e| SessionRefused::new(session_id, e))?;
        let lease = {
            let mut t = self.grants.leases.lock();
            match t.get(lease_id) {
                Some(l) if l.session_id == session_id => t.remove(lease_id),
                // Another session's lease looks like no lease at all.
                _ => None,
            }
        };
        let lease = lease.ok_or_else(|| GrantError::UnknownLease(lease_id.to_string()))?;
        if let Some(c) = &lease.call_id {
            session.gate.release(c, &lease.secret).await;
        }
        self.end_lease(&lease, "released").await;
        let mut ev = AuditEvent::new("lease_release", "ok").caller(caller);
        ev.session = Some(session_id);
        ev.secret = Some(&lease.secret);
        ev.lease = Some(lease_id);
        self.audit.record(ev).await.map_err(GrantError::Audit)
    }

    /// Drops what a lease alone owned: its cache entry and its backend lease.
    pub(in crate::engine) async fn end_lease(&self, lease: &Lease, why: &str) {
        if let Some(key) = &lease.owned_entry {
            let shared_by_other = {
                let t = self.grants.leases.lock();
                t.session_lease_ids(&lease.session_id).iter().any(|id| {
                    t.get(id)
                        .is_some_and(|l| l.owned_entry.as_ref() == Some(key))
                })
            };
            if shared_by_other {
                return;
            }
            // A value fetched again under the same key after this lease began is not this
            // lease's backend lease: it dies too.
            if let Some(e) = self.grants.cache.remove(key) {
                let same = match (&e.backend_lease, &lease.backend_lease) {
                    (Some(a), Some((_, b))) => a.id == b.id,
                    (None, _) => true,
                    (Some(_), None) => false,
                };
                if !same {
                    let cat = self.catalog();
                    if let Ok(b) = cat.backend(&e.backend) {
                        let handle = self.sessions.handle(&lease.session_id, &e.backend);
                        let limit = cat.config.server.backend_timeout;
                        late_revoke(&*b, &e, handle.as_ref(), limit).await;
                    }
                }
            }
        }
        if let Some((backend, bl)) = &lease.backend_lease {
            let cat = self.catalog();
            if let Ok(b) = cat.backend(backend) {
                let handle = self.sessions.handle(&lease.session_id, backend);
                if let Err(e) = self
                    .bounded(backend, b.revoke_lease(bl, handle.as_ref()))
                    .await
                {
                    tracing::warn!(lease = %lease.id, backend = %backend, error = %e, why, "backend lease revocation failed; queued for retry");
                    self.queue_lease_revocation(backend, bl.clone(), handle)
                        .await;
                }
            }
        }
    }

    /// Backend reads made so far, by backend (what single-flight saves shows here).
    pub fn backend_fetches(&self, backend: &str) -> u64 {
        self.grants.calls_counter(backend).load(Ordering::Relaxed)
    }

    /// Drops the shared cached value of `name` (of a pinned `version`, or the current one), so
    /// the next read goes to the backend (the AWS agent API's `refreshNow=true`). A read
    /// already in flight is joined by the next one, so it is not started over. Values issued
    /// per session or call are the caller's own and are not touched. True when one was cached.
    pub fn forget_shared(&self, name: &str, version: Option<&str>) -> bool {
        let key = CacheKey {
            secret: name.to_string(),
            version: version.map(str::to_string),
            scope: ScopeKey::Shared,
        };
        self.grants.cache.remove(&key).is_some()
    }

    /// A lease of `session_id` that is still live.
    pub fn live_lease(&self, session_id: &str, lease_id: &str) -> Option<Lease> {
        let now = self.now();
        self.grants
            .leases
            .lock()
            .get(lease_id)
            .filter(|l| l.session_id == session_id && now < l.expires_at)
            .cloned()
    }

    /// Every open session with the ids of its leases (for ListSessions).
    pub fn sessions_with_leases(&self) -> Vec<(Arc<Session>, Vec<String>)> {
        let leases = self.grants.leases.lock();
        self.sessions
            .list()
            .into_iter()
            .map(|s| {
                let ids = leases.session_lease_ids(&s.meta.id);
                (s, ids)
            })
            .collect()
    }

    /// The version a watcher starts from.
    pub async fn current_version(&self, cat: &Catalog, spec: &SecretSpec) -> String {
        if let Some(v) = self.rotation.current(&spec.name) {
            return v;
        }
        let key = CacheKey {
            secret: spec.name.clone(),
            version: None,
            scope: ScopeKey::Shared,
        };
        if let Lookup::Fresh(e) | Lookup::Stale(e) =
            self.grants
                .cache
                .lookup(&key, self.now(), cat.config.server.stale_window)
        {
            return e.version.clone();
        }
        match cat.backend(&spec.backend) {
            Ok(b) => self
                .bounded(&spec.backend, b.current_version(spec))
                .await
                .ok()
                .flatten()
                .unwrap_or_default(),
            Err(_) => String::new(),
        }
    }
}

/// What the other components may do with the tables grants own.
impl Grants {
    pub(super) fn lease_count(&self) -> usize {
        self.leases.lock().len()
    }

    pub(super) fn cached_count(&self) -> usize {
        self.cache.len()
    }

    /// Takes a closed session's leases and the values it alone owned.
    pub(super) fn remove_session(&self, id: &str) -> (Vec<Lease>, Vec<Arc<Entry>>) {
        let leases = self.leases.lock().remove_session(id);
        (leases, self.cache.remove_session(id))
    }

    pub(super) fn take_expired(&self, now: SystemTime) -> Vec<Lease> {
        self.leases.lock().take_expired(now)
    }

    pub(super) fn shared_current(&self) -> Vec<(CacheKey, Arc<Entry>)> {
        self.cache.shared_current()
    }

    pub(super) fn remove_if_same(&self, key: &CacheKey, entry: &Arc<Entry>) -> bool {
        self.cache.remove_if_same(key, entry)
    }

    pub(super) fn take_secret(&self, secret: &str) -> Vec<(CacheKey, Arc<Entry>)> {
        self.cache.take_secret(secret)
    }

    pub(super) fn remove_current(&self, secret: &str) -> usize {
        self.cache.remove_current(secret)
    }

    pub(super) async fn settle(&self, key: &CacheKey, version: &str) {
        self.cache.settle(key, version).await
    }

    pub(super) fn remove_secret(&self, secret: &str, version: Option<&str>) -> usize {
        self.cache.remove_secret(secret, version)
    }

    pub(super) fn evict_dead(&self, now: SystemTime, stale_window: Duration) -> Vec<Arc<Entry>> {
        self.cache.evict_dead(now, stale_window)
    }

    pub(super) fn due_for_renewal(&self, now: SystemTime) -> Vec<(CacheKey, Arc<Entry>)> {
        self.cache.due_for_renewal(now)
    }

    fn calls_counter(&self, backend: &str) -> Arc<AtomicU64> {
        self.backend_calls
            .lock()
            .entry(backend.to_string())
            .or_default()
            .clone()
    }
}
