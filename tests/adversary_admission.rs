//! Attacks on admission, run against the real binary with the attacker as uid 65534: the
//! fork/exec identity attack (a connection waiting behind capacity, or an exec after accept),
//! a uid no rule admits (burst and flood), the per-uid cap, oversized bodies and the memory of
//! a connection, and an `exe` rule that admits any uid.

mod common;

use common::*;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tonic::Code;

const PYTHON: &str = "/usr/bin/python3";

/// Writes an attacker script where uid 65534 can read it, and opens the sidecar's directory.
fn script(sc: &Sidecar, name: &str, text: &str) -> PathBuf {
    std::fs::set_permissions(sc.dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let p = sc.dir.path().join(name);
    std::fs::write(&p, text).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
    p
}

/// A command run as uid/gid 65534.
fn nobody(prog: &str) -> Command {
    let mut c = Command::new(prog);
    // The CLI run as nobody knows the sidecar under test runs as root (it checks the server's uid).
    c.uid(65534)
        .gid(65534)
        .stdin(Stdio::null())
        .env("SIDECRED_SERVER_UID", "0");
    c
}

/// A directory uid 65534 may write (for the attacker's relay socket and step files).
fn shared_dir() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    d
}

fn wait_file(p: &Path) {
    wait_for(Duration::from_secs(10), || p.exists().then_some(()))
        .unwrap_or_else(|| panic!("{} never appeared", p.display()));
}

fn body_with(rules: &str) -> String {
    dev_body("", "").replace("[[policy.admin]]", &format!("{rules}\n\n[[policy.admin]]"))
}

fn audit_count(sc: &Sidecar, event: &str, uid: u32) -> usize {
    sc.audit_events()
        .iter()
        .filter(|e| e["event"] == event && e["uid"] == uid)
        .count()
}

/// Runs the fork/exec attack: the child connects, execs `allowed`, and the parent relays the
/// connection to us. `before_exec` runs once the child is connected, `after_exec` once it runs
/// `allowed`. Returns the answer to GetSecret("app/a") over the relayed connection.
async fn fork_exec_attack(
    sc: &Sidecar,
    allowed: &str,
    before_exec: impl FnOnce(),
    after_exec: impl FnOnce(),
) -> Result<(), tonic::Status> {
    let py = script(sc, "forkexec.py", include_str!("adversary/forkexec.py"));
    let d = shared_dir();
    let mut child = nobody(PYTHON)
        .arg(&py)
        .arg(&sc.workload)
        .arg(d.path())
        .arg(allowed)
        .spawn()
        .unwrap();
    wait_file(&d.path().join("connected"));
    before_exec();
    std::fs::write(d.path().join("exec"), b"").unwrap();
    wait_file(&d.path().join("execed"));
    after_exec();
    let got = async {
        let ch = tonic::transport::Endpoint::from_static("http://relay")
            .timeout(Duration::from_secs(5))
            .connect_with_connector(tower::service_fn({
                let p = d.path().join("relay.sock");
                move |_: tonic::transport::Uri| {
                    let p = p.clone();
                    async move {
                        let s = tokio::net::UnixStream::connect(p).await?;
                        Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(s))
                    }
                }
            }))
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        let mut b = sidecred::api::pb::broker_client::BrokerClient::new(ch);
        let sid = b
            .open_session(sidecred::api::pb::OpenSessionRequest::default())
            .await?
            .into_inner()
            .session_id;
        b.get_secret(get_req("app/a", &sid)).await.map(|_| ())
    }
    .await;
    let _ = child.kill();
    let _ = child.wait();
    got
}

/// The pid behind a connection that waits in the backlog runs another program by the time it
/// is accepted: the identity must be the one it connected as.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fork_exec_behind_a_full_connection_cap_is_not_the_allowed_exe() {
    let body = body_with(
        "[[policy.workload]]\nname = \"sleeper\"\nuids = [65534]\nexe = \"/usr/bin/sleep\"\nsecrets = [\"app/*\"]",
    );
    let sc = Sidecar::builder(&body)
        .server("max_connections = 4\nhandshake_timeout = \"30s\"")
        .start();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Fill the connection cap (connections that never send a preface).
    let mut fillers: Vec<_> = (0..4)
        .map(|_| std::os::unix::net::UnixStream::connect(&sc.workload).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let got = fork_exec_attack(
        &sc,
        "/usr/bin/sleep",
        // Let the server act on the connection, whatever it does with it.
        || std::thread::sleep(Duration::from_millis(500)),
        // Now free the cap: a server that left the attacker waiting accepts it only now.
        || {
            fillers.clear();
            std::thread::sleep(Duration::from_millis(500));
        },
    )
    .await;
    assert!(
        got.is_err(),
        "the parent obtained a secret as /usr/bin/sleep through its child's connection"
    );
    assert_eq!(audit_count(&sc, "grant", 65534), 0, "{}", sc.audit_text());
    // Accepted and identified at once: refused over the cap, named as what it ran then.
    assert!(sc.audit_has("\"event\":\"connection_refused\""));
    let ev = sc.audit_events();
    let refused = ev
        .iter()
        .find(|e| e["event"] == "connection_refused" && e["uid"] == 65534)
        .expect("the attacker's connection is refused at accept");
    assert!(
        refused["exe"].as_str().unwrap().contains("python3"),
        "{refused}"
    );
    assert!(refused["detail"]
        .as_str()
        .unwrap()
        .contains("server.max_connections"));
}

/// The process that connected runs another program at use time than at accept: refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exec_after_accept_unbinds_the_identity() {
    let python = std::fs::canonicalize(PYTHON).unwrap();
    let body = body_with(&format!(
        "[[policy.workload]]\nname = \"py\"\nuids = [65534]\nexe = \"{}\"\nsecrets = [\"app/*\"]",
        python.display()
    ));
    let sc = Sidecar::start(&body);
    let got = fork_exec_attack(
        &sc,
        "/usr/bin/sleep",
        || std::thread::sleep(Duration::from_millis(500)),
        || {},
    )
    .await;
    let e = got.expect_err("a connection of a process that exec'd since accept was served");
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("executed another program"), "{e:?}");
    assert_eq!(audit_count(&sc, "grant", 65534), 0);
}

#[test]
fn an_unadmitted_uid_is_closed_at_accept_with_one_audit_line() {
    let sc = Sidecar::start(&dev_body("", ""));
    let py = script(&sc, "burst.py", include_str!("adversary/burst.py"));
    let out = nobody(PYTHON)
        .arg(&py)
        .arg(&sc.workload)
        .arg("200")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(text.trim(), "closed 200 of 200", "closed at accept");
    assert!(sc.audit_has("connection_refused"));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        audit_count(&sc, "connection_refused", 65534),
        1,
        "one rate-limited line for the burst: {}",
        sc.audit_text()
    );
    let ev = sc.audit_events();
    let line = ev
        .iter()
        .find(|e| e["event"] == "connection_refused")
        .unwrap();
    assert!(line["detail"]
        .as_str()
        .unwrap()
        .contains("no policy.workload rule admits uid=65534"));
}

#[test]
fn per_uid_cap_refuses_one_uid_and_serves_another() {
    let body =
        body_with("[[policy.workload]]\nname = \"nobody\"\nuids = [65534]\nsecrets = [\"app/*\"]");
    let sc = Sidecar::builder(&body)
        .server("max_connections_per_uid = 3")
        .start();
    std::thread::sleep(Duration::from_millis(300));
    let held: Vec<_> = (0..3)
        .map(|_| {
            use std::io::Write;
            let mut s = std::os::unix::net::UnixStream::connect(&sc.workload).unwrap();
            s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").unwrap();
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let o = sc.cli(&["get", "app/a"]);
    assert!(!o.status.success(), "uid 0 is over its cap");
    assert!(sc.audit_has("server.max_connections_per_uid (3)"));
    // Another uid is served meanwhile.
    std::fs::set_permissions(sc.dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let bin = sc.dir.path().join("sidecred-nobody");
    std::fs::copy(BIN, &bin).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let o = output_retrying_busy(
        nobody(bin.to_str().unwrap())
            .args(["get", "app/a"])
            .env("SIDECRED_SOCKET", &sc.workload),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    drop(held);
    let again = wait_for(Duration::from_secs(5), || {
        sc.cli(&["get", "app/a"]).status.success().then_some(())
    });
    assert!(again.is_some(), "closing connections frees the uid's slots");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_from_an_unadmitted_uid_leaves_a_legitimate_caller_served() {
    let sc = Sidecar::start(&dev_body("", ""));
    let py = script(&sc, "flood.py", include_str!("adversary/flood.py"));
    let mut flood = nobody(PYTHON)
        .arg(&py)
        .arg(&sc.workload)
        .args(["2000", "5", "4", "60000"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let sid = open_default(&mut sc.broker().await).await;
    let mut out = std::io::BufReader::new(flood.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    assert_eq!(line.trim(), "started");
    let mut lat = vec![];
    let mut failed = 0;
    for _ in 0..200 {
        let t = Instant::now();
        let call = async {
            let mut b = sc.broker().await;
            b.get_secret(get_req("app/a", &sid)).await
        };
        match tokio::time::timeout(Duration::from_secs(2), call).await {
            Ok(Ok(_)) => lat.push(t.elapsed()),
            other => {
                if failed == 0 {
                    println!("first failure after {:?}: {other:?}", t.elapsed());
                }
                failed += 1
            }
        }
    }
    line.clear();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    let _ = flood.wait();
    lat.sort();
    let p = |q: f64| lat.get(((lat.len() as f64 * q) as usize).min(lat.len().saturating_sub(1)));
    println!(
        "flood: {}; legitimate caller (new connection per call): {} served, {failed} failed, p50 {:?} p99 {:?}",
        line.trim(),
        lat.len(),
        p(0.5),
        p(0.99)
    );
    if failed > 0 {
        let logs = sc.logs();
        let tail: Vec<&str> = logs.lines().rev().take(30).collect();
        println!("{}", tail.join("\n"));
    }
    assert_eq!(
        failed, 0,
        "every legitimate call is served during the flood"
    );
    // Starvation would show as refusals, timeouts or seconds of queueing; the figure itself
    // is printed above (a loaded machine moves it by tens of ms, so it is not a speed test).
    let p99 = *p(0.99).unwrap();
    assert!(p99 < Duration::from_secs(1), "p99 {p99:?}");
    assert_eq!(audit_count(&sc, "grant", 65534), 0);
}

/// Opens a raw HTTP/2 connection to the workload socket.
async fn h2_conn(path: &Path) -> h2::client::SendRequest<bytes::Bytes> {
    let s = tokio::net::UnixStream::connect(path).await.unwrap();
    let (send, conn) = h2::client::handshake(s).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    send.ready().await.unwrap()
}

fn get_secret_head() -> http::Request<()> {
    http::Request::builder()
        .method("POST")
        .uri("http://localhost/sidecred.v1.Broker/GetSecret")
        .header("content-type", "application/grpc")
        .body(())
        .unwrap()
}

/// A gRPC prefix declaring `declared` bytes, followed by `sent` bytes of message.
fn partial_body(declared: u32, sent: usize) -> bytes::Bytes {
    let mut b = vec![0u8];
    b.extend_from_slice(&declared.to_be_bytes());
    b.resize(5 + sent, b'a');
    b.into()
}

fn vm_rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let l = s.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    l.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_are_refused_before_policy_and_memory_stays_bounded() {
    let sc = Sidecar::start(&dev_body("", ""));
    // A prefix declaring 16 MiB is refused at once, not after 16 MiB (or a timeout).
    let mut send = h2_conn(&sc.workload).await;
    let (resp, mut body) = send.send_request(get_secret_head(), false).unwrap();
    body.send_data(partial_body(16 << 20, 1000), false).unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(3), resp)
        .await
        .expect("an oversized request is answered at once")
        .unwrap();
    let status = resp
        .headers()
        .get("grpc-status")
        .map(|v| v.to_str().unwrap());
    assert_eq!(status, Some("8"), "RESOURCE_EXHAUSTED: {resp:?}");
    let msg = resp.headers()["grpc-message"].to_str().unwrap().to_string();
    assert!(msg.contains("larger%20than%2065536"), "{msg}");

    // Many streams holding allowed-size bodies that never end: memory stays bounded.
    let before = vm_rss_kib(sc.pid());
    let mut keep = vec![];
    for _ in 0..8 {
        let mut send = h2_conn(&sc.workload).await;
        for _ in 0..200 {
            send = send.ready().await.unwrap();
            let (resp, mut body) = send.send_request(get_secret_head(), false).unwrap();
            let _ = body.send_data(partial_body(65536, 60_000), false);
            keep.push((resp, body));
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = vm_rss_kib(sc.pid());
    let grown = after.saturating_sub(before);
    println!("server VmRSS {before} KiB -> {after} KiB (+{grown} KiB) with 1600 open 60 KB bodies");
    assert!(
        grown < 40 * 1024,
        "memory grew by {grown} KiB for 8 connections"
    );
    drop(keep);
    let ev = sc.audit_events();
    assert!(
        !ev.iter()
            .any(|e| e["event"] == "grant" || e["outcome"] == "denied"),
        "refused before policy: {}",
        sc.audit_text()
    );
}

#[test]
fn check_config_refuses_an_exe_rule_that_admits_any_uid() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("exe.toml");
    std::fs::write(
        &f,
        r#"[server]
workload_socket = "/tmp/sidecred-x/w.sock"
admin_socket = "/tmp/sidecred-y/a.sock"

[[policy.workload]]
name = "router"
uids = ["*"]
exe = "/usr/local/bin/router"
secrets = ["*"]
"#,
    )
    .unwrap();
    let o = Command::new(BIN)
        .arg("check-config")
        .arg(&f)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(err.contains("exe.toml:6:"), "line and column: {err}");
    assert!(err.contains("exe is not an identity across uids"), "{err}");
    // Restricted by uid (or gid), the same rule is fine.
    std::fs::write(
        &f,
        std::fs::read_to_string(&f)
            .unwrap()
            .replace("uids = [\"*\"]", "gids = [1000]"),
    )
    .unwrap();
    let o = Command::new(BIN)
        .arg("check-config")
        .arg(&f)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}
