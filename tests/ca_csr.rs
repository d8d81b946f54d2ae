//! CSR signing through the real binary: the SANs and URI a CSR asks for are checked against the
//! caller's rule, refusals are audited as denials with their reasons, and malformed CSRs are
//! refused without a denial line.

mod common;

use common::ca::*;
use sidecred::api::pb;
use std::time::{Duration, Instant, SystemTime};

fn csr(sans: &[&str], uri: Option<&str>, ca: bool) -> String {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut p =
        rcgen::CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap();
    if let Some(u) = uri {
        p.subject_alt_names
            .push(rcgen::SanType::URI(u.to_string().try_into().unwrap()));
    }
    if ca {
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    }
    p.serialize_request(&key).unwrap().pem().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn csr_signing_checks_requested_sans_against_policy() {
    let ca = start("", "");
    let mut b = ca.sc.broker().await;
    let sid = session(&mut b).await;
    let req = |pem: String| pb::SignCsrRequest {
        session_id: sid.clone(),
        name: "mtls/router".into(),
        csr_pem: pem,
        ttl_seconds: 86400,
    };
    // Allowed: a DNS name matching the rule's glob, the allowed IP and the caller's own SPIFFE ID.
    let ok = b
        .sign_csr(req(csr(
            &["api.svc.local", "127.0.0.1"],
            Some(ROOT_ID),
            false,
        )))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ok.spiffe_id, ROOT_ID);
    let exp = ok.expires_at
        - SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
    assert!(
        exp <= 10 * 60 + 5,
        "ttl clamped to the secret's ttl, got {exp}s"
    );
    let dir = tempfile::tempdir().unwrap();
    let certs = pem_blocks(&ok.certificate_chain_pem, "CERTIFICATE");
    let leaf = write(dir.path(), "leaf.pem", &certs[0]);
    let chain = write(dir.path(), "chain.pem", &certs[1..].concat());
    let bundle = write(dir.path(), "bundle.pem", &ok.bundle_pem);
    let v = verify(&bundle, &chain, &leaf, &[]);
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stderr));

    let cases = [
        (
            csr(&["evil.com"], None, false),
            tonic::Code::PermissionDenied,
            "evil.com",
        ),
        (
            csr(&["10.1.2.3"], None, false),
            tonic::Code::PermissionDenied,
            "10.1.2.3",
        ),
        (
            csr(&[], Some("spiffe://test.example/admin"), false),
            tonic::Code::PermissionDenied,
            "spiffe://test.example/admin",
        ),
        (
            csr(&["api.svc.local"], None, true),
            tonic::Code::InvalidArgument,
            "CA:true",
        ),
        ("garbage".to_string(), tonic::Code::InvalidArgument, "csr"),
    ];
    for (pem, code, frag) in cases {
        let e = b.sign_csr(req(pem)).await.unwrap_err();
        assert_eq!(e.code(), code, "{frag}: {e:?}");
        assert!(e.message().contains(frag), "{frag}: {}", e.message());
    }
    assert!(ca.sc.audit_has("\"csr_sign\""));
    // The three policy refusals are audited as denials, with their reason; the two malformed
    // CSRs are not.
    let denials = || -> Vec<String> {
        ca.sc
            .audit_events()
            .into_iter()
            .filter(|e| e["event"] == "csr_sign" && e["outcome"] == "denied")
            .map(|e| e["detail"].as_str().unwrap_or_default().to_string())
            .collect()
    };
    let until = Instant::now() + Duration::from_secs(3);
    while denials().len() < 3 && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(20));
    }
    let d = denials();
    assert_eq!(d.len(), 3, "{d:?}");
    for frag in ["evil.com", "10.1.2.3", "spiffe://test.example/admin"] {
        assert!(d.iter().any(|x| x.contains(frag)), "{frag}: {d:?}");
    }
}
