//! Certificate issuance rate, side by side in one run: sidecred's CA (keygen, signing, PEM
//! bundle, bookkeeping), raw rcgen key generation + signing (the per-core limit), and OpenBao's
//! `pki/issue` with an EC P-256 role ($SIDECRED_BAO dev server) at the same concurrency.
//! Rates are also given per CPU-second actually used, since the machine is shared.
//! Env: BENCH_SECS (default 3), BENCH_C (default 8).

use rcgen::{CertificateParams, IsCa, KeyPair, SanType, PKCS_ECDSA_P256_SHA256};
use sidecred::backend::ca::authority::{Settings, Source};
use sidecred::backend::ca::{pem_bundle, Authority};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

fn cpu_self() -> f64 {
    let u = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF).unwrap();
    let t = |tv: nix::sys::time::TimeVal| tv.tv_sec() as f64 + tv.tv_usec() as f64 / 1e6;
    t(u.user_time()) + t(u.system_time())
}

fn cpu_of(pid: u32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let f: Vec<&str> = s
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks = |i: usize| f.get(i).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

struct Result {
    name: &'static str,
    count: u64,
    wall: f64,
    cpu: f64,
}

impl Result {
    fn rate(&self) -> f64 {
        self.count as f64 / self.wall
    }
    fn per_cpu(&self) -> f64 {
        self.count as f64 / self.cpu.max(1e-9)
    }
}

/// Runs `f` on `threads` threads for `secs`; returns count, wall and process CPU seconds.
fn threads(name: &'static str, n: usize, secs: f64, f: Arc<dyn Fn() + Send + Sync>) -> Result {
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let (c0, t0) = (cpu_self(), Instant::now());
    let hs: Vec<_> = (0..n)
        .map(|_| {
            let (stop, count, f) = (stop.clone(), count.clone(), f.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    f();
                    count.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs_f64(secs));
    stop.store(true, Ordering::Relaxed);
    for h in hs {
        h.join().unwrap();
    }
    Result {
        name,
        count: count.load(Ordering::Relaxed),
        wall: t0.elapsed().as_secs_f64(),
        cpu: cpu_self() - c0,
    }
}

fn authority() -> Authority {
    Authority::new(
        Settings {
            name: "bench".into(),
            trust_domain: "bench.example".into(),
            leaf_ttl: Duration::from_secs(900),
            stage: Duration::from_secs(30),
            jwt_ttl: Duration::from_secs(300),
            crl_file: None,
            source: Source::Generate {
                validity: Duration::from_secs(86400),
            },
            sds_certificate: "default".into(),
            sds_validation: "ROOTCA".into(),
        },
        SystemTime::now(),
    )
    .unwrap()
}

fn raw_rcgen() -> Arc<dyn Fn() + Send + Sync> {
    let ca_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut p = CertificateParams::default();
    p.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let issuer = Arc::new(rcgen::Issuer::new(p, ca_key));
    Arc::new(move || {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut lp = CertificateParams::default();
        lp.subject_alt_names = vec![SanType::URI(
            "spiffe://bench.example/w".to_string().try_into().unwrap(),
        )];
        let c = lp.signed_by(&key, &issuer).unwrap();
        std::hint::black_box((c.der().len(), key.serialize_der()));
    })
}

fn bao(cmd: &str, port: u16, args: &[&str]) {
    let o = Command::new(cmd)
        .args(args)
        .env("BAO_ADDR", format!("http://127.0.0.1:{port}"))
        .env("BAO_TOKEN", "root")
        .output()
        .expect("bao runs");
    assert!(
        o.status.success(),
        "bao {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

async fn openbao(c: usize, secs: f64) -> Result {
    let bin = std::env::var("SIDECRED_BAO").expect("SIDECRED_BAO must point at bao");
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut child = Command::new(&bin)
        .args([
            "server",
            "-dev",
            "-dev-root-token-id=root",
            "-dev-no-store-token",
        ])
        .arg(format!("-dev-listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let addr = format!("http://127.0.0.1:{port}");
    let settings = vaultrs::client::VaultClientSettingsBuilder::default()
        .address(&addr)
        .token("root")
        .timeout(Some(Duration::from_secs(10)))
        .build()
        .unwrap();
    let client = Arc::new(vaultrs::client::VaultClient::new(settings).unwrap());
    let end = Instant::now() + Duration::from_secs(30);
    let ready = || {
        Command::new(&bin)
            .arg("status")
            .env("BAO_ADDR", &addr)
            .output()
            .is_ok_and(|o| o.status.success())
    };
    while !ready() {
        assert!(Instant::now() < end, "OpenBao did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bao(&bin, port, &["secrets", "enable", "pki"]);
    bao(
        &bin,
        port,
        &["secrets", "tune", "-max-lease-ttl=87600h", "pki"],
    );
    bao(
        &bin,
        port,
        &[
            "write",
            "-field=certificate",
            "pki/root/generate/internal",
            "common_name=bench root",
            "key_type=ec",
            "key_bits=256",
            "ttl=87600h",
        ],
    );
    bao(
        &bin,
        port,
        &[
            "write",
            "pki/roles/ec",
            "key_type=ec",
            "key_bits=256",
            "allow_any_name=true",
            "allowed_uri_sans=spiffe://*",
            "ttl=15m",
            "no_store=true",
        ],
    );
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let (b0, c0, t0) = (cpu_of(child.id()), cpu_self(), Instant::now());
    let tasks: Vec<_> = (0..c)
        .map(|_| {
            let (stop, count, client) = (stop.clone(), count.clone(), client.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let mut o = vaultrs::api::pki::requests::GenerateCertificateRequest::builder();
                    o.common_name("w.bench.example")
                        .uri_sans("spiffe://bench.example/w");
                    if vaultrs::pki::cert::generate(&*client, "pki", "ec", Some(&mut o))
                        .await
                        .is_ok()
                    {
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    let r = Result {
        name: "openbao pki/issue",
        count: count.load(Ordering::Relaxed),
        wall: t0.elapsed().as_secs_f64(),
        // OpenBao's own CPU plus the client's: what issuing this way costs the machine.
        cpu: (cpu_of(child.id()) - b0) + (cpu_self() - c0),
    };
    let _ = child.kill();
    let _ = child.wait();
    r
}

fn main() {
    let secs: f64 = std::env::var("BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3.0);
    let c: usize = std::env::var("BENCH_C")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(8);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let ca = Arc::new(authority());
    let sidecred = {
        let ca = ca.clone();
        Arc::new(move || {
            let i = ca
                .issue(
                    "spiffe://bench.example/w",
                    &[],
                    &[],
                    None,
                    None,
                    SystemTime::now(),
                )
                .unwrap();
            std::hint::black_box(pem_bundle(&i).len());
        }) as Arc<dyn Fn() + Send + Sync>
    };
    let results = vec![
        threads("raw rcgen (1 thread)", 1, secs, raw_rcgen()),
        threads("sidecred CA (1 thread)", 1, secs, sidecred.clone()),
        threads("raw rcgen (C threads)", c, secs, raw_rcgen()),
        threads("sidecred CA (C threads)", c, secs, sidecred),
        tokio::runtime::Runtime::new()
            .unwrap()
            .block_on(openbao(c, secs)),
    ];
    println!("issuance, EC P-256 leaves, {secs}s each, C={c}, {cores} cores on this machine");
    println!(
        "{:<26} {:>9} {:>11} {:>14}",
        "", "certs", "certs/s", "certs/CPU-s"
    );
    for r in &results {
        println!(
            "{:<26} {:>9} {:>11.0} {:>14.0}",
            r.name,
            r.count,
            r.rate(),
            r.per_cpu()
        );
    }
    let (raw1, sc1, rawc, scc, bao) = (
        &results[0],
        &results[1],
        &results[2],
        &results[3],
        &results[4],
    );
    println!(
        "sidecred / raw rcgen, 1 thread:            {:.2}x",
        sc1.rate() / raw1.rate()
    );
    println!(
        "sidecred / raw rcgen, per CPU-s at C={c}:   {:.2}x",
        scc.per_cpu() / rawc.per_cpu()
    );
    println!(
        "sidecred / OpenBao, throughput at C={c}:    {:.1}x",
        scc.rate() / bao.rate()
    );
    println!(
        "sidecred / OpenBao, per CPU-s at C={c}:     {:.1}x",
        scc.per_cpu() / bao.per_cpu()
    );
}
