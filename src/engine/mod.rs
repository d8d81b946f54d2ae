//! The broker core: sessions, leases, the cache and the backends, wired together.
//! The API layer checks policy and calls in here; this module never sees gRPC types.

mod ops;
mod recheck;
mod retirements;
mod revoke;
mod rotate;
mod scheduler;
mod sweep;

pub use ops::{RevocationReport, Step};
pub use rotate::RotateOutcome;

use crate::api::error::ApiError;
use crate::api::peer::PeerIdentity;
use crate::audit::{Audit, AuditEvent};
use crate::backend::{Backend, BackendError, FetchRequest, SessionHandle, SessionMeta};
use crate::clock::{renew_at, Clock};
use crate::config::{Config, Scope, SecretSpec};
use crate::lease::cache::{Cache, CacheKey, Entry, Lookup, ScopeKey};
use crate::lease::{Lease, LeaseTable};
use crate::metrics::{Gauges, METRICS};
use crate::rotation::RotationState;
use crate::session::{new_id, Gate, Owner, Session, Sessions};
use futures::FutureExt;
use parking_lot::{Mutex, RwLock};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::broadcast;

/// Config plus the backends built from it; swapped whole on reload.
pub struct Catalog {
    pub config: Config,
    pub backends: BTreeMap<String, Arc<dyn Backend>>,
    pub generation: u64,
}

impl Catalog {
    pub async fn build(config: Config, generation: u64) -> Result<Catalog, String> {
        let mut backends = BTreeMap::new();
        for (name, b) in &config.backends {
            let built = b
                .build(name, config.server.backend_timeout)
                .await
                .map_err(|e| format!("backend `{name}`: {e}"))?;
            backends.insert(name.clone(), built);
        }
        Ok(Catalog {
            config,
            backends,
            generation,
        })
    }

    /// A catalog for a reloaded config. CA backends carry state no config holds (generated keys,
    /// the deny list, issued serials), so they carry over as they are; changing one's settings
    /// needs a restart. Other backends are built anew.
    pub async fn rebuild(config: Config, old: &Catalog) -> Result<Catalog, String> {
        let mut backends = BTreeMap::new();
        for (name, b) in &config.backends {
            let before = old.config.backends.get(name);
            let kept = old.backends.get(name).filter(|_| b.kind() == "ca");
            let built = match (before, kept) {
                (Some(prev), Some(running)) if format!("{prev:?}") == format!("{b:?}") => {
                    running.clone()
                }
                (Some(_), Some(_)) => {
                    return Err(format!(
                        "backends.{name}: a CA backend's settings cannot change on reload (it \
                         holds keys and a deny list); restart to change them"
                    ))
                }
                _ => b
                    .build(name, config.server.backend_timeout)
                    .await
                    .map_err(|e| format!("backend `{name}`: {e}"))?,
            };
            backends.insert(name.clone(), built);
        }
        for (name, b) in &old.config.backends {
            if b.kind() == "ca" && !config.backends.contains_key(name) {
                return Err(format!(
                    "backends.{name}: a CA backend cannot be removed on reload; restart to remove it"
                ));
            }
        }
        Ok(Catalog {
            config,
            backends,
            generation: old.generation + 1,
        })
    }

    pub fn secret(&self, name: &str) -> Result<&SecretSpec, ApiError> {
        self.config
            .secrets
            .get(name)
            .ok_or_else(|| ApiError::NotFound(format!("unknown secret `{name}`")))
    }

    fn backend(&self, name: &str) -> Result<Arc<dyn Backend>, ApiError> {
        self.backends
            .get(name)
            .cloned()
            .ok_or_else(|| ApiError::Internal(format!("backend `{name}` is not running")))
    }
}

/// A change to one secret, pushed to watchers.
#[derive(Clone, Debug)]
pub struct WatchEvent {
    pub kind: WatchKind,
    pub version: String,
    pub previous_version: String,
    pub previous_retires_at: Option<SystemTime>,
    pub at: SystemTime,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WatchKind {
    Current,
    Rotated,
    Retired,
    Changed,
}

/// The caller's SPIFFE ID and allowed SANs, for certificate issuers, and the release count a
/// call-scoped request saw at its start (see `session::Gate`).
type CertIdent<'a> = (Option<&'a str>, Option<&'a crate::policy::SanPolicy>, u64);

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
    pub sans: Option<&'a crate::policy::SanPolicy>,
}

pub struct Engine {
    pub(crate) clock: Arc<dyn Clock>,
    catalog: RwLock<Arc<Catalog>>,
    pub(crate) sessions: Sessions,
    pub(crate) leases: Mutex<LeaseTable>,
    pub(crate) cache: Arc<Cache>,
    pub(crate) rotations: Mutex<HashMap<String, RotationState>>,
    watchers: Mutex<HashMap<String, broadcast::Sender<WatchEvent>>>,
    pub audit: Audit,
    pub(crate) pending: Mutex<Vec<ops::Pending>>,
    backend_calls: Mutex<HashMap<String, Arc<AtomicU64>>>,
    pub(crate) started: Instant,
    pub(crate) config_error: Mutex<Option<String>>,
    pub(crate) rechecks: recheck::Rechecks,
    pub(crate) rotation: rotate::RotationCtl,
    /// Set once at start when `[fleet]` is configured.
    pub(crate) fleet: std::sync::OnceLock<Arc<crate::fleet::Fleet>>,
    /// Set once at start when `server.state_dir` is configured.
    pub(crate) journal: std::sync::OnceLock<crate::journal::Journal>,
}

impl Engine {
    pub fn new(catalog: Catalog, clock: Arc<dyn Clock>, audit: Audit) -> Arc<Engine> {
        Arc::new(Engine {
            clock,
            catalog: RwLock::new(Arc::new(catalog)),
            sessions: Sessions::default(),
            leases: Mutex::new(LeaseTable::default()),
            cache: Arc::new(Cache::default()),
            rotations: Mutex::new(HashMap::new()),
            watchers: Mutex::new(HashMap::new()),
            audit,
            pending: Mutex::new(Vec::new()),
            backend_calls: Mutex::new(HashMap::new()),
            started: Instant::now(),
            config_error: Mutex::new(None),
            rechecks: recheck::Rechecks::default(),
            rotation: rotate::RotationCtl::default(),
            fleet: std::sync::OnceLock::new(),
            journal: std::sync::OnceLock::new(),
        })
    }

    /// The current config and backends (one snapshot per request).
    pub fn catalog(&self) -> Arc<Catalog> {
        self.catalog.read().clone()
    }

    /// Swaps in a reloaded catalog; open sessions and leases carry over.
    pub fn swap_catalog(&self, c: Catalog) {
        *self.catalog.write() = Arc::new(c);
        *self.config_error.lock() = None;
    }

    /// Gauges for a metrics scrape.
    pub fn gauges(&self) -> Gauges {
        Gauges {
            sessions: self.sessions.count() as u64,
            leases: self.leases.lock().len() as u64,
            cached_values: self.cache.len() as u64,
            watches: self.watch_count() as u64,
            journal_backlog: self.pending_count() as u64,
            config_generation: self.catalog().generation,
        }
    }

    pub fn now(&self) -> SystemTime {
        self.clock.now()
    }

    fn calls_counter(&self, backend: &str) -> Arc<AtomicU64> {
        self.backend_calls
            .lock()
            .entry(backend.to_string())
            .or_default()
            .clone()
    }

    /// Backend reads made so far, by backend (what single-flight saves shows here).
    pub fn backend_fetches(&self, backend: &str) -> u64 {
        self.calls_counter(backend).load(Ordering::Relaxed)
    }

    /// Runs a backend call under the configured timeout.
    pub(crate) async fn bounded<T>(
        &self,
        what: &str,
        fut: impl std::future::Future<Output = Result<T, BackendError>>,
    ) -> Result<T, BackendError> {
        let limit = self.catalog().config.server.backend_timeout;
        match tokio::time::timeout(limit, fut).await {
            Ok(r) => r,
            Err(_) => Err(BackendError::Unavailable(format!(
                "{what}: no answer within {limit:?}"
            ))),
        }
    }

    pub async fn open_session(
        &self,
        caller: &PeerIdentity,
        owner: Owner,
        ttl: Option<Duration>,
        labels: BTreeMap<String, String>,
    ) -> Result<Arc<Session>, ApiError> {
        let cat = self.catalog();
        let s = &cat.config.server;
        let ttl = ttl.unwrap_or(s.default_session_ttl);
        if ttl > s.max_session_ttl {
            return Err(ApiError::InvalidArgument(format!(
                "ttl {}s exceeds the maximum session ttl {}s",
                ttl.as_secs(),
                s.max_session_ttl.as_secs()
            )));
        }
        if labels.len() > 32
            || labels
                .iter()
                .any(|(k, v)| k.is_empty() || k.len() > 63 || v.len() > 256)
        {
            return Err(ApiError::InvalidArgument(
                "labels: at most 32, keys 1-63 bytes, values at most 256 bytes".into(),
            ));
        }
        let cap = s.max_sessions_per_identity;
        if self.sessions.count_owned(&owner) >= cap {
            return Err(ApiError::Exhausted(format!(
                "this caller already holds {cap} open sessions (server.max_sessions_per_identity)"
            )));
        }
        let now = self.now();
        let meta = SessionMeta {
            id: new_id("ses"),
            labels,
            ttl,
        };
        let mut handles = BTreeMap::new();
        for (name, b) in &cat.backends {
            match self.bounded(name, b.open_session(&meta)).await {
                Ok(Some(h)) => {
                    handles.insert(name.clone(), h);
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(backend = %name, session = %meta.id, error = %e, "backend could not open session state; dynamic reads from it will fail")
                }
            }
        }
        self.record_session(&meta, &handles, now + ttl).await;
        let session = self.sessions.insert(Session {
            meta,
            owner,
            opened_at: now,
            expires_at: now + ttl,
            handles: Mutex::new(handles),
            gate: Arc::new(Gate::default()),
        });
        let mut ev = AuditEvent::new("session_open", "ok").caller(caller);
        ev.session = Some(&session.meta.id);
        if !session.meta.labels.is_empty() {
            ev.labels = Some(std::borrow::Cow::Borrowed(&session.meta.labels));
        }
        if let Err(e) = self.audit.record(ev).await {
            self.teardown(&session, "audit failure").await;
            return Err(ApiError::Unavailable(e.to_string()));
        }
        Ok(session)
    }

    /// Hands out one credential under a lease. Policy has already allowed it.
    pub async fn get_secret(
        &self,
        cat: &Catalog,
        spec: &SecretSpec,
        caller: &PeerIdentity,
        req: GetRequest<'_>,
    ) -> Result<Grant, ApiError> {
        let now = self.now();
        let session = self
            .sessions
            .get(req.session_id, req.owner, now)
            .map_err(|e| ApiError::from_session(req.session_id, e))?;
        let gate_err = |e| ApiError::from_gate(req.session_id, e);
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
            (Scope::Call, None) => {
                return Err(ApiError::InvalidArgument(format!(
                    "secret `{}` is call-scoped: set call_id",
                    spec.name
                )))
            }
        };
        if req.version.is_some() && scope != ScopeKey::Shared {
            return Err(ApiError::InvalidArgument(format!(
                "secret `{}` is issued per session or call; it has no versions to pin",
                spec.name
            )));
        }
        let retired = |v: &str| {
            ApiError::NotFound(format!(
                "secret `{}`: version `{v}` was retired and is no longer served",
                spec.name
            ))
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
            let mut t = self.leases.lock();
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
            self.leases.lock().remove(&lease_id);
            return Err(ApiError::Unavailable(e.to_string()));
        }
        let hold = match session.gate.reply(call_key).await {
            Ok(h) => h,
            Err(e) => {
                // Released meanwhile: this request's lease goes too (a closed session's
                // leases are teardown's).
                let mine = self.leases.lock().remove(&lease_id);
                if let Some(l) = mine {
                    self.end_lease(&l, "released").await;
                }
                return Err(gate_err(e));
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
        let prev = {
            let rot = self.rotations.lock();
            rot.get(&spec.name)?.previous_valid(now)?.clone()
        };
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

    /// Cache lookup, single-flight fetch on a miss, stale-on-transient-error.
    async fn entry(
        &self,
        cat: &Catalog,
        spec: &SecretSpec,
        session: &Arc<Session>,
        caller: &PeerIdentity,
        key: &CacheKey,
        ident: CertIdent<'_>,
    ) -> Result<(Arc<Entry>, bool), ApiError> {
        let now = self.now();
        let window = cat.config.server.stale_window;
        let stale = match self.cache.lookup(key, now, window) {
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
        let (res, _) = self.cache.fetch_once(key.clone(), fetch, store).await;
        match (res, stale) {
            (Ok(e), _) => Ok((e, false)),
            (Err(err), Some(old)) if err.is_transient() => {
                if first_this_second(now) {
                    tracing::warn!(secret = %spec.name, version = %old.version, error = %err, "serving stale value: backend unavailable");
                }
                METRICS.cache_stale.inc();
                Ok((old, true))
            }
            (Err(BackendError::Precondition(m)), _) if m == GATE_RELEASED => Err(
                ApiError::from_gate(&session.meta.id, crate::session::GateError::Released),
            ),
            (Err(_), _) if !session.gate.is_open() => Err(ApiError::from_gate(
                &session.meta.id,
                crate::session::GateError::Closed,
            )),
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
                    ApiError::from_backend(&spec.name, err)
                } else {
                    ApiError::for_workload(&spec.name, &spec.backend, &err)
                })
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
            let cache = self.cache.clone();
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
    ) -> Result<futures::future::BoxFuture<'static, crate::lease::cache::FetchResult>, ApiError>
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
        let counter = self.calls_counter(&spec.backend);
        let clock = self.clock.clone();
        let limit = cat.config.server.backend_timeout;
        // Session- and call-owned values go into the cache only while the gate is open.
        let gated = (key.scope != ScopeKey::Shared).then(|| (session.gate.clone(), key.clone()));
        let cache = self.cache.clone();
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

    /// Ends one lease early; a call-scoped credential dies at its backend once no other lease
    /// of the call holds it. Like a revocation, it is final for requests of the call's secret
    /// that began before it: they are refused, and whatever they fetched is revoked.
    pub async fn release_lease(
        &self,
        caller: &PeerIdentity,
        owner: &Owner,
        session_id: &str,
        lease_id: &str,
    ) -> Result<(), ApiError> {
        let session = self
            .sessions
            .get(session_id, owner, self.now())
            .map_err(|e| ApiError::from_session(session_id, e))?;
        let lease = {
            let mut t = self.leases.lock();
            match t.get(lease_id) {
                Some(l) if l.session_id == session_id => t.remove(lease_id),
                // Another session's lease looks like no lease at all.
                _ => None,
            }
        };
        let lease = lease
            .ok_or_else(|| ApiError::NotFound(format!("no lease `{lease_id}` in this session")))?;
        if let Some(c) = &lease.call_id {
            session.gate.release(c, &lease.secret).await;
        }
        self.end_lease(&lease, "released").await;
        let mut ev = AuditEvent::new("lease_release", "ok").caller(caller);
        ev.session = Some(session_id);
        ev.secret = Some(&lease.secret);
        ev.lease = Some(lease_id);
        self.audit
            .record(ev)
            .await
            .map_err(|e| ApiError::Unavailable(e.to_string()))
    }

    /// Drops what a lease alone owned: its cache entry and its backend lease.
    pub(crate) async fn end_lease(&self, lease: &Lease, why: &str) {
        if let Some(key) = &lease.owned_entry {
            let shared_by_other = {
                let t = self.leases.lock();
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
            if let Some(e) = self.cache.remove(key) {
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

    pub fn subscribe(&self, secret: &str) -> broadcast::Receiver<WatchEvent> {
        self.watchers
            .lock()
            .entry(secret.to_string())
            .or_insert_with(|| broadcast::channel(64).0)
            .subscribe()
    }

    /// Open WatchSecret streams (each holds one receiver until its stream ends).
    pub fn watch_count(&self) -> usize {
        let w = self.watchers.lock();
        w.values().map(|tx| tx.receiver_count()).sum()
    }

    pub(crate) fn notify(&self, secret: &str, ev: WatchEvent) {
        if let Some(tx) = self.watchers.lock().get(secret) {
            let _ = tx.send(ev);
        }
    }

    /// The version a watcher starts from.
    pub async fn current_version(&self, cat: &Catalog, spec: &SecretSpec) -> String {
        if let Some(v) = self
            .rotations
            .lock()
            .get(&spec.name)
            .and_then(|r| r.current.clone())
        {
            return v;
        }
        let key = CacheKey {
            secret: spec.name.clone(),
            version: None,
            scope: ScopeKey::Shared,
        };
        if let Lookup::Fresh(e) | Lookup::Stale(e) =
            self.cache
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

/// Revokes what a read made for a session or call that ended meanwhile: its backend lease (a
/// database role, or a CA serial that goes to the deny list). A failure is logged; the value
/// itself drops and zeroizes either way.
async fn late_revoke(
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
fn test_panic(dir: Option<&std::path::Path>) {
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
