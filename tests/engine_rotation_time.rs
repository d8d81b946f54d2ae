//! Scheduled rotation, retirement of reissued credentials and backend-lease renewal driven by
//! a manual clock: each step advances time and runs one whole housekeeping pass
//! ([`Engine::tick`]), so slot boundaries, grace ends and renewals are checked to the second.

mod common;

use common::engine::{grant, manual_engine, ROOT};
use sidecred::clock::ManualClock;
use sidecred::engine::Engine;
use sidecred::session::{Owner, Session};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

const CONFIG: &str = r#"
[server]
workload_socket = "/unused/w/workload.sock"
admin_socket = "/unused/a/admin.sock"
max_session_ttl = "4h"
default_session_ttl = "2h"

[backends.dev]
kind = "dev"
values = { "sched" = "s-1" }
dynamic_ttl = "60s"

[[secret]]
name = "app/sched"
backend = "dev"
path = "sched"
zone = "internal"
grace = "5s"
rotate_every = "10s"

[[secret]]
name = "db/dyn"
backend = "dev"
path = "db"
zone = "restricted"
scope = "session"
options = { dynamic = true }

[[policy.workload]]
name = "root"
uids = [0]
secrets = ["*"]
"#;

fn owner() -> Owner {
    common::engine::owner("root")
}

/// One second past a 10 s boundary, so the first slot is 9 s away.
async fn engine() -> (Arc<Engine>, Arc<ManualClock>) {
    engine_with(CONFIG).await
}

async fn engine_with(config: &str) -> (Arc<Engine>, Arc<ManualClock>) {
    manual_engine(config, 1_800_000_001).await
}

async fn session(e: &Engine) -> Arc<Session> {
    e.open_session(&ROOT, owner(), None, Default::default())
        .await
        .unwrap()
}

async fn read(
    e: &Engine,
    s: &Session,
    name: &str,
    version: Option<&str>,
) -> Result<String, sidecred::api::error::ApiError> {
    // Only certificate secrets look at the SPIFFE ID; the CA test's rule carries it.
    let g = grant(
        e,
        s,
        "root",
        name,
        version,
        Some("spiffe://test.example/root"),
    )
    .await?;
    Ok(g.entry.version.clone())
}

/// Live dynamic credentials at the dev backend, from its health line.
async fn live_leases(e: &Engine) -> usize {
    let h = e.catalog().backends["dev"].health().await.unwrap();
    let n = h.split(", ").nth(1).and_then(|p| p.split(' ').next());
    n.and_then(|n| n.parse().ok())
        .expect("lease count in health line")
}

async fn step(e: &Arc<Engine>, clock: &ManualClock, secs: u64) {
    clock.advance(Duration::from_secs(secs));
    e.tick().await;
}

#[tokio::test]
async fn a_schedule_rotates_once_per_slot_and_skips_slots_it_slept_through() {
    let (e, clock) = engine().await;
    let s = session(&e).await;
    e.tick().await;
    assert_eq!(read(&e, &s, "app/sched", None).await.unwrap(), "1");
    step(&e, &clock, 8).await;
    assert_eq!(
        read(&e, &s, "app/sched", None).await.unwrap(),
        "1",
        "1 s before the slot"
    );
    step(&e, &clock, 1).await;
    assert_eq!(
        read(&e, &s, "app/sched", None).await.unwrap(),
        "2",
        "at the slot"
    );
    e.tick().await;
    step(&e, &clock, 1).await;
    assert_eq!(
        read(&e, &s, "app/sched", None).await.unwrap(),
        "2",
        "one rotation per slot"
    );
    // The previous version is served for the 5 s grace, then retired.
    step(&e, &clock, 3).await;
    assert_eq!(
        read(&e, &s, "app/sched", Some("1")).await.unwrap(),
        "1",
        "4 s into grace"
    );
    step(&e, &clock, 1).await;
    let err = read(&e, &s, "app/sched", Some("1")).await.unwrap_err();
    assert_eq!(err.code_name(), "not-found", "{err}");
    // Three slots pass unobserved (20, 30, 40 s): one rotation catches up, not three, and
    // the next is the boundary after the catch-up (60 s), not a replay of the missed ones.
    step(&e, &clock, 35).await;
    assert_eq!(read(&e, &s, "app/sched", None).await.unwrap(), "3");
    step(&e, &clock, 9).await;
    assert_eq!(read(&e, &s, "app/sched", None).await.unwrap(), "3");
    step(&e, &clock, 1).await;
    assert_eq!(read(&e, &s, "app/sched", None).await.unwrap(), "4");
}

#[tokio::test]
async fn reissued_credentials_are_revoked_when_the_grace_ends_and_not_before() {
    let (e, clock) = engine().await;
    let mut sessions = Vec::new();
    let mut before = Vec::new();
    for _ in 0..3 {
        let s = session(&e).await;
        before.push(read(&e, &s, "db/dyn", None).await.unwrap());
        sessions.push(s);
    }
    assert_eq!(live_leases(&e).await, 3);
    let r = e
        .rotate(&ROOT, "db/dyn", Some(Duration::from_secs(20)), None)
        .await
        .unwrap();
    assert_eq!(
        r.previous_retires_at,
        Some(clock_now(&clock) + Duration::from_secs(20))
    );
    for (s, old) in sessions.iter().zip(&before) {
        assert_ne!(&read(&e, s, "db/dyn", None).await.unwrap(), old);
    }
    assert_eq!(live_leases(&e).await, 6, "old ones held for the grace");
    step(&e, &clock, 19).await;
    assert_eq!(live_leases(&e).await, 6, "19 s into a 20 s grace");
    step(&e, &clock, 1).await;
    assert_eq!(live_leases(&e).await, 3, "revoked at 20 s");
}

#[tokio::test]
async fn a_backend_lease_is_renewed_before_expiry_and_outlives_its_first_ttl() {
    let (e, clock) = engine().await;
    let s = session(&e).await;
    let v = read(&e, &s, "db/dyn", None).await.unwrap();
    let fetches = e.backend_fetches("dev");
    // Renewal falls between 56% and 66% of the 60 s ttl.
    step(&e, &clock, 30).await;
    step(&e, &clock, 10).await;
    step(&e, &clock, 10).await;
    step(&e, &clock, 20).await;
    assert_eq!(
        read(&e, &s, "db/dyn", None).await.unwrap(),
        v,
        "same credential 70 s into a 60 s lease"
    );
    assert_eq!(e.backend_fetches("dev"), fetches, "renewed, not refetched");
    assert_eq!(live_leases(&e).await, 1);
}

#[tokio::test]
async fn a_failed_revocation_is_retried_at_1_2_4_s_backoff_and_not_earlier() {
    let config = CONFIG.replace(
        "dynamic_ttl = \"60s\"",
        "dynamic_ttl = \"60s\"\nrevoke_failures = 3",
    );
    let (e, clock) = engine_with(&config).await;
    let s = session(&e).await;
    read(&e, &s, "db/dyn", None).await.unwrap();
    e.close_session(&ROOT, &owner(), &s.meta.id).await.unwrap();
    assert_eq!((e.pending_count(), live_leases(&e).await), (1, 1));
    // Failures at 0 s, 1 s and 3 s; the retry at 7 s succeeds. A retry any earlier would
    // spend the failures sooner and revoke before 7 s.
    for (at_ms, done) in [(999, false), (1_000, false), (2_999, false), (3_000, false)] {
        clock.advance(Duration::from_millis(at_ms) - elapsed(&clock));
        e.tick().await;
        assert_eq!(e.pending_count(), 1, "at {at_ms} ms");
        assert_eq!(live_leases(&e).await == 0, done, "at {at_ms} ms");
    }
    clock.advance(Duration::from_millis(6_999) - elapsed(&clock));
    e.tick().await;
    assert_eq!(live_leases(&e).await, 1, "still pending at 6.999 s");
    clock.advance(Duration::from_millis(1));
    e.tick().await;
    assert_eq!(
        (e.pending_count(), live_leases(&e).await),
        (0, 0),
        "revoked at 7 s"
    );
}

/// Time since the engine's start.
fn elapsed(c: &ManualClock) -> Duration {
    clock_now(c)
        .duration_since(UNIX_EPOCH + Duration::from_secs(1_800_000_001))
        .unwrap()
}

fn clock_now(c: &ManualClock) -> std::time::SystemTime {
    use sidecred::clock::Clock;
    c.now()
}

const CA_CONFIG: &str = r#"
[server]
workload_socket = "/unused/w/workload.sock"
admin_socket = "/unused/a/admin.sock"

[backends.ca]
kind = "ca"
generate = true
trust_domain = "test.example"
rotation_stage = "0s"

[[secret]]
name = "mtls/router"
backend = "ca"
path = "router"
zone = "internal"
scope = "session"
ttl = "10m"
grace = "60s"

[[policy.workload]]
name = "root"
uids = [0]
secrets = ["*"]
spiffe_id = "spiffe://test.example/root"
"#;

#[tokio::test]
async fn the_old_ca_stays_trusted_exactly_the_rotation_grace() {
    // The CA keeps time on the engine's clock: issuance, grace and retirement all move with it.
    let (e, clock) = engine_with(CA_CONFIG).await;
    let bundle = || {
        let ca = e.catalog().backends["ca"].authority().unwrap();
        ca.view(clock_now(&clock)).bundle.len()
    };
    let s = session(&e).await;
    assert_eq!(read(&e, &s, "mtls/router", None).await.unwrap(), "1");
    let r = e
        .rotate(&ROOT, "mtls/router", Some(Duration::from_secs(30)), None)
        .await
        .unwrap();
    assert_eq!(
        (r.version.as_str(), r.previous_version.as_deref()),
        ("2", Some("1"))
    );
    assert_eq!(bundle(), 2, "old and new CA trusted during grace");
    let fresh = session(&e).await;
    assert_eq!(
        read(&e, &fresh, "mtls/router", None).await.unwrap(),
        "2",
        "a new session gets a leaf of the new CA"
    );
    step(&e, &clock, 29).await;
    assert_eq!(
        read(&e, &s, "mtls/router", None).await.unwrap(),
        "2",
        "sessions are reissued a leaf of the new CA"
    );
    assert_eq!(
        bundle(),
        2,
        "the old CA is still trusted 29 s into a 30 s grace"
    );
    step(&e, &clock, 1).await;
    assert_eq!(bundle(), 1, "old CA left the bundle at 30 s");
}

#[tokio::test]
async fn a_staged_ca_signs_only_once_its_stage_has_passed() {
    let config = CA_CONFIG.replace("rotation_stage = \"0s\"", "rotation_stage = \"10s\"");
    let (e, clock) = engine_with(&config).await;
    let ca = e.catalog().backends["ca"].authority().unwrap();
    let s = session(&e).await;
    assert_eq!(read(&e, &s, "mtls/router", None).await.unwrap(), "1");
    e.rotate(&ROOT, "mtls/router", Some(Duration::from_secs(60)), None)
        .await
        .unwrap();
    assert_eq!(
        ca.view(clock_now(&clock)).bundle.len(),
        2,
        "the staged CA is trusted from the start"
    );
    step(&e, &clock, 9).await;
    let early = session(&e).await;
    assert_eq!(
        read(&e, &early, "mtls/router", None).await.unwrap(),
        "1",
        "9 s into a 10 s stage the old CA still signs"
    );
    step(&e, &clock, 1).await;
    let late = session(&e).await;
    assert_eq!(
        read(&e, &late, "mtls/router", None).await.unwrap(),
        "2",
        "at 10 s the new CA signs"
    );
    assert_eq!(elapsed(&clock), Duration::from_secs(10));
}
