//! An AWS-Secrets-Manager-Agent-compatible endpoint: `GET /secretsmanager/get?secretId=NAME`
//! and `GET /v1/NAME` (with `versionStage` or `versionId`), the agent's SSRF header check, its
//! JSON answer and error shapes, so applications written for the agent read through sidecred
//! unchanged. Callers are identified at accept (SO_PEERCRED on the Unix socket, the kernel's
//! socket table on loopback TCP); reads go through the Broker's handlers (see `calls`), in one
//! session per caller (see `sessions`).
//!
//! Stages: `AWSCURRENT` (or none) is the current version; `AWSPREVIOUS` is the previous version
//! while a rotation's grace window is open (and "not found" outside it, as sidecred no longer
//! serves a retired version); `versionId` pins a version. Other labels are not served.
//!
//! `refreshNow=true` (or `1`) reads from the backend instead of the cache, as the agent does;
//! any other value than true/1/false/0 is the agent's 400 `invalid refreshNow value`.

mod calls;
pub mod config;
pub mod request;
pub mod response;
pub mod sessions;

use crate::api::broker::BrokerService;
use crate::api::peer::PeerIdentity;
use crate::api::{validate_id, validate_name, ApiError};
use crate::engine::Engine;
use crate::engine::RequestLine;
use crate::secret::SecretText;
use config::AwsAgentApiConfig;
use request::{Query, Reject, Route};
use sessions::{OwnerKey, Sessions, Slot};
use std::sync::Arc;

const CURRENT: &str = "AWSCURRENT";
const PREVIOUS: &str = "AWSPREVIOUS";

/// The endpoint: its settings, the SSRF token, and the session of each caller.
pub struct AwsAgentApi {
    engine: Arc<Engine>,
    broker: BrokerService,
    cfg: AwsAgentApiConfig,
    token: SecretText,
    sessions: Sessions,
}

/// One answer: status and body (JSON, or the agent's plain text for refusals).
pub type Answer = (u16, String);

impl AwsAgentApi {
    /// Reads the SSRF token (as the agent does, once at start).
    pub fn new(engine: Arc<Engine>, cfg: AwsAgentApiConfig) -> Result<Self, String> {
        let token = cfg.read_token()?;
        Ok(Self {
            broker: BrokerService {
                engine: engine.clone(),
            },
            engine,
            cfg,
            token,
            sessions: Sessions::default(),
        })
    }

    pub fn config(&self) -> &AwsAgentApiConfig {
        &self.cfg
    }

    /// Serves one request of an identified caller.
    pub async fn handle(
        &self,
        caller: &PeerIdentity,
        method: &http::Method,
        uri: &http::Uri,
        headers: &http::HeaderMap,
    ) -> Answer {
        let routed = request::route(
            method,
            uri.path(),
            uri.query(),
            headers,
            &self.cfg.ssrf_headers,
            self.token.expose().as_bytes(),
            &self.cfg.path_prefix,
        );
        match routed {
            Ok(Route::Ping) => (200, "healthy".into()),
            Ok(Route::Get(q)) => self.get(caller, &q).await,
            Err(Reject { status, body }) => {
                let outcome = if status == 403 { "denied" } else { "invalid" };
                self.audit(caller, outcome, None, &body).await;
                (status, body)
            }
        }
    }

    /// Audits a request refused by this endpoint itself (the Broker audits its own refusals).
    pub async fn audit(
        &self,
        caller: &PeerIdentity,
        outcome: &str,
        secret: Option<&str>,
        why: &str,
    ) {
        let line = RequestLine {
            event: "aws_agent_request",
            outcome,
            secret,
            detail: why,
            ..Default::default()
        };
        self.engine.record_request(caller, line).await;
        tracing::info!(caller = %caller, outcome, reason = why, "aws agent API request refused");
    }

    async fn get(&self, caller: &PeerIdentity, q: &Query) -> Answer {
        if let Err(m) = validate_name(&q.secret_id) {
            let why = format!("secretId: {m}");
            self.audit(caller, "invalid", None, &why).await;
            return response::error(400, "InvalidParameterException", &why);
        }
        let name = q.secret_id.as_str();
        if let Some(v) = &q.version_id {
            if let Err(e) = validate_id("versionId", v) {
                let why = e.to_string();
                self.audit(caller, "invalid", Some(name), &why).await;
                return response::error(400, "InvalidParameterException", &why);
            }
        }
        let stage = q.version_stage.as_deref();
        if let Some(s) = stage.filter(|s| ![CURRENT, PREVIOUS].contains(s)) {
            let why = format!(
                "versionStage `{}`: sidecred serves AWSCURRENT, and AWSPREVIOUS during a \
                 rotation's grace window",
                s.escape_debug()
            );
            self.audit(caller, "invalid", Some(name), &why).await;
            return response::error(400, "InvalidParameterException", &why);
        }
        let cat = self.engine.catalog();
        let Ok(spec) = cat.secret(name) else {
            return response::error(404, "ResourceNotFoundException", response::NO_SUCH_SECRET);
        };
        let version = q.version_id.as_deref();
        // `refreshNow=true`: the agent skips its cache and reads from Secrets Manager. Only a
        // caller whose policy grants the secret may drop the cached value; the read below is
        // then the backend read, audited like any other.
        if q.refresh_now
            && cat
                .config
                .workload_policy
                .check_secret(caller, spec)
                .is_ok()
        {
            self.engine.forget_shared(name, version);
        }
        let r = match self.read(caller, name, version).await {
            Ok(r) => r,
            Err(ApiError::NotFound(_)) if version.is_some() => {
                let why = format!(
                    "Secrets Manager can't find the specified secret value for VersionId: {}",
                    version.unwrap_or_default()
                );
                return response::error(404, "ResourceNotFoundException", &why);
            }
            Err(e) => return response::from_api(&e),
        };
        let backend = cat.backends.get(&spec.backend);
        let (ver, value, stages) = match (stage, version) {
            (Some(PREVIOUS), None) => match &r.previous {
                Some(p) => (p.version.as_str(), p.value.as_slice(), &[PREVIOUS][..]),
                None => {
                    let why = format!(
                        "Secrets Manager can't find the specified secret value for staging \
                         label: {PREVIOUS}"
                    );
                    return response::error(404, "ResourceNotFoundException", &why);
                }
            },
            (_, Some(v)) => {
                let stages = self.pinned_stages(&cat, spec, v).await;
                if stage.is_some_and(|s| !stages.contains(&s)) {
                    let why = "You provided a VersionStage that is not associated to the \
                               provided VersionId.";
                    return response::error(400, "InvalidRequestException", why);
                }
                (r.version.as_str(), r.value.as_slice(), stages)
            }
            _ => (r.version.as_str(), r.value.as_slice(), &[CURRENT][..]),
        };
        let info = backend.and_then(|b| b.version_info(spec, ver));
        (
            200,
            response::secret(name, ver, value, stages, info.as_deref()),
        )
    }

    /// Labels of a pinned version as sidecred sees it now: AWSCURRENT for the current one,
    /// AWSPREVIOUS for the previous one inside its grace window, otherwise none.
    async fn pinned_stages(
        &self,
        cat: &crate::engine::Catalog,
        spec: &crate::backend::SecretSpec,
        v: &str,
    ) -> &'static [&'static str] {
        let previous = self
            .engine
            .previous_version(&spec.name)
            .is_some_and(|p| p == v);
        if previous {
            &[PREVIOUS]
        } else if self.engine.current_version(cat, spec).await == v {
            &[CURRENT]
        } else {
            &[]
        }
    }

    /// A read in the caller's session, opening (or replacing an expired) one as needed.
    async fn read(
        &self,
        caller: &PeerIdentity,
        name: &str,
        version: Option<&str>,
    ) -> Result<crate::api::pb::GetSecretResponse, ApiError> {
        let cat = self.engine.catalog();
        let Some(key) = OwnerKey::of(&cat.config.workload_policy, caller) else {
            // No rule admits the caller: the Broker refuses and audits it.
            calls::open_session(&self.broker, caller, None).await?;
            return Err(ApiError::Denied("no policy rule admits the caller".into()));
        };
        for _ in 0..2 {
            let sid = self.session(caller, &key).await?;
            match calls::get_secret(&self.broker, caller, &sid, name, version).await {
                Err(ApiError::SessionExpired(_)) => self.sessions.forget(&key, &sid),
                Err(ApiError::SessionRevoked(why)) => {
                    let why: Arc<str> = why.into();
                    self.sessions.revoked(&key, &sid, why.clone());
                    return Err(ApiError::SessionRevoked(why.to_string()));
                }
                other => return other,
            }
        }
        Err(ApiError::Unavailable(
            "the caller's session keeps expiring; retry".into(),
        ))
    }

    /// The caller's session id: the one on record, or a new one.
    async fn session(&self, caller: &PeerIdentity, key: &OwnerKey) -> Result<Arc<str>, ApiError> {
        let now = self.engine.now();
        match self.sessions.lookup(key, now) {
            Some(Slot::Open { id, .. }) => return Ok(id),
            Some(Slot::Revoked { why, .. }) => {
                return Err(ApiError::SessionRevoked(why.to_string()))
            }
            None => {}
        }
        let _one = self.sessions.opening.lock().await;
        match self.sessions.lookup(key, self.engine.now()) {
            Some(Slot::Open { id, .. }) => return Ok(id),
            Some(Slot::Revoked { why, .. }) => {
                return Err(ApiError::SessionRevoked(why.to_string()))
            }
            None => {}
        }
        let (id, expires_at) =
            calls::open_session(&self.broker, caller, self.cfg.session_ttl).await?;
        let id: Arc<str> = id.into();
        self.sessions.set(
            key.clone(),
            Slot::Open {
                id: id.clone(),
                expires_at,
            },
        );
        Ok(id)
    }
}

impl crate::compat::Endpoint for AwsAgentApi {
    fn name(&self) -> &'static str {
        "aws_agent"
    }

    async fn handle(
        &self,
        caller: &PeerIdentity,
        req: http::Request<bytes::Bytes>,
    ) -> http::Response<http_body_util::Full<bytes::Bytes>> {
        let (status, body) =
            AwsAgentApi::handle(self, caller, req.method(), req.uri(), req.headers()).await;
        reply(status, body)
    }

    /// Every route that uses the caller goes through the Broker handlers, which re-check the
    /// identity themselves; `/ping` and refusals before them use it only to audit.
    fn rechecks_identity(&self) -> bool {
        true
    }

    fn metrics(&self) -> Option<crate::metrics::HttpEndpoint> {
        Some(crate::metrics::HttpEndpoint::AwsAgent)
    }

    fn route_class(&self, _: &http::Method, uri: &http::Uri) -> crate::metrics::HttpRoute {
        use crate::metrics::HttpRoute;
        match uri.path() {
            "/ping" => HttpRoute::Ping,
            "/secretsmanager/get" => HttpRoute::Get,
            p if p.starts_with(self.cfg.path_prefix.as_str()) => HttpRoute::Get,
            _ => HttpRoute::Other,
        }
    }

    fn error(
        &self,
        status: http::StatusCode,
        message: &str,
    ) -> http::Response<http_body_util::Full<bytes::Bytes>> {
        let kind = match status.as_u16() {
            403 => "AccessDeniedException",
            429 => "LimitExceededException",
            s if s >= 500 => "InternalFailure",
            _ => "InvalidRequestException",
        };
        let (status, body) = response::error(status.as_u16(), kind, message);
        reply(status, body)
    }
}

/// A response with no content type, as the agent sends.
fn reply(status: u16, body: String) -> http::Response<http_body_util::Full<bytes::Bytes>> {
    let mut r = http::Response::new(http_body_util::Full::new(bytes::Bytes::from(body)));
    *r.status_mut() =
        http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    r
}

/// What `spawn` started: the listener tasks and the Unix socket's guard (removes it on drop).
pub struct Running {
    pub tasks: Vec<tokio::task::JoinHandle<()>>,
    pub guard: Option<crate::api::sockdir::SocketGuard>,
}

/// Binds and serves the endpoint when `[aws_agent_api]` is set: on its Unix socket (placed and
/// checked like every other socket) and on its loopback TCP address.
pub async fn spawn(
    engine: Arc<Engine>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Result<Option<Running>, String> {
    let Some(cfg) = engine
        .catalog()
        .config
        .section::<config::AwsAgentApiConfig>()
        .cloned()
    else {
        return Ok(None);
    };
    let api = AwsAgentApi::new(engine.clone(), cfg.clone())?;
    let listener = crate::compat::Listener::new(api, engine, stop);
    let mut running = Running {
        tasks: Vec::new(),
        guard: None,
    };
    if let Some(path) = &cfg.socket {
        let (l, guard) = crate::api::server::bind(path, cfg.socket_mode)
            .map_err(|e| format!("aws_agent_api socket {}: {e}", path.display()))?;
        running.guard = Some(guard);
        running
            .tasks
            .push(tokio::spawn(listener.clone().serve_unix(l)));
    }
    if let Some(addr) = cfg.listen {
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| format!("aws_agent_api listen {addr}: {e}"))?;
        tracing::info!(%addr, "AWS agent API listening on loopback TCP");
        running.tasks.push(tokio::spawn(listener.serve_tcp(l)));
    }
    Ok(Some(running))
}
