//! The one trait every credential source implements, and the registry that builds them from config.
//!
//! Backends return [`BackendError`]s that say what failed by name, never by value; the API layer
//! is the only place they become gRPC statuses.
//!
//! A crate of its own, between the engine and the leaf types: a backend sees catalog entries
//! ([`SecretSpec`], options compiled at load), the caller's identity and its SAN rules, and
//! nothing of the engine, the config parser or the transports. Cargo enforces that; the engine
//! (in the `sidecred` crate today) depends on this crate, never the other way round.
//!
//! `openbao` and `aws` are cargo features, on by default; the dev backend and the CA are always
//! in ([`features`]).

#![forbid(unsafe_code)]

#[cfg(feature = "aws")]
pub mod aws;
pub mod ca;
pub mod dev;
pub mod features;
mod fleet_store;
#[cfg(feature = "openbao")]
pub mod openbao;
pub mod options;
mod setup;
mod spec;

pub use fleet_store::FleetStore;
pub use options::{CompiledOptions, OptionError, RawOptions, SecretField, SecretShape};
pub use setup::SetupError;
pub use spec::SecretSpec;

use async_trait::async_trait;
use sidecred_core::identity::PeerIdentity;
use sidecred_core::san::SanPolicy;
use sidecred_secret::{SecretBytes, SecretText};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

pub use sidecred_core::BackendError;

/// A lease the backend itself tracks (dynamic credentials), renewable and revocable there.
#[derive(Clone, Debug)]
pub struct BackendLease {
    pub id: String,
    pub ttl: Duration,
    pub renewable: bool,
}

/// What a backend returns for one read.
#[derive(Debug)]
pub struct Fetched {
    pub value: SecretBytes,
    pub version: String,
    /// Set for dynamic credentials; its ttl bounds the cached value's life.
    pub lease: Option<BackendLease>,
}

/// A backend's per-session state, such as an OpenBao child token.
#[derive(Clone, Debug)]
pub struct SessionHandle {
    /// Safe to log (an accessor or an id).
    pub id: String,
    pub token: Option<SecretText>,
}

/// What a session looks like to a backend.
#[derive(Clone, Debug)]
pub struct SessionMeta {
    pub id: String,
    pub labels: BTreeMap<String, String>,
    pub ttl: Duration,
}

/// One read.
pub struct FetchRequest<'a> {
    pub spec: &'a SecretSpec,
    pub session: &'a SessionMeta,
    /// This backend's handle for the session, when it made one.
    pub handle: Option<&'a SessionHandle>,
    pub call_id: Option<&'a str>,
    /// A specific version; None for the current one.
    pub version: Option<&'a str>,
    pub caller: &'a PeerIdentity,
    /// The SPIFFE ID the caller's policy rule assigns, for certificate issuers.
    pub spiffe_id: Option<&'a str>,
    /// The DNS/IP SANs the caller's policy rule allows in its certificates.
    pub sans: Option<&'a SanPolicy>,
}

/// What a backend knows about one version besides its value (AWS: ARN, name, creation date,
/// staging labels), for APIs that mirror the backend's own answer. Never holds the value.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VersionInfo {
    pub arn: Option<String>,
    pub name: Option<String>,
    /// Creation time as (seconds, nanoseconds) since the Unix epoch.
    pub created: Option<(i64, u32)>,
    /// Staging labels when the version was read (they move on rotation).
    pub stages: Vec<String>,
    /// The value was stored as binary (SecretBinary), not as a string.
    pub binary: bool,
}

/// Result of a rotation at the backend.
#[derive(Clone, Debug)]
pub struct Rotated {
    pub version: String,
    pub previous_version: Option<String>,
}

#[async_trait]
pub trait Backend: Send + Sync + 'static {
    fn kind(&self) -> &'static str;

    async fn fetch(&self, req: &FetchRequest<'_>) -> Result<Fetched, BackendError>;

    /// Makes a new version current. `value` is supplied by a rotation job, or generated.
    async fn rotate(
        &self,
        spec: &SecretSpec,
        _value: Option<SecretBytes>,
    ) -> Result<Rotated, BackendError> {
        Err(BackendError::Precondition(format!(
            "backend kind `{}` cannot rotate `{}`",
            self.kind(),
            spec.name
        )))
    }

    /// True when every read issues a fresh credential (dynamic leases, certificates): such a
    /// secret rotates by replacing the credentials handed out, not by writing a new version.
    fn reissues(&self, _spec: &SecretSpec) -> bool {
        false
    }

    /// Check-and-set records for fleet coordination (rotation locks), when the backend has them.
    fn records(&self) -> Option<&dyn RecordStore> {
        None
    }

    /// Called when a previous version leaves its grace window.
    async fn retire(&self, _spec: &SecretSpec, _version: &str) -> Result<(), BackendError> {
        Ok(())
    }

    /// Cheap change detection: the current version id without fetching the value.
    async fn current_version(&self, _spec: &SecretSpec) -> Result<Option<String>, BackendError> {
        Ok(None)
    }

    /// How often the engine re-validates shared cached values with `current_version`
    /// (changes made outside sidecred); None: never.
    fn recheck_interval(&self) -> Option<Duration> {
        None
    }

    async fn open_session(
        &self,
        _session: &SessionMeta,
    ) -> Result<Option<SessionHandle>, BackendError> {
        Ok(None)
    }

    /// Revokes everything the backend tied to the session; returns how many things it revoked.
    async fn revoke_session(
        &self,
        _session: &SessionMeta,
        _handle: &SessionHandle,
    ) -> Result<u32, BackendError> {
        Ok(0)
    }

    /// Extends a backend lease; returns its new ttl.
    async fn renew_lease(
        &self,
        lease: &BackendLease,
        _handle: Option<&SessionHandle>,
    ) -> Result<Duration, BackendError> {
        Ok(lease.ttl)
    }

    async fn revoke_lease(
        &self,
        _lease: &BackendLease,
        _handle: Option<&SessionHandle>,
    ) -> Result<(), BackendError> {
        Ok(())
    }

    /// Where fleet revocation records live, for a backend that can hold them (OpenBao).
    fn fleet_store(&self, _mount: &str, _prefix: &str) -> Option<Arc<dyn FleetStore>> {
        None
    }

    /// What the backend recorded about `version` of `spec` when it last read it; None when it
    /// keeps nothing of the kind.
    fn version_info(&self, _spec: &SecretSpec, _version: &str) -> Option<Arc<VersionInfo>> {
        None
    }

    /// A one-line health summary (no secrets), or why the backend is unhealthy.
    async fn health(&self) -> Result<String, BackendError>;

    /// The certificate authority behind this backend, for the SPIFFE, SDS, CSR and CRL APIs.
    fn authority(&self) -> Option<Arc<ca::Authority>> {
        None
    }
}

/// Small JSON records with check-and-set, shared by every sidecar that uses the same server.
#[async_trait]
pub trait RecordStore: Send + Sync {
    /// The record at `mount`/`path` and its version; None when there is none.
    async fn read_record(
        &self,
        mount: &str,
        path: &str,
    ) -> Result<Option<(serde_json::Value, u64)>, BackendError>;

    /// Writes if the stored version is still `cas` (0: only if absent) and returns the new
    /// version; a lost race is `Precondition`.
    async fn write_record(
        &self,
        mount: &str,
        path: &str,
        data: serde_json::Value,
        cas: u64,
    ) -> Result<u64, BackendError>;
}

/// Backend settings from `[backends.NAME]`, tagged by `kind`: one variant per kind this build
/// has (`features` reads them, and refuses a kind left out naming its cargo feature).
#[derive(Clone, Debug)]
pub enum BackendConfig {
    Dev(dev::DevConfig),
    #[cfg(feature = "openbao")]
    OpenBao(openbao::OpenBaoConfig),
    #[cfg(feature = "aws")]
    Aws(aws::AwsConfig),
    Ca(ca::CaConfig),
}

impl BackendConfig {
    pub fn kind(&self) -> &'static str {
        match self {
            BackendConfig::Dev(_) => "dev",
            #[cfg(feature = "openbao")]
            BackendConfig::OpenBao(_) => "openbao",
            #[cfg(feature = "aws")]
            BackendConfig::Aws(_) => "aws",
            BackendConfig::Ca(_) => "ca",
        }
    }

    pub fn validate(&self) -> Result<(), SetupError> {
        match self {
            BackendConfig::Dev(c) => c.validate(),
            #[cfg(feature = "openbao")]
            BackendConfig::OpenBao(c) => c.validate(),
            #[cfg(feature = "aws")]
            BackendConfig::Aws(c) => c.validate(),
            BackendConfig::Ca(c) => c.validate(),
        }
    }

    /// Compiles one catalog entry's options for this backend, checked against its path and
    /// scope; done once, at config load.
    pub fn prepare(
        &self,
        secret: &SecretShape<'_>,
        raw: RawOptions<'_>,
    ) -> Result<CompiledOptions, OptionError> {
        Ok(match self {
            BackendConfig::Dev(c) => CompiledOptions::Dev(c.prepare(secret, raw)?),
            #[cfg(feature = "openbao")]
            BackendConfig::OpenBao(c) => CompiledOptions::OpenBao(c.prepare(secret, raw)?),
            #[cfg(feature = "aws")]
            BackendConfig::Aws(c) => CompiledOptions::Aws(c.prepare(secret, raw)?),
            BackendConfig::Ca(c) => CompiledOptions::Ca(c.prepare(secret, raw)?),
        })
    }

    /// Builds the backend. `clock` is the engine's: a backend that keeps time itself (the CA's
    /// staged activation, grace and leaf lifetimes) keeps it on the same clock.
    pub async fn build(
        &self,
        name: &str,
        // Only the remote backends bound their calls by it.
        #[cfg_attr(
            not(any(feature = "openbao", feature = "aws")),
            allow(unused_variables)
        )]
        timeout: Duration,
        clock: Arc<dyn sidecred_core::clock::Clock>,
    ) -> Result<Arc<dyn Backend>, SetupError> {
        match self {
            BackendConfig::Dev(c) => Ok(Arc::new(dev::DevBackend::new(name, c)?)),
            #[cfg(feature = "openbao")]
            BackendConfig::OpenBao(c) => Ok(Arc::new(
                openbao::OpenBaoBackend::new(name, c, timeout).await?,
            )),
            #[cfg(feature = "aws")]
            BackendConfig::Aws(c) => Ok(Arc::new(aws::AwsBackend::new(name, c, timeout).await?)),
            BackendConfig::Ca(c) => Ok(Arc::new(ca::CaBackend::new(name, c, clock)?)),
        }
    }
}
