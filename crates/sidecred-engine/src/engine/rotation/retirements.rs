//! The retirement journal: open grace windows survive a restart. One JSON line per event in
//! `state_dir/retirements.jsonl` (secret names, versions, lease ids and times; never values):
//! a `grace` line when a previous version enters its window, a `retired` line when it leaves.
//! At start the file is replayed (windows still open resume, overdue ones retire at once) and
//! rewritten with what is still pending plus every retired version (the newest
//! [`MAX_RETIRED_PER_SECRET`] per secret): a retired version is refused after a restart too,
//! whatever the backend still keeps.

use crate::appender::Appender;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// A backend lease kept valid for the window (credentials of a reissued secret).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(in crate::engine) struct HeldLease {
    pub backend: String,
    pub id: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub(in crate::engine) enum Line {
    Grace {
        secret: String,
        current: String,
        version: String,
        retires_at_ms: u64,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        leases: Vec<HeldLease>,
    },
    Retired {
        secret: String,
        version: String,
    },
}

/// Retired versions remembered per secret; older ones are forgotten first.
pub(in crate::engine) const MAX_RETIRED_PER_SECRET: usize = 1024;

/// What replay finds: windows to resume (the newest per secret), versions to retire now
/// (older windows of a secret that rotated again before the journal saw them close), and
/// versions already retired (`Retired` lines, in file order).
#[derive(Debug, Default, PartialEq, Eq)]
pub(in crate::engine) struct Replayed {
    pub open: Vec<Line>,
    pub superseded: Vec<Line>,
    pub retired: Vec<Line>,
}

/// Pure fold over journal lines in file order.
pub(in crate::engine) fn replay(lines: impl IntoIterator<Item = Line>) -> Replayed {
    let mut pending: Vec<Line> = Vec::new();
    let mut retired: Vec<Line> = Vec::new();
    for l in lines {
        match &l {
            Line::Grace { .. } => pending.push(l),
            Line::Retired { secret, version } => {
                pending.retain(|p| {
                    !matches!(p, Line::Grace { secret: s, version: v, .. } if s == secret && v == version)
                });
                if !retired.contains(&l) {
                    retired.push(l);
                }
            }
        }
    }
    let mut out = Replayed::default();
    // Keep the newest retirements of each secret, in file order.
    let mut seen: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    let mut keep = vec![false; retired.len()];
    for (i, l) in retired.iter().enumerate().rev() {
        if let Line::Retired { secret, .. } = l {
            let n = seen.entry(secret.as_str()).or_default();
            *n += 1;
            keep[i] = *n <= MAX_RETIRED_PER_SECRET;
        }
    }
    out.retired = retired
        .iter()
        .zip(keep)
        .filter(|(_, k)| *k)
        .map(|(l, _)| l.clone())
        .collect();
    for (i, l) in pending.iter().enumerate() {
        let Line::Grace { secret, .. } = l else {
            continue;
        };
        let newer = pending[i + 1..]
            .iter()
            .any(|p| matches!(p, Line::Grace { secret: s, .. } if s == secret));
        if newer {
            out.superseded.push(l.clone());
        } else {
            out.open.push(l.clone());
        }
    }
    out
}

pub(in crate::engine) fn path(state_dir: &Path) -> PathBuf {
    state_dir.join("retirements.jsonl")
}

/// Reads and compacts the journal, then opens it for appending (fsynced lines).
pub(in crate::engine) async fn open(state_dir: &Path) -> std::io::Result<(Replayed, Appender)> {
    tokio::fs::create_dir_all(state_dir).await?;
    let p = path(state_dir);
    let text = match tokio::fs::read_to_string(&p).await {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e),
    };
    let mut lines = Vec::new();
    for (n, l) in text.lines().enumerate() {
        if l.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Line>(l) {
            Ok(line) => lines.push(line),
            // A torn last line from a crash mid-write; earlier lines still count.
            Err(e) => {
                tracing::warn!(line = n + 1, error = %e, "skipping unreadable retirement journal line")
            }
        }
    }
    let r = replay(lines);
    let mut keep = String::new();
    // Retired lines first: replayed again, they must not cancel a window that follows.
    for l in r.retired.iter().chain(&r.open).chain(&r.superseded) {
        keep.push_str(&encode(l));
    }
    let tmp = p.with_extension("jsonl.tmp");
    {
        use tokio::io::AsyncWriteExt;
        // Owner-only from creation, like the file it replaces.
        let _ = tokio::fs::remove_file(&tmp).await;
        let mut f = tokio::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .await?;
        f.write_all(keep.as_bytes()).await?;
        f.sync_all().await?;
    }
    tokio::fs::rename(&tmp, &p).await?;
    let app = Appender::open(&p, true).await?;
    Ok((r, app))
}

pub(in crate::engine) fn encode(l: &Line) -> String {
    let mut s = serde_json::to_string(l).unwrap_or_default();
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grace(secret: &str, version: &str, at: u64) -> Line {
        Line::Grace {
            secret: secret.into(),
            current: "x".into(),
            version: version.into(),
            retires_at_ms: at,
            leases: vec![],
        }
    }

    fn retired(secret: &str, version: &str) -> Line {
        Line::Retired {
            secret: secret.into(),
            version: version.into(),
        }
    }

    #[test]
    fn replay_table() {
        // (lines, open versions, superseded versions)
        let cases: Vec<(Vec<Line>, Vec<&str>, Vec<&str>)> = vec![
            (vec![], vec![], vec![]),
            (vec![grace("a", "1", 5)], vec!["1"], vec![]),
            (vec![grace("a", "1", 5), retired("a", "1")], vec![], vec![]),
            (
                vec![grace("a", "1", 5), grace("a", "2", 9)],
                vec!["2"],
                vec!["1"],
            ),
            (
                vec![grace("a", "1", 5), grace("a", "2", 9), retired("a", "1")],
                vec!["2"],
                vec![],
            ),
            (
                vec![grace("a", "1", 5), grace("b", "7", 9), retired("b", "1")],
                vec!["1", "7"],
                vec![],
            ),
        ];
        for (i, (lines, open, sup)) in cases.into_iter().enumerate() {
            let r = replay(lines);
            let v = |ls: &[Line]| -> Vec<String> {
                ls.iter()
                    .map(|l| match l {
                        Line::Grace { version, .. } => version.clone(),
                        Line::Retired { .. } => unreachable!(),
                    })
                    .collect()
            };
            assert_eq!(v(&r.open), open, "case {i}");
            assert_eq!(v(&r.superseded), sup, "case {i}");
        }
    }

    #[test]
    fn retired_versions_survive_replay() {
        let r = replay(vec![
            grace("a", "1", 5),
            retired("a", "1"),
            retired("a", "1"),
            grace("a", "2", 9),
        ]);
        assert_eq!(r.retired, vec![retired("a", "1")]);
        // Compacted (retired first) and replayed again: the same state.
        let again = replay(r.retired.iter().chain(&r.open).cloned());
        assert_eq!(again, r);
        let many: Vec<Line> = (0..MAX_RETIRED_PER_SECRET + 3)
            .map(|i| retired("b", &i.to_string()))
            .chain([retired("c", "x")])
            .collect();
        let r = replay(many);
        assert_eq!(r.retired.len(), MAX_RETIRED_PER_SECRET + 1);
        assert_eq!(
            r.retired[0],
            retired("b", "3"),
            "the oldest are forgotten first"
        );
    }

    #[test]
    fn lines_round_trip() {
        let l = Line::Grace {
            secret: "db/creds".into(),
            current: "r2".into(),
            version: "r1".into(),
            retires_at_ms: 42,
            leases: vec![HeldLease {
                backend: "bao".into(),
                id: "database/creds/ro/abc".into(),
            }],
        };
        let s = encode(&l);
        assert!(s.ends_with('\n') && s.contains("\"op\":\"grace\""));
        assert_eq!(serde_json::from_str::<Line>(s.trim()).unwrap(), l);
    }
}
