//! Metrics: the registry lives with the engine (`sidecred_engine::metrics`), which counts
//! most of what it holds; serving it over HTTP is the server's job, here.

pub use sidecred_engine::metrics::*;

use serde::Deserialize;
use sidecred_engine::metrics::prometheus_client::metrics::{
    counter::Counter, family::Family, histogram::Histogram,
};
use std::path::PathBuf;
use std::time::Duration;

/// Where Prometheus metrics are served; nothing is served when both are unset.
#[derive(Clone, Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// A loopback TCP address such as "127.0.0.1:9464".
    #[serde(default)]
    pub listen: Option<String>,
    /// Or a Unix socket path.
    #[serde(default)]
    pub socket: Option<PathBuf>,
}

/// Serves `GET /metrics` (and `GET /`) over HTTP/1.1 with hyper, one response per connection;
/// anything else is 404 or 405. The header read is bounded in time.
pub async fn serve_http<S>(stream: S, body: impl Fn() -> String + Send + Sync + 'static)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use http_body_util::Full;
    use hyper::{body::Bytes, Method, Response, StatusCode};
    let body = std::sync::Arc::new(body);
    let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let body = body.clone();
        async move {
            let (status, ctype, text) = match (req.method(), req.uri().path()) {
                (&Method::GET, "/metrics" | "/") => (
                    StatusCode::OK,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    body(),
                ),
                (&Method::GET, _) => (StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
                _ => (
                    StatusCode::METHOD_NOT_ALLOWED,
                    "text/plain",
                    "only GET\n".into(),
                ),
            };
            Response::builder()
                .status(status)
                .header("content-type", ctype)
                .body(Full::new(Bytes::from(text)))
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .keep_alive(false)
        .header_read_timeout(Duration::from_secs(2))
        .timer(hyper_util::rt::TokioTimer::new())
        .max_buf_size(16 * 1024)
        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc);
    if let Err(e) = conn.await {
        tracing::debug!(error = %e, "metrics connection ended with an error");
    }
}

/// The HTTP endpoints that speak other products' APIs (src/compat), counted apart from gRPC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HttpEndpoint {
    Vault,
    AwsAgent,
}

const HTTP_ENDPOINTS: [&str; 2] = ["vault", "aws_agent"];

/// Route classes of the HTTP endpoints: a fixed set, so a label never carries a request path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HttpRoute {
    Health,
    Login,
    Token,
    Lease,
    Mounts,
    KvRead,
    KvMetadata,
    KvList,
    Leased,
    Ping,
    Get,
    /// No route: unknown paths, and requests refused before routing.
    Other,
}

const HTTP_ROUTES: [&str; 12] = [
    "health",
    "login",
    "token",
    "lease",
    "mounts",
    "kv_read",
    "kv_metadata",
    "kv_list",
    "leased",
    "ping",
    "get",
    "other",
];

/// Status codes with a label of their own; any other is counted as `other`.
const HTTP_CODES: [(u16, &str); 17] = [
    (200, "200"),
    (204, "204"),
    (400, "400"),
    (401, "401"),
    (403, "403"),
    (404, "404"),
    (405, "405"),
    (408, "408"),
    (409, "409"),
    (413, "413"),
    (429, "429"),
    (431, "431"),
    (500, "500"),
    (502, "502"),
    (503, "503"),
    (504, "504"),
    (0, "other"),
];

/// `[("endpoint", _), ("route", _), ("code", _)]`: static labels, no derive needed here.
type HttpLabels = [(&'static str, &'static str); 3];
/// `[("endpoint", _), ("route", _)]`.
type HttpLatencyLabels = [(&'static str, &'static str); 2];

type Cells<T, const N: usize> = [[[std::sync::OnceLock<T>; N]; HTTP_ROUTES.len()]; 2];

/// Requests and latency of the HTTP endpoints, in the engine's registry. Every label is a
/// `&'static str` from the tables above; each (endpoint, route, code) cell is looked up in its
/// family once, on first use, so a request costs two atomic adds and a histogram observation.
pub struct HttpMetrics {
    requests: Cells<Counter, { HTTP_CODES.len() }>,
    request_family: Family<HttpLabels, Counter>,
    latency: Cells<Histogram, 1>,
    latency_family: Family<HttpLatencyLabels, Histogram, fn() -> Histogram>,
}

/// Latency buckets, from 100 µs (a cache hit over a Unix socket) to 10 s.
fn http_histogram() -> Histogram {
    Histogram::new([
        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
        5.0, 10.0,
    ])
}

/// Registered in the shared registry when first touched (each endpoint's listener does at
/// start); a family shows in scrapes once it has a series.
pub static HTTP: std::sync::LazyLock<HttpMetrics> = std::sync::LazyLock::new(|| {
    let m = HttpMetrics {
        requests: Default::default(),
        request_family: Family::default(),
        latency: Default::default(),
        latency_family: Family::new_with_constructor(http_histogram as fn() -> Histogram),
    };
    METRICS.register_more(
        "sidecred_http_requests",
        "Requests to the Vault- and AWS-agent-compatible HTTP endpoints, by endpoint, route class and status code",
        m.request_family.clone(),
    );
    METRICS.register_more(
        "sidecred_http_request_seconds",
        "Time to answer a request on the compatible HTTP endpoints, by endpoint and route class",
        m.latency_family.clone(),
    );
    m
});

impl HttpMetrics {
    /// Counts one answered request and its latency.
    pub fn observe(&self, ep: HttpEndpoint, route: HttpRoute, status: u16, took: Duration) {
        self.count(ep, route, status);
        let (e, r) = (ep as usize, route as usize);
        self.latency[e][r][0]
            .get_or_init(|| {
                let labels: HttpLatencyLabels =
                    [("endpoint", HTTP_ENDPOINTS[e]), ("route", HTTP_ROUTES[r])];
                self.latency_family.get_or_create(&labels).clone()
            })
            .observe(took.as_secs_f64());
    }

    /// Counts a request without its latency (one that hyper refused before it was whole).
    pub fn count(&self, ep: HttpEndpoint, route: HttpRoute, status: u16) {
        let (e, r) = (ep as usize, route as usize);
        let c = HTTP_CODES
            .iter()
            .position(|(n, _)| *n == status)
            .unwrap_or(HTTP_CODES.len() - 1);
        self.requests[e][r][c]
            .get_or_init(|| {
                let labels: HttpLabels = [
                    ("endpoint", HTTP_ENDPOINTS[e]),
                    ("route", HTTP_ROUTES[r]),
                    ("code", HTTP_CODES[c].1),
                ];
                self.request_family.get_or_create(&labels).clone()
            })
            .inc();
    }
}
