//! Typed client errors. The server tags every status with a `sidecred-error` code; we map
//! that first and fall back to the gRPC code, so callers match on kinds, not on messages.

use tonic::{Code, Status};

/// What went wrong, by kind. Messages come from the server or the transport and never
/// carry secret values (the server guarantees it; the client adds only names and ids).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// Policy refused the caller, or the session belongs to another uid.
    #[error("denied: {0}")]
    Denied(String),
    /// No such secret, version or lease.
    #[error("not found: {0}")]
    NotFound(String),
    /// The session was revoked (e.g. it was compromised). Open a new one.
    #[error("session revoked: {0}")]
    SessionRevoked(String),
    /// The session outlived its ttl.
    #[error("session expired: {0}")]
    SessionExpired(String),
    /// sidecred or its backend is unreachable. The only kind that is retried.
    #[error("unavailable: {0}")]
    Unavailable(String),
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("failed precondition: {0}")]
    FailedPrecondition(String),
    /// The per-call deadline passed (client side or server side).
    #[error("deadline exceeded: {0}")]
    DeadlineExceeded(String),
    #[error("internal error: {0}")]
    Internal(String),
    /// Bad client setup: no socket path, an unusable path.
    #[error("client configuration: {0}")]
    Config(String),
    /// A status with no sidecred code and no matching gRPC code.
    #[error("{code:?}: {message}")]
    Other { code: Code, message: String },
}

impl ClientError {
    /// The `sidecred-error` code first, then the gRPC code.
    pub fn from_status(s: &Status) -> Self {
        let msg = s.message().to_string();
        let tag = s
            .metadata()
            .get("sidecred-error")
            .and_then(|v| v.to_str().ok());
        if let Some(e) = tag.and_then(|t| Self::from_code_name(t, &msg)) {
            return e;
        }
        if s.code() == Code::Unknown && broken_connection(s) {
            return Self::Unavailable(format!("connection to sidecred lost: {msg}"));
        }
        match s.code() {
            Code::PermissionDenied | Code::Unauthenticated => Self::Denied(msg),
            Code::NotFound => Self::NotFound(msg),
            Code::Unavailable => Self::Unavailable(msg),
            Code::InvalidArgument => Self::InvalidArgument(msg),
            Code::FailedPrecondition => Self::FailedPrecondition(msg),
            Code::DeadlineExceeded => Self::DeadlineExceeded(msg),
            Code::Internal => Self::Internal(msg),
            code => Self::Other { code, message: msg },
        }
    }

    fn from_code_name(tag: &str, msg: &str) -> Option<Self> {
        let m = msg.to_string();
        Some(match tag {
            "denied" => Self::Denied(m),
            "not-found" => Self::NotFound(m),
            "session-revoked" => Self::SessionRevoked(m),
            "session-expired" => Self::SessionExpired(m),
            "unavailable" => Self::Unavailable(m),
            "invalid-argument" => Self::InvalidArgument(m),
            "failed-precondition" => Self::FailedPrecondition(m),
            "deadline-exceeded" => Self::DeadlineExceeded(m),
            "internal" => Self::Internal(m),
            _ => return None,
        })
    }

    /// True only for `Unavailable`: every other failure is an answer, not an outage.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }

    /// Says how many tries an outage outlasted, so callers stop looping on it.
    pub(crate) fn after_attempts(self, n: u32) -> Self {
        match self {
            Self::Unavailable(m) if n > 1 => {
                Self::Unavailable(format!("{m} (gave up after {n} attempts)"))
            }
            e => e,
        }
    }

    /// True when the session can no longer be used (revoked or expired).
    pub fn is_session_gone(&self) -> bool {
        matches!(self, Self::SessionRevoked(_) | Self::SessionExpired(_))
    }
}

/// tonic reports a dead connection as UNKNOWN "transport error"; the source chain tells.
fn broken_connection(s: &Status) -> bool {
    let mut src = std::error::Error::source(s);
    while let Some(e) = src {
        if e.is::<tonic::transport::Error>() || e.is::<std::io::Error>() {
            return true;
        }
        src = e.source();
    }
    false
}

impl From<Status> for ClientError {
    fn from(s: Status) -> Self {
        Self::from_status(&s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tagged(code: Code, tag: &'static str) -> Status {
        let mut s = Status::new(code, "m");
        s.metadata_mut()
            .insert("sidecred-error", tag.parse().unwrap());
        s
    }

    #[test]
    fn metadata_code_wins_over_grpc_code() {
        let cases = [
            (
                Code::FailedPrecondition,
                "session-revoked",
                "SessionRevoked",
            ),
            (
                Code::FailedPrecondition,
                "session-expired",
                "SessionExpired",
            ),
            (
                Code::FailedPrecondition,
                "failed-precondition",
                "FailedPrecondition",
            ),
            (Code::PermissionDenied, "denied", "Denied"),
            (Code::NotFound, "not-found", "NotFound"),
            (Code::Unavailable, "unavailable", "Unavailable"),
            (Code::InvalidArgument, "invalid-argument", "InvalidArgument"),
            (
                Code::DeadlineExceeded,
                "deadline-exceeded",
                "DeadlineExceeded",
            ),
            (Code::Internal, "internal", "Internal"),
        ];
        for (code, tag, want) in cases {
            let e = ClientError::from_status(&tagged(code, tag));
            assert!(format!("{e:?}").starts_with(want), "{tag}: {e:?}");
        }
    }

    #[test]
    fn grpc_code_is_the_fallback() {
        let e = ClientError::from_status(&Status::unavailable("connection refused"));
        assert!(e.is_transient());
        let e = ClientError::from_status(&tagged(Code::PermissionDenied, "future-code"));
        assert_eq!(e, ClientError::Denied("m".into()));
        let e = ClientError::from_status(&Status::failed_precondition("x"));
        assert!(!e.is_session_gone());
        let e = ClientError::from_status(&Status::aborted("x"));
        assert!(matches!(
            e,
            ClientError::Other {
                code: Code::Aborted,
                ..
            }
        ));
        assert!(!e.is_transient());
    }
}
