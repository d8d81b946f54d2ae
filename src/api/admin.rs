//! The `Admin` service, for security teams and rotation jobs. Served only on the admin socket.

use super::error::{status, validate_id, validate_name, ApiError};
use super::pb::{self, admin_server::Admin};
use super::peer::PeerIdentity;
use crate::clock::unix_secs;
use crate::engine::{Engine, StatusReport, Step};
use crate::policy::Action;
use crate::secret::SecretBytes;
use std::sync::Arc;
use std::time::Duration;
use tonic::{Request, Response, Status};

pub struct AdminService {
    pub engine: Arc<Engine>,
    /// The credential-injection proxy's CA bundle, when `[proxy]` is configured.
    pub proxy_bundle: Option<String>,
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
        self.engine
            .allow_admin(caller, action, secret)
            .await
            .map_err(status)
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
        validate_id("session_id", &r.session_id).map_err(status)?;
        if r.reason.len() > 512 {
            return Err(status(ApiError::InvalidArgument(
                "reason: at most 512 bytes".into(),
            )));
        }
        let reason = if r.reason.is_empty() {
            "unspecified"
        } else {
            r.reason.as_str()
        };
        let rep = self
            .engine
            .revoke_session(Some(&caller), &r.session_id, reason)
            .await
            .map_err(status)?;
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
        validate_name(&r.name)
            .map_err(|m| status(ApiError::InvalidArgument(format!("name: {m}"))))?;
        self.allow(&caller, Action::Rotate, Some(&r.name)).await?;
        let grace = (r.grace_seconds > 0).then(|| Duration::from_secs(r.grace_seconds));
        if grace.is_some_and(|g| g > sidecred_core::duration::MAX_DURATION) {
            return Err(status(ApiError::InvalidArgument(
                "grace_seconds: at most 3650 days".into(),
            )));
        }
        let value = (!r.value.is_empty()).then(|| SecretBytes::new(r.value));
        let out = self
            .engine
            .rotate(&caller, &r.name, grace, value)
            .await
            .map_err(status)?;
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
        let sessions = self
            .engine
            .sessions_with_leases()
            .into_iter()
            .map(|(s, ids)| pb::SessionInfo {
                session_id: s.meta.id.clone(),
                labels: s.meta.labels.clone().into_iter().collect(),
                opened_at: unix_secs(s.opened_at),
                expires_at: unix_secs(s.expires_at),
                owner_uid: s.owner.uid,
                lease_count: ids.len() as u32,
                lease_ids: ids,
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
        validate_name(&r.name)
            .map_err(|m| status(ApiError::InvalidArgument(format!("name: {m}"))))?;
        self.allow(&caller, Action::GetCrl, Some(&r.name)).await?;
        Ok(Response::new(
            super::certs::get_crl(&self.engine, &r.name).map_err(status)?,
        ))
    }

    async fn get_proxy_bundle(
        &self,
        req: Request<pb::GetProxyBundleRequest>,
    ) -> Result<Response<pb::GetProxyBundleResponse>, Status> {
        let caller = super::caller(&req)?;
        self.allow(&caller, Action::GetProxyBundle, None).await?;
        let bundle_pem = self.proxy_bundle.clone().ok_or_else(|| {
            status(ApiError::Precondition(
                "no [proxy] is configured, so there is no proxy CA".into(),
            ))
        })?;
        Ok(Response::new(pb::GetProxyBundleResponse { bundle_pem }))
    }

    async fn status(
        &self,
        req: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let caller = super::caller(&req)?;
        self.allow(&caller, Action::Status, None).await?;
        Ok(Response::new(status_reply(self.engine.status().await)))
    }
}

/// The wire form of an engine status snapshot.
fn status_reply(s: StatusReport) -> pb::StatusResponse {
    pb::StatusResponse {
        version: env!("CARGO_PKG_VERSION").into(),
        uptime_seconds: s.uptime.as_secs(),
        sessions: s.sessions,
        leases: s.leases,
        cached_values: s.cached_values,
        backends: s
            .backends
            .into_iter()
            .map(|b| pb::BackendStatus {
                name: b.name,
                kind: b.kind.into(),
                healthy: b.healthy,
                detail: b.detail,
                fetches: b.fetches,
            })
            .collect(),
        pending_revocations: s.pending_revocations,
        pending_retirements: s.pending_retirements,
        config_generation: s.config_generation,
        config_error: s.config_error.unwrap_or_default(),
        revoked_sessions: s.revoked_sessions,
        locked_pages: crate::harden::locked_pages() as u32,
        lock_failures: crate::harden::lock_failures(),
        dumpable: crate::harden::is_dumpable(),
        watches: s.watches,
    }
}
