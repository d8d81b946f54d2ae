//! The Vault-compatible endpoint under attack and under sidecred's own rules: a token stolen by
//! another uid, a uid no rule admits, malformed and oversized requests (each a precise 4xx and
//! an audit line, never a 500 or a hang), rotation grace, call scope, and a canary value that
//! never reaches a log or the audit log.

mod common;

use common::*;
use serde_json::Value;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const CANARY: &str = "CANARY-vault-9e1d44";

/// A dev-backed sidecar with the Vault endpoint on a socket anyone may reach (0666, in a
/// directory others can traverse), and a rule admitting uid 65534 to `app/*`.
fn start(log: &str) -> (Sidecar, PathBuf, tempfile::TempDir) {
    start_with(log, "")
}

fn start_with(log: &str, vault_extra: &str) -> (Sidecar, PathBuf, tempfile::TempDir) {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let sock = tmp.path().join("v/vault.sock");
    let extra = format!(
        r#"
[[secret]]
name = "app/canary"
backend = "dev"
path = "canary"
zone = "internal"

[vault_api]
socket = "{}"
socket_mode = "0666"
{vault_extra}
[[vault_api.kv]]
mount = "secret"
path = "app/*"
secret = "app/*"
[[vault_api.leased]]
path = "database/creds/call"
secret = "db/call"
"#,
        sock.display()
    );
    let body = dev_body(&format!(", \"canary\" = \"{CANARY}\""), &extra).replace(
        "[[policy.admin]]",
        "[[policy.workload]]\nname = \"nobody\"\nuids = [65534]\nsecrets = [\"app/*\"]\n\n[[policy.admin]]",
    );
    let sc = Sidecar::builder(&body)
        .server("handshake_timeout = \"1s\"")
        .log(log)
        .start();
    assert!(wait_for(Duration::from_secs(5), || sock.exists().then_some(())).is_some());
    (sc, sock, tmp)
}

/// One raw exchange: sends `req`, reads until the server closes or 5 s pass.
fn raw(sock: &Path, req: &[u8]) -> (String, Duration) {
    let t = Instant::now();
    let mut s = UnixStream::connect(sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = s.write_all(req);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    (String::from_utf8_lossy(&out).into_owned(), t.elapsed())
}

fn get(sock: &Path, path: &str, token: Option<&str>) -> String {
    let tok = token
        .map(|t| format!("x-vault-token: {t}\r\n"))
        .unwrap_or_default();
    raw(
        sock,
        format!("GET {path} HTTP/1.1\r\nhost: x\r\n{tok}connection: close\r\n\r\n").as_bytes(),
    )
    .0
}

fn body_json(resp: &str) -> Value {
    let b = resp.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    serde_json::from_str(b).unwrap_or(Value::Null)
}

fn login(sock: &Path) -> String {
    let r = raw(
        sock,
        b"POST /v1/auth/sidecred/login HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
    )
    .0;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    body_json(&r)["auth"]["client_token"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn a_stolen_token_is_useless_to_another_uid_and_unadmitted_uids_are_refused_at_accept() {
    let (sc, sock, _tmp) = start("debug");
    let token = login(&sock);
    let mine = get(&sock, "/v1/secret/data/app/a", Some(&token));
    assert!(mine.starts_with("HTTP/1.1 200"), "{mine}");
    assert_eq!(body_json(&mine)["data"]["data"]["value"], "value-a-1");

    // uid 65534 is admitted (it has its own rule) but the token is root's session.
    let (body, code) = curl_vault_as(65534, &sock, "GET", "/v1/secret/data/app/a", Some(&token));
    assert_eq!(code, "403", "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    let msg = v["errors"][0].as_str().unwrap();
    assert!(msg.contains("is not open for this caller"), "{msg}");
    assert!(!body.contains("value-a-1"));
    let (body, code) = curl_vault_as(
        65534,
        &sock,
        "GET",
        "/v1/auth/token/lookup-self",
        Some(&token),
    );
    assert_eq!(code, "403", "{body}");
    let (_, code) = curl_vault_as(
        65534,
        &sock,
        "GET",
        "/v1/auth/token/revoke-self",
        Some(&token),
    );
    assert_eq!(code, "405", "lookup is GET; revoke-self must be POST");
    // Its own session works, and root cannot use it in turn.
    use std::os::unix::process::CommandExt;
    let o = Command::new("curl")
        .args(["-s", "-X", "POST", "--unix-socket"])
        .arg(&sock)
        .arg("http://x/v1/auth/sidecred/login")
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    let theirs: Value = serde_json::from_slice(&o.stdout).unwrap();
    let theirs = theirs["auth"]["client_token"].as_str().unwrap().to_string();
    let (body, code) = curl_vault_as(65534, &sock, "GET", "/v1/secret/data/app/a", Some(&theirs));
    assert_eq!(code, "200", "{body}");
    let r = get(&sock, "/v1/secret/data/app/a", Some(&theirs));
    assert!(r.starts_with("HTTP/1.1 403"), "{r}");
    // The stolen-token attempt is in the audit log as a denial of uid 65534.
    assert!(wait_for(Duration::from_secs(3), || {
        sc.audit_events()
            .iter()
            .any(|e| {
                e["event"] == "vault_api_request" && e["outcome"] == "denied" && e["uid"] == 65534
            })
            .then_some(())
    })
    .is_some());

    // uid 65533: no rule admits it; refused at accept, in Vault's error shape.
    let (body, code) = curl_vault_as(65533, &sock, "GET", "/v1/sys/health", None);
    assert_eq!(code, "403", "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert!(
        v["errors"][0]
            .as_str()
            .unwrap()
            .contains("no policy.workload rule admits uid=65533"),
        "{body}"
    );
    assert!(sc.audit_has("\"event\":\"connection_refused\""));
}

#[test]
fn bad_input_gets_a_precise_4xx_and_an_audit_line_never_a_500_or_a_hang() {
    let (sc, sock, _tmp) = start("debug");
    let token = login(&sock);
    let t = format!("x-vault-token: {token}\r\n");
    let req = |line: &str, extra: &str| {
        format!("{line}\r\nhost: x\r\n{t}{extra}connection: close\r\n\r\n")
    };
    let big_header = format!("x-pad: {}\r\n", "p".repeat(20_000));
    let chunked = format!(
        "POST /v1/auth/sidecred/login HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n10001\r\n{}\r\n0\r\n\r\n",
        "a".repeat(65537)
    );
    // (request, expected status, words in the answer or the audit detail)
    let cases: Vec<(String, u16, &str)> = vec![
        (
            req("GET /v1/secret/data/../x HTTP/1.1", ""),
            400,
            "`..` segment",
        ),
        (
            req("GET /v1/secret/data/%2e%2e/x HTTP/1.1", ""),
            400,
            "`..` segment",
        ),
        (
            req("GET /v1/secret/data/a%00b HTTP/1.1", ""),
            400,
            "NUL byte",
        ),
        (
            req("GET /v1/secret/data/a%zz HTTP/1.1", ""),
            400,
            "percent-encoding",
        ),
        (req("GET /v1/secret//data/a HTTP/1.1", ""), 400, "empty"),
        (
            "GET /v1/secret/data/a\0b HTTP/1.1\r\nhost: x\r\n\r\n".into(),
            400,
            "malformed HTTP request",
        ),
        (
            req("GET /v1/nomount/data/x HTTP/1.1", ""),
            404,
            "no handler for route",
        ),
        (
            req("GET /v2/secret/data/app/a HTTP/1.1", ""),
            404,
            "no handler for route",
        ),
        (
            req("GET /v1/secret/app/a HTTP/1.1", ""),
            404,
            "versioned K/V",
        ),
        (
            req("GET /v1/secret/data/app/a?version=abc HTTP/1.1", ""),
            400,
            "cannot parse",
        ),
        (
            req("GET /v1/secret/data/app/a?version=%zz HTTP/1.1", ""),
            400,
            "malformed query",
        ),
        (
            req("GET /v1/secret/data/app/nope HTTP/1.1", ""),
            404,
            "unknown secret",
        ),
        (
            req(
                "POST /v1/secret/data/app/a HTTP/1.1",
                "content-length: 2\r\n",
            ) + "{}",
            405,
            "unsupported operation",
        ),
        (
            req("GET /v1/secret/metadata/app/a?list=maybe HTTP/1.1", ""),
            400,
            "invalid value for `list`",
        ),
        (
            req(
                "PUT /v1/auth/sidecred/login HTTP/1.1",
                "content-length: 5\r\n",
            ) + "{nope",
            400,
            "failed to parse JSON",
        ),
        (
            req(
                "PUT /v1/sys/leases/revoke HTTP/1.1",
                "content-length: 2\r\n",
            ) + "{}",
            400,
            "lease_id must be specified",
        ),
        (
            req(
                "PUT /v1/sys/leases/renew HTTP/1.1",
                "content-length: 27\r\n",
            ) + r#"{"lease_id":"elsewhere/x1"}"#,
            400,
            "lease not found",
        ),
        (
            "GET /v1/secret/data/app/a HTTP/1.1\r\nhost: x\r\nx-vault-token: ../../etc\r\n\r\n"
                .into(),
            403,
            "malformed client token",
        ),
        (
            req(
                "GET /v1/secret/data/app/a HTTP/1.1",
                "x-vault-wrap-ttl: 60s\r\n",
            ),
            400,
            "wrapping is not supported",
        ),
        (
            req("GET /v1/secret/data/app/a HTTP/1.1", &big_header),
            431,
            "larger than the limit",
        ),
        (
            req(
                "POST /v1/auth/sidecred/login HTTP/1.1",
                "content-length: 100000\r\n",
            ),
            413,
            "larger than 65536 bytes",
        ),
        (chunked, 413, "larger than 65536 bytes"),
    ];
    for (r, status, words) in &cases {
        let (resp, took) = raw(&sock, r.as_bytes());
        assert!(
            resp.starts_with(&format!("HTTP/1.1 {status} ")),
            "{:?} -> {resp}",
            &r[..r.len().min(80)]
        );
        assert!(took < Duration::from_secs(3), "{r:?} took {took:?}");
        let detail_has = |w: &str| {
            sc.audit_events().iter().any(|e| {
                e["event"]
                    .as_str()
                    .is_some_and(|ev| ev == "vault_api_request")
                    && e["detail"].as_str().is_some_and(|d| d.contains(w))
            })
        };
        assert!(
            wait_for(Duration::from_secs(3), || detail_has(words).then_some(())).is_some(),
            "no audit line saying {words:?} for {:?}",
            &r[..r.len().min(80)]
        );
        if *status != 431 && !words.contains("malformed HTTP") {
            assert!(resp.contains("{\"errors\":[\""), "{resp}");
        }
    }
    // Headers that never finish: the connection closes at the header timeout, audited.
    let (resp, took) = raw(&sock, b"GET /v1/sys/health HTTP/1.1\r\nhost: x\r\n");
    assert!(!resp.contains("200"), "{resp}");
    assert!(took < Duration::from_secs(4), "held for {took:?}");
    assert!(sc.audit_has("not received within the header timeout"));
    // A body that never comes: 408.
    let (resp, took) = raw(
        &sock,
        req(
            "PUT /v1/auth/sidecred/login HTTP/1.1",
            "content-length: 10\r\n",
        )
        .as_bytes(),
    );
    assert!(resp.starts_with("HTTP/1.1 408"), "{resp}");
    assert!(took < Duration::from_secs(4));
    // The server is still fine, and never answered 5xx.
    assert!(get(&sock, "/v1/sys/health", None).starts_with("HTTP/1.1 200"));
    assert!(!sc.audit_text().contains("-> 5"), "a 5xx was audited");
}

#[test]
fn rotation_grace_call_scope_and_the_canary_stay_sidecreds() {
    let (mut sc, sock, _tmp) = start("trace");
    let token = login(&sock);
    let r = get(&sock, "/v1/secret/data/app/canary", Some(&token));
    assert_eq!(body_json(&r)["data"]["data"]["value"], CANARY, "{r}");

    // Rotation: the new version is current at once; the old one is served by pinned reads for
    // the grace window (app/a: 2 s), then refused.
    let before = body_json(&get(&sock, "/v1/secret/data/app/a", Some(&token)));
    let v1 = before["data"]["metadata"]["version"].as_u64().unwrap();
    ok_stdout(&sc.cli(&["rotate", "app/a", "--grace", "2s"]));
    let after = body_json(&get(&sock, "/v1/secret/data/app/a", Some(&token)));
    assert_eq!(after["data"]["metadata"]["version"].as_u64(), Some(v1 + 1));
    let meta = body_json(&get(&sock, "/v1/secret/metadata/app/a", Some(&token)));
    assert_eq!(meta["data"]["current_version"].as_u64(), Some(v1 + 1));
    assert!(
        meta["data"]["versions"][v1.to_string()].is_object(),
        "{meta}"
    );
    let pinned = format!("/v1/secret/data/app/a?version={v1}");
    assert!(get(&sock, &pinned, Some(&token)).starts_with("HTTP/1.1 200"));
    let gone = wait_for(Duration::from_secs(6), || {
        let r = get(&sock, &pinned, Some(&token));
        r.starts_with("HTTP/1.1 404").then_some(r)
    })
    .expect("the old version is retired after grace");
    assert!(gone.contains("retired"), "{gone}");

    // Call scope: each leased read is a credential of its own; revoking one ends only it.
    let read = || body_json(&get(&sock, "/v1/database/creds/call", Some(&token)));
    let (a, b) = (read(), read());
    assert_ne!(a["lease_id"], b["lease_id"]);
    assert_ne!(a["data"], b["data"]);
    assert_eq!(a["renewable"], true);
    let lease_op = |op: &str, id: &Value| {
        let body = format!("{{\"lease_id\":{id}}}");
        raw(
            &sock,
            format!(
                "PUT /v1/sys/leases/{op} HTTP/1.1\r\nhost: x\r\nx-vault-token: {token}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        )
        .0
    };
    assert!(lease_op("revoke", &a["lease_id"]).starts_with("HTTP/1.1 204"));
    assert!(lease_op("renew", &a["lease_id"]).starts_with("HTTP/1.1 400"));
    let renewed = lease_op("renew", &b["lease_id"]);
    assert!(renewed.starts_with("HTTP/1.1 200"), "{renewed}");
    assert!(body_json(&renewed)["lease_duration"].as_u64().unwrap() > 0);

    // revoke-self closes the session: the token is dead afterwards.
    let r = raw(
        &sock,
        format!("POST /v1/auth/token/revoke-self HTTP/1.1\r\nhost: x\r\nx-vault-token: {token}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").as_bytes(),
    )
    .0;
    assert!(r.starts_with("HTTP/1.1 204"), "{r}");
    assert!(get(&sock, "/v1/secret/data/app/a", Some(&token)).starts_with("HTTP/1.1 403"));

    // The canary went out only in its reply: not in the log (at TRACE), not in the audit log.
    sc.stop();
    let logs = sc.logs();
    assert!(logs.contains("vault"), "the log is empty?");
    assert!(!logs.contains(CANARY), "canary in the log");
    assert!(!sc.audit_text().contains(CANARY), "canary in the audit log");
    assert!(
        !sc.audit_text().contains(&token),
        "a raw client token in the audit log"
    );
}

/// curl over loopback TCP as `uid`.
fn curl_tcp_as(uid: u32, url: &str, token: &str) -> (String, String) {
    use std::os::unix::process::CommandExt;
    let o = Command::new("curl")
        .args(["-s", "-w", "\n%{http_code}", "--max-time", "10", url])
        .arg("-H")
        .arg(format!("X-Vault-Token: {token}"))
        .uid(uid)
        .gid(uid)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", ""));
    (body.to_string(), code.to_string())
}

#[test]
fn over_loopback_tcp_the_caller_is_identified_and_a_stolen_token_is_refused() {
    let port = free_port(false);
    let (sc, sock, _tmp) = start_with("debug", &format!("tcp = \"127.0.0.1:{port}\""));
    let url = format!("http://127.0.0.1:{port}/v1/secret/data/app/a");
    assert!(wait_for(Duration::from_secs(5), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).ok()
    })
    .is_some());
    let token = login(&sock);
    // The owner over TCP: identified as uid 0, served.
    let (body, code) = curl_tcp_as(0, &url, &token);
    assert_eq!(code, "200", "{body}");
    assert!(body.contains("value-a-1"));
    // Another uid with the stolen token: 403, nothing of the value.
    let (body, code) = curl_tcp_as(65534, &url, &token);
    assert_eq!(code, "403", "{body}");
    assert!(body.contains("is not open for this caller"), "{body}");
    assert!(!body.contains("value-a-1"));
    // A uid no rule admits: refused at accept, in Vault's shape.
    let (body, code) = curl_tcp_as(65533, &url, &token);
    assert_eq!(code, "403", "{body}");
    assert!(
        body.contains("no policy.workload rule admits uid=65533"),
        "{body}"
    );
    assert!(sc.audit_has("\"uid\":65534"));
}
