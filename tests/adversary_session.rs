//! Attacks on sessions, run against the real binary: revocation racing a backend read (driven
//! deterministically by the `server.test_hold_dir` hook), a session used by an identity other
//! than the one that opened it, RPCs from callers no rule admits, and per-identity caps.

mod common;

use common::*;
use sidecred::api::pb;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tonic::Code;

/// A sidecar whose backend answers park while `<dir>/hold` exists.
fn held_sidecar(body: &str) -> (Sidecar, tempfile::TempDir) {
    let hold = tempfile::tempdir().unwrap();
    let sc = Sidecar::builder(body)
        .server(&format!("test_hold_dir = \"{}\"", hold.path().display()))
        .start();
    (sc, hold)
}

/// Waits until a backend answer is parked at the hook.
fn wait_held(dir: &Path) {
    wait_for(Duration::from_secs(10), || {
        dir.join("held").exists().then_some(())
    })
    .expect("the backend read never reached the hold hook");
}

async fn status(sc: &Sidecar) -> pb::StatusResponse {
    sc.admin()
        .await
        .status(pb::StatusRequest {})
        .await
        .unwrap()
        .into_inner()
}

async fn revoke(sc: &Sidecar, id: &str) {
    sc.admin()
        .await
        .revoke_session(pb::RevokeSessionRequest {
            session_id: id.into(),
            reason: "attack test".into(),
        })
        .await
        .unwrap();
}

/// Parks a GetSecret at the hook, revokes the session, releases the hook: the read must not
/// return the value, and nothing of it may remain.
async fn revoke_during_read(
    sc: &Sidecar,
    hold: &Path,
    name: &str,
) -> (tonic::Status, pb::StatusResponse) {
    let sid = open_default(&mut sc.broker().await).await;
    std::fs::write(hold.join("hold"), b"").unwrap();
    let mut b = sc.broker().await;
    let req = get_req(name, &sid);
    let read = tokio::spawn(async move { b.get_secret(req).await });
    wait_held(hold);
    revoke(sc, &sid).await;
    // RevokeSession has returned. Now let the backend's answer through.
    std::fs::remove_file(hold.join("hold")).unwrap();
    let got = read.await.unwrap();
    let err = got.expect_err("a value was returned after RevokeSession returned");
    assert_eq!(lease_count(sc, &sid).await, None, "the session is gone");
    (err, status(sc).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_is_final_for_a_read_in_flight() {
    let (sc, hold) = held_sidecar(&dev_body("", ""));
    // A static shared value: the reply is refused.
    let (err, st) = revoke_during_read(&sc, hold.path(), "app/a").await;
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert_eq!(err_code(&err), "session-revoked");
    assert!(!err.message().contains("value-a-1"));
    assert_eq!(st.leases, 0, "no lease may outlive the revocation");

    // A dynamic per-session credential: not cached, not leased, and dead at its backend.
    let _ = std::fs::remove_file(hold.path().join("held"));
    let (err, st) = revoke_during_read(&sc, hold.path(), "db/dyn").await;
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert_eq!(st.leases, 0);
    // The shared static value of the first round is the only cached value.
    assert_eq!(
        st.cached_values, 1,
        "the late dynamic value must not be cached"
    );
    let dev = st.backends.iter().find(|b| b.name == "dev").unwrap();
    assert!(
        dev.detail.contains(" 0 live dynamic leases"),
        "the late credential must be revoked at its backend: {}",
        dev.detail
    );
    let events = sc.audit_events();
    assert!(
        !events
            .iter()
            .any(|e| e["event"] == "grant" && e["secret"] == "db/dyn"),
        "no grant may be audited for the refused read"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_issued_during_revocation_is_denied() {
    let (sc, hold) = held_sidecar(&common::ca::ca_body("", ""));
    let (err, _) = revoke_during_read(&sc, hold.path(), "mtls/router").await;
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    let crl = sc
        .admin()
        .await
        .get_crl(pb::GetCrlRequest {
            name: "mtls/router".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        crl.revoked_serials.len(),
        1,
        "the leaf issued in the revocation window must be on the deny list"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_racing_the_release_of_its_own_lease_is_refused() {
    // The call's first lease of db/call exists; a rotation drops the cached credential, so a
    // second read of it goes to the backend and parks there while the first lease is released:
    // the parked read must not be answered, leased or cached, and its credential must die at
    // the backend.
    let (sc, hold) = held_sidecar(&dev_body("", ""));
    let mut b = sc.broker().await;
    let sid = open_default(&mut b).await;
    let mut req = get_req("db/call", &sid);
    req.call_id = "call-1".into();
    let first = b.get_secret(req.clone()).await.unwrap().into_inner();
    sc.admin()
        .await
        .rotate(pb::RotateRequest {
            name: "db/call".into(),
            grace_seconds: 60,
            ..Default::default()
        })
        .await
        .unwrap();
    std::fs::write(hold.path().join("hold"), b"").unwrap();
    let mut b2 = sc.broker().await;
    let r2 = req.clone();
    let parked = tokio::spawn(async move { b2.get_secret(r2).await });
    wait_held(hold.path());
    b.release_lease(pb::ReleaseLeaseRequest {
        session_id: sid.clone(),
        lease_id: first.lease_id.clone(),
    })
    .await
    .unwrap();
    std::fs::remove_file(hold.path().join("hold")).unwrap();
    let e = parked
        .await
        .unwrap()
        .expect_err("a read begun before the release was answered after it");
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("released"), "{}", e.message());
    let st = status(&sc).await;
    assert_eq!(st.leases, 0, "no lease of the call may remain");
    let dev = st.backends.iter().find(|b| b.name == "dev").unwrap();
    assert!(
        dev.detail.contains(" 0 live dynamic leases"),
        "the late credential must die at its backend: {}",
        dev.detail
    );
    // A request that begins after the release gets a fresh credential.
    let after = b.get_secret(req).await.unwrap().into_inner();
    assert_ne!(after.value, first.value);
}

/// The path of this test binary, which an `exe` rule can name.
fn me() -> PathBuf {
    std::env::current_exe().unwrap().canonicalize().unwrap()
}

/// Two rules for uid 0: this test process (by exe) and everyone else of uid 0 (the CLI).
fn two_rule_body() -> String {
    let ca = common::ca::ca_body("", "");
    let rules = format!(
        r#"
[[policy.workload]]
name = "tests"
uids = [0]
exe = "{}"
secrets = ["*"]
spiffe_id = "spiffe://test.example/tests"

[[policy.workload]]
name = "others"
uids = [0]
secrets = ["*"]
spiffe_id = "spiffe://test.example/others"
"#,
        me().display()
    );
    // Replace the single root rule of the CA body with the two rules.
    let start = ca.find("[[policy.workload]]").unwrap();
    let end = ca.find("[[policy.admin]]").unwrap();
    format!("{}{rules}\n{}", &ca[..start], &ca[end..])
}

#[tokio::test]
async fn another_rules_caller_cannot_use_the_session() {
    let sc = Sidecar::start(&two_rule_body());
    let mut b = sc.broker().await;
    let sid = open_default(&mut b).await;
    let mine = b
        .get_secret(get_req("mtls/router", &sid))
        .await
        .unwrap()
        .into_inner();
    assert!(String::from_utf8_lossy(&mine.value).contains("PRIVATE KEY"));
    // The CLI runs as the same uid under the other rule: it may not read the session's
    // cached leaf (the other rule's SPIFFE ID and private key).
    let o = sc.cli(&["get", "mtls/router", "--session", &sid, "--json"]);
    assert!(
        !o.status.success(),
        "another rule's caller read the session"
    );
    let out = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(!out.contains("PRIVATE KEY"), "{out}");
    assert!(out.contains("is not open for this caller"), "{out}");
    assert_eq!(o.status.code(), Some(3), "denied exit code: {out}");
    // Nor close or release it.
    let o = sc.cli(&["session", "close", &sid]);
    assert!(!o.status.success());
    assert_eq!(lease_count(&sc, &sid).await, Some(1), "session intact");
}

#[tokio::test]
async fn an_exe_bound_session_belongs_to_one_process() {
    let bin = Path::new(BIN).canonicalize().unwrap();
    let body = dev_body("", "").replace(
        "name = \"root-callers\"\nuids = [0]",
        &format!(
            "name = \"root-callers\"\nuids = [0]\nexe = \"{}\"",
            bin.display()
        ),
    );
    let sc = Sidecar::start(&body);
    // One CLI process opens a session; another process of the same executable may not use it.
    let sid = ok_stdout(&sc.cli(&["session", "open"])).trim().to_string();
    let o = sc.cli(&["get", "app/a", "--session", &sid]);
    assert!(!o.status.success(), "a second process used the session");
    assert!(String::from_utf8_lossy(&o.stderr).contains("is not open for this caller"));
    assert!(!String::from_utf8_lossy(&o.stdout).contains("value-a-1"));
}

#[tokio::test]
async fn unadmitted_callers_cannot_close_or_release() {
    // Only the CLI's executable is admitted; this test process is not.
    let bin = Path::new(BIN).canonicalize().unwrap();
    let body = dev_body("", "").replace(
        "name = \"root-callers\"\nuids = [0]",
        &format!(
            "name = \"root-callers\"\nuids = [0]\nexe = \"{}\"",
            bin.display()
        ),
    );
    let sc = Sidecar::start(&body);
    // The session's id as an attacker would learn it (e.g. from a log line).
    let o = sc.cli(&["session", "open", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&ok_stdout(&o).into_bytes()).unwrap();
    let sid = v["session_id"].as_str().unwrap().to_string();
    let mut b = sc.broker().await;
    let close = b
        .close_session(pb::CloseSessionRequest {
            session_id: sid.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(close.code(), Code::PermissionDenied, "{close:?}");
    assert!(
        close.message().contains("no policy.workload rule"),
        "{close:?}"
    );
    let rel = b
        .release_lease(pb::ReleaseLeaseRequest {
            session_id: sid.clone(),
            lease_id: "lse_00000000000000000000000000000000".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(rel.code(), Code::PermissionDenied, "{rel:?}");
    assert!(
        lease_count(&sc, &sid).await.is_some(),
        "the session survived"
    );
    assert!(wait_for(Duration::from_secs(5), || {
        let ev = sc.audit_events();
        ev.iter()
            .any(|e| e["event"] == "session_close" && e["outcome"] == "denied")
            .then_some(())
    })
    .is_some());
}

/// Runs the CLI as uid/gid 65534 (a copy of the binary it can execute, in a directory it
/// can traverse).
fn as_nobody(sc: &Sidecar, args: &[&str]) -> std::process::Output {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    let p = |m| std::fs::Permissions::from_mode(m);
    std::fs::set_permissions(sc.dir.path(), p(0o711)).unwrap();
    let bin = sc.dir.path().join("sidecred-nobody");
    if !bin.exists() {
        std::fs::copy(BIN, &bin).unwrap();
        std::fs::set_permissions(&bin, p(0o755)).unwrap();
    }
    output_retrying_busy(
        std::process::Command::new(&bin)
            .args(args)
            .env("SIDECRED_SOCKET", &sc.workload)
            // The attacker knows sidecred runs as root; it wants to reach it, not be protected.
            .env("SIDECRED_SERVER_UID", "0")
            .stdin(std::process::Stdio::null())
            .uid(65534)
            .gid(65534),
    )
}

#[tokio::test]
async fn errors_reveal_nothing_to_another_uid() {
    let body = dev_body("", "").replace(
        "[[policy.admin]]",
        "[[policy.workload]]\nname = \"nobody\"\nuids = [65534]\nsecrets = [\"app/*\"]\n\n[[policy.admin]]",
    );
    let sc = Sidecar::builder(&body).start();
    let mut b = sc.broker().await;
    let open = open_default(&mut b).await;
    let gone = open_default(&mut b).await;
    revoke(&sc, &gone).await;
    let unknown = "ses_0123456789abcdef0123456789abcdef";
    let mut msgs = vec![];
    for sid in [&open, &gone, &unknown.to_string()] {
        // The attacker, as uid 65534, through the real CLI.
        let o = as_nobody(&sc, &["get", "app/a", "--session", sid]);
        assert_eq!(o.status.code(), Some(3), "{o:?}");
        let err = String::from_utf8_lossy(&o.stderr).replace(sid.as_str(), "ID");
        assert!(
            !err.contains("attack test"),
            "the revocation reason leaked: {err}"
        );
        assert!(!err.contains("uid 0") && !err.contains("revoked"), "{err}");
        msgs.push(err);
    }
    assert_eq!(
        msgs[0], msgs[1],
        "revoked and open sessions must look alike"
    );
    assert_eq!(msgs[0], msgs[2], "and alike an unknown id");
    // Root is another identity too: it cannot use uid 65534's session.
    let theirs = ok_stdout(&as_nobody(&sc, &["session", "open"]))
        .trim()
        .to_string();
    let e = b.get_secret(get_req("app/a", &theirs)).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
}

#[tokio::test]
async fn caps_on_sessions_calls_and_watches() {
    let sc = Sidecar::builder(&dev_body("", ""))
        .server(
            "max_sessions_per_identity = 3\nmax_calls_per_session = 2\nmax_watches_per_session = 2",
        )
        .start();
    let mut b = sc.broker().await;
    let mut ids = vec![];
    for _ in 0..3 {
        ids.push(open_default(&mut b).await);
    }
    let e = b
        .open_session(pb::OpenSessionRequest::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("max_sessions_per_identity"));
    // Closing one frees a slot.
    b.close_session(pb::CloseSessionRequest {
        session_id: ids.pop().unwrap(),
    })
    .await
    .unwrap();
    let sid = open_default(&mut b).await;

    for (call, ok) in [("c1", true), ("c2", true), ("c1", true), ("c3", false)] {
        let mut r = get_req("db/call", &sid);
        r.call_id = call.into();
        let got = b.get_secret(r).await;
        assert_eq!(got.is_ok(), ok, "{call}: {got:?}");
        if let Err(e) = got {
            assert_eq!(e.code(), Code::ResourceExhausted);
        }
    }

    let watch = |b: &mut Broker| {
        let mut b = b.clone();
        let sid = sid.clone();
        async move {
            b.watch_secret(pb::WatchSecretRequest {
                name: "app/a".into(),
                session_id: sid,
            })
            .await
        }
    };
    let mut w1 = watch(&mut b).await.unwrap().into_inner();
    let mut w2 = watch(&mut b).await.unwrap().into_inner();
    w1.message().await.unwrap();
    w2.message().await.unwrap();
    let third = match watch(&mut b).await {
        Err(e) => e,
        Ok(s) => s.into_inner().message().await.unwrap_err(),
    };
    assert_eq!(third.code(), Code::ResourceExhausted, "{third:?}");
    drop(w1);
    // The slot frees when the stream ends on the server.
    let mut again = None;
    for _ in 0..100 {
        if let Ok(st) = watch(&mut b).await {
            let mut st = st.into_inner();
            if st.message().await.is_ok() {
                again = Some(st);
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(again.is_some(), "a closed watch must free its slot");
}
