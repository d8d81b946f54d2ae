//! Leases: every credential handed out, indexed by id, session and secret.

pub mod cache;

use crate::backend::BackendLease;
use cache::CacheKey;
use std::collections::{HashMap, HashSet};
use std::time::SystemTime;

#[derive(Clone, Debug)]
pub struct Lease {
    pub id: String,
    pub session_id: String,
    pub secret: String,
    pub version: String,
    pub call_id: Option<String>,
    pub issued_at: SystemTime,
    pub expires_at: SystemTime,
    /// The cache entry this lease alone owns (call-scoped values); evicted with the lease.
    pub owned_entry: Option<CacheKey>,
    /// The backend lease to revoke when this lease ends (call-scoped dynamic credentials).
    pub backend_lease: Option<(String, BackendLease)>,
}

#[derive(Default)]
pub struct LeaseTable {
    by_id: HashMap<String, Lease>,
    by_session: HashMap<String, HashSet<String>>,
    by_secret: HashMap<String, HashSet<String>>,
    /// session → secret → the lease a repeated plain read of that secret gets again.
    reusable: HashMap<String, HashMap<String, String>>,
}

impl LeaseTable {
    /// A live lease the session already holds on this version of `secret` (no call id), so
    /// repeated reads share one lease instead of piling up until they expire.
    pub fn reusable(
        &self,
        session: &str,
        secret: &str,
        version: &str,
        now: SystemTime,
    ) -> Option<&Lease> {
        let id = self.reusable.get(session)?.get(secret)?;
        self.by_id
            .get(id)
            .filter(|l| l.version == version && now < l.expires_at)
    }

    pub fn insert(&mut self, l: Lease) {
        if l.call_id.is_none() && l.owned_entry.is_none() {
            self.reusable
                .entry(l.session_id.clone())
                .or_default()
                .insert(l.secret.clone(), l.id.clone());
        }
        self.by_session
            .entry(l.session_id.clone())
            .or_default()
            .insert(l.id.clone());
        self.by_secret
            .entry(l.secret.clone())
            .or_default()
            .insert(l.id.clone());
        self.by_id.insert(l.id.clone(), l);
    }

    pub fn get(&self, id: &str) -> Option<&Lease> {
        self.by_id.get(id)
    }

    pub fn remove(&mut self, id: &str) -> Option<Lease> {
        let l = self.by_id.remove(id)?;
        if let Some(m) = self.reusable.get_mut(&l.session_id) {
            if m.get(&l.secret).is_some_and(|x| x == id) {
                m.remove(&l.secret);
            }
            if m.is_empty() {
                self.reusable.remove(&l.session_id);
            }
        }
        if let Some(s) = self.by_session.get_mut(&l.session_id) {
            s.remove(id);
            if s.is_empty() {
                self.by_session.remove(&l.session_id);
            }
        }
        if let Some(s) = self.by_secret.get_mut(&l.secret) {
            s.remove(id);
            if s.is_empty() {
                self.by_secret.remove(&l.secret);
            }
        }
        Some(l)
    }

    pub fn remove_session(&mut self, session: &str) -> Vec<Lease> {
        let ids: Vec<String> = self
            .by_session
            .get(session)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default();
        ids.iter().filter_map(|id| self.remove(id)).collect()
    }

    pub fn session_lease_ids(&self, session: &str) -> Vec<String> {
        let mut v: Vec<String> = self
            .by_session
            .get(session)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default();
        v.sort();
        v
    }

    pub fn secret_lease_count(&self, secret: &str) -> usize {
        self.by_secret.get(secret).map_or(0, |s| s.len())
    }

    /// Removes and returns every lease whose end has come.
    pub fn take_expired(&mut self, now: SystemTime) -> Vec<Lease> {
        let ids: Vec<String> = self
            .by_id
            .values()
            .filter(|l| now >= l.expires_at)
            .map(|l| l.id.clone())
            .collect();
        ids.iter().filter_map(|id| self.remove(id)).collect()
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn lease(id: &str, session: &str, secret: &str, exp: u64) -> Lease {
        Lease {
            id: id.into(),
            session_id: session.into(),
            secret: secret.into(),
            version: "1".into(),
            call_id: None,
            issued_at: UNIX_EPOCH,
            expires_at: UNIX_EPOCH + Duration::from_secs(exp),
            owned_entry: None,
            backend_lease: None,
        }
    }

    #[test]
    fn repeated_plain_reads_reuse_a_live_lease() {
        let mut t = LeaseTable::default();
        t.insert(lease("a", "s1", "x", 10));
        let now = UNIX_EPOCH + Duration::from_secs(5);
        assert_eq!(
            t.reusable("s1", "x", "1", now).map(|l| l.id.as_str()),
            Some("a")
        );
        assert!(t.reusable("s1", "x", "2", now).is_none(), "another version");
        assert!(t.reusable("s2", "x", "1", now).is_none(), "another session");
        assert!(
            t.reusable("s1", "x", "1", UNIX_EPOCH + Duration::from_secs(10))
                .is_none(),
            "expired"
        );
        let mut call = lease("b", "s1", "y", 10);
        call.call_id = Some("c".into());
        t.insert(call);
        assert!(
            t.reusable("s1", "y", "1", now).is_none(),
            "call leases are never shared"
        );
    }

    #[test]
    fn indexes_stay_consistent() {
        let mut t = LeaseTable::default();
        t.insert(lease("a", "s1", "x", 10));
        t.insert(lease("b", "s1", "y", 20));
        t.insert(lease("c", "s2", "x", 30));
        assert_eq!(t.session_lease_ids("s1"), vec!["a", "b"]);
        assert_eq!(t.secret_lease_count("x"), 2);
        let gone = t.take_expired(UNIX_EPOCH + Duration::from_secs(20));
        assert_eq!(gone.len(), 2);
        assert_eq!(t.session_lease_ids("s1"), Vec::<String>::new());
        assert_eq!(t.secret_lease_count("x"), 1);
        assert_eq!(t.remove_session("s2").len(), 1);
        assert!(t.is_empty());
        assert!(t.by_secret.is_empty() && t.by_session.is_empty() && t.reusable.is_empty());
    }
}
