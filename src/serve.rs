//! `sidecred serve`: load config, start logging and the audit log, bind sockets, run until a signal.

use crate::api::server;
use crate::audit::Audit;
use crate::clock::{Clock, SystemClock};
use crate::config::{Config, LogFormat};
use crate::engine::{Catalog, Engine};
use std::path::Path;
use std::sync::Arc;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

/// Crates whose debug/trace output could carry credentials on the wire (raw headers and
/// bodies; STS answers hold credentials). Prefixes: `aws_` covers every AWS SDK crate.
/// Capped at INFO by a separate filter, so no `SIDECRED_LOG` value can lift the cap.
const QUIET_TARGETS: &[&str] = &[
    "aws_", "h2", "hyper", "reqwest", "rustls", "tower", "tonic", "vaultrs", "rustify",
];

/// Crates that log every failed OpenBao request at ERROR, several lines per read: during an
/// outage that floods the log. sidecred logs each backend failure itself, with its status.
const SILENT_TARGETS: &[&str] = &["vaultrs", "rustify"];

pub fn init_logging(cfg: &Config) {
    use tracing_subscriber::filter::{FilterExt, LevelFilter, Targets};
    use tracing_subscriber::{layer::SubscriberExt, util::SubscriberInitExt, Layer};
    let filter = std::env::var("SIDECRED_LOG").unwrap_or_else(|_| cfg.log.level.clone());
    let filter = tracing_subscriber::EnvFilter::try_new(&filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let cap = QUIET_TARGETS
        .iter()
        .fold(Targets::new().with_default(LevelFilter::TRACE), |t, p| {
            let level = if SILENT_TARGETS.contains(p) {
                LevelFilter::OFF
            } else {
                LevelFilter::INFO
            };
            t.with_target(*p, level)
        });
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    // Only sidecred's own spans are exported: transport spans would include the exporter's own
    // POSTs, and the fmt filter above must not decide what a collector sees.
    let (otlp, otlp_error) = match &cfg.log.otlp_endpoint {
        Some(url) => match crate::otlp::layer(url, &cfg.log.otlp_service_name) {
            Ok(l) => (
                Some(l.with_filter(Targets::new().with_target("sidecred", LevelFilter::TRACE))),
                None,
            ),
            Err(e) => (None, Some(e)),
        },
        None => (None, None),
    };
    let registry = tracing_subscriber::registry().with(otlp);
    let _ = match cfg.log.format {
        LogFormat::Json => registry
            .with(fmt.json().flatten_event(true).with_filter(filter.and(cap)))
            .try_init(),
        LogFormat::Pretty => registry.with(fmt.with_filter(filter.and(cap))).try_init(),
    };
    match (otlp_error, &cfg.log.otlp_endpoint) {
        (Some(e), _) => tracing::error!(error = %e, "OTLP span export is off"),
        (None, Some(url)) => tracing::info!(endpoint = %url, "exporting spans over OTLP/HTTP"),
        (None, None) => {}
    }
}

/// Runs the server; returns when a SIGTERM or SIGINT has drained it.
pub async fn run(config_path: &Path) -> Result<(), String> {
    let cfg = Config::load(config_path).map_err(|e| e.to_string())?;
    init_logging(&cfg);
    crate::harden::harden_process()?;
    if cfg.server.mlockall {
        if !crate::harden::lock_all() {
            return Err(
                "server.mlockall = true but mlockall failed: grant CAP_IPC_LOCK or turn it off"
                    .into(),
            );
        }
        tracing::info!("all memory locked");
    }
    let audit = match &cfg.audit.path {
        Some(p) => {
            let key = if cfg.audit.hmac_ids {
                let kp = crate::audit::key::default_path(
                    p,
                    cfg.server.state_dir.as_deref(),
                    cfg.audit.hmac_key_file.as_deref(),
                );
                Some(crate::audit::key::AuditKey::load_or_create(&kp)?)
            } else {
                None
            };
            Audit::open(p, cfg.audit.fail_closed, key)
                .await
                .map_err(|e| format!("audit log {}: {e}", p.display()))?
        }
        None => Audit::disabled(),
    };
    let server_cfg = cfg.server.clone();
    let fleet = cfg.fleet.clone();
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let catalog = Catalog::build(cfg, 1, clock.clone())
        .await
        .map_err(|e| e.to_string())?;
    let engine = Engine::new(catalog, clock, audit);
    let journal = match &server_cfg.state_dir {
        Some(dir) => Some(
            crate::journal::Journal::open(dir)
                .await
                .map_err(|e| format!("journal in {}: {e}", dir.display()))?,
        ),
        None => {
            tracing::warn!(
                "server.state_dir is not set: revocations in flight are lost in a crash"
            );
            None
        }
    };
    engine.attach(journal, fleet);
    if let Some(dir) = &server_cfg.state_dir {
        let n = engine
            .resume_retirements(dir)
            .await
            .map_err(|e| e.to_string())?;
        tracing::info!(pending = n, "retirement journal opened");
    }
    let (workload, w_guard) =
        server::bind(&server_cfg.workload_socket, server_cfg.workload_socket_mode).map_err(
            |e| {
                format!(
                    "workload socket {}: {e}",
                    server_cfg.workload_socket.display()
                )
            },
        )?;
    let (admin, a_guard) = server::bind(&server_cfg.admin_socket, server_cfg.admin_socket_mode)
        .map_err(|e| format!("admin socket {}: {e}", server_cfg.admin_socket.display()))?;
    let (spiffe, s_guard) = match server_cfg
        .spiffe_socket
        .as_ref()
        .map(|p| {
            server::bind(p, server_cfg.workload_socket_mode)
                .map_err(|e| format!("spiffe socket {}: {e}", p.display()))
        })
        .transpose()?
    {
        Some((l, g)) => (Some(l), Some(g)),
        None => (None, None),
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    let vault = crate::compat::spawn_vault(engine.clone(), stop_rx.clone())?;
    let sweeper = engine.spawn_sweeper(stop_rx.clone());
    let watcher = engine.spawn_fleet_watcher(stop_rx.clone());
    let metrics = crate::api::server::spawn_metrics(engine.clone(), stop_rx.clone()).await?;
    let aws_agent = crate::compat::aws_agent::spawn(engine.clone(), stop_rx.clone()).await?;
    let proxy = crate::proxy::spawn(engine.clone(), stop_rx.clone()).await?;
    let signals = tokio::spawn(handle_signals(
        engine.clone(),
        config_path.to_path_buf(),
        stop_tx,
    ));
    tracing::info!(
        workload = %server_cfg.workload_socket.display(),
        admin = %server_cfg.admin_socket.display(),
        version = env!("CARGO_PKG_VERSION"),
        "sidecred serving"
    );
    let bundle = proxy.as_ref().map(|p| p.bundle_pem.clone());
    let served = server::serve(engine.clone(), workload, admin, spiffe, bundle, stop_rx).await;
    let _ = sweeper.await;
    if let Some(w) = watcher {
        let _ = w.await;
    }
    if let Some(m) = metrics {
        m.abort();
    }
    signals.abort();
    if let Some(a) = aws_agent {
        for t in a.tasks {
            let _ = t.await;
        }
    }
    if let Some(p) = proxy {
        for t in p.tasks {
            t.abort();
        }
    }
    if let Some(v) = vault {
        v.task.abort();
    }
    // Dropping the guards removes the sockets, through their held directories.
    drop((w_guard, a_guard, s_guard));
    tracing::info!("sidecred stopped");
    served
}

async fn handle_signals(engine: Arc<Engine>, path: std::path::PathBuf, stop: watch::Sender<bool>) {
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => reload(&engine, &path).await,
        }
    }
    tracing::info!("shutting down");
    let _ = stop.send(true);
}

/// The first setting that is read only at start and differs between `old` and `new`. Sections
/// are compared by their Debug form, which shows every field of these (none holds a secret).
pub fn static_change(old: &Config, new: &Config) -> Option<&'static str> {
    let (a, b) = (&old.server, &new.server);
    let same =
        |x: &dyn std::fmt::Debug, y: &dyn std::fmt::Debug| format!("{x:?}") == format!("{y:?}");
    let checks: [(&'static str, bool); 18] = [
        (
            "server.workload_socket",
            a.workload_socket == b.workload_socket,
        ),
        (
            "server.workload_socket_mode",
            a.workload_socket_mode == b.workload_socket_mode,
        ),
        ("server.admin_socket", a.admin_socket == b.admin_socket),
        (
            "server.admin_socket_mode",
            a.admin_socket_mode == b.admin_socket_mode,
        ),
        ("server.spiffe_socket", a.spiffe_socket == b.spiffe_socket),
        ("server.spiffe_ca", a.spiffe_ca == b.spiffe_ca),
        ("server.state_dir", a.state_dir == b.state_dir),
        ("server.mlockall", a.mlockall == b.mlockall),
        (
            "server.max_connections",
            a.max_connections == b.max_connections,
        ),
        (
            "server.max_connections_per_uid",
            a.max_connections_per_uid == b.max_connections_per_uid,
        ),
        (
            "server.handshake_timeout",
            a.handshake_timeout == b.handshake_timeout,
        ),
        ("[log]", same(&old.log, &new.log)),
        ("[audit]", same(&old.audit, &new.audit)),
        ("[metrics]", same(&old.metrics, &new.metrics)),
        ("[fleet]", same(&old.fleet, &new.fleet)),
        ("[proxy]", same(&old.proxy, &new.proxy)),
        (
            "[aws_agent_api]",
            same(&old.aws_agent_api, &new.aws_agent_api),
        ),
        (
            "vault_api.socket",
            old.vault_api
                .as_ref()
                .map(|v| (&v.socket, v.socket_mode, v.tcp))
                == new
                    .vault_api
                    .as_ref()
                    .map(|v| (&v.socket, v.socket_mode, v.tcp)),
        ),
    ];
    checks.into_iter().find(|(_, same)| !same).map(|(k, _)| k)
}

/// Re-reads the config; an invalid one keeps the running config and is reported in status.
/// Settings used only at start are named when a reload tries to change them.
pub async fn reload(engine: &Engine, path: &Path) {
    let result = match Config::load(path) {
        Ok(cfg) => {
            let old = engine.catalog();
            match Config::of(&old.config).and_then(|o| static_change(o, &cfg)) {
                Some(key) => Err(format!(
                    "{key} cannot change on reload (it is set up once at start); restart to change it"
                )),
                None => Catalog::rebuild(cfg, &old, engine.clock())
                    .await
                    .map_err(|e| e.to_string()),
            }
        }
        Err(e) => Err(e.to_string()),
    };
    match result {
        Ok(c) => {
            let g = c.generation;
            engine.swap_catalog(c);
            tracing::info!(generation = g, "config reloaded");
        }
        Err(e) => {
            tracing::error!(error = %e, "config reload rejected; keeping the running config");
            crate::metrics::METRICS.config_reload_errors.inc();
            engine.set_config_error(e);
        }
    }
}
