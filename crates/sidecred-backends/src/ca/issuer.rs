//! CA material and certificate minting: a CA generated in memory (dev) or loaded from files,
//! ECDSA P-256 leaves whose keys never leave sidecred, and CSR signing under policy.

use super::error::CaError;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
    PKCS_ECDSA_P256_SHA256,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sidecred_secret::SecretBytes;
use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use time::OffsetDateTime;

/// Clock skew allowance: leaves are valid from slightly before they are minted.
pub const BACKDATE: Duration = Duration::from_secs(30);

/// One CA generation: the key that signs, the chain above it and the roots to trust.
pub struct CaCert {
    pub id: u64,
    pub issuer: Issuer<'static, KeyPair>,
    /// The signing CA first, then any intermediates above it (no self-signed roots).
    pub chain: Vec<CertificateDer<'static>>,
    pub roots: Vec<CertificateDer<'static>>,
    pub not_after: SystemTime,
}

/// A freshly minted certificate.
pub struct Leaf {
    pub serial: Vec<u8>,
    pub ca_id: u64,
    pub cert: CertificateDer<'static>,
    /// PKCS#8 DER; empty for CSR-signed leaves (the caller holds the key).
    pub key: SecretBytes,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

/// What goes into a leaf besides its key.
pub struct LeafSpec<'a> {
    pub spiffe_id: &'a str,
    pub dns: &'a [String],
    pub ips: &'a [IpAddr],
    pub now: SystemTime,
    pub not_after: SystemTime,
}

fn odt(t: SystemTime) -> OffsetDateTime {
    OffsetDateTime::from(t)
}

fn to_system(secs: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs.max(0) as u64)
}

fn random_serial() -> Vec<u8> {
    let mut s: [u8; 16] = rand::random();
    s[0] = (s[0] & 0x7f) | 0x40; // positive, fixed length
    s.to_vec()
}

fn p256() -> Result<KeyPair, CaError> {
    KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(CaError::KeyGeneration)
}

fn dn(cn: &str) -> DistinguishedName {
    let mut d = DistinguishedName::new();
    d.push(DnType::OrganizationName, "sidecred");
    if !cn.is_empty() {
        d.push(DnType::CommonName, cn);
    }
    d
}

fn ca_params(
    cn: &str,
    trust_domain: &str,
    now: SystemTime,
    not_after: SystemTime,
    path_len: Option<u8>,
) -> Result<CertificateParams, CaError> {
    let mut p = CertificateParams::default();
    p.distinguished_name = dn(cn);
    p.is_ca = IsCa::Ca(match path_len {
        Some(n) => BasicConstraints::Constrained(n),
        None => BasicConstraints::Unconstrained,
    });
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let uri = format!("spiffe://{trust_domain}");
    p.subject_alt_names = vec![SanType::URI(uri.try_into().map_err(CaError::TrustDomain)?)];
    p.not_before = odt(now - BACKDATE);
    p.not_after = odt(not_after);
    p.serial_number = Some(SerialNumber::from_slice(&random_serial()));
    p.use_authority_key_identifier_extension = path_len.is_some();
    Ok(p)
}

/// A new root and an intermediate under it, in memory only: the dev CA and every generated rotation.
pub fn generate(
    id: u64,
    trust_domain: &str,
    now: SystemTime,
    validity: Duration,
) -> Result<CaCert, CaError> {
    let root_key = p256()?;
    let root_params = ca_params(
        &format!("sidecred root CA {id}"),
        trust_domain,
        now,
        now + validity,
        None,
    )?;
    let root = root_params
        .self_signed(&root_key)
        .map_err(|source| CaError::SignCa {
            which: "root",
            source,
        })?;
    let root_issuer = Issuer::new(root_params, root_key);
    let int_key = p256()?;
    // The intermediate expires first so leaves never outlive their chain.
    let int_after = now + validity.mul_f64(0.9);
    let int_params = ca_params(
        &format!("sidecred intermediate CA {id}"),
        trust_domain,
        now,
        int_after,
        Some(0),
    )?;
    let int = int_params
        .signed_by(&int_key, &root_issuer)
        .map_err(|source| CaError::SignCa {
            which: "intermediate",
            source,
        })?;
    Ok(CaCert {
        id,
        issuer: Issuer::new(int_params, int_key),
        chain: vec![int.der().clone()],
        roots: vec![root.der().clone()],
        not_after: int_after,
    })
}

/// Refuses a key file that anyone but its owner may read or write.
pub fn check_key_mode(path: &Path) -> Result<(), sidecred_core::fileperm::FileModeError> {
    sidecred_core::fileperm::check_private(path, "key_file", "a CA key")
}

fn is_self_signed(der: &CertificateDer<'_>) -> Result<bool, CaError> {
    let (_, c) = x509_parser::parse_x509_certificate(der).map_err(CaError::Parse)?;
    Ok(c.subject().as_raw() == c.issuer().as_raw())
}

fn not_after_of(der: &CertificateDer<'_>) -> Result<SystemTime, CaError> {
    let (_, c) = x509_parser::parse_x509_certificate(der).map_err(CaError::Parse)?;
    if !c.is_ca() {
        return Err(CaError::NotCa);
    }
    Ok(to_system(c.validity().not_after.timestamp()))
}

/// A CA from PEM text: its certificate first (then its chain), its key, and optional trust anchors.
/// Without anchors, the self-signed certificates of the chain are the anchors.
pub fn from_pem(
    id: u64,
    certs_pem: &[u8],
    key_pem: &[u8],
    bundle_pem: Option<&[u8]>,
) -> Result<CaCert, CaError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(certs_pem)
        .collect::<Result<_, _>>()
        .map_err(|source| CaError::Pem {
            what: "certificates",
            source,
        })?;
    let first = certs.first().ok_or(CaError::NoCertificate)?.clone();
    // The PEM error of a key section is not kept: it could quote key bytes.
    let key_der = PrivateKeyDer::from_pem_slice(key_pem).map_err(|_| CaError::NoKey)?;
    let key = KeyPair::try_from(&key_der).map_err(CaError::Key)?;
    let issuer = Issuer::from_ca_cert_der(&first, key).map_err(CaError::CaCertificate)?;
    let not_after = not_after_of(&first)?;
    let mut chain = Vec::new();
    let mut roots = Vec::new();
    for c in certs {
        if is_self_signed(&c)? {
            roots.push(c);
        } else {
            chain.push(c);
        }
    }
    if let Some(b) = bundle_pem {
        roots = CertificateDer::pem_slice_iter(b)
            .collect::<Result<_, _>>()
            .map_err(|source| CaError::Pem {
                what: "bundle",
                source,
            })?;
    }
    if roots.is_empty() {
        return Err(CaError::NoTrustAnchor);
    }
    if chain.is_empty() {
        // A self-signed CA signs leaves directly; its certificate is both chain and root.
        chain.push(first);
    }
    Ok(CaCert {
        id,
        issuer,
        chain,
        roots,
        not_after,
    })
}

/// Loads a CA from files, refusing a key others can read.
pub fn load(
    id: u64,
    cert_file: &Path,
    key_file: &Path,
    bundle_file: Option<&Path>,
) -> Result<CaCert, CaError> {
    check_key_mode(key_file)?;
    let read = |p: &Path| {
        std::fs::read(p).map_err(|source| CaError::Read {
            path: p.to_path_buf(),
            source,
        })
    };
    let certs = read(cert_file)?;
    let key = SecretBytes::new(read(key_file)?);
    let bundle = bundle_file.map(read).transpose()?;
    from_pem(id, &certs, key.expose(), bundle.as_deref())
}

fn leaf_params(ca: &CaCert, spec: &LeafSpec<'_>) -> Result<CertificateParams, CaError> {
    if spec.not_after > ca.not_after {
        return Err(CaError::OutlivesIssuer);
    }
    let mut p = CertificateParams::default();
    p.distinguished_name = dn("");
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyAgreement,
    ];
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let mut sans = vec![SanType::URI(
        spec.spiffe_id
            .to_string()
            .try_into()
            .map_err(CaError::SpiffeId)?,
    )];
    for d in spec.dns {
        sans.push(SanType::DnsName(
            d.clone().try_into().map_err(CaError::DnsSan)?,
        ));
    }
    sans.extend(spec.ips.iter().map(|ip| SanType::IpAddress(*ip)));
    p.subject_alt_names = sans;
    p.not_before = odt(spec.now - BACKDATE);
    p.not_after = odt(spec.not_after);
    p.use_authority_key_identifier_extension = true;
    Ok(p)
}

/// Mints a leaf with a new P-256 key.
pub fn issue(ca: &CaCert, spec: &LeafSpec<'_>) -> Result<Leaf, CaError> {
    let mut p = leaf_params(ca, spec)?;
    let serial = random_serial();
    p.serial_number = Some(SerialNumber::from_slice(&serial));
    let key = p256()?;
    let cert = p.signed_by(&key, &ca.issuer).map_err(CaError::SignLeaf)?;
    Ok(Leaf {
        serial,
        ca_id: ca.id,
        cert: cert.der().clone(),
        key: SecretBytes::new(key.serialize_der()),
        not_before: spec.now - BACKDATE,
        not_after: spec.not_after,
    })
}

/// What a CSR asks for, parsed and signature-checked.
pub struct CsrAsk {
    pub csr: CertificateSigningRequestParams,
    pub uris: Vec<String>,
    pub dns: Vec<String>,
    pub ips: Vec<IpAddr>,
}

/// Parses a PEM CSR; refuses CA requests and SAN kinds a workload certificate never carries.
pub fn parse_csr(pem: &str) -> Result<CsrAsk, String> {
    let csr = CertificateSigningRequestParams::from_pem(pem).map_err(|e| format!("csr: {e}"))?;
    if matches!(csr.params.is_ca, IsCa::Ca(_)) {
        return Err("csr asks for a CA certificate (basicConstraints CA:true); refused".into());
    }
    let (mut uris, mut dns, mut ips) = (Vec::new(), Vec::new(), Vec::new());
    for san in &csr.params.subject_alt_names {
        match san {
            SanType::URI(u) => uris.push(u.as_str().to_string()),
            SanType::DnsName(d) => dns.push(d.as_str().to_string()),
            SanType::IpAddress(ip) => ips.push(*ip),
            _ => return Err("csr asks for a SAN type other than URI, DNS or IP; refused".into()),
        }
    }
    Ok(CsrAsk {
        csr,
        uris,
        dns,
        ips,
    })
}

/// Signs a CSR whose SANs the caller already checked; the CA sets everything else.
pub fn sign_csr(ca: &CaCert, ask: &CsrAsk, spec: &LeafSpec<'_>) -> Result<Leaf, CaError> {
    let mut p = leaf_params(ca, spec)?;
    let serial = random_serial();
    p.serial_number = Some(SerialNumber::from_slice(&serial));
    let cert = p
        .signed_by(&ask.csr.public_key, &ca.issuer)
        .map_err(CaError::SignLeaf)?;
    Ok(Leaf {
        serial,
        ca_id: ca.id,
        cert: cert.der().clone(),
        key: SecretBytes::new(Vec::new()),
        not_before: spec.now - BACKDATE,
        not_after: spec.not_after,
    })
}

/// PEM text of DER certificates.
pub fn pem_certs<'a>(certs: impl IntoIterator<Item = &'a CertificateDer<'a>>) -> String {
    let mut out = String::new();
    for c in certs {
        out.push_str(&pem_block("CERTIFICATE", c.as_ref()));
    }
    out
}

/// One PEM block, 64-column base64, built in a buffer sized up front; the intermediate
/// base64 text is wiped (it may encode a private key).
pub fn pem_block(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    use zeroize::Zeroize;
    let mut b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let lines = b64.len().div_ceil(64);
    let mut out = String::with_capacity(b64.len() + lines + 2 * label.len() + 32);
    out.push_str("-----BEGIN ");
    out.push_str(label);
    out.push_str("-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END ");
    out.push_str(label);
    out.push_str("-----\n");
    b64.zeroize();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn generated_ca_issues_a_leaf_and_round_trips_through_pem() {
        let now = SystemTime::now();
        let ca = generate(1, "example.org", now, Duration::from_secs(3600)).unwrap();
        let spec = LeafSpec {
            spiffe_id: "spiffe://example.org/a",
            dns: &["a.local".into()],
            ips: &["127.0.0.1".parse().unwrap()],
            now,
            not_after: now + Duration::from_secs(60),
        };
        let leaf = issue(&ca, &spec).unwrap();
        let (_, c) = x509_parser::parse_x509_certificate(&leaf.cert).unwrap();
        assert!(!c.is_ca());
        let san = c.subject_alternative_name().unwrap().unwrap();
        assert_eq!(san.value.general_names.len(), 3);
        let too_long = LeafSpec {
            not_after: now + Duration::from_secs(7200),
            ..spec
        };
        assert!(issue(&ca, &too_long).is_err());
    }

    #[test]
    fn csr_for_a_ca_is_refused() {
        let key = p256().unwrap();
        let mut p = CertificateParams::new(vec!["x.local".to_string()]).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let csr = p.serialize_request(&key).unwrap().pem().unwrap();
        let err = parse_csr(&csr).err().expect("refused");
        assert!(err.contains("CA:true"), "{err}");
    }

    #[test]
    fn world_readable_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("k.pem");
        std::fs::write(&f, "x").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(check_key_mode(&f).unwrap_err().to_string().contains("0644"));
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(check_key_mode(&f).is_ok());
    }
}
