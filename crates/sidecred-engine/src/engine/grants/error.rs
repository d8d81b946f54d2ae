//! Why GetSecret or ReleaseLease failed, and the kind each reason reports as.

use crate::audit::AuditError;
use crate::engine::LookupError;
use crate::error::{ApiError, BackendFailure, GateRefused, SessionRefused};

#[derive(Debug, thiserror::Error)]
pub enum GrantError {
    #[error(transparent)]
    Session(#[from] SessionRefused),
    #[error(transparent)]
    Gate(#[from] GateRefused),
    #[error(transparent)]
    Lookup(#[from] LookupError),
    /// The backend failed; workload callers see no backend text.
    #[error(transparent)]
    Backend(#[from] BackendFailure),
    #[error("secret `{0}` is call-scoped: set call_id")]
    NeedsCallId(String),
    #[error("secret `{0}` is issued per session or call; it has no versions to pin")]
    NotVersioned(String),
    #[error("secret `{secret}`: version `{version}` was retired and is no longer served")]
    Retired { secret: String, version: String },
    /// Unknown, or another session's: the two look alike.
    #[error("no lease `{0}` in this session")]
    UnknownLease(String),
    /// Fail-closed audit: nothing was handed out.
    #[error("{0}")]
    Audit(#[source] AuditError),
}

impl From<GrantError> for ApiError {
    fn from(e: GrantError) -> Self {
        match e {
            GrantError::Session(e) => e.into(),
            GrantError::Gate(e) => e.into(),
            GrantError::Lookup(e) => e.into(),
            GrantError::Backend(e) => e.into(),
            e @ (GrantError::NeedsCallId(_) | GrantError::NotVersioned(_)) => {
                ApiError::InvalidArgument(e.to_string())
            }
            e @ (GrantError::Retired { .. } | GrantError::UnknownLease(_)) => {
                ApiError::NotFound(e.to_string())
            }
            e @ GrantError::Audit(_) => ApiError::Unavailable(e.to_string()),
        }
    }
}
