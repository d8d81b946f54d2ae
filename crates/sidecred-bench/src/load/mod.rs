//! Closed-loop load: C callers over N connections for a fixed duration, latencies in an HDR histogram.

mod callers;
pub mod echo;
pub use echo::serve_echo;

pub use crate::target::Target;
use callers::{callers, Caller};
use hdrhistogram::Histogram;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Which client each caller drives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientKind {
    /// The lean `h2` client for gRPC, the minimal keep-alive client for HTTP/1.1.
    Lean,
    /// tonic's `Channel` for gRPC.
    Tonic,
    /// What an application would embed: `sidecred-client` for sidecred, hyper's HTTP/1.1
    /// client for the HTTP peers.
    Stock,
}

pub struct Opts {
    /// Stop after this many measured requests (a soak) instead of at the end of `duration`.
    pub requests: Option<u64>,
    pub duration: Duration,
    pub concurrency: usize,
    pub connections: usize,
    pub warmup: Duration,
    /// The clients the callers use.
    pub client: ClientKind,
    /// Load threads, each with its own runtime and share of callers and connections.
    pub threads: usize,
    /// Instead: one work-stealing runtime with `threads` workers, a task per caller.
    pub stealing: bool,
}

pub struct Outcome {
    pub name: &'static str,
    pub layout: String,
    pub requests: u64,
    pub errors: u64,
    pub elapsed: Duration,
    pub hist: Histogram<u64>,
}

impl Outcome {
    pub fn rps(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }
    pub fn q(&self, q: f64) -> f64 {
        self.hist.value_at_quantile(q) as f64
    }
}

fn grpc_layout(opts: &Opts) -> String {
    format!(
        "{} callers / {} HTTP/2 conns ({})",
        opts.concurrency,
        opts.connections,
        match opts.client {
            ClientKind::Lean => "h2",
            ClientKind::Tonic => "tonic",
            ClientKind::Stock => "sidecred-client",
        }
    )
}

/// Runs one target on `opts.threads` load threads, each with its own single-threaded runtime
/// and its share of the callers and connections (no task ever moves between threads, as in
/// wrk or h2load), so the generator adds no scheduling hops of its own. With `stealing`, one
/// multi-threaded tokio runtime runs every caller as its own task instead.
fn run_one(t: &Target, opts: &Opts) -> Outcome {
    let threads = if opts.stealing {
        1
    } else {
        opts.threads
            .clamp(1, opts.concurrency.min(opts.connections).max(1))
    };
    let share = |n: usize, k: usize| n / threads + usize::from(k < n % threads);
    let ready = std::sync::Barrier::new(threads);
    let begin = std::sync::OnceLock::new();
    let budget = Arc::new(AtomicU64::new(opts.requests.unwrap_or(u64::MAX)));
    let parts: Vec<(Histogram<u64>, u64, u64)> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..threads)
            .map(|k| {
                let (ready, begin, budget) = (&ready, &begin, &budget);
                let sub = Opts {
                    concurrency: share(opts.concurrency, k),
                    connections: share(opts.connections, k),
                    threads: 1,
                    ..*opts
                };
                sc.spawn(move || {
                    let rt = if opts.stealing {
                        tokio::runtime::Builder::new_multi_thread()
                            .worker_threads(opts.threads.max(1))
                            .enable_all()
                            .build()
                    } else {
                        tokio::runtime::Builder::new_current_thread()
                            .enable_all()
                            .build()
                    }
                    .expect("runtime");
                    rt.block_on(async {
                        let cs = callers(t, &sub).await;
                        if ready.wait().is_leader() {
                            let _ = begin.set(Instant::now() + sub.warmup);
                        }
                        ready.wait();
                        let start = *begin.get().expect("start time");
                        let end = start + sub.duration;
                        let (h, n, e) = drive(cs, start, end, budget.clone(), opts.stealing).await;
                        (h, n, e)
                    })
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().expect("load thread"))
            .collect()
    });
    let start = *begin.get().expect("start time");
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
    let (mut requests, mut errors) = (0, 0);
    for (h, n, e) in &parts {
        hist.add(h).expect("merge");
        requests += n;
        errors += e;
    }
    // A soak ends when its request budget is spent, usually well before `duration`.
    let elapsed = Instant::now()
        .saturating_duration_since(start)
        .min(opts.duration);
    let layout = match t {
        Target::Sidecred { .. } | Target::Echo { .. } => grpc_layout(opts),
        Target::Tls(_) => format!("{} keep-alive HTTP/1.1 TLS conns", opts.concurrency),
        _ => format!("{} keep-alive HTTP/1.1 conns", opts.concurrency),
    };
    Outcome {
        name: t.name(),
        layout: if opts.stealing {
            format!("{layout}, 1 rt/{} thr", opts.threads)
        } else {
            format!("{layout}, {threads} thr")
        },
        requests,
        errors,
        elapsed,
        hist,
    }
}

/// One caller's closed loop until `end` or the shared request budget runs out.
async fn drive_one(
    mut c: Caller,
    start: Instant,
    end: Instant,
    budget: Arc<AtomicU64>,
) -> (Histogram<u64>, u64, u64) {
    let relaxed = std::sync::atomic::Ordering::Relaxed;
    let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
    let (mut n, mut errors) = (0u64, 0u64);
    loop {
        let t0 = Instant::now();
        if t0 >= end {
            break;
        }
        if t0 >= start
            && budget
                .fetch_update(relaxed, relaxed, |b| b.checked_sub(1))
                .is_err()
        {
            break;
        }
        let ok = c.call().await;
        if t0 >= start {
            let _ = h.record(t0.elapsed().as_micros().max(1) as u64);
            n += 1;
            if !ok {
                errors += 1;
            }
        }
    }
    (h, n, errors)
}

/// One thread's callers, closed loop, until `end` or the shared request budget runs out.
async fn drive(
    cs: Vec<Caller>,
    start: Instant,
    end: Instant,
    budget: Arc<AtomicU64>,
    spawn: bool,
) -> (Histogram<u64>, u64, u64) {
    let all = if spawn {
        let tasks: Vec<_> = cs
            .into_iter()
            .map(|c| tokio::spawn(drive_one(c, start, end, budget.clone())))
            .collect();
        futures::future::join_all(tasks)
            .await
            .into_iter()
            .map(|r| r.expect("caller task"))
            .collect::<Vec<_>>()
    } else {
        futures::future::join_all(
            cs.into_iter()
                .map(|c| drive_one(c, start, end, budget.clone())),
        )
        .await
    };
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
    let (mut requests, mut errors) = (0, 0);
    for (h, n, e) in all {
        hist.add(h).expect("merge");
        requests += n;
        errors += e;
    }
    (hist, requests, errors)
}

pub async fn run_all(opts: &Opts, targets: &[Target]) -> Vec<Outcome> {
    let mut out = Vec::new();
    for t in targets {
        eprintln!(
            "running {} for {:?} at C={} ...",
            t.name(),
            opts.duration,
            opts.concurrency
        );
        out.push(run_one(t, opts));
    }
    out
}

pub fn print_table(opts: &Opts, rs: &[Outcome]) {
    println!(
        "\nC={} duration={:?} (latency in microseconds; ratios are sidecred / peer)",
        opts.concurrency, opts.duration
    );
    println!(
        "{:<32} {:<50} {:>10} {:>8} {:>8} {:>8} {:>8} {:>7} {:>9} {:>9}",
        "target", "layout", "rps", "p50", "p99", "p999", "max", "errors", "rps ×", "p99 ×"
    );
    let base = &rs[0];
    for r in rs {
        println!(
            "{:<32} {:<50} {:>10.0} {:>8.0} {:>8.0} {:>8.0} {:>8.0} {:>7} {:>9.2} {:>9.2}",
            r.name,
            r.layout,
            r.rps(),
            r.q(0.5),
            r.q(0.99),
            r.q(0.999),
            r.hist.max() as f64,
            r.errors,
            base.rps() / r.rps(),
            base.q(0.99) / r.q(0.99),
        );
    }
}
