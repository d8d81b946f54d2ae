//! Configuration: raw TOML (unknown fields rejected, `${VAR}` interpolated) validated into typed values.
//!
//! Every error names the file, a line and column, the key, and what was expected.

mod interp;
mod secret;

pub use crate::backend::SecretSpec;
pub use crate::engine::settings::{SchedulerConfig, ServerConfig, Settings};
pub use crate::metrics::MetricsConfig;
pub use interp::{env_lookup, interpolate, map_lookup, InterpError};
pub use sidecred_core::duration::{parse_duration, Dur, DurationError, MAX_DURATION};
pub use sidecred_core::spec::{line_col, ConfigError, Locator, Scope, Zone};

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
        validate(raw, &loc)
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

fn parse_mode(s: &Spanned<String>, key: &str, loc: &Locator) -> Result<u32, ConfigError> {
    let v = s.get_ref().trim_start_matches("0o");
    u32::from_str_radix(v, 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| {
            loc.at(
                s.span(),
                key,
                format!(
                    "expected an octal file mode such as \"0660\", got \"{}\"",
                    s.get_ref()
                ),
            )
        })
}

fn validate(raw: RawConfig, loc: &Locator) -> Result<Config, ConfigError> {
    let s = &raw.server;
    let need_path = |v: &Spanned<String>, key: &str| -> Result<PathBuf, ConfigError> {
        if v.get_ref().is_empty() {
            return Err(loc.at(
                v.span(),
                format!("server.{key}"),
                "required: an absolute socket path",
            ));
        }
        let p = PathBuf::from(v.get_ref());
        if !p.is_absolute() {
            return Err(loc.at(
                v.span(),
                format!("server.{key}"),
                "expected an absolute path",
            ));
        }
        Ok(p)
    };
    let workload_socket = need_path(&s.workload_socket, "workload_socket")?;
    let admin_socket = need_path(&s.admin_socket, "admin_socket")?;
    if workload_socket.parent() == admin_socket.parent() {
        return Err(loc.at(
            s.admin_socket.span(),
            "server.admin_socket",
            "must not be in the workload socket's directory (a workload could reach it)",
        ));
    }
    let server = ServerConfig {
        workload_socket,
        workload_socket_mode: parse_mode(
            &s.workload_socket_mode,
            "server.workload_socket_mode",
            loc,
        )?,
        admin_socket,
        admin_socket_mode: parse_mode(&s.admin_socket_mode, "server.admin_socket_mode", loc)?,
        default_session_ttl: s.default_session_ttl.0,
        max_session_ttl: s.max_session_ttl.0,
        stale_window: s.stale_window.0,
        backend_timeout: s.backend_timeout.0,
        handshake_timeout: s.handshake_timeout.0,
        max_connections: s.max_connections,
        max_connections_per_uid: s.max_connections_per_uid,
        state_dir: s.state_dir.as_ref().map(PathBuf::from),
        mlockall: s.mlockall,
        spiffe_socket: s
            .spiffe_socket
            .as_ref()
            .map(|p| need_path(p, "spiffe_socket"))
            .transpose()?,
        spiffe_ca: None,
        max_sessions_per_identity: s.max_sessions_per_identity,
        max_calls_per_session: s.max_calls_per_session,
        max_watches_per_session: s.max_watches_per_session,
        test_hold_dir: s.test_hold_dir.as_ref().map(PathBuf::from),
    };
    for (v, key) in [
        (
            server.max_sessions_per_identity,
            "server.max_sessions_per_identity",
        ),
        (server.max_calls_per_session, "server.max_calls_per_session"),
        (
            server.max_connections_per_uid,
            "server.max_connections_per_uid",
        ),
        (
            server.max_watches_per_session,
            "server.max_watches_per_session",
        ),
    ] {
        if v == 0 {
            return Err(loc.at(0..0, key, "must be greater than 0"));
        }
    }
    if let Some(p) = &server.spiffe_socket {
        if p.parent() == server.admin_socket.parent() {
            return Err(loc.at(
                0..0,
                "server.spiffe_socket",
                "must not be in the admin socket's directory",
            ));
        }
    }
    if server.default_session_ttl > server.max_session_ttl {
        return Err(loc.at(
            0..0,
            "server.default_session_ttl",
            "must not exceed server.max_session_ttl",
        ));
    }
    if server.backend_timeout.is_zero() {
        return Err(loc.at(0..0, "server.backend_timeout", "must be greater than 0"));
    }
    if server.max_connections == 0 {
        return Err(loc.at(0..0, "server.max_connections", "must be greater than 0"));
    }
    if server.handshake_timeout.is_zero() {
        return Err(loc.at(0..0, "server.handshake_timeout", "must be greater than 0"));
    }
    if let Err(e) = tracing_subscriber::EnvFilter::try_new(&raw.log.level) {
        let msg = format!("invalid log filter `{}`: {e}", raw.log.level);
        let mut err = loc.at(0..0, "log.level", msg);
        err.source = Some(Arc::new(e));
        return Err(err);
    }
    if let Some(url) = &raw.log.otlp_endpoint {
        if !(url.starts_with("http://") || url.starts_with("https://"))
            || url.contains(char::is_whitespace)
        {
            return Err(loc.at(
                0..0,
                "log.otlp_endpoint",
                format!(
                    "expected an http(s) URL such as http://127.0.0.1:4318/v1/traces, got `{url}`"
                ),
            ));
        }
    }
    if raw.log.otlp_service_name.is_empty() {
        return Err(loc.at(0..0, "log.otlp_service_name", "must not be empty"));
    }
    if let Some(addr) = &raw.metrics.listen {
        let a: std::net::SocketAddr = addr.parse().map_err(|_| {
            loc.at(
                0..0,
                "metrics.listen",
                format!("expected an address such as 127.0.0.1:9464, got `{addr}`"),
            )
        })?;
        if !a.ip().is_loopback() {
            return Err(loc.at(
                0..0,
                "metrics.listen",
                "must be a loopback address (metrics stay inside the pod)",
            ));
        }
    }

    let mut backends = BTreeMap::new();
    for (name, b) in raw.backends {
        crate::error::validate_name(&name)
            .map_err(|m| loc.at(b.span(), format!("backends.{name}"), m))?;
        b.get_ref()
            .validate()
            .map_err(|e| loc.caused(b.span(), format!("backends.{name}"), e))?;
        backends.insert(name, b.into_inner());
    }

    let fleet = match raw.fleet {
        Some(f) => {
            let span = f.span();
            Some(
                f.into_inner()
                    .validate(&backends)
                    .map_err(|(k, m)| loc.at(span, k, m))?,
            )
        }
        None => None,
    };
    let aws_agent_api = match raw.aws_agent_api {
        Some(a) => {
            let span = a.span();
            Some(
                a.into_inner()
                    .validate()
                    .map_err(|(k, m)| loc.at(span, k, m))?,
            )
        }
        None => None,
    };
    let mut server = server;
    if server.spiffe_socket.is_some() {
        let cas: Vec<&String> = backends
            .iter()
            .filter(|(_, b)| b.kind() == "ca")
            .map(|(n, _)| n)
            .collect();
        server.spiffe_ca = Some(match &s.spiffe_ca {
            Some(n) if cas.contains(&n.get_ref()) => n.get_ref().clone(),
            Some(n) => {
                return Err(loc.at(
                    n.span(),
                    "server.spiffe_ca",
                    format!("`{}` is not a backend of kind \"ca\"", n.get_ref()),
                ))
            }
            None if cas.len() == 1 => cas[0].clone(),
            None => {
                return Err(loc.at(
                    0..0,
                    "server.spiffe_socket",
                    "needs exactly one backend of kind \"ca\", or server.spiffe_ca naming one",
                ))
            }
        });
    }

    let secrets = secret::build(raw.secrets, &backends, loc)?;

    check_scheduler(&raw.scheduler, &backends).map_err(|e| loc.caused(0..0, "scheduler", e))?;
    let workload_policy = Policy::build(raw.policy.workload, "policy.workload", &secrets, loc)?;
    let admin_policy = Policy::build(raw.policy.admin, "policy.admin", &secrets, loc)?;
    let vault_api = match raw.vault_api {
        Some(v) => {
            let span = v.span();
            Some(
                v.into_inner()
                    .validate(&|n| secrets.contains_key(n), &server.admin_socket)
                    .map_err(|(k, m)| loc.at(span, k, m))?,
            )
        }
        None => None,
    };
    let proxy = match raw.proxy {
        Some(p) => {
            let span = p.span();
            Some(
                p.into_inner()
                    .validate(&|n| secrets.get(n).map(|s| s.zone))
                    .map_err(|(k, m)| loc.at(span, k, m))?,
            )
        }
        None => None,
    };
    Ok(Config {
        source: loc.file.to_path_buf(),
        log: raw.log,
        audit: raw.audit,
        metrics: raw.metrics,
        engine: Settings {
            server,
            scheduler: raw.scheduler,
            backends,
            secrets,
            workload_policy,
            admin_policy,
        },
        fleet,
        aws_agent_api,
        vault_api,
        proxy,
    })
}

/// Why `[scheduler]` is refused.
#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    #[error("lock_backend `{name}` is of kind `{kind}`; locks need an openbao backend")]
    NotOpenBao { name: String, kind: &'static str },
    #[error("lock_backend `{0}` is not a configured backend")]
    Unknown(String),
    #[error("lock_mount and lock_prefix must be non-empty paths without empty or `..` parts")]
    Path,
    #[error("claim_ttl must be at least 1s")]
    ClaimTtl,
}

fn check_scheduler(
    s: &SchedulerConfig,
    backends: &BTreeMap<String, BackendConfig>,
) -> Result<(), SchedulerError> {
    if let Some(b) = &s.lock_backend {
        match backends.get(b) {
            Some(BackendConfig::OpenBao(_)) => {}
            Some(other) => {
                return Err(SchedulerError::NotOpenBao {
                    name: b.clone(),
                    kind: other.kind(),
                })
            }
            None => return Err(SchedulerError::Unknown(b.clone())),
        }
    }
    let bad = |v: &str| v.is_empty() || v.split('/').any(|p| p.is_empty() || p == "..");
    if bad(&s.lock_mount) || bad(&s.lock_prefix) {
        return Err(SchedulerError::Path);
    }
    if s.claim_ttl.0 < Duration::from_secs(1) {
        return Err(SchedulerError::ClaimTtl);
    }
    Ok(())
}

#[cfg(test)]
mod fleet_tests;
#[cfg(test)]
mod policy_tests;
#[cfg(test)]
mod tests;
