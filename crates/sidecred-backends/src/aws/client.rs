//! SDK client setup (config first, then the standard AWS chain) and the mapping of SDK errors
//! onto [`BackendError`]. Error texts name the operation and the secret path, never a value.

use super::AwsConfig;
use crate::{BackendError, SetupError};
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region};
use aws_sdk_secretsmanager::config::http::HttpResponse;
use aws_sdk_secretsmanager::config::Credentials;
use aws_sdk_secretsmanager::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_secretsmanager::operation::describe_secret::DescribeSecretError;
use aws_sdk_secretsmanager::Client;
use std::time::Duration;

/// Builds the client. Credentials are resolved lazily, on the first call, so a missing
/// IRSA token file shows up as a `Denied`/`Unavailable` read, not a start failure.
pub(super) async fn build(cfg: &AwsConfig, timeout: Duration) -> Result<Client, SetupError> {
    let mut loader = aws_config::defaults(BehaviorVersion::latest());
    if let Some(r) = &cfg.region {
        loader = loader.region(Region::new(r.clone()));
    }
    if let Some(p) = cfg.profile.as_deref().filter(|p| !p.is_empty()) {
        loader = loader.profile_name(p);
    }
    if let Some(e) = cfg.endpoint.as_deref().filter(|e| !e.is_empty()) {
        loader = loader.endpoint_url(e);
    }
    if let (Some(id), Some(key)) = (&cfg.access_key_id, &cfg.secret_access_key) {
        let token = cfg.session_token.as_ref().map(|t| t.expose().to_string());
        loader = loader.credentials_provider(Credentials::new(
            id,
            key.expose(),
            token,
            None,
            "sidecred-config",
        ));
    }
    let retry = RetryConfig::standard()
        .with_max_attempts(cfg.max_attempts.unwrap_or(3))
        .with_initial_backoff(
            cfg.initial_backoff
                .map_or(Duration::from_millis(100), |d| d.0),
        )
        .with_max_backoff(cfg.max_backoff.map_or(Duration::from_secs(1), |d| d.0));
    let timeouts = TimeoutConfig::builder()
        .connect_timeout(cfg.connect_timeout.map_or(Duration::from_secs(2), |d| d.0))
        .operation_timeout(timeout)
        .build();
    let sdk = loader
        .retry_config(retry)
        .timeout_config(timeouts)
        .load()
        .await;
    if sdk.region().is_none() {
        return Err(SetupError::NoRegion);
    }
    Ok(Client::new(&sdk))
}

/// Maps one SDK failure by its AWS error code, then by transport symptom.
pub(super) fn classify<E>(
    backend: &str,
    op: &str,
    path: &str,
    err: SdkError<E, HttpResponse>,
) -> BackendError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let at = format!("{backend}: {op} `{path}`");
    let status = err.raw_response().map(|r| r.status().as_u16());
    if let Some(code) = err.code() {
        let msg = err
            .message()
            .unwrap_or("")
            .chars()
            .take(200)
            .collect::<String>();
        let detail = format!("{at}: {code}: {msg}");
        return match code {
            "ResourceNotFoundException" => BackendError::NotFound(detail),
            "AccessDeniedException"
            | "AccessDenied"
            | "UnrecognizedClientException"
            | "InvalidSignatureException"
            | "ExpiredTokenException"
            | "DecryptionFailure"
            | "IncompleteSignature"
            | "MissingAuthenticationToken" => BackendError::Denied(detail),
            "InvalidRequestException" => BackendError::Precondition(detail),
            "InvalidParameterException" | "ValidationException" => BackendError::Invalid(detail),
            "ThrottlingException"
            | "TooManyRequestsException"
            | "RequestLimitExceeded"
            | "InternalServiceError"
            | "InternalFailure"
            | "ServiceUnavailable" => {
                BackendError::Unavailable(format!("{detail} (retries exhausted)"))
            }
            _ if status.is_some_and(|s| s >= 500) => BackendError::Unavailable(detail),
            _ => BackendError::Internal(detail),
        };
    }
    match &err {
        SdkError::TimeoutError(_) => BackendError::Unavailable(format!("{at}: timed out")),
        SdkError::DispatchFailure(_) => {
            BackendError::Unavailable(format!("{at}: {}", DisplayErrorContext(&err)))
        }
        // The body may be a secret: name the status only.
        SdkError::ResponseError(_) | SdkError::ServiceError(_) => match status {
            Some(s) if s >= 500 || s == 429 => {
                BackendError::Unavailable(format!("{at}: HTTP {s} (retries exhausted)"))
            }
            Some(s) => BackendError::Internal(format!("{at}: unexpected response, HTTP {s}")),
            None => BackendError::Internal(format!("{at}: unexpected response")),
        },
        SdkError::ConstructionFailure(_) => {
            BackendError::Internal(format!("{at}: {}", DisplayErrorContext(&err)))
        }
        _ => BackendError::Internal(format!("{at}: {}", DisplayErrorContext(&err))),
    }
}

pub(super) fn describe_error(
    backend: &str,
    path: &str,
    e: SdkError<DescribeSecretError, HttpResponse>,
) -> BackendError {
    classify(backend, "DescribeSecret", path, e)
}
