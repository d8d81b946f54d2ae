//! The Rust client library against the real binary: session and call guards, watch,
//! typed errors, deadlines and retries.

mod common;

use common::*;
use sidecred::api::pb;
use sidecred_client::{Client, ClientError, ClientOptions, EventKind, RetryPolicy, SessionOptions};
use std::time::{Duration, Instant};

use common::lease_count as leases;

/// Polls the admin API until the session's lease count is `want`.
async fn wait_leases(sc: &Sidecar, session: &str, want: Option<u32>) {
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        let got = leases(sc, session).await;
        if got == want {
            return;
        }
        assert!(Instant::now() < end, "lease count {got:?}, want {want:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn quick(attempts: u32) -> ClientOptions {
    ClientOptions {
        timeout: Duration::from_secs(5),
        connect_timeout: Duration::from_millis(500),
        retry: RetryPolicy {
            max_attempts: attempts,
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_millis(200),
        },
        ..ClientOptions::default()
    }
}

/// Sockets the sidecar process holds open: each client connection adds one.
fn sockets_of(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|t| t.to_string_lossy().starts_with("socket:"))
        .count()
}

#[tokio::test]
async fn calls_are_spread_over_the_configured_connections() {
    let sc = Sidecar::start(&dev_body("", ""));
    for n in [1usize, 3] {
        // Connections that are still closing (the start-up health probe, the last round) are
        // not counted: wait for the count to hold still.
        let mut before = sockets_of(sc.pid());
        let settle = Instant::now() + Duration::from_secs(5);
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let now = sockets_of(sc.pid());
            if now == before || Instant::now() > settle {
                break;
            }
            before = now;
        }
        let opts = ClientOptions {
            connections: n,
            ..quick(1)
        };
        let client = Client::connect_with(&sc.workload, opts).await.unwrap();
        assert_eq!(client.connections(), n);
        let session = client.session().await.unwrap();
        for _ in 0..2 * n {
            session.get_secret("app/a").await.unwrap();
        }
        assert_eq!(sockets_of(sc.pid()) - before, n, "{n} connections");
        session.close().await.unwrap();
        drop(client);
        // The server notices the closed connections before the next round counts.
        let end = Instant::now() + Duration::from_secs(5);
        while sockets_of(sc.pid()) != before && Instant::now() < end {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[tokio::test]
async fn session_and_call_lifecycle_with_explicit_close() {
    let sc = Sidecar::start(&dev_body("", ""));
    // The only test that sets the variable; no other test in this file reads it.
    std::env::set_var("SIDECRED_SOCKET", &sc.workload);
    let client = Client::from_env().await.unwrap();
    let session = client
        .open_session(SessionOptions {
            ttl: Some(Duration::from_secs(120)),
            labels: [("agent_id".to_string(), "rust-client".to_string())].into(),
        })
        .await
        .unwrap();
    assert!(session.id().starts_with("ses_"), "{session:?}");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!((session.expires_at() - now - 120).abs() <= 2);

    let a = session.get_secret("app/a").await.unwrap();
    assert_eq!(a.value.expose(), b"value-a-1");
    assert_eq!((a.version.as_str(), a.zone.as_str()), ("1", "internal"));
    let shown = format!("{a:?} {a:#?} {session:?}");
    assert!(!shown.contains("value-a-1"), "{shown}");
    assert!(shown.contains("REDACTED"), "{shown}");

    let call = session.call("call-1");
    let c1 = call.get_secret("db/call").await.unwrap();
    let c1b = call.get_secret("db/call").await.unwrap();
    let shared = call.get_secret("app/a").await.unwrap();
    assert_eq!(
        c1.value.expose(),
        c1b.value.expose(),
        "same call, same value"
    );
    assert_eq!(shared.value.expose(), b"value-a-1");
    assert_eq!(c1.zone, "restricted");
    wait_leases(&sc, session.id(), Some(4)).await;
    assert_eq!(call.release().await.unwrap(), 3);
    wait_leases(&sc, session.id(), Some(1)).await;

    // A fresh call with the same id gets a new credential: the old one died on release.
    let again = session.call("call-1");
    let c2 = again.get_secret("db/call").await.unwrap();
    assert_ne!(c2.value.expose(), c1.value.expose());
    assert_eq!(again.release().await.unwrap(), 1);

    let id = session.id().to_string();
    assert_eq!(session.close().await.unwrap(), 1);
    assert_eq!(leases(&sc, &id).await, None, "session listed after close");
    assert!(sc.audit_has("\"event\":\"lease_release\""));
}

#[tokio::test]
async fn dropped_guards_release_leases_and_close_the_session() {
    let sc = Sidecar::start(&dev_body("", ""));
    let client = Client::connect(&sc.workload).await.unwrap();
    let session = client.session().await.unwrap();
    let id = session.id().to_string();
    session.get_secret("app/a").await.unwrap();
    {
        let call = session.call("call-drop");
        call.get_secret("db/call").await.unwrap();
        call.get_secret("app/a").await.unwrap();
        wait_leases(&sc, &id, Some(3)).await;
    }
    wait_leases(&sc, &id, Some(1)).await;
    drop(session);
    wait_leases(&sc, &id, None).await;
}

#[tokio::test]
async fn watch_receives_a_rotation() {
    let sc = Sidecar::start(&dev_body("", ""));
    let client = Client::connect(&sc.workload).await.unwrap();
    let session = client.session().await.unwrap();
    let mut watch = session.watch("app/a").await.unwrap();
    let first = watch.next().await.unwrap().unwrap();
    assert_eq!(
        (first.kind, first.version.as_str()),
        (EventKind::Current, "1")
    );

    sc.admin()
        .await
        .rotate(pb::RotateRequest {
            name: "app/a".into(),
            grace_seconds: 1,
            value: b"value-a-2".to_vec(),
        })
        .await
        .unwrap();
    let ev = tokio::time::timeout(Duration::from_secs(3), watch.next())
        .await
        .expect("rotation event")
        .unwrap()
        .unwrap();
    assert_eq!(
        (ev.kind, ev.version.as_str(), ev.previous_version.as_str()),
        (EventKind::Rotated, "2", "1")
    );
    assert!(ev.previous_retires_at >= ev.at);
    let s = session.get_secret("app/a").await.unwrap();
    assert_eq!(s.value.expose(), b"value-a-2");
    let prev = s.previous.as_ref().expect("previous during grace");
    assert_eq!(
        (prev.version.as_str(), prev.value.expose()),
        ("1", &b"value-a-1"[..])
    );
    assert!(!format!("{s:?}").contains("value-a"));

    // Through the futures::Stream impl too.
    use futures::StreamExt;
    let ev = tokio::time::timeout(Duration::from_secs(4), watch.next_stream())
        .await
        .expect("retire event")
        .unwrap()
        .unwrap();
    assert_eq!(
        (ev.kind, ev.previous_version.as_str()),
        (EventKind::Retired, "1")
    );
    drop(StreamExt::boxed(watch));
}

trait NextStream {
    fn next_stream(&mut self) -> futures::stream::Next<'_, Self>
    where
        Self: Sized + Unpin + futures::Stream;
}
impl<S: futures::Stream + Unpin> NextStream for S {
    fn next_stream(&mut self) -> futures::stream::Next<'_, Self> {
        futures::StreamExt::next(self)
    }
}

#[tokio::test]
async fn errors_are_typed() {
    let body = dev_body("", "[[secret]]\nname = \"ops/locked\"\nbackend = \"dev\"\npath = \"static/a\"\nzone = \"internal\"\n")
        .replace("secrets = [\"*\"]", "secrets = [\"app/*\", \"db/*\"]");
    let sc = Sidecar::start(&body);
    let client = Client::connect(&sc.workload).await.unwrap();
    let session = client.session().await.unwrap();

    let e = session.get_secret("app/missing").await.unwrap_err();
    assert!(
        matches!(e, ClientError::NotFound(ref m) if m.contains("app/missing")),
        "{e:?}"
    );
    let e = session.get_secret("ops/locked").await.unwrap_err();
    assert!(matches!(e, ClientError::Denied(_)), "{e:?}");
    let e = session.get_secret("db/call").await.unwrap_err();
    assert!(
        matches!(e, ClientError::InvalidArgument(_)),
        "no call id: {e:?}"
    );
    let e = session
        .call("bad call id")
        .get_secret("db/call")
        .await
        .unwrap_err();
    assert!(matches!(e, ClientError::InvalidArgument(_)), "{e:?}");

    let call = session.call("c-before-revoke");
    call.get_secret("db/call").await.unwrap();
    let mut watch = session.watch("app/a").await.unwrap();
    watch.next().await.unwrap().unwrap();
    sc.admin()
        .await
        .revoke_session(pb::RevokeSessionRequest {
            session_id: session.id().into(),
            reason: "compromised".into(),
        })
        .await
        .unwrap();
    let e = session.get_secret("app/a").await.unwrap_err();
    assert!(
        matches!(e, ClientError::SessionRevoked(ref m) if m.contains("compromised")),
        "{e:?}"
    );
    assert!(e.is_session_gone() && !e.is_transient());
    let e = call.get_secret("db/call").await.unwrap_err();
    assert!(matches!(e, ClientError::SessionRevoked(_)), "{e:?}");
    // The lease died with the session: releasing it is not an error.
    assert_eq!(call.release().await.unwrap(), 1);
    let end = tokio::time::timeout(Duration::from_secs(3), watch.next())
        .await
        .expect("watch ends after revocation")
        .unwrap()
        .unwrap_err();
    assert!(matches!(end, ClientError::SessionRevoked(_)), "{end:?}");
    let e = session.close().await.unwrap_err();
    assert!(matches!(e, ClientError::SessionRevoked(_)), "{e:?}");
}

#[tokio::test]
async fn unavailable_is_retried_a_bounded_number_of_times() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("none.sock");
    let t = Instant::now();
    let e = Client::connect_with(&missing, quick(3)).await.unwrap_err();
    let took = t.elapsed();
    assert!(
        matches!(e, ClientError::Unavailable(ref m) if m.contains("after 3 attempts")),
        "{e:?}"
    );
    // Two backoffs: 25..50 ms then 50..100 ms.
    assert!(
        took >= Duration::from_millis(75) && took < Duration::from_secs(2),
        "{took:?}"
    );
    let e = Client::connect("relative.sock").await.unwrap_err();
    assert!(matches!(e, ClientError::Config(_)), "{e:?}");

    // A sidecar that restarts while the client retries: the retry reaches the new process.
    let mut sc = Sidecar::start(&dev_body("", ""));
    let client = Client::connect_with(&sc.workload, quick(12)).await.unwrap();
    client.session().await.unwrap().close().await.unwrap();
    sc.kill();
    let restart = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        sc.spawn();
        sc
    });
    let t = Instant::now();
    let session = client.session().await.unwrap();
    assert!(
        t.elapsed() >= Duration::from_millis(200),
        "{:?}",
        t.elapsed()
    );
    let sc = restart.join().unwrap();
    assert_eq!(leases(&sc, session.id()).await, Some(0));
    session.close().await.unwrap();
}

#[tokio::test]
async fn deadline_is_enforced_and_not_retried() {
    let body = dev_body("", "").replace(
        "dynamic_ttl = \"60s\"",
        "dynamic_ttl = \"60s\"\nlatency = \"3s\"",
    );
    let sc = Sidecar::start(&body);
    let mut opts = quick(4);
    opts.timeout = Duration::from_millis(300);
    let client = Client::connect_with(&sc.workload, opts).await.unwrap();
    let session = client.session().await.unwrap();
    let t = Instant::now();
    let e = session.get_secret("app/a").await.unwrap_err();
    assert!(matches!(e, ClientError::DeadlineExceeded(_)), "{e:?}");
    assert!(
        t.elapsed() < Duration::from_millis(1500),
        "{:?}",
        t.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_is_not_held_up_by_a_connected_client() {
    let mut sc = Sidecar::start(&dev_body("", ""));
    let client = Client::connect(&sc.workload).await.unwrap();
    let session = client.session().await.unwrap();
    let mut watch = session.watch("app/a").await.unwrap();
    watch.next().await.unwrap().unwrap();
    let t = Instant::now();
    let status = tokio::task::block_in_place(|| sc.stop());
    assert!(status.success(), "{status}");
    assert!(t.elapsed() < Duration::from_secs(8), "{:?}", t.elapsed());
    assert!(watch.next().await.is_none_or(|r| r.is_err()));
}
