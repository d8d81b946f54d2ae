//! The broker core through the real binary: sessions, leases, rotation, watch, revocation, errors.

mod common;

use common::*;
use sidecred::api::pb;
use std::time::Duration;
use tonic::Code;

async fn open(b: &mut Broker) -> String {
    open_labeled(b, "t1").await
}

use common::get_req as get;

/// A call-scoped read of `db/call`.
async fn call_get(b: &mut Broker, sid: &str, call: &str) -> pb::GetSecretResponse {
    let req = pb::GetSecretRequest {
        call_id: call.into(),
        ..get("db/call", sid)
    };
    b.get_secret(req).await.unwrap().into_inner()
}

#[tokio::test]
async fn session_open_get_close_removes_the_lease() {
    let sc = Sidecar::start(&dev_body("", ""));
    let mut b = sc.broker().await;
    let sid = open(&mut b).await;
    let r = b.get_secret(get("app/a", &sid)).await.unwrap().into_inner();
    assert_eq!(r.value, b"value-a-1");
    assert_eq!(r.version, "1");
    assert_eq!(r.zone, "internal");
    assert!(r.lease_id.starts_with("lse_"));
    assert_eq!(lease_count(&sc, &sid).await, Some(1));
    let c = b
        .close_session(pb::CloseSessionRequest {
            session_id: sid.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(c.leases_released, 1);
    assert_eq!(
        lease_count(&sc, &sid).await,
        None,
        "session listed after close"
    );
    let e = b
        .release_lease(pb::ReleaseLeaseRequest {
            lease_id: r.lease_id,
            session_id: sid.clone(),
        })
        .await
        .unwrap_err();
    // A closed session is not open for anyone: the same denial as any unknown id.
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(sc.audit_has("session_close"), "{}", sc.audit_text());
    let events: Vec<String> = sc
        .audit_events()
        .iter()
        .map(|e| e["event"].as_str().unwrap().to_string())
        .collect();
    for want in ["session_open", "grant", "session_close"] {
        assert!(
            events.iter().any(|e| e == want),
            "{want} missing from audit: {events:?}"
        );
    }
}

#[tokio::test]
async fn lease_expires_on_time() {
    let sc = Sidecar::start(&dev_body("", ""));
    let mut b = sc.broker().await;
    let sid = open(&mut b).await;
    let r = b
        .get_secret(get("app/short", &sid))
        .await
        .unwrap()
        .into_inner();
    let issued = std::time::SystemTime::now();
    assert_eq!(lease_count(&sc, &sid).await, Some(1));
    // ttl 1s; the sweeper runs every 200 ms.
    let mut gone_after = None;
    for _ in 0..40 {
        if lease_count(&sc, &sid).await == Some(0) {
            gone_after = Some(issued.elapsed().unwrap());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let gone_after = gone_after.expect("lease never expired");
    assert!(
        gone_after >= Duration::from_millis(700),
        "expired too early: {gone_after:?}"
    );
    assert!(
        gone_after <= Duration::from_millis(1600),
        "expired too late: {gone_after:?}"
    );
    let e = b
        .release_lease(pb::ReleaseLeaseRequest {
            lease_id: r.lease_id.clone(),
            session_id: sid,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    assert!(sc.audit_has("\"event\":\"lease_expire\",\"outcome\":\"ok\",\"session\""));
}

#[tokio::test]
async fn single_flight_concurrent_misses_make_one_backend_fetch() {
    let body = dev_body("", "").replace(
        "dynamic_ttl = \"60s\"",
        "dynamic_ttl = \"60s\"\nlatency = \"300ms\"",
    );
    let sc = Sidecar::start(&body);
    let mut b = sc.broker().await;
    let sid = open(&mut b).await;
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let mut b = sc.broker().await;
        let sid = sid.clone();
        tasks.push(tokio::spawn(async move {
            b.get_secret(get("app/a", &sid))
                .await
                .map(|r| r.into_inner().version)
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap(), "1");
    }
    let st = sc
        .admin()
        .await
        .status(pb::StatusRequest {})
        .await
        .unwrap()
        .into_inner();
    let dev = st.backends.iter().find(|b| b.name == "dev").unwrap();
    assert_eq!(
        dev.fetches, 1,
        "32 concurrent misses must make one backend fetch"
    );
    assert_eq!(
        st.leases, 1,
        "repeated plain reads in one session share one lease"
    );
}

#[tokio::test]
async fn rotation_serves_previous_during_grace_only_and_watch_sees_it() {
    let sc = Sidecar::start(&dev_body("", ""));
    let mut b = sc.broker().await;
    let sid = open(&mut b).await;
    let mut watch = b
        .watch_secret(pb::WatchSecretRequest {
            name: "app/a".into(),
            session_id: sid.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = watch.message().await.unwrap().unwrap();
    assert_eq!(
        (first.kind, first.version.as_str()),
        (pb::secret_event::Kind::Current as i32, "1")
    );

    let rot = sc
        .admin()
        .await
        .rotate(pb::RotateRequest {
            name: "app/a".into(),
            grace_seconds: 2,
            value: b"value-a-2".to_vec(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (rot.version.as_str(), rot.previous_version.as_str()),
        ("2", "1")
    );

    let r = b.get_secret(get("app/a", &sid)).await.unwrap().into_inner();
    assert_eq!(r.value, b"value-a-2");
    let prev = r.previous.expect("previous served during grace");
    assert_eq!(
        (prev.value.as_slice(), prev.version.as_str()),
        (&b"value-a-1"[..], "1")
    );
    assert!(r.previous_retires_at > 0);

    let ev = tokio::time::timeout(Duration::from_secs(2), watch.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        (ev.kind, ev.version.as_str(), ev.previous_version.as_str()),
        (pb::secret_event::Kind::Rotated as i32, "2", "1")
    );
    let ev = tokio::time::timeout(Duration::from_secs(5), watch.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        (ev.kind, ev.previous_version.as_str()),
        (pb::secret_event::Kind::Retired as i32, "1")
    );

    let r = b.get_secret(get("app/a", &sid)).await.unwrap().into_inner();
    assert!(r.previous.is_none(), "previous served after grace");
    let e = b
        .get_secret(pb::GetSecretRequest {
            version: "1".into(),
            ..get("app/a", &sid)
        })
        .await
        .unwrap_err();
    assert_eq!(
        e.code(),
        Code::NotFound,
        "retired version still readable: {e:?}"
    );
    assert!(sc.audit_has("\"event\":\"rotate\""));
    assert!(sc.audit_has("\"event\":\"retire\""));
}

#[tokio::test]
async fn revoked_session_is_refused_everywhere() {
    let sc = Sidecar::start(&dev_body("", ""));
    let mut b = sc.broker().await;
    let sid = open(&mut b).await;
    let other = open(&mut b).await;
    let dyn1 = b
        .get_secret(get("db/dyn", &sid))
        .await
        .unwrap()
        .into_inner();
    let dyn2 = b
        .get_secret(get("db/dyn", &other))
        .await
        .unwrap()
        .into_inner();
    assert_ne!(
        dyn1.value, dyn2.value,
        "sessions must never share a session-scoped credential"
    );
    let mut watch = b
        .watch_secret(pb::WatchSecretRequest {
            name: "app/a".into(),
            session_id: sid.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    watch.message().await.unwrap().unwrap();

    let rep = sc
        .admin()
        .await
        .revoke_session(pb::RevokeSessionRequest {
            session_id: sid.clone(),
            reason: "compromised".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(rep.pending.is_empty(), "{:?}", rep.pending);
    let leases = rep
        .done
        .iter()
        .find(|s| s.target == "local" && s.what == "leases")
        .unwrap();
    assert_eq!(leases.count, 1);
    assert!(
        rep.done.iter().any(|s| s.target == "dev" && s.count == 1),
        "dynamic lease revoked at the backend: {:?}",
        rep.done
    );

    let calls = [
        b.get_secret(get("app/a", &sid)).await.unwrap_err(),
        b.release_lease(pb::ReleaseLeaseRequest {
            lease_id: dyn1.lease_id.clone(),
            session_id: sid.clone(),
        })
        .await
        .unwrap_err(),
        b.close_session(pb::CloseSessionRequest {
            session_id: sid.clone(),
        })
        .await
        .unwrap_err(),
        b.watch_secret(pb::WatchSecretRequest {
            name: "app/a".into(),
            session_id: sid.clone(),
        })
        .await
        .unwrap_err(),
    ];
    for e in calls {
        assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
        assert_eq!(err_code(&e), "session-revoked");
        assert!(
            e.message().contains("revoked") && e.message().contains("compromised"),
            "{}",
            e.message()
        );
    }
    // An open watch ends with the same status.
    let end = tokio::time::timeout(Duration::from_secs(3), watch.message())
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(end.code(), Code::FailedPrecondition);
    // The other session is untouched.
    let r = b
        .get_secret(get("db/dyn", &other))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.value, dyn2.value);
    // CLI exit code for a revoked session.
    let o = sc.cli(&["get", "app/a", "--session", &sid]);
    assert_eq!(
        o.status.code(),
        Some(6),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(sc.audit_has("\"event\":\"session_revoke\""));
}

#[tokio::test]
async fn call_scoped_credentials_differ_per_call_and_die_on_release() {
    let sc = Sidecar::start(&dev_body("", ""));
    let mut b = sc.broker().await;
    let sid = open(&mut b).await;
    let e = b.get_secret(get("db/call", &sid)).await.unwrap_err();
    assert_eq!(
        e.code(),
        Code::InvalidArgument,
        "call-scoped secret without call id"
    );
    let c1 = call_get(&mut b, &sid, "call-1").await;
    let c1again = call_get(&mut b, &sid, "call-1").await;
    let c2 = call_get(&mut b, &sid, "call-2").await;
    assert_eq!(c1.value, c1again.value);
    assert_ne!(c1.value, c2.value);
    b.release_lease(pb::ReleaseLeaseRequest {
        lease_id: c1.lease_id.clone(),
        session_id: sid.clone(),
    })
    .await
    .unwrap();
    b.release_lease(pb::ReleaseLeaseRequest {
        lease_id: c1again.lease_id.clone(),
        session_id: sid.clone(),
    })
    .await
    .unwrap();
    let after = call_get(&mut b, &sid, "call-1").await;
    assert_ne!(
        after.value, c1.value,
        "released call credential must not be served again"
    );
    assert!(sc.audit_has("\"event\":\"lease_release\""));
}

#[tokio::test]
async fn malformed_requests_get_invalid_argument() {
    let sc = Sidecar::start(&dev_body("", ""));
    let mut b = sc.broker().await;
    let sid = open(&mut b).await;
    let long = "a".repeat(300);
    let cases = [
        get("", &sid),
        get(&long, &sid),
        get("../etc/passwd", &sid),
        get("app/../a", &sid),
        get("app/a\0x", &sid),
        get("app/a", ""),
        get("app/a", "bad id with spaces"),
        pb::GetSecretRequest {
            call_id: "x".repeat(200),
            ..get("app/a", &sid)
        },
    ];
    // A well-formed id of no open session is refused like another caller's session.
    let e = b
        .get_secret(get("app/a", "ses_doesnotexist"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    for req in cases {
        let shown = format!("{:?}/{:?}", req.name.len(), req.session_id);
        let e = b.get_secret(req).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{shown}: {e:?}");
        assert_eq!(err_code(&e), "invalid-argument");
        assert!(!e.message().is_empty());
    }
    let e = b.get_secret(get("no/such", &sid)).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    assert!(e.message().contains("no/such"));
    let e = b
        .open_session(pb::OpenSessionRequest {
            ttl_seconds: 10 * 86400,
            labels: Default::default(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    // An oversized message is refused by the transport limit, not processed.
    let e = b
        .get_secret(get(&"a".repeat(100_000), &sid))
        .await
        .unwrap_err();
    assert!(
        matches!(
            e.code(),
            Code::ResourceExhausted | Code::InvalidArgument | Code::OutOfRange
        ),
        "{e:?}"
    );
    // Still serving.
    b.get_secret(get("app/a", &sid)).await.unwrap();
}

#[tokio::test]
async fn fail_closed_audit_refuses_requests_it_cannot_record() {
    let sc = Sidecar::builder(&dev_body("", ""))
        .audit_path("/dev/full")
        .fail_closed()
        .start();
    let mut b = sc.broker().await;
    let e = b
        .open_session(pb::OpenSessionRequest::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(e.message().contains("audit"), "{}", e.message());
    let st = sc
        .admin()
        .await
        .status(pb::StatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        st.sessions, 0,
        "a session that could not be audited must not stay open"
    );
}
