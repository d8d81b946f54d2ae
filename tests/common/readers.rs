//! Concurrent GetSecret readers for rotation tests: each loops until stopped and counts
//! successes, failures and the versions it saw.

use sidecred::api::pb;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use tokio::task::JoinHandle;

use super::Broker;

pub struct Readers {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    tasks: Vec<JoinHandle<BTreeSet<String>>>,
}

/// What the readers did.
#[derive(Debug)]
pub struct Tally {
    pub ok: u64,
    pub failed: u64,
    pub versions: BTreeSet<String>,
}

impl Readers {
    /// `n` readers of `name`; reader i uses `sessions[i % len]`.
    pub fn start(b: &Broker, sessions: &[String], name: &str, n: usize) -> Readers {
        let stop = Arc::new(AtomicBool::new(false));
        let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let tasks = (0..n)
            .map(|i| {
                let mut b = b.clone();
                let sid = sessions[i % sessions.len()].clone();
                let (name, stop, ok, failed) =
                    (name.to_string(), stop.clone(), ok.clone(), failed.clone());
                tokio::spawn(async move {
                    let mut seen = BTreeSet::new();
                    while !stop.load(Ordering::Relaxed) {
                        let r = b
                            .get_secret(pb::GetSecretRequest {
                                name: name.clone(),
                                session_id: sid.clone(),
                                ..Default::default()
                            })
                            .await;
                        match r {
                            Ok(r) => {
                                ok.fetch_add(1, Ordering::Relaxed);
                                seen.insert(r.into_inner().version);
                            }
                            Err(e) => {
                                failed.fetch_add(1, Ordering::Relaxed);
                                eprintln!("read failed during rotation: {e:?}");
                            }
                        }
                    }
                    seen
                })
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
        let mut versions = BTreeSet::new();
        for t in self.tasks {
            versions.extend(t.await.unwrap());
        }
        Tally {
            ok: self.ok.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            versions,
        }
    }
}
