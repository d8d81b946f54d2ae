//! sidecred: a secrets broker sidecar serving short-lived credentials over gRPC on Unix sockets.
// Unsafe code is denied everywhere but src/harden.rs, which says why it needs it.
#![deny(unsafe_code)]

pub mod api;
pub mod appender;
pub mod audit;
pub use sidecred_backends as backend;
pub mod cli;
pub use sidecred_core::clock;
pub mod compat;
pub mod config;
pub mod engine;
pub mod error;
pub use sidecred_core::fileperm;
pub mod fleet;
pub mod harden;
pub mod journal;
pub mod lease;
pub mod metrics;
pub mod otlp;
pub mod panic_hook;
pub mod policy;
pub mod proxy;
pub use sidecred_core::rotation;
pub use sidecred_core::schedule;
pub mod secret;
pub mod serve;
pub mod session;
