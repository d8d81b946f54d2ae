//! Rotation of the internal CA as the certificate holders see it: 50 readers of session leaf
//! certificates across a CA rotation get no failure; leaves signed by the old CA are served
//! during the grace window only, and the old CA leaves the trust bundle after it.

mod common;

use common::ca::*;
use common::readers::Readers;
use common::Broker;
use sidecred::api::pb;
use std::time::{Duration, Instant};

use common::open_default as open;

async fn leaf_version(b: &mut Broker, sid: &str) -> String {
    b.get_secret(pb::GetSecretRequest {
        name: "mtls/router".into(),
        session_id: sid.into(),
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
    .version
}

async fn bundle_size(ca: &CaSidecar) -> usize {
    let first = first_svid(&ca.spiffe).await;
    split_der(&first.svids[0].bundle).len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ca_rotation_under_50_leaf_readers_retires_old_leaves_after_grace() {
    let ca = start("rotation_stage = \"500ms\"", "");
    let mut b = ca.sc.broker().await;
    let mut sessions = Vec::new();
    for _ in 0..5 {
        let sid = open(&mut b).await;
        assert_eq!(leaf_version(&mut b, &sid).await, "1");
        sessions.push(sid);
    }
    let mut w = b
        .watch_secret(pb::WatchSecretRequest {
            name: "mtls/router".into(),
            session_id: sessions[0].clone(),
        })
        .await
        .unwrap()
        .into_inner();
    w.message().await.unwrap().unwrap();
    let readers = Readers::start(&b, &sessions, "mtls/router", 50);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t0 = Instant::now();
    let r = ca
        .sc
        .admin()
        .await
        .rotate(pb::RotateRequest {
            name: "mtls/router".into(),
            grace_seconds: 2,
            value: vec![],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (r.version.as_str(), r.previous_version.as_str()),
        ("2", "1")
    );
    let ev = tokio::time::timeout(Duration::from_secs(2), w.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(ev.kind, pb::secret_event::Kind::Rotated as i32);
    assert_eq!(
        bundle_size(&ca).await,
        2,
        "old and new CA trusted during grace"
    );
    // Leaves from the old CA stay valid (and cached) through the window; then they are dropped.
    let ev = tokio::time::timeout(Duration::from_secs(5), w.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        (ev.kind, ev.previous_version.as_str()),
        (pb::secret_event::Kind::Retired as i32, "1")
    );
    // The window to the second is checked with a manual clock in engine_rotation_time.rs.
    assert!(t0.elapsed() >= Duration::from_millis(1900));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t = readers.stop().await;
    println!(
        "CA rotation under load: {} leaf reads, {} failed",
        t.ok, t.failed
    );
    assert_eq!(t.failed, 0);
    assert_eq!(t.versions, ["1", "2"].map(String::from).into());
    for sid in &sessions {
        assert_eq!(
            leaf_version(&mut b, sid).await,
            "2",
            "old leaf served after grace"
        );
    }
    assert_eq!(bundle_size(&ca).await, 1, "old CA left the bundle");
}
