//! The one place errors become gRPC statuses. Each status also carries a `sidecred-error`
//! metadata code so clients can raise typed errors without parsing messages.
//!
//! Here, in the engine crate, behind the `grpc` feature, only because the server's handlers
//! convert with `?`, and the orphan rule lets `From<ApiError> for Status` live only beside
//! `ApiError` or `Status`. The engine itself never builds a status.

use crate::error::ApiError;
use tonic::{Code, Status};

/// The gRPC code for each kind of error.
fn code(e: &ApiError) -> Code {
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

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Status {
        let mut s = Status::new(code(&e), e.to_string());
        s.metadata_mut().insert(
            "sidecred-error",
            tonic::metadata::MetadataValue::from_static(e.code_name()),
        );
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::BackendError;
    #[test]
    fn statuses_carry_codes() {
        let s: Status = ApiError::SessionRevoked("x".into()).into();
        assert_eq!(s.code(), Code::FailedPrecondition);
        assert_eq!(
            s.metadata().get("sidecred-error").unwrap(),
            "session-revoked"
        );
        let s: Status =
            ApiError::from_backend("db", BackendError::Unavailable("sealed".into())).into();
        assert_eq!(s.code(), Code::Unavailable);
        assert!(s.message().contains("db"));
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
            let admin: Status = ApiError::from_backend("db", e.clone()).into();
            let s: Status = ApiError::for_workload("db", "bao", &e).into();
            assert_eq!(s.code(), admin.code(), "{e:?}");
            assert!(!s.message().contains("arn:") && !s.message().contains("https:"));
            assert!(s.message().contains("`db`") && s.message().contains("`bao`"));
        }
    }
}
