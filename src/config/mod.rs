//! Configuration: raw TOML (unknown fields rejected, `${VAR}` interpolated) validated into typed values.
//!
//! Every error names the file, a line and column, the key, and what was expected.

mod interp;
mod secret;
mod validate;

pub use crate::backend::SecretSpec;
pub use crate::engine::settings::{SchedulerConfig, ServerConfig, Settings};
pub use crate::metrics::MetricsConfig;
pub use interp::{env_lookup, interpolate, map_lookup, InterpError};
pub use sidecred_core::duration::{parse_duration, Dur, DurationError, MAX_DURATION};
pub use sidecred_core::spec::{line_col, ConfigError, Locator, Scope, Zone};
pub use validate::SchedulerError;

use crate::engine::settings::{CatalogConfig, ConfigSource};

use crate::backend::BackendConfig;
use crate::policy::{Policy, RawRule};
use serde::Deserialize;
use std::any::{Any, TypeId};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use toml::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    log: LogConfig,
    #[serde(default)]
    audit: AuditConfig,
    #[serde(default)]
    metrics: MetricsConfig,
    #[serde(default)]
    scheduler: SchedulerConfig,
    #[serde(default)]
    backends: BTreeMap<String, Spanned<BackendConfig>>,
    #[serde(default, rename = "secret")]
    secrets: Vec<secret::RawSecret>,
    #[serde(default)]
    policy: RawPolicy,
    #[serde(default)]
    fleet: Option<Spanned<crate::fleet::RawFleet>>,
    #[serde(default)]
    aws_agent_api: Option<Spanned<crate::compat::aws_agent::config::RawAwsAgentApi>>,
    vault_api: Option<Spanned<crate::compat::vault::RawVaultApi>>,
    #[serde(default)]
    proxy: Option<Spanned<crate::proxy::config::RawProxy>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    workload_socket: Spanned<String>,
    #[serde(default = "default_workload_mode")]
    workload_socket_mode: Spanned<String>,
    admin_socket: Spanned<String>,
    #[serde(default = "default_admin_mode")]
    admin_socket_mode: Spanned<String>,
    #[serde(default = "default_session_ttl")]
    default_session_ttl: Dur,
    #[serde(default = "default_max_session_ttl")]
    max_session_ttl: Dur,
    #[serde(default = "default_stale_window")]
    stale_window: Dur,
    #[serde(default = "default_backend_timeout")]
    backend_timeout: Dur,
    /// How long a new connection may take to send its HTTP/2 preface before it is dropped.
    #[serde(default = "default_handshake_timeout")]
    handshake_timeout: Dur,
    /// Open connections per socket; a caller beyond it is accepted, identified and refused.
    #[serde(default = "default_max_connections")]
    max_connections: usize,
    /// Open connections per socket from one uid (see api/limits.rs).
    #[serde(default = "default_max_connections_per_uid")]
    max_connections_per_uid: usize,
    /// Where the revocation and retirement journal lives (ids only, never values).
    #[serde(default)]
    state_dir: Option<String>,
    /// Lock all memory (needs CAP_IPC_LOCK); secret buffers are locked either way.
    #[serde(default)]
    mlockall: bool,
    /// Socket serving the SPIFFE Workload API and Envoy SDS from a CA backend.
    #[serde(default)]
    spiffe_socket: Option<Spanned<String>>,
    /// The CA backend behind spiffe_socket; default: the only `kind = "ca"` backend.
    #[serde(default)]
    spiffe_ca: Option<Spanned<String>>,
    /// Open sessions one identity (uid and policy rule) may hold at once.
    #[serde(default = "default_max_sessions_per_identity")]
    max_sessions_per_identity: usize,
    /// Distinct call ids one session may use.
    #[serde(default = "default_max_calls_per_session")]
    max_calls_per_session: usize,
    /// WatchSecret streams one session may hold open.
    #[serde(default = "default_max_watches_per_session")]
    max_watches_per_session: usize,
    /// Test hook for races: while `<dir>/hold` exists, every backend answer waits (after the
    /// backend answered, before it is recorded) and says so by creating `<dir>/held`.
    #[serde(default)]
    test_hold_dir: Option<String>,
}

impl Default for RawServer {
    fn default() -> Self {
        let span = |s: &str| Spanned::new(0..0, s.to_string());
        Self {
            workload_socket: span(""),
            workload_socket_mode: default_workload_mode(),
            admin_socket: span(""),
            admin_socket_mode: default_admin_mode(),
            default_session_ttl: default_session_ttl(),
            max_session_ttl: default_max_session_ttl(),
            stale_window: default_stale_window(),
            backend_timeout: default_backend_timeout(),
            handshake_timeout: default_handshake_timeout(),
            max_connections: default_max_connections(),
            max_connections_per_uid: default_max_connections_per_uid(),
            state_dir: None,
            mlockall: false,
            spiffe_socket: None,
            spiffe_ca: None,
            max_sessions_per_identity: default_max_sessions_per_identity(),
            max_calls_per_session: default_max_calls_per_session(),
            max_watches_per_session: default_max_watches_per_session(),
            test_hold_dir: None,
        }
    }
}

fn default_max_sessions_per_identity() -> usize {
    256
}
fn default_max_calls_per_session() -> usize {
    4096
}
fn default_max_watches_per_session() -> usize {
    64
}

fn default_workload_mode() -> Spanned<String> {
    Spanned::new(0..0, "0660".into())
}
fn default_admin_mode() -> Spanned<String> {
    Spanned::new(0..0, "0600".into())
}
fn default_session_ttl() -> Dur {
    Dur(Duration::from_secs(3600))
}
fn default_max_session_ttl() -> Dur {
    Dur(Duration::from_secs(86400))
}
fn default_stale_window() -> Dur {
    Dur(Duration::from_secs(300))
}
fn default_backend_timeout() -> Dur {
    Dur(Duration::from_secs(5))
}
fn default_max_connections() -> usize {
    1024
}
fn default_max_connections_per_uid() -> usize {
    256
}
fn default_handshake_timeout() -> Dur {
    Dur(Duration::from_secs(10))
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    #[serde(default = "default_level")]
    pub level: String,
    #[serde(default)]
    pub format: LogFormat,
    /// OTLP/HTTP traces URL (e.g. `http://127.0.0.1:4318/v1/traces`); span export is off when unset.
    #[serde(default)]
    pub otlp_endpoint: Option<String>,
    /// `service.name` of exported spans.
    #[serde(default = "default_service_name")]
    pub otlp_service_name: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: default_level(),
            format: LogFormat::Pretty,
            otlp_endpoint: None,
            otlp_service_name: default_service_name(),
        }
    }
}

fn default_service_name() -> String {
    "sidecred".into()
}

fn default_level() -> String {
    "info".into()
}

#[derive(Clone, Copy, Debug, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Pretty,
    Json,
}

#[derive(Clone, Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// JSON-lines file; no audit log when unset.
    pub path: Option<PathBuf>,
    /// When true, a request fails if its audit line cannot be written.
    #[serde(default)]
    pub fail_closed: bool,
    /// Session, lease and call ids and label values are written as HMAC-SHA256 digests
    /// (`sidecred audit hash VALUE` finds one). Default true.
    #[serde(default = "yes")]
    pub hmac_ids: bool,
    /// The HMAC key (created 0600 when absent). Default: the audit path plus `.hmac-key`.
    #[serde(default)]
    pub hmac_key_file: Option<PathBuf>,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    #[serde(default)]
    workload: Vec<RawRule>,
    #[serde(default)]
    admin: Vec<RawRule>,
}

/// The validated configuration: what the engine is built from (`engine`, which the config
/// derefs to, so `config.server` and `config.secrets` read as before) and the sections only
/// the server itself reads.
#[derive(Clone, Debug)]
pub struct Config {
    pub source: PathBuf,
    pub log: LogConfig,
    pub audit: AuditConfig,
    pub metrics: MetricsConfig,
    pub engine: Settings,
    /// Fleet-wide revocation, when `[fleet]` is set.
    pub fleet: Option<crate::fleet::FleetConfig>,
    /// The AWS-Secrets-Manager-Agent-compatible endpoint, when `[aws_agent_api]` is set.
    pub aws_agent_api: Option<crate::compat::aws_agent::config::AwsAgentApiConfig>,
    /// The Vault-compatible HTTP endpoint (src/compat/vault/).
    pub vault_api: Option<crate::compat::vault::VaultApiConfig>,
    /// The credential-injection forward proxy (src/proxy/), when `[proxy]` is set.
    pub proxy: Option<crate::proxy::config::ProxyConfig>,
}

impl std::ops::Deref for Config {
    type Target = Settings;
    fn deref(&self) -> &Settings {
        &self.engine
    }
}

impl std::ops::DerefMut for Config {
    fn deref_mut(&mut self) -> &mut Settings {
        &mut self.engine
    }
}

/// The engine keeps the whole config in its catalog without knowing its type; the server's
/// layers read their own sections back with [`Config::of`].
impl ConfigSource for Config {
    fn settings(&self) -> &Settings {
        &self.engine
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
    fn section(&self, ty: TypeId) -> Option<&dyn Any> {
        use crate::compat::aws_agent::config::AwsAgentApiConfig;
        use crate::compat::vault::VaultApiConfig;
        use crate::proxy::config::ProxyConfig;
        fn any<T: Any>(v: &T) -> &dyn Any {
            v
        }
        if ty == TypeId::of::<VaultApiConfig>() {
            self.vault_api.as_ref().map(any)
        } else if ty == TypeId::of::<AwsAgentApiConfig>() {
            self.aws_agent_api.as_ref().map(any)
        } else if ty == TypeId::of::<ProxyConfig>() {
            self.proxy.as_ref().map(any)
        } else if ty == TypeId::of::<MetricsConfig>() {
            Some(any(&self.metrics))
        } else {
            None
        }
    }
}

impl Config {
    /// The config a catalog was built from; None only for a catalog built from something else
    /// (the server builds every catalog from a `Config`).
    pub fn of(c: &CatalogConfig) -> Option<&Config> {
        c.downcast::<Config>()
    }
}

impl Config {
    /// Reads, interpolates and validates a config file.
    /// The raw and interpolated text are wiped once parsed: the file may hold dev seed values.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map(zeroize::Zeroizing::new)
            .map_err(|e| ConfigError {
                file: path.to_path_buf(),
                line: 0,
                column: 0,
                key: String::new(),
                message: format!("cannot read: {e}"),
                source: Some(Arc::new(e)),
            })?;
        Self::parse(path, &text, &env_lookup)
    }

    /// Parses config text; `env` resolves `${VAR}`.
    pub fn parse(
        path: &Path,
        raw_text: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let text = interpolate(raw_text, env)
            .map(zeroize::Zeroizing::new)
            .map_err(|e| ConfigError {
                file: path.to_path_buf(),
                line: e.line,
                column: e.column,
                key: String::new(),
                message: e.message.clone(),
                source: Some(Arc::new(e)),
            })?;
        let text: &str = &text;
        let loc = Locator { file: path, text };
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            // A syntax error can sit at offset 0 (an empty span there is still a position).
            let (line, column) = e.span().map(|s| line_col(text, s.start)).unwrap_or((0, 0));
            // TOML's error is not kept as the source: it holds the text, which may hold values.
            ConfigError {
                file: path.to_path_buf(),
                line,
                column,
                key: String::new(),
                message: e.message().trim_end().to_string(),
                source: None,
            }
        })?;
        validate::validate(raw, &loc)
    }
}

impl Config {
    pub fn workload_policy_len(&self) -> usize {
        self.workload_policy.len()
    }
    pub fn admin_policy_len(&self) -> usize {
        self.admin_policy.len()
    }
}

#[cfg(test)]
mod fleet_tests;
#[cfg(test)]
mod policy_tests;
#[cfg(test)]
mod tests;
