//! The OpenBao backend against a real OpenBao dev server: KV v2 versions and CAS rotation with
//! grace, error mapping, TLS with a CA file, sidecred's own auth (token file, AppRole, JWT) with
//! renewal, an outage, PKI, and a canary at trace level.

mod common;

use common::openbao::{token_file_backend, OpenBao, OPEN_POLICY};
use common::*;
use serde_json::json;
use sidecred::api::pb;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tonic::Code;

type Broker = pb::broker_client::BrokerClient<tonic::transport::Channel>;

async fn open(b: &mut Broker) -> String {
    b.open_session(pb::OpenSessionRequest {
        ttl_seconds: 0,
        labels: [("agent_id".into(), "bao-test".into())].into(),
    })
    .await
    .unwrap()
    .into_inner()
    .session_id
}

async fn get(
    b: &mut Broker,
    sid: &str,
    name: &str,
    version: &str,
) -> Result<pb::GetSecretResponse, tonic::Status> {
    b.get_secret(pb::GetSecretRequest {
        name: name.into(),
        session_id: sid.into(),
        version: version.into(),
        ..Default::default()
    })
    .await
    .map(|r| r.into_inner())
}

fn write_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn kv_secret(name: &str, path: &str, extra: &str) -> String {
    format!(
        "[[secret]]\nname = \"{name}\"\nbackend = \"bao\"\npath = \"{path}\"\nzone = \"internal\"\n{extra}\n"
    )
}

const KV_READ: &str = r#"path "secret/data/app/*" { capabilities = ["read", "create", "update"] }
path "secret/metadata/app/*" { capabilities = ["read"] }"#;

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

/// Polls an async condition until true or the deadline.
async fn wait_for_async<F, Fut>(limit: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
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
    assert!(e.message().contains("lacks a policy"), "{}", e.message());
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
        std::fs::write(tmp.path().join(f), "x").unwrap();
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
