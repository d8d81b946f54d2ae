//! The broker's errors, as every transport reports them: a kind (which becomes a gRPC code,
//! an HTTP status and the `sidecred-error` code) and a message that never carries a value.
//! Ids and names are validated here too, before anything looks them up.

use crate::backend::BackendError;
use crate::session::{GateError, SessionError};

/// Not `non_exhaustive`: the server maps every kind to a status and to each compat API's own
/// error, and must be told when a kind is added.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("permission denied: {0}")]
    Denied(String),
    #[error("{0}")]
    SessionRevoked(String),
    #[error("{0}")]
    SessionExpired(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Precondition(String),
    #[error("{0}")]
    Internal(String),
    #[error("{0}")]
    DeadlineExceeded(String),
    /// A per-identity or per-session limit, or a request over a size limit.
    #[error("{0}")]
    Exhausted(String),
    /// The caller's stream ended or broke before its request was whole.
    #[error("{0}")]
    Cancelled(String),
    /// A request form the server does not take (e.g. a compressed message).
    #[error("{0}")]
    Unimplemented(String),
}

impl ApiError {
    pub fn code_name(&self) -> &'static str {
        match self {
            ApiError::InvalidArgument(_) => "invalid-argument",
            ApiError::NotFound(_) => "not-found",
            ApiError::Denied(_) => "denied",
            ApiError::SessionRevoked(_) => "session-revoked",
            ApiError::SessionExpired(_) => "session-expired",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::Precondition(_) => "failed-precondition",
            ApiError::Internal(_) => "internal",
            ApiError::DeadlineExceeded(_) => "deadline-exceeded",
            ApiError::Exhausted(_) => "resource-exhausted",
            ApiError::Cancelled(_) => "cancelled",
            ApiError::Unimplemented(_) => "unimplemented",
        }
    }

    /// Describes a backend failure for one secret, by name.
    pub fn from_backend(secret: &str, e: BackendError) -> Self {
        match e {
            BackendError::NotFound(m) => ApiError::NotFound(format!("secret `{secret}`: {m}")),
            BackendError::Denied(m) => ApiError::Denied(format!(
                "backend refused sidecred for secret `{secret}`: {m}"
            )),
            BackendError::Unavailable(m) => {
                ApiError::Unavailable(format!("secret `{secret}`: {m}"))
            }
            BackendError::Precondition(m) => {
                ApiError::Precondition(format!("secret `{secret}`: {m}"))
            }
            BackendError::Invalid(m) => {
                ApiError::InvalidArgument(format!("secret `{secret}`: {m}"))
            }
            BackendError::Internal(m) => ApiError::Internal(format!("secret `{secret}`: {m}")),
        }
    }

    /// A backend failure as a workload caller sees it: the kind and the names only. The text
    /// a remote backend returned (IAM ARNs, OpenBao messages, URLs) goes to the log, not to
    /// the caller; admin callers get [`ApiError::from_backend`].
    pub fn for_workload(secret: &str, backend: &str, e: &BackendError) -> Self {
        let see = "see sidecred's log";
        match e {
            BackendError::NotFound(_) => ApiError::NotFound(format!(
                "secret `{secret}`: not found at backend `{backend}` ({see})"
            )),
            BackendError::Denied(_) => ApiError::Denied(format!(
                "backend `{backend}` refused sidecred for secret `{secret}` ({see})"
            )),
            BackendError::Unavailable(_) => ApiError::Unavailable(format!(
                "secret `{secret}`: backend `{backend}` unavailable"
            )),
            BackendError::Precondition(_) => ApiError::Precondition(format!(
                "secret `{secret}`: backend `{backend}` cannot serve it as configured ({see})"
            )),
            BackendError::Invalid(_) => ApiError::InvalidArgument(format!(
                "secret `{secret}`: backend `{backend}` rejected the request ({see})"
            )),
            BackendError::Internal(_) => ApiError::Internal(format!(
                "secret `{secret}`: backend `{backend}` failed ({see})"
            )),
        }
    }

    /// Only the session's owner learns that it was revoked or expired, and why; anyone else
    /// gets the same denial as for an id that never existed.
    pub fn from_session(id: &str, e: SessionError) -> Self {
        match e {
            SessionError::NotOpen => {
                ApiError::Denied(format!("session `{id}` is not open for this caller"))
            }
            SessionError::Revoked { at, reason } => ApiError::SessionRevoked(format!(
                "session `{id}` was revoked at {} ({reason})",
                crate::clock::unix_secs(at)
            )),
            SessionError::RevokedElsewhere => {
                ApiError::SessionRevoked(format!("session `{id}` was revoked"))
            }
            SessionError::Expired => {
                ApiError::SessionExpired(format!("session `{id}` has expired"))
            }
        }
    }

    /// A session's gate refused: it ended, or the call was released, or a cap was reached.
    pub fn from_gate(id: &str, e: GateError) -> Self {
        match e {
            GateError::Closed => {
                ApiError::SessionRevoked(format!("session `{id}` ended during the request"))
            }
            GateError::Released => ApiError::Precondition(format!(
                "this call's lease of the secret was released in session `{id}`"
            )),
            GateError::TooManyCalls(n) => ApiError::Exhausted(format!(
                "session `{id}` already uses {n} call ids (server.max_calls_per_session)"
            )),
            GateError::TooManyWatches(n) => ApiError::Exhausted(format!(
                "session `{id}` already has {n} open watches (server.max_watches_per_session)"
            )),
        }
    }
}

/// Checks a secret or backend name: the characters a path may use, and no traversal.
pub fn validate_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("name must not be empty".into());
    }
    if name.len() > 256 {
        return Err(format!("name is {} bytes; the limit is 256", name.len()));
    }
    if name.contains('\0') {
        return Err("name must not contain NUL bytes".into());
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/')))
    {
        return Err(format!(
            "name contains {c:?}; allowed are A-Z a-z 0-9 - _ . /"
        ));
    }
    if name.starts_with('/')
        || name.ends_with('/')
        || name
            .split('/')
            .any(|seg| seg.is_empty() || seg == "." || seg == "..")
    {
        return Err("name must be relative, with no empty, `.` or `..` segments".into());
    }
    Ok(())
}

/// Checks an id the server issued (session, lease, call): short printable ASCII.
pub fn validate_id(kind: &str, id: &str) -> Result<(), ApiError> {
    if id.is_empty() {
        return Err(ApiError::InvalidArgument(format!(
            "{kind} must not be empty"
        )));
    }
    if id.len() > 128
        || !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))
    {
        return Err(ApiError::InvalidArgument(format!(
            "{kind} must be at most 128 characters of A-Z a-z 0-9 - _ . :"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["db", "tools/github", "a.b-c_d/e"] {
            assert!(validate_name(ok).is_ok(), "{ok}");
        }
        let long = "x".repeat(257);
        for bad in [
            "",
            "../etc",
            "a/../b",
            "/abs",
            "a//b",
            "a\0b",
            "sp ace",
            long.as_str(),
            "a/",
            "./a",
        ] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
    }
}
