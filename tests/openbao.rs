//! The OpenBao backend against a real OpenBao dev server: KV v2 versions and CAS rotation with
//! grace, error mapping, TLS with a CA file, an outage, PKI, and a canary at trace level.

mod common;

use common::openbao::*;
use common::*;
use serde_json::json;
use sidecred::api::pb;
use std::time::{Duration, Instant};
use tonic::Code;

#[tokio::test]
async fn kv2_versions_and_cas_rotation_with_grace() {
    let bao = OpenBao::start();
    bao.kv_put("app/db", json!({"password": "kv-one", "user": "app"}))
        .await;
    bao.kv_put("app/db", json!({"password": "kv-two", "user": "app"}))
        .await;
    // Writes without check-and-set are refused on this path: rotation must send cas.
    bao.api(
        "POST",
        "secret/metadata/app/db",
        json!({"cas_required": true}),
    )
    .await;
    let tmp = tempfile::tempdir().unwrap();
    let tf = write_file(tmp.path(), "token", &bao.root_token);
    let body = format!(
        "{}{}{}",
        token_file_backend(&bao, &tf, ""),
        kv_secret("app/db", "app/db", "key = \"password\"\nttl = \"60s\"\ngrace = \"2s\"\noptions = { on_retire = \"delete\" }"),
        OPEN_POLICY
    );
    let sc = Sidecar::start(&body);
    let mut b = sc.broker().await;
    let sid = open(&mut b).await;

    let cur = get(&mut b, &sid, "app/db", "").await.unwrap();
    assert_eq!(
        (cur.value.as_slice(), cur.version.as_str()),
        (&b"kv-two"[..], "2")
    );
    let v1 = get(&mut b, &sid, "app/db", "1").await.unwrap();
    assert_eq!(
        (v1.value.as_slice(), v1.version.as_str()),
        (&b"kv-one"[..], "1")
    );
    let e = get(&mut b, &sid, "app/db", "9").await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");

    let rot = sc
        .admin()
        .await
        .rotate(pb::RotateRequest {
            name: "app/db".into(),
            grace_seconds: 2,
            value: b"kv-three".to_vec(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (rot.version.as_str(), rot.previous_version.as_str()),
        ("3", "2")
    );
    let stored = bao
        .api("GET", "secret/data/app/db", serde_json::Value::Null)
        .await;
    assert_eq!(
        stored["data"]["data"],
        json!({"password": "kv-three", "user": "app"}),
        "other fields kept"
    );

    let r = get(&mut b, &sid, "app/db", "").await.unwrap();
    assert_eq!(
        (r.value.as_slice(), r.version.as_str()),
        (&b"kv-three"[..], "3")
    );
    let prev = r.previous.expect("previous served during grace");
    assert_eq!(
        (prev.value.as_slice(), prev.version.as_str()),
        (&b"kv-two"[..], "2")
    );
    assert!(r.previous_retires_at > 0);

    let gone = wait_for_async(Duration::from_secs(5), || {
        let mut b = b.clone();
        let sid = sid.clone();
        async move {
            get(&mut b, &sid, "app/db", "")
                .await
                .unwrap()
                .previous
                .is_none()
        }
    })
    .await;
    assert!(gone, "previous still served after grace");
    // on_retire = "delete": OpenBao no longer serves version 2 either.
    let deleted = wait_for_async(Duration::from_secs(2), || async {
        bao.api_as(
            &bao.root_token,
            "GET",
            "secret/data/app/db?version=2",
            serde_json::Value::Null,
        )
        .await
        .is_err()
    })
    .await;
    assert!(
        deleted,
        "version 2 still readable at OpenBao:\n{}",
        sc.logs()
    );
}

#[tokio::test]
async fn errors_map_to_precise_statuses() {
    let bao = OpenBao::start();
    bao.policy("kvread", KV_READ).await;
    bao.kv_put("app/ok", json!({"v": "fine"})).await;
    bao.kv_put("other/x", json!({"v": "hidden"})).await;
    let limited = bao.token(&["kvread"], "1h").await;
    let tmp = tempfile::tempdir().unwrap();
    let tf = write_file(tmp.path(), "token", &limited);
    let body = format!(
        "{}{}{}{}{}",
        token_file_backend(&bao, &tf, ""),
        kv_secret("ok", "app/ok", ""),
        kv_secret("forbidden", "other/x", ""),
        kv_secret("missing", "app/none", ""),
        OPEN_POLICY
    );
    let sc = Sidecar::start(&body);
    let mut b = sc.broker().await;
    let sid = open(&mut b).await;
    assert_eq!(get(&mut b, &sid, "ok", "").await.unwrap().value, b"fine");
    let e = get(&mut b, &sid, "forbidden", "").await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    // The caller learns the kind and the names; OpenBao's words go to the log.
    assert!(!e.message().contains("OpenBao"), "{}", e.message());
    assert!(sc.logs().contains("lacks a policy"), "{}", sc.logs());
    let e = get(&mut b, &sid, "missing", "").await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    let st = sc
        .admin()
        .await
        .status(pb::StatusRequest {})
        .await
        .unwrap()
        .into_inner();
    let bs = st.backends.iter().find(|b| b.name == "bao").unwrap();
    assert!(bs.healthy && bs.detail.contains("OpenBao"), "{bs:?}");
}

#[tokio::test]
async fn tls_listener_with_ca_file() {
    let bao = OpenBao::start_tls();
    bao.kv_put("app/tls", json!({"v": "over-tls"})).await;
    let tmp = tempfile::tempdir().unwrap();
    let tf = write_file(tmp.path(), "token", &bao.root_token);
    let secrets = format!("{}{}", kv_secret("tls", "app/tls", ""), OPEN_POLICY);
    let sc = Sidecar::start(&format!("{}{secrets}", token_file_backend(&bao, &tf, "")));
    let mut b = sc.broker().await;
    let sid = open(&mut b).await;
    assert_eq!(
        get(&mut b, &sid, "tls", "").await.unwrap().value,
        b"over-tls"
    );

    // Without the CA the server is not trusted: UNAVAILABLE, not a hang.
    let no_ca = format!(
        "[backends.bao]\nkind = \"openbao\"\naddress = \"{}\"\n[backends.bao.auth]\nmethod = \"token_file\"\npath = \"{}\"\n{secrets}",
        bao.addr,
        tf.display()
    );
    let sc2 = Sidecar::builder(&no_ca)
        .server("backend_timeout = \"2s\"")
        .start();
    let mut b2 = sc2.broker().await;
    let sid2 = open(&mut b2).await;
    let e = get(&mut b2, &sid2, "tls", "").await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
}

#[tokio::test]
async fn outage_serves_stale_then_unavailable_then_recovers() {
    let mut bao = OpenBao::start();
    bao.kv_put("app/o", json!({"v": "before-outage"})).await;
    let tmp = tempfile::tempdir().unwrap();
    let tf = write_file(tmp.path(), "token", &bao.root_token);
    let body = format!(
        "{}{}{}",
        token_file_backend(&bao, &tf, "timeout = \"1s\"\n"),
        kv_secret("o", "app/o", "ttl = \"1s\""),
        OPEN_POLICY
    );
    let sc = Sidecar::builder(&body)
        .server("stale_window = \"2s\"\nbackend_timeout = \"1s\"")
        .start();
    let mut b = sc.broker().await;
    let sid = open(&mut b).await;
    assert_eq!(
        get(&mut b, &sid, "o", "").await.unwrap().value,
        b"before-outage"
    );
    bao.kill();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let r = get(&mut b, &sid, "o", "").await.unwrap();
    assert!(r.stale, "expected a stale value");
    assert_eq!(r.value, b"before-outage");
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let t = Instant::now();
    let e = get(&mut b, &sid, "o", "").await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "took {:?}",
        t.elapsed()
    );

    bao.spawn();
    bao.kv_put("app/o", json!({"v": "after-outage"})).await;
    let back = wait_for_async(Duration::from_secs(5), || {
        let (mut b, sid) = (b.clone(), sid.clone());
        async move {
            get(&mut b, &sid, "o", "")
                .await
                .is_ok_and(|r| r.value == b"after-outage" && !r.stale)
        }
    })
    .await;
    assert!(back, "no recovery:\n{}", sc.logs());
}

async fn pki(bao: &OpenBao) {
    bao.enable("secrets", "pki", "pki").await;
    bao.api(
        "POST",
        "sys/mounts/pki/tune",
        json!({"max_lease_ttl": "87600h"}),
    )
    .await;
    bao.api(
        "POST",
        "pki/root/generate/internal",
        json!({"common_name": "sidecred test root", "ttl": "87600h"}),
    )
    .await;
    bao.api(
        "POST",
        "pki/roles/web",
        json!({"allowed_domains": ["svc.test"], "allow_subdomains": true, "max_ttl": "1h"}),
    )
    .await;
}

/// PKI issuance, and the canary: nothing secret in logs (trace), audit or error messages.
#[tokio::test]
async fn pki_issue_and_no_secret_in_logs_at_trace() {
    let root = "canary-root-token-5e1d77";
    let bao = OpenBao::start_with_root(root);
    pki(&bao).await;
    let canary = "canary-kv-value-3b9c0a";
    bao.kv_put("app/c", json!({"v": canary})).await;
    let tmp = tempfile::tempdir().unwrap();
    let tf = write_file(tmp.path(), "token", root);
    let body = format!(
        "{}{}{}{}{}",
        token_file_backend(&bao, &tf, ""),
        kv_secret("c", "app/c", ""),
        kv_secret("missing", "app/nothing", ""),
        "[[secret]]\nname = \"cert\"\nbackend = \"bao\"\npath = \"pki/issue/web\"\nzone = \"internal\"\nscope = \"session\"\noptions = { engine = \"pki\", common_name = \"api.svc.test\", cert_ttl = \"10m\" }\n",
        OPEN_POLICY
    );
    let sc = Sidecar::builder(&body)
        .env("SIDECRED_LOG", "trace")
        .log("trace")
        .start();
    let mut b = sc.broker().await;
    let sid = open(&mut b).await;
    assert_eq!(
        get(&mut b, &sid, "c", "").await.unwrap().value,
        canary.as_bytes()
    );
    let e = get(&mut b, &sid, "missing", "").await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);

    let cert = get(&mut b, &sid, "cert", "").await.unwrap();
    let pem = String::from_utf8(cert.value.clone()).unwrap();
    assert_eq!(
        pem.matches("BEGIN CERTIFICATE").count(),
        2,
        "leaf + issuing CA"
    );
    assert!(pem.contains("PRIVATE KEY"));
    let serial = &cert.version;
    let stored = bao
        .api(
            "GET",
            &format!("pki/cert/{serial}"),
            serde_json::Value::Null,
        )
        .await;
    assert!(pem.starts_with(stored["data"]["certificate"].as_str().unwrap().trim_end()));
    let left = cert.expires_at
        - std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
    assert!(
        (1..=600).contains(&left),
        "lease ends with the certificate: {left}s"
    );
    let key_line = pem
        .lines()
        .skip_while(|l| !l.contains("PRIVATE KEY"))
        .nth(1)
        .unwrap()
        .to_string();

    let rev = sc
        .admin()
        .await
        .revoke_session(pb::RevokeSessionRequest {
            session_id: sid.clone(),
            reason: "canary".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(rev.pending.is_empty(), "{rev:?}");
    let text = format!("{}{}{e:?}", sc.logs(), sc.audit_text());
    assert!(
        text.contains("TRACE") || text.contains("trace"),
        "not at trace level"
    );
    for needle in [canary, root, key_line.as_str()] {
        assert!(!text.contains(needle), "`{needle}` leaked");
    }
}

#[test]
fn example_config_is_accepted() {
    let tmp = tempfile::tempdir().unwrap();
    for f in ["token", "secret-id", "sa-token", "ca.pem"] {
        common::openbao::write_file(tmp.path(), f, "x");
    }
    let out = std::process::Command::new(BIN)
        .args([
            "check-config",
            concat!(env!("CARGO_MANIFEST_DIR"), "/config/openbao.toml"),
        ])
        .env("OPENBAO_ADDR", "https://127.0.0.1:8200")
        .env("OPENBAO_CA_FILE", tmp.path().join("ca.pem"))
        .env("OPENBAO_TOKEN_FILE", tmp.path().join("token"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
