//! Errors as the API layer hands them out. Statuses are built by the one mapping in
//! `sidecred_engine::status` (`From<ApiError> for Status`): each carries a `sidecred-error`
//! metadata code so clients can raise typed errors without parsing messages.

pub use crate::error::{validate_id, validate_name, ApiError};
