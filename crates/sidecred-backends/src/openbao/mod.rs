//! OpenBao / Vault backend: KV v2 (versions, check-and-set rotation), dynamic secrets read
//! through a per-session child token (so OpenBao ties their leases to the session), call-scoped
//! credentials under a per-call grandchild token, and PKI certificates.

mod auth;
mod client;
mod dynamic;
pub mod fleet;
mod kv;
mod options;
mod records;

pub use auth::AuthConfig;
pub use options::{Kind, Opts, PkiRequest};

use super::options::CompiledOptions;
use super::setup::SetupError;
use super::{
    Backend, BackendError, BackendLease, FetchRequest, Fetched, Rotated, SessionHandle, SessionMeta,
};
use crate::SecretSpec;
use async_trait::async_trait;
use auth::OwnToken;
use client::Bao;
use parking_lot::{Mutex, RwLock};
use serde::Deserialize;
use serde_json::Value;
use sidecred_core::duration::Dur;
use sidecred_secret::{SecretBytes, SecretText};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpenBaoConfig {
    /// `http://` or `https://` URL of the server.
    pub address: String,
    /// PEM bundle of CAs that sign the server's certificate.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Default namespace; a secret may set its own.
    #[serde(default)]
    pub namespace: Option<String>,
    /// HTTP client timeout; defaults to `server.backend_timeout`.
    #[serde(default)]
    pub timeout: Option<Dur>,
    /// Create a child token per session (needed for dynamic secrets; off for KV-only use).
    #[serde(default = "yes")]
    pub session_tokens: bool,
    /// Re-validate cached KV values this often (version changes made by other sidecars or
    /// by hand); unset: never.
    #[serde(default)]
    pub recheck_interval: Option<Dur>,
    pub auth: AuthConfig,
}

fn yes() -> bool {
    true
}

impl OpenBaoConfig {
    pub fn validate(&self) -> Result<(), SetupError> {
        if !(self.address.starts_with("http://") || self.address.starts_with("https://")) {
            return Err(SetupError::setting(
                "address",
                format!("`{}` must start with http:// or https://", self.address),
            ));
        }
        if let Some(ca) = &self.ca_file {
            if !ca.exists() {
                return Err(SetupError::setting(
                    "ca_file",
                    format!("`{}` does not exist", ca.display()),
                ));
            }
        }
        self.auth.validate()
    }
}

/// A call-scoped credential's own token, revoked (with its lease) when the call ends.
pub(crate) struct CallToken {
    pub token: SecretText,
    pub session: String,
}

/// State shared with the token keeper task.
pub struct Inner {
    pub name: String,
    pub bao: Bao,
    pub auth: AuthConfig,
    token: RwLock<Arc<OwnToken>>,
    /// Session id → lease ids issued under its token, to confirm the cascade on revocation.
    pub(crate) sessions: Mutex<HashMap<String, Vec<String>>>,
    /// Lease id → the call token it was read with.
    pub(crate) calls: Mutex<HashMap<String, CallToken>>,
    session_tokens: bool,
}

impl Inner {
    pub fn token(&self) -> Arc<OwnToken> {
        self.token.read().clone()
    }

    pub fn set_token(&self, t: OwnToken) {
        *self.token.write() = Arc::new(t);
    }
}

pub struct OpenBaoBackend {
    inner: Arc<Inner>,
    keeper: tokio::task::JoinHandle<()>,
    recheck: Option<Duration>,
}

impl Drop for OpenBaoBackend {
    fn drop(&mut self) {
        self.keeper.abort();
    }
}

impl OpenBaoBackend {
    /// Connects and logs in. A rejected login is fatal; an unreachable server is retried later.
    pub async fn new(
        name: &str,
        cfg: &OpenBaoConfig,
        timeout: Duration,
    ) -> Result<Self, SetupError> {
        let timeout = cfg.timeout.map(|d| d.0).unwrap_or(timeout);
        let ca = cfg.ca_file.as_ref().map(|p| p.display().to_string());
        let bao = Bao::new(&cfg.address, ca.as_deref(), cfg.namespace.clone(), timeout)?;
        let token = match auth::login(&bao, &cfg.auth).await {
            Ok(t) => t,
            Err(BackendError::Unavailable(m)) => {
                tracing::warn!(backend = %name, error = %m, "OpenBao unreachable at start; will keep trying to log in");
                OwnToken {
                    token: SecretText::new(String::new()),
                    accessor: String::new(),
                    ttl: Duration::ZERO,
                    initial_ttl: Duration::ZERO,
                    renewable: false,
                    obtained: std::time::Instant::now(),
                }
            }
            Err(source) => {
                return Err(SetupError::Login {
                    method: cfg.auth.method(),
                    source,
                })
            }
        };
        tracing::info!(backend = %name, method = cfg.auth.method(), accessor = %token.accessor, ttl = token.ttl.as_secs(), "OpenBao backend ready");
        let inner = Arc::new(Inner {
            name: name.to_string(),
            bao,
            auth: cfg.auth.clone(),
            token: RwLock::new(Arc::new(token)),
            sessions: Mutex::new(HashMap::new()),
            calls: Mutex::new(HashMap::new()),
            session_tokens: cfg.session_tokens,
        });
        let keeper = tokio::spawn(auth::keeper(Arc::downgrade(&inner)));
        Ok(Self {
            inner,
            keeper,
            recheck: cfg.recheck_interval.map(|d| d.0).filter(|d| !d.is_zero()),
        })
    }

    fn opts(spec: &SecretSpec) -> Result<&Opts, BackendError> {
        match &spec.options {
            CompiledOptions::OpenBao(o) => Ok(o),
            other => Err(other.mismatch(&spec.name, "openbao")),
        }
    }
}

/// The value handed out: one field when the secret sets `key`, else the whole data object as JSON.
pub(crate) fn select(
    data: &Value,
    key: Option<&str>,
    what: &str,
) -> Result<SecretBytes, BackendError> {
    match key {
        Some(k) => match data.get(k) {
            Some(Value::String(s)) => Ok(SecretBytes::new(s.as_bytes().to_vec())),
            Some(v) => Ok(SecretBytes::new(serde_json::to_vec(v).unwrap_or_default())),
            None => Err(BackendError::NotFound(format!(
                "`{what}` has no field `{k}`"
            ))),
        },
        None => match data {
            Value::Object(m) if m.len() == 1 => {
                select(data, m.keys().next().map(String::as_str), what)
            }
            Value::Null => Err(BackendError::NotFound(format!("`{what}` has no data"))),
            v => Ok(SecretBytes::new(serde_json::to_vec(v).unwrap_or_default())),
        },
    }
}

#[async_trait]
impl Backend for OpenBaoBackend {
    fn kind(&self) -> &'static str {
        "openbao"
    }

    async fn fetch(&self, req: &FetchRequest<'_>) -> Result<Fetched, BackendError> {
        let o = Self::opts(req.spec)?;
        match o.kind {
            Kind::Kv2 => kv::read(&self.inner, req.spec, o, req.version).await,
            Kind::Dynamic => dynamic::read(&self.inner, req, o).await,
            Kind::Pki => dynamic::issue(&self.inner, req, o).await,
        }
    }

    async fn rotate(
        &self,
        spec: &SecretSpec,
        value: Option<SecretBytes>,
    ) -> Result<Rotated, BackendError> {
        let o = Self::opts(spec)?;
        if o.kind != Kind::Kv2 {
            return Err(BackendError::Precondition(format!(
                "`{}` is issued fresh by OpenBao; only kv2 secrets rotate",
                spec.name
            )));
        }
        kv::rotate(&self.inner, spec, o, value).await
    }

    fn recheck_interval(&self) -> Option<Duration> {
        self.recheck
    }

    fn reissues(&self, spec: &SecretSpec) -> bool {
        Self::opts(spec).is_ok_and(|o| o.kind != Kind::Kv2)
    }

    fn records(&self) -> Option<&dyn super::RecordStore> {
        Some(self.inner.as_ref())
    }

    async fn retire(&self, spec: &SecretSpec, version: &str) -> Result<(), BackendError> {
        let o = Self::opts(spec)?;
        if o.delete_on_retire {
            kv::soft_delete(&self.inner, o, version).await?;
        }
        Ok(())
    }

    async fn current_version(&self, spec: &SecretSpec) -> Result<Option<String>, BackendError> {
        let o = Self::opts(spec)?;
        if o.kind != Kind::Kv2 {
            return Ok(None);
        }
        kv::current_version(&self.inner, o).await.map(Some)
    }

    async fn open_session(
        &self,
        session: &SessionMeta,
    ) -> Result<Option<SessionHandle>, BackendError> {
        if !self.inner.session_tokens {
            return Ok(None);
        }
        dynamic::open_session(&self.inner, session).await.map(Some)
    }

    async fn revoke_session(
        &self,
        session: &SessionMeta,
        handle: &SessionHandle,
    ) -> Result<u32, BackendError> {
        dynamic::revoke_session(&self.inner, session, handle).await
    }

    async fn renew_lease(
        &self,
        lease: &BackendLease,
        handle: Option<&SessionHandle>,
    ) -> Result<Duration, BackendError> {
        dynamic::renew(&self.inner, lease, handle).await
    }

    async fn revoke_lease(
        &self,
        lease: &BackendLease,
        handle: Option<&SessionHandle>,
    ) -> Result<(), BackendError> {
        dynamic::revoke_lease(&self.inner, lease, handle).await
    }

    fn fleet_store(&self, mount: &str, prefix: &str) -> Option<Arc<dyn crate::FleetStore>> {
        Some(Arc::new(fleet::BaoStore::backend(
            self.inner.clone(),
            mount,
            prefix,
        )))
    }

    async fn health(&self) -> Result<String, BackendError> {
        let server = self.inner.bao.health().await?;
        let t = self.inner.token();
        let left = t.ttl.saturating_sub(t.obtained.elapsed());
        Ok(format!(
            "{server}; auth {} (token {}), {} live sessions",
            self.inner.auth.method(),
            if t.ttl.is_zero() {
                "without expiry".to_string()
            } else {
                format!("{}s left", left.as_secs())
            },
            self.inner.sessions.lock().len()
        ))
    }
}

#[cfg(test)]
mod tests;
