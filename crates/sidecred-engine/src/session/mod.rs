//! Session registry: open sessions, their backend handles, and tombstones of revoked ones.
//!
//! A session belongs to the identity that opened it ([`Owner`]), and it ends exactly once: its
//! [`Gate`] closes first, so nothing is recorded for it afterwards, and teardown then removes
//! what was recorded before.

mod gate;

pub use gate::{Gate, GateError};

use crate::backend::{SessionHandle, SessionMeta};
use parking_lot::Mutex;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

/// Who opened a session: the caller's uid and the policy rule that admitted it, and, where that
/// rule names an executable, the process itself (exe, pid and start time: the start time is in
/// clock ticks, so two processes may share it, but not with the same pid). Only the same
/// identity may use, watch, release or close the session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    pub uid: u32,
    pub rule: String,
    pub process: Option<(Arc<Path>, i32, u64)>,
}

#[derive(Debug)]
pub struct Session {
    pub meta: SessionMeta,
    pub owner: Owner,
    pub opened_at: SystemTime,
    pub expires_at: SystemTime,
    /// Backend name → that backend's state for this session.
    pub handles: Mutex<BTreeMap<String, SessionHandle>>,
    /// Open until the session ends; guards every lease, cache entry and reply made for it.
    pub gate: Arc<Gate>,
}

pub use sidecred_core::SessionError;

#[derive(Clone, Debug)]
pub struct Tombstone {
    pub at: SystemTime,
    pub reason: String,
    /// Who owned the session, when it was open here: only they learn why it ended.
    pub owner: Option<Owner>,
}

#[derive(Default)]
pub struct Sessions {
    open: Mutex<HashMap<String, Arc<Session>>>,
    revoked: Mutex<HashMap<String, Tombstone>>,
    feed: RevocationFeed,
}

/// Session ids as they are revoked (here or in the fleet), for transports that hold
/// connections open on a session's behalf (the proxy closes them at once).
pub struct RevocationFeed(tokio::sync::broadcast::Sender<Arc<str>>);

impl Default for RevocationFeed {
    fn default() -> Self {
        Self(tokio::sync::broadcast::channel(1024).0)
    }
}

impl Sessions {
    pub fn insert(&self, s: Session) -> Arc<Session> {
        let s = Arc::new(s);
        self.open.lock().insert(s.meta.id.clone(), s.clone());
        s
    }

    /// The session, if `owner` opened it and it is usable at `now`. Another identity (root
    /// included) learns nothing: an unknown id and someone else's session give the same error.
    pub fn get(
        &self,
        id: &str,
        owner: &Owner,
        now: SystemTime,
    ) -> Result<Arc<Session>, SessionError> {
        if let Some(t) = self.revoked.lock().get(id) {
            return Err(match &t.owner {
                Some(o) if o == owner => SessionError::Revoked {
                    at: t.at,
                    reason: t.reason.clone(),
                },
                Some(_) => SessionError::NotOpen,
                // Revoked in the fleet, never open here: refused as revoked, with no owner
                // or reason to give away.
                None => SessionError::RevokedElsewhere,
            });
        }
        let s = self
            .open
            .lock()
            .get(id)
            .cloned()
            .ok_or(SessionError::NotOpen)?;
        if &s.owner != owner {
            return Err(SessionError::NotOpen);
        }
        if now >= s.expires_at || !s.gate.is_open() {
            return Err(SessionError::Expired);
        }
        Ok(s)
    }

    /// Open sessions of one identity (for the per-identity cap).
    pub fn count_owned(&self, owner: &Owner) -> usize {
        let open = self.open.lock();
        open.values().filter(|s| &s.owner == owner).count()
    }

    /// The open session with this id, whoever owns it (admin and housekeeping paths).
    pub fn find(&self, id: &str) -> Option<Arc<Session>> {
        self.open.lock().get(id).cloned()
    }

    /// Removes a session (close or revoke); the caller revokes what it held.
    pub fn remove(&self, id: &str) -> Option<Arc<Session>> {
        self.open.lock().remove(id)
    }

    /// Marks a session revoked from now on; returns false if it already was. The owner comes
    /// from the open session when there is one here. The first tombstone stays as it was: its
    /// `at` decides when it is pruned, so a later (or forged) one must not move it.
    pub fn tombstone(&self, id: &str, at: SystemTime, reason: &str) -> bool {
        let owner = self.find(id).map(|s| s.owner.clone());
        match self.revoked.lock().entry(id.to_string()) {
            std::collections::hash_map::Entry::Occupied(_) => false,
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(Tombstone {
                    at,
                    reason: reason.to_string(),
                    owner,
                });
                let _ = self.feed.0.send(id.into());
                true
            }
        }
    }

    /// Every revocation from now on (the session id); see [`RevocationFeed`].
    pub fn subscribe_revocations(&self) -> tokio::sync::broadcast::Receiver<Arc<str>> {
        self.feed.0.subscribe()
    }

    /// A backend's handle for an open session.
    pub fn handle(&self, id: &str, backend: &str) -> Option<SessionHandle> {
        let s = self.open.lock().get(id).cloned()?;
        let h = s.handles.lock().get(backend).cloned();
        h
    }

    /// Undoes a tombstone set for an id that turned out to be unknown.
    pub fn untombstone(&self, id: &str) {
        self.revoked.lock().remove(id);
    }

    pub fn is_revoked(&self, id: &str) -> bool {
        self.revoked.lock().contains_key(id)
    }

    pub fn expired(&self, now: SystemTime) -> Vec<String> {
        let open = self.open.lock();
        open.values()
            .filter(|s| now >= s.expires_at)
            .map(|s| s.meta.id.clone())
            .collect()
    }

    pub fn list(&self) -> Vec<Arc<Session>> {
        let mut v: Vec<_> = self.open.lock().values().cloned().collect();
        v.sort_by_key(|s| s.opened_at);
        v
    }

    pub fn count(&self) -> usize {
        self.open.lock().len()
    }

    pub fn revoked_count(&self) -> usize {
        self.revoked.lock().len()
    }

    /// Drops tombstones older than `before` (a revoked id is random and never reused).
    pub fn prune_tombstones(&self, before: SystemTime) {
        self.revoked.lock().retain(|_, t| t.at >= before);
    }
}

pub use sidecred_core::new_id;

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_tombstone_keeps_its_first_time() {
        let s = Sessions::default();
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        assert!(s.tombstone("s_1", t0, "first"));
        assert!(!s.tombstone("s_1", t0 + Duration::from_secs(3600), "later"));
        assert_eq!(s.revoked.lock()["s_1"].reason, "first");
        // Pruned by its first time, not kept alive by the later insert.
        s.prune_tombstones(t0 + Duration::from_secs(1));
        assert!(!s.is_revoked("s_1"));
    }
}
