//! sidecred: a secrets broker sidecar serving short-lived credentials over gRPC on Unix sockets.
//!
//! This crate is the top layer, the server: `config` reads TOML and builds everything below,
//! `api` (transport and gRPC), `compat`, `proxy`, `cli` and `serve`. The layers below are crates
//! of their own — `sidecred-engine` (engine, policy, sessions, leases, audit, fleet),
//! `sidecred-backends`, `sidecred-core` (leaf types) — re-exported here under the paths they
//! had when they were modules of this crate, so `sidecred::engine::Engine` still names the engine.
// Unsafe code is denied everywhere but src/harden.rs, which says why it needs it.
#![deny(unsafe_code)]

pub mod api;
pub use sidecred_backends as backend;
pub use sidecred_engine::appender;
pub use sidecred_engine::audit;
pub mod cli;
pub use sidecred_core::clock;
pub mod compat;
pub mod config;
pub use sidecred_core::fileperm;
pub use sidecred_engine::engine;
pub use sidecred_engine::error;
pub use sidecred_engine::fleet;
pub mod harden;
pub use sidecred_engine::journal;
pub use sidecred_engine::lease;
pub mod metrics;
pub mod otlp;
pub mod panic_hook;
pub use sidecred_engine::policy;
pub mod proxy;
pub use sidecred_core::rotation;
pub use sidecred_core::schedule;
pub mod secret;
pub mod serve;
pub use sidecred_engine::session;
