//! The endpoint's only way into the engine: the Broker's own handlers (api/broker.rs), called
//! with the caller identified at accept, so policy, audit, sessions, cache, rotation grace and
//! revocation are exactly the gRPC ones.

use crate::api::broker::BrokerService;
use crate::api::pb;
use crate::api::peer::PeerIdentity;
use crate::api::ApiError;
use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Opens a session for `caller`, labelled `api=aws-agent`; returns its id and expiry.
pub async fn open_session(
    broker: &BrokerService,
    caller: &PeerIdentity,
    ttl: Option<Duration>,
) -> Result<(String, SystemTime), ApiError> {
    let labels = HashMap::from([("api".to_string(), "aws-agent".to_string())]);
    let req = pb::OpenSessionRequest {
        ttl_seconds: ttl.map(|t| t.as_secs().max(1)).unwrap_or(0),
        labels,
    };
    let r = broker.open_session(caller, req).await?;
    let expires = UNIX_EPOCH + Duration::from_secs(r.expires_at.max(0) as u64);
    Ok((r.session_id, expires))
}

/// One read in `session`, current or of a pinned `version`.
pub async fn get_secret(
    broker: &BrokerService,
    caller: &PeerIdentity,
    session: &str,
    name: &str,
    version: Option<&str>,
) -> Result<pb::GetSecretResponse, ApiError> {
    let req = pb::GetSecretRequest {
        name: name.into(),
        session_id: session.into(),
        version: version.unwrap_or_default().into(),
        ..Default::default()
    };
    broker.get_secret(caller, req).await
}
