//! The internal CA (`kind = "ca"`): mTLS certificates for tool routers. GetSecret on a CA-backed
//! secret returns a PEM bundle (leaf, chain, PKCS#8 key) minted for the caller's SPIFFE ID; the
//! same CA feeds the SPIFFE Workload API and Envoy SDS. Admin `Rotate` on the secret rotates
//! the CA with overlap; the secret's grace window is how long the old CA stays trusted.

pub mod authority;
pub mod crl;
mod error;
pub mod issuer;
pub mod jwt;
mod options;
pub mod timing;

pub use authority::{Authority, Issued, View};
pub use error::CaError;
pub use options::CaOptions;

use super::options::CompiledOptions;
use super::setup::SetupError;
use super::{
    Backend, BackendError, BackendLease, FetchRequest, Fetched, Rotated, SessionHandle, SessionMeta,
};
use crate::SecretSpec;
use async_trait::async_trait;
use serde::Deserialize;
use sidecred_core::clock::Clock;
use sidecred_core::duration::Dur;
use sidecred_core::san::SanPolicy;
use sidecred_secret::SecretBytes;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use zeroize::Zeroize;

fn default_sds_certificate() -> String {
    "default".into()
}
fn default_sds_validation() -> String {
    "ROOTCA".into()
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaConfig {
    /// SPIFFE trust domain, e.g. "example.org".
    pub trust_domain: String,
    /// Generate a CA in memory at start (dev mode; nothing on disk).
    #[serde(default)]
    pub generate: bool,
    /// The CA certificate (an intermediate), optionally followed by its chain.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// Its private key, PEM; refused if group or world can access it.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// Trust anchors; default: the self-signed certificates in cert_file.
    #[serde(default)]
    pub bundle_file: Option<PathBuf>,
    /// Leaf lifetime (default 15m).
    #[serde(default)]
    pub leaf_ttl: Option<Dur>,
    /// Validity of generated CAs (default 30d).
    #[serde(default)]
    pub ca_ttl: Option<Dur>,
    /// On rotation, how long the new CA sits in the bundle before it signs (default 30s).
    #[serde(default)]
    pub rotation_stage: Option<Dur>,
    /// JWT-SVID lifetime (default 5m).
    #[serde(default)]
    pub jwt_ttl: Option<Dur>,
    /// Where the CRL (PEM, one per trusted CA) is written on every change.
    #[serde(default)]
    pub crl_file: Option<PathBuf>,
    /// SDS resource name of the workload certificate.
    #[serde(default = "default_sds_certificate")]
    pub sds_certificate: String,
    /// SDS resource name of the trust bundle.
    #[serde(default = "default_sds_validation")]
    pub sds_validation: String,
}

/// Checks a SPIFFE trust domain name (lowercase letters, digits, dots, dashes, underscores) with
/// the `spiffe` crate's parser; a name only, never a `spiffe://` URI.
pub fn valid_trust_domain(td: &str) -> bool {
    !td.contains(':')
        && !td.bytes().any(|b| b.is_ascii_uppercase())
        && td.len() <= 255
        && spiffe::TrustDomain::new(td).is_ok()
}

impl CaConfig {
    fn leaf_ttl(&self) -> Duration {
        self.leaf_ttl
            .map(|d| d.0)
            .unwrap_or(Duration::from_secs(900))
    }

    pub fn validate(&self) -> Result<(), SetupError> {
        if !valid_trust_domain(&self.trust_domain) {
            return Err(SetupError::setting(
                "trust_domain",
                format!(
                    "`{}`: lowercase letters, digits, `.`, `-`, `_` only",
                    self.trust_domain
                ),
            ));
        }
        match (self.generate, &self.cert_file, &self.key_file) {
            (true, None, None) => {}
            (false, Some(_), Some(k)) => issuer::check_key_mode(k)?,
            (true, _, _) => {
                return Err(SetupError::setting(
                    "generate",
                    "generate = true takes no cert_file/key_file",
                ))
            }
            _ => {
                return Err(SetupError::setting(
                    "cert_file",
                    "set cert_file and key_file, or generate = true (dev)",
                ))
            }
        }
        if self.leaf_ttl().is_zero() || self.leaf_ttl() > Duration::from_secs(7 * 86400) {
            return Err(SetupError::setting("leaf_ttl", "must be between 1s and 7d"));
        }
        if self.sds_certificate.is_empty() || self.sds_certificate == self.sds_validation {
            return Err(SetupError::setting(
                "sds_certificate",
                "sds_certificate and sds_validation must be distinct, non-empty",
            ));
        }
        Ok(())
    }

    fn settings(&self, name: &str) -> authority::Settings {
        let source = match (&self.cert_file, &self.key_file) {
            (Some(c), Some(k)) if !self.generate => authority::Source::Files {
                cert: c.clone(),
                key: k.clone(),
                bundle: self.bundle_file.clone(),
            },
            _ => authority::Source::Generate {
                validity: self
                    .ca_ttl
                    .map(|d| d.0)
                    .unwrap_or(Duration::from_secs(30 * 86400)),
            },
        };
        authority::Settings {
            name: name.to_string(),
            trust_domain: self.trust_domain.clone(),
            leaf_ttl: self.leaf_ttl(),
            stage: self
                .rotation_stage
                .map(|d| d.0)
                .unwrap_or(Duration::from_secs(30)),
            jwt_ttl: self
                .jwt_ttl
                .map(|d| d.0)
                .unwrap_or(Duration::from_secs(300)),
            crl_file: self.crl_file.clone(),
            source,
            sds_certificate: self.sds_certificate.clone(),
            sds_validation: self.sds_validation.clone(),
        }
    }
}

/// Refuses SANs the caller's policy rule does not allow, naming the first one.
pub fn check_sans(
    policy: Option<&SanPolicy>,
    dns: &[String],
    ips: &[IpAddr],
) -> Result<(), String> {
    let empty = SanPolicy::default();
    let p = policy.unwrap_or(&empty);
    if let Some(d) = dns.iter().find(|d| !p.allows_dns(d)) {
        return Err(format!("policy does not allow DNS SAN `{d}`"));
    }
    if let Some(ip) = ips.iter().find(|ip| !p.allows_ip(**ip)) {
        return Err(format!("policy does not allow IP SAN `{ip}`"));
    }
    Ok(())
}

/// Leaf, chain and key as one PEM document, built in a buffer sized up front so no
/// reallocation leaves a copy of the key behind.
pub fn pem_bundle(issued: &Issued) -> SecretBytes {
    let chain = issued.chain_pem();
    let mut key = issuer::pem_block("PRIVATE KEY", issued.leaf.key.expose());
    let mut out = Vec::with_capacity(chain.len() + key.len());
    out.extend_from_slice(chain.as_bytes());
    out.extend_from_slice(key.as_bytes());
    key.zeroize();
    SecretBytes::new(out)
}

pub struct CaBackend {
    authority: Arc<Authority>,
    clock: Arc<dyn Clock>,
}

impl CaBackend {
    pub fn new(name: &str, cfg: &CaConfig, clock: Arc<dyn Clock>) -> Result<Self, SetupError> {
        let authority = Authority::new(cfg.settings(name), clock.now())?;
        Ok(Self {
            authority: Arc::new(authority),
            clock,
        })
    }
}

fn parse_version(spec: &SecretSpec, v: &str) -> Result<u64, BackendError> {
    v.parse()
        .map_err(|_| BackendError::NotFound(format!("`{}` has no CA version `{v}`", spec.name)))
}

#[async_trait]
impl Backend for CaBackend {
    fn kind(&self) -> &'static str {
        "ca"
    }

    async fn fetch(&self, req: &FetchRequest<'_>) -> Result<Fetched, BackendError> {
        let spiffe = req.spiffe_id.ok_or_else(|| {
            BackendError::Precondition(format!(
                "`{}` issues certificates: the caller's policy rule needs a spiffe_id",
                req.spec.name
            ))
        })?;
        let o = match &req.spec.options {
            CompiledOptions::Ca(o) => o,
            other => return Err(other.mismatch(&req.spec.name, "ca")),
        };
        let (dns, ips) = (&o.dns_sans, &o.ip_sans);
        check_sans(req.sans, dns, ips).map_err(BackendError::Denied)?;
        let ttl = req.spec.ttl;
        let issued = self.authority.issue(
            spiffe,
            dns,
            ips,
            Some(ttl),
            Some(&req.session.id),
            self.clock.now(),
        )?;
        let life = issued
            .leaf
            .not_after
            .duration_since(self.clock.now())
            .unwrap_or_default();
        Ok(Fetched {
            value: pem_bundle(&issued),
            version: issued.chain.id.to_string(),
            lease: Some(BackendLease {
                id: hex::encode(&issued.leaf.serial),
                ttl: life,
                renewable: false,
            }),
        })
    }

    async fn rotate(
        &self,
        _spec: &SecretSpec,
        value: Option<SecretBytes>,
    ) -> Result<Rotated, BackendError> {
        let (id, prev) = self
            .authority
            .rotate(value.as_ref().map(|v| v.expose()), self.clock.now())?;
        Ok(Rotated {
            version: id.to_string(),
            previous_version: prev.map(|p| p.to_string()),
        })
    }

    async fn retire(&self, spec: &SecretSpec, version: &str) -> Result<(), BackendError> {
        let id = parse_version(spec, version)?;
        self.authority.retire(id, self.clock.now())
    }

    async fn current_version(&self, _spec: &SecretSpec) -> Result<Option<String>, BackendError> {
        Ok(self
            .authority
            .signer_id(self.clock.now())
            .map(|v| v.to_string()))
    }

    async fn open_session(
        &self,
        session: &SessionMeta,
    ) -> Result<Option<SessionHandle>, BackendError> {
        // A handle makes the engine call revoke_session at teardown.
        Ok(Some(SessionHandle {
            id: session.id.clone(),
            token: None,
        }))
    }

    async fn revoke_session(
        &self,
        session: &SessionMeta,
        _handle: &SessionHandle,
    ) -> Result<u32, BackendError> {
        self.authority.revoke_session(&session.id, self.clock.now())
    }

    /// A leaf's lease id is its serial: ending the lease early puts it on the deny list.
    async fn revoke_lease(
        &self,
        lease: &BackendLease,
        _handle: Option<&SessionHandle>,
    ) -> Result<(), BackendError> {
        let serial = hex::decode(&lease.id)
            .map_err(|_| BackendError::Invalid(format!("lease `{}` is not a serial", lease.id)))?;
        self.authority.revoke_serial(&serial, self.clock.now())?;
        Ok(())
    }

    async fn renew_lease(
        &self,
        _lease: &BackendLease,
        _handle: Option<&SessionHandle>,
    ) -> Result<Duration, BackendError> {
        // A certificate cannot be extended; it is replaced on expiry.
        Ok(Duration::ZERO)
    }

    async fn health(&self) -> Result<String, BackendError> {
        Ok(self.authority.health(self.clock.now()))
    }

    fn authority(&self) -> Option<Arc<Authority>> {
        Some(self.authority.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trust_domain_table() {
        for (td, ok) in [
            ("example.org", true),
            ("a-b_c.d1", true),
            ("", false),
            ("Example.org", false),
            ("ex/ample", false),
            ("spiffe://example.org", false),
            ("exa mple", false),
        ] {
            assert_eq!(valid_trust_domain(td), ok, "{td}");
        }
    }

    #[test]
    fn san_policy_checks() {
        let p = SanPolicy {
            dns: vec!["*.svc.local".into(), "localhost".into()],
            wildcards: vec!["*.apps.local".into()],
            ips: vec!["127.0.0.1".parse().unwrap()],
        };
        // A pattern never admits a wildcard name, nor a name with more labels than it has.
        for bad in [
            "*.svc.local",
            "a.b.svc.local",
            "a\0.svc.local",
            ".svc.local",
            "*.x.apps.local",
        ] {
            let e = check_sans(Some(&p), &[bad.to_string()], &[]).unwrap_err();
            assert!(e.contains("DNS SAN"), "{bad:?}: {e}");
        }
        // Wildcards only where the rule lists them, exactly.
        assert!(check_sans(Some(&p), &["*.apps.local".into()], &[]).is_ok());
        assert!(check_sans(Some(&p), &["*.APPS.local".into()], &[]).is_ok());
        let ok_dns = ["a.svc.local".to_string(), "localhost".into()];
        assert!(check_sans(Some(&p), &ok_dns, &["127.0.0.1".parse().unwrap()]).is_ok());
        let e = check_sans(Some(&p), &["evil.com".into()], &[]).unwrap_err();
        assert!(e.contains("evil.com"));
        let e = check_sans(Some(&p), &[], &["10.0.0.1".parse().unwrap()]).unwrap_err();
        assert!(e.contains("10.0.0.1"));
        assert!(check_sans(None, &["a.svc.local".into()], &[]).is_err());
    }
}
