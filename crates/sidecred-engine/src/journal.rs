//! The revocation journal: revocations and backend revocations not yet confirmed, as JSON lines
//! in `server.state_dir`, fsynced before the work starts and marked done after it, so a crash
//! never drops one. Ids only (session ids, accessors, lease ids), never values.
//!
//! At start the file is replayed (whatever has no `done` line is still owed), then rewritten to
//! hold just that, so it never grows past the outstanding work plus what happened since start.

use crate::appender::Appender;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// One journal line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Record {
    /// A session revocation to publish to the fleet (tombstone and token revocation).
    Revoke {
        session: String,
        reason: String,
        at_ms: u64,
        origin: String,
        /// The session token's accessor, when known.
        #[serde(default)]
        accessor: Option<String>,
    },
    /// A backend's session state to revoke; `handle` is its id (an OpenBao accessor).
    Session {
        backend: String,
        session: String,
        handle: String,
    },
    /// One backend lease to revoke.
    Lease { backend: String, lease: String },
    /// The record with this key is done.
    Done { key: String },
}

impl Record {
    /// What a later `Done` refers to; equal work has an equal key.
    pub fn key(&self) -> String {
        match self {
            Record::Revoke { session, .. } => format!("revoke/{session}"),
            Record::Session {
                backend, handle, ..
            } => format!("session/{backend}/{handle}"),
            Record::Lease { backend, lease } => format!("lease/{backend}/{lease}"),
            Record::Done { key } => key.clone(),
        }
    }

    pub fn done(&self) -> Record {
        Record::Done { key: self.key() }
    }
}

/// The outstanding records of a journal text, in first-written order. A torn last line (a
/// crash mid-write) and unreadable lines are skipped.
pub fn outstanding(text: &str) -> Vec<Record> {
    let mut order: Vec<String> = Vec::new();
    let mut open: BTreeMap<String, Record> = BTreeMap::new();
    for line in text.lines() {
        let Ok(r) = serde_json::from_str::<Record>(line) else {
            if !line.trim().is_empty() {
                tracing::warn!("journal: skipping an unreadable line");
            }
            continue;
        };
        let key = r.key();
        match r {
            Record::Done { .. } => {
                open.remove(&key);
            }
            r => {
                if open.insert(key.clone(), r).is_none() {
                    order.push(key);
                }
            }
        }
    }
    order.into_iter().filter_map(|k| open.remove(&k)).collect()
}

/// The open journal file.
#[derive(Clone)]
pub struct Journal {
    appender: Appender,
    pub path: PathBuf,
}

impl Journal {
    /// Replays `dir/journal.jsonl`, rewrites it with only the outstanding records, and opens it
    /// for appending. Returns the journal and what is still owed.
    pub async fn open(dir: &Path) -> std::io::Result<(Journal, Vec<Record>)> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("journal.jsonl");
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e),
        };
        let owed = outstanding(&text);
        let tmp = dir.join("journal.jsonl.tmp");
        {
            // Owner-only from creation: the rename must not publish a umask-wide file.
            let _ = std::fs::remove_file(&tmp);
            let mut f = std::os::unix::fs::OpenOptionsExt::mode(
                std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true),
                0o600,
            )
            .open(&tmp)?;
            for r in &owed {
                writeln!(f, "{}", line(r))?;
            }
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &path)?;
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        let appender = Appender::open(&path, true).await?;
        Ok((Journal { appender, path }, owed))
    }

    /// Appends a record and waits for its fsync.
    pub async fn write(&self, r: &Record) {
        if let Err(e) = self.appender.append(format!("{}\n", line(r))).await {
            tracing::error!(error = %e, key = %r.key(), "journal write failed; this work is not crash-safe");
        }
    }
}

fn line(r: &Record) -> String {
    serde_json::to_string(r).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sess(h: &str) -> Record {
        Record::Session {
            backend: "bao".into(),
            session: "ses_1".into(),
            handle: h.into(),
        }
    }

    #[test]
    fn replay_keeps_what_is_not_done() {
        let lease = Record::Lease {
            backend: "bao".into(),
            lease: "database/creds/ro/x".into(),
        };
        let rev = Record::Revoke {
            session: "ses_1".into(),
            reason: "r".into(),
            at_ms: 5,
            origin: "a".into(),
            accessor: Some("acc".into()),
        };
        let cases: Vec<(Vec<Record>, Vec<Record>)> = vec![
            (vec![], vec![]),
            (vec![sess("a")], vec![sess("a")]),
            (vec![sess("a"), sess("a").done()], vec![]),
            // Written twice (write-ahead, then queued after a failure): one owed item.
            (vec![sess("a"), sess("a")], vec![sess("a")]),
            (
                vec![sess("a"), lease.clone(), rev.clone(), sess("a").done()],
                vec![lease.clone(), rev.clone()],
            ),
            (vec![lease.done(), lease.clone()], vec![lease.clone()]),
        ];
        for (input, want) in cases {
            let text: String = input.iter().map(|r| format!("{}\n", line(r))).collect();
            assert_eq!(outstanding(&text), want, "{text}");
        }
    }

    #[test]
    fn a_torn_last_line_is_skipped() {
        let mut text = format!("{}\n", line(&sess("a")));
        text.push_str(r#"{"op":"done","ke"#);
        assert_eq!(outstanding(&text), vec![sess("a")]);
    }

    #[tokio::test]
    async fn open_compacts_and_appends() {
        let dir = tempfile::tempdir().unwrap();
        let (j, owed) = Journal::open(dir.path()).await.unwrap();
        assert!(owed.is_empty());
        j.write(&sess("a")).await;
        j.write(&sess("b")).await;
        j.write(&sess("a").done()).await;
        drop(j);
        let (_j, owed) = Journal::open(dir.path()).await.unwrap();
        assert_eq!(owed, vec![sess("b")]);
        let text = std::fs::read_to_string(dir.path().join("journal.jsonl")).unwrap();
        assert_eq!(text.lines().count(), 1, "{text}");
    }
}
