//! CSR signing (Broker) and CRL retrieval (Admin) for CA-backed secrets.

use super::error::{validate_id, ApiError};
use super::pb;
use super::peer::PeerIdentity;
use crate::audit::AuditEvent;
use crate::backend::ca::{check_sans, issuer, Authority};
use crate::clock::unix_secs;
use crate::engine::{Catalog, Engine};
use crate::policy::SanPolicy;
use crate::session::Owner;
use std::sync::Arc;
use std::time::Duration;

/// Largest CSR accepted.
const MAX_CSR_BYTES: usize = 16 * 1024;

/// The CA behind a secret, or why the secret is not CA-backed.
pub(crate) fn authority_of(cat: &Catalog, name: &str) -> Result<Arc<Authority>, ApiError> {
    let spec = cat.secret(name)?;
    cat.backends
        .get(&spec.backend)
        .and_then(|b| b.authority())
        .ok_or_else(|| {
            ApiError::Precondition(format!(
                "secret `{name}` is not backed by a certificate authority"
            ))
        })
}

/// Signs a CSR for the caller: the URI SAN must be (or default to) the rule's SPIFFE ID, and
/// every DNS/IP SAN must be allowed by the rule.
pub(crate) async fn sign_csr(
    engine: &Engine,
    caller: &PeerIdentity,
    owner: &Owner,
    r: &pb::SignCsrRequest,
    spiffe_id: Option<&str>,
    sans: &SanPolicy,
) -> Result<pb::SignCsrResponse, ApiError> {
    validate_id("session_id", &r.session_id)?;
    let session = engine
        .sessions
        .get(&r.session_id, owner, engine.now())
        .map_err(|e| ApiError::from_session(&r.session_id, e))?;
    let cat = engine.catalog();
    let ca = authority_of(&cat, &r.name)?;
    if r.csr_pem.is_empty() || r.csr_pem.len() > MAX_CSR_BYTES {
        return Err(ApiError::InvalidArgument(format!(
            "csr_pem: 1 to {MAX_CSR_BYTES} bytes of PEM"
        )));
    }
    let spiffe = spiffe_id.ok_or_else(|| {
        ApiError::Denied(format!(
            "secret `{}` issues certificates: the caller's policy rule needs a spiffe_id",
            r.name
        ))
    })?;
    let ask = issuer::parse_csr(&r.csr_pem).map_err(ApiError::InvalidArgument)?;
    if let Some(u) = ask.uris.iter().find(|u| u.as_str() != spiffe) {
        return Err(ApiError::Denied(format!(
            "policy does not allow URI SAN `{u}` (this caller is `{spiffe}`)"
        )));
    }
    check_sans(Some(sans), &ask.dns, &ask.ips).map_err(ApiError::Denied)?;
    // Never longer than the secret's ttl (nor the CA's leaf ttl, which the CA applies).
    let max = cat.secret(&r.name)?.ttl;
    let ttl = Some(match r.ttl_seconds {
        0 => max,
        s => Duration::from_secs(s).min(max),
    });
    let issued = ca
        .sign_csr(&ask, spiffe, ttl, Some(&session.meta.id), engine.now())
        .map_err(|e| ApiError::from_backend(&r.name, e))?;
    // The session may have ended while the CSR was signed: then the leaf goes straight to
    // the deny list and no reply carries it. Otherwise the guard holds off revocation until
    // the reply is out, and revocation then finds the leaf under the session.
    let _hold = match session.gate.reply(None).await {
        Ok(g) => g,
        Err(e) => {
            let _ = ca.revoke_serial(&issued.leaf.serial, engine.now());
            return Err(ApiError::from_gate(&session.meta.id, e));
        }
    };
    let serial = hex::encode(&issued.leaf.serial);
    let mut ev = AuditEvent::new("csr_sign", "ok").caller(caller);
    ev.session = Some(&session.meta.id);
    ev.secret = Some(&r.name);
    ev.version = Some(&serial);
    engine
        .audit
        .record(ev)
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))?;
    let view = ca.view(engine.now());
    Ok(pb::SignCsrResponse {
        certificate_chain_pem: issued.chain_pem(),
        bundle_pem: issuer::pem_certs(&view.bundle),
        serial,
        spiffe_id: spiffe.to_string(),
        expires_at: unix_secs(issued.leaf.not_after),
    })
}

pub(crate) fn get_crl(engine: &Engine, name: &str) -> Result<pb::GetCrlResponse, ApiError> {
    let cat = engine.catalog();
    let ca = authority_of(&cat, name)?;
    let (crls, serials) = ca
        .crls(engine.now())
        .map_err(|e| ApiError::from_backend(name, e))?;
    Ok(pb::GetCrlResponse {
        crls: crls
            .into_iter()
            .map(|c| pb::Crl {
                ca_version: c.ca_id.to_string(),
                der: c.der,
                pem: c.pem,
            })
            .collect(),
        revoked_serials: serials,
    })
}
