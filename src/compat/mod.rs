//! HTTP/1.1 endpoints that speak other products' APIs (a Vault-compatible one, an AWS Secrets
//! Manager Agent-compatible one), so existing clients switch to sidecred unchanged. Each API is
//! one [`listen::Endpoint`]; the listener gives all of them the same caller identity,
//! admission, limits and audit as the gRPC sockets, and every request goes through the
//! `Broker` handlers (api/broker.rs): one policy, one session and lease model.

pub mod aws_agent;
pub mod listen;
pub mod vault;

pub use listen::{Endpoint, HttpLimits, Listener};

use crate::engine::Engine;
use std::sync::Arc;
use tokio::sync::watch;

/// A running endpoint: its accept task and the guard that removes its socket when dropped.
pub struct Running {
    pub task: tokio::task::JoinHandle<()>,
    pub guard: crate::api::sockdir::SocketGuard,
}

/// Binds and starts the Vault-compatible endpoint when `[vault_api]` is configured.
pub fn spawn_vault(
    engine: Arc<Engine>,
    stop: watch::Receiver<bool>,
) -> Result<Option<Running>, String> {
    let Some(cfg) = engine
        .catalog()
        .config
        .section::<vault::VaultApiConfig>()
        .cloned()
    else {
        return Ok(None);
    };
    let (l, guard) = crate::api::server::bind(&cfg.socket, cfg.socket_mode)
        .map_err(|e| format!("vault_api.socket {}: {e}", cfg.socket.display()))?;
    let listener = Listener::new(vault::VaultApi::new(engine.clone()), engine, stop);
    if let Some(addr) = cfg.tcp {
        // Loopback only (checked at load); callers identified through the socket table.
        let tcp = std::net::TcpListener::bind(addr)
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .and_then(tokio::net::TcpListener::from_std)
            .map_err(|e| format!("vault_api.tcp {addr}: {e}"))?;
        tracing::info!(%addr, "Vault-compatible API on loopback TCP");
        tokio::spawn(listener.clone().serve_tcp(tcp));
    }
    tracing::info!(socket = %cfg.socket.display(), "Vault-compatible API serving");
    Ok(Some(Running {
        task: tokio::spawn(listener.serve_unix(l)),
        guard,
    }))
}
