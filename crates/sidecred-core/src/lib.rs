//! sidecred's leaf types: what every layer shares and what depends on nothing else of
//! sidecred's. Time (a clock that tests replace) and the grace-window math; the caller's
//! identity (`identity`); what a catalog entry is made of and how a config problem is reported
//! (`spec`, `duration`); rotation schedules; certificate SAN rules and DNS name checks; the
//! permission check for credential files; the errors backends and sessions report, and id
//! generation. Every other crate builds on these; `scripts/test` checks this crate stays free
//! of the transport, TLS and backend stacks.

#![forbid(unsafe_code)]

pub mod clock;
pub mod dns;
pub mod duration;
pub mod fileperm;
pub mod identity;
pub mod rotation;
pub mod san;
pub mod sched;
pub mod schedule;
pub mod spec;

use std::time::SystemTime;

/// Why a backend call failed. Messages carry names and paths, never secret values. Not
/// `non_exhaustive`: every layer that reports one must say what each kind means to its caller.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum BackendError {
    #[error("not found: {0}")]
    NotFound(String),
    #[error("denied by backend: {0}")]
    Denied(String),
    /// Transient: the only kind that allows serving a stale cached value.
    #[error("backend unavailable: {0}")]
    Unavailable(String),
    #[error("failed precondition: {0}")]
    Precondition(String),
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("backend error: {0}")]
    Internal(String),
}

impl BackendError {
    pub fn is_transient(&self) -> bool {
        matches!(self, BackendError::Unavailable(_))
    }
}

/// Why a session cannot be used. The engine words it for callers (with the session's id);
/// this text is for logs and error chains.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    /// Unknown here, or not the caller's: the two look alike so nothing leaks to a stranger.
    #[error("session not open for this caller")]
    NotOpen,
    #[error("session revoked ({reason})")]
    Revoked { at: SystemTime, reason: String },
    /// Revoked through another sidecar; it was never open here.
    #[error("session revoked through the fleet")]
    RevokedElsewhere,
    #[error("session expired")]
    Expired,
}

/// Why the gate refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GateError {
    /// The session ended (closed, revoked or expired).
    #[error("session ended")]
    Closed,
    /// This call's lease of this secret was released after the request began.
    #[error("call's lease released")]
    Released,
    /// The session already has this many distinct call ids.
    #[error("{0} call ids in use")]
    TooManyCalls(usize),
    /// The session already has this many open watches.
    #[error("{0} watches open")]
    TooManyWatches(usize),
}

/// A fresh random id with a readable prefix.
pub fn new_id(prefix: &str) -> String {
    let bytes: [u8; 16] = rand::random();
    format!("{prefix}_{}", hex::encode(bytes))
}
