//! Prometheus metrics, exposed as text on a loopback TCP address or a Unix socket.
//! Labels carry RPC names, status codes, backend and secret names — never values.

use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::LazyLock;
use std::time::Duration;

/// RPCs counted by name; the index is the row in the request table.
pub const RPCS: &[&str] = &[
    "OpenSession",
    "CloseSession",
    "GetSecret",
    "ReleaseLease",
    "WatchSecret",
    "RevokeSession",
    "Rotate",
    "ListSessions",
    "Status",
];

const CODES: usize = 17;
const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Default)]
struct Histogram {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, v: f64) {
        if self.counts.is_empty() {
            self.counts = vec![0; BUCKETS.len()];
        }
        for (i, b) in BUCKETS.iter().enumerate() {
            if v <= *b {
                self.counts[i] += 1;
            }
        }
        self.sum += v;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        for (i, b) in BUCKETS.iter().enumerate() {
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels},le=\"{b}\"}} {}",
                self.counts.get(i).copied().unwrap_or(0)
            );
        }
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", self.sum);
        let _ = writeln!(out, "{name}_count{{{labels}}} {}", self.count);
    }
}

pub struct Metrics {
    requests: Vec<[AtomicU64; CODES]>,
    pub cache_hits: AtomicU64,
    pub cache_misses: AtomicU64,
    pub cache_stale: AtomicU64,
    pub revocations: AtomicU64,
    pub config_reload_errors: AtomicU64,
    backend: Mutex<BTreeMap<(String, &'static str), Histogram>>,
    rotations: Mutex<BTreeMap<String, u64>>,
    propagation: Mutex<Histogram>,
}

pub static METRICS: LazyLock<Metrics> = LazyLock::new(|| Metrics {
    requests: RPCS
        .iter()
        .map(|_| std::array::from_fn(|_| AtomicU64::new(0)))
        .collect(),
    cache_hits: AtomicU64::new(0),
    cache_misses: AtomicU64::new(0),
    cache_stale: AtomicU64::new(0),
    revocations: AtomicU64::new(0),
    config_reload_errors: AtomicU64::new(0),
    backend: Mutex::new(BTreeMap::new()),
    rotations: Mutex::new(BTreeMap::new()),
    propagation: Mutex::new(Histogram::default()),
});

/// Gauges read at scrape time from the engine.
pub struct Gauges {
    pub sessions: u64,
    pub leases: u64,
    pub cached_values: u64,
    pub watches: u64,
    pub journal_backlog: u64,
    pub config_generation: u64,
}

impl Metrics {
    pub fn request(&self, rpc: &str, code: tonic::Code) {
        if let Some(i) = RPCS.iter().position(|r| *r == rpc) {
            self.requests[i][(code as usize).min(CODES - 1)].fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn backend_call(&self, backend: &str, op: &'static str, took: Duration) {
        let mut m = self.backend.lock();
        m.entry((backend.to_string(), op))
            .or_default()
            .observe(took.as_secs_f64());
    }

    pub fn rotation(&self, secret: &str) {
        *self.rotations.lock().entry(secret.to_string()).or_default() += 1;
    }

    /// Time from a revocation's start to this sidecar acting on it.
    pub fn propagation(&self, lag: Duration) {
        self.propagation.lock().observe(lag.as_secs_f64());
    }

    pub fn render(&self, g: &Gauges) -> String {
        let mut out = String::with_capacity(8192);
        out.push_str("# HELP sidecred_requests_total gRPC requests by RPC and status code.\n# TYPE sidecred_requests_total counter\n");
        for (i, rpc) in RPCS.iter().enumerate() {
            for (c, n) in self.requests[i].iter().enumerate() {
                let n = n.load(Ordering::Relaxed);
                if n > 0 {
                    let code = format!("{:?}", tonic::Code::from(c as i32));
                    let _ = writeln!(
                        out,
                        "sidecred_requests_total{{rpc=\"{rpc}\",code=\"{code}\"}} {n}"
                    );
                }
            }
        }
        let counters = [
            (
                "sidecred_cache_hits_total",
                "Requests served from the cache.",
                &self.cache_hits,
            ),
            (
                "sidecred_cache_misses_total",
                "Requests that went to a backend.",
                &self.cache_misses,
            ),
            (
                "sidecred_cache_stale_total",
                "Stale values served because a backend failed.",
                &self.cache_stale,
            ),
            (
                "sidecred_revocations_total",
                "Sessions revoked.",
                &self.revocations,
            ),
            (
                "sidecred_config_reload_errors_total",
                "Rejected config reloads.",
                &self.config_reload_errors,
            ),
        ];
        for (name, help, v) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                v.load(Ordering::Relaxed)
            );
        }
        out.push_str("# HELP sidecred_rotations_total Rotations by secret.\n# TYPE sidecred_rotations_total counter\n");
        for (s, n) in self.rotations.lock().iter() {
            let _ = writeln!(
                out,
                "sidecred_rotations_total{{secret=\"{}\"}} {n}",
                escape(s)
            );
        }
        let gauges = [
            ("sidecred_sessions_active", "Open sessions.", g.sessions),
            ("sidecred_leases_active", "Active leases.", g.leases),
            (
                "sidecred_cached_values",
                "Values held in the cache.",
                g.cached_values,
            ),
            (
                "sidecred_watches_open",
                "Open WatchSecret streams.",
                g.watches,
            ),
            (
                "sidecred_journal_backlog",
                "Revocations and retirements not yet done.",
                g.journal_backlog,
            ),
            (
                "sidecred_config_generation",
                "Config generation in force.",
                g.config_generation,
            ),
        ];
        for (name, help, v) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        }
        out.push_str("# HELP sidecred_backend_call_seconds Backend call latency.\n# TYPE sidecred_backend_call_seconds histogram\n");
        for ((b, op), h) in self.backend.lock().iter() {
            h.render(
                &mut out,
                "sidecred_backend_call_seconds",
                &format!("backend=\"{}\",op=\"{op}\"", escape(b)),
            );
        }
        out.push_str("# HELP sidecred_revocation_propagation_seconds Lag from a revocation to this sidecar enforcing it.\n# TYPE sidecred_revocation_propagation_seconds histogram\n");
        self.propagation.lock().render(
            &mut out,
            "sidecred_revocation_propagation_seconds",
            "scope=\"fleet\"",
        );
        out
    }
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Serves `GET /metrics` over HTTP/1.1 with a bounded request read; anything else is 404.
pub async fn serve_http<S>(mut stream: S, body: impl FnOnce() -> String)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 4096];
    let mut n = 0;
    let read = tokio::time::timeout(Duration::from_secs(2), async {
        while n < buf.len() {
            let k = stream.read(&mut buf[n..]).await?;
            if k == 0 {
                break;
            }
            n += k;
            if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                break;
            }
        }
        Ok::<_, std::io::Error>(())
    })
    .await;
    if !matches!(read, Ok(Ok(()))) {
        return;
    }
    let ok = buf[..n].starts_with(b"GET /metrics ") || buf[..n].starts_with(b"GET / ");
    let (status, text) = if ok {
        ("200 OK", body())
    } else {
        ("404 Not Found", "not found\n".to_string())
    };
    let resp = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
        text.len()
    );
    let _ = stream.write_all(resp.as_bytes()).await;
    let _ = stream.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let mut h = Histogram::default();
        for v in [0.0001, 0.003, 0.2, 20.0] {
            h.observe(v);
        }
        let mut out = String::new();
        h.render(&mut out, "x", "a=\"b\"");
        assert!(out.contains("x_bucket{a=\"b\",le=\"0.0005\"} 1"));
        assert!(out.contains("x_bucket{a=\"b\",le=\"0.005\"} 2"));
        assert!(out.contains("x_bucket{a=\"b\",le=\"0.25\"} 3"));
        assert!(out.contains("x_bucket{a=\"b\",le=\"+Inf\"} 4"));
        assert!(out.contains("x_count{a=\"b\"} 4"));
    }
}
