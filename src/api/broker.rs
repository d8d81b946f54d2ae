//! The workload-facing `Broker` service: policy check, then the engine, then an audit line.

use super::error::{status, validate_id, ApiError};
use super::pb::{self, broker_server::Broker};
use super::peer::PeerIdentity;
use crate::clock::unix_secs;
use crate::engine::{Engine, GetRequest, WatchKind};
use crate::error::GateRefused;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

pub struct BrokerService {
    pub engine: Arc<Engine>,
}

fn opt(s: &str) -> Option<&str> {
    (!s.is_empty()).then_some(s)
}

/// The unary handlers as plain functions from (caller, request) to (response | error): tonic's
/// service below and the workload socket's HTTP/2 fast path both call these, as do the
/// HTTP-compatible endpoints. Each re-checks that the caller's process is still the one that
/// connected.
impl BrokerService {
    pub async fn open_session(
        &self,
        caller: &PeerIdentity,
        r: pb::OpenSessionRequest,
    ) -> Result<pb::OpenSessionResponse, ApiError> {
        bound(caller)?;
        let cat = self.engine.catalog();
        let owner = self.engine.admit(&cat, caller, "session_open", "").await?;
        let ttl = (r.ttl_seconds > 0).then(|| Duration::from_secs(r.ttl_seconds));
        let s = self
            .engine
            .open_session(caller, owner, ttl, r.labels.into_iter().collect())
            .await?;
        Ok(pb::OpenSessionResponse {
            session_id: s.meta.id.clone(),
            expires_at: unix_secs(s.expires_at),
        })
    }

    pub async fn close_session(
        &self,
        caller: &PeerIdentity,
        r: pb::CloseSessionRequest,
    ) -> Result<pb::CloseSessionResponse, ApiError> {
        bound(caller)?;
        validate_id("session_id", &r.session_id)?;
        let cat = self.engine.catalog();
        let owner = self
            .engine
            .admit(&cat, caller, "session_close", &r.session_id)
            .await?;
        let n = self
            .engine
            .close_session(caller, &owner, &r.session_id)
            .await?;
        Ok(pb::CloseSessionResponse { leases_released: n })
    }

    pub async fn get_secret(
        &self,
        caller: &PeerIdentity,
        r: pb::GetSecretRequest,
    ) -> Result<pb::GetSecretResponse, ApiError> {
        bound(caller)?;
        let cat = self.engine.catalog();
        let (owner, rule, spec) = self
            .engine
            .authorize(&cat, caller, "grant", &r.session_id, &r.name)
            .await?;
        if let Some(c) = opt(&r.call_id) {
            validate_id("call_id", c)?;
        }
        if let Some(v) = opt(&r.version) {
            validate_id("version", v)?;
        }
        let req = GetRequest {
            owner: &owner,
            session_id: &r.session_id,
            call_id: opt(&r.call_id),
            version: opt(&r.version),
            spiffe_id: rule.spiffe_id.as_deref(),
            sans: Some(&rule.sans),
        };
        let g = self.engine.get_secret(&cat, spec, caller, req).await?;
        tracing::debug!(secret = %r.name, version = %g.entry.version, lease = %g.lease_id, stale = g.stale, "granted");
        let (previous, retires) = match &g.previous {
            Some((e, at)) => (
                Some(pb::SecretVersion {
                    value: e.value.expose().to_vec(),
                    version: e.version.clone(),
                }),
                unix_secs(*at),
            ),
            None => (None, 0),
        };
        Ok(pb::GetSecretResponse {
            name: r.name,
            value: g.entry.value.expose().to_vec(),
            version: g.entry.version.clone(),
            lease_id: g.lease_id,
            expires_at: unix_secs(g.expires_at),
            zone: spec.zone.as_str().to_string(),
            previous,
            previous_retires_at: retires,
            stale: g.stale,
        })
    }

    pub async fn release_lease(
        &self,
        caller: &PeerIdentity,
        r: pb::ReleaseLeaseRequest,
    ) -> Result<pb::ReleaseLeaseResponse, ApiError> {
        bound(caller)?;
        validate_id("lease_id", &r.lease_id)?;
        validate_id("session_id", &r.session_id)?;
        let cat = self.engine.catalog();
        let owner = self
            .engine
            .admit(&cat, caller, "lease_release", &r.session_id)
            .await?;
        self.engine
            .release_lease(caller, &owner, &r.session_id, &r.lease_id)
            .await?;
        Ok(pb::ReleaseLeaseResponse {})
    }

    pub async fn sign_csr(
        &self,
        caller: &PeerIdentity,
        r: pb::SignCsrRequest,
    ) -> Result<pb::SignCsrResponse, ApiError> {
        bound(caller)?;
        let cat = self.engine.catalog();
        let (owner, rule, _) = self
            .engine
            .authorize(&cat, caller, "csr_sign", &r.session_id, &r.name)
            .await?;
        super::certs::sign_csr(
            &self.engine,
            caller,
            &owner,
            &r,
            rule.spiffe_id.as_deref(),
            &rule.sans,
        )
        .await
    }
}

/// Refuses a caller whose process is no longer the one that connected.
fn bound(caller: &PeerIdentity) -> Result<(), ApiError> {
    caller.still_bound().map_err(|why| {
        tracing::info!(caller = %caller, reason = %why, "identity no longer bound; refused");
        ApiError::Denied(why)
    })
}

/// The connection's identity as the transport attached it.
fn peer_of<T>(req: &Request<T>) -> Result<PeerIdentity, Status> {
    req.extensions()
        .get::<PeerIdentity>()
        .cloned()
        .ok_or_else(|| status(ApiError::Internal("connection has no peer identity".into())))
}

/// Runs a plain handler for tonic.
macro_rules! via_tonic {
    ($self:ident, $req:ident, $handler:ident) => {{
        let caller = peer_of(&$req)?;
        BrokerService::$handler($self, &caller, $req.into_inner())
            .await
            .map(Response::new)
            .map_err(status)
    }};
}

#[tonic::async_trait]
impl Broker for BrokerService {
    async fn open_session(
        &self,
        req: Request<pb::OpenSessionRequest>,
    ) -> Result<Response<pb::OpenSessionResponse>, Status> {
        via_tonic!(self, req, open_session)
    }

    async fn close_session(
        &self,
        req: Request<pb::CloseSessionRequest>,
    ) -> Result<Response<pb::CloseSessionResponse>, Status> {
        via_tonic!(self, req, close_session)
    }

    async fn get_secret(
        &self,
        req: Request<pb::GetSecretRequest>,
    ) -> Result<Response<pb::GetSecretResponse>, Status> {
        via_tonic!(self, req, get_secret)
    }

    async fn release_lease(
        &self,
        req: Request<pb::ReleaseLeaseRequest>,
    ) -> Result<Response<pb::ReleaseLeaseResponse>, Status> {
        via_tonic!(self, req, release_lease)
    }

    async fn sign_csr(
        &self,
        req: Request<pb::SignCsrRequest>,
    ) -> Result<Response<pb::SignCsrResponse>, Status> {
        via_tonic!(self, req, sign_csr)
    }

    type WatchSecretStream =
        Pin<Box<dyn Stream<Item = Result<pb::SecretEvent, Status>> + Send + 'static>>;

    async fn watch_secret(
        &self,
        req: Request<pb::WatchSecretRequest>,
    ) -> Result<Response<Self::WatchSecretStream>, Status> {
        let caller = super::caller(&req)?;
        let r = req.into_inner();
        let (owner, _, _) = self
            .engine
            .authorize(
                &self.engine.catalog(),
                &caller,
                "watch",
                &r.session_id,
                &r.name,
            )
            .await
            .map_err(status)?;
        let engine = self.engine.clone();
        let cat = engine.catalog();
        let slot = engine
            .session(&r.session_id, &owner)
            .map_err(status)?
            .gate
            .watch(cat.config.server.max_watches_per_session)
            .map_err(|e| status(GateRefused::new(&r.session_id, e)))?;
        let spec = cat.secret(&r.name).map_err(status)?.clone();
        let mut rx = engine.subscribe(&r.name);
        let current = engine.current_version(&cat, &spec).await;
        let name = r.name.clone();
        let session = r.session_id.clone();
        let stream = async_stream::stream! {
            // The watch slot is held as long as the stream lives.
            let _slot = slot;
            yield Ok(pb::SecretEvent {
                name: name.clone(),
                kind: pb::secret_event::Kind::Current as i32,
                version: current,
                previous_version: String::new(),
                previous_retires_at: 0,
                at: unix_secs(engine.now()),
            });
            let mut check = tokio::time::interval(Duration::from_millis(500));
            loop {
                tokio::select! {
                    ev = rx.recv() => match ev {
                        Ok(ev) => yield Ok(pb::SecretEvent {
                            name: name.clone(),
                            kind: match ev.kind {
                                WatchKind::Current => pb::secret_event::Kind::Current,
                                WatchKind::Rotated => pb::secret_event::Kind::Rotated,
                                WatchKind::Retired => pb::secret_event::Kind::Retired,
                                WatchKind::Changed => pb::secret_event::Kind::Changed,
                            } as i32,
                            version: ev.version,
                            previous_version: ev.previous_version,
                            previous_retires_at: ev.previous_retires_at.map(unix_secs).unwrap_or(0),
                            at: unix_secs(ev.at),
                        }),
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                            tracing::warn!(secret = %name, missed = n, "watcher lagged");
                        }
                        Err(_) => break,
                    },
                    _ = check.tick() => {
                        if let Err(e) = engine.session(&session, &owner) {
                            yield Err(status(e));
                            break;
                        }
                    }
                }
            }
        };
        Ok(Response::new(Box::pin(stream)))
    }
}
