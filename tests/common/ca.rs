//! Helpers for the internal CA's tests: a sidecar with a dev CA and a SPIFFE socket, a raw
//! Workload API client, and openssl runs.
#![allow(dead_code)]

use super::{uds_channel, Sidecar};
use sidecred::api::spiffe_pb::{self as wpb, spiffe_workload_api_client::SpiffeWorkloadApiClient};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

pub const TD: &str = "test.example";
pub const ROOT_ID: &str = "spiffe://test.example/root-caller";

/// Config body: a generated CA, a session-scoped cert secret, and root's rule with its SPIFFE ID.
pub fn ca_body(ca_extra: &str, rule_extra: &str) -> String {
    format!(
        r#"
[backends.ca]
kind = "ca"
generate = true
trust_domain = "{TD}"
{ca_extra}

[[secret]]
name = "mtls/router"
backend = "ca"
path = "router"
zone = "internal"
scope = "session"
ttl = "10m"
grace = "60s"

[[secret]]
name = "mtls/web"
backend = "ca"
path = "web"
zone = "internal"
scope = "session"
options = {{ dns_sans = ["localhost"], ip_sans = ["127.0.0.1"] }}

[[policy.workload]]
name = "root-callers"
uids = [0]
secrets = ["*"]
spiffe_id = "{ROOT_ID}"
dns_sans = ["localhost", "*.svc.local"]
ip_sans = ["127.0.0.1"]
{rule_extra}

[[policy.admin]]
name = "root-admin"
uids = [0]
actions = ["*"]
"#
    )
}

/// A running sidecar with a SPIFFE socket.
pub struct CaSidecar {
    pub sc: Sidecar,
    pub spiffe: PathBuf,
    pub crl_file: PathBuf,
    _dir: tempfile::TempDir,
}

pub fn start(ca_extra: &str, rule_extra: &str) -> CaSidecar {
    start_logged(ca_extra, rule_extra, "debug")
}

/// Like [`start`], at a given log level (`trace` for canary tests).
pub fn start_logged(ca_extra: &str, rule_extra: &str, level: &str) -> CaSidecar {
    let dir = tempfile::tempdir().unwrap();
    let spiffe = dir.path().join("spiffe/agent.sock");
    let crl_file = dir.path().join("ca.crl.pem");
    let ca_extra = format!("crl_file = \"{}\"\n{ca_extra}", crl_file.display());
    let sc = Sidecar::builder(&ca_body(&ca_extra, rule_extra))
        .server(&format!("spiffe_socket = \"{}\"", spiffe.display()))
        .log(level)
        .start();
    assert!(
        // The file appears at bind(), a moment before listen(): wait for a connection.
        super::wait_for(Duration::from_secs(10), || {
            std::os::unix::net::UnixStream::connect(&spiffe).ok()
        })
        .is_some(),
        "SPIFFE socket does not accept connections"
    );
    CaSidecar {
        sc,
        spiffe,
        crl_file,
        _dir: dir,
    }
}

fn add_header(mut r: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
    r.metadata_mut()
        .insert("workload.spiffe.io", "true".parse().unwrap());
    Ok(r)
}

pub type Spiffe = SpiffeWorkloadApiClient<
    InterceptedService<
        Channel,
        fn(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status>,
    >,
>;

/// A generated-code Workload API client that sends the security header.
pub async fn spiffe_client(sock: &Path) -> Spiffe {
    let f: fn(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> = add_header;
    SpiffeWorkloadApiClient::with_interceptor(uds_channel(sock).await, f)
}

/// The first X.509-SVID response of a fresh stream.
pub async fn first_svid(sock: &Path) -> wpb::X509svidResponse {
    let mut c = spiffe_client(sock).await;
    let mut s = c
        .fetch_x509svid(wpb::X509svidRequest {})
        .await
        .unwrap()
        .into_inner();
    tokio::time::timeout(Duration::from_secs(10), s.message())
        .await
        .expect("an SVID within 10s")
        .unwrap()
        .expect("stream has a message")
}

/// Splits concatenated DER certificates.
pub fn split_der(mut der: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while !der.is_empty() {
        let (rest, _) = x509_parser::parse_x509_certificate(der).expect("DER certificate");
        out.push(der[..der.len() - rest.len()].to_vec());
        der = rest;
    }
    out
}

pub fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b = base64::engine::general_purpose::STANDARD.encode(der);
    let body: Vec<&str> = b
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        body.join("\n")
    )
}

pub fn pem_all(ders: &[Vec<u8>]) -> String {
    ders.iter().map(|d| pem("CERTIFICATE", d)).collect()
}

/// PEM blocks of one label from a PEM document, in order.
pub fn pem_blocks(text: &str, label: &str) -> Vec<String> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(a) = rest.find(&begin) {
        let b = rest[a..].find(&end).expect("PEM end") + a + end.len();
        out.push(format!("{}\n", &rest[a..b]));
        rest = &rest[b..];
    }
    out
}

/// The URI SANs of a DER certificate.
pub fn uri_sans(der: &[u8]) -> Vec<String> {
    let (_, c) = x509_parser::parse_x509_certificate(der).unwrap();
    let mut out = Vec::new();
    if let Ok(Some(san)) = c.subject_alternative_name() {
        for n in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::URI(u) = n {
                out.push(u.to_string());
            }
        }
    }
    out
}

pub fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

pub fn openssl(args: &[&str]) -> Output {
    Command::new("openssl")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("openssl is installed")
}

/// `openssl verify` of a leaf against a bundle, with the chain as untrusted intermediates.
pub fn verify(bundle: &Path, chain: &Path, leaf: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "verify".to_string(),
        "-CAfile".into(),
        bundle.display().to_string(),
        "-untrusted".into(),
        chain.display().to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    args.push(leaf.display().to_string());
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    openssl(&a)
}

/// Opens a session with the server's defaults; its id.
pub async fn session(b: &mut sidecred::api::pb::broker_client::BrokerClient<Channel>) -> String {
    b.open_session(sidecred::api::pb::OpenSessionRequest::default())
        .await
        .unwrap()
        .into_inner()
        .session_id
}
