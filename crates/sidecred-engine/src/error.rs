//! The broker's errors, as every transport reports them: a kind (which becomes a gRPC code,
//! an HTTP status and the `sidecred-error` code) and a message that never carries a value.
//! The engine's components report their own error enums; each maps to a kind here in one
//! `From`. The pieces several components share live here: [`SessionRefused`],
//! [`GateRefused`], [`BackendFailure`] (which words a backend failure for admin or workload
//! callers) and [`IdError`]. Ids and names are validated here too, before anything looks
//! them up.

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
    /// The message without the kind's prefix: what a component error that maps to this
    /// kind displays.
    pub fn message(&self) -> &str {
        match self {
            ApiError::InvalidArgument(m)
            | ApiError::NotFound(m)
            | ApiError::Denied(m)
            | ApiError::SessionRevoked(m)
            | ApiError::SessionExpired(m)
            | ApiError::Unavailable(m)
            | ApiError::Precondition(m)
            | ApiError::Internal(m)
            | ApiError::DeadlineExceeded(m)
            | ApiError::Exhausted(m)
            | ApiError::Cancelled(m)
            | ApiError::Unimplemented(m) => m,
        }
    }

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
        Self::backend_admin(secret, &e)
    }

    fn backend_admin(secret: &str, e: &BackendError) -> Self {
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
        Self::session_refused(id, &e)
    }

    fn session_refused(id: &str, e: &SessionError) -> Self {
        match e {
            SessionError::NotOpen => {
                ApiError::Denied(format!("session `{id}` is not open for this caller"))
            }
            SessionError::Revoked { at, reason } => ApiError::SessionRevoked(format!(
                "session `{id}` was revoked at {} ({reason})",
                crate::clock::unix_secs(*at)
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
        Self::gate_refused(id, &e)
    }

    fn gate_refused(id: &str, e: &GateError) -> Self {
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

/// A session the caller named cannot be used; worded by [`ApiError::from_session`].
#[derive(Debug, thiserror::Error)]
#[error("{}", ApiError::session_refused(.id, .source).message())]
pub struct SessionRefused {
    pub id: String,
    #[source]
    pub source: SessionError,
}

impl SessionRefused {
    pub fn new(id: &str, source: SessionError) -> Self {
        Self {
            id: id.to_string(),
            source,
        }
    }
}

impl From<SessionRefused> for ApiError {
    fn from(e: SessionRefused) -> Self {
        ApiError::session_refused(&e.id, &e.source)
    }
}

/// A session's gate refused a request; worded by [`ApiError::from_gate`].
#[derive(Debug, thiserror::Error)]
#[error("{}", ApiError::gate_refused(.id, .source).message())]
pub struct GateRefused {
    pub id: String,
    #[source]
    pub source: GateError,
}

impl GateRefused {
    pub fn new(id: &str, source: GateError) -> Self {
        Self {
            id: id.to_string(),
            source,
        }
    }
}

impl From<GateRefused> for ApiError {
    fn from(e: GateRefused) -> Self {
        ApiError::gate_refused(&e.id, &e.source)
    }
}

/// A backend failed for one secret. An admin caller reads the backend's own text; a workload
/// caller only the kind and the names ([`ApiError::for_workload`]), the rest stays in the
/// source for the log.
#[derive(Debug)]
pub struct BackendFailure {
    pub secret: String,
    /// Set for a workload caller: the backend named in place of its text.
    pub workload_backend: Option<String>,
    pub source: BackendError,
}

impl std::fmt::Display for BackendFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(ApiError::from(self).message())
    }
}

impl std::error::Error for BackendFailure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

impl BackendFailure {
    /// As an admin (or a local backend's caller) sees it.
    pub fn admin(secret: &str, source: BackendError) -> Self {
        Self {
            secret: secret.to_string(),
            workload_backend: None,
            source,
        }
    }

    /// As a workload caller sees it: no backend text.
    pub fn workload(secret: &str, backend: &str, source: BackendError) -> Self {
        Self {
            secret: secret.to_string(),
            workload_backend: Some(backend.to_string()),
            source,
        }
    }
}

impl From<&BackendFailure> for ApiError {
    fn from(e: &BackendFailure) -> Self {
        match &e.workload_backend {
            None => ApiError::backend_admin(&e.secret, &e.source),
            Some(b) => ApiError::for_workload(&e.secret, b, &e.source),
        }
    }
}

impl From<BackendFailure> for ApiError {
    fn from(e: BackendFailure) -> Self {
        ApiError::from(&e)
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

/// An id the server issued (session, lease, call) is malformed; named by its field.
#[derive(Debug, thiserror::Error)]
pub enum IdError {
    #[error("{0} must not be empty")]
    Empty(&'static str),
    #[error("{0} must be at most 128 characters of A-Z a-z 0-9 - _ . :")]
    Malformed(&'static str),
}

impl From<IdError> for ApiError {
    fn from(e: IdError) -> Self {
        ApiError::InvalidArgument(e.to_string())
    }
}

/// Checks an id the server issued (session, lease, call): short printable ASCII.
pub fn validate_id(kind: &'static str, id: &str) -> Result<(), IdError> {
    if id.is_empty() {
        return Err(IdError::Empty(kind));
    }
    if id.len() > 128
        || !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))
    {
        return Err(IdError::Malformed(kind));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error;

    #[test]
    fn wrappers_word_errors_as_api_error_and_keep_sources() {
        let e = SessionRefused::new("ses_1", SessionError::Expired);
        assert_eq!(e.to_string(), "session `ses_1` has expired");
        assert_eq!(e.source().unwrap().to_string(), "session expired");
        assert!(matches!(ApiError::from(e), ApiError::SessionExpired(_)));

        let e = GateRefused::new("ses_1", GateError::TooManyCalls(3));
        let api = ApiError::from_gate("ses_1", GateError::TooManyCalls(3));
        assert_eq!(e.to_string(), api.message());
        assert_eq!(ApiError::from(e).code_name(), "resource-exhausted");

        let e = IdError::Empty("lease_id");
        assert_eq!(ApiError::from(e).to_string(), "lease_id must not be empty");
    }

    #[test]
    fn backend_failures_hide_backend_text_from_workloads() {
        let leak = "arn:aws:iam::123456789012:user/x https://bao.internal:8200";
        for b in [
            BackendError::NotFound(leak.into()),
            BackendError::Denied(leak.into()),
            BackendError::Unavailable(leak.into()),
            BackendError::Precondition(leak.into()),
            BackendError::Invalid(leak.into()),
            BackendError::Internal(leak.into()),
        ] {
            let admin = BackendFailure::admin("db", b.clone());
            assert!(admin.to_string().contains(leak), "{admin}");
            let admin = ApiError::from(admin);
            let w = BackendFailure::workload("db", "bao", b.clone());
            // The source keeps the backend's text for the log; the message does not.
            assert_eq!(w.source().unwrap().to_string(), b.to_string());
            let text = w.to_string();
            assert!(!text.contains("arn:") && !text.contains("https:"), "{text}");
            let api = ApiError::from(w);
            assert_eq!(api.code_name(), admin.code_name(), "{b:?}");
            assert_eq!(api.message(), text);
            assert!(!api.to_string().contains("arn:"));
        }
    }

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
