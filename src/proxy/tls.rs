//! TLS on both sides of the proxy. Towards the agent: a leaf for the destination host, minted
//! by sidecred's CA code (backend/ca/issuer.rs) under the proxy's own CA (loaded from files or
//! generated in memory at start), cached per host until close to expiry. Towards the origin:
//! rustls with the system roots or a configured bundle, SNI and verification always on, and
//! optionally a client certificate (mTLS) taken from a CA-backed secret.

use crate::backend::ca::issuer::{self, CaCert, LeafSpec};
use parking_lot::Mutex;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

const LEAF_TTL: Duration = Duration::from_secs(24 * 3600);

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// The proxy's CA: signs one leaf per destination host.
pub struct Mitm {
    ca: CaCert,
    leaves: Mutex<HashMap<String, (SystemTime, Arc<rustls::ServerConfig>)>>,
}

impl Mitm {
    pub fn new(files: Option<(&Path, &Path)>) -> Result<Mitm, String> {
        let now = SystemTime::now();
        let ca = match files {
            Some((c, k)) => issuer::load(1, c, k, None).map_err(|e| format!("proxy CA: {e}"))?,
            None => issuer::generate(1, "sidecred.proxy", now, Duration::from_secs(365 * 86400))
                .map_err(|e| format!("proxy CA: {e}"))?,
        };
        Ok(Mitm {
            ca,
            leaves: Mutex::new(HashMap::new()),
        })
    }

    /// The trust anchors agents need (PEM): what `SSL_CERT_FILE` points at.
    pub fn bundle_pem(&self) -> String {
        issuer::pem_certs(self.ca.roots.iter())
    }

    /// A server config presenting a leaf for `host` (a name or an IP address).
    pub fn server_config(&self, host: &str) -> Result<Arc<rustls::ServerConfig>, String> {
        let now = SystemTime::now();
        if let Some((until, c)) = self.leaves.lock().get(host) {
            if *until > now + Duration::from_secs(3600) {
                return Ok(c.clone());
            }
        }
        let (dns, ips): (Vec<String>, Vec<IpAddr>) = match host.parse::<IpAddr>() {
            Ok(ip) => (vec![], vec![ip]),
            Err(_) => (vec![host.to_string()], vec![]),
        };
        let not_after = (now + LEAF_TTL).min(self.ca.not_after);
        let leaf = issuer::issue(
            &self.ca,
            &LeafSpec {
                spiffe_id: "spiffe://sidecred.proxy/destination",
                dns: &dns,
                ips: &ips,
                now,
                not_after,
            },
        )
        .map_err(|e| format!("cannot mint a certificate for {host}: {e}"))?;
        let mut chain = vec![leaf.cert.clone()];
        chain.extend(self.ca.chain.iter().cloned());
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf.key.expose().to_vec()));
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|e| format!("leaf for {host}: {e}"))?;
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        let cfg = Arc::new(cfg);
        let mut leaves = self.leaves.lock();
        if leaves.len() >= 4096 {
            leaves.clear();
        }
        leaves.insert(host.to_string(), (not_after, cfg.clone()));
        Ok(cfg)
    }
}

/// Roots for upstream TLS: the configured bundle, else the system's.
pub fn roots(bundle: Option<&Path>) -> Result<Arc<rustls::RootCertStore>, String> {
    let mut store = rustls::RootCertStore::empty();
    match bundle {
        Some(p) => {
            let certs = CertificateDer::pem_file_iter(p)
                .and_then(|i| i.collect::<Result<Vec<_>, _>>())
                .map_err(|e| format!("proxy.upstream_ca_file {}: {e}", p.display()))?;
            let (ok, _) = store.add_parsable_certificates(certs);
            if ok == 0 {
                return Err(format!(
                    "proxy.upstream_ca_file {}: no certificate",
                    p.display()
                ));
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            store.add_parsable_certificates(found.certs);
        }
    }
    Ok(Arc::new(store))
}

/// A client config verifying the origin against `roots`; with `client`, presenting that
/// certificate chain and key (a CA-backed secret's PEM bundle).
pub fn client_config(
    roots: Arc<rustls::RootCertStore>,
    client: Option<&[u8]>,
) -> Result<Arc<rustls::ClientConfig>, String> {
    let b = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    let mut cfg = match client {
        None => b.with_no_client_auth(),
        Some(pem) => {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem)
                .collect::<Result<_, _>>()
                .map_err(|_| {
                    "the client certificate secret holds no PEM certificate".to_string()
                })?;
            // The PEM error is not kept: it could quote key bytes.
            let key = PrivateKeyDer::from_pem_slice(pem)
                .map_err(|_| "the client certificate secret holds no private key".to_string())?;
            b.with_client_auth_cert(certs, key)
                .map_err(|e| format!("client certificate: {e}"))?
        }
    };
    // HTTP/2 where the origin speaks it, else HTTP/1.1.
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}
