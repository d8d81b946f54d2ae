//! Value cache with single-flight: concurrent misses on one key share one backend call.
//! Entries drop (and so zeroize) when evicted and no reply still holds them.

use crate::backend::{BackendError, BackendLease};
use crate::clock::{from_millis, unix_millis};
use crate::secret::SecretBytes;
use futures::future::{BoxFuture, FutureExt, Shared};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Who may share a cached value.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub enum ScopeKey {
    Shared,
    Session(String),
    Call(String, String),
}

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct CacheKey {
    pub secret: String,
    /// A pinned version; None for the current one.
    pub version: Option<String>,
    pub scope: ScopeKey,
}

#[derive(Debug)]
pub struct Entry {
    pub value: SecretBytes,
    pub version: String,
    pub fetched_at: SystemTime,
    fresh_until_ms: AtomicU64,
    refresh_at_ms: AtomicU64,
    pub backend_lease: Option<BackendLease>,
    /// Backend that produced it, for renew and revoke.
    pub backend: String,
}

impl Entry {
    pub fn new(
        value: SecretBytes,
        version: String,
        fetched_at: SystemTime,
        life: Duration,
        refresh_at: SystemTime,
        backend_lease: Option<BackendLease>,
        backend: String,
    ) -> Self {
        Self {
            value,
            version,
            fetched_at,
            fresh_until_ms: AtomicU64::new(unix_millis(fetched_at + life)),
            refresh_at_ms: AtomicU64::new(unix_millis(refresh_at)),
            backend_lease,
            backend,
        }
    }

    pub fn fresh_until(&self) -> SystemTime {
        from_millis(self.fresh_until_ms.load(Ordering::Relaxed))
    }

    pub fn refresh_at(&self) -> SystemTime {
        from_millis(self.refresh_at_ms.load(Ordering::Relaxed))
    }

    /// Extends the entry after a backend renewal.
    pub fn extend(&self, fresh_until: SystemTime, refresh_at: SystemTime) {
        self.fresh_until_ms
            .store(unix_millis(fresh_until), Ordering::Relaxed);
        self.refresh_at_ms
            .store(unix_millis(refresh_at), Ordering::Relaxed);
    }

    /// Pushes the next refresh out so only one background refresh starts.
    pub fn claim_refresh(&self, now: SystemTime, retry_in: Duration) -> bool {
        let at = self.refresh_at_ms.load(Ordering::Relaxed);
        at <= unix_millis(now)
            && self
                .refresh_at_ms
                .compare_exchange(
                    at,
                    unix_millis(now + retry_in),
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                )
                .is_ok()
    }
}

pub type FetchResult = Result<Arc<Entry>, BackendError>;
type Inflight = Shared<BoxFuture<'static, FetchResult>>;

/// Removes a key from the in-flight table when its fetch ends or unwinds.
struct InflightDone(Arc<Cache>, CacheKey);

impl Drop for InflightDone {
    fn drop(&mut self) {
        self.0.inflight.lock().remove(&self.1);
    }
}

#[derive(Default)]
pub struct Cache {
    entries: Mutex<HashMap<CacheKey, Arc<Entry>>>,
    inflight: Mutex<HashMap<CacheKey, Inflight>>,
}

/// What a lookup found.
pub enum Lookup {
    Fresh(Arc<Entry>),
    /// Past its life but inside the stale window: usable only if the backend fails transiently.
    Stale(Arc<Entry>),
    Miss,
}

impl Cache {
    pub fn lookup(&self, key: &CacheKey, now: SystemTime, stale_window: Duration) -> Lookup {
        let entries = self.entries.lock();
        match entries.get(key) {
            Some(e) if now < e.fresh_until() => Lookup::Fresh(e.clone()),
            Some(e) if now < e.fresh_until() + stale_window => Lookup::Stale(e.clone()),
            _ => Lookup::Miss,
        }
    }

    /// Runs `fetch` unless an identical one is in flight, then stores its result (unless
    /// `store` is false: the fetch stores it itself, under its session's gate).
    /// Returns the result and whether this call was the one that went to the backend.
    pub async fn fetch_once(
        self: &Arc<Self>,
        key: CacheKey,
        fetch: BoxFuture<'static, FetchResult>,
        store: bool,
    ) -> (FetchResult, bool) {
        let (fut, leader) = {
            let mut inflight = self.inflight.lock();
            match inflight.get(&key) {
                Some(f) => (f.clone(), false),
                None => {
                    let cache = self.clone();
                    let k = key.clone();
                    let fut = async move {
                        // Leaves the in-flight table however the fetch ends, a panic included:
                        // a stuck entry would hand every later caller the same dead future.
                        let _done = InflightDone(cache.clone(), k.clone());
                        let r = fetch.await;
                        if let (Ok(e), true) = (&r, store) {
                            cache.entries.lock().insert(k.clone(), e.clone());
                        }
                        r
                    }
                    .boxed()
                    .shared();
                    inflight.insert(key, fut.clone());
                    (fut, true)
                }
            }
        };
        (fut.await, leader)
    }

    pub fn insert(&self, key: CacheKey, entry: Arc<Entry>) {
        self.entries.lock().insert(key, entry);
    }

    pub fn remove(&self, key: &CacheKey) -> Option<Arc<Entry>> {
        self.entries.lock().remove(key)
    }

    /// Removes the entry only if it is still `entry` (not replaced by a newer fetch).
    pub fn remove_if_same(&self, key: &CacheKey, entry: &Arc<Entry>) -> bool {
        let mut entries = self.entries.lock();
        if entries.get(key).is_some_and(|e| Arc::ptr_eq(e, entry)) {
            entries.remove(key);
            return true;
        }
        false
    }

    /// Shared entries of current versions (not pinned ones): what change detection re-validates.
    pub fn shared_current(&self) -> Vec<(CacheKey, Arc<Entry>)> {
        let entries = self.entries.lock();
        entries
            .iter()
            .filter(|(k, _)| k.scope == ScopeKey::Shared && k.version.is_none())
            .map(|(k, e)| (k.clone(), e.clone()))
            .collect()
    }

    /// Removes every entry of one secret (all scopes) and returns them: a rotation of a
    /// secret issued per read replaces them all at their next read.
    pub fn take_secret(&self, secret: &str) -> Vec<(CacheKey, Arc<Entry>)> {
        let mut entries = self.entries.lock();
        let keys: Vec<CacheKey> = entries
            .keys()
            .filter(|k| k.secret == secret)
            .cloned()
            .collect();
        keys.into_iter()
            .filter_map(|k| entries.remove(&k).map(|e| (k, e)))
            .collect()
    }

    /// Evicts the current-version entries of one secret in every scope (pinned versions stay):
    /// after a rotation each holder gets the new version at its next read.
    pub fn remove_current(&self, secret: &str) -> usize {
        let mut entries = self.entries.lock();
        let before = entries.len();
        entries.retain(|k, _| !(k.secret == secret && k.version.is_none()));
        before - entries.len()
    }

    /// After a rotation: waits for a read of `key` that was already in flight (it may carry
    /// the version before the rotation), then evicts whatever is cached unless it is `version`.
    pub async fn settle(&self, key: &CacheKey, version: &str) {
        let inflight = self.inflight.lock().get(key).cloned();
        if let Some(f) = inflight {
            let _ = f.await;
        }
        let mut entries = self.entries.lock();
        if entries.get(key).is_some_and(|e| e.version != version) {
            entries.remove(key);
        }
    }

    /// Evicts every entry of one secret, optionally only one version.
    pub fn remove_secret(&self, secret: &str, version: Option<&str>) -> usize {
        let mut entries = self.entries.lock();
        let before = entries.len();
        entries.retain(|k, e| !(k.secret == secret && version.is_none_or(|v| e.version == v)));
        before - entries.len()
    }

    /// Evicts every entry scoped to a session (its own and its calls').
    pub fn remove_session(&self, session: &str) -> Vec<Arc<Entry>> {
        let mut entries = self.entries.lock();
        let keys: Vec<CacheKey> = entries
            .keys()
            .filter(|k| match &k.scope {
                ScopeKey::Session(s) | ScopeKey::Call(s, _) => s == session,
                ScopeKey::Shared => false,
            })
            .cloned()
            .collect();
        keys.iter().filter_map(|k| entries.remove(k)).collect()
    }

    /// Evicts entries past their stale window; returns them so backend leases can be revoked.
    pub fn evict_dead(&self, now: SystemTime, stale_window: Duration) -> Vec<Arc<Entry>> {
        let mut entries = self.entries.lock();
        let keys: Vec<CacheKey> = entries
            .iter()
            .filter(|(_, e)| now >= e.fresh_until() + stale_window)
            .map(|(k, _)| k.clone())
            .collect();
        keys.iter().filter_map(|k| entries.remove(k)).collect()
    }

    /// Entries holding renewable backend leases whose renewal time has come.
    pub fn due_for_renewal(&self, now: SystemTime) -> Vec<(CacheKey, Arc<Entry>)> {
        let entries = self.entries.lock();
        entries
            .iter()
            .filter(|(_, e)| {
                e.backend_lease.as_ref().is_some_and(|l| l.renewable) && now >= e.refresh_at()
            })
            .map(|(k, e)| (k.clone(), e.clone()))
            .collect()
    }

    pub fn len(&self) -> usize {
        self.entries.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    fn key() -> CacheKey {
        CacheKey {
            secret: "s".into(),
            version: None,
            scope: ScopeKey::Shared,
        }
    }

    #[tokio::test]
    async fn concurrent_misses_share_one_fetch() {
        let cache = Arc::new(Cache::default());
        let calls = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..50 {
            let (cache, calls) = (cache.clone(), calls.clone());
            tasks.push(tokio::spawn(async move {
                let c = calls.clone();
                let fetch = async move {
                    c.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    let now = SystemTime::now();
                    Ok(Arc::new(Entry::new(
                        SecretBytes::new(b"v".to_vec()),
                        "1".into(),
                        now,
                        Duration::from_secs(60),
                        now,
                        None,
                        "dev".into(),
                    )))
                }
                .boxed();
                cache
                    .fetch_once(key(), fetch, true)
                    .await
                    .0
                    .unwrap()
                    .version
                    .clone()
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap(), "1");
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(cache.len(), 1);
    }

    #[tokio::test]
    async fn a_fetch_that_panics_does_not_stick() {
        let cache = Arc::new(Cache::default());
        let c = cache.clone();
        let panicked = tokio::spawn(async move {
            let fetch = async { panic!("backend bug") }.boxed();
            c.fetch_once(key(), fetch, true).await
        })
        .await;
        assert!(panicked.unwrap_err().is_panic());
        // The next caller gets a fetch of its own, not the dead one.
        let now = SystemTime::now();
        let fetch = async move {
            Ok(Arc::new(Entry::new(
                SecretBytes::new(b"v".to_vec()),
                "2".into(),
                now,
                Duration::from_secs(60),
                now,
                None,
                "dev".into(),
            )))
        }
        .boxed();
        let (r, leader) = cache.fetch_once(key(), fetch, true).await;
        assert!(leader);
        assert_eq!(r.unwrap().version, "2");
    }

    #[test]
    fn lookup_phases() {
        let cache = Cache::default();
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let e = Entry::new(
            SecretBytes::new(b"v".to_vec()),
            "1".into(),
            t0,
            Duration::from_secs(10),
            t0,
            None,
            "dev".into(),
        );
        cache.entries.lock().insert(key(), Arc::new(e));
        let w = Duration::from_secs(5);
        let at = |s| t0 + Duration::from_secs(s);
        assert!(matches!(cache.lookup(&key(), at(9), w), Lookup::Fresh(_)));
        assert!(matches!(cache.lookup(&key(), at(10), w), Lookup::Stale(_)));
        assert!(matches!(cache.lookup(&key(), at(15), w), Lookup::Miss));
        assert_eq!(cache.evict_dead(at(14), w).len(), 0);
        assert_eq!(cache.evict_dead(at(15), w).len(), 1);
    }
}
