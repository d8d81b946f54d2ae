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

/// The trace id and parent span id of a `traceparent` header (`00-<32 hex>-<16 hex>-<2 hex>`),
/// if well formed (W3C: neither may be all zeros).
pub fn traceparent(header: &str) -> Option<(&str, &str)> {
    let mut parts = header.split('-');
    let (_ver, id, parent, _flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, n: usize| {
        s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit()) && s.bytes().any(|b| b != b'0')
    };
    (hex(id, 32) && hex(parent, 16)).then_some((id, parent))
}

/// The trace id of a `traceparent` header, if well formed.
pub fn trace_id(header: &str) -> Option<&str> {
    traceparent(header).map(|(id, _)| id)
}

/// The RPC's metrics name (if it is one of ours) and the `rpc` span carrying the caller's
/// trace context, shared by every server.
pub fn rpc_span(path: &str, headers: &http::HeaderMap) -> (Option<&'static str>, tracing::Span) {
    let rpc = path
        .rsplit('/')
        .next()
        .and_then(|m| RPCS.iter().find(|r| **r == m))
        .copied();
    let tp = headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .and_then(traceparent);
    let (trace_id, parent) = tp.unwrap_or(("", ""));
    let span = tracing::debug_span!(
        "rpc",
        rpc = rpc.unwrap_or("other"),
        trace_id = trace_id,
        parent_span_id = parent,
        code = tracing::field::Empty
    );
    (rpc, span)
}

/// Records the outcome of an RPC on its span and in the request counters.
pub fn finish(rpc: Option<&'static str>, span: &tracing::Span, code: Code) {
    span.record("code", tracing::field::debug(code));
    if let Some(rpc) = rpc {
        METRICS.request(rpc, code as i32);
    }
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
        let (rpc, span) = rpc_span(req.uri().path(), req.headers());
        let fut = self.inner.call(req);
        Box::pin(
            async move {
                let r = fut.await;
                if let Ok(resp) = &r {
                    let code = resp
                        .headers()
                        .get("grpc-status")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|s| s.parse::<i32>().ok())
                        .map_or(Code::Ok, Code::from);
                    finish(rpc, &tracing::Span::current(), code);
                }
                r
            }
            .instrument(span),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::{trace_id, traceparent};

    #[test]
    fn traceparent_table() {
        let ok = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(trace_id(ok), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
        assert_eq!(
            traceparent(ok),
            Some(("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"))
        );
        for bad in [
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "",
            "00-xyz-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736",
        ] {
            assert_eq!(trace_id(bad), None, "{bad}");
        }
    }
}
