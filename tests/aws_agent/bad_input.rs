//! Malformed requests get a precise 4xx and an audit line, never a 500 or a hang; a secret's
//! value never reaches the log (TRACE included) or the audit log.

use crate::aws_support::create;
use crate::moto::Moto;
use crate::support::*;
use std::io::Write;
use std::time::Duration;

const CANARY: &str = "CANARY-aws-agent-7f3e9b1c";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_and_audited() {
    let m = Moto::start();
    create(&m, "app/db", CANARY).await;
    let port = crate::common::free_port(false);
    let b = body(&m, port, &["app/db"], "", ROOT_POLICY);
    let sc = crate::common::Sidecar::builder(&b)
        .env("AWS_TOKEN", TOKEN)
        .log("trace")
        .start();
    assert!(crate::common::wait_for(Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).ok()
    })
    .is_some());
    let (st, body) = get_tok(port, "/secretsmanager/get?secretId=app/db");
    assert_eq!(
        (st, json(&(st, body))["SecretString"].clone()),
        (200, CANARY.into())
    );

    // (request, status, what the body says)
    let cases = [
        ("/secretsmanager/get?secretId=app/../db", 400, "`..`"),
        ("/secretsmanager/get?secretId=app%00db", 400, "NUL"),
        ("/v1/app/%2e%2e/db", 400, "`..`"),
        ("/v1/app%zz", 400, "percent-encoding"),
        (
            "/secretsmanager/get?secretId=app/db&versionId=a/b",
            400,
            "versionId",
        ),
        (
            "/secretsmanager/get?secretId=app/db&versionStage=AWSPENDING",
            400,
            "AWSPENDING",
        ),
        (
            "/secretsmanager/get?secretId=app/db&bogus=1",
            400,
            "unknown parameter: bogus",
        ),
        (
            "/secretsmanager/get?secretId=app/db&roleArn=arn:aws:iam::123456789012:role/x",
            400,
            "roleArn",
        ),
        (
            "/secretsmanager/get?secretId=",
            400,
            "missing parameter secretId",
        ),
        ("/secretsmanager/get?secretId=app/db", 403, "Bad Token"),
    ];
    for (i, (path, status, says)) in cases.iter().enumerate() {
        let headers: &[(&str, &str)] = if i + 1 == cases.len() {
            &[(TOKEN_HEADER, "guess")]
        } else {
            &[(TOKEN_HEADER, TOKEN)]
        };
        let (st, body) = get(port, path, headers);
        assert_eq!(st, *status, "{path}: {body}");
        assert!(body.contains(says), "{path}: {body}");
    }
    // A name longer than any secret's.
    let long = format!("/v1/{}", "a".repeat(300));
    let (st, body) = get_tok(port, &long);
    assert_eq!(st, 400, "{body}");

    // Oversized headers: 431 from the listener, and the connection closes.
    let big = "x".repeat(20 * 1024);
    let (st, _) = get(
        port,
        "/v1/app/db",
        &[(TOKEN_HEADER, TOKEN), ("X-Big", &big)],
    );
    assert_eq!(st, 431);
    // A request line that is not HTTP: 400.
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GARBAGE\x00\x01 / nonsense\r\n\r\n").unwrap();
    let mut raw = Vec::new();
    let _ = std::io::Read::read_to_end(&mut s, &mut raw);
    assert_eq!(parse(&raw).0, 400, "{}", String::from_utf8_lossy(&raw));

    // Every refusal is audited under the endpoint's event (rate limits aside, one per request).
    let refusals = crate::common::wait_for(Duration::from_secs(5), || {
        let n = sc
            .audit_events()
            .iter()
            .filter(|e| e["event"] == "aws_agent_request" && e["uid"] == 0)
            .count();
        (n >= cases.len() + 3).then_some(n)
    });
    assert!(refusals.is_some(), "audit:\n{}", sc.audit_text());
    let audit = sc.audit_text();
    assert!(
        audit.contains("\"outcome\":\"denied\"") && audit.contains("Bad Token"),
        "{audit}"
    );
    assert!(
        !audit.contains("guess"),
        "a wrong token is not written down"
    );

    // The server is still serving, and the value never reached the logs or the audit log.
    assert_eq!(get_tok(port, "/v1/app/db").0, 200);
    let logs = sc.logs();
    assert!(!logs.contains(CANARY), "canary in the log");
    assert!(!audit.contains(CANARY), "canary in the audit log");
    assert!(
        !logs.contains(TOKEN) && !audit.contains(TOKEN),
        "SSRF token written down"
    );
    assert!(!logs.contains("panicked"), "{logs}");
}
