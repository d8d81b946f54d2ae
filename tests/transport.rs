//! The workload socket's HTTP/2 server seen from the wire: raw `h2` requests against the real
//! binary for what typed clients never send — compressed or malformed gRPC bodies, a caller's
//! `grpc-timeout` on a slow backend, more streams than one connection may open, an abandoned
//! watch.

mod common;

use bytes::{BufMut, Bytes, BytesMut};
use common::*;
use prost::Message;
use sidecred::api::pb;
use std::time::{Duration, Instant};

const BODY: &str = r#"
[backends.dev]
kind = "dev"
values = { "static/a" = "value-a-1", "slow/b" = "value-b-1" }

[backends.slow]
kind = "dev"
values = { "slow/b" = "value-b-1" }
latency = "2s"

[[secret]]
name = "app/a"
backend = "dev"
path = "static/a"
zone = "internal"
ttl = "1h"

[[secret]]
name = "app/slow"
backend = "slow"
path = "slow/b"
zone = "internal"
ttl = "1h"

[[policy.workload]]
name = "root-callers"
uids = [0]
secrets = ["*"]

[[policy.admin]]
name = "root-admin"
uids = [0]
actions = ["*"]
"#;

async fn h2_conn(sc: &Sidecar) -> h2::client::SendRequest<Bytes> {
    let io = tokio::net::UnixStream::connect(&sc.workload).await.unwrap();
    // Windows as hyper-based clients (tonic) set them: h2's default 64 KiB connection window
    // would also cap how many small answers the client may buffer unread.
    let (send, conn) = h2::client::Builder::new()
        .initial_window_size(2 << 20)
        .initial_connection_window_size(5 << 20)
        .handshake(io)
        .await
        .unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    send
}

fn framed(flag: u8, msg: &[u8]) -> Bytes {
    let mut b = BytesMut::new();
    b.put_u8(flag);
    b.put_u32(msg.len() as u32);
    b.put_slice(msg);
    b.freeze()
}

/// One raw call: returns (grpc-status, grpc-message, message bytes, elapsed).
async fn raw_call(
    send: &h2::client::SendRequest<Bytes>,
    method: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> (String, String, Vec<u8>, Duration) {
    let t = Instant::now();
    let mut send = send.clone().ready().await.unwrap();
    let mut req = http::Request::post(format!("http://localhost/sidecred.v1.Broker/{method}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let (resp, mut out) = send.send_request(req.body(()).unwrap(), false).unwrap();
    out.send_data(body, true).unwrap();
    let resp = resp.await.unwrap();
    assert_eq!(resp.status(), 200);
    let head = resp.headers().clone();
    let mut recv = resp.into_body();
    let mut msg = Vec::new();
    while let Some(d) = recv.data().await {
        let d = d.unwrap();
        let _ = recv.flow_control().release_capacity(d.len());
        msg.extend_from_slice(&d);
    }
    let trailers = recv.trailers().await.unwrap().unwrap_or_default();
    let pick = |k: &str| {
        trailers
            .get(k)
            .or_else(|| head.get(k))
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default()
    };
    (pick("grpc-status"), pick("grpc-message"), msg, t.elapsed())
}

#[tokio::test]
async fn malformed_bodies_and_deadlines_get_precise_statuses() {
    let sc = Sidecar::start(BODY);
    let mut b = sc.broker().await;
    let sid = open_default(&mut b).await;
    let send = h2_conn(&sc).await;
    let req = get_req("app/a", &sid).encode_to_vec();

    // A well-formed call works and decodes.
    let (code, _, msg, _) = raw_call(&send, "GetSecret", &[], framed(0, &req)).await;
    assert_eq!(code, "0");
    let r = pb::GetSecretResponse::decode(&msg[5..]).unwrap();
    assert_eq!(r.value, b"value-a-1");

    // Compressed flag: UNIMPLEMENTED (12).
    let (code, m, _, _) = raw_call(&send, "GetSecret", &[], framed(1, &req)).await;
    assert_eq!(code, "12", "{m}");
    // Two messages in a unary body, a truncated prefix, garbage protobuf: INVALID_ARGUMENT (3).
    let mut two = BytesMut::from(&framed(0, &req)[..]);
    two.extend_from_slice(&framed(0, &req));
    for bad in [
        two.freeze(),
        Bytes::from_static(&[0, 0, 0]),
        framed(0, &[0xff, 0xff, 0xff]),
    ] {
        let (code, m, _, _) = raw_call(&send, "GetSecret", &[], bad).await;
        assert_eq!(code, "3", "{m}");
    }
    // Over the request size limit: RESOURCE_EXHAUSTED (8).
    let (code, m, _, _) = raw_call(&send, "GetSecret", &[], framed(0, &vec![0u8; 70_000])).await;
    assert_eq!(code, "8", "{m}");
    // Unknown method on the service: UNIMPLEMENTED through the fallback services.
    let (code, _, _, _) = raw_call(&send, "NoSuchMethod", &[], framed(0, &req)).await;
    assert_eq!(code, "12");

    // The caller's grpc-timeout bounds a call on a slow (2 s) backend: DEADLINE_EXCEEDED (4).
    let slow = get_req("app/slow", &sid).encode_to_vec();
    let (code, m, _, took) = raw_call(
        &send,
        "GetSecret",
        &[("grpc-timeout", "300m")],
        framed(0, &slow),
    )
    .await;
    println!("deadline 300 ms answered after {took:?}: {code} {m}");
    assert_eq!(code, "4", "{m}");
    assert!(
        took >= Duration::from_millis(280) && took < Duration::from_millis(1500),
        "{took:?}"
    );
    // The connection still serves.
    let (code, _, _, _) = raw_call(&send, "GetSecret", &[], framed(0, &req)).await;
    assert_eq!(code, "0");
}

#[tokio::test]
async fn one_connection_more_streams_than_its_cap_all_answer() {
    let sc = Sidecar::start(BODY);
    let mut b = sc.broker().await;
    let sid = open_default(&mut b).await;
    let send = h2_conn(&sc).await;
    let body = framed(0, &get_req("app/a", &sid).encode_to_vec());
    // 1500 concurrent calls on one connection: the server advertises at most 1024 streams, the
    // client queues the rest; every call is answered.
    let calls: Vec<_> = (0..1500)
        .map(|_| {
            let (send, body) = (send.clone(), body.clone());
            tokio::spawn(async move { raw_call(&send, "GetSecret", &[], body).await.0 })
        })
        .collect();
    let t = Instant::now();
    for c in calls {
        assert_eq!(c.await.unwrap(), "0");
    }
    println!("1500 raw calls on one connection in {:?}", t.elapsed());
    // The same through tonic's client on one channel (1000 at once, as a busy router might).
    let calls: Vec<_> = (0..1000)
        .map(|_| {
            let (mut b, sid) = (b.clone(), sid.clone());
            tokio::spawn(async move { b.get_secret(get_req("app/a", &sid)).await.map(|_| ()) })
        })
        .collect();
    for c in calls {
        c.await
            .unwrap()
            .expect("every call on a shared channel answers");
    }
}

async fn open_watches(sc: &Sidecar) -> u32 {
    let mut admin = sc.admin().await;
    admin
        .status(pb::StatusRequest {})
        .await
        .unwrap()
        .into_inner()
        .watches
}

#[tokio::test]
async fn abandoned_watch_stream_is_released() {
    let sc = Sidecar::start(BODY);
    let mut b = sc.broker().await;
    let sid = open_default(&mut b).await;
    let mut send = h2_conn(&sc).await;
    let req = pb::WatchSecretRequest {
        name: "app/a".into(),
        session_id: sid.clone(),
    };
    // Open watches and reset them, many times over, on one connection: each reset must end
    // the server's stream and drop its subscription.
    for i in 0..300 {
        send = tokio::time::timeout(Duration::from_secs(5), send.ready())
            .await
            .expect("a stream slot within 5 s")
            .unwrap();
        let r = http::Request::post("http://localhost/sidecred.v1.Broker/WatchSecret")
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .unwrap();
        let (resp, mut out) = send.send_request(r, false).unwrap();
        out.send_data(framed(0, &req.encode_to_vec()), true)
            .unwrap();
        let resp = resp.await.unwrap();
        let mut body = resp.into_body();
        // The first event (CURRENT) arrives, then the caller goes away.
        let first = tokio::time::timeout(Duration::from_secs(5), body.data())
            .await
            .expect("first watch event")
            .unwrap()
            .unwrap();
        assert!(first.len() > 5);
        if i == 0 {
            assert_eq!(open_watches(&sc).await, 1, "an open watch is counted");
        }
        drop(body);
        out.send_reset(h2::Reason::CANCEL);
    }
    let ok = common::openbao::wait_for_async(Duration::from_secs(3), || async {
        open_watches(&sc).await == 0
    })
    .await;
    assert!(
        ok,
        "watch streams still open after their callers reset them: {}",
        open_watches(&sc).await
    );
    // Still serving unary calls on the same connection.
    let (code, _, _, _) = raw_call(
        &send,
        "GetSecret",
        &[],
        framed(0, &get_req("app/a", &sid).encode_to_vec()),
    )
    .await;
    assert_eq!(code, "0");
}
