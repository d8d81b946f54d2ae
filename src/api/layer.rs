//! A tower layer around every gRPC service: counts requests by RPC and status code, and runs
//! each request inside a span carrying the caller's W3C trace id, so logs join the caller's trace.

use crate::metrics::{METRICS, RPCS};
use futures::future::BoxFuture;
use std::task::{Context, Poll};
use tonic::Code;
use tracing::Instrument;

#[derive(Clone)]
pub struct Observe<S> {
    inner: S,
}

/// The layer that adds [`Observe`] to a server.
#[derive(Clone, Copy, Default)]
pub struct ObserveLayer;

impl<S> tower::Layer<S> for ObserveLayer {
    type Service = Observe<S>;
    fn layer(&self, inner: S) -> Observe<S> {
        Observe { inner }
    }
}

/// The trace id of a `traceparent` header (`00-<32 hex>-<16 hex>-<2 hex>`), if well formed.
pub fn trace_id(traceparent: &str) -> Option<&str> {
    let mut parts = traceparent.split('-');
    let (_ver, id, parent, _flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    (hex(id, 32) && hex(parent, 16) && id != "00000000000000000000000000000000").then_some(id)
}

impl<S, B, RB> tower::Service<http::Request<B>> for Observe<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>> + Send,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let path = req.uri().path();
        let rpc = path
            .rsplit('/')
            .next()
            .and_then(|m| RPCS.iter().find(|r| **r == m))
            .copied();
        let trace = req
            .headers()
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .and_then(trace_id)
            .map(str::to_owned);
        let span = tracing::debug_span!(
            "rpc",
            rpc = rpc.unwrap_or("other"),
            trace_id = trace.as_deref().unwrap_or("")
        );
        let fut = self.inner.call(req);
        Box::pin(
            async move {
                let r = fut.await;
                if let (Some(rpc), Ok(resp)) = (rpc, &r) {
                    let code = resp
                        .headers()
                        .get("grpc-status")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|s| s.parse::<i32>().ok())
                        .unwrap_or(0);
                    METRICS.request(rpc, Code::from(code));
                }
                r
            }
            .instrument(span),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::trace_id;

    #[test]
    fn traceparent_table() {
        let ok = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(trace_id(ok), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
        for bad in [
            "",
            "00-xyz-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736",
        ] {
            assert_eq!(trace_id(bad), None, "{bad}");
        }
    }
}
