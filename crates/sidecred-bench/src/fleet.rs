//! `sidecred-bench fleet [SIDECARS] [ROUNDS]`: starts an OpenBao dev server ($SIDECRED_BAO), a
//! counting proxy in front of it, and SIDECARS (default 8) sidecred processes sharing a fleet.
//! Prints the OpenBao requests/s each idle sidecar makes, then the revocation propagation:
//! for each round a session opened on one sidecar is revoked through another, and every sidecar
//! is polled until it refuses the session; the time from the RevokeSession call to that refusal
//! is one sample.

#[path = "../../../tests/common/fault_proxy.rs"]
mod fault_proxy;

use sidecred_proto::v1 as pb;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tonic::transport::{Channel, Endpoint};

/// Kills the child processes it holds when dropped.
struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A scratch directory removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Scratch {
        let p = std::env::temp_dir().join(format!("sidecred-fleet-bench.{}", std::process::id()));
        std::fs::create_dir_all(&p).expect("scratch dir");
        Scratch(p)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn free_port() -> u16 {
    loop {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let p = l.local_addr().expect("addr").port();
        if std::net::TcpListener::bind(("127.0.0.1", p + 1)).is_ok() {
            return p;
        }
    }
}

async fn wait_until(what: &str, mut ok: impl FnMut() -> bool) {
    let t = Instant::now();
    while !ok() {
        if t.elapsed() > Duration::from_secs(20) {
            panic!("{what} did not come up within 20 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn channel(p: &Path) -> Channel {
    Endpoint::from_shared(format!("unix://{}", p.display()))
        .expect("uri")
        .timeout(Duration::from_secs(5))
        .connect()
        .await
        .expect("connect")
}

fn sidecar_config(dir: &Path, i: usize, proxy: &str, token: &Path) -> PathBuf {
    let root = dir.join(format!("sc{i}"));
    std::fs::create_dir_all(&root).expect("mkdir");
    let text = format!(
        r#"[server]
workload_socket = "{r}/w/workload.sock"
admin_socket = "{r}/a/admin.sock"
state_dir = "{r}/state"
backend_timeout = "2s"
[log]
level = "warn"
[backends.bao]
kind = "openbao"
address = "{proxy}"
auth = {{ method = "token_file", path = "{t}" }}
[fleet]
backend = "bao"
poll_interval = "250ms"
sidecar_id = "bench-{i}"
[[secret]]
name = "bench/kv"
backend = "bao"
path = "bench"
zone = "internal"
[[policy.workload]]
name = "me"
uids = ["self"]
secrets = ["*"]
[[policy.admin]]
name = "me"
uids = ["self"]
actions = ["*"]
"#,
        r = root.display(),
        t = token.display()
    );
    let cfg = root.join("sidecred.toml");
    std::fs::write(&cfg, text).expect("write config");
    cfg
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

pub async fn run(n: usize, rounds: usize) {
    let bao_bin = std::env::var("SIDECRED_BAO")
        .expect("SIDECRED_BAO is not set: source ~/.cache/sidecred/peers/env.sh");
    let sidecred = std::env::current_exe()
        .expect("exe")
        .with_file_name("sidecred");
    let dir = Scratch::new();
    let port = free_port();
    let mut procs = Procs(Vec::new());
    procs.0.push(
        Command::new(bao_bin)
            .args([
                "server",
                "-dev",
                "-dev-no-store-token",
                "-dev-root-token-id=root",
            ])
            .arg(format!("-dev-listen-address=127.0.0.1:{port}"))
            .env("HOME", dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start bao"),
    );
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("http client");
    let addr = format!("http://127.0.0.1:{port}");
    let t = Instant::now();
    loop {
        let r = http.get(format!("{addr}/v1/sys/health")).send().await;
        if r.is_ok_and(|r| r.status().as_u16() == 200) {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "OpenBao did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    http.post(format!("{addr}/v1/secret/data/bench"))
        .header("X-Vault-Token", "root")
        .body(r#"{"data":{"v":"bench-value"}}"#)
        .send()
        .await
        .expect("seed kv");
    let proxy = fault_proxy::FaultProxy::start(port);
    let token = dir.path().join("token");
    std::fs::write(&token, "root").expect("token file");
    std::fs::set_permissions(&token, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .expect("token file mode");
    let mut socks = Vec::new();
    for i in 0..n {
        let cfg = sidecar_config(dir.path(), i, &proxy.endpoint(), &token);
        procs.0.push(
            Command::new(&sidecred)
                .args(["serve", "--config"])
                .arg(&cfg)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start sidecred"),
        );
        let root = dir.path().join(format!("sc{i}"));
        socks.push((root.join("w/workload.sock"), root.join("a/admin.sock")));
    }
    for (w, a) in &socks {
        wait_until("sidecred", || {
            std::os::unix::net::UnixStream::connect(w).is_ok()
                && std::os::unix::net::UnixStream::connect(a).is_ok()
        })
        .await;
    }
    println!("fleet: {n} sidecars, one OpenBao {addr}, poll_interval 250ms");

    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = proxy.count("other");
    let window = Duration::from_secs(5);
    tokio::time::sleep(window).await;
    let idle = (proxy.count("other") - before) as f64 / window.as_secs_f64() / n as f64;
    println!(
        "idle OpenBao load: {idle:.2} requests/s per sidecar ({:.1}/s for the fleet)",
        idle * n as f64
    );

    let mut brokers = Vec::new();
    let mut admins = Vec::new();
    for (w, a) in &socks {
        brokers.push(pb::broker_client::BrokerClient::new(channel(w).await));
        admins.push(pb::admin_client::AdminClient::new(channel(a).await));
    }
    let mut samples = Vec::new();
    let mut calls = Vec::new();
    for r in 0..rounds {
        let sid = brokers[r % n]
            .open_session(pb::OpenSessionRequest::default())
            .await
            .expect("open session")
            .into_inner()
            .session_id;
        let t0 = Instant::now();
        let polls = brokers.iter().cloned().map(|mut b| {
            let sid = sid.clone();
            tokio::spawn(async move {
                loop {
                    let r = b
                        .get_secret(pb::GetSecretRequest {
                            name: "bench/kv".into(),
                            session_id: sid.clone(),
                            ..Default::default()
                        })
                        .await;
                    if let Err(s) = r {
                        let code = s.metadata().get("sidecred-error");
                        if code.is_some_and(|c| c == "session-revoked") {
                            return t0.elapsed();
                        }
                    }
                    if t0.elapsed() > Duration::from_secs(10) {
                        return Duration::from_secs(10);
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
        });
        let polls: Vec<_> = polls.collect();
        let rep = admins[(r + 1) % n]
            .revoke_session(pb::RevokeSessionRequest {
                session_id: sid.clone(),
                reason: "bench".into(),
            })
            .await
            .expect("revoke")
            .into_inner();
        calls.push(t0.elapsed());
        assert!(rep.pending.is_empty(), "revocation pending: {rep:?}");
        for p in polls {
            samples.push(p.await.expect("poller"));
        }
    }
    samples.sort();
    calls.sort();
    println!(
        "RevokeSession call: p50 {:.1} ms, p99 {:.1} ms ({} calls)",
        ms(percentile(&calls, 0.5)),
        ms(percentile(&calls, 0.99)),
        calls.len()
    );
    println!(
        "propagation to refusal on every sidecar: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} samples = {rounds} revocations x {n} sidecars)",
        ms(percentile(&samples, 0.5)),
        ms(percentile(&samples, 0.99)),
        ms(samples[samples.len() - 1]),
        samples.len()
    );
    drop(proxy);
    drop(procs);
    drop(dir);
}
