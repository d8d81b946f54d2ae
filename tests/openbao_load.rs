//! OpenBao killed and restarted while concurrent readers hammer one KV secret: no call hangs,
//! the old value is served stale inside the stale window, UNAVAILABLE comes fast once the
//! window is over, and every reader gets the new value soon after OpenBao is back.

mod common;

use common::openbao::*;
use common::readers::{Call, Opts, Outcome, Readers};
use common::*;
use serde_json::json;
use std::time::{Duration, Instant};
use tonic::Code;

const READERS: usize = 24;
const SESSIONS: usize = 4;
/// Client deadline of every call: a hang shows up as a timed-out call.
const DEADLINE: Duration = Duration::from_secs(3);
/// No call may come close to the deadline.
const MAX_CALL: Duration = Duration::from_millis(2500);
const TTL: Duration = Duration::from_secs(1);
const STALE_WINDOW: Duration = Duration::from_secs(3);
/// Slack for scheduling on a busy machine at the edges of the stale window.
const EDGE: Duration = Duration::from_millis(500);
/// How long OpenBao stays down.
const OUTAGE: Duration = Duration::from_millis(6500);
/// An UNAVAILABLE answer must come at least this fast once the window is over.
const FAIL_FAST: Duration = Duration::from_secs(1);
/// All readers must see the new value this soon after it is written.
const CONVERGE: Duration = Duration::from_secs(3);

const OLD: &[u8] = b"before-restart";
const NEW: &[u8] = b"after-restart";

fn is_value(c: &Call, want: &[u8]) -> bool {
    matches!(&c.outcome, Outcome::Ok { value, .. } if value == want)
}

fn is_fresh_new(c: &Call) -> bool {
    matches!(&c.outcome, Outcome::Ok { value, stale: false, .. } if value == NEW)
}

/// p50, p99 and max of some latencies, in ms, for the printed report.
fn spread(mut d: Vec<Duration>) -> String {
    if d.is_empty() {
        return "no calls".into();
    }
    d.sort();
    let at = |q: f64| d[((d.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e3;
    format!(
        "{} calls, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        d.len(),
        at(0.5),
        at(0.99),
        at(1.0)
    )
}

/// Whether the sidecar process still runs (a zombie does not count).
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| !rest.starts_with('Z')))
        .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_and_restarted_under_load_serves_stale_then_unavailable_then_recovers() {
    let begun = Instant::now();
    let mut bao = OpenBao::start();
    bao.kv_put("app/load", json!({"v": "before-restart"})).await;
    let tmp = tempfile::tempdir().unwrap();
    let tf = write_file(tmp.path(), "token", &bao.root_token);
    let body = format!(
        "{}{}{}",
        token_file_backend(&bao, &tf, "timeout = \"1s\"\n"),
        kv_secret("load", "app/load", "ttl = \"1s\""),
        OPEN_POLICY
    );
    let sc = Sidecar::builder(&body)
        .server("stale_window = \"3s\"\nbackend_timeout = \"1s\"")
        .log("info")
        .start();
    let mut b = sc.broker().await;
    let mut sessions = Vec::new();
    for _ in 0..SESSIONS {
        sessions.push(open(&mut b).await);
    }
    assert_eq!(
        get(&mut b, &sessions[0], "load", "").await.unwrap().value,
        OLD
    );

    let opts = Opts {
        deadline: Some(DEADLINE),
        pause: Duration::from_millis(1),
        stop_after: Some(Duration::from_secs(40)),
        log: true,
        print_failures: false,
    };
    let readers = Readers::start_with(&b, &sessions, "load", READERS, opts);
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let killed = Instant::now();
    tokio::task::block_in_place(|| bao.kill());
    tokio::time::sleep(OUTAGE).await;
    let restarting = Instant::now();
    tokio::task::block_in_place(|| bao.spawn());
    let up = Instant::now();
    bao.kv_put("app/load", json!({"v": "after-restart"})).await;
    let written = Instant::now();
    tokio::time::sleep(CONVERGE + Duration::from_millis(1000)).await;
    let t = readers.stop().await;
    let calls: Vec<&Call> = t.calls.iter().flatten().collect();
    let ms = |d: Duration| d.as_millis();

    eprintln!(
        "openbao under load: {READERS} readers over {SESSIONS} sessions, {} calls ({} ok, {} stale, {} failed, {} timed out), max latency {:?}, codes {:?}",
        calls.len(),
        t.ok,
        t.stale,
        t.failed,
        t.timed_out,
        t.max_latency,
        t.codes
    );
    eprintln!(
        "timeline: killed at +0, restart began +{} ms, up +{} ms, new value written +{} ms",
        ms(restarting - killed),
        ms(up - killed),
        ms(written - killed)
    );

    // 1. Nothing hangs.
    assert_eq!(t.timed_out, 0, "calls hit the {DEADLINE:?} deadline");
    assert!(
        t.max_latency < MAX_CALL,
        "slowest call took {:?}",
        t.max_latency
    );

    // Before the kill: the old value, fresh.
    let before: Vec<&Call> = calls.iter().copied().filter(|c| c.end() < killed).collect();
    eprintln!(
        "before kill: {}",
        spread(before.iter().map(|c| c.took).collect())
    );
    assert!(
        before.len() > 50,
        "only {} calls before the kill",
        before.len()
    );
    let bad = before
        .iter()
        .filter(|c| !matches!(&c.outcome, Outcome::Ok { value, stale: false, .. } if value == OLD))
        .count();
    assert_eq!(
        bad, 0,
        "answers other than the fresh old value before the kill"
    );

    // 2. Inside the stale window: the cached value turns stale at most TTL after the kill and
    // is served for STALE_WINDOW more, so until then only the old value, some marked stale.
    let window_end = killed + STALE_WINDOW - EDGE;
    let within: Vec<&Call> = calls
        .iter()
        .copied()
        .filter(|c| c.end() >= killed && c.at < window_end)
        .collect();
    let stale = within
        .iter()
        .filter(|c| matches!(c.outcome, Outcome::Ok { stale: true, .. }))
        .count();
    let wrong: Vec<&Outcome> = within
        .iter()
        .filter(|c| !is_value(c, OLD))
        .map(|c| &c.outcome)
        .collect();
    eprintln!(
        "within stale window (+0..+{} ms): {}, {stale} stale, {} not the old value",
        ms(window_end - killed),
        spread(within.iter().map(|c| c.took).collect()),
        wrong.len()
    );
    assert!(
        wrong.is_empty(),
        "within the window: {:?}",
        &wrong[..wrong.len().min(5)]
    );
    assert!(stale > 0, "no stale answers within the window");

    // Where the window really ended, as the readers saw it.
    let last_stale = calls
        .iter()
        .filter(|c| c.at >= killed && is_value(c, OLD))
        .map(|c| c.end())
        .max()
        .unwrap();
    let first_unavailable = calls
        .iter()
        .filter(|c| c.at >= killed && c.outcome == Outcome::Err(Code::Unavailable))
        .map(|c| c.at)
        .min()
        .expect("no UNAVAILABLE during the outage");
    eprintln!(
        "observed: last old value answered +{} ms, first UNAVAILABLE call began +{} ms",
        ms(last_stale - killed),
        ms(first_unavailable - killed)
    );
    let expired_from = killed + TTL + STALE_WINDOW + EDGE;
    assert!(
        last_stale < expired_from,
        "old value served {} ms after the kill, past ttl + stale window",
        ms(last_stale - killed)
    );

    // 3. After the window, while OpenBao is still down: UNAVAILABLE, quickly.
    let expired: Vec<&Call> = calls
        .iter()
        .copied()
        .filter(|c| c.at >= expired_from && c.end() < restarting)
        .collect();
    let not_unavailable: Vec<&Outcome> = expired
        .iter()
        .filter(|c| c.outcome != Outcome::Err(Code::Unavailable))
        .map(|c| &c.outcome)
        .collect();
    let slowest = expired.iter().map(|c| c.took).max().unwrap_or_default();
    eprintln!(
        "after the window, still down (+{}..+{} ms): {}",
        ms(expired_from - killed),
        ms(restarting - killed),
        spread(expired.iter().map(|c| c.took).collect())
    );
    assert!(
        expired.len() > 20,
        "only {} calls after the window",
        expired.len()
    );
    assert!(
        not_unavailable.is_empty(),
        "after the window: {:?}",
        &not_unavailable[..not_unavailable.len().min(5)]
    );
    assert!(slowest < FAIL_FAST, "UNAVAILABLE took {slowest:?}");

    // While OpenBao starts (fresh dev state, the path is gone until written): errors only,
    // UNAVAILABLE or NOT_FOUND.
    let starting: Vec<&Call> = calls
        .iter()
        .copied()
        .filter(|c| c.end() >= restarting && c.end() < written && c.at >= expired_from)
        .collect();
    let mut codes = std::collections::BTreeMap::<String, usize>::new();
    for c in &starting {
        *codes.entry(format!("{:?}", c.outcome)).or_default() += 1;
    }
    eprintln!(
        "restart until written (+{}..+{} ms): {}, outcomes {codes:?}",
        ms(restarting - killed),
        ms(written - killed),
        spread(starting.iter().map(|c| c.took).collect())
    );
    assert!(
        starting
            .iter()
            .all(|c| matches!(c.outcome, Outcome::Err(Code::Unavailable | Code::NotFound))),
        "while OpenBao restarts: {codes:?}"
    );

    // 4. Recovery: each reader ends with a run of fresh new values, started soon after the write.
    let mut converged = Duration::ZERO;
    for (i, rc) in t.calls.iter().enumerate() {
        let after: Vec<&Call> = rc.iter().filter(|c| c.at >= written).collect();
        let good_tail = after.iter().rev().take_while(|c| is_fresh_new(c)).count();
        assert!(
            good_tail >= 5,
            "reader {i} ends with {good_tail} fresh new values"
        );
        let last_bad = after
            .iter()
            .rev()
            .find(|c| !is_fresh_new(c))
            .map(|c| c.end() - written)
            .unwrap_or_default();
        converged = converged.max(last_bad);
    }
    let recovered: Vec<&Call> = calls
        .iter()
        .copied()
        .filter(|c| c.at >= written + converged)
        .collect();
    eprintln!(
        "recovery: all readers on the fresh new value {} ms after the write; then {}",
        ms(converged),
        spread(recovered.iter().map(|c| c.took).collect())
    );
    assert!(
        converged < CONVERGE,
        "readers converged only after {converged:?}"
    );
    assert!(
        calls
            .iter()
            .filter(|c| c.at >= expired_from)
            .all(|c| !is_value(c, OLD)),
        "old value served after the window"
    );

    // The sidecar is alive, serves, and did not panic.
    assert!(running(sc.pid()), "sidecar died:\n{}", sc.logs());
    let r = get(&mut b, &sessions[1], "load", "").await.unwrap();
    assert_eq!((r.value.as_slice(), r.stale), (NEW, false));
    let logs = sc.logs();
    assert!(!logs.contains("panicked"), "panic in sidecar logs:\n{logs}");
    // Tens of thousands of reads hit the outage: the log says so, but not once per read.
    let loud = logs
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        .count();
    eprintln!("warning/error log lines during the run: {loud}");
    assert!(loud < 100, "the outage flooded the log ({loud} lines)");
    eprintln!("test took {:?}", begun.elapsed());
    assert!(begun.elapsed() < Duration::from_secs(60));
}
