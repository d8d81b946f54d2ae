//! The proxy on a Unix socket: callers identified by SO_PEERCRED, the same sessions and tokens
//! as on TCP; another uid is refused by the socket's mode before it can say anything.

use crate::clients::{assert_no_leak, body};
use crate::common::free_port;
use crate::support::*;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

fn over_unix(path: &std::path::Path, req: &str) -> (u16, String) {
    let mut s = UnixStream::connect(path).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(req.as_bytes()).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    parse(&out)
}

#[test]
fn unix_socket_serves_sessions_and_injection() {
    let plain = Nginx::start(Origin {
        tls: None,
        client_ca: None,
        allow_only: None,
    });
    let tmp = tempfile::tempdir().unwrap();
    let sock = tmp.path().join("p/proxy.sock");
    let port = free_port(false);
    let rules = format!(
        "[[proxy.rule]]\nname = \"plain\"\nscheme = \"http\"\nhost = \"127.0.0.1\"\nport = {}\nsecret = \"tools/gh\"\nheader = \"Authorization: Bearer {{value}}\"\n",
        plain.port
    );
    let lines = format!("socket = \"{}\"\nsocket_mode = \"0600\"\n", sock.display());
    let sc = sidecar(port, &lines, &body(&rules));
    let (s, b) = over_unix(&sock, "POST /sidecred/v1/session HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    assert_eq!(s, 200, "{b}\n{}", sc.logs());
    let v: serde_json::Value = serde_json::from_str(&b).unwrap();
    let tok = v["proxy_token"].as_str().unwrap();
    let get = |tok: &str| {
        format!("GET http://127.0.0.1:{}/u HTTP/1.1\r\nHost: x\r\nProxy-Authorization: Bearer {tok}\r\nConnection: close\r\n\r\n", plain.port)
    };
    assert_eq!(over_unix(&sock, &get(tok)).0, 200);
    assert!(plain.logged(&format!("\"GET /u HTTP/1.1\" 200 auth=\"Bearer {CANARY}\"")));
    // The same session's token works on TCP too (same uid); a missing one does not.
    assert_eq!(raw(port, &get(tok)).0, 200);
    assert_eq!(over_unix(&sock, &get("sct_none")).0, 407);
    // Another uid cannot even connect (mode 0600).
    let out = std::process::Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "curl",
            "-s",
            "--max-time",
            "5",
            "--unix-socket",
        ])
        .arg(&sock)
        .arg("http://x/sidecred/v1/ca.pem")
        .output()
        .unwrap();
    assert!(!out.status.success(), "uid 65534 reached the socket");
    assert_no_leak(&sc);
}
