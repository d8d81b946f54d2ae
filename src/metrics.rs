//! Metrics: the registry lives with the engine (`sidecred_engine::metrics`), which counts
//! most of what it holds; serving it over HTTP is the server's job, here.

pub use sidecred_engine::metrics::*;

use serde::Deserialize;
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
