//! Faults through the real binary: a slow backend, a connection flood, clients that connect
//! and sit. Each test prints what it measured.

mod common;

use common::*;
use sidecred::api::pb;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};
use tonic::Code;

fn body(latency: &str, extra_server: &str) -> (String, String) {
    let backends = format!(
        r#"
[backends.dev]
kind = "dev"
values = {{ "static/a" = "value-a-1" }}
latency = "{latency}"

[[secret]]
name = "app/a"
backend = "dev"
path = "static/a"
zone = "internal"
ttl = "1s"

[[policy.workload]]
name = "root-callers"
uids = [0]
secrets = ["*"]

[[policy.admin]]
name = "root-admin"
uids = [0]
actions = ["*"]
"#
    );
    (backends, extra_server.to_string())
}

fn start(latency: &str, server: &str) -> Sidecar {
    let (b, s) = body(latency, server);
    Sidecar::builder(&b).server(&s).log("info").start()
}

use common::open_default as open;

fn get(session: &str) -> pb::GetSecretRequest {
    pb::GetSecretRequest {
        name: "app/a".into(),
        session_id: session.into(),
        ..Default::default()
    }
}

fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// Lets this process hold a few thousand sockets (the sidecar inherits the limit).
fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).unwrap();
}

#[tokio::test]
async fn slow_backend_fails_unavailable_within_the_timeout() {
    let sc = start("2s", "backend_timeout = \"200ms\"");
    let mut b = sc.broker().await;
    let sid = open(&mut b).await;
    let t = Instant::now();
    let e = b.get_secret(get(&sid)).await.unwrap_err();
    let took = t.elapsed();
    println!("slow backend: {:?} after {took:?}", e.code());
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert_eq!(err_code(&e), "unavailable");
    assert!(e.message().contains("app/a"), "{}", e.message());
    assert!(took >= Duration::from_millis(180), "too early: {took:?}");
    assert!(took < Duration::from_millis(1500), "not bounded: {took:?}");
}

#[tokio::test]
async fn slow_backend_serves_the_cached_value_stale() {
    let sc = start("0s", "backend_timeout = \"200ms\"\nstale_window = \"30s\"");
    let mut b = sc.broker().await;
    let sid = open(&mut b).await;
    let first = b.get_secret(get(&sid)).await.unwrap().into_inner();
    assert!(!first.stale);
    let fetched = Instant::now();

    // The backend turns slow: reload with 2 s of latency (the cache survives a reload).
    let text = std::fs::read_to_string(&sc.config).unwrap();
    std::fs::write(
        &sc.config,
        text.replace("latency = \"0s\"", "latency = \"2s\""),
    )
    .unwrap();
    sc.signal(nix::sys::signal::Signal::SIGHUP);
    let mut admin = sc.admin().await;
    let mut reloaded = false;
    for _ in 0..250 {
        let st = admin
            .status(pb::StatusRequest {})
            .await
            .unwrap()
            .into_inner();
        if st.config_generation == 2 {
            reloaded = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(reloaded, "reload not applied:\n{}", sc.logs());

    // Past the 1 s ttl the value is stale; the backend cannot answer within 200 ms.
    let wait = Duration::from_millis(1100).saturating_sub(fetched.elapsed());
    tokio::time::sleep(wait).await;
    let mut stale = None;
    for _ in 0..20 {
        let t = Instant::now();
        let r = b.get_secret(get(&sid)).await.unwrap().into_inner();
        let took = t.elapsed();
        assert!(took < Duration::from_millis(1500), "not bounded: {took:?}");
        if r.stale {
            stale = Some((r, took));
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (r, took) = stale.expect("never served stale");
    println!("stale serve after {took:?}");
    assert_eq!(r.value, first.value);
    assert_eq!(r.version, first.version);
    assert!(
        sc.audit_has("ok_stale"),
        "no stale grant audited:\n{}",
        sc.audit_text()
    );
}

#[tokio::test]
async fn connection_flood_is_capped_and_released() {
    raise_fd_limit();
    let sc = start("0s", "max_connections = 500\nhandshake_timeout = \"1s\"");
    let mut b = sc.broker().await;
    let sid = open(&mut b).await;
    let pid = sc.pid();
    let base = fd_count(pid);

    let path = sc.workload.clone();
    let flood = std::thread::spawn(move || {
        let t = Instant::now();
        let mut conns = Vec::new();
        while conns.len() < 2000 && t.elapsed() < Duration::from_secs(20) {
            if let Ok(c) = UnixStream::connect(&path) {
                conns.push(c);
            }
        }
        (conns, t.elapsed())
    });
    // While the flood runs, the existing connection keeps being served.
    let mut peak = base;
    let mut worst = Duration::ZERO;
    while !flood.is_finished() {
        peak = peak.max(fd_count(pid));
        let t = Instant::now();
        let r = b.get_secret(get(&sid)).await.unwrap().into_inner();
        assert_eq!(r.value, b"value-a-1");
        worst = worst.max(t.elapsed());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (conns, took) = flood.join().unwrap();
    peak = peak.max(fd_count(pid));
    println!(
        "flood: {} connections in {took:?}; server fds {base} before, peak {peak}; worst GetSecret during flood {worst:?}",
        conns.len()
    );
    assert_eq!(conns.len(), 2000, "flood did not complete");
    assert!(
        peak <= base + 500 + 16,
        "fds not bounded: {peak} (base {base})"
    );
    assert!(worst < Duration::from_secs(1), "server stalled: {worst:?}");

    drop(conns);
    let settled = wait_for(Duration::from_secs(5), || {
        let n = fd_count(pid);
        (n <= base + 2).then_some(n)
    });
    println!("fds after closing: {settled:?}");
    assert!(settled.is_some(), "fds not released: {}", fd_count(pid));
    // A new caller gets in.
    let mut fresh = sc.broker().await;
    fresh.get_secret(get(&sid)).await.unwrap();
}

#[tokio::test]
async fn slow_clients_do_not_block_others_and_are_dropped() {
    let sc = start("0s", "handshake_timeout = \"1s\"");
    let pid = sc.pid();
    let mut b = sc.broker().await;
    let sid = open(&mut b).await;
    let base = fd_count(pid);

    let mut slow = Vec::new();
    for i in 0..40 {
        let mut c = UnixStream::connect(&sc.workload).unwrap();
        match i % 3 {
            0 => {}
            1 => c.write_all(b"PRI * HTTP/2.0\r\n").unwrap(),
            _ => c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").unwrap(),
        }
        slow.push(c);
    }
    let opened = Instant::now();
    // Other callers, old and new, are served at once.
    let t = Instant::now();
    b.get_secret(get(&sid)).await.unwrap();
    let mut fresh = sc.broker().await;
    fresh.get_secret(get(&sid)).await.unwrap();
    let served = t.elapsed();
    assert!(served < Duration::from_secs(1), "blocked: {served:?}");

    // The server hangs up on each slow client once the handshake deadline passes.
    let mut dropped_after = Duration::ZERO;
    for c in &mut slow {
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 256];
        loop {
            match c.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => continue, // an HTTP/1 error reply or a GOAWAY before the close
            }
        }
        dropped_after = dropped_after.max(opened.elapsed());
    }
    println!("40 slow clients: others served in {served:?}; all dropped after {dropped_after:?}");
    assert!(
        dropped_after >= Duration::from_millis(900) && dropped_after < Duration::from_secs(4),
        "dropped after {dropped_after:?}"
    );
    // `base` plus the one connection `fresh` still holds.
    let n = wait_for(Duration::from_secs(3), || {
        let n = fd_count(pid);
        (n <= base + 1).then_some(n)
    });
    assert!(n.is_some(), "fds: {} (base {base})", fd_count(pid));
}
