//! A Vault-compatible HTTP API (the subset agents and apps use), served by sidecred's own
//! sessions, policy and audit through the `Broker` handlers:
//!
//! | Vault | sidecred |
//! | --- | --- |
//! | `POST /v1/<login_path>` | OpenSession; the session id is `auth.client_token` |
//! | `GET /v1/auth/token/lookup-self` | the session, for its owner |
//! | `POST /v1/auth/token/revoke-self` | CloseSession |
//! | `GET /v1/<mount>/data/<path>[?version=N]`, `/metadata/<path>` | GetSecret (KV v2 shape) |
//! | `LIST /v1/<mount>/metadata/<dir>/` (or `GET ...?list=true`) | the mapped keys the caller may read (list.rs) |
//! | `GET /v1/<leased path>` | GetSecret with `lease_id`, `lease_duration`, `renewable` |
//! | `PUT /v1/sys/leases/renew`, `/lookup` | the lease's remaining life (sidecred renews the backend lease itself) |
//! | `PUT /v1/sys/leases/revoke` | ReleaseLease |
//! | `GET /v1/sys/health`, `/v1/sys/internal/ui/mounts/<path>` | what the CLIs ask first |
//!
//! The token is the session id. It is bound to its owner as every session is: another uid
//! (or another rule's caller) presenting it gets 403, exactly like a session id over gRPC.

pub mod config;
mod list;
mod read;
pub mod reply;
mod tokens;

pub use config::{RawVaultApi, VaultApiConfig};

use crate::api::broker::BrokerService;
use crate::api::peer::PeerIdentity;
use crate::api::ApiError;
use crate::compat::listen::{clip, Endpoint};
use crate::engine::RequestLine;
use crate::engine::{Catalog, Engine};
use crate::metrics::{HttpEndpoint, HttpRoute};
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use std::sync::Arc;

type Reply = Response<Full<Bytes>>;

/// The Vault-compatible endpoint.
pub struct VaultApi {
    broker: BrokerService,
}

impl VaultApi {
    pub fn new(engine: Arc<Engine>) -> Self {
        Self {
            broker: BrokerService { engine },
        }
    }

    fn engine(&self) -> &Arc<Engine> {
        &self.broker.engine
    }
}

/// A refusal: Vault's status code and one message for `errors`.
#[derive(Debug)]
pub(crate) struct Fail {
    status: StatusCode,
    msg: String,
}

impl Fail {
    fn new(status: StatusCode, msg: impl Into<String>) -> Self {
        Self {
            status,
            msg: msg.into(),
        }
    }
    fn bad(msg: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, msg)
    }
    fn no_route(path: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            format!(
                "no handler for route {:?}: no [vault_api] mapping or sidecred route serves it",
                clip(path, 128)
            ),
        )
    }
}

impl From<ApiError> for Fail {
    fn from(e: ApiError) -> Self {
        Self::new(reply::status_of(&e), e.to_string())
    }
}

/// What one request touched, for its audit line. Ids go in their own fields (the audit log
/// writes them as digests), never in the detail text.
#[derive(Default)]
pub(crate) struct Note {
    secret: Option<String>,
    session: Option<String>,
    lease: Option<String>,
    /// The route, when the raw path would carry an id.
    route: Option<&'static str>,
}

impl Endpoint for VaultApi {
    fn name(&self) -> &'static str {
        "vault_api"
    }

    async fn handle(&self, caller: &PeerIdentity, req: Request<Bytes>) -> Reply {
        let mut note = Note::default();
        let (reply, why) = match self.dispatch(caller, &req, &mut note).await {
            Ok(r) => (r, None),
            Err(f) => (reply::errors(f.status, &[&f.msg]), Some(f.msg)),
        };
        self.audit(caller, &req, reply.status(), &note, why).await;
        reply
    }

    fn error(&self, status: StatusCode, message: &str) -> Reply {
        reply::errors(status, &[message])
    }

    /// Every route using the caller goes through a Broker handler or `session_view`, which
    /// re-check the identity; `sys/health` does not use it.
    fn rechecks_identity(&self) -> bool {
        true
    }

    fn metrics(&self) -> Option<HttpEndpoint> {
        Some(HttpEndpoint::Vault)
    }

    /// The route `dispatch` would take, read from the raw path (not decoded: a class only).
    fn route_class(&self, m: &Method, uri: &http::Uri) -> HttpRoute {
        let Some(path) = uri.path().strip_prefix("/v1/") else {
            return HttpRoute::Other;
        };
        let path = path.strip_suffix('/').unwrap_or(path);
        if path == "sys/health" {
            return HttpRoute::Health;
        }
        if path.starts_with("auth/token/") {
            return HttpRoute::Token;
        }
        if path.starts_with("sys/leases/") {
            return HttpRoute::Lease;
        }
        if path.starts_with("sys/internal/ui/mounts/") {
            return HttpRoute::Mounts;
        }
        let cat = self.engine().catalog();
        let Some(cfg) = cat.config.section::<VaultApiConfig>() else {
            return HttpRoute::Other;
        };
        if path == cfg.login_path {
            return HttpRoute::Login;
        }
        if let Some((_, rest)) = cfg.split_kv(path) {
            return if list::is_list(m, uri.query()).unwrap_or(false) {
                HttpRoute::KvList
            } else if rest.starts_with("data/") {
                HttpRoute::KvRead
            } else if rest.starts_with("metadata/") {
                HttpRoute::KvMetadata
            } else {
                HttpRoute::Other
            };
        }
        if cfg.is_leased(path) {
            return HttpRoute::Leased;
        }
        HttpRoute::Other
    }
}

/// Checks the method against what a route serves.
fn allow(m: &Method, ok: &[Method]) -> Result<(), Fail> {
    if ok.contains(m) {
        Ok(())
    } else {
        Err(Fail::new(
            StatusCode::METHOD_NOT_ALLOWED,
            format!(
                "unsupported operation: {m} (sidecred serves {} here)",
                ok.iter().map(Method::as_str).collect::<Vec<_>>().join(", ")
            ),
        ))
    }
}

/// The client token: `X-Vault-Token`, or `Authorization: Bearer`.
fn token(req: &Request<Bytes>, note: &mut Note) -> Result<String, Fail> {
    let h = req.headers();
    let raw = h
        .get("x-vault-token")
        .or_else(|| h.get(http::header::AUTHORIZATION));
    let Some(raw) = raw else {
        return Err(Fail::new(
            StatusCode::FORBIDDEN,
            "permission denied: no client token (send X-Vault-Token; log in first)",
        ));
    };
    let t = raw.to_str().unwrap_or("");
    let t = t.strip_prefix("Bearer ").unwrap_or(t).trim();
    if crate::api::validate_id("token", t).is_err() {
        return Err(Fail::new(
            StatusCode::FORBIDDEN,
            "permission denied: malformed client token",
        ));
    }
    note.session = Some(t.to_string());
    Ok(t.to_string())
}

impl VaultApi {
    async fn dispatch(
        &self,
        caller: &PeerIdentity,
        req: &Request<Bytes>,
        note: &mut Note,
    ) -> Result<Reply, Fail> {
        use Method as M;
        let cat = self.engine().catalog();
        let Some(cfg) = cat.config.section::<VaultApiConfig>() else {
            return Err(Fail::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "[vault_api] was removed from the config",
            ));
        };
        let raw = req.uri().path();
        let Some(rest) = raw.strip_prefix("/v1/") else {
            return Err(Fail::no_route(raw));
        };
        let path = reply::decode_path(rest).map_err(|m| Fail::bad(format!("invalid path: {m}")))?;
        let m = req.method();
        if req.headers().contains_key("x-vault-wrap-ttl") {
            return Err(Fail::bad(
                "response wrapping is not supported by sidecred (drop X-Vault-Wrap-TTL)",
            ));
        }
        if path == "sys/health" {
            allow(m, &[M::GET, M::HEAD])?;
            return Ok(tokens::health(m == M::HEAD));
        }
        if path == cfg.login_path {
            allow(m, &[M::POST, M::PUT])?;
            return self.login(caller, req.body(), note).await;
        }
        match path.as_str() {
            "auth/token/lookup-self" => {
                allow(m, &[M::GET, M::POST])?;
                let t = token(req, note)?;
                return self.lookup_self(caller, &t, cfg).await;
            }
            "auth/token/revoke-self" => {
                allow(m, &[M::POST, M::PUT])?;
                let t = token(req, note)?;
                return self.revoke_self(caller, &t).await;
            }
            _ => {}
        }
        if let Some(op) = path.strip_prefix("sys/leases/") {
            allow(m, &[M::PUT, M::POST])?;
            let t = token(req, note)?;
            return self.lease_op(caller, &t, op, req.body(), cfg, note).await;
        }
        if let Some(p) = path.strip_prefix("sys/internal/ui/mounts/") {
            allow(m, &[M::GET])?;
            let t = token(req, note)?;
            return self.mount_info(caller, &t, p, cfg).await;
        }
        if let Some((mount, rest)) = cfg.split_kv(&path) {
            if list::is_list(m, req.uri().query())? {
                return list::list(self, caller, req, &cat, cfg, (mount, rest), note).await;
            }
            allow(m, &[M::GET])?;
            return read::kv(self, caller, req, &cat, cfg, (mount, rest), note).await;
        }
        if let Some(t) = cfg.leased(&path) {
            allow(m, &[M::GET])?;
            return read::leased(self, caller, req, &cat, &path, t, note).await;
        }
        Err(Fail::no_route(&path))
    }

    /// One line per request, whatever its outcome: who, which route, which secret, status.
    async fn audit(
        &self,
        caller: &PeerIdentity,
        req: &Request<Bytes>,
        status: StatusCode,
        note: &Note,
        why: Option<String>,
    ) {
        if !self.engine().audit_enabled() {
            return;
        }
        let outcome = match status.as_u16() {
            200..=299 => "ok",
            403 => "denied",
            404 => "not_found",
            400..=499 => "invalid",
            _ => "error",
        };
        let path = note.route.unwrap_or_else(|| clip(req.uri().path(), 256));
        let mut detail = format!("{} {path} -> {}", req.method(), status.as_u16());
        if let Some(w) = why {
            // Messages may quote the ids the caller sent; those are written as digests only.
            let mut w = w;
            for id in [&note.session, &note.lease].into_iter().flatten() {
                w = w.replace(id.as_str(), "<id>");
            }
            detail.push_str(": ");
            detail.push_str(&w);
        }
        let line = RequestLine {
            event: "vault_api_request",
            outcome,
            session: note.session.as_deref(),
            secret: note.secret.as_deref(),
            lease: note.lease.as_deref(),
            detail: &detail,
            ..Default::default()
        };
        self.engine().record_request(caller, line).await;
    }

    /// `sys/internal/ui/mounts/<path>`: the CLIs ask which mount and KV version serve a path.
    async fn mount_info(
        &self,
        caller: &PeerIdentity,
        token: &str,
        path: &str,
        cfg: &VaultApiConfig,
    ) -> Result<Reply, Fail> {
        self.broker.session_view(caller, token).await?;
        let probe = format!("{path}/");
        let Some((mount, _)) = cfg.split_kv(&probe) else {
            return Err(Fail::new(
                StatusCode::NOT_FOUND,
                format!("no KV mount serves {:?}", clip(path, 128)),
            ));
        };
        let data = serde_json::json!({
            "accessor": format!("kv_sidecred_{mount}"),
            "config": {"default_lease_ttl": 0, "force_no_cache": false, "max_lease_ttl": 0},
            "description": "sidecred catalog",
            "external_entropy_access": false,
            "local": false,
            "options": {"version": "2"},
            "path": format!("{mount}/"),
            "seal_wrap": false,
            "type": "kv",
            "uuid": "",
        });
        Ok(reply::json(
            StatusCode::OK,
            &reply::envelope(data, None, serde_json::Value::Null),
        ))
    }
}

/// The spec of a mapped secret, when the catalog has it (its `key` and scope shape replies).
fn spec_of<'c>(cat: &'c Catalog, name: &str) -> Option<&'c crate::backend::SecretSpec> {
    cat.config.secrets.get(name)
}
