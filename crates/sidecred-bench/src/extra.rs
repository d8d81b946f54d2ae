//! One-off measurements: time from start to serving, single-flight under a burst, filling the cache.

use sidecred_proto::v1 as pb;
use std::path::Path;
use std::time::{Duration, Instant};

/// Spawns `sidecred serve --config CONFIG` `runs` times; prints time until the socket answers health.
pub async fn startup(bin: &str, config: &str, socket: &str, runs: usize) {
    let mut times = Vec::new();
    for _ in 0..runs {
        let _ = std::fs::remove_file(socket);
        let t0 = Instant::now();
        let mut child = std::process::Command::new(bin)
            .args(["serve", "--config", config])
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn sidecred");
        let took = loop {
            if let Ok(ch) = tonic::transport::Endpoint::from_shared(format!("unix://{socket}"))
                .unwrap()
                .connect()
                .await
            {
                let mut h = tonic_health::pb::health_client::HealthClient::new(ch);
                if h.check(tonic_health::pb::HealthCheckRequest::default())
                    .await
                    .is_ok()
                {
                    break t0.elapsed();
                }
            }
            if t0.elapsed() > Duration::from_secs(10) {
                panic!("sidecred did not serve within 10 s");
            }
            tokio::time::sleep(Duration::from_micros(200)).await;
        };
        let _ = child.kill();
        let _ = child.wait();
        times.push(took);
    }
    times.sort();
    println!(
        "start to serving: median {:.1} ms, min {:.1} ms, max {:.1} ms over {runs} runs",
        ms(times[times.len() / 2]),
        ms(times[0]),
        ms(times[times.len() - 1])
    );
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

async fn clients(
    socket: &str,
    admin: &str,
) -> (
    pb::broker_client::BrokerClient<tonic::transport::Channel>,
    pb::admin_client::AdminClient<tonic::transport::Channel>,
) {
    let w = tonic::transport::Endpoint::from_shared(format!("unix://{socket}"))
        .unwrap()
        .connect()
        .await
        .expect("workload socket");
    let a = tonic::transport::Endpoint::from_shared(format!("unix://{admin}"))
        .unwrap()
        .connect()
        .await
        .expect("admin socket");
    (
        pb::broker_client::BrokerClient::new(w),
        pb::admin_client::AdminClient::new(a),
    )
}

/// N concurrent GetSecret on one cold key; prints backend fetches and latency.
pub async fn singleflight(socket: &str, admin: &str, secret: &str, n: usize) {
    let (mut b, mut a) = clients(socket, admin).await;
    let sid = b
        .open_session(pb::OpenSessionRequest::default())
        .await
        .unwrap()
        .into_inner()
        .session_id;
    let before: u64 = a
        .status(pb::StatusRequest {})
        .await
        .unwrap()
        .into_inner()
        .backends
        .iter()
        .map(|b| b.fetches)
        .sum();
    let t0 = Instant::now();
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let mut b = b.clone();
            let req = pb::GetSecretRequest {
                name: secret.into(),
                session_id: sid.clone(),
                ..Default::default()
            };
            tokio::spawn(async move {
                let t = Instant::now();
                b.get_secret(req).await.map(|_| t.elapsed())
            })
        })
        .collect();
    let mut lat = Vec::new();
    let mut errors = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(d) => lat.push(d),
            Err(e) => {
                if errors == 0 {
                    eprintln!("first error: {e:?}");
                }
                errors += 1
            }
        }
    }
    if lat.is_empty() {
        println!("single-flight: all {n} calls failed");
        return;
    }
    let total = t0.elapsed();
    let after: u64 = a
        .status(pb::StatusRequest {})
        .await
        .unwrap()
        .into_inner()
        .backends
        .iter()
        .map(|b| b.fetches)
        .sum();
    lat.sort();
    println!(
        "single-flight: {n} concurrent misses -> {} backend fetches, {errors} errors, all answered in {:.1} ms (p50 {:.1} ms, max {:.1} ms)",
        after - before, ms(total), ms(lat[lat.len() / 2]), ms(lat[lat.len() - 1])
    );
}

/// Reads `prefix0..prefixN` once each, so N values are cached.
pub async fn fill(socket: &str, prefix: &str, n: usize) {
    let ch = tonic::transport::Endpoint::from_shared(format!("unix://{socket}"))
        .unwrap()
        .connect()
        .await
        .expect("socket");
    let mut b = pb::broker_client::BrokerClient::new(ch);
    let sid = b
        .open_session(pb::OpenSessionRequest {
            ttl_seconds: 3600,
            labels: Default::default(),
        })
        .await
        .unwrap()
        .into_inner()
        .session_id;
    for i in 0..n {
        let req = pb::GetSecretRequest {
            name: format!("{prefix}{i}"),
            session_id: sid.clone(),
            ..Default::default()
        };
        b.get_secret(req).await.expect("get");
        // Leases end with the session; release them so only cached values remain.
    }
    b.close_session(pb::CloseSessionRequest { session_id: sid })
        .await
        .unwrap();
    println!("filled {n} secrets");
}

/// Resident set size of a process, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("status"))
        .unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}
