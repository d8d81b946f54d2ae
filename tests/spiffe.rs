//! The SPIFFE Workload API against real clients: py-spiffe and the rust `spiffe` crate fetch
//! X.509-SVIDs whose chains verify against the fetched bundle; JWT-SVIDs round-trip through
//! ValidateJWTSVID; streams renew before expiry; the security header is enforced.

mod common;

use common::ca::*;
use sidecred::api::spiffe_pb as wpb;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn python() -> String {
    std::env::var("SIDECRED_PYTHON").expect("SIDECRED_PYTHON must point at the peers venv python")
}

#[tokio::test(flavor = "multi_thread")]
async fn py_spiffe_x509_source_fetches_a_verifiable_svid() {
    let ca = start("", "");
    let out = tempfile::tempdir().unwrap();
    let script = format!(
        r#"
from cryptography.hazmat.primitives import serialization
from spiffe import X509Source, TrustDomain
src = X509Source(timeout_in_seconds=10)
svid = src.svid
print("ID", svid.spiffe_id)
svid.save("{o}/chain.pem", "{o}/key.pem", serialization.Encoding.PEM)
src.get_bundle_for_trust_domain(TrustDomain("{TD}")).save("{o}/bundle.pem", serialization.Encoding.PEM)
src.close()
"#,
        o = out.path().display()
    );
    let o = std::process::Command::new(python())
        .args(["-c", &script])
        .env(
            "SPIFFE_ENDPOINT_SOCKET",
            format!("unix://{}", ca.spiffe.display()),
        )
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "py-spiffe failed: {stdout}\n{}\n{}",
        String::from_utf8_lossy(&o.stderr),
        ca.sc.logs()
    );
    assert!(stdout.contains(&format!("ID {ROOT_ID}")), "{stdout}");
    let chain = std::fs::read_to_string(out.path().join("chain.pem")).unwrap();
    let certs = pem_blocks(&chain, "CERTIFICATE");
    assert_eq!(certs.len(), 2, "leaf and intermediate");
    let leaf = write(out.path(), "leaf.pem", &certs[0]);
    let int = write(out.path(), "int.pem", &certs[1]);
    let v = verify(&out.path().join("bundle.pem"), &int, &leaf, &[]);
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stderr));
}

#[tokio::test(flavor = "multi_thread")]
async fn rust_spiffe_crate_fetches_svid_and_round_trips_a_jwt() {
    let ca = start("", "");
    let endpoint = format!("unix://{}", ca.spiffe.display());
    let source = spiffe::X509Source::builder()
        .endpoint(&endpoint)
        .build()
        .await
        .expect("X509Source starts");
    let svid = source.svid().unwrap();
    assert_eq!(svid.spiffe_id().to_string(), ROOT_ID);
    let td = spiffe::TrustDomain::new(TD).unwrap();
    let bundles = source.bundle_set().unwrap();
    let bundle = bundles.get(&td).expect("bundle for the trust domain");
    let dir = tempfile::tempdir().unwrap();
    let chain: Vec<Vec<u8>> = svid
        .cert_chain()
        .iter()
        .map(|c| c.as_ref().to_vec())
        .collect();
    let roots: Vec<Vec<u8>> = bundle
        .authorities()
        .iter()
        .map(|c| c.as_ref().to_vec())
        .collect();
    let leaf = write(dir.path(), "leaf.pem", &pem_all(&chain[..1]));
    let int = write(dir.path(), "int.pem", &pem_all(&chain[1..]));
    let b = write(dir.path(), "bundle.pem", &pem_all(&roots));
    let v = verify(&b, &int, &leaf, &[]);
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stderr));
    source.shutdown().await;

    let client = spiffe::WorkloadApiClient::connect_to(&endpoint)
        .await
        .unwrap();
    let token = client
        .fetch_jwt_token(["svc-b"], None)
        .await
        .expect("JWT-SVID");
    let jwt = client
        .validate_jwt_token("svc-b", &token)
        .await
        .expect("ValidateJWTSVID accepts it");
    assert_eq!(jwt.spiffe_id().to_string(), ROOT_ID);
    assert!(client.validate_jwt_token("other", &token).await.is_err());
    let jwks = client.fetch_jwt_bundles().await.expect("JWT bundles");
    assert!(jwks.get(&td).is_some(), "JWKS for the trust domain");
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_security_header_is_invalid_argument_and_unknown_callers_are_denied() {
    let ca = start("", "");
    let ch = common::uds_channel(&ca.spiffe).await;
    let mut raw = wpb::spiffe_workload_api_client::SpiffeWorkloadApiClient::new(ch);
    let e = raw
        .fetch_x509svid(wpb::X509svidRequest {})
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    let e = raw
        .fetch_jwtsvid(wpb::JwtsvidRequest {
            audience: vec!["a".into()],
            spiffe_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    let mut c = spiffe_client(&ca.spiffe).await;
    let e = c
        .fetch_jwtsvid(wpb::JwtsvidRequest {
            audience: vec!["a".into()],
            spiffe_id: "spiffe://test.example/someone-else".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied);
    let e = c
        .validate_jwtsvid(wpb::ValidateJwtsvidRequest {
            audience: "a".into(),
            svid: "not.a.token".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
}

async fn next(s: &mut tonic::Streaming<wpb::X509svidResponse>) -> wpb::X509svidResponse {
    tokio::time::timeout(Duration::from_secs(8), s.message())
        .await
        .expect("a message within 8s")
        .unwrap()
        .expect("stream open")
}

fn not_after(der: &[u8]) -> SystemTime {
    let (_, c) = x509_parser::parse_x509_certificate(der).unwrap();
    UNIX_EPOCH + Duration::from_secs(c.validity().not_after.timestamp() as u64)
}

#[tokio::test(flavor = "multi_thread")]
async fn stream_pushes_a_renewed_svid_before_the_old_one_expires() {
    let ca = start("leaf_ttl = \"6s\"", "");
    let mut c = spiffe_client(&ca.spiffe).await;
    let mut s = c
        .fetch_x509svid(wpb::X509svidRequest {})
        .await
        .unwrap()
        .into_inner();
    let first = next(&mut s).await;
    let leaf1 = split_der(&first.svids[0].x509_svid)[0].clone();
    let expires = not_after(&leaf1);
    for _ in 0..2 {
        let m = next(&mut s).await;
        let leaf = split_der(&m.svids[0].x509_svid)[0].clone();
        if leaf != leaf1 {
            let now = SystemTime::now();
            assert!(now < expires, "renewal arrived after the old SVID expired");
            assert!(not_after(&leaf) > expires);
            assert_eq!(uri_sans(&leaf), vec![ROOT_ID.to_string()]);
            return;
        }
    }
    panic!("no renewed SVID on the stream");
}

/// grpcurl with no flags beyond the socket: the SPIFFE socket answers reflection and health
/// like the other sockets (the socket path is accepted as `:authority`), and a JWT-SVID call
/// works with nothing but the spec's security header.
#[test]
fn grpcurl_lists_describes_and_calls_the_spiffe_socket_without_flags() {
    let ca = start("", "");
    let grpcurl = std::env::var("SIDECRED_GRPCURL")
        .expect("SIDECRED_GRPCURL: run through scripts/test, which installs grpcurl");
    let sock = ca.spiffe.to_str().unwrap();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(&grpcurl)
            .args(["-plaintext", "-unix"])
            .args(args)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "grpcurl {args:?}: {text}");
        text
    };
    let list = run(&[sock, "list"]);
    for svc in [
        "SpiffeWorkloadAPI",
        "envoy.service.secret.v3.SecretDiscoveryService",
        "grpc.health.v1.Health",
    ] {
        assert!(
            list.lines().any(|l| l.trim() == svc),
            "{svc} missing:\n{list}"
        );
    }
    let desc = run(&[sock, "describe", "SpiffeWorkloadAPI"]);
    assert!(
        desc.contains("FetchJWTSVID") && desc.contains("FetchX509SVID"),
        "{desc}"
    );
    let health = run(&[sock, "grpc.health.v1.Health/Check"]);
    assert!(health.contains("SERVING"), "{health}");
    let jwt = run(&[
        "-H",
        "workload.spiffe.io: true",
        "-d",
        r#"{"audience":["svc-b"]}"#,
        sock,
        "SpiffeWorkloadAPI/FetchJWTSVID",
    ]);
    assert!(jwt.contains(ROOT_ID) && jwt.contains("\"svid\""), "{jwt}");
}
