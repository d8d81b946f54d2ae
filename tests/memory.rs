//! Memory residue: after a secret is rotated away and its session revoked, the sidecred process's
//! readable memory must not hold it. Also checks the hardening the process applies to itself.

mod common;

use common::*;
use sidecred::api::pb;
use std::io::{Read, Seek, SeekFrom};
use std::time::Duration;

/// The most canary copies tolerated in memory after eviction. Only ever lower it.
const RESIDUE_BOUND: usize = 0;

/// Counts occurrences of `needle` in every readable mapping of `pid`.
fn scan(pid: u32, needle: &[u8]) -> (usize, usize) {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let mut mem = std::fs::File::open(format!("/proc/{pid}/mem")).unwrap();
    let (mut hits, mut bytes) = (0, 0);
    for line in maps.lines() {
        let mut f = line.split_whitespace();
        let (range, perms) = (f.next().unwrap(), f.next().unwrap());
        let path = f.nth(3).unwrap_or("");
        if !perms.starts_with('r') || path == "[vvar]" || path == "[vsyscall]" {
            continue;
        }
        let (a, b) = range.split_once('-').unwrap();
        let (a, b) = (
            u64::from_str_radix(a, 16).unwrap(),
            u64::from_str_radix(b, 16).unwrap(),
        );
        let mut buf = vec![0u8; (b - a) as usize];
        if mem.seek(SeekFrom::Start(a)).is_err() || mem.read_exact(&mut buf).is_err() {
            continue;
        }
        bytes += buf.len();
        hits += buf.windows(needle.len()).filter(|w| *w == needle).count();
    }
    (hits, bytes)
}

/// Rotates `name` to a new value with a 1 s grace, lets the grace end, revokes `sid`, and waits
/// for teardown: after this, nothing should still hold the old value.
async fn retire_and_revoke(sc: &Sidecar, name: &str, replacement: &[u8], sid: &str) {
    let mut admin = sc.admin().await;
    admin
        .rotate(pb::RotateRequest {
            name: name.into(),
            grace_seconds: 1,
            value: replacement.to_vec(),
        })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    admin
        .revoke_session(pb::RevokeSessionRequest {
            session_id: sid.to_string(),
            reason: "residue test".into(),
        })
        .await
        .unwrap();
    drop(admin);
    tokio::time::sleep(Duration::from_millis(500)).await;
}

#[tokio::test]
async fn no_canary_residue_after_rotation_and_revocation() {
    let canary = format!("RESIDUE-CANARY-{:016x}", rand::random::<u64>());
    let sc = Sidecar::start(&dev_body("", ""));
    let mut admin = sc.admin().await;
    admin
        .rotate(pb::RotateRequest {
            name: "app/a".into(),
            grace_seconds: 1,
            value: canary.clone().into_bytes(),
        })
        .await
        .unwrap();
    let mut b = sc.broker().await;
    let sid = b
        .open_session(pb::OpenSessionRequest::default())
        .await
        .unwrap()
        .into_inner()
        .session_id;
    for i in 0..20 {
        let r = b
            .get_secret(pb::GetSecretRequest {
                name: "app/a".into(),
                session_id: sid.clone(),
                call_id: format!("c{i}"),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.value, canary.as_bytes());
    }
    let (live, scanned) = scan(sc.pid(), canary.as_bytes());
    assert!(
        live >= 1,
        "the scan must see the canary while it is live (scanned {scanned} bytes)"
    );

    // Rotate it away with no grace, then revoke the session that read it.
    drop(b);
    drop(admin);
    retire_and_revoke(&sc, "app/a", b"replacement-value", &sid).await;
    let (after, scanned) = scan(sc.pid(), canary.as_bytes());
    eprintln!("memory residue: {after} canary copies in {scanned} readable bytes (live: {live})");
    #[allow(clippy::absurd_extreme_comparisons)]
    let within = after <= RESIDUE_BOUND;
    assert!(
        within,
        "{after} canary copies remain in sidecred's memory (bound {RESIDUE_BOUND})"
    );
}

#[test]
fn process_is_not_dumpable_and_has_no_core_limit() {
    let sc = Sidecar::start(&dev_body("", ""));
    let status = std::fs::read_to_string(format!("/proc/{}/limits", sc.pid())).unwrap();
    let core = status
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .unwrap();
    assert!(
        core.split_whitespace().filter(|w| *w == "0").count() >= 2,
        "{core}"
    );
    let o = sc.cli(&["status", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["dumpable"], false);
    ok_stdout(&sc.cli(&["get", "app/a"]));
    let v: serde_json::Value =
        serde_json::from_slice(&sc.cli(&["status", "--json"]).stdout).unwrap();
    assert!(
        v["locked_pages"].as_u64().unwrap() >= 1,
        "the cached secret's page is locked: {v}"
    );
    let smaps = std::fs::read_to_string(format!("/proc/{}/smaps", sc.pid())).unwrap();
    let locked_kb: u64 = smaps
        .lines()
        .filter(|l| l.starts_with("Locked:"))
        .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .sum();
    assert!(locked_kb >= 4, "smaps shows locked memory: {locked_kb} kB");
    assert!(
        smaps.contains(" dd"),
        "a mapping is marked dont-dump (VmFlags dd)"
    );
}

/// A value written in the config itself (a dev seed) is held zeroized from parse time and
/// moved into the backend: once rotated away and retired, no copy is left in the parsed
/// config, the raw text or the interpolated text.
#[tokio::test]
async fn a_config_seed_value_leaves_no_residue_once_retired() {
    let canary = format!("SEED-CANARY-{:016x}", rand::random::<u64>());
    let sc = Sidecar::start(&dev_body(
        &format!(", \"static/seed\" = \"{canary}\""),
        "[[secret]]\nname = \"app/seed\"\nbackend = \"dev\"\npath = \"static/seed\"\nzone = \"internal\"\ngrace = \"1s\"\n",
    ));
    let mut b = sc.broker().await;
    let sid = b
        .open_session(pb::OpenSessionRequest::default())
        .await
        .unwrap()
        .into_inner()
        .session_id;
    let r = b
        .get_secret(pb::GetSecretRequest {
            name: "app/seed".into(),
            session_id: sid.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.value, canary.as_bytes());
    let (live, _) = scan(sc.pid(), canary.as_bytes());
    assert!(live >= 1, "the scan sees the seed while it is current");
    drop(b);
    retire_and_revoke(&sc, "app/seed", b"replacement-seed", &sid).await;
    let (after, scanned) = scan(sc.pid(), canary.as_bytes());
    eprintln!("config seed residue: {after} copies in {scanned} bytes (live: {live})");
    assert_eq!(after, 0, "the config's seed value is still in memory");
}
