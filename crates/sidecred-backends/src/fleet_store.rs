//! Where fleet-wide revocation records live: implemented by a backend that can hold them
//! (OpenBao's KV v2), used by the engine's fleet component. Defined here, with the backends,
//! so that a backend never reaches up into the engine for it.

use super::BackendError;
use async_trait::async_trait;
use serde_json::Value;

/// KV v2 access under the fleet prefix, plus token revocation by accessor. Keys are relative
/// to the prefix. Everything stored is ids and metadata, never credentials.
#[async_trait]
pub trait FleetStore: Send + Sync {
    /// Writes a new version of `key`; returns its version number.
    async fn put(&self, key: &str, data: Value) -> Result<u64, BackendError>;
    /// The data and version of `key` (the current one, or `version`); None when absent/deleted.
    async fn get(
        &self,
        key: &str,
        version: Option<u64>,
    ) -> Result<Option<(u64, Value)>, BackendError>;
    /// Keys directly below `dir`.
    async fn list(&self, dir: &str) -> Result<Vec<String>, BackendError>;
    /// Removes `key` and all its versions.
    async fn remove(&self, key: &str) -> Result<(), BackendError>;
    /// Limits how many versions of `key` OpenBao keeps.
    async fn cap_versions(&self, key: &str, max: u64) -> Result<(), BackendError>;
    /// Revokes a token (and its children and leases) by accessor; Ok if already gone.
    async fn revoke_accessor(&self, accessor: &str) -> Result<(), BackendError>;
}
