//! Session registry: open sessions, their backend handles, and tombstones of revoked ones.

use crate::backend::{SessionHandle, SessionMeta};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

#[derive(Debug)]
pub struct Session {
    pub meta: SessionMeta,
    pub owner_uid: u32,
    pub opened_at: SystemTime,
    pub expires_at: SystemTime,
    /// Backend name → that backend's state for this session.
    pub handles: Mutex<BTreeMap<String, SessionHandle>>,
}

/// Why a session cannot be used.
#[derive(Debug, PartialEq, Eq)]
pub enum SessionError {
    Unknown,
    Revoked { at: SystemTime, reason: String },
    Expired,
    WrongOwner { owner: u32 },
}

#[derive(Clone, Debug)]
pub struct Tombstone {
    pub at: SystemTime,
    pub reason: String,
}

#[derive(Default)]
pub struct Sessions {
    open: Mutex<HashMap<String, Arc<Session>>>,
    revoked: Mutex<HashMap<String, Tombstone>>,
}

impl Sessions {
    pub fn insert(&self, s: Session) -> Arc<Session> {
        let s = Arc::new(s);
        self.open
            .lock()
            .expect("poisoned")
            .insert(s.meta.id.clone(), s.clone());
        s
    }

    /// The session, if `uid` may use it at `now`.
    pub fn get(&self, id: &str, uid: u32, now: SystemTime) -> Result<Arc<Session>, SessionError> {
        if let Some(t) = self.revoked.lock().expect("poisoned").get(id) {
            return Err(SessionError::Revoked {
                at: t.at,
                reason: t.reason.clone(),
            });
        }
        let s = self
            .open
            .lock()
            .expect("poisoned")
            .get(id)
            .cloned()
            .ok_or(SessionError::Unknown)?;
        if s.owner_uid != uid && uid != 0 {
            return Err(SessionError::WrongOwner { owner: s.owner_uid });
        }
        if now >= s.expires_at {
            return Err(SessionError::Expired);
        }
        Ok(s)
    }

    /// Removes a session (close or revoke); the caller revokes what it held.
    pub fn remove(&self, id: &str) -> Option<Arc<Session>> {
        self.open.lock().expect("poisoned").remove(id)
    }

    /// Marks a session revoked from now on; returns false if it already was.
    pub fn tombstone(&self, id: &str, at: SystemTime, reason: &str) -> bool {
        self.revoked
            .lock()
            .expect("poisoned")
            .insert(
                id.to_string(),
                Tombstone {
                    at,
                    reason: reason.to_string(),
                },
            )
            .is_none()
    }

    /// A backend's handle for an open session.
    pub fn handle(&self, id: &str, backend: &str) -> Option<SessionHandle> {
        let s = self.open.lock().expect("poisoned").get(id).cloned()?;
        let h = s.handles.lock().expect("poisoned").get(backend).cloned();
        h
    }

    /// Undoes a tombstone set for an id that turned out to be unknown.
    pub fn untombstone(&self, id: &str) {
        self.revoked.lock().expect("poisoned").remove(id);
    }

    pub fn is_revoked(&self, id: &str) -> bool {
        self.revoked.lock().expect("poisoned").contains_key(id)
    }

    pub fn expired(&self, now: SystemTime) -> Vec<String> {
        let open = self.open.lock().expect("poisoned");
        open.values()
            .filter(|s| now >= s.expires_at)
            .map(|s| s.meta.id.clone())
            .collect()
    }

    pub fn list(&self) -> Vec<Arc<Session>> {
        let mut v: Vec<_> = self
            .open
            .lock()
            .expect("poisoned")
            .values()
            .cloned()
            .collect();
        v.sort_by_key(|s| s.opened_at);
        v
    }

    pub fn count(&self) -> usize {
        self.open.lock().expect("poisoned").len()
    }

    pub fn revoked_count(&self) -> usize {
        self.revoked.lock().expect("poisoned").len()
    }

    /// Drops tombstones older than `before` (a revoked id is random and never reused).
    pub fn prune_tombstones(&self, before: SystemTime) {
        self.revoked
            .lock()
            .expect("poisoned")
            .retain(|_, t| t.at >= before);
    }
}

/// A fresh random id with a readable prefix.
pub fn new_id(prefix: &str) -> String {
    let bytes: [u8; 16] = rand::random();
    format!("{prefix}_{}", hex::encode(bytes))
}
