//! Revocation at start: the journal replay that requeues what a previous run still owed at
//! backends and in the fleet, and the journal writes that later work appends.

use super::{Pending, PendingWork};
use crate::backend::{BackendLease, SessionHandle, SessionMeta};
use crate::engine::Engine;
use crate::fleet::{self, Fleet, FleetConfig, Retry, Tombstone};
use crate::journal::{Journal, Record};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

impl Engine {
    /// Attaches the journal and the fleet at start, and requeues what the journal still owes.
    pub fn attach(&self, journal: Option<(Journal, Vec<Record>)>, fleet: Option<FleetConfig>) {
        if let Some(cfg) = fleet {
            let _ = self.revocation.fleet.set(Arc::new(Fleet::new(cfg)));
        }
        let Some((j, owed)) = journal else { return };
        let now = self.now();
        let n = owed.len();
        for r in owed {
            match r {
                Record::Session {
                    backend,
                    session,
                    handle,
                } => self.push_pending(backend, replayed_session(session, handle), now),
                Record::Lease { backend, lease } => {
                    let work = PendingWork::Lease {
                        lease: BackendLease {
                            id: lease,
                            ttl: Duration::ZERO,
                            renewable: false,
                        },
                        handle: None,
                    };
                    self.push_pending(backend, work, now)
                }
                Record::Revoke {
                    session,
                    reason,
                    at_ms,
                    origin,
                    ..
                } => {
                    self.sessions
                        .tombstone(&session, fleet::from_ms(at_ms), &reason);
                    if let Some(f) = self.revocation.fleet.get() {
                        f.retries.lock().push(Retry {
                            tomb: Tombstone {
                                session_id: session,
                                at_ms,
                                reason,
                                origin,
                            },
                            revoke_token: true,
                            attempts: 0,
                            next_at: now,
                        });
                    }
                }
                Record::Done { .. } => {}
            }
        }
        if n > 0 {
            tracing::info!(
                records = n,
                "journal replayed: unfinished revocations will be retried"
            );
        }
        let _ = self.revocation.journal.set(j);
    }

    fn push_pending(&self, backend: String, work: PendingWork, now: SystemTime) {
        self.revocation.pending.lock().push(Pending {
            backend,
            work,
            attempts: 0,
            next_at: now,
        });
    }

    /// Appends to the journal, when there is one, and waits for the fsync.
    pub(in crate::engine) async fn journal(&self, r: &Record) {
        if let Some(j) = self.revocation.journal.get() {
            j.write(r).await;
        }
    }
}

/// A session revocation rebuilt from the journal: the handle id (an accessor) is all that
/// survived; the backend revokes by it.
fn replayed_session(session: String, handle: String) -> PendingWork {
    PendingWork::Session {
        meta: SessionMeta {
            id: session,
            labels: BTreeMap::new(),
            ttl: Duration::ZERO,
        },
        handle: SessionHandle {
            id: handle,
            token: None,
        },
    }
}
