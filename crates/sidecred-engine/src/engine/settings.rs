//! What the engine is built from: the server limits, the scheduler, the backends, the
//! catalog and the two policies. The config layer (above) parses TOML into these; the engine
//! keeps the whole config in its catalog as a [`CatalogConfig`], reading only this part.

use crate::backend::{BackendConfig, SecretSpec};
use crate::policy::Policy;
use serde::Deserialize;
use sidecred_core::duration::Dur;
use std::any::{Any, TypeId};
use std::collections::BTreeMap;
use std::ops::Deref;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// The part of the config the engine reads.
#[derive(Clone, Debug)]
pub struct Settings {
    pub server: ServerConfig,
    pub scheduler: SchedulerConfig,
    pub backends: BTreeMap<String, BackendConfig>,
    pub secrets: BTreeMap<String, SecretSpec>,
    pub workload_policy: Policy,
    pub admin_policy: Policy,
}

/// A whole config as the engine holds it: its settings, and the rest kept for the layers
/// above (which know the concrete type and read it back with [`CatalogConfig::downcast`]).
pub trait ConfigSource: Any + Send + Sync {
    fn settings(&self) -> &Settings;
    fn as_any(&self) -> &dyn Any;
    /// One of the server's own sections, by its type (see [`CatalogConfig::section`]); None
    /// when it is unset or not a section of this config.
    fn section(&self, _ty: TypeId) -> Option<&dyn Any> {
        None
    }
}

/// The config a catalog was built from; reads as its [`Settings`].
#[derive(Clone)]
pub struct CatalogConfig(Arc<dyn ConfigSource>);

impl CatalogConfig {
    pub fn new(source: impl ConfigSource) -> Self {
        Self(Arc::new(source))
    }

    /// The config as the type it was built from.
    pub fn downcast<T: ConfigSource>(&self) -> Option<&T> {
        self.0.as_any().downcast_ref()
    }

    /// A section of the config by its type, for a layer that defines the section's type but
    /// not the config (a compat endpoint, the proxy): it reads its own settings without
    /// naming the config layer above it.
    pub fn section<T: Any>(&self) -> Option<&T> {
        self.0.section(TypeId::of::<T>())?.downcast_ref()
    }
}

impl Deref for CatalogConfig {
    type Target = Settings;
    fn deref(&self) -> &Settings {
        self.0.settings()
    }
}

#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub workload_socket: PathBuf,
    pub workload_socket_mode: u32,
    pub admin_socket: PathBuf,
    pub admin_socket_mode: u32,
    pub default_session_ttl: Duration,
    pub max_session_ttl: Duration,
    pub stale_window: Duration,
    pub backend_timeout: Duration,
    pub handshake_timeout: Duration,
    pub max_connections: usize,
    pub max_connections_per_uid: usize,
    pub state_dir: Option<PathBuf>,
    pub mlockall: bool,
    pub spiffe_socket: Option<PathBuf>,
    /// The CA backend serving spiffe_socket (resolved at load).
    pub spiffe_ca: Option<String>,
    pub max_sessions_per_identity: usize,
    pub max_calls_per_session: usize,
    pub max_watches_per_session: usize,
    pub test_hold_dir: Option<PathBuf>,
}

/// `[scheduler]`: where sidecars that share a rotation schedule coordinate, so exactly one of
/// them rotates per slot. Without a lock backend every sidecar rotates on its own.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchedulerConfig {
    /// An `openbao` backend whose KV v2 mount holds the lock and rotation records.
    #[serde(default)]
    pub lock_backend: Option<String>,
    #[serde(default = "default_lock_mount")]
    pub lock_mount: String,
    #[serde(default = "default_lock_prefix")]
    pub lock_prefix: String,
    /// How long a claim holds before another sidecar may take the slot over.
    #[serde(default = "default_claim_ttl")]
    pub claim_ttl: Dur,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            lock_backend: None,
            lock_mount: default_lock_mount(),
            lock_prefix: default_lock_prefix(),
            claim_ttl: default_claim_ttl(),
        }
    }
}

fn default_lock_mount() -> String {
    "secret".into()
}
fn default_lock_prefix() -> String {
    "sidecred/locks".into()
}
fn default_claim_ttl() -> Dur {
    Dur(Duration::from_secs(60))
}
