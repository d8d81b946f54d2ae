//! From raw TOML to the validated [`Config`]: server settings checked, backends validated,
//! catalog entries compiled, policies built, and the server's own sections checked against them.

use super::*;

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

pub(super) fn validate(raw: RawConfig, loc: &Locator) -> Result<Config, ConfigError> {
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
            Some(b) if b.kind() == "openbao" => {}
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
