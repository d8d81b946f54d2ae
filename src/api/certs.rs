//! CSR signing (Broker) and CRL retrieval (Admin) for CA-backed secrets.

use super::error::ApiError;
use super::pb;
use super::peer::PeerIdentity;
use crate::clock::unix_secs;
use crate::engine::{authority_of, CsrRequest, Engine};
use crate::error::BackendFailure;
use crate::policy::SanPolicy;
use crate::session::Owner;

/// Signs a CSR for the caller (see [`Engine::sign_csr`]).
pub(crate) async fn sign_csr(
    engine: &Engine,
    caller: &PeerIdentity,
    owner: &Owner,
    r: &pb::SignCsrRequest,
    spiffe_id: Option<&str>,
    sans: &SanPolicy,
) -> Result<pb::SignCsrResponse, ApiError> {
    let req = CsrRequest {
        session_id: &r.session_id,
        name: &r.name,
        csr_pem: &r.csr_pem,
        ttl_seconds: r.ttl_seconds,
    };
    let s = engine.sign_csr(caller, owner, req, spiffe_id, sans).await?;
    Ok(pb::SignCsrResponse {
        certificate_chain_pem: s.chain_pem,
        bundle_pem: s.bundle_pem,
        serial: s.serial,
        spiffe_id: s.spiffe_id,
        expires_at: unix_secs(s.expires_at),
    })
}

pub(crate) fn get_crl(engine: &Engine, name: &str) -> Result<pb::GetCrlResponse, ApiError> {
    let cat = engine.catalog();
    let ca = authority_of(&cat, name)?;
    let (crls, serials) = ca
        .crls(engine.now())
        .map_err(|e| BackendFailure::admin(name, e))?;
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
