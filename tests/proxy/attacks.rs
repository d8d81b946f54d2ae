//! Attackers against the proxy: no token, a forged or another session's token, a token
//! replayed from another uid, malformed and oversized requests, refused destinations, the
//! restricted zone, CR/LF in values, a host resolving elsewhere than its rule expects.

use crate::clients::{assert_no_leak, body, gh_rule, World};
use crate::support::*;
use std::io::{Read, Write};
use std::process::Command;
use std::time::Duration;

fn get_via(port: u16, auth: Option<&str>, target: &str) -> (u16, String) {
    let pa = auth
        .map(|t| format!("Proxy-Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    raw(
        port,
        &format!("GET {target} HTTP/1.1\r\nHost: x\r\n{pa}Connection: close\r\n\r\n"),
    )
}

#[test]
fn credentials_are_required_and_bound_to_session_and_uid() {
    let w = World::new();
    let plain = Nginx::start(Origin {
        tls: None,
        client_ca: None,
        allow_only: None,
    });
    let rules = format!(
        "{}[[proxy.rule]]\nname = \"plain\"\nscheme = \"http\"\nhost = \"127.0.0.1\"\nport = {}\nsecret = \"tools/gh\"\nheader = \"Authorization: Bearer {{value}}\"\n",
        gh_rule(w.origin.port),
        plain.port
    );
    let sc = sidecar(w.port, &w.proxy_lines(""), &body(&rules));
    let target = format!("http://127.0.0.1:{}/p", plain.port);
    let (root_sid, root_tok) = open_session(w.port);
    assert_eq!(get_via(w.port, Some(&root_tok), &target).0, 200);

    // No token, a malformed one, a forged one: 407 with a clear body.
    let (s, b) = get_via(w.port, None, &target);
    assert_eq!(s, 407, "{b}");
    assert!(b.contains("proxy authentication required"), "{b}");
    assert_eq!(get_via(w.port, Some("sct_forged"), &target).0, 407);
    // The session id itself is not a credential.
    assert_eq!(get_via(w.port, Some(&root_sid), &target).0, 407);

    // uid 65534 opens its own session through the proxy (curl as that uid).
    let as_nobody = |args: &[&str]| {
        let out = Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "curl",
                "-s",
                "--max-time",
                "10",
                "-w",
                "\n%{http_code}",
            ])
            .args(args)
            .env_remove("http_proxy")
            .env_remove("HTTP_PROXY")
            .output()
            .unwrap();
        let t = String::from_utf8_lossy(&out.stdout).to_string();
        let (b, c) = t.rsplit_once('\n').unwrap_or(("", ""));
        (c.trim().parse::<u16>().unwrap_or(0), b.to_string())
    };
    let (s, b) = as_nobody(&[
        "-X",
        "POST",
        &format!("http://127.0.0.1:{}/sidecred/v1/session", w.port),
    ]);
    assert_eq!(s, 200, "{b}\n{}", sc.logs());
    let v: serde_json::Value = serde_json::from_str(&b).unwrap();
    let nobody_tok = v["proxy_token"].as_str().unwrap().to_string();

    // Root replaying nobody's token, and nobody replaying root's: 403 (the uid is not the owner).
    let (s, b) = get_via(w.port, Some(&nobody_tok), &target);
    assert_eq!(s, 403, "{b}");
    assert!(b.contains("belongs to another caller"), "{b}");
    let (s, b) = as_nobody(&["--proxy", &proxy_url(w.port, &root_tok), &target]);
    assert_eq!(s, 403, "{b}");
    // nobody with its own token: through, and its own policy applies (tools/gh is granted).
    let (s, b) = as_nobody(&["--proxy", &proxy_url(w.port, &nobody_tok), &target]);
    assert_eq!(s, 200, "{b}");

    // A second session's token on a connection already bound to the first: refused.
    let (_, other_tok) = open_session(w.port);
    let mut c = std::net::TcpStream::connect(("127.0.0.1", w.port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let one = |c: &mut std::net::TcpStream, tok: &str| {
        let req = format!(
            "GET {target} HTTP/1.1\r\nHost: x\r\nProxy-Authorization: Bearer {tok}\r\n\r\n"
        );
        c.write_all(req.as_bytes()).unwrap();
        let mut buf = vec![0u8; 4096];
        let n = c.read(&mut buf).unwrap();
        parse(&buf[..n]).0
    };
    assert_eq!(one(&mut c, &root_tok), 200);
    assert_eq!(one(&mut c, &other_tok), 403);
    // Audit: refusals are recorded, with no value anywhere.
    assert!(sc.audit_has("\"outcome\":\"denied\""));
    assert_no_leak(&sc);
}

#[test]
fn bad_input_gets_a_clear_4xx() {
    let w = World::new();
    let plain = Nginx::start(Origin {
        tls: None,
        client_ca: None,
        allow_only: None,
    });
    let rules = format!(
        "{}[[proxy.rule]]\nname = \"crlf\"\nscheme = \"http\"\nhost = \"127.0.0.1\"\nport = {p}\npath_prefix = \"/crlf\"\nsecret = \"tools/crlf\"\nheader = \"Authorization: Bearer {{value}}\"\n\
         [[proxy.rule]]\nname = \"pinned\"\nscheme = \"http\"\nhost = \"localhost\"\nport = {p}\naddresses = [\"10.9.9.9\"]\nsecret = \"tools/gh\"\nquery = \"key\"\n\
         [[proxy.rule]]\nname = \"vault\"\nscheme = \"http\"\nhost = \"127.0.0.1\"\nport = {p}\npath_prefix = \"/vault\"\nsecret = \"tools/vault\"\nheader = \"X-Key: {{value}}\"\n\
         [[proxy.rule]]\nname = \"plain\"\nscheme = \"http\"\nhost = \"127.0.0.1\"\nport = {p}\n",
        gh_rule(w.origin.port),
        p = plain.port
    );
    let sc = sidecar(
        w.port,
        &w.proxy_lines("max_header_bytes = 8192\n"),
        &body(&rules),
    );
    let (_, tok) = open_session(w.port);
    let base = format!("http://127.0.0.1:{}", plain.port);

    // Malformed request lines and headers.
    for bad in [
        "GARBAGE\r\n\r\n",
        "GET /\x01 HTTP/1.1\r\nHost: x\r\n\r\n",
        "GET http://x/ HTTP/1.1\r\nBad Header\r\n\r\n",
    ] {
        let (s, b) = raw(w.port, bad);
        assert!((400..500).contains(&s), "{bad:?} -> {s} {b}");
    }
    let (s, _) = raw(w.port, "GARBAGE\r\n\r\n");
    assert_eq!(s, 400);
    // Oversized headers: 431.
    let big = format!(
        "GET {base}/ HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(20_000)
    );
    assert_eq!(raw(w.port, &big).0, 431);

    // CONNECT to a destination no rule names, and to a port no rule allows.
    let conn = |target: &str| {
        raw(w.port, &format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nProxy-Authorization: Bearer {tok}\r\n\r\n"))
    };
    let (s, b) = conn("example.invalid:443");
    assert_eq!(s, 403, "{b}");
    assert!(b.contains("no rule names example.invalid:443"), "{b}");
    let (s, b) = conn(&format!("localhost:{}", w.origin.port + 1));
    assert_eq!(s, 403, "{b}");
    let (s, _) = conn("localhost");
    assert_eq!(s, 400);

    // A value with CR/LF never goes into a header.
    let (s, b) = get_via(w.port, Some(&tok), &format!("{base}/crlf"));
    assert_eq!(s, 400, "{b}");
    assert!(b.contains("contains CR, LF or NUL"), "{b}");
    assert!(!b.contains("Evil"));
    assert!(!plain.access_log().contains("/crlf"));
    // A placeholder trying the same: refused (this rule lists none).
    let req = format!("GET {base}/x HTTP/1.1\r\nHost: x\r\nX-Api: {{{{sidecred:tools/crlf}}}}\r\nProxy-Authorization: Bearer {tok}\r\nConnection: close\r\n\r\n");
    assert_eq!(raw(w.port, &req).0, 403);

    // The host resolves to an address the rule does not expect.
    let (s, b) = get_via(
        w.port,
        Some(&tok),
        &format!("http://localhost:{}/q", plain.port),
    );
    assert_eq!(s, 403, "{b}");
    assert!(b.contains("which the rule does not allow"), "{b}");

    // Restricted zone: policy does not grant it to root here, so refused.
    let (s, b) = get_via(w.port, Some(&tok), &format!("{base}/vault"));
    assert_eq!(s, 403, "{b}");
    assert!(!plain.access_log().contains("/vault"));
    assert!(!b.contains("restricted-CANARY"));

    // The plain rule (no secret) still works: nothing injected.
    assert_eq!(get_via(w.port, Some(&tok), &format!("{base}/ok")).0, 200);
    assert!(!plain.access_log().contains("restricted-CANARY"));
    assert_no_leak(&sc);
}
