//! Scheduled rotation shared by eight in-process engines through a real OpenBao lock record,
//! on one manual clock: each slot boundary is reached by advancing the clock, and all eight
//! run their housekeeping pass at once. The slot arithmetic is exact; only the check-and-set
//! race is real. `rotation_bao.rs` keeps eight real sidecars on a wall-clock schedule.

mod common;

use common::engine::{grant, ROOT};
use common::openbao::{token_file_backend, OpenBao, OPEN_POLICY};
use serde_json::json;
use sidecred::audit::Audit;
use sidecred::clock::{Clock, ManualClock};
use sidecred::config::Config;
use sidecred::engine::{Catalog, Engine};
use sidecred::session::{Owner, Session};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const SCHEDULE: &str = r#"
[scheduler]
lock_backend = "bao"
lock_prefix = "sidecred/locks"
claim_ttl = "20s"

[[secret]]
name = "app/sched"
backend = "bao"
path = "app/sched"
zone = "internal"
grace = "10s"
rotate_every = "60s"
"#;

async fn kv_version(bao: &OpenBao) -> u64 {
    let m = bao
        .api("GET", "secret/metadata/app/sched", serde_json::Value::Null)
        .await;
    m["data"]["current_version"].as_u64().unwrap()
}

async fn tick_all(engines: &[Arc<Engine>]) {
    let passes: Vec<_> = engines
        .iter()
        .map(|e| {
            let e = e.clone();
            tokio::spawn(async move { e.tick().await })
        })
        .collect();
    for p in passes {
        tokio::time::timeout(Duration::from_secs(20), p)
            .await
            .expect("housekeeping pass in time")
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_engines_on_one_clock_rotate_once_per_slot() {
    let bao = OpenBao::start();
    bao.kv_put("app/sched", json!({ "value": "s-1" })).await;
    let tmp = tempfile::tempdir().unwrap();
    let tf = tmp.path().join("token");
    std::fs::write(&tf, &bao.root_token).unwrap();
    std::fs::set_permissions(&tf, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let text = format!(
        "[server]\nworkload_socket = \"/unused/w/workload.sock\"\nadmin_socket = \"/unused/a/admin.sock\"\n{}\n{SCHEDULE}\n{OPEN_POLICY}",
        token_file_backend(&bao, &tf, "")
    );
    // One second past a minute boundary: the first slot is 59 s away.
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let clock = Arc::new(ManualClock::new(
        UNIX_EPOCH + Duration::from_secs(secs - secs % 60 + 1),
    ));
    let mut engines = Vec::new();
    for _ in 0..8 {
        let cfg = Config::parse(&tmp.path().join("sidecred.toml"), &text, &|_| None).unwrap();
        let cat = Catalog::build(cfg, 1, clock.clone()).await.unwrap();
        engines.push(Engine::new(cat, clock.clone(), Audit::disabled()));
    }
    let mut sessions = Vec::new();
    for e in &engines {
        let s = e.open_session(&ROOT, owner(), None, Default::default());
        sessions.push(s.await.unwrap());
    }
    tick_all(&engines).await;
    clock.advance(Duration::from_secs(58));
    tick_all(&engines).await;
    assert_eq!(kv_version(&bao).await, 1, "1 s before the first slot");
    for slot in 1..=3u64 {
        clock.advance(Duration::from_secs(if slot == 1 { 1 } else { 60 }));
        tick_all(&engines).await;
        assert_eq!(kv_version(&bao).await, 1 + slot, "one KV version per slot");
        // A second pass inside the same slot changes nothing.
        tick_all(&engines).await;
        assert_eq!(kv_version(&bao).await, 1 + slot, "slot {slot} ran twice");
        // Every engine, the rotating one and the seven that took it over, serves the new
        // version with the previous one until the same end of grace.
        let want = (1 + slot).to_string();
        let retires = clock.now() + Duration::from_secs(10);
        for (e, s) in engines.iter().zip(&sessions) {
            let (v, prev) = served(e, s).await;
            assert_eq!(v, want);
            assert_eq!(prev, Some((slot.to_string(), retires)), "slot {slot}");
        }
    }
}

/// Version and previous version (with when it retires) one engine serves for `app/sched`.
async fn served(e: &Engine, s: &Session) -> (String, Option<(String, SystemTime)>) {
    let g = grant(e, s, "root-callers", "app/sched", None, None)
        .await
        .unwrap();
    let prev = g.previous.as_ref().map(|(p, at)| (p.version.clone(), *at));
    (g.entry.version.clone(), prev)
}

fn owner() -> Owner {
    common::engine::owner("root-callers")
}
