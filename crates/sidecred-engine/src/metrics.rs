//! Prometheus metrics, kept in a `prometheus-client` registry; the server serves them as
//! OpenMetrics text (`sidecred::metrics::serve_http`). Labels carry RPC names, status codes,
//! backend and secret names — never values.

/// For the layers above that add metrics of their own (see [`Metrics::register_more`]).
pub use prometheus_client;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::{LazyLock, OnceLock};
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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    rpc: &'static str,
    code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BackendLabels {
    backend: String,
    op: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SecretLabels {
    secret: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ScopeLabels {
    scope: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn histogram() -> Histogram {
    Histogram::new(BUCKETS.iter().copied())
}

/// Gauges read at scrape time from the engine.
pub struct Gauges {
    pub sessions: u64,
    pub leases: u64,
    pub cached_values: u64,
    pub watches: u64,
    pub journal_backlog: u64,
    pub config_generation: u64,
}

/// One gauge per [`Gauges`] field, set just before each scrape is encoded.
#[derive(Default)]
struct ScrapeGauges {
    sessions: Gauge,
    leases: Gauge,
    cached_values: Gauge,
    watches: Gauge,
    journal_backlog: Gauge,
    config_generation: Gauge,
}

pub struct Metrics {
    /// The hot path's counters, one cell per (RPC, code), created on first use so a scrape
    /// shows only pairs that happened; the increment itself is one atomic add.
    requests: Vec<[OnceLock<Counter>; CODES]>,
    request_family: Family<RequestLabels, Counter>,
    pub cache_hits: Counter,
    pub cache_misses: Counter,
    pub cache_stale: Counter,
    pub revocations: Counter,
    pub config_reload_errors: Counter,
    backend: HistogramFamily<BackendLabels>,
    rotations: Family<SecretLabels, Counter>,
    /// The one series of the propagation family (`scope="fleet"`), observed directly.
    propagation: Histogram,
    propagation_family: HistogramFamily<ScopeLabels>,
    gauges: ScrapeGauges,
    /// The registry, behind a lock so concurrent scrapes set and read gauges in turn.
    registry: parking_lot::Mutex<Registry>,
}

pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

impl Metrics {
    fn new() -> Self {
        let propagation_family: HistogramFamily<ScopeLabels> =
            Family::new_with_constructor(histogram as fn() -> Histogram);
        let propagation = propagation_family
            .get_or_create(&ScopeLabels { scope: "fleet" })
            .clone();
        let m = Metrics {
            requests: RPCS
                .iter()
                .map(|_| std::array::from_fn(|_| OnceLock::new()))
                .collect(),
            request_family: Family::default(),
            cache_hits: Counter::default(),
            cache_misses: Counter::default(),
            cache_stale: Counter::default(),
            revocations: Counter::default(),
            config_reload_errors: Counter::default(),
            backend: Family::new_with_constructor(histogram as fn() -> Histogram),
            rotations: Family::default(),
            propagation,
            propagation_family,
            gauges: ScrapeGauges::default(),
            registry: parking_lot::Mutex::new(Registry::default()),
        };
        m.register();
        m
    }

    fn register(&self) {
        let mut r = self.registry.lock();
        // Counters are registered without `_total`: the encoder appends it.
        r.register(
            "sidecred_requests",
            "gRPC requests by RPC and status code",
            self.request_family.clone(),
        );
        for (name, help, c) in [
            (
                "sidecred_cache_hits",
                "Requests served from the cache",
                &self.cache_hits,
            ),
            (
                "sidecred_cache_misses",
                "Requests that went to a backend",
                &self.cache_misses,
            ),
            (
                "sidecred_cache_stale",
                "Stale values served because a backend failed",
                &self.cache_stale,
            ),
            (
                "sidecred_revocations",
                "Sessions revoked",
                &self.revocations,
            ),
            (
                "sidecred_config_reload_errors",
                "Rejected config reloads",
                &self.config_reload_errors,
            ),
        ] {
            r.register(name, help, c.clone());
        }
        r.register(
            "sidecred_rotations",
            "Rotations by secret",
            self.rotations.clone(),
        );
        let g = &self.gauges;
        for (name, help, gauge) in [
            ("sidecred_sessions_active", "Open sessions", &g.sessions),
            ("sidecred_leases_active", "Active leases", &g.leases),
            (
                "sidecred_cached_values",
                "Values held in the cache",
                &g.cached_values,
            ),
            (
                "sidecred_watches_open",
                "Open WatchSecret streams",
                &g.watches,
            ),
            (
                "sidecred_journal_backlog",
                "Revocations and retirements not yet done",
                &g.journal_backlog,
            ),
            (
                "sidecred_config_generation",
                "Config generation in force",
                &g.config_generation,
            ),
        ] {
            r.register(name, help, gauge.clone());
        }
        r.register(
            "sidecred_backend_call_seconds",
            "Backend call latency",
            self.backend.clone(),
        );
        r.register(
            "sidecred_revocation_propagation_seconds",
            "Lag from a revocation to this sidecar enforcing it",
            self.propagation_family.clone(),
        );
    }

    /// Adds a metric owned by a layer above the engine (the server's HTTP endpoints), so one
    /// registry, and one scrape, holds everything.
    pub fn register_more(
        &self,
        name: &str,
        help: &str,
        metric: impl prometheus_client::registry::Metric,
    ) {
        self.registry.lock().register(name, help, metric);
    }

    /// Counts one request by RPC and gRPC status code (its number, `tonic::Code as i32`).
    pub fn request(&self, rpc: &str, code: i32) {
        let Some(i) = RPCS.iter().position(|r| *r == rpc) else {
            return;
        };
        let c = usize::try_from(code).unwrap_or(CODES - 1).min(CODES - 1);
        self.requests[i][c]
            .get_or_init(|| {
                let labels = RequestLabels {
                    rpc: RPCS[i],
                    code: code_name(c),
                };
                self.request_family.get_or_create(&labels).clone()
            })
            .inc();
    }

    pub fn backend_call(&self, backend: &str, op: &'static str, took: Duration) {
        self.backend
            .get_or_create(&BackendLabels {
                backend: backend.to_string(),
                op,
            })
            .observe(took.as_secs_f64());
    }

    pub fn rotation(&self, secret: &str) {
        self.rotations
            .get_or_create(&SecretLabels {
                secret: secret.to_string(),
            })
            .inc();
    }

    /// Time from a revocation's start to this sidecar acting on it.
    pub fn propagation(&self, lag: Duration) {
        self.propagation.observe(lag.as_secs_f64());
    }

    /// The OpenMetrics text of every metric, with the engine's gauges as of now.
    pub fn render(&self, g: &Gauges) -> String {
        let r = self.registry.lock();
        let s = &self.gauges;
        for (gauge, v) in [
            (&s.sessions, g.sessions),
            (&s.leases, g.leases),
            (&s.cached_values, g.cached_values),
            (&s.watches, g.watches),
            (&s.journal_backlog, g.journal_backlog),
            (&s.config_generation, g.config_generation),
        ] {
            gauge.set(i64::try_from(v).unwrap_or(i64::MAX));
        }
        let mut out = String::with_capacity(8192);
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &r) {
            tracing::warn!(error = %e, "metrics encoding failed");
        }
        out
    }
}

/// Status code names as tonic's `Debug` prints them, without allocating per request.
fn code_name(c: usize) -> &'static str {
    const NAMES: [&str; CODES] = [
        "Ok",
        "Cancelled",
        "Unknown",
        "InvalidArgument",
        "DeadlineExceeded",
        "NotFound",
        "AlreadyExists",
        "PermissionDenied",
        "ResourceExhausted",
        "FailedPrecondition",
        "Aborted",
        "OutOfRange",
        "Unimplemented",
        "Internal",
        "Unavailable",
        "DataLoss",
        "Unauthenticated",
    ];
    NAMES[c.min(CODES - 1)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_counters_gauges_and_cumulative_buckets() {
        let m = Metrics::new();
        m.request("GetSecret", 0);
        m.request("GetSecret", 0);
        m.request("GetSecret", 5);
        for v in [0.0001, 0.003, 0.2, 20.0] {
            m.backend_call("dev", "fetch", Duration::from_secs_f64(v));
        }
        let g = Gauges {
            sessions: 3,
            leases: 0,
            cached_values: 0,
            watches: 0,
            journal_backlog: 0,
            config_generation: 7,
        };
        let out = m.render(&g);
        assert!(
            out.contains("sidecred_requests_total{rpc=\"GetSecret\",code=\"Ok\"} 2"),
            "{out}"
        );
        assert!(out.contains("sidecred_requests_total{rpc=\"GetSecret\",code=\"NotFound\"} 1"));
        assert!(
            !out.contains("code=\"Internal\""),
            "only codes that happened"
        );
        assert!(out.contains("sidecred_sessions_active 3"));
        assert!(out.contains("sidecred_config_generation 7"));
        assert!(out.contains("sidecred_backend_call_seconds_bucket{le=\"0.0005\",backend=\"dev\",op=\"fetch\"} 1")
            || out.contains("sidecred_backend_call_seconds_bucket{backend=\"dev\",op=\"fetch\",le=\"0.0005\"} 1"), "{out}");
        assert!(
            out.contains("sidecred_backend_call_seconds_count{backend=\"dev\",op=\"fetch\"} 4"),
            "{out}"
        );
        assert!(
            out.contains("sidecred_revocation_propagation_seconds_count{scope=\"fleet\"} 0"),
            "{out}"
        );
        assert!(out.ends_with("# EOF\n"));
    }
}
