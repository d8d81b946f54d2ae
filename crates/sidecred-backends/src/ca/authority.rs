//! The running CA: its generations (rotation with overlap), issuance, per-session serials, the deny
//! list and CRLs, and a change signal that streaming APIs follow. Locks are never held while
//! signing or across an await.

use super::crl::{self, Crl, DenyList, Revoked};
use super::error::CaError;
use super::issuer::{self, CaCert, CsrAsk, Leaf, LeafSpec};
use super::jwt::JwtKey;
use super::timing::{self, Slot};
use crate::BackendError;
use parking_lot::RwLock;
use rustls_pki_types::CertificateDer;
use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::watch;

/// How a new CA generation comes to be on rotation.
pub enum Source {
    /// A fresh root and intermediate, in memory.
    Generate { validity: Duration },
    /// Files read again (an operator replaced them), with the key-mode check.
    Files {
        cert: PathBuf,
        key: PathBuf,
        bundle: Option<PathBuf>,
    },
}

pub struct Settings {
    pub name: String,
    pub trust_domain: String,
    pub leaf_ttl: Duration,
    /// Time between a new CA entering the bundle and its first signature.
    pub stage: Duration,
    pub jwt_ttl: Duration,
    pub crl_file: Option<PathBuf>,
    pub source: Source,
    pub sds_certificate: String,
    pub sds_validation: String,
}

/// A leaf and the chain that leads to its trust anchor.
pub struct Issued {
    pub leaf: Leaf,
    /// Intermediates of the signing CA, in order (no roots).
    pub chain: Arc<CaCert>,
}

impl Issued {
    /// DER chain, leaf first: the SPIFFE `x509_svid` field.
    pub fn chain_der(&self) -> Vec<u8> {
        let mut out = self.leaf.cert.to_vec();
        for c in &self.chain.chain {
            out.extend_from_slice(c);
        }
        out
    }

    /// PEM chain, leaf first.
    pub fn chain_pem(&self) -> String {
        let mut s = issuer::pem_certs([&self.leaf.cert]);
        s.push_str(&issuer::pem_certs(&self.chain.chain));
        s
    }
}

#[derive(Default)]
struct State {
    cas: Vec<Arc<CaCert>>,
    slots: Vec<Slot>,
    next_id: u64,
    deny: DenyList,
    crls: Vec<Crl>,
    crls_at: Option<SystemTime>,
    /// Session id → serials issued to it (with issuer and expiry), for revocation.
    sessions: HashMap<String, Vec<(Vec<u8>, u64, SystemTime)>>,
}

/// What the streaming APIs serve at one moment.
#[derive(Clone)]
pub struct View {
    pub signer: u64,
    pub bundle: Vec<CertificateDer<'static>>,
    pub crls: Vec<Crl>,
    pub next_activation: Option<SystemTime>,
}

pub struct Authority {
    pub settings: Settings,
    state: RwLock<State>,
    changes: watch::Sender<u64>,
    jwt: JwtKey,
}

fn internal(e: impl std::fmt::Display) -> BackendError {
    BackendError::Internal(e.to_string())
}

fn invalid(e: CaError) -> BackendError {
    BackendError::Invalid(e.to_string())
}

impl Authority {
    pub fn new(settings: Settings, now: SystemTime) -> Result<Authority, CaError> {
        let first = Self::make_ca(&settings, 1, None, now)?;
        let mut st = State {
            next_id: 2,
            ..State::default()
        };
        st.slots.push(Slot {
            id: 1,
            added_at: now,
            activates_at: now,
            retired: false,
        });
        st.cas.push(Arc::new(first));
        let a = Authority {
            settings,
            state: RwLock::new(st),
            changes: watch::channel(0).0,
            jwt: JwtKey::generate()?,
        };
        a.publish_crls(now).map_err(CaError::Publish)?;
        Ok(a)
    }

    fn make_ca(
        s: &Settings,
        id: u64,
        pem: Option<&[u8]>,
        now: SystemTime,
    ) -> Result<CaCert, CaError> {
        if let Some(p) = pem {
            // An operator-supplied CA: certificates and key in one PEM document.
            return issuer::from_pem(id, p, p, None);
        }
        match &s.source {
            Source::Generate { validity } => issuer::generate(id, &s.trust_domain, now, *validity),
            Source::Files { cert, key, bundle } => issuer::load(id, cert, key, bundle.as_deref()),
        }
    }

    /// Signals a change to every stream.
    fn bump(&self) {
        self.changes.send_modify(|g| *g += 1);
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    pub fn trust_domain_id(&self) -> String {
        format!("spiffe://{}", self.settings.trust_domain)
    }

    fn signer_ca(&self, now: SystemTime) -> Result<Arc<CaCert>, BackendError> {
        let st = self.state.read();
        let id = timing::signer(&st.slots, now)
            .ok_or_else(|| BackendError::Unavailable(format!("{}: no CA", self.settings.name)))?;
        st.cas
            .iter()
            .find(|c| c.id == id)
            .cloned()
            .ok_or_else(|| internal("signer CA missing"))
    }

    pub fn signer_id(&self, now: SystemTime) -> Option<u64> {
        timing::signer(&self.state.read().slots, now)
    }

    fn record(&self, session: Option<&str>, leaf: &Leaf) {
        if let Some(s) = session {
            self.state
                .write()
                .sessions
                .entry(s.to_string())
                .or_default()
                .push((leaf.serial.clone(), leaf.ca_id, leaf.not_after));
        }
    }

    fn spec_times(&self, ca: &CaCert, ttl: Option<Duration>, now: SystemTime) -> SystemTime {
        let ttl = ttl
            .unwrap_or(self.settings.leaf_ttl)
            .min(self.settings.leaf_ttl);
        timing::leaf_not_after(now, ttl, ca.not_after)
    }

    /// Mints a leaf with a sidecred-generated key for `spiffe_id`; SANs were checked by the caller.
    pub fn issue(
        &self,
        spiffe_id: &str,
        dns: &[String],
        ips: &[IpAddr],
        ttl: Option<Duration>,
        session: Option<&str>,
        now: SystemTime,
    ) -> Result<Issued, BackendError> {
        let ca = self.signer_ca(now)?;
        let spec = LeafSpec {
            spiffe_id,
            dns,
            ips,
            now,
            not_after: self.spec_times(&ca, ttl, now),
        };
        let leaf = issuer::issue(&ca, &spec).map_err(invalid)?;
        self.record(session, &leaf);
        Ok(Issued { leaf, chain: ca })
    }

    /// Signs a parsed CSR; the caller has checked its SANs against policy.
    pub fn sign_csr(
        &self,
        ask: &CsrAsk,
        spiffe_id: &str,
        ttl: Option<Duration>,
        session: Option<&str>,
        now: SystemTime,
    ) -> Result<Issued, BackendError> {
        let ca = self.signer_ca(now)?;
        let spec = LeafSpec {
            spiffe_id,
            dns: &ask.dns,
            ips: &ask.ips,
            now,
            not_after: self.spec_times(&ca, ttl, now),
        };
        let leaf = issuer::sign_csr(&ca, ask, &spec).map_err(invalid)?;
        self.record(session, &leaf);
        Ok(Issued { leaf, chain: ca })
    }

    /// The trust bundle, the current CRLs and when the signer next changes on its own.
    pub fn view(&self, now: SystemTime) -> View {
        let st = self.state.read();
        let trusted = timing::trusted(&st.slots);
        let bundle = st
            .cas
            .iter()
            .filter(|c| trusted.contains(&c.id))
            .flat_map(|c| c.roots.iter().cloned())
            .collect();
        View {
            signer: timing::signer(&st.slots, now).unwrap_or(0),
            bundle,
            crls: st.crls.clone(),
            next_activation: timing::next_activation(&st.slots, now),
        }
    }

    pub fn is_revoked(&self, serial: &[u8]) -> bool {
        self.state.read().deny.contains(serial)
    }

    /// Starts a rotation: the new CA joins the bundle now and signs from `now + stage`.
    pub fn rotate(
        &self,
        pem: Option<&[u8]>,
        now: SystemTime,
    ) -> Result<(u64, Option<u64>), BackendError> {
        let id = self.state.read().next_id;
        let ca = Self::make_ca(&self.settings, id, pem, now).map_err(invalid)?;
        let prev = {
            let mut st = self.state.write();
            let prev = timing::signer(&st.slots, now);
            st.next_id = st.next_id.max(id + 1);
            st.cas.push(Arc::new(ca));
            st.slots.push(Slot {
                id,
                added_at: now,
                activates_at: now + self.settings.stage,
                retired: false,
            });
            prev
        };
        tracing::info!(ca = %self.settings.name, new = id, previous = ?prev, stage = ?self.settings.stage, "CA rotation: new CA added to the trust bundle");
        self.publish_crls(now)?;
        self.bump();
        Ok((id, prev))
    }

    /// Ends a generation's grace window: it leaves the bundle.
    pub fn retire(&self, id: u64, now: SystemTime) -> Result<(), BackendError> {
        {
            let mut st = self.state.write();
            let Some(s) = st.slots.iter_mut().find(|s| s.id == id) else {
                return Ok(());
            };
            s.retired = true;
            st.cas.retain(|c| c.id != id);
            st.slots.retain(|s| !s.retired);
        }
        tracing::info!(ca = %self.settings.name, retired = id, "CA rotation: old CA left the trust bundle");
        self.publish_crls(now)?;
        self.bump();
        Ok(())
    }

    /// Puts every certificate issued to a session on the deny list; returns how many.
    pub fn revoke_session(&self, session: &str, now: SystemTime) -> Result<u32, BackendError> {
        let n = {
            let mut st = self.state.write();
            let issued = st.sessions.remove(session).unwrap_or_default();
            let mut n = 0;
            for (serial, ca_id, not_after) in issued {
                if not_after > now {
                    st.deny.add(
                        serial,
                        Revoked {
                            ca_id,
                            revoked_at: now,
                            not_after,
                        },
                    );
                    n += 1;
                }
            }
            n
        };
        if n > 0 {
            self.publish_crls(now)?;
            self.bump();
        }
        Ok(n)
    }

    /// Puts one issued certificate on the deny list: a leaf whose session ended while it was
    /// being issued. Returns whether it was still live.
    pub fn revoke_serial(&self, serial: &[u8], now: SystemTime) -> Result<bool, BackendError> {
        let found = {
            let mut st = self.state.write();
            let mut hit = None;
            for issued in st.sessions.values_mut() {
                if let Some(i) = issued.iter().position(|(s, _, _)| s.as_slice() == serial) {
                    hit = Some(issued.swap_remove(i));
                    break;
                }
            }
            st.sessions.retain(|_, v| !v.is_empty());
            match hit {
                Some((serial, ca_id, not_after)) if not_after > now => {
                    st.deny.add(
                        serial,
                        Revoked {
                            ca_id,
                            revoked_at: now,
                            not_after,
                        },
                    );
                    true
                }
                _ => false,
            }
        };
        if found {
            self.publish_crls(now)?;
            self.bump();
        }
        Ok(found)
    }

    /// Signs fresh CRLs for every trusted CA and writes the CRL file.
    fn publish_crls(&self, now: SystemTime) -> Result<(), BackendError> {
        let (cas, crls) = {
            let mut st = self.state.write();
            st.deny.prune(now);
            let crls: Result<Vec<Crl>, CaError> = st
                .cas
                .iter()
                .map(|c| crl::build(c, &st.deny, now))
                .collect();
            let crls = crls.map_err(internal)?;
            st.crls = crls.clone();
            st.crls_at = Some(now);
            (st.cas.len(), crls)
        };
        if let Some(path) = &self.settings.crl_file {
            let text: String = crls.iter().map(|c| c.pem.as_str()).collect();
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, text)
                .and_then(|_| std::fs::rename(&tmp, path))
                .map_err(|e| internal(format!("crl_file `{}`: {e}", path.display())))?;
        }
        tracing::debug!(ca = %self.settings.name, cas, "CRLs published");
        Ok(())
    }

    /// The current CRLs and revoked serials; re-signed when half their validity has passed.
    pub fn crls(&self, now: SystemTime) -> Result<(Vec<Crl>, Vec<String>), BackendError> {
        let stale = self
            .state
            .read()
            .crls_at
            .is_none_or(|at| at + crl::CRL_VALIDITY / 2 <= now);
        if stale {
            self.publish_crls(now)?;
        }
        let st = self.state.read();
        Ok((st.crls.clone(), st.deny.serials_hex()))
    }

    pub fn jwt_mint(
        &self,
        sub: &str,
        audience: &[String],
        now: SystemTime,
    ) -> Result<(String, SystemTime), BackendError> {
        self.jwt
            .mint(sub, audience, now, self.settings.jwt_ttl)
            .map_err(internal)
    }

    pub fn jwt_validate(
        &self,
        token: &str,
        audience: &str,
        now: SystemTime,
    ) -> Result<super::jwt::Validated, super::jwt::JwtError> {
        self.jwt.validate(token, audience, now)
    }

    /// The JWKS of the trust domain.
    pub fn jwks(&self) -> Vec<u8> {
        serde_json::json!({ "keys": [self.jwt.jwk()] })
            .to_string()
            .into_bytes()
    }

    /// One line for `status`.
    pub fn health(&self, now: SystemTime) -> String {
        let st = self.state.read();
        format!(
            "trust domain {}, signer CA {}, trusted CAs {:?}, {} revoked, {} sessions with certificates",
            self.settings.trust_domain,
            timing::signer(&st.slots, now).unwrap_or(0),
            timing::trusted(&st.slots),
            st.deny.len(),
            st.sessions.len()
        )
    }
}
