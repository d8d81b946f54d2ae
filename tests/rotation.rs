//! Rotation through the real binary with the embedded dev backend: versioned secrets keep their
//! previous version for the grace window, secrets issued per read get fresh credentials and the
//! replaced ones are revoked after the window, and schedules rotate by themselves.

mod common;

use common::readers::Readers;
use common::*;
use sidecred::api::pb;
use std::time::Duration;
use tonic::Code;

use common::open_default as open;

async fn get(
    b: &mut Broker,
    sid: &str,
    name: &str,
    version: &str,
) -> Result<pb::GetSecretResponse, tonic::Status> {
    b.get_secret(pb::GetSecretRequest {
        name: name.into(),
        session_id: sid.into(),
        version: version.into(),
        ..Default::default()
    })
    .await
    .map(|r| r.into_inner())
}

async fn watch(b: &mut Broker, sid: &str, name: &str) -> tonic::Streaming<pb::SecretEvent> {
    let mut w = b
        .watch_secret(pb::WatchSecretRequest {
            name: name.into(),
            session_id: sid.into(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = next_event(&mut w, Duration::from_secs(5)).await;
    assert_eq!(first.kind, pb::secret_event::Kind::Current as i32);
    w
}

async fn next_event(w: &mut tonic::Streaming<pb::SecretEvent>, limit: Duration) -> pb::SecretEvent {
    tokio::time::timeout(limit, w.message())
        .await
        .expect("watch event in time")
        .unwrap()
        .unwrap()
}

fn rotate_req(name: &str, grace: u64) -> pb::RotateRequest {
    pb::RotateRequest {
        name: name.into(),
        grace_seconds: grace,
        value: vec![],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_rotation_under_50_readers_serves_previous_then_retires_it() {
    let sc = Sidecar::start(&dev_body("", ""));
    let mut b = sc.broker().await;
    let sid = open(&mut b).await;
    let mut w = watch(&mut b, &sid, "app/a").await;
    let readers = Readers::start(&b, std::slice::from_ref(&sid), "app/a", 50);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = sc
        .admin()
        .await
        .rotate(rotate_req("app/a", 2))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (r.version.as_str(), r.previous_version.as_str()),
        ("2", "1")
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t = readers.stop().await;
    println!(
        "dev rotation under load: {} reads, {} failed",
        t.ok, t.failed
    );
    assert_eq!(t.failed, 0);
    assert!(t.ok > 100, "only {} reads", t.ok);
    assert_eq!(t.versions, ["1", "2"].map(String::from).into());

    let g = get(&mut b, &sid, "app/a", "").await.unwrap();
    let prev = g.previous.expect("previous during grace");
    assert_eq!((g.version.as_str(), prev.version.as_str()), ("2", "1"));
    assert_eq!(prev.value, b"value-a-1");
    assert_eq!(g.previous_retires_at, r.previous_retires_at);
    let ev = next_event(&mut w, Duration::from_secs(2)).await;
    assert_eq!(
        (ev.kind, ev.version.as_str(), ev.previous_version.as_str()),
        (pb::secret_event::Kind::Rotated as i32, "2", "1")
    );
    let ev = next_event(&mut w, Duration::from_secs(5)).await;
    assert_eq!(
        (ev.kind, ev.previous_version.as_str()),
        (pb::secret_event::Kind::Retired as i32, "1")
    );
    assert!(get(&mut b, &sid, "app/a", "")
        .await
        .unwrap()
        .previous
        .is_none());
    let e = get(&mut b, &sid, "app/a", "1").await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_dynamic_rotation_reissues_every_session_credential_and_revokes_the_old_after_grace() {
    let sc = Sidecar::start(&dev_body("", ""));
    let mut b = sc.broker().await;
    let mut sessions = Vec::new();
    let mut before = Vec::new();
    for _ in 0..5 {
        let sid = open(&mut b).await;
        before.push(get(&mut b, &sid, "db/dyn", "").await.unwrap().version);
        sessions.push(sid);
    }
    let mut w = watch(&mut b, &sessions[0], "db/dyn").await;
    let readers = Readers::start(&b, &sessions, "db/dyn", 50);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut admin = sc.admin().await;
    let e = admin
        .rotate(pb::RotateRequest {
            value: b"chosen".to_vec(),
            ..rotate_req("db/dyn", 2)
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    let r = admin
        .rotate(rotate_req("db/dyn", 2))
        .await
        .unwrap()
        .into_inner();
    assert!(r.previous_retires_at > 0, "{r:?}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t = readers.stop().await;
    println!(
        "dev dynamic rotation under load: {} reads, {} failed",
        t.ok, t.failed
    );
    assert_eq!(t.failed, 0);
    // Each session read its old credential, then exactly one fresh one.
    assert_eq!(t.versions.len(), 10, "{:?}", t.versions);
    for (sid, old) in sessions.iter().zip(&before) {
        let now = get(&mut b, sid, "db/dyn", "").await.unwrap();
        assert_ne!(
            &now.version, old,
            "session {sid} still has its old credential"
        );
        assert!(
            now.previous.is_none(),
            "no shared previous for per-session credentials"
        );
    }
    let ev = next_event(&mut w, Duration::from_secs(2)).await;
    assert_eq!(
        (ev.kind, ev.version.as_str()),
        (pb::secret_event::Kind::Rotated as i32, r.version.as_str())
    );
    let ev = next_event(&mut w, Duration::from_secs(5)).await;
    assert_eq!(ev.kind, pb::secret_event::Kind::Retired as i32);
    // Audit lines are written in batches: poll for it.
    let retire = wait_for(Duration::from_secs(3), || {
        sc.audit_events()
            .into_iter()
            .find(|e| e["event"] == "retire" && e["secret"] == "db/dyn")
    })
    .expect("retire audit line");
    assert_eq!(retire["detail"], "revoked=5", "{retire}");
}

/// The binary's own housekeeping loop drives a schedule with no lock backend. Slot arithmetic
/// (once per slot, missed slots, grace) is checked to the second with a manual clock in
/// `engine_rotation_time.rs`; here one real rotation is enough.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_schedule_rotates_by_itself_without_a_lock_backend() {
    let extra = r#"
[[secret]]
name = "app/sched"
backend = "dev"
path = "sched"
zone = "internal"
grace = "1s"
rotate_every = "1s"
"#;
    let sc = Sidecar::start(&dev_body(r#", "sched" = "s-1""#, extra));
    let mut b = sc.broker().await;
    let sid = open(&mut b).await;
    let mut w = watch(&mut b, &sid, "app/sched").await;
    let ev = next_event(&mut w, Duration::from_secs(3)).await;
    assert_eq!(
        (ev.kind, ev.version.as_str(), ev.previous_version.as_str()),
        (pb::secret_event::Kind::Rotated as i32, "2", "1")
    );
    // Audit lines are written in batches: poll for it.
    let slot = wait_for(Duration::from_secs(3), || {
        sc.audit_events()
            .into_iter()
            .find(|e| e["event"] == "rotate" && e["secret"] == "app/sched")
    })
    .expect("rotate audit line");
    assert!(slot["detail"].as_str().unwrap().contains("slot="), "{slot}");
    let g = get(&mut b, &sid, "app/sched", "").await.unwrap();
    assert!(g.version.parse::<u32>().unwrap() >= 2, "{}", g.version);
}
