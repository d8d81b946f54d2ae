//! Metrics of the HTTP endpoints through the real binary: requests to the Vault- and
//! AWS-agent-compatible endpoints, errors included, are counted by endpoint, route class and
//! status code, with a latency histogram, in the same scrape as the gRPC metrics; and a secret
//! value served through them never reaches the scrape.

mod common;

use common::*;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

const CANARY: &str = "CANARY-http-metrics-7f3a";
const TOKEN: &str = "ssrf-token-for-metrics";

/// One request with `Connection: close`; the status code and the body.
fn exchange(s: &mut (impl Read + Write), head: &str, body: &[u8]) -> (u16, String) {
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (status, body.to_string())
}

fn vault(sock: &Path, method: &str, path: &str, token: &str, body: &[u8]) -> (u16, String) {
    let mut s = UnixStream::connect(sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nhost: x\r\nx-vault-token: {token}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    exchange(&mut s, &head, body)
}

fn agent(port: u16, path: &str, token: &str) -> u16 {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let head = format!(
        "GET {path} HTTP/1.1\r\nhost: x\r\nX-Aws-Parameters-Secrets-Token: {token}\r\nconnection: close\r\n\r\n"
    );
    exchange(&mut s, &head, b"").0
}

fn scrape(addr: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let (status, body) = exchange(&mut s, "GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n", b"");
    assert_eq!(status, 200, "{body}");
    body
}

/// The value of one series, e.g. `name{a="b"}`; 0 when absent.
fn value(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn http_endpoints_are_counted_by_route_and_status_and_values_never_show() {
    let tmp = tempfile::tempdir().unwrap();
    let sock = tmp.path().join("v/vault.sock");
    let (mport, aport) = (free_port(false), free_port(false));
    let maddr = format!("127.0.0.1:{mport}");
    let extra = format!(
        r#"
[metrics]
listen = "{maddr}"

[[secret]]
name = "app/canary"
backend = "dev"
path = "canary"
zone = "internal"

[vault_api]
socket = "{}"
[[vault_api.kv]]
mount = "secret"
path = "app/*"
secret = "app/*"

[aws_agent_api]
listen = "127.0.0.1:{aport}"
"#,
        sock.display()
    );
    let body = dev_body(&format!(", \"canary\" = \"{CANARY}\""), &extra);
    let sc = Sidecar::builder(&body).env("AWS_TOKEN", TOKEN).start();
    let up = wait_for(Duration::from_secs(10), || {
        (sock.exists() && std::net::TcpStream::connect(("127.0.0.1", aport)).is_ok()).then_some(())
    });
    assert!(up.is_some(), "endpoints not up:\n{}", sc.logs());

    // Vault: health, login, three reads, a missing secret, a listing, an unknown route, and a
    // body over the limit.
    assert_eq!(vault(&sock, "GET", "/v1/sys/health", "", b"").0, 200);
    let (st, login) = vault(&sock, "POST", "/v1/auth/sidecred/login", "", b"");
    assert_eq!(st, 200, "{login}");
    let v: serde_json::Value = serde_json::from_str(&login).unwrap();
    let tok = v["auth"]["client_token"].as_str().unwrap().to_string();
    for _ in 0..3 {
        let (st, body) = vault(&sock, "GET", "/v1/secret/data/app/canary", &tok, b"");
        assert_eq!(st, 200, "{body}");
        assert!(body.contains(CANARY));
    }
    assert_eq!(
        vault(&sock, "GET", "/v1/secret/data/app/missing", &tok, b"").0,
        404
    );
    assert_eq!(
        vault(&sock, "LIST", "/v1/secret/metadata/app/", &tok, b"").0,
        200
    );
    assert_eq!(vault(&sock, "GET", "/v1/nowhere", &tok, b"").0, 404);
    // Headers over the limit: hyper answers 431 before there is a request to route.
    let mut s = UnixStream::connect(&sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let pad = format!(
        "GET /v1/sys/health HTTP/1.1\r\nhost: x\r\nx-pad: {}\r\n\r\n",
        "p".repeat(20_000)
    );
    assert_eq!(exchange(&mut s, &pad, b"").0, 431);
    let big = vec![b'x'; 70_000];
    assert_eq!(
        vault(&sock, "POST", "/v1/auth/sidecred/login", "", &big).0,
        413
    );

    // AWS agent: ping, two reads, a wrong token, a bad refreshNow, an unknown route.
    assert_eq!(agent(aport, "/ping", ""), 200);
    for _ in 0..2 {
        assert_eq!(
            agent(aport, "/secretsmanager/get?secretId=app/canary", TOKEN),
            200
        );
    }
    assert_eq!(agent(aport, "/v1/app/canary", "wrong"), 403);
    let bad = "/secretsmanager/get?secretId=app/canary&refreshNow=maybe";
    assert_eq!(agent(aport, bad, TOKEN), 400);
    assert_eq!(agent(aport, "/nowhere", TOKEN), 404);

    // A refusal by hyper is counted once its connection has ended, which may be just after
    // the client read the answer.
    let line_431 = "sidecred_http_requests_total{endpoint=\"vault\",route=\"other\",code=\"431\"}";
    let m = wait_for(Duration::from_secs(3), || {
        let m = scrape(&maddr);
        m.contains(line_431).then_some(m)
    })
    .unwrap_or_else(|| scrape(&maddr));
    let req = |ep: &str, route: &str, code: &str| {
        value(
            &m,
            &format!("sidecred_http_requests_total{{endpoint=\"{ep}\",route=\"{route}\",code=\"{code}\"}}"),
        )
    };
    for (ep, route, code, n) in [
        ("vault", "health", "200", 1.0),
        ("vault", "login", "200", 1.0),
        ("vault", "kv_read", "200", 3.0),
        ("vault", "kv_read", "404", 1.0),
        ("vault", "kv_list", "200", 1.0),
        ("vault", "other", "404", 1.0),
        ("vault", "login", "413", 1.0),
        ("vault", "other", "431", 1.0),
        ("aws_agent", "ping", "200", 1.0),
        ("aws_agent", "get", "200", 2.0),
        ("aws_agent", "get", "403", 1.0),
        ("aws_agent", "get", "400", 1.0),
        ("aws_agent", "other", "404", 1.0),
    ] {
        assert_eq!(req(ep, route, code), n, "{ep} {route} {code}:\n{m}");
    }
    // Only pairs that happened show up.
    assert_eq!(req("vault", "kv_read", "500"), 0.0);
    assert!(!m.contains("code=\"500\""), "{m}");
    // The latency histogram: one observation per answered request, in cumulative buckets.
    let count = |ep: &str, route: &str| {
        value(
            &m,
            &format!("sidecred_http_request_seconds_count{{endpoint=\"{ep}\",route=\"{route}\"}}"),
        )
    };
    assert_eq!(count("vault", "kv_read"), 4.0, "{m}");
    assert_eq!(count("vault", "other"), 1.0, "a 431 has no latency: {m}");
    assert_eq!(count("aws_agent", "get"), 4.0, "{m}");
    let inf = value(
        &m,
        "sidecred_http_request_seconds_bucket{le=\"+Inf\",endpoint=\"vault\",route=\"kv_read\"}",
    );
    assert_eq!(inf, 4.0, "{m}");
    // One registry: the engine's families are in the same scrape; no value is anywhere in it.
    assert!(m.contains("# TYPE sidecred_http_requests counter"), "{m}");
    assert!(m.contains("# TYPE sidecred_http_request_seconds histogram"));
    assert!(m.contains("# TYPE sidecred_cache_hits counter"));
    assert!(
        !m.contains(CANARY),
        "a secret value reached the metrics:\n{m}"
    );
    assert!(!m.contains(&tok), "a client token reached the metrics");
    assert!(!m.contains(TOKEN), "the SSRF token reached the metrics");
    assert!(m.ends_with("# EOF\n"));
}
