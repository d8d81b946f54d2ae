//! The catalog: the config and the backends built from it, swapped whole on reload.
//! The config arrives as a [`ConfigSource`]: the engine reads its [`Settings`](super::settings::Settings)
//! and keeps the rest, unread, for the layers above.

use super::settings::{CatalogConfig, ConfigSource};
use crate::backend::SecretSpec;
use crate::backend::{Backend, SetupError};
use crate::clock::Clock;
use crate::error::ApiError;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Why a catalog could not be built or rebuilt.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("backend `{name}`: {source}")]
    Backend {
        name: String,
        #[source]
        source: SetupError,
    },
    #[error(
        "backends.{0}: a CA backend's settings cannot change on reload (it holds keys and a \
         deny list); restart to change them"
    )]
    CaChanged(String),
    #[error("backends.{0}: a CA backend cannot be removed on reload; restart to remove it")]
    CaRemoved(String),
}

/// A name the catalog does not hold.
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    #[error("unknown secret `{0}`")]
    UnknownSecret(String),
    #[error("backend `{0}` is not running")]
    BackendNotRunning(String),
}

impl From<LookupError> for ApiError {
    fn from(e: LookupError) -> Self {
        match e {
            e @ LookupError::UnknownSecret(_) => ApiError::NotFound(e.to_string()),
            e @ LookupError::BackendNotRunning(_) => ApiError::Internal(e.to_string()),
        }
    }
}

/// Config plus the backends built from it; swapped whole on reload.
pub struct Catalog {
    pub config: CatalogConfig,
    pub backends: BTreeMap<String, Arc<dyn Backend>>,
    pub generation: u64,
}

impl Catalog {
    pub async fn build(
        config: impl ConfigSource,
        generation: u64,
        clock: Arc<dyn Clock>,
    ) -> Result<Catalog, CatalogError> {
        let config = CatalogConfig::new(config);
        let mut backends = BTreeMap::new();
        for (name, b) in &config.backends {
            let built = b
                .build(name, config.server.backend_timeout, clock.clone())
                .await
                .map_err(|source| CatalogError::Backend {
                    name: name.clone(),
                    source,
                })?;
            backends.insert(name.clone(), built);
        }
        Ok(Catalog {
            config,
            backends,
            generation,
        })
    }

    /// A catalog for a reloaded config. CA backends carry state no config holds (generated keys,
    /// the deny list, issued serials), so they carry over as they are; changing one's settings
    /// needs a restart. Other backends are built anew.
    pub async fn rebuild(
        config: impl ConfigSource,
        old: &Catalog,
        clock: Arc<dyn Clock>,
    ) -> Result<Catalog, CatalogError> {
        let config = CatalogConfig::new(config);
        let mut backends = BTreeMap::new();
        for (name, b) in &config.backends {
            let before = old.config.backends.get(name);
            let kept = old.backends.get(name).filter(|_| b.kind() == "ca");
            let built = match (before, kept) {
                (Some(prev), Some(running)) if format!("{prev:?}") == format!("{b:?}") => {
                    running.clone()
                }
                (Some(_), Some(_)) => return Err(CatalogError::CaChanged(name.clone())),
                _ => b
                    .build(name, config.server.backend_timeout, clock.clone())
                    .await
                    .map_err(|source| CatalogError::Backend {
                        name: name.clone(),
                        source,
                    })?,
            };
            backends.insert(name.clone(), built);
        }
        for (name, b) in &old.config.backends {
            if b.kind() == "ca" && !config.backends.contains_key(name) {
                return Err(CatalogError::CaRemoved(name.clone()));
            }
        }
        Ok(Catalog {
            config,
            backends,
            generation: old.generation + 1,
        })
    }

    pub fn secret(&self, name: &str) -> Result<&SecretSpec, LookupError> {
        self.config
            .secrets
            .get(name)
            .ok_or_else(|| LookupError::UnknownSecret(name.to_string()))
    }

    pub(super) fn backend(&self, name: &str) -> Result<Arc<dyn Backend>, LookupError> {
        self.backends
            .get(name)
            .cloned()
            .ok_or_else(|| LookupError::BackendNotRunning(name.to_string()))
    }
}
