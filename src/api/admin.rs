//! The `Admin` service, for security teams and rotation jobs. Served only on the admin socket.

use super::error::{validate_id, validate_name, ApiError};
use super::pb::{self, admin_server::Admin};
use super::peer::PeerIdentity;
use crate::audit::AuditEvent;
use crate::clock::unix_secs;
use crate::engine::{Engine, Step};
use crate::policy::Action;
use crate::secret::SecretBytes;
use std::sync::Arc;
use std::time::Duration;
use tonic::{Request, Response, Status};

pub struct AdminService {
    pub engine: Arc<Engine>,
}

fn steps(v: Vec<Step>) -> Vec<pb::RevocationStep> {
    v.into_iter()
        .map(|s| pb::RevocationStep {
            target: s.target,
            what: s.what,
            count: s.count,
            detail: s.detail,
        })
        .collect()
}

impl AdminService {
    async fn allow(
        &self,
        caller: &PeerIdentity,
        action: Action,
        secret: Option<&str>,
    ) -> Result<(), Status> {
        let cat = self.engine.catalog();
        match cat.config.admin_policy.check_action(caller, action, secret) {
            Ok(_) => Ok(()),
            Err(why) => {
                let mut ev = AuditEvent::new("admin", "denied").caller(caller);
                ev.secret = secret;
                ev.detail = Some(&why);
                let _ = self.engine.audit.record(ev).await;
                Err(ApiError::Denied(why).into())
            }
        }
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn revoke_session(
        &self,
        req: Request<pb::RevokeSessionRequest>,
    ) -> Result<Response<pb::RevokeSessionResponse>, Status> {
        let caller = super::caller(&req)?;
        self.allow(&caller, Action::RevokeSession, None).await?;
        let r = req.into_inner();
        validate_id("session_id", &r.session_id)?;
        if r.reason.len() > 512 {
            return Err(ApiError::InvalidArgument("reason: at most 512 bytes".into()).into());
        }
        let reason = if r.reason.is_empty() {
            "unspecified"
        } else {
            r.reason.as_str()
        };
        let rep = self
            .engine
            .revoke_session(Some(&caller), &r.session_id, reason)
            .await?;
        Ok(Response::new(pb::RevokeSessionResponse {
            session_id: r.session_id,
            done: steps(rep.done),
            pending: steps(rep.pending),
        }))
    }

    async fn rotate(
        &self,
        req: Request<pb::RotateRequest>,
    ) -> Result<Response<pb::RotateResponse>, Status> {
        let caller = super::caller(&req)?;
        let r = req.into_inner();
        validate_name(&r.name).map_err(|m| ApiError::InvalidArgument(format!("name: {m}")))?;
        self.allow(&caller, Action::Rotate, Some(&r.name)).await?;
        let grace = (r.grace_seconds > 0).then(|| Duration::from_secs(r.grace_seconds));
        if grace.is_some_and(|g| g > crate::config::MAX_DURATION) {
            return Err(
                ApiError::InvalidArgument("grace_seconds: at most 3650 days".into()).into(),
            );
        }
        let value = (!r.value.is_empty()).then(|| SecretBytes::new(r.value));
        let out = self.engine.rotate(&caller, &r.name, grace, value).await?;
        Ok(Response::new(pb::RotateResponse {
            name: r.name,
            version: out.version,
            previous_version: out.previous_version.unwrap_or_default(),
            previous_retires_at: out.previous_retires_at.map(unix_secs).unwrap_or(0),
        }))
    }

    async fn list_sessions(
        &self,
        req: Request<pb::ListSessionsRequest>,
    ) -> Result<Response<pb::ListSessionsResponse>, Status> {
        let caller = super::caller(&req)?;
        self.allow(&caller, Action::ListSessions, None).await?;
        let leases = self.engine.leases.lock();
        let sessions = self
            .engine
            .sessions
            .list()
            .into_iter()
            .map(|s| {
                let ids = leases.session_lease_ids(&s.meta.id);
                pb::SessionInfo {
                    session_id: s.meta.id.clone(),
                    labels: s.meta.labels.clone().into_iter().collect(),
                    opened_at: unix_secs(s.opened_at),
                    expires_at: unix_secs(s.expires_at),
                    owner_uid: s.owner.uid,
                    lease_count: ids.len() as u32,
                    lease_ids: ids,
                }
            })
            .collect();
        Ok(Response::new(pb::ListSessionsResponse { sessions }))
    }

    async fn get_crl(
        &self,
        req: Request<pb::GetCrlRequest>,
    ) -> Result<Response<pb::GetCrlResponse>, Status> {
        let caller = super::caller(&req)?;
        let r = req.into_inner();
        validate_name(&r.name).map_err(|m| ApiError::InvalidArgument(format!("name: {m}")))?;
        self.allow(&caller, Action::GetCrl, Some(&r.name)).await?;
        Ok(Response::new(super::certs::get_crl(&self.engine, &r.name)?))
    }

    async fn status(
        &self,
        req: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let caller = super::caller(&req)?;
        self.allow(&caller, Action::Status, None).await?;
        Ok(Response::new(self.engine.status().await))
    }
}

impl Engine {
    /// A snapshot for `sidecred status`: backends and their health, counts, config generation.
    pub async fn status(&self) -> pb::StatusResponse {
        let cat = self.catalog();
        let checks = cat.backends.iter().map(|(name, b)| async move {
            let h = tokio::time::timeout(Duration::from_secs(2), b.health()).await;
            let (healthy, detail) = match h {
                Ok(Ok(d)) => (true, d),
                Ok(Err(e)) => (false, e.to_string()),
                Err(_) => (false, "health check timed out after 2s".into()),
            };
            pb::BackendStatus {
                name: name.clone(),
                kind: b.kind().into(),
                healthy,
                detail,
                fetches: self.backend_fetches(name),
            }
        });
        let backends = futures::future::join_all(checks).await;
        let pending_retirements = self
            .rotations
            .lock()
            .values()
            .filter(|r| r.previous.is_some())
            .count() as u32;
        pb::StatusResponse {
            version: env!("CARGO_PKG_VERSION").into(),
            uptime_seconds: self.started.elapsed().as_secs(),
            sessions: self.sessions.count() as u32,
            leases: self.leases.lock().len() as u32,
            cached_values: self.cache.len() as u32,
            backends,
            pending_revocations: self.pending_count() as u32,
            pending_retirements,
            config_generation: cat.generation,
            config_error: self.config_error.lock().clone().unwrap_or_default(),
            revoked_sessions: self.sessions.revoked_count() as u32,
            locked_pages: crate::harden::locked_pages() as u32,
            lock_failures: crate::harden::lock_failures(),
            dumpable: crate::harden::is_dumpable(),
            watches: self.watch_count() as u32,
        }
    }
}
