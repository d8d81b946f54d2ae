//! Concurrent GetSecret readers for rotation and fault tests: each loops until stopped and
//! counts successes, failures and the versions it saw. With `Opts` a call can be bounded by a
//! client deadline (a hang shows as a timed-out call, not a hung test) and every call can be
//! logged with its start time, latency and outcome for per-phase checks.

use sidecred::api::pb;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

use super::Broker;

/// How readers behave; `Opts::default()` is a silent, unbounded, unlogged reader.
#[derive(Clone, Debug, Default)]
pub struct Opts {
    /// Client deadline per call; a call still running then counts as `TimedOut`.
    pub deadline: Option<Duration>,
    /// Pause after each call, to keep a small machine responsive.
    pub pause: Duration,
    /// Readers stop by themselves after this long even if nobody stops them.
    pub stop_after: Option<Duration>,
    /// Keep every call in `Tally::calls`.
    pub log: bool,
    /// Print each failure to stderr.
    pub print_failures: bool,
}

/// What one call returned.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    Ok {
        value: Vec<u8>,
        version: String,
        stale: bool,
    },
    Err(tonic::Code),
    /// No answer within `Opts::deadline`.
    TimedOut,
}

/// One GetSecret as a reader saw it.
#[derive(Clone, Debug)]
pub struct Call {
    pub at: Instant,
    pub took: Duration,
    pub outcome: Outcome,
}

impl Call {
    pub fn end(&self) -> Instant {
        self.at + self.took
    }
}

pub struct Readers {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    tasks: Vec<JoinHandle<Reader>>,
}

/// What one reader task kept.
#[derive(Default)]
struct Reader {
    versions: BTreeSet<String>,
    stale: u64,
    timed_out: u64,
    max_latency: Duration,
    codes: BTreeMap<String, u64>,
    calls: Vec<Call>,
}

/// What the readers did.
#[derive(Debug)]
pub struct Tally {
    pub ok: u64,
    /// Errors and timed-out calls.
    pub failed: u64,
    pub versions: BTreeSet<String>,
    /// Successful answers marked stale.
    pub stale: u64,
    pub timed_out: u64,
    /// The slowest call, timed-out ones included (at the deadline).
    pub max_latency: Duration,
    /// Failures by gRPC code name (`TimedOut` for client deadlines).
    pub codes: BTreeMap<String, u64>,
    /// Every call of each reader in order; empty unless `Opts::log`.
    pub calls: Vec<Vec<Call>>,
}

impl Readers {
    /// `n` readers of `name`; reader i uses `sessions[i % len]`. Failures are printed.
    pub fn start(b: &Broker, sessions: &[String], name: &str, n: usize) -> Readers {
        let opts = Opts {
            print_failures: true,
            ..Opts::default()
        };
        Self::start_with(b, sessions, name, n, opts)
    }

    /// Like `start`, with deadlines, pacing and a call log as `opts` says.
    pub fn start_with(
        b: &Broker,
        sessions: &[String],
        name: &str,
        n: usize,
        opts: Opts,
    ) -> Readers {
        let stop = Arc::new(AtomicBool::new(false));
        let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let tasks = (0..n)
            .map(|i| {
                let b = b.clone();
                let sid = sessions[i % sessions.len()].clone();
                let (name, stop, ok, failed) =
                    (name.to_string(), stop.clone(), ok.clone(), failed.clone());
                tokio::spawn(read_loop(b, sid, name, opts.clone(), stop, ok, failed))
            })
            .collect();
        Readers {
            stop,
            ok,
            failed,
            tasks,
        }
    }

    pub async fn stop(self) -> Tally {
        self.stop.store(true, Ordering::Relaxed);
        let mut t = Tally {
            ok: 0,
            failed: 0,
            versions: BTreeSet::new(),
            stale: 0,
            timed_out: 0,
            max_latency: Duration::ZERO,
            codes: BTreeMap::new(),
            calls: Vec::new(),
        };
        for task in self.tasks {
            let r = task.await.unwrap();
            t.versions.extend(r.versions);
            t.stale += r.stale;
            t.timed_out += r.timed_out;
            t.max_latency = t.max_latency.max(r.max_latency);
            for (code, n) in r.codes {
                *t.codes.entry(code).or_default() += n;
            }
            t.calls.push(r.calls);
        }
        t.ok = self.ok.load(Ordering::Relaxed);
        t.failed = self.failed.load(Ordering::Relaxed);
        t
    }
}

async fn read_loop(
    mut b: Broker,
    sid: String,
    name: String,
    opts: Opts,
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
) -> Reader {
    let mut me = Reader::default();
    let begun = Instant::now();
    while !stop.load(Ordering::Relaxed) && opts.stop_after.is_none_or(|d| begun.elapsed() < d) {
        let req = pb::GetSecretRequest {
            name: name.clone(),
            session_id: sid.clone(),
            ..Default::default()
        };
        let at = Instant::now();
        let r = match opts.deadline {
            Some(d) => tokio::time::timeout(d, b.get_secret(req)).await.ok(),
            None => Some(b.get_secret(req).await),
        };
        let took = at.elapsed();
        me.max_latency = me.max_latency.max(took);
        let outcome = match r {
            Some(Ok(r)) => {
                let r = r.into_inner();
                ok.fetch_add(1, Ordering::Relaxed);
                me.stale += u64::from(r.stale);
                me.versions.insert(r.version.clone());
                Outcome::Ok {
                    value: r.value,
                    version: r.version,
                    stale: r.stale,
                }
            }
            Some(Err(e)) => {
                failed.fetch_add(1, Ordering::Relaxed);
                *me.codes.entry(format!("{:?}", e.code())).or_default() += 1;
                if opts.print_failures {
                    eprintln!("read failed: {e:?}");
                }
                Outcome::Err(e.code())
            }
            None => {
                failed.fetch_add(1, Ordering::Relaxed);
                me.timed_out += 1;
                *me.codes.entry("TimedOut".into()).or_default() += 1;
                if opts.print_failures {
                    eprintln!("read timed out after {took:?}");
                }
                Outcome::TimedOut
            }
        };
        if opts.log {
            me.calls.push(Call { at, took, outcome });
        }
        if !opts.pause.is_zero() {
            tokio::time::sleep(opts.pause).await;
        }
    }
    me
}
