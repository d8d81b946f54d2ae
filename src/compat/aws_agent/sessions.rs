//! How agent-style requests, which carry no session, map onto sidecred sessions.
//!
//! Each identified caller gets one session, keyed like the session's owner (uid and the first
//! policy rule admitting it, plus the very process when that rule names an `exe`), opened on its
//! first request with `session_ttl` and the label `api=aws-agent`, and reused by every later
//! request of that owner. An expired session is replaced on the next request. A session revoked
//! through the Admin API stays refused for that owner (403 with the revocation reason) until the
//! time it would have expired; for an `exe` rule a restarted process is a new owner.

use crate::api::peer::PeerIdentity;
use crate::policy::Policy;
use parking_lot::RwLock;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

/// The part of a caller's identity a session is bound to (mirrors the session `Owner`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct OwnerKey {
    uid: u32,
    rule: String,
    process: Option<(Arc<Path>, i32, u64)>,
}

impl OwnerKey {
    /// None when no rule admits the caller: the broker then refuses (and audits) it.
    pub fn of(policy: &Policy, caller: &PeerIdentity) -> Option<OwnerKey> {
        let o = crate::engine::owner_of(caller, policy.caller_rule(caller).ok()?);
        Some(OwnerKey {
            uid: o.uid,
            rule: o.rule,
            process: o.process,
        })
    }
}

/// One owner's session as the endpoint knows it.
#[derive(Clone, Debug)]
pub enum Slot {
    Open {
        id: Arc<str>,
        expires_at: SystemTime,
    },
    /// Refused until `until` (the revoked session's own expiry), with the broker's message.
    Revoked { why: Arc<str>, until: SystemTime },
}

/// Sessions by owner. Reads take a shared lock and clone an `Arc`; opening is rare.
#[derive(Default)]
pub struct Sessions {
    slots: RwLock<HashMap<OwnerKey, Slot>>,
    /// Serializes opening, so concurrent first requests of one owner share one session.
    pub opening: tokio::sync::Mutex<()>,
}

/// Renew this long before expiry, so a request never races the session's end.
const MARGIN: std::time::Duration = std::time::Duration::from_secs(2);

impl Sessions {
    /// The usable slot for `key` at `now`: an open session not about to expire, or a standing
    /// revocation. None means a session must be opened.
    pub fn lookup(&self, key: &OwnerKey, now: SystemTime) -> Option<Slot> {
        let slots = self.slots.read();
        match slots.get(key)? {
            Slot::Open { expires_at, .. } if now + MARGIN >= *expires_at => None,
            Slot::Revoked { until, .. } if now >= *until => None,
            s => Some(s.clone()),
        }
    }

    pub fn set(&self, key: OwnerKey, slot: Slot) {
        let mut slots = self.slots.write();
        // Drop what has lapsed, so owners that went away do not accumulate.
        if slots.len() >= 1024 {
            let now = SystemTime::now();
            slots.retain(|_, s| match s {
                Slot::Open { expires_at, .. } => *expires_at > now,
                Slot::Revoked { until, .. } => *until > now,
            });
        }
        slots.insert(key, slot);
    }

    /// Marks the owner's session revoked, if `id` is still the one on record.
    pub fn revoked(&self, key: &OwnerKey, id: &str, why: Arc<str>) {
        let mut slots = self.slots.write();
        if let Some(s @ Slot::Open { .. }) = slots.get_mut(key) {
            if let Slot::Open {
                id: cur,
                expires_at,
            } = s
            {
                if &**cur == id {
                    let until = *expires_at;
                    *s = Slot::Revoked { why, until };
                }
            }
        }
    }

    /// Forgets the owner's session, if `id` is still the one on record (it expired).
    pub fn forget(&self, key: &OwnerKey, id: &str) {
        let mut slots = self.slots.write();
        if matches!(slots.get(key), Some(Slot::Open { id: cur, .. }) if &**cur == id) {
            slots.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn key(uid: u32) -> OwnerKey {
        OwnerKey {
            uid,
            rule: "r".into(),
            process: None,
        }
    }

    #[test]
    fn slot_lifecycle_table() {
        let s = Sessions::default();
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert!(s.lookup(&key(1), t0).is_none());
        let exp = t0 + Duration::from_secs(60);
        s.set(
            key(1),
            Slot::Open {
                id: "ses_a".into(),
                expires_at: exp,
            },
        );
        assert!(matches!(s.lookup(&key(1), t0), Some(Slot::Open { .. })));
        assert!(s.lookup(&key(2), t0).is_none());
        // About to expire: open a new one.
        assert!(s.lookup(&key(1), exp - Duration::from_secs(1)).is_none());
        // A revocation for another id changes nothing; for this id it stands until expiry.
        s.revoked(&key(1), "ses_other", "x".into());
        assert!(matches!(s.lookup(&key(1), t0), Some(Slot::Open { .. })));
        s.revoked(&key(1), "ses_a", "revoked: test".into());
        assert!(matches!(s.lookup(&key(1), t0), Some(Slot::Revoked { .. })));
        assert!(matches!(
            s.lookup(&key(1), exp - Duration::from_secs(1)),
            Some(Slot::Revoked { .. })
        ));
        assert!(s.lookup(&key(1), exp).is_none());
        s.set(
            key(3),
            Slot::Open {
                id: "ses_c".into(),
                expires_at: exp,
            },
        );
        s.forget(&key(3), "ses_x");
        assert!(s.lookup(&key(3), t0).is_some());
        s.forget(&key(3), "ses_c");
        assert!(s.lookup(&key(3), t0).is_none());
    }
}
