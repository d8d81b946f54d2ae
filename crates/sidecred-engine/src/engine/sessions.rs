//! Opening sessions. The session table itself (`crate::session::Sessions`) owns its state;
//! here a session gets its backend handles, its fleet record and its audit line.

use super::Engine;
use crate::audit::AuditError;
use crate::audit::AuditEvent;
use crate::backend::SessionMeta;
use crate::error::{ApiError, SessionRefused};
use crate::session::{new_id, Gate, Owner, Session};
use parking_lot::Mutex;
use sidecred_core::identity::PeerIdentity;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// Why a session could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum SessionOpenError {
    #[error("ttl {}s exceeds the maximum session ttl {}s", .ttl.as_secs(), .max.as_secs())]
    TtlTooLong { ttl: Duration, max: Duration },
    #[error("labels: at most 32, keys 1-63 bytes, values at most 256 bytes")]
    Labels,
    #[error("this caller already holds {0} open sessions (server.max_sessions_per_identity)")]
    TooManySessions(usize),
    /// Fail-closed audit: the session was torn down again.
    #[error("{0}")]
    Audit(#[source] AuditError),
}

impl From<SessionOpenError> for ApiError {
    fn from(e: SessionOpenError) -> Self {
        match e {
            e @ (SessionOpenError::TtlTooLong { .. } | SessionOpenError::Labels) => {
                ApiError::InvalidArgument(e.to_string())
            }
            e @ SessionOpenError::TooManySessions(_) => ApiError::Exhausted(e.to_string()),
            e @ SessionOpenError::Audit(_) => ApiError::Unavailable(e.to_string()),
        }
    }
}

impl Engine {
    /// The caller's own open session; anyone else's looks like no session at all.
    pub fn session(&self, id: &str, owner: &Owner) -> Result<Arc<Session>, SessionRefused> {
        self.sessions
            .get(id, owner, self.now())
            .map_err(|e| SessionRefused::new(id, e))
    }

    pub async fn open_session(
        &self,
        caller: &PeerIdentity,
        owner: Owner,
        ttl: Option<Duration>,
        labels: BTreeMap<String, String>,
    ) -> Result<Arc<Session>, SessionOpenError> {
        let cat = self.catalog();
        let s = &cat.config.server;
        let ttl = ttl.unwrap_or(s.default_session_ttl);
        if ttl > s.max_session_ttl {
            return Err(SessionOpenError::TtlTooLong {
                ttl,
                max: s.max_session_ttl,
            });
        }
        if labels.len() > 32
            || labels
                .iter()
                .any(|(k, v)| k.is_empty() || k.len() > 63 || v.len() > 256)
        {
            return Err(SessionOpenError::Labels);
        }
        let cap = s.max_sessions_per_identity;
        if self.sessions.count_owned(&owner) >= cap {
            return Err(SessionOpenError::TooManySessions(cap));
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
            return Err(SessionOpenError::Audit(e));
        }
        Ok(session)
    }
}
