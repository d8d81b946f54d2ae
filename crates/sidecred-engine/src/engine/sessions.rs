//! Opening sessions. The session table itself (`crate::session::Sessions`) owns its state;
//! here a session gets its backend handles, its fleet record and its audit line.

use super::Engine;
use crate::audit::AuditEvent;
use crate::backend::SessionMeta;
use crate::error::ApiError;
use crate::session::{new_id, Gate, Owner, Session};
use parking_lot::Mutex;
use sidecred_core::identity::PeerIdentity;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

impl Engine {
    /// The caller's own open session; anyone else's looks like no session at all.
    pub fn session(&self, id: &str, owner: &Owner) -> Result<Arc<Session>, ApiError> {
        self.sessions
            .get(id, owner, self.now())
            .map_err(|e| ApiError::from_session(id, e))
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
}
