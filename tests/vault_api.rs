//! The Vault-compatible endpoint against the real thing: the same clients (hvac, the `bao`
//! CLI, vaultrs) run unchanged against an OpenBao dev server and against sidecred fronting that
//! OpenBao, and must observe the same data, versions, lease shapes and error shapes. Leased
//! reads are real PostgreSQL credentials from OpenBao's database engine.

mod common;

use common::openbao::{token_file_backend, write_file, OpenBao, OPEN_POLICY};
use common::postgres::Postgres;
use common::*;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// What the OpenBao-side client token may do: exactly what the clients below exercise.
const CLIENT_POLICY: &str = r#"
path "secret/data/app/*" { capabilities = ["read"] }
path "secret/metadata/app/*" { capabilities = ["read"] }
path "secret/data/tools/*" { capabilities = ["read"] }
path "database/creds/ro" { capabilities = ["read"] }
path "sys/leases/renew" { capabilities = ["update"] }
path "sys/leases/revoke" { capabilities = ["update"] }
path "sys/leases/revoke/*" { capabilities = ["update"] }
path "sys/internal/ui/mounts/*" { capabilities = ["read"] }
"#;

struct Env {
    bao: OpenBao,
    sc: Sidecar,
    vault_sock: PathBuf,
    /// sidecred's Vault endpoint on loopback TCP (callers identified through the socket table).
    vault_tcp: String,
    tmp: tempfile::TempDir,
    _pg: Postgres,
}

impl Env {
    /// A fresh OpenBao token for one client run (revoke-self ends it).
    async fn bao_token(&self) -> String {
        self.bao.token(&["client"], "1h").await
    }
    fn sidecred_addr(&self) -> String {
        format!("unix://{}", self.vault_sock.display())
    }
}

async fn setup() -> Env {
    let pg = Postgres::start();
    let bao = OpenBao::start();
    bao.database_role(&pg, "ro", 300, 600).await;
    bao.kv_put("app/db", json!({"username": "app", "password": "pw-v1"}))
        .await;
    bao.kv_put("app/db", json!({"username": "app", "password": "pw-v2"}))
        .await;
    bao.kv_put("tools/gh", json!({"token": "gh-token-1"})).await;
    bao.policy("client", CLIENT_POLICY).await;
    let tmp = tempfile::tempdir().unwrap();
    let tf = write_file(tmp.path(), "token", &bao.root_token);
    let vault_sock = tmp.path().join("v/vault.sock");
    let port = free_port(false);
    let body = format!(
        r#"{backend}
[[secret]]
name = "app/db"
backend = "bao"
path = "app/db"
zone = "internal"

[[secret]]
name = "tools/gh"
backend = "bao"
path = "tools/gh"
zone = "internal"
key = "token"

[[secret]]
name = "db/ro"
backend = "bao"
path = "database/creds/ro"
zone = "restricted"
scope = "call"
ttl = "5m"
options = {{ engine = "dynamic" }}
{OPEN_POLICY}
[vault_api]
socket = "{sock}"
tcp = "127.0.0.1:{port}"
[[vault_api.kv]]
mount = "secret"
path = "app/*"
secret = "app/*"
[[vault_api.kv]]
mount = "secret"
path = "tools/gh"
secret = "tools/gh"
[[vault_api.leased]]
path = "database/creds/ro"
secret = "db/ro"
"#,
        backend = token_file_backend(&bao, &tf, ""),
        sock = vault_sock.display()
    );
    let sc = Sidecar::start(&body);
    assert!(
        wait_for(Duration::from_secs(5), || vault_sock.exists().then_some(())).is_some(),
        "vault socket missing:\n{}",
        sc.logs()
    );
    Env {
        bao,
        sc,
        vault_sock,
        vault_tcp: format!("http://127.0.0.1:{port}"),
        tmp,
        _pg: pg,
    }
}

/// Runs a command to completion within `limit`, killing it past that.
fn bounded(mut cmd: Command, limit: Duration) -> Output {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(o) => o.unwrap(),
        Err(_) => {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            panic!("{cmd:?} did not finish within {limit:?}");
        }
    }
}

fn python() -> String {
    std::env::var("SIDECRED_PYTHON").expect("SIDECRED_PYTHON: source the peers env.sh")
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vault/hvac_client.py")
}

/// One run of the hvac client script; its JSON observations.
fn hvac_run(addr: &str, token: Option<&str>) -> Value {
    let mut c = Command::new(python());
    c.arg(script()).env("VAULT_ADDR", addr);
    match token {
        Some(t) => c.env("VAULT_TOKEN", t),
        None => c.env("LOGIN_PATH", "auth/sidecred/login"),
    };
    let o = bounded(c, Duration::from_secs(60));
    assert!(
        o.status.success(),
        "hvac client against {addr} failed:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).unwrap()
}

/// The observation without error texts (the servers word them differently; the shapes and
/// statuses must agree).
fn without_texts(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| k.as_str() != "text")
                .map(|(k, v)| (k.clone(), without_texts(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

#[tokio::test]
async fn hvac_sees_the_same_as_against_openbao_and_revocation_is_a_clear_403() {
    let env = setup().await;
    let want = hvac_run(&env.bao.addr, Some(&env.bao_token().await));
    let got = hvac_run(&env.sidecred_addr(), None);
    assert_eq!(
        without_texts(&got),
        without_texts(&want),
        "\nsidecred: {got:#}\nopenbao: {want:#}"
    );
    // The same client over loopback TCP.
    let tcp = hvac_run(&env.vault_tcp, None);
    assert_eq!(
        without_texts(&tcp),
        without_texts(&want),
        "\nsidecred over TCP: {tcp:#}\nopenbao: {want:#}"
    );
    // The values really came through, and the errors say why.
    assert_eq!(got["kv_current"]["data"]["password"], "pw-v2");
    assert_eq!(got["kv_v1"]["data"]["password"], "pw-v1");
    assert_eq!(
        got["kv_single_field"]["data"],
        json!({"token": "gh-token-1"})
    );
    assert_eq!(got["leased"]["keys"], json!(["password", "username"]));
    assert_eq!(got["kv_missing"]["error"], "InvalidPath");
    assert!(got["kv_missing"]["text"]
        .as_str()
        .unwrap()
        .contains("app/missing"));
    assert_eq!(got["kv_bogus_token"]["error"], "Forbidden");
    assert!(got["kv_bogus_token"]["text"]
        .as_str()
        .unwrap()
        .contains("is not open for this caller"));
    assert_eq!(got["renew_after_revoke"]["error"], "InvalidRequest");

    // Revoking the session through the admin API: the same hvac client's next read is a 403
    // that says so.
    let mut child = Command::new(python())
        .arg(script())
        .arg("hold")
        .env("VAULT_ADDR", env.sidecred_addr())
        .env("LOGIN_PATH", "auth/sidecred/login")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    let token = serde_json::from_str::<Value>(&line).unwrap()["token"]
        .as_str()
        .unwrap()
        .to_string();
    let o = env
        .sc
        .cli(&["revoke-session", &token, "--reason", "agent compromised"]);
    ok_stdout(&o);
    use std::io::Write;
    writeln!(child.stdin.as_mut().unwrap(), "go").unwrap();
    let end = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < end, "hvac hold run did not finish");
        std::thread::sleep(Duration::from_millis(20));
    }
    line.clear();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    let r: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(r["first_version"], 2);
    assert_eq!(r["second"]["error"], "Forbidden", "{r}");
    let text = r["second"]["text"].as_str().unwrap();
    assert!(
        text.contains("revoked") && text.contains("agent compromised"),
        "{text}"
    );
    // Every request left an audit line, the refused one included.
    assert!(env
        .sc
        .audit_has("\"event\":\"vault_api_request\",\"outcome\":\"denied\""));
}

/// The `bao` CLI with VAULT_ADDR at sidecred's Unix socket (`unix://` addresses are the CLI's
/// own; no TCP needed): kv get (current and pinned), kv metadata get, read of a leased path,
/// lease revoke, and the errors of a missing secret and a bogus token.
fn bao_cli(env: &Env, addr: &str, token: &str) -> Value {
    let home = env.tmp.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let run = |args: &[&str], tok: &str| {
        let mut c = Command::new(std::env::var("SIDECRED_BAO").unwrap());
        c.args(args)
            .env_clear()
            .env("HOME", &home)
            .env("VAULT_ADDR", addr)
            .env("VAULT_TOKEN", tok);
        bounded(c, Duration::from_secs(30))
    };
    let json_of = |args: &[&str]| -> Value {
        let o = run(args, token);
        assert!(o.status.success(), "bao {args:?} at {addr}: {o:?}");
        serde_json::from_slice(&o.stdout).unwrap()
    };
    let cur = json_of(&["kv", "get", "-format=json", "secret/app/db"]);
    let v1 = json_of(&["kv", "get", "-format=json", "-version=1", "secret/app/db"]);
    let meta = json_of(&["kv", "metadata", "get", "-format=json", "secret/app/db"]);
    let leased = json_of(&["read", "-format=json", "database/creds/ro"]);
    let lease_id = leased["lease_id"].as_str().unwrap().to_string();
    let revoke = run(&["lease", "revoke", &lease_id], token);
    let missing = run(&["kv", "get", "secret/app/missing"], token);
    let bogus = run(
        &["kv", "get", "secret/app/db"],
        "s.0123456789abcdefghijklmn",
    );
    let mut keys: Vec<String> = leased["data"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    keys.sort();
    json!({
        "current": [cur["data"]["data"], cur["data"]["metadata"]["version"]],
        "v1": [v1["data"]["data"], v1["data"]["metadata"]["version"]],
        "current_version": meta["data"]["current_version"],
        "leased_keys": keys,
        "leased": [lease_id.starts_with("database/creds/ro/"), leased["renewable"], leased["lease_duration"].as_u64().unwrap() > 0],
        "revoke_ok": revoke.status.success(),
        "missing_exit": missing.status.code(),
        "bogus_exit": bogus.status.code(),
        "bogus_says_403": String::from_utf8_lossy(&bogus.stderr).contains("403"),
    })
}

#[tokio::test]
async fn bao_cli_and_vaultrs_see_the_same_as_against_openbao() {
    let env = setup().await;
    let sock = env.sidecred_addr();
    // Logging in with the bao CLI itself: `write` on the login path returns the client token.
    let home = env.tmp.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let mut c = Command::new(std::env::var("SIDECRED_BAO").unwrap());
    c.args(["write", "-f", "-field=token", "auth/sidecred/login"])
        .env_clear()
        .env("HOME", &home)
        .env("VAULT_ADDR", &sock);
    let o = bounded(c, Duration::from_secs(30));
    assert!(o.status.success(), "{o:?}");
    let sc_token = String::from_utf8(o.stdout).unwrap().trim().to_string();
    let want = bao_cli(&env, &env.bao.addr, &env.bao_token().await);
    let got = bao_cli(&env, &sock, &sc_token);
    assert_eq!(got, want, "\nsidecred: {got:#}\nopenbao: {want:#}");
    assert_eq!(got["current"][1], 2);
    assert_eq!(got["missing_exit"], 2);
    assert_eq!(got["bogus_says_403"], true);
    assert_eq!(got["revoke_ok"], true);

    // vaultrs, over TCP to OpenBao and over the Unix socket to sidecred.
    let want = vaultrs_run(
        vaultrs_client(&env.bao.addr, None, &env.bao_token().await),
        &env.bao.addr,
    )
    .await;
    let sc_token = login_over(&env.vault_sock).await;
    let got = vaultrs_run(
        vaultrs_client("http://localhost", Some(&env.vault_sock), &sc_token),
        "sidecred",
    )
    .await;
    assert_eq!(got, want, "\nsidecred: {got:#}\nopenbao: {want:#}");
    assert_eq!(got["missing"]["code"], 404);
    assert_eq!(got["denied"]["code"], 403);
}

/// POSTs the login path over the Unix socket; the client token.
async fn login_over(sock: &Path) -> String {
    let http = reqwest::Client::builder()
        .unix_socket(sock)
        .build()
        .unwrap();
    let body = http
        .post("http://localhost/v1/auth/sidecred/login")
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let r: Value = serde_json::from_slice(&body).unwrap();
    r["auth"]["client_token"].as_str().unwrap().to_string()
}

fn vaultrs_client(addr: &str, sock: Option<&Path>, token: &str) -> vaultrs::client::VaultClient {
    let settings = vaultrs::client::VaultClientSettingsBuilder::default()
        .address(addr)
        .token(token)
        .timeout(Some(Duration::from_secs(10)))
        .build()
        .unwrap();
    let mut c = vaultrs::client::VaultClient::new(settings).unwrap();
    if let Some(s) = sock {
        let http = reqwest::Client::builder().unix_socket(s).build().unwrap();
        c.http = rustify::clients::reqwest::Client::new(addr, http);
    }
    c
}

fn api_code<T: std::fmt::Debug>(r: Result<T, vaultrs::error::ClientError>) -> Value {
    match r {
        Err(vaultrs::error::ClientError::APIError { code, errors }) => {
            json!({"code": code, "errors_len_is_number": errors.len() < 100})
        }
        other => json!(format!("unexpected: {other:?}")),
    }
}

async fn vaultrs_run(c: vaultrs::client::VaultClient, what: &str) -> Value {
    use vaultrs::{kv2, token};
    let cur: Value = kv2::read(&c, "secret", "app/db")
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    let v1: Value = kv2::read_version(&c, "secret", "app/db", 1).await.unwrap();
    let meta = kv2::read_metadata(&c, "secret", "app/db").await.unwrap();
    let me = token::lookup_self(&c).await.unwrap();
    // (vaultrs' sys::health cannot parse OpenBao 2.7's answer, which has no
    // `performance_standby`; hvac checks health above.)
    let missing = api_code(kv2::read::<Value>(&c, "secret", "app/missing").await);
    let mut bogus = c;
    vaultrs::client::Client::set_token(&mut bogus, "s.0123456789abcdefghijklmn");
    let denied = api_code(kv2::read::<Value>(&bogus, "secret", "app/db").await);
    json!({
        "current": cur,
        "v1": v1,
        "current_version": meta.current_version,
        "policies_nonempty": !me.policies.is_empty(),
        "missing": missing,
        "denied": denied,
    })
}
