//! Rotation-to-watcher latency: N WatchSecret streams on one secret, M rotations through the
//! admin socket; for each watcher and rotation, the time from the start of the Rotate call (and
//! from its return) until that watcher receives the ROTATED event for the new version.

use sidecred_proto::v1 as pb;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tonic::transport::{Channel, Endpoint};

async fn channel(path: &str) -> Channel {
    Endpoint::from_shared(format!("unix://{path}"))
        .unwrap()
        .connect()
        .await
        .unwrap_or_else(|e| panic!("connect {path}: {e}"))
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i].as_secs_f64() * 1000.0
}

fn summary(label: &str, mut v: Vec<Duration>) {
    v.sort();
    println!(
        "{label}: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms over {} deliveries",
        pct(&v, 0.50),
        pct(&v, 0.99),
        pct(&v, 1.0),
        v.len()
    );
}

pub async fn rotation_watch(
    socket: &str,
    admin: &str,
    secret: &str,
    watchers: usize,
    rotations: usize,
) {
    // Watchers spread over a few connections, as separate clients would be.
    let conns: Vec<Channel> = futures::future::join_all((0..4).map(|_| channel(socket))).await;
    let mut b = pb::broker_client::BrokerClient::new(conns[0].clone());
    let sid = b
        .open_session(pb::OpenSessionRequest::default())
        .await
        .expect("open session")
        .into_inner()
        .session_id;
    let (tx, mut rx) = mpsc::unbounded_channel::<(String, Instant)>();
    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel::<()>();
    for i in 0..watchers {
        let mut b = pb::broker_client::BrokerClient::new(conns[i % conns.len()].clone());
        let (tx, ready, sid, name) = (
            tx.clone(),
            ready_tx.clone(),
            sid.clone(),
            secret.to_string(),
        );
        tokio::spawn(async move {
            let mut s = b
                .watch_secret(pb::WatchSecretRequest {
                    name,
                    session_id: sid,
                })
                .await
                .expect("watch")
                .into_inner();
            while let Ok(Some(ev)) = s.message().await {
                if ev.kind == pb::secret_event::Kind::Current as i32 {
                    let _ = ready.send(());
                } else if ev.kind == pb::secret_event::Kind::Rotated as i32 {
                    let _ = tx.send((ev.version, Instant::now()));
                }
            }
        });
    }
    for _ in 0..watchers {
        ready_rx.recv().await.expect("watcher ready");
    }
    let mut a = pb::admin_client::AdminClient::new(channel(admin).await);
    let (mut from_start, mut from_return) = (Vec::new(), Vec::new());
    let mut early: HashMap<String, Vec<Instant>> = HashMap::new();
    for _ in 0..rotations {
        let t0 = Instant::now();
        let r = a
            .rotate(pb::RotateRequest {
                name: secret.into(),
                grace_seconds: 1,
                value: vec![],
            })
            .await
            .expect("rotate")
            .into_inner();
        let t1 = Instant::now();
        let mut got = early.remove(&r.version).unwrap_or_default();
        while got.len() < watchers {
            match tokio::time::timeout(Duration::from_secs(10), rx.recv()).await {
                Ok(Some((v, at))) if v == r.version => got.push(at),
                Ok(Some((v, at))) => early.entry(v).or_default().push(at),
                _ => panic!(
                    "only {} of {watchers} watchers saw version {}",
                    got.len(),
                    r.version
                ),
            }
        }
        for at in got {
            from_start.push(at.duration_since(t0));
            from_return.push(at.saturating_duration_since(t1));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("rotation-watch: {watchers} watchers x {rotations} rotations of `{secret}`");
    summary("  rotation start -> ROTATED at watcher", from_start);
    summary("  Rotate return  -> ROTATED at watcher", from_return);
}
