//! The CLI, grpcurl and the kernel-identified caller, through the real binary.

mod common;

use common::*;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::process::Command;

fn grpcurl() -> String {
    std::env::var("SIDECRED_GRPCURL")
        .expect("SIDECRED_GRPCURL: run through scripts/test, which installs grpcurl")
}

#[test]
fn cli_get_and_exit_codes() {
    let sc = Sidecar::start(&dev_body("", ""));
    let out = ok_stdout(&sc.cli(&["get", "app/a"]));
    assert_eq!(out, "value-a-1\n");
    let json: serde_json::Value =
        serde_json::from_str(&ok_stdout(&sc.cli(&["get", "app/a", "--json"]))).unwrap();
    assert_eq!(json["value"], "value-a-1");
    assert_eq!(json["version"], "1");
    assert_eq!(sc.cli(&["get", "no/such"]).status.code(), Some(4));
    assert_eq!(sc.cli(&["get", "../x"]).status.code(), Some(7));
    let dead = sc
        .cli_cmd(&["get", "app/a"])
        .env("SIDECRED_SOCKET", "/nonexistent/x.sock")
        .output()
        .unwrap();
    assert_eq!(dead.status.code(), Some(5), "unavailable socket");

    let sid = ok_stdout(&sc.cli(&["session", "open", "--label", "agent_id=a7", "--ttl", "10m"]))
        .trim()
        .to_string();
    assert!(sid.starts_with("ses_"));
    let listed = ok_stdout(&sc.cli(&["sessions"]));
    assert!(
        listed.contains(&sid) && listed.contains("agent_id=a7"),
        "{listed}"
    );
    ok_stdout(&sc.cli(&["get", "db/dyn", "--session", &sid]));
    let rot = ok_stdout(&sc.cli(&["rotate", "app/a", "--grace", "30s", "--json"]));
    assert!(rot.contains("\"version\":\"2\""), "{rot}");
    let rep = ok_stdout(&sc.cli(&["revoke-session", &sid, "--reason", "test"]));
    assert!(rep.contains("done") && rep.contains("leases"), "{rep}");
    assert_eq!(
        sc.cli(&["get", "app/a", "--session", &sid]).status.code(),
        Some(6)
    );
    let status = ok_stdout(&sc.cli(&["status"]));
    for needle in [
        "BACKEND",
        "dev",
        "ok",
        "revoked sessions     1",
        "config generation 1",
    ] {
        assert!(
            status.contains(needle),
            "status lacks {needle:?}:\n{status}"
        );
    }
}

#[test]
/// grpcurl exactly as a new user types it: no `-authority`, so the socket path arrives as
/// `:authority` on the workload and admin sockets alike.
fn grpcurl_lists_services_by_reflection_and_calls_get_secret() {
    let sc = Sidecar::start(&dev_body("", ""));
    let sock = sc.workload.to_str().unwrap();
    let list = Command::new(grpcurl())
        .args(["-plaintext", "-unix", sock, "list"])
        .output()
        .unwrap();
    let list = ok_stdout(&list);
    for svc in ["sidecred.v1.Broker", "grpc.health.v1.Health"] {
        assert!(list.contains(svc), "{svc} missing from:\n{list}");
    }
    assert!(
        !list.contains("sidecred.v1.Admin"),
        "the workload socket must not offer Admin:\n{list}"
    );
    let open = ok_stdout(
        &Command::new(grpcurl())
            .args([
                "-plaintext",
                "-unix",
                "-d",
                "{\"labels\":{\"agent_id\":\"g\"}}",
                sock,
                "sidecred.v1.Broker/OpenSession",
            ])
            .output()
            .unwrap(),
    );
    let sid = serde_json::from_str::<serde_json::Value>(&open).unwrap()["sessionId"]
        .as_str()
        .unwrap()
        .to_string();
    let req = format!("{{\"name\":\"app/a\",\"sessionId\":\"{sid}\"}}");
    let got = ok_stdout(
        &Command::new(grpcurl())
            .args([
                "-plaintext",
                "-unix",
                "-d",
                &req,
                sock,
                "sidecred.v1.Broker/GetSecret",
            ])
            .output()
            .unwrap(),
    );
    let v: serde_json::Value = serde_json::from_str(&got).unwrap();
    assert_eq!(v["value"], "dmFsdWUtYS0x", "base64 of value-a-1: {got}");
    let health = ok_stdout(
        &Command::new(grpcurl())
            .args(["-plaintext", "-unix", sock, "grpc.health.v1.Health/Check"])
            .output()
            .unwrap(),
    );
    assert!(health.contains("SERVING"), "{health}");
    let admin = ok_stdout(
        &Command::new(grpcurl())
            .args(["-plaintext", "-unix", sc.admin.to_str().unwrap(), "list"])
            .output()
            .unwrap(),
    );
    assert!(
        admin.contains("sidecred.v1.Admin") && !admin.contains("sidecred.v1.Broker"),
        "{admin}"
    );
    for (socket, svc) in [
        (sock, "sidecred.v1.Broker"),
        (sc.admin.to_str().unwrap(), "sidecred.v1.Admin"),
    ] {
        let described = ok_stdout(
            &Command::new(grpcurl())
                .args(["-plaintext", "-unix", socket, "describe", svc])
                .output()
                .unwrap(),
        );
        assert!(described.contains("rpc "), "{svc}: {described}");
    }
    let status = ok_stdout(
        &Command::new(grpcurl())
            .args([
                "-plaintext",
                "-unix",
                sc.admin.to_str().unwrap(),
                "sidecred.v1.Admin/Status",
            ])
            .output()
            .unwrap(),
    );
    assert!(status.contains("configGeneration"), "{status}");
}

#[test]
fn another_uid_is_refused_at_accept_and_audited() {
    let sc = Sidecar::start(&dev_body("", ""));
    // The caller runs as nobody: it must reach the socket, so the test dir and a copy of the binary are world-accessible.
    std::fs::set_permissions(sc.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let bin = sc.dir.path().join("sidecred-cli");
    std::fs::copy(BIN, &bin).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = output_retrying_busy(
        Command::new(&bin)
            .args(["get", "app/a"])
            .env("SIDECRED_SOCKET", &sc.workload)
            // This caller knows sidecred runs as root: without this it would refuse the socket.
            .env("SIDECRED_SERVER_UID", "0")
            .uid(65534)
            .gid(65534),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    // No rule admits uid 65534: its connection is refused at accept. The server's reason rides
    // on the GOAWAY; the client library shows it when the GOAWAY is read before the request is
    // dispatched (a client that loses that race sees only a cancelled call).
    assert!(!out.status.success(), "{err}");
    if err.contains("PermissionDenied") {
        assert_eq!(out.status.code(), Some(3), "denied exit code: {err}");
        assert!(
            err.contains("no policy.workload rule admits uid=65534 gid=65534"),
            "{err}"
        );
    }
    // Lines are written by a background appender: wait for the denial before counting.
    assert!(
        sc.audit_has("\"outcome\":\"denied\""),
        "{}",
        sc.audit_text()
    );
    let denied: Vec<_> = sc
        .audit_events()
        .into_iter()
        .filter(|e| e["outcome"] == "denied")
        .collect();
    assert_eq!(denied.len(), 1, "{}", sc.audit_text());
    assert_eq!(denied[0]["event"], "connection_refused");
    assert_eq!(denied[0]["uid"], 65534);
    assert_eq!(
        denied[0]["exe"],
        bin.to_str().unwrap(),
        "the executable is identified at accept"
    );
    // The admin socket refuses it too (socket mode 0600 keeps it out at the filesystem level).
    let out = Command::new(&bin)
        .args(["status"])
        .env("SIDECRED_ADMIN_SOCKET", &sc.admin)
        .env("SIDECRED_SERVER_UID", "0")
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(5));
    let err = String::from_utf8_lossy(&out.stderr);
    // The CLI says why: the mode and owner that refuse it, who it is, and what to change.
    assert!(
        err.contains("permission denied on")
            && err.contains("uid 65534 gid 65534")
            && (err.contains("mode 0600, owner uid 0") || err.contains("mode 0700, owner uid 0"))
            && (err.contains("admin_socket_mode") || err.contains("search (x) permission")),
        "{err}"
    );
}

/// A socket that is missing or has no server behind it: the CLI names the path, where it came
/// from, and which of the two it is.
#[test]
fn cli_says_why_it_cannot_connect() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.sock");
    let out = Command::new(BIN)
        .args(["get", "app/a"])
        .env("SIDECRED_SOCKET", &missing)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "{err}");
    assert!(
        err.contains("does not exist") && err.contains("SIDECRED_SOCKET variable"),
        "{err}"
    );
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nworkload_socket = \"{}\"\nadmin_socket = \"{}\"\n",
            missing.display(),
            dir.path().join("admin/a.sock").display()
        ),
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["status", "--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("server.admin_socket in {}", cfg.display())),
        "the config key is named: {err}"
    );
    // A socket file with nothing listening (a server that died without cleaning up).
    let stale = dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    let out = Command::new(BIN)
        .args(["get", "app/a", "--socket", stale.to_str().unwrap()])
        .env_remove("SIDECRED_SOCKET")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("nothing is listening on"), "{err}");
}

#[test]
fn check_config_reports_file_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("bad.toml");
    std::fs::write(
        &f,
        "[server]\nworkload_socket = \"/tmp/x/w.sock\"\nadmin_socket = \"/tmp/y/a.sock\"\n\n[backends.dev]\nkind = \"dev\"\n\n[[secret]]\nname = \"a\"\nbackend = \"dev\"\npath = \"a\"\nzone = \"intranet\"\n",
    )
    .unwrap();
    let o = Command::new(BIN)
        .args(["check-config"])
        .arg(&f)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains(&format!("{}:12:8:", f.display())), "{err}");
    assert!(
        err.contains("expected one of `internal`, `external`, `restricted`"),
        "{err}"
    );
    let o = Command::new(BIN)
        .args(["check-config", "config/dev.toml"])
        .output()
        .unwrap();
    assert!(ok_stdout(&o).contains("ok"));
    // serve refuses the bad file with the same message.
    let o = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&f)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains(":12:8:"));
}

#[test]
fn live_socket_is_refused_and_stale_socket_is_cleaned() {
    let mut sc = Sidecar::start(&dev_body("", ""));
    let o = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&sc.config)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("held by a running server"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    sc.kill();
    assert!(
        sc.workload.exists(),
        "SIGKILL leaves the socket file behind"
    );
    sc.spawn();
    assert_eq!(ok_stdout(&sc.cli(&["get", "app/a"])), "value-a-1\n");
    assert_eq!(sc.stop().code(), Some(0));
    assert!(
        !sc.workload.exists() && !sc.admin.exists(),
        "clean shutdown removes sockets"
    );
}

#[test]
fn canary_never_leaks_at_trace() {
    const CANARY: &str = "CANARY-7d1e0f-never-log-me";
    let body = dev_body(&format!(", \"canary\" = \"{CANARY}\""), "[[secret]]\nname = \"app/canary\"\nbackend = \"dev\"\npath = \"canary\"\nzone = \"external\"\ngrace = \"1s\"\n");
    let sc = Sidecar::builder(&body)
        .log("trace")
        .env("SIDECRED_LOG", "trace")
        .start();
    assert_eq!(ok_stdout(&sc.cli(&["get", "app/canary"])).trim(), CANARY);
    let json = ok_stdout(&sc.cli(&["get", "app/canary", "--json"]));
    assert!(json.contains(CANARY));
    // Errors around it: wrong version, bad names, rotation with a supplied value, revocation.
    let mut errors = String::new();
    for args in [
        vec!["get", "app/canary", "--version", "9"],
        vec!["get", "app/canary\u{1}"],
        vec!["get", "nope"],
    ] {
        let o = sc.cli(&args);
        assert!(!o.status.success());
        errors.push_str(&String::from_utf8_lossy(&o.stderr));
    }
    let vf = sc.dir.path().join("newval");
    std::fs::write(&vf, format!("{CANARY}-v2")).unwrap();
    ok_stdout(&sc.cli(&["rotate", "app/canary", "--value-file", vf.to_str().unwrap()]));
    std::fs::remove_file(&vf).unwrap();
    let sid = ok_stdout(&sc.cli(&["session", "open"])).trim().to_string();
    let o = ok_stdout(&sc.cli(&["get", "app/canary", "--session", &sid, "--json"]));
    assert!(
        o.contains(&format!("{CANARY}-v2")) && o.contains("\"previous\":{"),
        "{o}"
    );
    ok_stdout(&sc.cli(&["revoke-session", &sid]));
    errors.push_str(&String::from_utf8_lossy(
        &sc.cli(&["get", "app/canary", "--session", &sid]).stderr,
    ));
    errors.push_str(&ok_stdout(&sc.cli(&["status", "--json"])));
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let logs = sc.logs();
    assert!(
        logs.contains("TRACE") || logs.contains("DEBUG"),
        "trace logging was on"
    );
    for (what, text) in [
        ("logs", logs),
        ("audit", sc.audit_text()),
        ("errors", errors),
    ] {
        assert!(
            !text.contains("CANARY-7d1e0f"),
            "canary leaked into {what}:\n{text}"
        );
    }
}

#[test]
fn readme_dev_config_serves_with_no_external_service() {
    let dir = tempfile::tempdir().unwrap();
    let w = dir.path().join("w.sock");
    let a = dir.path().join("adm/a.sock");
    let mut child = Command::new(BIN)
        .args(["serve", "--config", "config/dev.toml"])
        .env("SIDECRED_SOCKET", &w)
        .env("SIDECRED_ADMIN_SOCKET", &a)
        .env("SIDECRED_AUDIT", dir.path().join("audit.jsonl"))
        .env("SIDECRED_STATE_DIR", dir.path().join("state"))
        .env("SIDECRED_SPIFFE_SOCKET", dir.path().join("spiffe.sock"))
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let up = wait_for(std::time::Duration::from_secs(10), || {
        std::os::unix::net::UnixStream::connect(&w).ok()
    });
    let out = Command::new(BIN)
        .args(["get", "tools/github-token"])
        .env("SIDECRED_SOCKET", &w)
        .output()
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(up.is_some());
    assert_eq!(ok_stdout(&out), "dev-github-token-0001\n");
}
