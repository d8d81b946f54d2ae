//! The rare path of the workload socket: a stream that is not a unary `Broker` call goes to the
//! tonic services, with the h2 request body adapted to `http_body::Body` and their answer piped
//! back under HTTP/2 flow control.

use super::{PeerIdentity, Services};
use bytes::{Buf, Bytes};
use http_body_util::BodyExt;
use std::future::poll_fn;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tower::ServiceExt;

/// An h2 request body as an `http_body::Body`, releasing flow-control credit as it is read.
struct RecvBody {
    recv: h2::RecvStream,
    data_done: bool,
}

impl http_body::Body for RecvBody {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, h2::Error>>> {
        if !self.data_done {
            match std::task::ready!(self.recv.poll_data(cx)) {
                Some(Ok(d)) => {
                    let _ = self.recv.flow_control().release_capacity(d.len());
                    return Poll::Ready(Some(Ok(http_body::Frame::data(d))));
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => self.data_done = true,
            }
        }
        match std::task::ready!(self.recv.poll_trailers(cx)) {
            Ok(Some(t)) => Poll::Ready(Some(Ok(http_body::Frame::trailers(t)))),
            Ok(None) => Poll::Ready(None),
            Err(e) => Poll::Ready(Some(Err(e))),
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
