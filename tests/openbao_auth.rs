//! sidecred's own OpenBao login against a real dev server: a token file re-read when it
//! changes, AppRole with renewal and re-login, JWT with a minted token, and a bad secret id.

mod common;

use common::openbao::*;
use common::*;
use serde_json::json;
use std::path::Path;
use std::time::{Duration, Instant};
use tonic::Code;

#[tokio::test]
async fn token_file_is_reread_when_it_changes() {
    let bao = OpenBao::start();
    bao.policy("kvread", KV_READ).await;
    bao.kv_put("app/t", json!({"v": "tf"})).await;
    let first = bao.token(&["kvread"], "1h").await;
    let tmp = tempfile::tempdir().unwrap();
    let tf = write_file(tmp.path(), "token", &first);
    let body = format!(
        "{}{}{}",
        token_file_backend(&bao, &tf, ""),
        kv_secret("t", "app/t", "ttl = \"1s\""),
        OPEN_POLICY
    );
    let sc = Sidecar::builder(&body)
        .server("stale_window = \"0s\"")
        .start();
    let mut b = sc.broker().await;
    let sid = open(&mut b).await;
    assert_eq!(get(&mut b, &sid, "t", "").await.unwrap().value, b"tf");
    bao.api("POST", "auth/token/revoke", json!({"token": first}))
        .await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let e = get(&mut b, &sid, "t", "").await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    let second = bao.token(&["kvread"], "1h").await;
    std::fs::write(&tf, format!("{second}\n")).unwrap();
    let back = wait_for_async(Duration::from_secs(4), || {
        let (mut b, sid) = (b.clone(), sid.clone());
        async move { get(&mut b, &sid, "t", "").await.is_ok() }
    })
    .await;
    assert!(back, "new token not picked up:\n{}", sc.logs());
    assert!(sc.logs().contains("token file changed"));
}

async fn approle(bao: &OpenBao, ttl: &str, max: &str) -> (String, String) {
    bao.policy("kvread", KV_READ).await;
    bao.enable("auth", "approle", "approle").await;
    bao.api(
        "POST",
        "auth/approle/role/sc",
        json!({"token_policies": ["kvread"], "token_ttl": ttl, "token_max_ttl": max, "secret_id_ttl": "0"}),
    )
    .await;
    let role = bao
        .api(
            "GET",
            "auth/approle/role/sc/role-id",
            serde_json::Value::Null,
        )
        .await;
    let sid = bao
        .api(
            "POST",
            "auth/approle/role/sc/secret-id",
            serde_json::Value::Null,
        )
        .await;
    (
        role["data"]["role_id"].as_str().unwrap().into(),
        sid["data"]["secret_id"].as_str().unwrap().into(),
    )
}

fn approle_backend(bao: &OpenBao, role_id: &str, secret_file: &Path) -> String {
    format!(
        "[backends.bao]\nkind = \"openbao\"\naddress = \"{}\"\n[backends.bao.auth]\nmethod = \"approle\"\nrole_id = \"{role_id}\"\nsecret_id_file = \"{}\"\n",
        bao.addr,
        secret_file.display()
    )
}

#[tokio::test]
async fn approle_login_renews_then_logs_in_again() {
    let bao = OpenBao::start();
    bao.kv_put("app/r", json!({"v": "renewed"})).await;
    // Token lives 3s, renewable up to 5s: sidecred must renew, then log in again.
    let (role_id, secret_id) = approle(&bao, "3s", "5s").await;
    let tmp = tempfile::tempdir().unwrap();
    let sf = write_file(tmp.path(), "secret-id", &secret_id);
    let body = format!(
        "{}{}{}",
        approle_backend(&bao, &role_id, &sf),
        kv_secret("r", "app/r", "ttl = \"1s\""),
        OPEN_POLICY
    );
    let sc = Sidecar::builder(&body)
        .server("stale_window = \"0s\"")
        .start();
    let mut b = sc.broker().await;
    let sid = open(&mut b).await;
    let end = Instant::now() + Duration::from_secs(8);
    while Instant::now() < end {
        let r = get(&mut b, &sid, "r", "").await;
        assert_eq!(r.unwrap().value, b"renewed", "{}", sc.logs());
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    let logs = sc.logs();
    assert!(logs.contains("own token renewed"), "{logs}");
    assert!(logs.contains("logged in to OpenBao"), "{logs}");
}

#[tokio::test]
async fn bad_secret_id_is_a_clear_startup_error() {
    let bao = OpenBao::start();
    let (role_id, _) = approle(&bao, "1m", "1h").await;
    let tmp = tempfile::tempdir().unwrap();
    let bad = "bad-secret-id-canary-91f2";
    let sf = write_file(tmp.path(), "secret-id", bad);
    let cfg = format!(
        "[server]\nworkload_socket = \"{0}/w/w.sock\"\nadmin_socket = \"{0}/a/a.sock\"\n{1}",
        tmp.path().display(),
        approle_backend(&bao, &role_id, &sf)
    );
    let cfg_path = write_file(tmp.path(), "sidecred.toml", &cfg);
    let started = Instant::now();
    let out = std::process::Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&cfg_path)
        .output()
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("approle"), "{err}");
    assert!(!err.contains(bad), "secret id leaked: {err}");
}

#[tokio::test]
async fn jwt_login_with_a_minted_token() {
    let bao = OpenBao::start();
    bao.policy("kvread", KV_READ).await;
    bao.kv_put("app/j", json!({"v": "via-jwt"})).await;
    let py = std::env::var("SIDECRED_PYTHON").expect("SIDECRED_PYTHON is not set");
    let script = r#"
import json, time, jwt
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives import serialization
k = ec.generate_private_key(ec.SECP256R1())
pub = k.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
now = int(time.time())
claims = {"iss": "https://kubernetes.default.svc", "sub": "system:serviceaccount:agents:sidecred", "aud": ["sidecred"], "iat": now, "nbf": now - 5, "exp": now + 600}
print(json.dumps({"pub": pub, "jwt": jwt.encode(claims, k, algorithm="ES256")}))
"#;
    let out = std::process::Command::new(py)
        .args(["-c", script])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let minted: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    bao.enable("auth", "jwt", "jwt").await;
    bao.api(
        "POST",
        "auth/jwt/config",
        json!({"jwt_validation_pubkeys": [minted["pub"]], "bound_issuer": "https://kubernetes.default.svc"}),
    )
    .await;
    bao.api(
        "POST",
        "auth/jwt/role/sidecred",
        json!({"role_type": "jwt", "bound_audiences": ["sidecred"], "user_claim": "sub",
               "bound_subject": "system:serviceaccount:agents:sidecred", "token_policies": ["kvread"], "token_ttl": "60s"}),
    )
    .await;
    let tmp = tempfile::tempdir().unwrap();
    let jf = write_file(tmp.path(), "sa-token", minted["jwt"].as_str().unwrap());
    let body = format!(
        "[backends.bao]\nkind = \"openbao\"\naddress = \"{}\"\n[backends.bao.auth]\nmethod = \"jwt\"\nrole = \"sidecred\"\njwt_file = \"{}\"\n{}{}",
        bao.addr,
        jf.display(),
        kv_secret("j", "app/j", ""),
        OPEN_POLICY
    );
    let sc = Sidecar::start(&body);
    let mut b = sc.broker().await;
    let sid = open(&mut b).await;
    assert_eq!(get(&mut b, &sid, "j", "").await.unwrap().value, b"via-jwt");
}
