//! Reads behind a grant: cache lookup, single-flight backend fetch, stale serving, background
//! refresh, and revoking what a read made after its session or call ended.

use super::CertIdent;
use super::GrantError;
use crate::backend::SecretSpec;
use crate::backend::{Backend, BackendError, FetchRequest, SessionHandle};
use crate::clock::renew_at;
use crate::engine::{Catalog, Engine};
use crate::error::{BackendFailure, GateRefused};
use crate::lease::cache::{CacheKey, Entry, Lookup, ScopeKey};
use crate::metrics::METRICS;
use crate::session::Session;
use futures::FutureExt;
use sidecred_core::identity::PeerIdentity;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

impl Engine {
    /// Cache lookup, single-flight fetch on a miss, stale-on-transient-error.
    pub(super) async fn entry(
        &self,
        cat: &Catalog,
        spec: &SecretSpec,
        session: &Arc<Session>,
        caller: &PeerIdentity,
        key: &CacheKey,
        ident: CertIdent<'_>,
    ) -> Result<(Arc<Entry>, bool), GrantError> {
        let now = self.now();
        let window = cat.config.server.stale_window;
        let stale = match self.grants.cache.lookup(key, now, window) {
            Lookup::Fresh(e) => {
                METRICS.cache_hits.inc();
                if key.scope == ScopeKey::Shared
                    && e.backend_lease.is_none()
                    && e.claim_refresh(now, spec.ttl / 4)
                {
                    self.refresh_in_background(cat, spec, session, caller, key);
                }
                return Ok((e, false));
            }
            Lookup::Stale(e) => Some(e),
            Lookup::Miss => None,
        };
        METRICS.cache_misses.inc();
        let fetch = self.fetch_future(cat, spec, session, caller, key, ident)?;
        // Values owned by a session or call are stored by the fetch itself, through the gate.
        let store = key.scope == ScopeKey::Shared;
        let (res, _) = self
            .grants
            .cache
            .fetch_once(key.clone(), fetch, store)
            .await;
        match (res, stale) {
            (Ok(e), _) => Ok((e, false)),
            (Err(err), Some(old)) if err.is_transient() => {
                if first_this_second(now) {
                    tracing::warn!(secret = %spec.name, version = %old.version, error = %err, "serving stale value: backend unavailable");
                }
                METRICS.cache_stale.inc();
                Ok((old, true))
            }
            (Err(BackendError::Precondition(m)), _) if m == GATE_RELEASED => {
                Err(GateRefused::new(&session.meta.id, crate::session::GateError::Released).into())
            }
            (Err(_), _) if !session.gate.is_open() => {
                Err(GateRefused::new(&session.meta.id, crate::session::GateError::Closed).into())
            }
            (Err(err), _) => {
                if !err.is_transient() || first_this_second(now) {
                    tracing::warn!(secret = %spec.name, backend = %spec.backend, error = %err, "backend read failed");
                }
                // Sidecred's own backends (CA, dev) speak for themselves; a remote backend's
                // text stays in the log.
                let local = cat
                    .backends
                    .get(&spec.backend)
                    .is_some_and(|b| matches!(b.kind(), "ca" | "dev"));
                Err(if local {
                    BackendFailure::admin(&spec.name, err)
                } else {
                    BackendFailure::workload(&spec.name, &spec.backend, err)
                }
                .into())
            }
        }
    }

    fn refresh_in_background(
        &self,
        cat: &Catalog,
        spec: &SecretSpec,
        session: &Arc<Session>,
        caller: &PeerIdentity,
        key: &CacheKey,
    ) {
        if let Ok(fetch) = self.fetch_future(cat, spec, session, caller, key, (None, None, 0)) {
            let cache = self.grants.cache.clone();
            let key = key.clone();
            tokio::spawn(async move {
                if let (Err(e), _) = cache.fetch_once(key, fetch, true).await {
                    tracing::debug!(error = %e, "background refresh failed; keeping the cached value");
                }
            });
        }
    }

    /// Builds the one backend read for a key, owning everything it needs.
    fn fetch_future(
        &self,
        cat: &Catalog,
        spec: &SecretSpec,
        session: &Arc<Session>,
        caller: &PeerIdentity,
        key: &CacheKey,
        (spiffe_id, sans, seen): CertIdent<'_>,
    ) -> Result<futures::future::BoxFuture<'static, crate::lease::cache::FetchResult>, GrantError>
    {
        let backend = cat.backend(&spec.backend)?;
        let spec = spec.clone();
        let meta = session.meta.clone();
        let handle: Option<SessionHandle> = session.handles.lock().get(&spec.backend).cloned();
        let caller = caller.clone();
        let call_id = match &key.scope {
            ScopeKey::Call(_, c) => Some(c.clone()),
            _ => None,
        };
        let version = key.version.clone();
        let spiffe = spiffe_id.map(str::to_string);
        let sans = sans.cloned();
        let counter = self.grants.calls_counter(&spec.backend);
        let clock = self.clock.clone();
        let limit = cat.config.server.backend_timeout;
        // Session- and call-owned values go into the cache only while the gate is open.
        let gated = (key.scope != ScopeKey::Shared).then(|| (session.gate.clone(), key.clone()));
        let cache = self.grants.cache.clone();
        let hold = cat.config.server.test_hold_dir.clone();
        Ok(async move {
            counter.fetch_add(1, Ordering::Relaxed);
            let started = Instant::now();
            let req = FetchRequest {
                spec: &spec,
                session: &meta,
                handle: handle.as_ref(),
                call_id: call_id.as_deref(),
                version: version.as_deref(),
                caller: &caller,
                spiffe_id: spiffe.as_deref(),
                sans: sans.as_ref(),
            };
            let f = tokio::time::timeout(limit, backend.fetch(&req)).await;
            METRICS.backend_call(&spec.backend, "fetch", started.elapsed());
            let f = match f {
                Ok(r) => r?,
                Err(_) => {
                    return Err(BackendError::Unavailable(format!(
                        "`{}`: no answer within {limit:?}",
                        spec.backend
                    )))
                }
            };
            if let Some(dir) = hold {
                test_hold(&dir).await;
            }
            let now = clock.now();
            let life = match &f.lease {
                Some(l) => l.ttl,
                None => spec.ttl,
            };
            let r: f64 = rand::random();
            let refresh = match &f.lease {
                Some(_) => renew_at(now, life, 0.66, 0.1, r),
                None => renew_at(now, life, 0.75, 0.1, r),
            };
            let entry = Arc::new(Entry::new(
                f.value,
                f.version,
                now,
                life,
                refresh,
                f.lease,
                spec.backend.clone(),
            ));
            let Some((gate, key)) = gated else {
                return Ok(entry);
            };
            let call = match &key.scope {
                ScopeKey::Call(_, c) => Some((c.as_str(), spec.name.as_str(), seen)),
                _ => None,
            };
            if let Err(e) = gate.record(call, || cache.insert(key.clone(), entry.clone())) {
                // Too late: the session ended (or the call was released) during the read.
                // What the read made dies at its backend now; the value drops and zeroizes.
                late_revoke(&*backend, &entry, handle.as_ref(), limit).await;
                tracing::info!(secret = %spec.name, session = %meta.id, "a read that finished after its session ended was revoked");
                return Err(BackendError::Precondition(match e {
                    crate::session::GateError::Released => GATE_RELEASED.into(),
                    _ => GATE_CLOSED.into(),
                }));
            }
            Ok(entry)
        }
        .boxed())
    }
}

/// Revokes what a read made for a session or call that ended meanwhile: its backend lease (a
/// database role, or a CA serial that goes to the deny list). A failure is logged; the value
/// itself drops and zeroizes either way.
pub(super) async fn late_revoke(
    backend: &dyn Backend,
    entry: &Entry,
    handle: Option<&SessionHandle>,
    limit: Duration,
) {
    let Some(bl) = &entry.backend_lease else {
        return;
    };
    match tokio::time::timeout(limit, backend.revoke_lease(bl, handle)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::warn!(lease = %bl.id, backend = %entry.backend, error = %e, "could not revoke a late credential; it lives out its ttl")
        }
        Err(_) => {
            tracing::warn!(lease = %bl.id, backend = %entry.backend, "revoking a late credential timed out; it lives out its ttl")
        }
    }
}

/// What a fetch refused by its session's gate reports through the single-flight result (which
/// carries backend errors only); `entry` turns it back into the gate's error.
const GATE_RELEASED: &str = "the call's lease was released during the read";
const GATE_CLOSED: &str = "the session ended during the read";

/// The race hook (`server.test_hold_dir`): parks a backend answer while `<dir>/hold` exists,
/// so a test can end the session at exactly this point. Bounded at 30 s.
async fn test_hold(dir: &std::path::Path) {
    let hold = dir.join("hold");
    if !hold.exists() {
        return;
    }
    let _ = tokio::fs::write(dir.join("held"), b"").await;
    for _ in 0..6000 {
        if !hold.exists() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The panic hook (`server.test_hold_dir`): panics while `<dir>/panic` exists, at a point where
/// the request holds the session's gate and the lease table, to prove a panic poisons nothing.
pub(super) fn test_panic(dir: Option<&std::path::Path>) {
    if dir.is_some_and(|d| d.join("panic").exists()) {
        panic!("test hook: panic while recording a lease");
    }
}

/// True for the first call in each wall-clock second: an outage under load would otherwise log
/// a line per read.
fn first_this_second(now: SystemTime) -> bool {
    static LAST: AtomicU64 = AtomicU64::new(0);
    let s = crate::clock::unix_secs(now) as u64;
    LAST.swap(s, Ordering::Relaxed) != s
}
