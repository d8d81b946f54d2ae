//! Tokens and leases: login opens a session, lookup-self shows it, revoke-self closes it;
//! `sys/leases/*` renews (reports), looks up and releases leases. `sys/health` too.

use super::reply::{self, LeaseInfo};
use super::{Fail, Note, Reply, VaultApi, VaultApiConfig};
use crate::api::broker::BrokerService;
use crate::api::pb;
use crate::api::peer::PeerIdentity;
use crate::api::{validate_id, ApiError};
use crate::clock::unix_secs;
use crate::lease::Lease;
use crate::session::Session;
use bytes::Bytes;
use http::StatusCode;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

/// Lookups for the HTTP endpoints, with the admission and owner check of every Broker call.
impl BrokerService {
    /// The caller's own open session; anyone else gets the same denial as over gRPC.
    pub(crate) async fn session_view(
        &self,
        caller: &PeerIdentity,
        session_id: &str,
    ) -> Result<Arc<Session>, ApiError> {
        caller.still_bound().map_err(ApiError::Denied)?;
        validate_id("session_id", session_id)?;
        let cat = self.engine.catalog();
        let owner = self
            .engine
            .admit(&cat, caller, "session_lookup", session_id)
            .await?;
        Ok(self.engine.session(session_id, &owner)?)
    }

    /// A live lease of the caller's own session.
    pub(crate) async fn lease_view(
        &self,
        caller: &PeerIdentity,
        session_id: &str,
        lease_id: &str,
    ) -> Result<Lease, ApiError> {
        self.session_view(caller, session_id).await?;
        validate_id("lease_id", lease_id)?;
        self.engine
            .live_lease(session_id, lease_id)
            .ok_or_else(|| ApiError::InvalidArgument("lease not found".into()))
    }
}

fn secs_left(at: SystemTime, now: SystemTime) -> u64 {
    at.duration_since(now).map(|d| d.as_secs()).unwrap_or(0)
}

pub(super) fn health(head: bool) -> Reply {
    if head {
        return reply::no_content(StatusCode::OK);
    }
    reply::json(
        StatusCode::OK,
        &json!({
            "initialized": true,
            "sealed": false,
            "standby": false,
            "performance_standby": false,
            "replication_performance_mode": "disabled",
            "replication_dr_mode": "disabled",
            "server_time_utc": unix_secs(SystemTime::now()),
            "version": concat!(env!("CARGO_PKG_VERSION"), "+sidecred"),
            "cluster_name": "sidecred",
            "cluster_id": "",
        }),
    )
}

/// `ttl` as Vault writes it: seconds, or a duration string.
#[derive(Deserialize)]
#[serde(untagged)]
enum Ttl {
    Secs(u64),
    Text(String),
}

#[derive(Deserialize, Default)]
struct LoginBody {
    #[serde(default)]
    ttl: Option<Ttl>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

/// A JSON object body, or the default for an empty one (or `null`, as `bao write -f` sends).
fn body<T: Default + for<'d> Deserialize<'d>>(b: &Bytes) -> Result<T, Fail> {
    if b.iter().all(u8::is_ascii_whitespace) || b.trim_ascii() == b"null" {
        return Ok(T::default());
    }
    serde_json::from_slice(b).map_err(|e| {
        Fail::bad(format!(
            "failed to parse JSON input: {}",
            e.to_string().chars().take(160).collect::<String>()
        ))
    })
}

impl VaultApi {
    pub(super) async fn login(
        &self,
        caller: &PeerIdentity,
        b: &Bytes,
        note: &mut Note,
    ) -> Result<Reply, Fail> {
        let lb: LoginBody = body(b)?;
        let ttl_seconds = match lb.ttl {
            None => 0,
            Some(Ttl::Secs(s)) => s,
            Some(Ttl::Text(t)) => sidecred_core::duration::parse_duration(&t)
                .map_err(|m| Fail::bad(format!("ttl: {m}")))?
                .as_secs(),
        };
        let r = self
            .broker
            .open_session(
                caller,
                pb::OpenSessionRequest {
                    ttl_seconds,
                    labels: lb.labels.into_iter().collect(),
                },
            )
            .await?;
        note.session = Some(r.session_id.clone());
        let s = self.broker.session_view(caller, &r.session_id).await?;
        let now = self.engine().now();
        let policies = [s.owner.rule.as_str()];
        let auth = json!({
            "client_token": r.session_id,
            "accessor": "",
            "policies": policies,
            "token_policies": policies,
            "metadata": s.meta.labels,
            "lease_duration": secs_left(s.expires_at, now),
            "renewable": false,
            "entity_id": "",
            "token_type": "service",
            "orphan": true,
            "mfa_requirement": null,
            "num_uses": 0,
        });
        Ok(reply::json(
            StatusCode::OK,
            &reply::envelope(Value::Null, None, auth),
        ))
    }

    pub(super) async fn lookup_self(
        &self,
        caller: &PeerIdentity,
        token: &str,
        cfg: &VaultApiConfig,
    ) -> Result<Reply, Fail> {
        let s = self.broker.session_view(caller, token).await?;
        let now = self.engine().now();
        let labels = (!s.meta.labels.is_empty()).then(|| &s.meta.labels);
        let data = json!({
            "accessor": "",
            "creation_time": unix_secs(s.opened_at),
            "creation_ttl": s.meta.ttl.as_secs(),
            "display_name": format!("sidecred-{}", s.owner.rule),
            "entity_id": "",
            "expire_time": crate::audit::rfc3339(s.expires_at),
            "explicit_max_ttl": 0,
            "id": token,
            "issue_time": crate::audit::rfc3339(s.opened_at),
            "meta": labels,
            "num_uses": 0,
            "orphan": true,
            "path": cfg.login_path,
            "policies": [s.owner.rule],
            "renewable": false,
            "ttl": secs_left(s.expires_at, now),
            "type": "service",
        });
        Ok(reply::json(
            StatusCode::OK,
            &reply::envelope(data, None, Value::Null),
        ))
    }

    pub(super) async fn revoke_self(
        &self,
        caller: &PeerIdentity,
        token: &str,
    ) -> Result<Reply, Fail> {
        self.broker
            .close_session(
                caller,
                pb::CloseSessionRequest {
                    session_id: token.to_string(),
                },
            )
            .await?;
        Ok(reply::no_content(StatusCode::NO_CONTENT))
    }

    /// `sys/leases/{renew,lookup,revoke}[/<lease_id>]`.
    pub(super) async fn lease_op(
        &self,
        caller: &PeerIdentity,
        token: &str,
        op: &str,
        b: &Bytes,
        cfg: &VaultApiConfig,
        note: &mut Note,
    ) -> Result<Reply, Fail> {
        #[derive(Deserialize, Default)]
        struct LeaseBody {
            #[serde(default)]
            lease_id: Option<String>,
            #[serde(default)]
            sync: Option<bool>,
        }
        let lb: LeaseBody = body(b)?;
        let (op, in_path) = match op.split_once('/') {
            Some((o, id)) => (o, Some(id.to_string())),
            None => (op, None),
        };
        note.route = Some(match op {
            "renew" => "sys/leases/renew",
            "lookup" => "sys/leases/lookup",
            "revoke" => "sys/leases/revoke",
            _ => return Err(Fail::no_route(&format!("sys/leases/{op}"))),
        });
        let full = in_path
            .or(lb.lease_id)
            .filter(|l| !l.is_empty())
            .ok_or_else(|| Fail::bad("lease_id must be specified"))?;
        // Vault lease ids are `<path>/<id>`: the path must be a leased mapping, the id sidecred's.
        let (path, id) = full
            .rsplit_once('/')
            .filter(|(p, _)| cfg.leased(p).is_some())
            .ok_or_else(|| Fail::bad("lease not found"))?;
        note.lease = Some(id.to_string());
        note.secret = cfg.leased(path).map(|t| t.secret);
        if op == "revoke" {
            let r = self
                .broker
                .release_lease(
                    caller,
                    pb::ReleaseLeaseRequest {
                        lease_id: id.to_string(),
                        session_id: token.to_string(),
                    },
                )
                .await;
            // Like Vault, revoking a lease that is already gone succeeds.
            match r {
                Ok(_) | Err(ApiError::NotFound(_)) => {}
                Err(e) => return Err(e.into()),
            }
            let status = if lb.sync == Some(false) {
                StatusCode::ACCEPTED
            } else {
                StatusCode::NO_CONTENT
            };
            return Ok(reply::no_content(status));
        }
        let l = self.broker.lease_view(caller, token, id).await?;
        let left = secs_left(l.expires_at, self.engine().now());
        if op == "lookup" {
            let data = json!({
                "id": full,
                "issue_time": crate::audit::rfc3339(l.issued_at),
                "expire_time": crate::audit::rfc3339(l.expires_at),
                "last_renewal": null,
                "renewable": true,
                "ttl": left,
            });
            return Ok(reply::json(
                StatusCode::OK,
                &reply::envelope(data, None, Value::Null),
            ));
        }
        // Renewal: sidecred keeps the backend lease alive itself until the lease ends; the
        // answer is the time left, as Vault answers a renewal capped by its max TTL.
        let info = LeaseInfo {
            id: &full,
            duration: left,
            renewable: true,
        };
        Ok(reply::json(
            StatusCode::OK,
            &reply::envelope(Value::Null, Some(info), Value::Null),
        ))
    }
}
