//! The endpoint's only way into the engine: the Broker's own handlers, called with the caller
//! identified at accept, so policy, audit, sessions, cache, rotation grace and revocation are
//! exactly the gRPC ones.

use crate::api::broker::BrokerService;
use crate::api::pb::{self, broker_server::Broker};
use crate::api::peer::PeerIdentity;
use crate::api::ApiError;
use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn request<T>(caller: &PeerIdentity, msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.extensions_mut().insert(caller.clone());
    r
}

/// Back from a status to the error kind, by the `sidecred-error` code every status carries.
fn api_error(s: tonic::Status) -> ApiError {
    let code = s
        .metadata()
        .get("sidecred-error")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let m = s.message().to_string();
    match code {
        "invalid-argument" => ApiError::InvalidArgument(m),
        "not-found" => ApiError::NotFound(m),
        "denied" => ApiError::Denied(m.trim_start_matches("permission denied: ").to_string()),
        "session-revoked" => ApiError::SessionRevoked(m),
        "session-expired" => ApiError::SessionExpired(m),
        "unavailable" => ApiError::Unavailable(m),
        "failed-precondition" => ApiError::Precondition(m),
        "deadline-exceeded" => ApiError::DeadlineExceeded(m),
        "resource-exhausted" => ApiError::Exhausted(m),
        _ => ApiError::Internal(m),
    }
}

/// Opens a session for `caller`; returns its id and expiry.
pub async fn open_session(
    broker: &BrokerService,
    caller: &PeerIdentity,
    ttl: Option<Duration>,
) -> Result<(String, SystemTime), ApiError> {
    let labels = HashMap::from([("api".to_string(), "aws-agent".to_string())]);
    let r = Broker::open_session(
        broker,
        request(
            caller,
            pb::OpenSessionRequest {
                ttl_seconds: ttl.map(|t| t.as_secs().max(1)).unwrap_or(0),
                labels,
            },
        ),
    )
    .await
    .map_err(api_error)?
    .into_inner();
    Ok((
        r.session_id,
        UNIX_EPOCH + Duration::from_secs(r.expires_at.max(0) as u64),
    ))
}

/// One read in `session`, current or of a pinned `version`.
pub async fn get_secret(
    broker: &BrokerService,
    caller: &PeerIdentity,
    session: &str,
    name: &str,
    version: Option<&str>,
) -> Result<pb::GetSecretResponse, ApiError> {
    let r = Broker::get_secret(
        broker,
        request(
            caller,
            pb::GetSecretRequest {
                name: name.into(),
                session_id: session.into(),
                version: version.unwrap_or_default().into(),
                ..Default::default()
            },
        ),
    )
    .await
    .map_err(api_error)?;
    Ok(r.into_inner())
}
