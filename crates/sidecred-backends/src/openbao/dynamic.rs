//! Leased secrets. Each sidecred session gets a child of sidecred's token; dynamic reads for the
//! session go through it, so revoking it makes OpenBao revoke every lease beneath it. A call id
//! adds a grandchild token whose ttl is the secret's ttl, so call credentials die with the call.

use super::client::{from_vaultrs, Reply};
use super::{select, CallToken, Inner, Opts};
use crate::{BackendError, BackendLease, FetchRequest, Fetched, SessionHandle, SessionMeta};
use reqwest::Method;
use serde_json::json;
use sidecred_core::spec::Scope;
use sidecred_secret::{SecretBytes, SecretText};
use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use vaultrs::api::token::requests::CreateTokenRequest;
use zeroize::Zeroize;

/// Creates a child token of `parent` with metadata, living exactly `ttl`.
async fn child_token(
    inner: &Inner,
    parent: &str,
    meta: HashMap<String, String>,
    ttl: Duration,
    display: &str,
) -> Result<(SecretText, String), BackendError> {
    let c = inner.bao.vault(parent, None);
    let ttl = format!("{}s", ttl.as_secs().max(1));
    let mut b = CreateTokenRequest::builder();
    b.meta(meta)
        .ttl(ttl.clone())
        .explicit_max_ttl(ttl)
        .renewable(false)
        .display_name(display.to_string());
    let info = vaultrs::token::new(&c.0, Some(&mut b))
        .await
        .map_err(|e| from_vaultrs("auth/token/create", e))?;
    Ok((SecretText::new(info.client_token), info.accessor))
}

pub async fn open_session(inner: &Inner, s: &SessionMeta) -> Result<SessionHandle, BackendError> {
    let mut meta: HashMap<String, String> = s
        .labels
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    meta.insert("sidecred_session".into(), s.id.clone());
    let own = inner.token();
    let (token, accessor) =
        child_token(inner, own.token.expose(), meta, s.ttl, "sidecred-session").await?;
    inner.sessions.lock().insert(s.id.clone(), Vec::new());
    tracing::debug!(backend = %inner.name, session = %s.id, accessor = %accessor, "session token created");
    Ok(SessionHandle {
        id: accessor,
        token: Some(token),
    })
}

/// The token a read goes through: the session's, else (shared secrets) sidecred's own.
fn reader_token(inner: &Inner, req: &FetchRequest<'_>) -> Result<SecretText, BackendError> {
    match req.handle.and_then(|h| h.token.clone()) {
        Some(t) => Ok(t),
        None if req.spec.scope == Scope::Shared => Ok(inner.token().token.clone()),
        None => Err(BackendError::Unavailable(format!(
            "session `{}` has no OpenBao token (OpenBao was unreachable when it opened); open a new session",
            req.session.id
        ))),
    }
}

fn lease_version(lease_id: &str) -> String {
    lease_id.rsplit('/').next().unwrap_or(lease_id).to_string()
}

/// Reads a leased path (database/creds/ROLE and the like).
pub async fn read(
    inner: &Inner,
    req: &FetchRequest<'_>,
    o: &Opts,
) -> Result<Fetched, BackendError> {
    if req.version.is_some() {
        return Err(BackendError::Invalid(format!(
            "`{}` is issued fresh per read; it has no versions",
            o.path
        )));
    }
    let session_token = reader_token(inner, req)?;
    let call = match req.call_id {
        Some(call_id) => {
            let meta = HashMap::from([
                ("sidecred_session".to_string(), req.session.id.clone()),
                ("sidecred_call".to_string(), call_id.to_string()),
            ]);
            let ttl = req.spec.ttl.min(req.session.ttl);
            Some(child_token(inner, session_token.expose(), meta, ttl, "sidecred-call").await?)
        }
        None => None,
    };
    let token = call.as_ref().map(|c| &c.0).unwrap_or(&session_token);
    let ns = o.namespace.as_deref();
    let reply = inner
        .bao
        .call(Method::GET, &o.path, token.expose(), ns, None)
        .await;
    let reply = match reply {
        Ok(Some(r)) => r,
        Ok(None) => Err(BackendError::NotFound(format!(
            "`{}` returned no data",
            o.path
        )))?,
        Err(e) => {
            if let Some((t, _)) = &call {
                revoke_self(inner, t).await.ok();
            }
            return Err(e);
        }
    };
    let value = select(&reply.data, req.spec.key.as_deref(), &o.path)?;
    if reply.lease_id.is_empty() {
        return Ok(Fetched {
            value,
            version: String::new(),
            lease: None,
        });
    }
    // A call lease dies with its call token, whatever ttl the role grants.
    let mut ttl = Duration::from_secs(reply.lease_duration);
    if call.is_some() {
        ttl = ttl.min(req.spec.ttl.min(req.session.ttl));
    }
    record(inner, &req.session.id, &reply, call.map(|c| c.0));
    Ok(Fetched {
        value,
        version: lease_version(&reply.lease_id),
        lease: Some(BackendLease {
            id: reply.lease_id.clone(),
            ttl,
            renewable: reply.renewable,
        }),
    })
}

fn record(inner: &Inner, session: &str, r: &Reply, call: Option<SecretText>) {
    if let Some(l) = inner.sessions.lock().get_mut(session) {
        l.push(r.lease_id.clone());
    }
    if let Some(token) = call {
        inner.calls.lock().insert(
            r.lease_id.clone(),
            CallToken {
                token,
                session: session.to_string(),
            },
        );
    }
}

/// Issues a certificate: the value is the PEM bundle (certificate, chain, key), the version its
/// serial, and the lease runs until the certificate expires.
pub async fn issue(
    inner: &Inner,
    req: &FetchRequest<'_>,
    o: &Opts,
) -> Result<Fetched, BackendError> {
    let (mount, role) = o.path.split_once("/issue/").unwrap_or((&o.path, ""));
    let token = reader_token(inner, req)?;
    let c = inner.bao.vault(token.expose(), o.namespace.as_deref());
    let pki = o.pki.as_ref().ok_or_else(|| {
        BackendError::Internal(format!("`{}`: pki options missing", req.spec.name))
    })?;
    let mut b = vaultrs::api::pki::requests::GenerateCertificateRequest::builder();
    b.common_name(pki.common_name.clone());
    if let Some(v) = &pki.alt_names {
        b.alt_names(v.clone());
    }
    if let Some(v) = &pki.ttl {
        b.ttl(v.clone());
    }
    let mut r = vaultrs::pki::cert::generate(&c.0, mount, role, Some(&mut b))
        .await
        .map_err(|e| from_vaultrs(&o.path, e))?;
    let mut pem = String::with_capacity(8192);
    pem.push_str(r.certificate.trim_end());
    pem.push('\n');
    match &r.ca_chain {
        Some(chain) if !chain.is_empty() => chain.iter().for_each(|c| {
            pem.push_str(c.trim_end());
            pem.push('\n');
        }),
        _ => {
            pem.push_str(r.issuing_ca.trim_end());
            pem.push('\n');
        }
    }
    pem.push_str(r.private_key.trim_end());
    pem.push('\n');
    r.private_key.zeroize();
    let value = SecretBytes::from_string(pem);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let ttl = Duration::from_secs(r.expiration.unwrap_or(0)).saturating_sub(now);
    Ok(Fetched {
        value,
        version: r.serial_number.clone(),
        lease: Some(BackendLease {
            id: format!("pki:{mount}:{}", r.serial_number),
            ttl,
            renewable: false,
        }),
    })
}

fn is_pki(lease: &BackendLease) -> bool {
    lease.id.starts_with("pki:")
}

/// Renews a lease by its own ttl; zero means OpenBao will not extend it (max ttl reached).
pub async fn renew(
    inner: &Inner,
    lease: &BackendLease,
    handle: Option<&SessionHandle>,
) -> Result<Duration, BackendError> {
    if is_pki(lease) || !lease.renewable {
        return Ok(Duration::ZERO);
    }
    let call = inner.calls.lock().get(&lease.id).map(|c| c.token.clone());
    let token = call
        .or_else(|| handle.and_then(|h| h.token.clone()))
        .unwrap_or_else(|| inner.token().token.clone());
    let body = json!({ "lease_id": lease.id, "increment": lease.ttl.as_secs() });
    let r = inner
        .bao
        .call(
            Method::PUT,
            "sys/leases/renew",
            token.expose(),
            None,
            Some(body),
        )
        .await?;
    let ttl = r.map(|r| r.lease_duration).unwrap_or(0);
    Ok(if ttl < 1 {
        Duration::ZERO
    } else {
        Duration::from_secs(ttl)
    })
}

async fn revoke_self(inner: &Inner, token: &SecretText) -> Result<(), BackendError> {
    match inner
        .bao
        .call(
            Method::POST,
            "auth/token/revoke-self",
            token.expose(),
            None,
            None,
        )
        .await
    {
        // 403: the token is already gone (expired or revoked).
        Ok(_) | Err(BackendError::Denied(_)) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Revokes one lease with sidecred's token; an unknown lease is already revoked.
async fn revoke_one(inner: &Inner, lease_id: &str) -> Result<(), BackendError> {
    let body = json!({ "lease_id": lease_id });
    let own = inner.token();
    match inner
        .bao
        .call(
            Method::PUT,
            "sys/leases/revoke",
            own.token.expose(),
            None,
            Some(body),
        )
        .await
    {
        Ok(_) | Err(BackendError::Invalid(_)) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Ends one lease. A call credential's token is revoked, which revokes the lease with it.
/// Certificates are left to expire (their lease is the certificate's own lifetime).
pub async fn revoke_lease(
    inner: &Inner,
    lease: &BackendLease,
    _handle: Option<&SessionHandle>,
) -> Result<(), BackendError> {
    if is_pki(lease) {
        return Ok(());
    }
    let call = inner.calls.lock().remove(&lease.id);
    let r = match &call {
        Some(c) => revoke_self(inner, &c.token).await,
        None => revoke_one(inner, &lease.id).await,
    };
    match r {
        Ok(()) => {
            if let Some(c) = &call {
                if let Some(l) = inner.sessions.lock().get_mut(&c.session) {
                    l.retain(|id| id != &lease.id);
                }
            }
            Ok(())
        }
        Err(e) => {
            if let Some(c) = call {
                inner.calls.lock().insert(lease.id.clone(), c);
            }
            Err(e)
        }
    }
}

/// Revokes a session token by its accessor with sidecred's own token (its parent).
async fn revoke_accessor(
    inner: &Inner,
    s: &SessionMeta,
    accessor: &str,
) -> Result<u32, BackendError> {
    let own = inner.token();
    let body = json!({ "accessor": accessor });
    match inner
        .bao
        .call(
            Method::POST,
            "auth/token/revoke-accessor",
            own.token.expose(),
            None,
            Some(body),
        )
        .await
    {
        Ok(_) => {}
        // An accessor OpenBao no longer knows: the token expired or was revoked already.
        Err(BackendError::Invalid(m)) if m.contains("invalid accessor") => {}
        Err(e) => return Err(e),
    }
    inner.sessions.lock().remove(&s.id);
    tracing::info!(backend = %inner.name, session = %s.id, accessor, "session token revoked by accessor");
    Ok(1)
}

/// True while OpenBao still knows the lease.
async fn lease_alive(inner: &Inner, lease_id: &str) -> Result<bool, BackendError> {
    let own = inner.token();
    let body = json!({ "lease_id": lease_id });
    match inner
        .bao
        .call(
            Method::PUT,
            "sys/leases/lookup",
            own.token.expose(),
            None,
            Some(body),
        )
        .await
    {
        Ok(_) => Ok(true),
        Err(BackendError::Invalid(_)) | Err(BackendError::NotFound(_)) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Revokes the session token; OpenBao cascades to its call tokens and every lease beneath.
/// Then confirms: the token no longer works and each recorded lease is gone. Returns the
/// number of leases revoked with it.
pub async fn revoke_session(
    inner: &Inner,
    s: &SessionMeta,
    handle: &SessionHandle,
) -> Result<u32, BackendError> {
    let Some(token) = &handle.token else {
        // Replayed from the journal after a restart: only the accessor survived.
        return revoke_accessor(inner, s, &handle.id).await;
    };
    revoke_self(inner, token).await?;
    match inner
        .bao
        .call(
            Method::GET,
            "auth/token/lookup-self",
            token.expose(),
            None,
            None,
        )
        .await
    {
        Err(BackendError::Denied(_)) => {}
        Ok(_) => {
            return Err(BackendError::Unavailable(format!(
                "session token {} still valid after revocation",
                handle.id
            )))
        }
        Err(e) => return Err(e),
    }
    let leases = inner
        .sessions
        .lock()
        .get(&s.id)
        .cloned()
        .unwrap_or_default();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
    let mut live = leases.clone();
    loop {
        let mut still = Vec::new();
        for l in &live {
            match lease_alive(inner, l).await {
                Ok(true) => still.push(l.clone()),
                Ok(false) => {}
                Err(BackendError::Denied(m)) => {
                    tracing::debug!(backend = %inner.name, error = %m, "cannot look up leases to confirm the cascade");
                }
                Err(e) => return Err(e),
            }
        }
        live = still;
        if live.is_empty() || tokio::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for l in &live {
        tracing::warn!(backend = %inner.name, session = %s.id, lease = %l, "lease outlived its session token; revoking it directly");
        revoke_one(inner, l).await?;
    }
    inner.sessions.lock().remove(&s.id);
    inner.calls.lock().retain(|_, c| c.session != s.id);
    tracing::info!(backend = %inner.name, session = %s.id, accessor = %handle.id, leases = leases.len(), direct = live.len(), "session token revoked; its leases are gone");
    Ok(leases.len() as u32)
}
