//! The rare path of the workload socket: a stream that is not a unary `Broker` call goes to the
//! tonic services, with the h2 request body adapted to `http_body::Body` and their answer piped
//! back under HTTP/2 flow control.

use super::{PeerIdentity, Services};
use crate::api::error::{status, ApiError};
use bytes::{Buf, Bytes};
use http_body_util::BodyExt;
use std::future::poll_fn;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tower::ServiceExt;

/// An h2 request body as an `http_body::Body`, releasing flow-control credit as it is read.
/// It follows the gRPC message framing and fails the stream as soon as a prefix declares a
/// message over the limit, so the service behind never buffers more than one allowed message.
struct RecvBody {
    recv: h2::RecvStream,
    data_done: bool,
    max: usize,
    /// Bytes of the current message prefix seen so far, and what is left of its message.
    prefix: Vec<u8>,
    left: usize,
}

impl RecvBody {
    /// Walks the framing of `d`; Err when a message declares more than `max` bytes.
    fn check(&mut self, mut d: &[u8]) -> Result<(), tonic::Status> {
        while !d.is_empty() {
            if self.left > 0 {
                let n = self.left.min(d.len());
                self.left -= n;
                d = &d[n..];
                continue;
            }
            let n = (5 - self.prefix.len()).min(d.len());
            self.prefix.extend_from_slice(&d[..n]);
            d = &d[n..];
            if self.prefix.len() == 5 {
                let len = (&self.prefix[1..5]).get_u32() as usize;
                if len > self.max {
                    return Err(status(ApiError::Exhausted(format!(
                        "request larger than {} bytes",
                        self.max
                    ))));
                }
                self.left = len;
                self.prefix.clear();
            }
        }
        Ok(())
    }
}

impl http_body::Body for RecvBody {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, tonic::Status>>> {
        let h2err = |e: h2::Error| status(ApiError::Cancelled(format!("request stream: {e}")));
        if !self.data_done {
            match std::task::ready!(self.recv.poll_data(cx)) {
                Some(Ok(d)) => {
                    self.check(&d)?;
                    let _ = self.recv.flow_control().release_capacity(d.len());
                    return Poll::Ready(Some(Ok(http_body::Frame::data(d))));
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(h2err(e)))),
                None => self.data_done = true,
            }
        }
        match std::task::ready!(self.recv.poll_trailers(cx)) {
            Ok(Some(t)) => Poll::Ready(Some(Ok(http_body::Frame::trailers(t)))),
            Ok(None) => Poll::Ready(None),
            Err(e) => Poll::Ready(Some(Err(h2err(e)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.recv.is_end_stream()
    }
}

/// Hands the stream to the tonic services and pipes their answer back, honouring flow control
/// and stopping when the caller resets the stream (an abandoned watch).
pub(super) async fn generic(
    svc: Arc<Services>,
    peer: PeerIdentity,
    req: http::Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<Bytes>,
) {
    let (mut parts, recv) = req.into_parts();
    parts.extensions.insert(peer);
    let body = tonic::body::Body::new(RecvBody {
        recv,
        data_done: false,
        max: svc.limits.max_request_bytes,
        prefix: Vec::with_capacity(5),
        left: 0,
    });
    let Ok(resp) = svc
        .fallback
        .clone()
        .oneshot(http::Request::from_parts(parts, body))
        .await;
    let (parts, mut body) = resp.into_parts();
    let end = http_body::Body::is_end_stream(&body);
    let Ok(mut send) = respond.send_response(http::Response::from_parts(parts, ()), end) else {
        return;
    };
    if end {
        return;
    }
    loop {
        let frame = tokio::select! {
            f = body.frame() => f,
            _ = poll_fn(|cx| send.poll_reset(cx)) => return,
        };
        match frame {
            None => {
                let _ = send.send_data(Bytes::new(), true);
                return;
            }
            Some(Err(e)) => {
                tracing::debug!(error = %e, "response body failed; resetting the stream");
                send.send_reset(h2::Reason::INTERNAL_ERROR);
                return;
            }
            Some(Ok(f)) => match f.into_data() {
                Ok(mut data) => {
                    while data.has_remaining() {
                        send.reserve_capacity(data.len());
                        let n = match poll_fn(|cx| send.poll_capacity(cx)).await {
                            Some(Ok(n)) if n > 0 => n.min(data.len()),
                            Some(Ok(_)) => continue,
                            _ => return,
                        };
                        if send.send_data(data.split_to(n), false).is_err() {
                            return;
                        }
                    }
                }
                Err(f) => {
                    if let Ok(t) = f.into_trailers() {
                        let _ = send.send_trailers(t);
                    }
                    return;
                }
            },
        }
    }
}
