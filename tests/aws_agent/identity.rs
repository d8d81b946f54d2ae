//! Callers over loopback TCP are identified by the kernel's socket table and /proc, and the
//! workload policy applies to them as to gRPC callers; the Unix socket serves the same API.

use crate::aws_support::create;
use crate::moto::Moto;
use crate::support::*;
use std::time::Duration;

const POLICY: &str = r#"
[[policy.workload]]
name = "root"
uids = [0]
secrets = ["app/*"]

[[policy.workload]]
name = "nobody-curl"
uids = [65534]
exe = "/usr/bin/curl"
secrets = ["nobody/*"]

[[policy.admin]]
name = "root-admin"
uids = [0]
actions = ["*"]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_callers_are_identified_and_policy_applies() {
    let m = Moto::start();
    create(&m, "app/db", "root-value").await;
    create(&m, "nobody/key", "nobody-value").await;
    let port = crate::common::free_port(false);
    let sock = tempfile::tempdir().unwrap();
    let sock_path = sock.path().join("aws/agent.sock");
    let extra = format!(
        "socket = \"{}\"\nsocket_mode = \"0666\"",
        sock_path.display()
    );
    let sc = sidecar(
        &body(&m, port, &["app/db", "nobody/key"], &extra, POLICY),
        port,
    );
    let url = |name: &str| format!("http://127.0.0.1:{port}/secretsmanager/get?secretId={name}");
    let tok = [(TOKEN_HEADER, TOKEN)];

    // This test process (uid 0) over TCP.
    let (st, body) = get_tok(port, "/secretsmanager/get?secretId=app/db");
    assert_eq!(st, 200, "{body}");
    assert_eq!(json(&(st, body))["SecretString"], "root-value");
    let me = std::process::id() as i64;
    assert!(
        audited(&sc, |e| e["event"] == "grant"
            && e["uid"] == 0
            && e["pid"] == me),
        "grant audited with this process's pid:\n{}",
        sc.audit_text()
    );

    // curl as uid 65534: its exe rule admits it to its own secret only.
    let (st, body) = curl_as(65534, &url("nobody/key"), &tok);
    assert_eq!(st, 200, "{body}");
    assert_eq!(json(&(st, body))["SecretString"], "nobody-value");
    let (st, body) = curl_as(65534, &url("app/db"), &tok);
    assert_eq!(st, 403, "{body}");
    let v = json(&(st, body.clone()));
    assert_eq!(v["__type"], "AccessDeniedException", "{body}");
    assert!(!body.contains("root-value"));
    assert!(
        audited(&sc, |e| e["event"] == "grant"
            && e["uid"] == 65534
            && e["exe"] == "/usr/bin/curl"
            && e["secret"] == "nobody/key"),
        "curl's grant audited with its uid and exe:\n{}",
        sc.audit_text()
    );
    assert!(audited(&sc, |e| e["outcome"] == "denied"
        && e["uid"] == 65534
        && e["secret"] == "app/db"));

    // A uid no rule admits is refused at accept, with the reason in the agent's error shape.
    let (st, body) = curl_as(65533, &url("nobody/key"), &tok);
    assert_eq!(st, 403, "{body}");
    assert!(
        body.contains("AccessDeniedException") && body.contains("65533"),
        "{body}"
    );
    assert!(audited(&sc, |e| e["event"] == "connection_refused"
        && e["uid"] == 65533));

    // The Unix socket serves the same API, identified by SO_PEERCRED.
    let mut s = std::os::unix::net::UnixStream::connect(&sock_path).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let (st, body) = send(&mut s, "GET", "/v1/app/db", &tok);
    assert_eq!(st, 200, "{body}");
    assert_eq!(json(&(st, body))["SecretString"], "root-value");
    let out = std::process::Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "curl",
            "-s",
            "--max-time",
            "10",
        ])
        .args(["-w", "\n%{http_code}", "--unix-socket"])
        .arg(&sock_path)
        .args([
            "-H",
            &format!("{TOKEN_HEADER}: {TOKEN}"),
            "http://localhost/v1/nobody/key",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.ends_with("\n200") && text.contains("nobody-value"),
        "{text}"
    );
}

/// Whether an audit line matching `f` is written within a few seconds.
fn audited(sc: &crate::common::Sidecar, f: impl Fn(&serde_json::Value) -> bool) -> bool {
    crate::common::wait_for(Duration::from_secs(5), || {
        sc.audit_events().iter().any(&f).then_some(())
    })
    .is_some()
}

/// An IPv6 loopback listener identifies its callers the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_loopback() {
    let m = Moto::start();
    create(&m, "app/db", "v6-value").await;
    let port = crate::common::free_port(false);
    let b = body(&m, port, &["app/db"], "", ROOT_POLICY).replace(
        &format!("listen = \"127.0.0.1:{port}\""),
        &format!("listen = \"[::1]:{port}\""),
    );
    let sc = crate::common::Sidecar::builder(&b)
        .env("AWS_TOKEN", TOKEN)
        .start();
    let answer = crate::common::wait_for(Duration::from_secs(10), || {
        let mut s = std::net::TcpStream::connect(("::1", port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
        Some(send(&mut s, "GET", "/v1/app/db", &[(TOKEN_HEADER, TOKEN)]))
    })
    .unwrap();
    assert_eq!(answer.0, 200, "{answer:?}\n{}", sc.logs());
    assert_eq!(json(&answer)["SecretString"], "v6-value");
}

/// A non-loopback listen address is refused when the config is loaded.
#[test]
fn non_loopback_listen_is_refused_at_config_load() {
    let dir = tempfile::tempdir().unwrap();
    for addr in ["0.0.0.0:2773", "[::]:2773", "192.0.2.1:2773"] {
        let cfg = dir.path().join("c.toml");
        std::fs::write(
            &cfg,
            format!(
                "[server]\nworkload_socket = \"/run/x/w.sock\"\nadmin_socket = \"/run/y/a.sock\"\n\
                 [aws_agent_api]\nlisten = \"{addr}\"\n[backends.dev]\nkind = \"dev\"\n"
            ),
        )
        .unwrap();
        let out = std::process::Command::new(crate::common::BIN)
            .arg("check-config")
            .arg(&cfg)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{addr}: {err}");
        assert!(
            err.contains("aws_agent_api.listen") && err.contains("not a loopback address"),
            "{addr}: {err}"
        );
    }
}
