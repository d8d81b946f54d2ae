//! KV v2 LIST through the Vault-compatible endpoint, against the real thing: hvac's
//! `list_secrets` (Unix socket and loopback TCP) and `bao kv list` run unchanged against an
//! OpenBao dev server and against sidecred fronting it, and must see the same keys, folders and 404s. Then the attacker's side:
//! a second rule's caller sees only its own keys, a token does not list for another uid, and
//! `..`, NUL and over-long paths are a clear 4xx with an audit line.

mod common;

use common::openbao::{token_file_backend, write_file, OpenBao, OPEN_POLICY};
use common::*;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// What both sides hold: OpenBao's KV and sidecred's catalog name the same secrets.
const SECRETS: &[&str] = &[
    "app/db",
    "app/cache",
    "app/nested/x",
    "tools/gh",
    "team-b/key",
];

struct Env {
    bao: OpenBao,
    sc: Sidecar,
    sock: PathBuf,
    /// The same endpoint on loopback TCP.
    tcp: String,
    tmp: tempfile::TempDir,
}

async fn setup() -> Env {
    use std::os::unix::fs::PermissionsExt;
    let bao = OpenBao::start();
    for s in SECRETS {
        bao.kv_put(s, json!({"value": format!("v-{s}")})).await;
    }
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let tf = write_file(tmp.path(), "token", &bao.root_token);
    let sock = tmp.path().join("v/vault.sock");
    let port = free_port(false);
    let mut body = token_file_backend(&bao, &tf, "");
    for s in SECRETS {
        body.push_str(&format!(
            "\n[[secret]]\nname = \"{s}\"\nbackend = \"bao\"\npath = \"{s}\"\nzone = \"internal\"\n"
        ));
    }
    body.push_str(OPEN_POLICY);
    body.push_str(&format!(
        r#"
[[policy.workload]]
name = "team-b"
uids = [65534]
secrets = ["team-b/*"]

[vault_api]
socket = "{}"
socket_mode = "0666"
tcp = "127.0.0.1:{port}"
[[vault_api.kv]]
mount = "secret"
path = "app/*"
secret = "app/*"
[[vault_api.kv]]
mount = "secret"
path = "tools/gh"
secret = "tools/gh"
[[vault_api.kv]]
mount = "secret"
path = "team-b/key"
secret = "team-b/key"
"#,
        sock.display()
    ));
    let sc = Sidecar::start(&body);
    assert!(
        wait_for(Duration::from_secs(5), || sock.exists().then_some(())).is_some(),
        "vault socket missing:\n{}",
        sc.logs()
    );
    Env {
        bao,
        sc,
        sock,
        tcp: format!("http://127.0.0.1:{port}"),
        tmp,
    }
}

fn hvac_list(addr: &str, token: Option<&str>) -> Value {
    let py = std::env::var("SIDECRED_PYTHON").expect("SIDECRED_PYTHON: source the peers env.sh");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vault/hvac_list.py");
    let mut c = Command::new(py);
    c.arg(script).env("VAULT_ADDR", addr);
    match token {
        Some(t) => c.env("VAULT_TOKEN", t),
        None => c.env("LOGIN_PATH", "auth/sidecred/login"),
    };
    let o = c.output().unwrap();
    assert!(
        o.status.success(),
        "hvac against {addr}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).unwrap()
}

/// `bao kv list` of each path: its JSON keys, or its exit code.
fn bao_list(home: &Path, addr: &str, token: &str) -> Value {
    let mut out = serde_json::Map::new();
    for p in ["secret/", "secret/app", "secret/app/nested/", "secret/nope"] {
        let o = Command::new(std::env::var("SIDECRED_BAO").unwrap())
            .args(["kv", "list", "-format=json", p])
            .env_clear()
            .env("HOME", home)
            .env("VAULT_ADDR", addr)
            .env("VAULT_TOKEN", token)
            .output()
            .unwrap();
        let v = if o.status.success() {
            serde_json::from_slice(&o.stdout).unwrap()
        } else {
            json!({"exit": o.status.code()})
        };
        out.insert(p.to_string(), v);
    }
    Value::Object(out)
}

/// Logs in over the socket as `uid` (curl run as that uid); the client token.
fn login_as(sock: &Path, uid: u32) -> String {
    let (body, code) = curl_vault_as(uid, sock, "POST", "/v1/auth/sidecred/login", None);
    assert_eq!(code, "200", "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    v["auth"]["client_token"].as_str().unwrap().to_string()
}

fn keys(body: &str) -> Value {
    serde_json::from_str::<Value>(body).unwrap()["data"]["keys"].clone()
}

#[tokio::test]
async fn hvac_and_bao_list_the_same_keys_as_against_openbao() {
    let env = setup().await;
    let want = hvac_list(&env.bao.addr, Some(&env.bao.root_token));
    let got = hvac_list(&format!("unix://{}", env.sock.display()), None);
    assert_eq!(got, want, "\nsidecred: {got:#}\nopenbao: {want:#}");
    assert_eq!(got["list:"]["keys"], json!(["app/", "team-b/", "tools/"]));
    assert_eq!(got["list:app"]["keys"], json!(["cache", "db", "nested/"]));
    assert_eq!(got["list:nope"]["error"], "InvalidPath");
    let tcp = hvac_list(&env.tcp, None);
    assert_eq!(tcp, want, "\nsidecred over TCP: {tcp:#}\nopenbao: {want:#}");

    let home = env.tmp.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let token = login_as(&env.sock, 0);
    let want = bao_list(&home, &env.bao.addr, &env.bao.root_token);
    let got = bao_list(&home, &format!("unix://{}", env.sock.display()), &token);
    assert_eq!(got, want, "\nsidecred: {got:#}\nopenbao: {want:#}");
    assert_eq!(got["secret/app/nested/"], json!(["x"]));
    assert_eq!(got["secret/nope"]["exit"], 2);
}

#[tokio::test]
async fn a_caller_lists_only_what_its_rule_reads_and_bad_paths_are_clear_4xx() {
    let env = setup().await;
    let (sock, sc) = (&env.sock, &env.sc);
    let root = login_as(sock, 0);
    let theirs = login_as(sock, 65534);
    let list = |uid, path: &str, tok: &str| curl_vault_as(uid, sock, "LIST", path, Some(tok));

    // uid 65534's rule reads team-b/* only: nothing of root's keys shows, not even as folders.
    let (body, code) = list(65534, "/v1/secret/metadata/", &theirs);
    assert_eq!(
        (code.as_str(), keys(&body)),
        ("200", json!(["team-b/"])),
        "{body}"
    );
    let (body, code) = list(65534, "/v1/secret/metadata/team-b", &theirs);
    assert_eq!(
        (code.as_str(), keys(&body)),
        ("200", json!(["key"])),
        "{body}"
    );
    for dir in ["app/", "app/nested/", "tools"] {
        let (body, code) = list(65534, &format!("/v1/secret/metadata/{dir}"), &theirs);
        assert_eq!(
            (code.as_str(), body.as_str()),
            ("404", r#"{"errors":[]}"#),
            "{dir}"
        );
        let path = format!("/v1/secret/metadata/{dir}?list=true");
        let (body, code) = curl_vault_as(65534, sock, "GET", &path, Some(&theirs));
        assert_eq!(
            (code.as_str(), body.as_str()),
            ("404", r#"{"errors":[]}"#),
            "{dir}"
        );
    }
    // Root's token lists nothing for uid 65534, nor uid 65534's for root; a bogus one neither.
    let (body, code) = list(65534, "/v1/secret/metadata/", &root);
    assert_eq!(code, "403", "{body}");
    assert!(!body.contains("app"), "{body}");
    assert_eq!(list(0, "/v1/secret/metadata/", &theirs).1, "403");
    assert_eq!(
        list(0, "/v1/secret/metadata/", "s.0123456789abcdefghijklmn").1,
        "403"
    );
    assert_eq!(list(0, "/v1/secret/metadata/", &root).1, "200");

    // Bad paths: a 400 naming the problem, and an audit line.
    let long = format!("/v1/secret/metadata/{}", "a/".repeat(300));
    for (path, why) in [
        ("/v1/secret/metadata/../app/", "segment"),
        ("/v1/secret/metadata/app/%2e%2e/", "segment"),
        ("/v1/secret/metadata/a%00b/", "NUL"),
        (long.as_str(), "the limit is 512"),
        (
            "/v1/secret/metadata/app?list=maybe",
            "invalid value for `list`",
        ),
    ] {
        let method = if path.contains("list=") {
            "GET"
        } else {
            "LIST"
        };
        let (body, code) = curl_vault_as(0, sock, method, path, Some(&root));
        assert_eq!(code, "400", "{path}: {body}");
        let msg = serde_json::from_str::<Value>(&body).unwrap()["errors"][0]
            .as_str()
            .unwrap()
            .to_string();
        assert!(msg.contains(why), "{path}: {msg}");
        let route = path.split('?').next().unwrap();
        let head = format!("{method} {}", &route[..route.len().min(256)]);
        let audited = wait_for(Duration::from_secs(3), || {
            sc.audit_events()
                .iter()
                .any(|e| {
                    let d = e["detail"].as_str().unwrap_or("");
                    e["event"] == "vault_api_request"
                        && e["outcome"] == "invalid"
                        && d.starts_with(&head)
                        && d.contains("-> 400")
                })
                .then_some(())
        });
        assert!(
            audited.is_some(),
            "no audit line for {path}:\n{}",
            sc.audit_text()
        );
    }
    // LIST where OpenBao refuses it too: the data/ tree is 405, a non-KV v2 path 404.
    assert_eq!(list(0, "/v1/secret/data/app/", &root).1, "405");
    assert_eq!(list(0, "/v1/secret/app/", &root).1, "404");
    // Listings are audited, the hidden ones included (as not found).
    assert!(sc.audit_has("LIST /v1/secret/metadata/app/ -> 404"));
}
