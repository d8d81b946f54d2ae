//! JSON-lines audit log: who got which credential, when, under which rule, and what was revoked.
//! Events carry names, versions and ids only; there is no field a value could go into.

pub mod key;

use crate::appender::Appender;
use key::AuditKey;
use serde::Serialize;
use sidecred_core::identity::PeerIdentity;
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

#[derive(Debug, Default, Serialize)]
pub struct AuditEvent<'a> {
    pub ts: Stamp,
    pub event: &'a str,
    pub outcome: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exe: Option<std::borrow::Cow<'a, str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub call: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub labels: Option<Cow<'a, BTreeMap<String, String>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<&'a str>,
}

impl<'a> AuditEvent<'a> {
    pub fn new(event: &'a str, outcome: &'a str) -> Self {
        Self {
            event,
            outcome,
            ..Default::default()
        }
    }

    pub fn caller(mut self, id: &'a PeerIdentity) -> Self {
        self.uid = Some(id.uid);
        self.gid = Some(id.gid);
        self.pid = Some(id.pid);
        self.exe = id.exe.as_ref().map(|p| p.to_string_lossy());
        self
    }
}

/// When an event was recorded: written as RFC 3339 UTC with milliseconds, formatted on the
/// stack (this runs for every audited request).
#[derive(Debug, Default, Clone, Copy)]
pub struct Stamp(Option<std::time::SystemTime>);

impl Stamp {
    pub fn now() -> Self {
        Stamp(Some(std::time::SystemTime::now()))
    }
}

impl Serialize for Stamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Some(t) => {
                let b = rfc3339_bytes(t);
                s.serialize_str(std::str::from_utf8(&b).unwrap_or_default())
            }
            None => s.serialize_str(""),
        }
    }
}

/// `t` as RFC 3339 UTC with milliseconds (audit stamps, and timestamps in compatible APIs).
pub fn rfc3339(t: std::time::SystemTime) -> String {
    String::from_utf8_lossy(&rfc3339_bytes(t)).into_owned()
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` (years 0 to 9999; the year is clamped to that range).
fn rfc3339_bytes(t: std::time::SystemTime) -> [u8; 24] {
    let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    let (y, m, dd) = civil_from_days(days);
    let mut b = *b"0000-00-00T00:00:00.000Z";
    let mut put = |at: usize, width: usize, mut v: u64| {
        for i in (at..at + width).rev() {
            b[i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(0, 4, y.clamp(0, 9999) as u64);
    put(5, 2, m as u64);
    put(8, 2, dd as u64);
    put(11, 2, (rem / 3600) as u64);
    put(14, 2, ((rem % 3600) / 60) as u64);
    put(17, 2, (rem % 60) as u64);
    put(20, 3, d.subsec_millis() as u64);
    b
}

/// Days since 1970-01-01 to a civil date (proleptic Gregorian).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Writes audit lines from a background task; with `fail_closed`, callers wait for the write.
#[derive(Clone)]
pub struct Audit {
    out: Option<Appender>,
    fail_closed: bool,
    dropped: Arc<AtomicU64>,
    /// Set when identifiers are written as HMAC digests.
    key: Option<Arc<AuditKey>>,
}

#[derive(Debug, thiserror::Error)]
#[error("audit log unavailable: {0}")]
pub struct AuditError(pub String);

impl Audit {
    pub fn disabled() -> Self {
        Self {
            out: None,
            fail_closed: false,
            dropped: Arc::new(AtomicU64::new(0)),
            key: None,
        }
    }

    /// Opens the log; with a key, session, lease and call ids and label values are hashed.
    pub async fn open(
        path: &Path,
        fail_closed: bool,
        key: Option<AuditKey>,
    ) -> std::io::Result<Self> {
        // A missing directory is made owner-only, like the file itself.
        if let Some(dir) = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty() && !d.exists())
        {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)?;
        }
        let out = Appender::open(path, false).await?;
        Ok(Self {
            out: Some(out),
            fail_closed,
            dropped: Arc::new(AtomicU64::new(0)),
            key: key.map(Arc::new),
        })
    }

    pub fn fail_closed(&self) -> bool {
        self.fail_closed
    }

    /// Whether lines are written at all (callers skip building costly details when not).
    pub fn enabled(&self) -> bool {
        self.out.is_some()
    }

    /// Records an event. Fails only when the log is fail-closed and the line could not be written.
    pub async fn record(&self, mut ev: AuditEvent<'_>) -> Result<(), AuditError> {
        let Some(out) = &self.out else { return Ok(()) };
        // Stamped here, not at construction: with audit off, events cost nothing.
        ev.ts = Stamp::now();
        let hashed;
        let ev = match &self.key {
            None => ev,
            Some(k) => {
                let h = |v: Option<&str>| v.map(|s| k.hash(s));
                hashed = (h(ev.session), h(ev.lease), h(ev.call));
                let labels = ev
                    .labels
                    .take()
                    .map(|m| Cow::Owned(m.iter().map(|(n, v)| (n.clone(), k.hash(v))).collect()));
                AuditEvent {
                    session: hashed.0.as_deref(),
                    lease: hashed.1.as_deref(),
                    call: hashed.2.as_deref(),
                    labels,
                    ..ev
                }
            }
        };
        // Serialized into this thread's reusable buffer, then copied into the open batch.
        let ticket = LINE.with_borrow_mut(|line| {
            line.clear();
            serde_json::to_writer(&mut *line, &ev).map_err(|e| AuditError(e.to_string()))?;
            line.push(b'\n');
            let ticket = if self.fail_closed {
                Some(out.enqueue(line))
            } else {
                if !out.try_append_bytes(line) {
                    self.dropped.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!("audit queue full; line dropped (fail_closed = false)");
                }
                None
            };
            // Beyond a few lines' worth, the buffer is not kept.
            if line.capacity() > 64 * 1024 {
                *line = Vec::new();
            }
            Ok::<_, AuditError>(ticket)
        })?;
        // Fail closed: the request waits for the one batched write that carries its line.
        match ticket {
            Some(t) => t.wait().await.map_err(|e| AuditError(e.to_string())),
            None => Ok(()),
        }
    }
}

thread_local! {
    /// One line being serialized, reused by every event recorded on this thread.
    static LINE: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_are_rfc3339_millis() {
        use std::time::{Duration, UNIX_EPOCH};
        for (secs, ms, want) in [
            (0, 0, "1970-01-01T00:00:00.000Z"),
            (1_704_067_199, 999, "2023-12-31T23:59:59.999Z"),
            (1_709_164_800, 7, "2024-02-29T00:00:00.007Z"),
        ] {
            let t = UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_millis(ms);
            assert_eq!(rfc3339(t), want);
            let json = serde_json::to_string(&Stamp(Some(t))).unwrap();
            assert_eq!(json, format!("\"{want}\""));
        }
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(20_513), (2026, 3, 1));
    }

    /// Fail-closed: once `record` returns Ok, the line is in the file, whatever else was
    /// recorded at the same time (lines batched together, none lost, none torn).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn fail_closed_lines_are_written_when_record_returns() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let a = Audit::open(&path, true, None).await.unwrap();
        let tasks: Vec<_> = (0..300)
            .map(|i| {
                let a = a.clone();
                tokio::spawn(async move {
                    let lease = format!("lease-{i}");
                    let mut ev = AuditEvent::new("grant", "ok");
                    ev.lease = Some(&lease);
                    a.record(ev).await
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let mut leases: Vec<String> = text
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                let ts = v["ts"].as_str().unwrap();
                assert!(ts.len() == 24 && ts.ends_with('Z'), "{ts}");
                v["lease"].as_str().unwrap().to_string()
            })
            .collect();
        leases.sort();
        let mut want: Vec<String> = (0..300).map(|i| format!("lease-{i}")).collect();
        want.sort();
        assert_eq!(leases, want);
    }

    #[tokio::test]
    async fn fail_closed_reports_write_errors() {
        let a = Audit::open(Path::new("/dev/full"), true, None)
            .await
            .unwrap();
        assert!(a.record(AuditEvent::new("grant", "ok")).await.is_err());
        let b = Audit::open(Path::new("/dev/full"), false, None)
            .await
            .unwrap();
        assert!(b.record(AuditEvent::new("grant", "ok")).await.is_ok());
    }
}
