//! Lease, session and rotation-grace timing driven by a manual clock: time is advanced and one
//! housekeeping pass runs, so each boundary is checked to the second without sleeping.

mod common;

use common::engine::{grant, manual_engine, ROOT};
use sidecred::clock::ManualClock;
use sidecred::engine::Engine;
use sidecred::session::{Owner, Session};
use std::sync::Arc;
use std::time::Duration;

const CONFIG: &str = r#"
[server]
workload_socket = "/unused/w/workload.sock"
admin_socket = "/unused/a/admin.sock"
max_session_ttl = "1h"
default_session_ttl = "10m"

[backends.dev]
kind = "dev"
values = { "static/a" = "value-a-1" }

[[secret]]
name = "app/a"
backend = "dev"
path = "static/a"
zone = "internal"
ttl = "60s"
grace = "30s"

[[policy.workload]]
name = "root"
uids = [0]
secrets = ["*"]
"#;

fn owner() -> Owner {
    common::engine::owner("root")
}

async fn engine() -> (Arc<Engine>, Arc<ManualClock>) {
    manual_engine(CONFIG, 1_800_000_000).await
}

async fn read(
    e: &Engine,
    s: &Session,
    version: Option<&str>,
) -> Result<(String, String), sidecred::api::error::ApiError> {
    let g = grant(e, s, "root", "app/a", version, None).await?;
    Ok((g.lease_id.clone(), g.entry.version.clone()))
}

#[tokio::test]
async fn a_lease_ends_at_its_ttl_and_not_a_second_before() {
    let (e, clock) = engine().await;
    let s = e
        .open_session(&ROOT, owner(), None, Default::default())
        .await
        .unwrap();
    read(&e, &s, None).await.unwrap();
    assert_eq!(e.gauges().leases, 1);
    clock.advance(Duration::from_secs(59));
    e.sweep().await;
    assert_eq!(e.gauges().leases, 1, "alive at 59 s of a 60 s ttl");
    clock.advance(Duration::from_secs(1));
    e.sweep().await;
    assert_eq!(e.gauges().leases, 0, "gone at 60 s");
}

#[tokio::test]
async fn a_session_expires_at_its_ttl_and_its_reads_stop() {
    let (e, clock) = engine().await;
    let s = e
        .open_session(
            &ROOT,
            owner(),
            Some(Duration::from_secs(120)),
            Default::default(),
        )
        .await
        .unwrap();
    clock.advance(Duration::from_secs(119));
    e.sweep().await;
    read(&e, &s, None).await.expect("still open at 119 s");
    clock.advance(Duration::from_secs(2));
    e.sweep().await;
    assert_eq!(e.gauges().sessions, 0);
    let err = read(&e, &s, None).await.unwrap_err();
    assert_eq!(err.code_name(), "denied", "{err}");
}

#[tokio::test]
async fn the_previous_version_is_served_for_the_grace_and_not_after() {
    let (e, clock) = engine().await;
    let s = e
        .open_session(&ROOT, owner(), None, Default::default())
        .await
        .unwrap();
    assert_eq!(read(&e, &s, None).await.unwrap().1, "1");
    let r = e.rotate(&ROOT, "app/a", None, None).await.unwrap();
    assert_eq!(r.version, "2");
    assert_eq!(
        read(&e, &s, None).await.unwrap().1,
        "2",
        "current moves at once"
    );
    clock.advance(Duration::from_secs(29));
    e.sweep().await;
    assert_eq!(
        read(&e, &s, Some("1")).await.unwrap().1,
        "1",
        "inside the 30 s grace"
    );
    clock.advance(Duration::from_secs(2));
    e.sweep().await;
    let err = read(&e, &s, Some("1")).await.unwrap_err();
    assert_eq!(err.code_name(), "not-found", "{err}");
}
