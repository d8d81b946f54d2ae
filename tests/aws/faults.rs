//! Outside changes, outages and throttling: DescribeSecret rechecks, stale serving, retries.
use crate::common::*;
use crate::fault_proxy::{Fault, FaultProxy};
use crate::moto::Moto;
use crate::support::*;
use sidecred::api::pb;
use std::time::{Duration, Instant};
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outside_rotation_is_noticed_by_describe_without_refetching() {
    let m = Moto::start();
    let proxy = FaultProxy::start(m.port);
    let v1 = create(&m, "tok", "tok-v1").await;
    let sc = Sidecar::start(&body(
        &proxy.endpoint(),
        "recheck_interval = \"300ms\"",
        &[("app/tok", "tok", "ttl = \"60s\"")],
    ));
    let mut b = sc.broker().await;
    let sid = open(&mut b).await;
    let mut w = watch(&mut b, &sid, "app/tok").await;
    for _ in 0..200 {
        assert_eq!(get(&mut b, &sid, "app/tok", "").await.unwrap().version, v1);
    }
    assert_eq!(proxy.count("GetSecretValue"), 1, "200 reads, one fetch");

    let t0 = Instant::now();
    let v2 = rotate_outside(&m, "tok", "tok-v2").await;
    let ev = next_event(&mut w, Duration::from_secs(3)).await;
    let noticed = t0.elapsed();
    assert_eq!(
        (ev.kind, ev.version.as_str(), ev.previous_version.as_str()),
        (
            pb::secret_event::Kind::Changed as i32,
            v2.as_str(),
            v1.as_str()
        )
    );
    assert!(
        noticed < Duration::from_millis(1500),
        "noticed after {noticed:?}"
    );
    for _ in 0..100 {
        let r = get(&mut b, &sid, "app/tok", "").await.unwrap();
        assert_eq!(
            (r.value.as_slice(), r.version.as_str()),
            (&b"tok-v2"[..], v2.as_str())
        );
    }
    let (gets, describes) = (proxy.count("GetSecretValue"), proxy.count("DescribeSecret"));
    println!("outside rotation noticed after {noticed:?}; GetSecretValue={gets} DescribeSecret={describes} for 300 reads");
    assert_eq!(gets, 2, "one fetch per version");
    assert!(describes >= 1);
    assert!(sc.audit_has("\"event\":\"changed\""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emulator_down_stale_in_window_then_unavailable_then_recovery() {
    let mut m = Moto::start();
    create(&m, "svc", "svc-v1").await;
    let sc = Sidecar::builder(&body(
        &m.endpoint(),
        "max_attempts = 2",
        &[("app/svc", "svc", "ttl = \"1s\"")],
    ))
    .server("stale_window = \"2s\"\nbackend_timeout = \"2s\"")
    .start();
    let mut b = sc.broker().await;
    let sid = open(&mut b).await;
    let fetched = Instant::now();
    assert!(!get(&mut b, &sid, "app/svc", "").await.unwrap().stale);
    m.stop();
    let (healthy, detail) = aws_health(&sc).await;
    assert!(!healthy, "{detail}");
    assert!(detail.contains("ListSecrets"), "{detail}");

    tokio::time::sleep(Duration::from_millis(1300).saturating_sub(fetched.elapsed())).await;
    let t = Instant::now();
    let r = get(&mut b, &sid, "app/svc", "").await.unwrap();
    println!("stale read with emulator down took {:?}", t.elapsed());
    assert!(r.stale, "served stale inside the window");
    assert_eq!(r.value, b"svc-v1");

    tokio::time::sleep(Duration::from_millis(3300).saturating_sub(fetched.elapsed())).await;
    let t = Instant::now();
    let e = get(&mut b, &sid, "app/svc", "").await.unwrap_err();
    println!("UNAVAILABLE after the window took {:?}", t.elapsed());
    assert_eq!(
        (e.code(), err_code(&e).as_str()),
        (Code::Unavailable, "unavailable"),
        "{e:?}"
    );
    assert!(t.elapsed() < Duration::from_secs(2));

    m.spawn();
    create(&m, "svc", "svc-v1").await;
    let (healthy, detail) = aws_health(&sc).await;
    assert!(
        healthy && detail.contains("us-east-1: reachable"),
        "{detail}"
    );
    let r = get(&mut b, &sid, "app/svc", "").await.unwrap();
    assert!(!r.stale);
    assert_eq!(r.value, b"svc-v1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_and_5xx_are_retried_then_unavailable_promptly_and_denied_is_named() {
    let m = Moto::start();
    let proxy = FaultProxy::start(m.port);
    for n in ["one", "two", "three"] {
        create(&m, n, &format!("{n}-value")).await;
    }
    let sc = Sidecar::start(&body(
        &proxy.endpoint(),
        "max_attempts = 4",
        &[
            ("app/one", "one", ""),
            ("app/two", "two", ""),
            ("app/three", "three", ""),
        ],
    ));
    let mut b = sc.broker().await;
    let sid = open(&mut b).await;

    proxy.fail_next(&[Fault::Throttle, Fault::Throttle, Fault::Status(503)]);
    let t = Instant::now();
    let r = get(&mut b, &sid, "app/one", "").await.unwrap();
    println!("read through 2 throttles + one 503 took {:?}", t.elapsed());
    assert_eq!(r.value, b"one-value");
    assert_eq!(
        proxy.count("GetSecretValue"),
        4,
        "three retries, then success"
    );

    proxy.fail_always(Some(Fault::Status(500)));
    let t = Instant::now();
    let e = get(&mut b, &sid, "app/two", "").await.unwrap_err();
    let took = t.elapsed();
    println!("persistent 500: UNAVAILABLE after {took:?}");
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(took < Duration::from_secs(2), "{took:?}");
    assert_eq!(
        proxy.count("GetSecretValue"),
        8,
        "bounded: max_attempts = 4"
    );

    proxy.fail_always(Some(Fault::Error("AccessDeniedException")));
    let e = get(&mut b, &sid, "app/three", "").await.unwrap_err();
    assert_eq!(
        (e.code(), err_code(&e).as_str()),
        (Code::PermissionDenied, "denied"),
        "{e:?}"
    );
    assert!(
        e.message().contains("app/three") && !e.message().contains("`three`"),
        "{e:?}"
    );
    assert_eq!(proxy.count("GetSecretValue"), 9, "denied is not retried");

    proxy.fail_always(None);
    assert_eq!(
        get(&mut b, &sid, "app/two", "").await.unwrap().value,
        b"two-value"
    );
}

async fn aws_health(sc: &Sidecar) -> (bool, String) {
    let st = sc
        .admin()
        .await
        .status(pb::StatusRequest {})
        .await
        .unwrap()
        .into_inner();
    let b = st.backends.iter().find(|b| b.name == "aws").unwrap();
    assert_eq!(b.kind, "aws");
    (b.healthy, b.detail.clone())
}
