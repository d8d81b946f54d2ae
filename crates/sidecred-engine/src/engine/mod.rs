//! The broker core. The engine is a set of components, each owning its state in its own
//! module (no other module can reach its fields):
//!
//! - `access`: policy decisions and transports' request lines, audited;
//! - `sessions`: opening sessions (the table itself is `crate::session::Sessions`);
//! - `grants`: the cache, the lease table and GetSecret;
//! - `rotation`: rotate, grace windows, retirements, scheduled slots, drift rechecks;
//! - `revocation`: teardown, RevokeSession, the fleet bus, the journal and retries;
//! - `certs`: CSR signing and SVIDs;
//! - `watch`: WatchSecret subscribers.
//!
//! The engine is the one layer that writes audit lines. It never sees gRPC types.

mod access;
mod catalog;
mod certs;
mod grants;
mod revocation;
mod rotation;
mod sessions;
pub mod settings;
mod status;
mod sweep;
mod watch;

pub use access::{owner_of, AccessError, RequestLine};
pub use catalog::{Catalog, CatalogError, LookupError};
pub use certs::{authority_of, CertError, CsrRequest, SignedCsr};
pub use grants::{GetRequest, Grant, GrantError};
pub use revocation::{RevocationError, RevocationReport, Step};
pub use rotation::{RotateOutcome, RotationError};
pub use sessions::SessionOpenError;
pub use status::{BackendHealth, StatusReport};
pub use watch::{WatchEvent, WatchKind};

use crate::audit::Audit;
use crate::backend::BackendError;
use crate::clock::Clock;
use crate::metrics::Gauges;
use crate::session::Sessions;
use parking_lot::{Mutex, RwLock};
use std::sync::Arc;
use std::time::{Instant, SystemTime};
use tokio::sync::broadcast;

pub struct Engine {
    clock: Arc<dyn Clock>,
    catalog: RwLock<Arc<Catalog>>,
    sessions: Sessions,
    grants: grants::Grants,
    watchers: watch::Watchers,
    audit: Audit,
    revocation: revocation::Revocation,
    started: Instant,
    config_error: Mutex<Option<String>>,
    rotation: rotation::Rotation,
}

impl Engine {
    pub fn new(catalog: Catalog, clock: Arc<dyn Clock>, audit: Audit) -> Arc<Engine> {
        Arc::new(Engine {
            clock,
            catalog: RwLock::new(Arc::new(catalog)),
            sessions: Sessions::default(),
            grants: grants::Grants::default(),
            watchers: watch::Watchers::default(),
            audit,
            revocation: revocation::Revocation::default(),
            started: Instant::now(),
            config_error: Mutex::new(None),
            rotation: rotation::Rotation::default(),
        })
    }

    /// The current config and backends (one snapshot per request).
    pub fn catalog(&self) -> Arc<Catalog> {
        self.catalog.read().clone()
    }

    /// Swaps in a reloaded catalog; open sessions and leases carry over.
    pub fn swap_catalog(&self, c: Catalog) {
        *self.catalog.write() = Arc::new(c);
        *self.config_error.lock() = None;
    }

    /// Gauges for a metrics scrape.
    pub fn gauges(&self) -> Gauges {
        Gauges {
            sessions: self.sessions.count() as u64,
            leases: self.grants.lease_count() as u64,
            cached_values: self.grants.cached_count() as u64,
            watches: self.watch_count() as u64,
            journal_backlog: self.pending_count() as u64,
            config_generation: self.catalog().generation,
        }
    }

    pub fn now(&self) -> SystemTime {
        self.clock.now()
    }

    /// The engine's clock, which backends built for it keep time on too.
    pub fn clock(&self) -> Arc<dyn Clock> {
        self.clock.clone()
    }

    /// Records why the last reload was refused (Status reports it until a reload succeeds).
    pub fn set_config_error(&self, why: String) {
        *self.config_error.lock() = Some(why);
    }

    /// Runs a backend call under the configured timeout.
    pub(in crate::engine) async fn bounded<T>(
        &self,
        what: &str,
        fut: impl std::future::Future<Output = Result<T, BackendError>>,
    ) -> Result<T, BackendError> {
        let limit = self.catalog().config.server.backend_timeout;
        match tokio::time::timeout(limit, fut).await {
            Ok(r) => r,
            Err(_) => Err(BackendError::Unavailable(format!(
                "{what}: no answer within {limit:?}"
            ))),
        }
    }

    /// Subscribes to one secret's changes (a WatchSecret stream).
    pub fn subscribe(&self, secret: &str) -> broadcast::Receiver<WatchEvent> {
        self.watchers.subscribe(secret)
    }

    /// Open WatchSecret streams.
    pub fn watch_count(&self) -> usize {
        self.watchers.watch_count()
    }

    fn notify(&self, secret: &str, ev: WatchEvent) {
        self.watchers.notify(secret, ev)
    }
}
