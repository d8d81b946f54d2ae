//! A panic in one request (driven by the `server.test_hold_dir` hook, while the request holds
//! the session's gate and the lease table) must not take the broker down: later requests, on
//! other connections, are served as before, and the process stays up.

mod common;

use common::*;
use sidecred::api::pb;

#[tokio::test]
async fn a_panic_holding_locks_poisons_nothing() {
    let hook = tempfile::tempdir().unwrap();
    let sc = Sidecar::builder(&dev_body("", ""))
        .server(&format!("test_hold_dir = \"{}\"", hook.path().display()))
        .start();
    let mut b = sc.broker().await;
    let sid = open_default(&mut b).await;
    b.get_secret(get_req("app/a", &sid)).await.unwrap();

    std::fs::write(hook.path().join("panic"), b"").unwrap();
    let mut victim = sc.broker().await;
    let r = victim.get_secret(get_req("app/a", &sid)).await;
    assert!(r.is_err(), "the hooked request must fail");
    std::fs::remove_file(hook.path().join("panic")).unwrap();

    // Every path that takes those locks still works, for this session and a new one.
    let mut b = sc.broker().await;
    for _ in 0..3 {
        let g = b
            .get_secret(get_req("app/a", &sid))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(g.value, b"value-a-1");
    }
    let other = open_default(&mut b).await;
    b.get_secret(get_req("db/dyn", &other)).await.unwrap();
    b.close_session(pb::CloseSessionRequest { session_id: other })
        .await
        .unwrap();
    let st = sc
        .admin()
        .await
        .status(pb::StatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(st.sessions, 1);
    let logs = sc.logs();
    assert!(logs.contains("panicked"), "the panic is logged: {logs}");
    assert!(!logs.contains("value-a-1"), "no value in the panic report");
}
