//! The certificates component: CSR signing for CA-backed secrets and SVID issuance for the
//! SPIFFE Workload API. Issuing and the audit line that answers for it happen together here;
//! with `audit.fail_closed`, a certificate that cannot be recorded is never handed out.

use super::LookupError;
use super::{Catalog, Engine};
use crate::audit::{AuditError, AuditEvent};
use crate::backend::ca::{check_sans, issuer, Authority, Issued};
use crate::error::{validate_id, ApiError, BackendFailure, GateRefused, IdError, SessionRefused};
use crate::session::Owner;
use sidecred_core::identity::PeerIdentity;
use sidecred_core::san::SanPolicy;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Largest CSR accepted.
const MAX_CSR_BYTES: usize = 16 * 1024;

/// What a caller asks to have signed.
pub struct CsrRequest<'a> {
    pub session_id: &'a str,
    pub name: &'a str,
    pub csr_pem: &'a str,
    /// 0 asks for the secret's ttl.
    pub ttl_seconds: u64,
}

/// A signed CSR, with the bundle to verify it against.
pub struct SignedCsr {
    pub chain_pem: String,
    pub bundle_pem: String,
    pub serial: String,
    pub spiffe_id: String,
    pub expires_at: SystemTime,
}

/// Why a certificate was not signed or issued. Policy refusals (`is_denial`) are audited.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error(transparent)]
    InvalidId(#[from] IdError),
    #[error(transparent)]
    Session(#[from] SessionRefused),
    #[error(transparent)]
    Gate(#[from] GateRefused),
    #[error(transparent)]
    Lookup(#[from] LookupError),
    #[error("secret `{0}` is not backed by a certificate authority")]
    NotCa(String),
    #[error("csr_pem: 1 to {MAX_CSR_BYTES} bytes of PEM")]
    CsrSize,
    /// The CSR does not parse; the parser's reason.
    #[error("{0}")]
    BadCsr(String),
    #[error("secret `{0}` issues certificates: the caller's policy rule needs a spiffe_id")]
    NoSpiffeId(String),
    #[error("policy does not allow URI SAN `{uri}` (this caller is `{spiffe}`)")]
    UriSan { uri: String, spiffe: String },
    /// A DNS or IP SAN the rule does not allow; the check's reason.
    #[error("{0}")]
    Sans(String),
    /// The CA refused or failed (sidecred's own: its text is shown).
    #[error(transparent)]
    Backend(#[from] BackendFailure),
    #[error("{0}")]
    Audit(#[source] AuditError),
}

impl CertError {
    /// A refusal by policy (the caller's rule), as opposed to a bad request or a failure: the
    /// variants that report as `Denied`.
    pub fn is_denial(&self) -> bool {
        matches!(
            self,
            CertError::NoSpiffeId(_) | CertError::UriSan { .. } | CertError::Sans(_)
        )
    }
}

impl From<CertError> for ApiError {
    fn from(e: CertError) -> Self {
        match e {
            CertError::InvalidId(e) => e.into(),
            CertError::Session(e) => e.into(),
            CertError::Gate(e) => e.into(),
            CertError::Lookup(e) => e.into(),
            CertError::Backend(e) => e.into(),
            e @ (CertError::NoSpiffeId(_) | CertError::UriSan { .. } | CertError::Sans(_)) => {
                ApiError::Denied(e.to_string())
            }
            e @ (CertError::CsrSize | CertError::BadCsr(_)) => {
                ApiError::InvalidArgument(e.to_string())
            }
            e @ CertError::NotCa(_) => ApiError::Precondition(e.to_string()),
            e @ CertError::Audit(_) => ApiError::Unavailable(e.to_string()),
        }
    }
}

/// The CA behind a secret, or why the secret is not CA-backed.
pub fn authority_of(cat: &Catalog, name: &str) -> Result<Arc<Authority>, CertError> {
    let spec = cat.secret(name)?;
    cat.backends
        .get(&spec.backend)
        .and_then(|b| b.authority())
        .ok_or_else(|| CertError::NotCa(name.to_string()))
}

impl Engine {
    /// Signs a CSR for the caller: the URI SAN must be (or default to) the rule's SPIFFE ID,
    /// and every DNS/IP SAN must be allowed by the rule. A refusal by those checks is audited.
    pub async fn sign_csr(
        &self,
        caller: &PeerIdentity,
        owner: &Owner,
        r: CsrRequest<'_>,
        spiffe_id: Option<&str>,
        sans: &SanPolicy,
    ) -> Result<SignedCsr, CertError> {
        let out = self
            .sign_csr_inner(caller, owner, &r, spiffe_id, sans)
            .await;
        if let Some(e) = out.as_ref().err().filter(|e| e.is_denial()) {
            let why = e.to_string();
            let mut ev = AuditEvent::new("csr_sign", "denied").caller(caller);
            ev.session = (!r.session_id.is_empty()).then_some(r.session_id);
            ev.secret = (!r.name.is_empty()).then_some(r.name);
            ev.detail = Some(&why);
            let _ = self.audit.record(ev).await;
        }
        out
    }

    async fn sign_csr_inner(
        &self,
        caller: &PeerIdentity,
        owner: &Owner,
        r: &CsrRequest<'_>,
        spiffe_id: Option<&str>,
        sans: &SanPolicy,
    ) -> Result<SignedCsr, CertError> {
        validate_id("session_id", r.session_id)?;
        let session = self.session(r.session_id, owner)?;
        let cat = self.catalog();
        let ca = authority_of(&cat, r.name)?;
        if r.csr_pem.is_empty() || r.csr_pem.len() > MAX_CSR_BYTES {
            return Err(CertError::CsrSize);
        }
        let spiffe = spiffe_id.ok_or_else(|| CertError::NoSpiffeId(r.name.to_string()))?;
        let ask = issuer::parse_csr(r.csr_pem).map_err(CertError::BadCsr)?;
        if let Some(u) = ask.uris.iter().find(|u| u.as_str() != spiffe) {
            return Err(CertError::UriSan {
                uri: u.to_string(),
                spiffe: spiffe.to_string(),
            });
        }
        check_sans(Some(sans), &ask.dns, &ask.ips).map_err(CertError::Sans)?;
        // Never longer than the secret's ttl (nor the CA's leaf ttl, which the CA applies).
        let max = cat.secret(r.name)?.ttl;
        let ttl = Some(match r.ttl_seconds {
            0 => max,
            s => Duration::from_secs(s).min(max),
        });
        let issued = ca
            .sign_csr(&ask, spiffe, ttl, Some(&session.meta.id), self.now())
            .map_err(|e| BackendFailure::admin(r.name, e))?;
        // The session may have ended while the CSR was signed: then the leaf goes straight to
        // the deny list and no reply carries it. Otherwise the guard holds off revocation
        // until the reply is out, and revocation then finds the leaf under the session.
        let _hold = match session.gate.reply(None).await {
            Ok(g) => g,
            Err(e) => {
                let _ = ca.revoke_serial(&issued.leaf.serial, self.now());
                return Err(GateRefused::new(&session.meta.id, e).into());
            }
        };
        let serial = hex::encode(&issued.leaf.serial);
        let mut ev = AuditEvent::new("csr_sign", "ok").caller(caller);
        ev.session = Some(&session.meta.id);
        ev.secret = Some(r.name);
        ev.version = Some(&serial);
        self.audit.record(ev).await.map_err(CertError::Audit)?;
        let view = ca.view(self.now());
        Ok(SignedCsr {
            chain_pem: issued.chain_pem(),
            bundle_pem: issuer::pem_certs(&view.bundle),
            serial,
            spiffe_id: spiffe.to_string(),
            expires_at: issued.leaf.not_after,
        })
    }

    /// Issues an X.509-SVID for a Workload API stream (`event` names the API).
    pub async fn issue_svid(
        &self,
        caller: &PeerIdentity,
        ca: &Authority,
        event: &str,
        spiffe_id: &str,
        (dns, ips): (&[String], &[IpAddr]),
    ) -> Result<Issued, CertError> {
        let now = self.now();
        let issued = ca
            .issue(spiffe_id, dns, ips, None, None, now)
            .map_err(|e| BackendFailure::admin(&ca.settings.name, e))?;
        let serial = hex::encode(&issued.leaf.serial);
        let detail = format!("spiffe_id={spiffe_id} ca={}", issued.chain.id);
        let mut ev = AuditEvent::new(event, "ok").caller(caller);
        ev.version = Some(&serial);
        ev.detail = Some(&detail);
        if let Err(e) = self.audit.record(ev).await {
            tracing::error!(spiffe_id, error = %e, "SVID not issued: audit line not written");
            return Err(CertError::Audit(e));
        }
        tracing::debug!(spiffe_id, serial, "certificate issued for stream");
        Ok(issued)
    }

    /// Mints a JWT-SVID for the caller's SPIFFE ID.
    pub async fn mint_jwt_svid(
        &self,
        caller: &PeerIdentity,
        ca: &Authority,
        spiffe_id: &str,
        audience: &[String],
    ) -> Result<String, CertError> {
        let (svid, _) = ca
            .jwt_mint(spiffe_id, audience, self.now())
            .map_err(|e| BackendFailure::admin(&ca.settings.name, e))?;
        let detail = format!("spiffe_id={spiffe_id} aud={}", audience.join(","));
        let mut ev = AuditEvent::new("svid_jwt", "ok").caller(caller);
        ev.detail = Some(&detail);
        if let Err(e) = self.audit.record(ev).await {
            tracing::error!(spiffe_id, error = %e, "JWT-SVID not issued: audit line not written");
            return Err(CertError::Audit(e));
        }
        Ok(svid)
    }
}
