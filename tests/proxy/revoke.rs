//! Revocation mid-stream: a keep-alive connection, a terminated CONNECT tunnel and a plain
//! tunnel are cut within 100 ms of RevokeSession, and the next request gets 403. Rate limits:
//! 429 with Retry-After.

use crate::clients::{assert_no_leak, body, gh_rule, World};
use crate::common::free_port;
use crate::support::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// Reads one response head and its content-length body from a kept-alive connection.
pub fn read_response(c: &mut TcpStream) -> (u16, String) {
    let mut buf = Vec::new();
    let mut b = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        assert_eq!(c.read(&mut b).unwrap(), 1, "connection closed mid-response");
        buf.push(b[0]);
    }
    let head = String::from_utf8_lossy(&buf).to_string();
    let len = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse::<usize>().unwrap())
        })
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    c.read_exact(&mut body).unwrap();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        // Chunks: size line, data, CRLF; a zero-size chunk ends it.
        loop {
            let mut line = Vec::new();
            while !line.ends_with(b"\r\n") {
                assert_eq!(c.read(&mut b).unwrap(), 1, "connection closed mid-chunk");
                line.push(b[0]);
            }
            let n = usize::from_str_radix(String::from_utf8_lossy(&line).trim(), 16).unwrap();
            let mut chunk = vec![0u8; n + 2];
            c.read_exact(&mut chunk).unwrap();
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
    }
    (parse(&buf).0, String::from_utf8_lossy(&body).into())
}

/// Blocks until the peer closes; returns when (None if it stays open for 2 s).
fn closed_at(mut c: TcpStream) -> std::thread::JoinHandle<Option<Instant>> {
    std::thread::spawn(move || {
        c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut b = [0u8; 256];
        loop {
            match c.read(&mut b) {
                Ok(0) => return Some(Instant::now()),
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                    return Some(Instant::now())
                }
                Err(_) => return None,
            }
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_cuts_keepalive_and_tunnels_within_100ms() {
    let w = World::new();
    let plain = Nginx::start(Origin {
        tls: None,
        client_ca: None,
        allow_only: None,
    });
    let other = Nginx::start(Origin {
        tls: None,
        client_ca: None,
        allow_only: None,
    });
    let rules = format!(
        "{}[[proxy.rule]]\nname = \"plain\"\nscheme = \"http\"\nhost = \"127.0.0.1\"\nport = {}\nsecret = \"tools/gh\"\nheader = \"Authorization: Bearer {{value}}\"\n",
        gh_rule(w.origin.port),
        plain.port
    );
    // Unmatched destinations tunnel (to the plain origin's port), to cover byte tunnels too.
    let lines = w.proxy_lines(&format!(
        "unmatched = \"tunnel\"\ntunnel_ports = [{}]\nunmatched_zone = \"internal\"\n",
        other.port
    ));
    let sc = sidecar(w.port, &lines, &body(&rules));
    let (sid, tok) = open_session(w.port);

    // 1. A keep-alive connection with one request answered.
    let mut ka = TcpStream::connect(("127.0.0.1", w.port)).unwrap();
    ka.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let req = format!("GET http://127.0.0.1:{}/ka HTTP/1.1\r\nHost: x\r\nProxy-Authorization: Bearer {tok}\r\n\r\n", plain.port);
    ka.write_all(req.as_bytes()).unwrap();
    assert_eq!(read_response(&mut ka), (200, "origin-ok\n".into()));

    // 2. A terminated tunnel (the rule names localhost:origin) with no request in flight.
    let mut mitm = TcpStream::connect(("127.0.0.1", w.port)).unwrap();
    mitm.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let host = format!("localhost:{}", w.origin.port);
    mitm.write_all(
        format!(
            "CONNECT {host} HTTP/1.1\r\nHost: {host}\r\nProxy-Authorization: Bearer {tok}\r\n\r\n"
        )
        .as_bytes(),
    )
    .unwrap();
    assert_eq!(read_response(&mut mitm).0, 200);

    // 3. A byte tunnel to an unmatched destination.
    let mut tun = TcpStream::connect(("127.0.0.1", w.port)).unwrap();
    tun.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let dest = format!("127.0.0.1:{}", other.port);
    tun.write_all(
        format!(
            "CONNECT {dest} HTTP/1.1\r\nHost: {dest}\r\nProxy-Authorization: Bearer {tok}\r\n\r\n"
        )
        .as_bytes(),
    )
    .unwrap();
    assert_eq!(read_response(&mut tun).0, 200);
    tun.write_all(b"GET /through-tunnel HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert_eq!(read_response(&mut tun), (200, "origin-ok\n".into()));

    let watchers = [closed_at(ka), closed_at(mitm), closed_at(tun)];
    let mut admin = sc.admin().await;
    let sent = Instant::now();
    admin
        .revoke_session(sidecred::api::pb::RevokeSessionRequest {
            session_id: sid.clone(),
            reason: "proxy test".into(),
        })
        .await
        .unwrap();
    let returned = sent.elapsed();
    for (i, h) in watchers.into_iter().enumerate() {
        let at = h
            .join()
            .unwrap()
            .unwrap_or_else(|| panic!("connection {i} still open 2 s after revocation"));
        let after = at.saturating_duration_since(sent);
        eprintln!("connection {i} closed {after:?} after RevokeSession was sent (it returned after {returned:?})");
        assert!(
            after < Duration::from_millis(100),
            "connection {i} closed after {after:?}"
        );
    }
    // The next request with the token: 403, and the reason.
    let (s, b) = raw(w.port, &format!("GET http://127.0.0.1:{}/after HTTP/1.1\r\nHost: x\r\nProxy-Authorization: Bearer {tok}\r\nConnection: close\r\n\r\n", plain.port));
    assert_eq!(s, 403, "{b}");
    assert!(b.contains("session revoked"), "{b}");
    assert!(!plain.access_log().contains("/after"));
    assert_no_leak(&sc);
}

#[test]
fn rate_limits_answer_429_with_retry_after() {
    let plain = Nginx::start(Origin {
        tls: None,
        client_ca: None,
        allow_only: None,
    });
    let port = free_port(false);
    let rules = format!(
        "[[proxy.rule]]\nname = \"plain\"\nscheme = \"http\"\nhost = \"127.0.0.1\"\nport = {}\nsecret = \"tools/gh\"\nheader = \"Authorization: Bearer {{value}}\"\n",
        plain.port
    );
    let sc = sidecar(
        port,
        "session_rate = 0.5\nsession_burst = 3\n",
        &body(&rules),
    );
    let (_, tok) = open_session(port);
    let req = format!("GET http://127.0.0.1:{}/r HTTP/1.1\r\nHost: x\r\nProxy-Authorization: Bearer {tok}\r\nConnection: close\r\n\r\n", plain.port);
    let codes: Vec<u16> = (0..5).map(|_| raw(port, &req).0).collect();
    assert_eq!(&codes[..3], &[200, 200, 200], "{codes:?}");
    assert_eq!(codes[3], 429, "{codes:?}");
    let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.write_all(req.as_bytes()).unwrap();
    let mut out = String::new();
    c.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 429"), "{out}");
    assert!(out.to_ascii_lowercase().contains("retry-after: "), "{out}");
    assert!(out.contains("session rate limit reached"), "{out}");
    // Another session has its own bucket.
    let (_, other) = open_session(port);
    assert_eq!(raw(port, &req.replace(&tok, &other)).0, 200);
    assert_no_leak(&sc);
}

#[test]
fn destination_rate_limit_is_shared_by_sessions() {
    let plain = Nginx::start(Origin {
        tls: None,
        client_ca: None,
        allow_only: None,
    });
    let port = free_port(false);
    let rules = format!(
        "[[proxy.rule]]\nname = \"plain\"\nscheme = \"http\"\nhost = \"127.0.0.1\"\nport = {}\n",
        plain.port
    );
    let _sc = sidecar(
        port,
        "destination_rate = 0.2\ndestination_burst = 2\n",
        &body(&rules),
    );
    let req = |tok: &str| {
        format!("GET http://127.0.0.1:{}/d HTTP/1.1\r\nHost: x\r\nProxy-Authorization: Bearer {tok}\r\nConnection: close\r\n\r\n", plain.port)
    };
    let (_, a) = open_session(port);
    let (_, b) = open_session(port);
    assert_eq!(raw(port, &req(&a)).0, 200);
    assert_eq!(raw(port, &req(&b)).0, 200);
    let (s, body) = raw(port, &req(&a));
    assert_eq!(s, 429, "{body}");
    assert!(
        body.contains("destination rate limit reached; retry after 5s"),
        "{body}"
    );
    assert_eq!(raw(port, &req(&b)).0, 429);
}
