//! Attacks on what sidecred issues and serves, through the real binary: certificate SANs a rule
//! never meant to allow, SVIDs issued without an audit line, retired versions read by pinning
//! them (before and after a restart), and backend error text reaching workload callers.

mod common;

use common::ca::*;
use common::openbao::{
    get, kv_secret, open, token_file_backend, wait_for_async, write_file, OpenBao, KV_READ,
    OPEN_POLICY,
};
use common::*;
use serde_json::json;
use sidecred::api::pb;
use sidecred::api::spiffe_pb as wpb;
use std::time::Duration;
use tonic::Code;

/// A CSR for `sans` (DNS names or IPs) from a fresh key.
fn csr(sans: &[&str]) -> String {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let p = rcgen::CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .unwrap();
    p.serialize_request(&key).unwrap().pem().unwrap()
}

async fn sign(
    ca: &CaSidecar,
    sid: &str,
    sans: &[&str],
) -> Result<pb::SignCsrResponse, tonic::Status> {
    ca.sc
        .broker()
        .await
        .sign_csr(pb::SignCsrRequest {
            session_id: sid.into(),
            name: "mtls/router".into(),
            csr_pem: csr(sans),
            ttl_seconds: 60,
        })
        .await
        .map(|r| r.into_inner())
}

/// The DNS SANs of the first certificate in a DER chain.
fn dns_sans(der: &[u8]) -> Vec<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
    let ext = cert.subject_alternative_name().unwrap().unwrap();
    ext.value
        .general_names
        .iter()
        .filter_map(|g| match g {
            x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_string()),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dns_glob_never_signs_a_wildcard_or_extra_labels() {
    // The rule allows `*.svc.local` (and `localhost`): one label of its own choosing.
    let ca = start("", "");
    let sid = open_default(&mut ca.sc.broker().await).await;
    sign(&ca, &sid, &["api.svc.local"]).await.unwrap();
    for bad in [
        "*.svc.local",
        "a.b.svc.local",
        "a_b.svc.local",
        "-a.svc.local",
    ] {
        let e = sign(&ca, &sid, &[bad]).await.unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied, "{bad}: {e:?}");
        assert!(e.message().contains("DNS SAN"), "{bad}: {}", e.message());
    }
    // Listed explicitly, the wildcard is issued (and only that one).
    let ca = start("", "wildcard_dns_sans = [\"*.svc.local\"]");
    let sid = open_default(&mut ca.sc.broker().await).await;
    let ok = sign(&ca, &sid, &["*.svc.local"]).await.unwrap();
    assert!(!ok.serial.is_empty());
    let e = sign(&ca, &sid, &["*.b.svc.local"]).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn secret_options_and_svids_carry_no_wildcard_or_pattern_names() {
    // A CA secret whose options ask for the wildcard: refused under a rule that only globs it.
    let extra = "[[secret]]\nname = \"mtls/wild\"\nbackend = \"ca\"\npath = \"wild\"\nzone = \"internal\"\nscope = \"session\"\noptions = { dns_sans = [\"*.svc.local\"] }\n";
    let ca = start("", &format!("\n{extra}"));
    let mut b = ca.sc.broker().await;
    let sid = open_default(&mut b).await;
    let e = b.get_secret(get_req("mtls/wild", &sid)).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("*.svc.local"), "{}", e.message());
    // An SVID carries the rule's literal names only, never a pattern such as `web-?`.
    let ca = start(
        "",
        &format!("wildcard_dns_sans = [\"*.svc.local\"]\n{extra}"),
    );
    let mut b = ca.sc.broker().await;
    let sid = open_default(&mut b).await;
    let r = b
        .get_secret(get_req("mtls/wild", &sid))
        .await
        .unwrap()
        .into_inner();
    let pem = String::from_utf8(r.value).unwrap();
    let leaf = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap().1;
    assert_eq!(dns_sans(&leaf.contents), ["*.svc.local"]);
    let svid = first_svid(&ca.spiffe).await;
    assert_eq!(dns_sans(&svid.svids[0].x509_svid), ["localhost"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn svid_patterns_in_dns_sans_are_not_issued_literally() {
    let body = ca_body("", "").replace(
        "dns_sans = [\"localhost\", \"*.svc.local\"]",
        "dns_sans = [\"localhost\", \"web-?.svc.local\", \"*.svc.local\"]",
    );
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("spiffe/agent.sock");
    let sc = Sidecar::builder(&body)
        .server(&format!("spiffe_socket = \"{}\"", sock.display()))
        .start();
    wait_for(Duration::from_secs(10), || {
        std::os::unix::net::UnixStream::connect(&sock).ok()
    })
    .expect("SPIFFE socket");
    let svid = first_svid(&sock).await;
    assert_eq!(dns_sans(&svid.svids[0].x509_svid), ["localhost"]);
    drop(sc);
}

#[tokio::test(flavor = "multi_thread")]
async fn spiffe_issuance_refuses_what_it_cannot_audit() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("spiffe/agent.sock");
    let sc = Sidecar::builder(&ca_body("", ""))
        .server(&format!("spiffe_socket = \"{}\"", sock.display()))
        .audit_path("/dev/full")
        .fail_closed()
        .start();
    wait_for(Duration::from_secs(10), || {
        std::os::unix::net::UnixStream::connect(&sock).ok()
    })
    .expect("SPIFFE socket");
    let mut c = spiffe_client(&sock).await;
    let first = match c.fetch_x509svid(wpb::X509svidRequest {}).await {
        Ok(s) => s.into_inner().message().await,
        Err(e) => Err(e),
    };
    let e = first.expect_err("an X.509-SVID was sent with no audit line");
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(e.message().contains("audit"), "{}", e.message());
    let e = c
        .fetch_jwtsvid(wpb::JwtsvidRequest {
            audience: vec!["db".into()],
            spiffe_id: String::new(),
        })
        .await
        .expect_err("a JWT-SVID was sent with no audit line");
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    drop(sc);
}

/// Waits for the audit line of `version`'s retirement.
fn retired(sc: &Sidecar, version: &str) -> bool {
    let v = format!("\"version\":\"{version}\"");
    wait_for(Duration::from_secs(10), || {
        sc.audit_text()
            .lines()
            .any(|l| l.contains("\"event\":\"retire\"") && l.contains(&v))
            .then_some(())
    })
    .is_some()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retired_kv_version_kept_in_openbao_is_never_served_again() {
    let bao = OpenBao::start();
    bao.kv_put("app/kept", json!({ "value": "kept-v1" })).await;
    let tmp = tempfile::tempdir().unwrap();
    let tf = write_file(tmp.path(), "token", &bao.root_token);
    // on_retire = "keep" (the default): version 1 stays readable in OpenBao.
    let body = format!(
        "{}{}{OPEN_POLICY}",
        token_file_backend(&bao, &tf, ""),
        kv_secret("app/kept", "app/kept", "")
    );
    let mut sc = Sidecar::start(&body);
    let r = sc
        .admin()
        .await
        .rotate(pb::RotateRequest {
            name: "app/kept".into(),
            grace_seconds: 1,
            value: vec![],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.previous_version, "1");
    let mut b = sc.broker().await;
    let sid = open(&mut b).await;
    assert_eq!(
        get(&mut b, &sid, "app/kept", "1").await.unwrap().value,
        b"kept-v1"
    );
    assert!(retired(&sc, "1"), "{}", sc.logs());
    let e = get(&mut b, &sid, "app/kept", "1").await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    assert!(!e.message().contains("kept-v1"));
    // After a restart, the journal in the state dir still refuses it.
    sc.stop();
    sc.spawn();
    let mut b = sc.broker().await;
    let sid = open(&mut b).await;
    let e = get(&mut b, &sid, "app/kept", "1").await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "served after restart: {e:?}");
    assert!(e.message().contains("retired"), "{}", e.message());
    let cur = get(&mut b, &sid, "app/kept", "").await.unwrap();
    assert_eq!(cur.version, "2");
    // The version is still there at OpenBao: the refusal is sidecred's own.
    let kv = bao
        .api(
            "GET",
            "secret/data/app/kept?version=1",
            serde_json::Value::Null,
        )
        .await;
    assert_eq!(kv["data"]["data"]["value"], "kept-v1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workload_callers_get_no_openbao_text() {
    let mut bao = OpenBao::start();
    bao.policy("kvread", KV_READ).await;
    bao.kv_put("app/ok", json!({"v": "fine"})).await;
    bao.kv_put("other/x", json!({"v": "hidden"})).await;
    let limited = bao.token(&["kvread"], "1h").await;
    let tmp = tempfile::tempdir().unwrap();
    let tf = write_file(tmp.path(), "token", &limited);
    let body = format!(
        "{}{}{}{OPEN_POLICY}",
        token_file_backend(&bao, &tf, ""),
        kv_secret("ok", "app/ok", ""),
        kv_secret("forbidden", "other/x", ""),
    );
    let sc = Sidecar::start(&body);
    let mut b = sc.broker().await;
    let sid = open(&mut b).await;
    let no_backend_text = |e: &tonic::Status| {
        let m = e.message();
        assert!(
            !m.contains("OpenBao")
                && !m.contains("policy")
                && !m.contains("127.0.0.1")
                && !m.contains("http")
                && !m.contains("secret/data"),
            "backend text reached the caller: {m}"
        );
        assert!(m.contains("`bao`"), "{m}");
    };
    let e = get(&mut b, &sid, "forbidden", "").await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    no_backend_text(&e);
    assert!(sc.logs().contains("lacks a policy"), "detail logged");
    // OpenBao down: a first read of a secret with no cached value.
    bao.kill();
    let e = get(&mut b, &sid, "ok", "").await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    no_backend_text(&e);
    let logged = wait_for_async(Duration::from_secs(3), || async {
        sc.logs().contains("cannot reach the server")
    })
    .await;
    assert!(logged, "detail logged:\n{}", sc.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_lock_record_cannot_stretch_grace() {
    let bao = OpenBao::start();
    bao.kv_put("app/lock", json!({ "value": "lock-v1" })).await;
    let tmp = tempfile::tempdir().unwrap();
    let tf = write_file(tmp.path(), "token", &bao.root_token);
    let body = format!(
        "{}[scheduler]\nlock_backend = \"bao\"\nlock_prefix = \"sidecred/locks\"\n\n{}{OPEN_POLICY}",
        token_file_backend(&bao, &tf, "recheck_interval = \"200ms\""),
        kv_secret("app/lock", "app/lock", "grace = \"2s\"")
    );
    let sc = Sidecar::start(&body);
    let mut b = sc.broker().await;
    let sid = open(&mut b).await;
    assert_eq!(
        get(&mut b, &sid, "app/lock", "").await.unwrap().version,
        "1"
    );
    // Whoever can write the lock path claims a rotation to 2 whose grace ends in a year.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let year = now.as_millis() as u64 + 365 * 86_400_000;
    bao.kv_put(
        "sidecred/locks/app/lock",
        json!({ "slot_ms": 0, "holder": "forger", "state": "done", "claimed_until_ms": 0,
                "version": "2", "previous": "1", "retires_at_ms": year }),
    )
    .await;
    bao.kv_put("app/lock", json!({ "value": "lock-v2" })).await;
    assert!(
        sc.audit_has("\"event\":\"rotation_applied\""),
        "{}",
        sc.logs()
    );
    let g = get(&mut b, &sid, "app/lock", "").await.unwrap();
    assert_eq!(g.version, "2");
    let limit = now.as_secs() as i64 + 2 + 5;
    assert!(
        g.previous_retires_at > 0 && g.previous_retires_at <= limit,
        "grace stretched to {} (limit {limit})",
        g.previous_retires_at
    );
    assert!(retired(&sc, "1"), "version 1 retires after its own grace");
}
