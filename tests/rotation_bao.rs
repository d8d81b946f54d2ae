//! Rotation against real OpenBao (and PostgreSQL behind its database engine), through the real
//! binary: KV v2 and dynamic credentials under 50 concurrent readers, eight sidecars sharing one
//! schedule, and a grace window that survives SIGKILL.

mod common;

use common::openbao::{open, token_file_backend, wait_for_async, OpenBao, OPEN_POLICY};
use common::postgres::Postgres;
use common::readers::Readers;
use common::*;
use serde_json::json;
use sidecred::api::pb;
use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tonic::Code;

/// A config body: the OpenBao backend (root token from a file), `rest`, open policy.
fn body(bao: &OpenBao, dir: &std::path::Path, rest: &str) -> String {
    let tf = dir.join("token");
    std::fs::write(&tf, &bao.root_token).unwrap();
    std::fs::set_permissions(&tf, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    format!(
        "{}\n{rest}\n{OPEN_POLICY}",
        token_file_backend(bao, &tf, "")
    )
}

async fn get(
    b: &mut Broker,
    sid: &str,
    name: &str,
    version: &str,
) -> Result<pb::GetSecretResponse, tonic::Status> {
    common::openbao::get(b, sid, name, version).await
}

fn rotate_req(name: &str, grace: u64) -> pb::RotateRequest {
    pb::RotateRequest {
        name: name.into(),
        grace_seconds: grace,
        value: vec![],
    }
}

async fn kv_deleted(bao: &OpenBao, path: &str, version: &str) -> bool {
    let m = bao
        .api(
            "GET",
            &format!("secret/metadata/{path}"),
            serde_json::Value::Null,
        )
        .await;
    m["data"]["versions"][version]["deletion_time"]
        .as_str()
        .is_some_and(|t| !t.is_empty())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_rotation_under_50_readers_serves_previous_then_deletes_it() {
    let bao = OpenBao::start();
    bao.kv_put("app/api", json!({ "value": "api-v1" })).await;
    let tmp = tempfile::tempdir().unwrap();
    let secret = "[[secret]]\nname = \"app/api\"\nbackend = \"bao\"\npath = \"app/api\"\nzone = \"internal\"\ngrace = \"2s\"\noptions = { on_retire = \"delete\" }\n";
    let sc = Sidecar::start(&body(&bao, tmp.path(), secret));
    let mut b = sc.broker().await;
    let sid = open(&mut b).await;
    let readers = Readers::start(&b, std::slice::from_ref(&sid), "app/api", 50);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = sc
        .admin()
        .await
        .rotate(rotate_req("app/api", 2))
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
        "OpenBao KV rotation under load: {} reads, {} failed",
        t.ok, t.failed
    );
    assert_eq!(t.failed, 0);
    assert_eq!(t.versions, ["1", "2"].map(String::from).into());
    let g = get(&mut b, &sid, "app/api", "").await.unwrap();
    let prev = g.previous.expect("previous during grace");
    assert_eq!(
        (prev.version.as_str(), prev.value.as_slice()),
        ("1", &b"api-v1"[..])
    );
    assert!(!kv_deleted(&bao, "app/api", "1").await);
    let gone = wait_for_async(Duration::from_secs(6), || async {
        kv_deleted(&bao, "app/api", "1").await
    })
    .await;
    assert!(gone, "version 1 soft-deleted in OpenBao after grace");
    let g = get(&mut b, &sid, "app/api", "").await.unwrap();
    assert!(g.previous.is_none());
    let e = get(&mut b, &sid, "app/api", "1").await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
}

fn login(pg: &Postgres, v: &serde_json::Value) -> Result<String, String> {
    pg.psql(
        v["username"].as_str().unwrap(),
        v["password"].as_str().unwrap(),
        "SELECT 1",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamic_db_rotation_under_50_readers_drops_old_roles_after_grace() {
    let pg = Postgres::start();
    let bao = OpenBao::start();
    bao.database_role(&pg, "ro", 600, 1200).await;
    let tmp = tempfile::tempdir().unwrap();
    let secret = "[[secret]]\nname = \"db/ro\"\nbackend = \"bao\"\npath = \"database/creds/ro\"\nzone = \"restricted\"\nscope = \"session\"\nttl = \"10m\"\ngrace = \"3s\"\noptions = { engine = \"dynamic\" }\n";
    let sc = Sidecar::start(&body(&bao, tmp.path(), secret));
    let mut b = sc.broker().await;
    let mut sessions = Vec::new();
    let mut old = Vec::new();
    for _ in 0..5 {
        let sid = open(&mut b).await;
        let v: serde_json::Value =
            serde_json::from_slice(&get(&mut b, &sid, "db/ro", "").await.unwrap().value).unwrap();
        sessions.push(sid);
        old.push(v);
    }
    let readers = Readers::start(&b, &sessions, "db/ro", 50);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rotated_at = Instant::now();
    sc.admin()
        .await
        .rotate(rotate_req("db/ro", 3))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let t = readers.stop().await;
    println!(
        "OpenBao dynamic rotation under load: {} reads, {} failed",
        t.ok, t.failed
    );
    assert_eq!(t.failed, 0);
    assert_eq!(t.versions.len(), 10, "five old and five fresh credentials");
    let mut new = Vec::new();
    for sid in &sessions {
        let v: serde_json::Value =
            serde_json::from_slice(&get(&mut b, sid, "db/ro", "").await.unwrap().value).unwrap();
        new.push(v);
    }
    // During grace both the old and the new credentials log in.
    for (o, n) in old.iter().zip(&new) {
        assert_ne!(o["username"], n["username"]);
        login(&pg, o).expect("old credential valid during grace");
        login(&pg, n).expect("new credential valid");
    }
    assert!(
        rotated_at.elapsed() < Duration::from_secs(3),
        "checks ran inside the window"
    );
    let dropped = wait_for(Duration::from_secs(8), || {
        old.iter()
            .all(|o| !pg.role_exists(o["username"].as_str().unwrap()))
            .then_some(())
    });
    assert!(
        dropped.is_some(),
        "old roles dropped from pg_roles after grace"
    );
    assert!(rotated_at.elapsed() >= Duration::from_millis(2900));
    for n in &new {
        assert!(pg.role_exists(n["username"].as_str().unwrap()));
        login(&pg, n).expect("new credential still valid");
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_sidecars_on_one_schedule_rotate_once_per_slot() {
    let bao = OpenBao::start();
    bao.kv_put("app/sched", json!({ "value": "s-1" })).await;
    let tmp = tempfile::tempdir().unwrap();
    let rest = "[scheduler]\nlock_backend = \"bao\"\nlock_prefix = \"sidecred/locks\"\nclaim_ttl = \"2s\"\n\n[[secret]]\nname = \"app/sched\"\nbackend = \"bao\"\npath = \"app/sched\"\nzone = \"internal\"\ngrace = \"1s\"\nrotate_every = \"2s\"\n";
    let text = body(&bao, tmp.path(), rest);
    let fleet: Vec<Sidecar> = (0..8).map(|_| Sidecar::start(&text)).collect();
    let all_up = unix_ms();
    // Run ~6 s, then stop in the middle of a slot (no rotation in flight). Slot arithmetic to
    // the second (boundaries, missed slots, grace) is checked on a manual clock in
    // engine_schedule_lock.rs; here eight real processes agree on a few real slots.
    let end = all_up + 6_000;
    let mid = end - end % 2000 + 1000;
    tokio::time::sleep(Duration::from_millis(mid - unix_ms())).await;
    let kv = bao
        .api("GET", "secret/metadata/app/sched", serde_json::Value::Null)
        .await;
    let mut rotations: BTreeMap<String, usize> = BTreeMap::new();
    let mut applied: BTreeMap<String, usize> = BTreeMap::new();
    let mut versions = std::collections::BTreeSet::new();
    for sc in &fleet {
        for e in sc.audit_events() {
            match e["event"].as_str() {
                Some("rotate") => {
                    let d = e["detail"].as_str().unwrap();
                    let slot = d.split("slot=").nth(1).expect("scheduled").to_string();
                    *rotations.entry(slot).or_default() += 1;
                    versions.insert(e["version"].as_str().unwrap().to_string());
                }
                Some("rotation_applied") => {
                    *applied
                        .entry(e["version"].as_str().unwrap().to_string())
                        .or_default() += 1
                }
                _ => {}
            }
        }
    }
    println!("slots rotated: {rotations:?}; takeovers per version: {applied:?}");
    assert!(rotations.len() >= 2, "{rotations:?}");
    assert!(
        rotations.values().all(|n| *n == 1),
        "one rotation per slot: {rotations:?}"
    );
    let total: usize = rotations.values().sum();
    assert_eq!(
        kv["data"]["current_version"].as_u64().unwrap() as usize,
        1 + total,
        "KV versions written: one per slot"
    );
    // Slots after every sidecar was up: the seven others took the rotation over.
    for (slot, _) in rotations
        .iter()
        .filter(|(s, _)| s.parse::<u64>().unwrap() > all_up)
    {
        let v = fleet
            .iter()
            .flat_map(|sc| sc.audit_events())
            .find(|e| {
                e["event"] == "rotate" && e["detail"].as_str().unwrap().ends_with(slot.as_str())
            })
            .unwrap()["version"]
            .as_str()
            .unwrap()
            .to_string();
        assert_eq!(
            applied.get(&v),
            Some(&7),
            "slot {slot} version {v}: {applied:?}"
        );
    }
    // A sidecar that did not rotate serves the newest version and the previous one in grace.
    let newest = kv["data"]["current_version"].to_string();
    let mut b = fleet[3].broker().await;
    let sid = open(&mut b).await;
    assert_eq!(
        get(&mut b, &sid, "app/sched", "").await.unwrap().version,
        newest
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_retirement_survives_sigkill_and_restart() {
    let bao = OpenBao::start();
    bao.kv_put("app/journal", json!({ "value": "journal-v1-canary" }))
        .await;
    let tmp = tempfile::tempdir().unwrap();
    let secret = "[[secret]]\nname = \"app/journal\"\nbackend = \"bao\"\npath = \"app/journal\"\nzone = \"internal\"\noptions = { on_retire = \"delete\" }\n";
    let mut sc = Sidecar::start(&body(&bao, tmp.path(), secret));
    let r = sc
        .admin()
        .await
        .rotate(rotate_req("app/journal", 3))
        .await
        .unwrap()
        .into_inner();
    sc.kill();
    sc.spawn();
    let mut b = sc.broker().await;
    let sid = open(&mut b).await;
    let g = get(&mut b, &sid, "app/journal", "").await.unwrap();
    let prev = g.previous.expect("previous still served after restart");
    assert_eq!(
        (prev.version.as_str(), prev.value.as_slice()),
        ("1", &b"journal-v1-canary"[..])
    );
    assert_eq!(g.previous_retires_at, r.previous_retires_at);
    let journal = std::fs::read_to_string(sc.dir.path().join("state/retirements.jsonl")).unwrap();
    assert!(
        journal.contains("\"op\":\"grace\"") && !journal.contains("canary"),
        "{journal}"
    );
    let gone = wait_for_async(Duration::from_secs(6), || async {
        kv_deleted(&bao, "app/journal", "1").await
    })
    .await;
    assert!(
        gone,
        "retired at OpenBao after the window, by the restarted sidecar"
    );
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!(
        now >= r.previous_retires_at,
        "not retired before the window ended"
    );
    assert!(get(&mut b, &sid, "app/journal", "")
        .await
        .unwrap()
        .previous
        .is_none());
    let e = get(&mut b, &sid, "app/journal", "1").await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    // Overdue at start: a window that ended while the sidecar was down retires at once.
    let r = sc
        .admin()
        .await
        .rotate(rotate_req("app/journal", 1))
        .await
        .unwrap()
        .into_inner();
    sc.kill();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    sc.spawn();
    let gone = wait_for_async(Duration::from_secs(3), || async {
        kv_deleted(&bao, "app/journal", &r.previous_version).await
    })
    .await;
    assert!(gone, "overdue window retired right after restart");
    // Values never reach the journal, the logs (debug) or the audit file.
    let journal = std::fs::read_to_string(sc.dir.path().join("state/retirements.jsonl")).unwrap();
    for text in [journal, sc.logs(), sc.audit_text()] {
        assert!(!text.contains("journal-v1-canary"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_by_hand_on_one_sidecar_is_taken_over_by_another() {
    let bao = OpenBao::start();
    bao.kv_put("app/shared", json!({ "value": "shared-v1" }))
        .await;
    let tmp = tempfile::tempdir().unwrap();
    let rest = "[scheduler]\nlock_backend = \"bao\"\n\n[[secret]]\nname = \"app/shared\"\nbackend = \"bao\"\npath = \"app/shared\"\nzone = \"internal\"\n";
    let text = body(&bao, tmp.path(), rest).replace(
        "kind = \"openbao\"\n",
        "kind = \"openbao\"\nrecheck_interval = \"300ms\"\n",
    );
    let (a, other) = (Sidecar::start(&text), Sidecar::start(&text));
    let mut b = other.broker().await;
    let sid = open(&mut b).await;
    assert_eq!(
        get(&mut b, &sid, "app/shared", "").await.unwrap().version,
        "1"
    );
    let mut w = b
        .watch_secret(pb::WatchSecretRequest {
            name: "app/shared".into(),
            session_id: sid.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    w.message().await.unwrap().unwrap();
    let r = a
        .admin()
        .await
        .rotate(rotate_req("app/shared", 3))
        .await
        .unwrap()
        .into_inner();
    let ev = tokio::time::timeout(Duration::from_secs(3), w.message())
        .await
        .expect("the other sidecar notices")
        .unwrap()
        .unwrap();
    assert_eq!(
        (ev.kind, ev.version.as_str(), ev.previous_version.as_str()),
        (pb::secret_event::Kind::Rotated as i32, "2", "1"),
        "taken over as a rotation, not an outside change"
    );
    let g = get(&mut b, &sid, "app/shared", "").await.unwrap();
    let prev = g
        .previous
        .expect("previous served by the sidecar that did not rotate");
    assert_eq!(
        (g.version.as_str(), prev.value.as_slice()),
        ("2", &b"shared-v1"[..])
    );
    assert_eq!(g.previous_retires_at, r.previous_retires_at);
    let ev = tokio::time::timeout(Duration::from_secs(5), w.message())
        .await
        .expect("retired after the same window")
        .unwrap()
        .unwrap();
    assert_eq!(ev.kind, pb::secret_event::Kind::Retired as i32);
    assert!(get(&mut b, &sid, "app/shared", "")
        .await
        .unwrap()
        .previous
        .is_none());
    assert!(other.audit_has("rotation_applied"));
}
