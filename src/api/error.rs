//! Errors as the API layer hands them out, and the one place they become gRPC statuses:
//! [`status`]. Each status carries a `sidecred-error` metadata code so clients can raise
//! typed errors without parsing messages. Handlers convert explicitly (`.map_err(status)`),
//! so every site that turns an engine error into a status is visible.

pub use crate::error::{validate_id, validate_name, ApiError};
use tonic::metadata::MetadataValue;
use tonic::{Code, Status};

/// The gRPC code for each kind of error.
pub fn code(e: &ApiError) -> Code {
    match e {
        ApiError::InvalidArgument(_) => Code::InvalidArgument,
        ApiError::NotFound(_) => Code::NotFound,
        ApiError::Denied(_) => Code::PermissionDenied,
        ApiError::SessionRevoked(_) | ApiError::SessionExpired(_) | ApiError::Precondition(_) => {
            Code::FailedPrecondition
        }
        ApiError::Unavailable(_) => Code::Unavailable,
        ApiError::Internal(_) => Code::Internal,
        ApiError::DeadlineExceeded(_) => Code::DeadlineExceeded,
        ApiError::Exhausted(_) => Code::ResourceExhausted,
        ApiError::Cancelled(_) => Code::Cancelled,
        ApiError::Unimplemented(_) => Code::Unimplemented,
    }
}

/// An error (an [`ApiError`] or any component error that maps to one) as a gRPC status with
/// its `sidecred-error` code.
pub fn status(e: impl Into<ApiError>) -> Status {
    let e = e.into();
    let mut s = Status::new(code(&e), e.to_string());
    s.metadata_mut()
        .insert("sidecred-error", MetadataValue::from_static(e.code_name()));
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::BackendError;

    #[test]
    fn statuses_carry_codes() {
        let s = status(ApiError::SessionRevoked("x".into()));
        assert_eq!(s.code(), Code::FailedPrecondition);
        assert_eq!(
            s.metadata().get("sidecred-error").unwrap(),
            "session-revoked"
        );
        let s = status(ApiError::from_backend(
            "db",
            BackendError::Unavailable("sealed".into()),
        ));
        assert_eq!(s.code(), Code::Unavailable);
        assert!(s.message().contains("db"));
        assert_eq!(s.metadata().get("sidecred-error").unwrap(), "unavailable");
    }

    #[test]
    fn workload_errors_carry_no_backend_text() {
        let leak = "arn:aws:iam::123456789012:user/x https://bao.internal:8200";
        for e in [
            BackendError::NotFound(leak.into()),
            BackendError::Denied(leak.into()),
            BackendError::Unavailable(leak.into()),
            BackendError::Precondition(leak.into()),
            BackendError::Invalid(leak.into()),
            BackendError::Internal(leak.into()),
        ] {
            let admin = status(ApiError::from_backend("db", e.clone()));
            let s = status(ApiError::for_workload("db", "bao", &e));
            assert_eq!(s.code(), admin.code(), "{e:?}");
            assert_eq!(
                s.metadata().get("sidecred-error"),
                admin.metadata().get("sidecred-error")
            );
            assert!(!s.message().contains("arn:") && !s.message().contains("https:"));
            assert!(s.message().contains("`db`") && s.message().contains("`bao`"));
        }
    }

    /// Component errors reach the status mapping through their one `From`: same code, same
    /// `sidecred-error` code and message as the kind they map to, no backend text.
    #[test]
    fn component_errors_become_statuses() {
        use crate::engine::{CertError, GrantError, LookupError, RevocationError};
        use crate::error::BackendFailure;
        let leak = "arn:aws:iam::123456789012:user/x";
        let s = status(GrantError::Backend(BackendFailure::workload(
            "db",
            "aws",
            BackendError::Denied(leak.into()),
        )));
        assert_eq!(s.code(), Code::PermissionDenied);
        assert_eq!(s.metadata().get("sidecred-error").unwrap(), "denied");
        assert!(!s.message().contains("arn:"), "{}", s.message());
        assert!(s.message().starts_with("permission denied: backend `aws`"));

        let s = status(GrantError::NeedsCallId("db".into()));
        assert_eq!(s.code(), Code::InvalidArgument);
        assert_eq!(s.message(), "secret `db` is call-scoped: set call_id");

        let s = status(LookupError::UnknownSecret("nope".into()));
        assert_eq!(s.code(), Code::NotFound);
        assert_eq!(s.message(), "unknown secret `nope`");

        let s = status(RevocationError::UnknownSession("ses_x".into()));
        assert_eq!(s.metadata().get("sidecred-error").unwrap(), "not-found");

        let s = status(CertError::Sans("DNS SAN `x` not allowed".into()));
        assert_eq!(s.code(), Code::PermissionDenied);
        assert_eq!(s.message(), "permission denied: DNS SAN `x` not allowed");
        let s = status(CertError::NotCa("db".into()));
        assert_eq!(s.code(), Code::FailedPrecondition);
    }
}
