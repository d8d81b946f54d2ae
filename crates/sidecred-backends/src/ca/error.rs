//! Why CA material cannot be made, loaded or used. Messages name files and settings, never key
//! material; each variant keeps the error underneath as its source.

use std::path::PathBuf;

type X509Error = x509_parser::nom::Err<x509_parser::error::X509Error>;

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("key generation: {0}")]
    KeyGeneration(#[source] rcgen::Error),
    #[error("trust domain: {0}")]
    TrustDomain(#[source] rcgen::Error),
    /// Signing a CA certificate (`which`: root or intermediate) failed.
    #[error("{which} CA: {source}")]
    SignCa {
        which: &'static str,
        source: rcgen::Error,
    },
    #[error("signing: {0}")]
    SignLeaf(#[source] rcgen::Error),
    #[error("signing CRL: {0}")]
    SignCrl(#[source] rcgen::Error),
    #[error("spiffe_id: {0}")]
    SpiffeId(#[source] rcgen::Error),
    #[error("dns san: {0}")]
    DnsSan(#[source] rcgen::Error),
    #[error("leaf would outlive its issuer")]
    OutlivesIssuer,
    /// A PEM section (`what`: certificates or bundle) that does not parse.
    #[error("{what}: {source}")]
    Pem {
        what: &'static str,
        source: rustls_pki_types::pem::Error,
    },
    #[error("no CERTIFICATE block found")]
    NoCertificate,
    #[error("no usable PRIVATE KEY block found")]
    NoKey,
    #[error("private key: {0}")]
    Key(#[source] rcgen::Error),
    #[error("CA certificate: {0}")]
    CaCertificate(#[source] rcgen::Error),
    #[error("cannot parse certificate: {0}")]
    Parse(#[source] X509Error),
    #[error("certificate is not a CA (basicConstraints CA:false or missing)")]
    NotCa,
    #[error("no trust anchor: add the root to cert_file or set bundle_file")]
    NoTrustAnchor,
    #[error(transparent)]
    KeyMode(#[from] sidecred_core::fileperm::FileModeError),
    #[error("`{}`: {source}", .path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Jwt(#[from] super::jwt::JwtError),
    /// The first CRLs could not be signed or written.
    #[error("{0}")]
    Publish(#[source] crate::BackendError),
}
