//! sidecred's broker core: the engine and what it owns. Sessions, grants (cache, leases,
//! GetSecret), rotation, revocation (fleet, journal, retries), certificates, the policy that
//! decides who may have what, and the audit log that records it.
//!
//! A crate of its own, between the server and the backends: it sees callers' identities,
//! catalog entries and backends, and nothing of the config parser, the transports or gRPC;
//! cargo enforces that. The server (`sidecred`) builds it from config and calls it from every
//! socket. Each component returns its own error enum (`GrantError`, `RotationError`, ...),
//! which keeps the underlying error as its source and maps to one [`error::ApiError`] kind in
//! one `From`; the server turns an `ApiError` into a status or a compat API's error.

// Unsafe code is denied everywhere in the engine.
#![deny(unsafe_code)]

pub mod appender;
pub mod audit;
pub mod engine;
pub mod error;
pub mod fleet;
pub mod journal;
pub mod lease;
pub mod metrics;
pub mod policy;
pub mod session;

// The lower crates under the names the engine's modules have always used for them.
use sidecred_backends as backend;
use sidecred_core::{clock, fileperm, rotation, schedule};

/// Secret value types (the `sidecred-secret` crate).
mod secret {
    pub use sidecred_secret::SecretBytes;
}
