//! A snapshot of the engine for `sidecred status`: backends and their health, counts, and the
//! config generation.

use super::Engine;
use std::time::Duration;

/// One backend's health as the status snapshot saw it.
pub struct BackendHealth {
    pub name: String,
    pub kind: &'static str,
    pub healthy: bool,
    pub detail: String,
    pub fetches: u64,
}

pub struct StatusReport {
    pub uptime: Duration,
    pub sessions: u32,
    pub leases: u32,
    pub cached_values: u32,
    pub backends: Vec<BackendHealth>,
    pub pending_revocations: u32,
    pub pending_retirements: u32,
    pub config_generation: u64,
    /// Why the last reload was refused, until one succeeds.
    pub config_error: Option<String>,
    pub revoked_sessions: u32,
    pub watches: u32,
}

impl Engine {
    /// Asks every backend for its health (each bounded at 2 s) and counts what is held.
    pub async fn status(&self) -> StatusReport {
        let cat = self.catalog();
        let checks = cat.backends.iter().map(|(name, b)| async move {
            let h = tokio::time::timeout(Duration::from_secs(2), b.health()).await;
            let (healthy, detail) = match h {
                Ok(Ok(d)) => (true, d),
                Ok(Err(e)) => (false, e.to_string()),
                Err(_) => (false, "health check timed out after 2s".into()),
            };
            BackendHealth {
                name: name.clone(),
                kind: b.kind(),
                healthy,
                detail,
                fetches: self.backend_fetches(name),
            }
        });
        let backends = futures::future::join_all(checks).await;
        let pending_retirements = self.rotation.pending_retirements() as u32;
        StatusReport {
            uptime: self.started.elapsed(),
            sessions: self.sessions.count() as u32,
            leases: self.grants.lease_count() as u32,
            cached_values: self.grants.cached_count() as u32,
            backends,
            pending_revocations: self.pending_count() as u32,
            pending_retirements,
            config_generation: cat.generation,
            config_error: self.config_error.lock().clone(),
            revoked_sessions: self.sessions.revoked_count() as u32,
            watches: self.watch_count() as u32,
        }
    }
}
