//! `sidecred serve`: load config, start logging and the audit log, bind sockets, run until a signal.

use crate::api::server;
use crate::audit::Audit;
use crate::clock::SystemClock;
use crate::config::{Config, LogFormat};
use crate::engine::{Catalog, Engine};
use std::path::Path;
use std::sync::Arc;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

/// Crates whose debug/trace output could carry credentials on the wire.
const QUIET_TARGETS: &[&str] = &[
    "h2",
    "hyper",
    "hyper_util",
    "reqwest",
    "rustls",
    "tower",
    "tonic",
    "aws_smithy_runtime",
    "aws_smithy_runtime_api",
    "aws_smithy_http_client",
    "aws_sdk_secretsmanager",
    "aws_config",
    "vaultrs",
    "rustify",
];

pub fn init_logging(cfg: &Config) {
    let mut filter = std::env::var("SIDECRED_LOG").unwrap_or_else(|_| cfg.log.level.clone());
    // Transport and SDK crates trace raw headers and bodies (tokens, values): never below info.
    for quiet in QUIET_TARGETS {
        if !filter.contains(quiet) {
            filter.push_str(&format!(",{quiet}=info"));
        }
    }
    let filter = tracing_subscriber::EnvFilter::try_new(&filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    let _ = match cfg.log.format {
        LogFormat::Json => b.json().flatten_event(true).try_init(),
        LogFormat::Pretty => b.try_init(),
    };
}

/// Runs the server; returns when a SIGTERM or SIGINT has drained it.
pub async fn run(config_path: &Path) -> Result<(), String> {
    let cfg = Config::load(config_path).map_err(|e| e.to_string())?;
    init_logging(&cfg);
    let audit = match &cfg.audit.path {
        Some(p) => Audit::open(p, cfg.audit.fail_closed)
            .await
            .map_err(|e| format!("audit log {}: {e}", p.display()))?,
        None => Audit::disabled(),
    };
    let server_cfg = cfg.server.clone();
    let catalog = Catalog::build(cfg, 1).await?;
    let engine = Engine::new(catalog, Arc::new(SystemClock), audit);
    let workload = server::bind(&server_cfg.workload_socket, server_cfg.workload_socket_mode)
        .map_err(|e| {
            format!(
                "workload socket {}: {e}",
                server_cfg.workload_socket.display()
            )
        })?;
    let admin = server::bind(&server_cfg.admin_socket, server_cfg.admin_socket_mode)
        .map_err(|e| format!("admin socket {}: {e}", server_cfg.admin_socket.display()))?;
    let spiffe = server_cfg
        .spiffe_socket
        .as_ref()
        .map(|p| {
            server::bind(p, server_cfg.workload_socket_mode)
                .map_err(|e| format!("spiffe socket {}: {e}", p.display()))
        })
        .transpose()?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let sweeper = engine.spawn_sweeper(stop_rx.clone());
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
    let served = server::serve(engine.clone(), workload, admin, spiffe, stop_rx).await;
    let _ = sweeper.await;
    signals.abort();
    let _ = std::fs::remove_file(&server_cfg.workload_socket);
    let _ = std::fs::remove_file(&server_cfg.admin_socket);
    if let Some(p) = &server_cfg.spiffe_socket {
        let _ = std::fs::remove_file(p);
    }
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

/// Re-reads the config; an invalid one keeps the running config and is reported in status.
pub async fn reload(engine: &Engine, path: &Path) {
    let result = match Config::load(path) {
        Ok(cfg) => {
            let old = engine.catalog();
            if cfg.server.workload_socket != old.config.server.workload_socket
                || cfg.server.admin_socket != old.config.server.admin_socket
            {
                Err("socket paths cannot change on reload; restart to move them".to_string())
            } else {
                Catalog::build(cfg, old.generation + 1).await
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
            *engine.config_error.lock().expect("poisoned") = Some(e);
        }
    }
}
