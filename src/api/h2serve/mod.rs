//! The workload socket's HTTP/2 server, on the `h2` crate directly.
//!
//! Every tool call passes through here, so the request path is kept short: each connection is
//! one task that runs its streams inline (no task per request, no cross-thread wake-ups), and
//! the unary `Broker` calls are decoded, run and answered without a router or a tower stack.
//! Streams that need more (WatchSecret, health, reflection, unknown paths) go to the regular
//! tonic services through a small body adapter. Limits come from [`Limits`]: HTTP/2 settings that
//! bound what one connection can make the server hold (streams, windows, frame and header list
//! sizes, send buffer), request size enforced as DATA arrives (a unary body is not credited back
//! to the client until it is whole, so flow control bounds it too), a per-request deadline (the
//! caller's `grpc-timeout`, at most [`REQUEST_TIMEOUT`]) and keep-alive pings that drop dead peers.

use super::broker::BrokerService;
use super::layer::{finish, rpc_span};
use super::limits::Limits;
use super::peer::{PeerIdentity, PeerStream};
use crate::api::error::{status, ApiError};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures::stream::FuturesUnordered;
use futures::{Stream, StreamExt};
use sidecred_core::sched::InFlight;
use std::convert::Infallible;
use std::future::{poll_fn, Future};
use std::pin::pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;
use tokio::sync::watch;
use tonic::{Code, Status};
use tracing::Instrument;

mod fallback;
use fallback::generic;

/// Longest a request may run when the caller sets no shorter `grpc-timeout`.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// The tonic service stack for everything that is not a unary `Broker` call.
pub type Fallback = tower::util::BoxCloneSyncService<
    http::Request<tonic::body::Body>,
    http::Response<tonic::body::Body>,
    Infallible,
>;

/// What every connection shares.
pub struct Services {
    pub broker: BrokerService,
    pub fallback: Fallback,
    pub limits: Limits,
}

/// Serves connections from `incoming` until `stop` resolves, then lets open connections finish
/// their streams (the caller bounds how long).
pub async fn serve(
    incoming: impl Stream<Item = std::io::Result<PeerStream>>,
    svc: Arc<Services>,
    stop: impl Future<Output = ()>,
) {
    let (tx, rx) = watch::channel(false);
    let mut incoming = pin!(incoming);
    let mut stop = pin!(stop);
    let mut conns = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut stop => break,
            c = incoming.next() => match c {
                Some(Ok(io)) => {
                    conns.spawn(connection(io, svc.clone(), rx.clone()));
                }
                Some(Err(e)) => tracing::debug!(error = %e, "accept failed"),
                None => break,
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    let _ = tx.send(true);
    while conns.join_next().await.is_some() {}
}

async fn connection(io: PeerStream, svc: Arc<Services>, mut stop: watch::Receiver<bool>) {
    // Requests that arrive in one read share one identity re-check (see `ReadEpoch`).
    let reads = super::peer::ReadEpoch::default();
    let peer = PeerIdentity {
        reads: Some(reads.clone()),
        ..io.identity().clone()
    };
    let l = &svc.limits;
    let Ok(mut conn) = h2::server::Builder::new()
        .max_concurrent_streams(l.max_concurrent_streams)
        .max_header_list_size(l.max_header_list_size)
        .max_frame_size(l.max_frame_size)
        .max_send_buffer_size(l.max_send_buffer)
        .initial_connection_window_size(l.initial_connection_window)
        .initial_window_size(l.initial_stream_window)
        .handshake::<_, Bytes>(super::h2fix::AuthorityFix::new(io).counting(reads))
        .await
    else {
        return;
    };
    let keepalive = keepalive(conn.ping_pong());
    let mut keepalive = pin!(keepalive);
    let stopping = async move {
        while !*stop.borrow_and_update() {
            if stop.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    };
    let mut stopping = pin!(stopping);
    let mut closing = false;
    let mut streams = FuturesUnordered::new();
    loop {
        // One wake-up does all the work it can: accept every stream already received, run the
        // handlers that are ready (a cached read answers at once), and go round again so the
        // connection flushes all their answers in one write, until nothing moves.
        let event = poll_fn(|cx| {
            loop {
                let mut moved = false;
                loop {
                    match conn.poll_accept(cx) {
                        Poll::Ready(Some(Ok((req, respond)))) => {
                            // Counted from here: the streams of this read are all in
                            // flight before the first is handled (see `InFlight::others`).
                            let counted = InFlight::enter();
                            streams.push(stream(svc.clone(), peer.clone(), req, respond, counted));
                            moved = true;
                        }
                        Poll::Ready(Some(Err(e))) => return Poll::Ready(Event::Closed(Some(e))),
                        Poll::Ready(None) => return Poll::Ready(Event::Closed(None)),
                        Poll::Pending => break,
                    }
                }
                while let Poll::Ready(Some(())) = streams.poll_next_unpin(cx) {
                    moved = true;
                }
                if !moved {
                    break;
                }
            }
            if !closing && stopping.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Event::Stop);
            }
            if keepalive.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Event::PingLost);
            }
            Poll::Pending
        })
        .await;
        match event {
            Event::Stop => {
                closing = true;
                conn.graceful_shutdown();
            }
            Event::Closed(e) => {
                if let Some(e) = e {
                    tracing::debug!(error = %e, "HTTP/2 connection error");
                }
                return;
            }
            Event::PingLost => {
                tracing::debug!(caller = %peer, "keep-alive ping unanswered; closing connection");
                return;
            }
        }
    }
}

enum Event {
    Stop,
    Closed(Option<h2::Error>),
    PingLost,
}

/// Pings every [`KEEPALIVE_INTERVAL`]; resolves when a ping goes unanswered.
async fn keepalive(pp: Option<h2::PingPong>) {
    let Some(mut pp) = pp else {
        return std::future::pending().await;
    };
    loop {
        tokio::time::sleep(KEEPALIVE_INTERVAL).await;
        match tokio::time::timeout(KEEPALIVE_TIMEOUT, pp.ping(h2::Ping::opaque())).await {
            Ok(Ok(_)) => {}
            _ => return,
        }
    }
}

/// The unary `Broker` methods served without the tonic stack.
#[derive(Clone, Copy)]
enum Unary {
    OpenSession,
    CloseSession,
    GetSecret,
    ReleaseLease,
    SignCsr,
}

fn unary(path: &str) -> Option<Unary> {
    Some(match path.strip_prefix("/sidecred.v1.Broker/")? {
        "GetSecret" => Unary::GetSecret,
        "OpenSession" => Unary::OpenSession,
        "CloseSession" => Unary::CloseSession,
        "ReleaseLease" => Unary::ReleaseLease,
        "SignCsr" => Unary::SignCsr,
        _ => return None,
    })
}

fn is_grpc(req: &http::Request<h2::RecvStream>) -> bool {
    req.method() == http::Method::POST
        && req
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v == "application/grpc" || v.starts_with("application/grpc+proto"))
}

async fn stream(
    svc: Arc<Services>,
    peer: PeerIdentity,
    req: http::Request<h2::RecvStream>,
    respond: h2::server::SendResponse<Bytes>,
    counted: InFlight,
) {
    let (rpc, span) = rpc_span(req.uri().path(), req.headers());
    match unary(req.uri().path()).filter(|_| is_grpc(&req)) {
        Some(m) => {
            let limit = deadline(req.headers());
            let work = async {
                let body = req.into_body();
                let msg = read_message(body, svc.limits.max_request_bytes).await?;
                call(&svc.broker, m, peer, msg).await
            }
            .instrument(span.clone());
            let out = bounded(limit, work).await.unwrap_or_else(|| {
                Err(status(ApiError::DeadlineExceeded(
                    "request did not finish within its deadline".into(),
                )))
            });
            finish(
                rpc,
                &span,
                out.as_ref().map_or_else(Status::code, |_| Code::Ok),
            );
            answer(respond, out);
        }
        // Boxed: the rare path's state stays out of every stream's future. Not counted in
        // flight: a watch stream lives for as long as its caller keeps it.
        None => {
            drop(counted);
            Box::pin(generic(svc, peer, req, respond).instrument(span)).await
        }
    }
}

/// The caller's `grpc-timeout` (e.g. `250m`), capped at [`REQUEST_TIMEOUT`].
fn deadline(h: &http::HeaderMap) -> Duration {
    let parse = |v: &str| {
        let (n, unit) = v.split_at(v.len().checked_sub(1)?);
        let n: u64 = n.parse().ok().filter(|_| n.len() <= 8)?;
        Some(match unit {
            "H" => Duration::from_secs(n.saturating_mul(3600)),
            "M" => Duration::from_secs(n.saturating_mul(60)),
            "S" => Duration::from_secs(n),
            "m" => Duration::from_millis(n),
            "u" => Duration::from_micros(n),
            "n" => Duration::from_nanos(n),
            _ => return None,
        })
    };
    h.get("grpc-timeout")
        .and_then(|v| v.to_str().ok())
        .and_then(parse)
        .map_or(REQUEST_TIMEOUT, |d| d.min(REQUEST_TIMEOUT))
}

/// Runs `f` to completion within `limit`. A call that finishes on its first poll (a cached
/// read) never arms a timer.
async fn bounded<F: Future>(limit: Duration, f: F) -> Option<F::Output> {
    let mut f = pin!(f);
    if let Poll::Ready(v) = futures::poll!(f.as_mut()) {
        return Some(v);
    }
    tokio::time::timeout(limit, f).await.ok()
}

/// Reads one length-prefixed gRPC message, refusing compression and oversized bodies as the
/// DATA arrives: at once when the prefix declares more than `max`, or when more bytes than it
/// declared arrive. Nothing is credited back to the client until the body is whole, so the
/// stream and connection windows bound what it can make the server hold meanwhile.
async fn read_message(mut body: h2::RecvStream, max: usize) -> Result<Bytes, Status> {
    let too_large = || {
        status(ApiError::Exhausted(format!(
            "request larger than {max} bytes"
        )))
    };
    let mut buf = BytesMut::new();
    let mut want = None;
    while let Some(chunk) = body.data().await {
        let chunk =
            chunk.map_err(|e| status(ApiError::Cancelled(format!("request stream: {e}"))))?;
        if buf.len() + chunk.len() > max + 5 {
            return Err(too_large());
        }
        buf.extend_from_slice(&chunk);
        if want.is_none() && buf.len() >= 5 {
            let len = (&buf[1..5]).get_u32() as usize;
            if len > max {
                return Err(too_large());
            }
            want = Some(len + 5);
        }
        if want.is_some_and(|w| buf.len() > w) {
            return Err(status(ApiError::InvalidArgument(
                "request body is not exactly one gRPC message".into(),
            )));
        }
    }
    // Whole: give the window back before the handler runs.
    let _ = body.flow_control().release_capacity(buf.len());
    unframe(buf.freeze())
}

/// The one length-prefixed gRPC message of a whole unary request body.
pub fn unframe(mut buf: Bytes) -> Result<Bytes, Status> {
    if buf.len() < 5 {
        return Err(status(ApiError::InvalidArgument(
            "request has no gRPC message".into(),
        )));
    }
    if buf[0] != 0 {
        return Err(status(ApiError::Unimplemented(
            "compressed requests are not accepted".into(),
        )));
    }
    let len = (&buf[1..5]).get_u32() as usize;
    if buf.len() - 5 != len {
        return Err(status(ApiError::InvalidArgument(
            "request body is not exactly one gRPC message".into(),
        )));
    }
    buf.advance(5);
    Ok(buf)
}

/// Runs a unary `Broker` call from a whole request body, as the workload socket does; None
/// for paths served by the tonic services instead. (The request fuzzer enters here.)
pub async fn unary_call(
    broker: &BrokerService,
    path: &str,
    peer: PeerIdentity,
    body: Bytes,
) -> Option<Result<Bytes, Status>> {
    let m = unary(path)?;
    Some(match unframe(body) {
        Ok(msg) => call(broker, m, peer, msg).await,
        Err(s) => Err(s),
    })
}

async fn call(
    svc: &BrokerService,
    m: Unary,
    peer: PeerIdentity,
    msg: Bytes,
) -> Result<Bytes, Status> {
    let p = &peer;
    match m {
        Unary::GetSecret => run(msg, |r| svc.get_secret(p, r)).await,
        Unary::OpenSession => run(msg, |r| svc.open_session(p, r)).await,
        Unary::CloseSession => run(msg, |r| svc.close_session(p, r)).await,
        Unary::ReleaseLease => run(msg, |r| svc.release_lease(p, r)).await,
        Unary::SignCsr => run(msg, |r| svc.sign_csr(p, r)).await,
    }
}

/// Decodes the request, runs the plain handler, encodes its answer with the 5-byte gRPC prefix.
async fn run<Req, Resp, F>(msg: Bytes, handler: impl FnOnce(Req) -> F) -> Result<Bytes, Status>
where
    Req: prost::Message + Default,
    Resp: prost::Message,
    F: Future<Output = Result<Resp, ApiError>>,
{
    let req = Req::decode(msg).map_err(|e| {
        status(ApiError::InvalidArgument(format!(
            "malformed request message: {e}"
        )))
    })?;
    Ok(frame(&handler(req).await.map_err(status)?))
}

/// One message with its 5-byte gRPC prefix (uncompressed), in a buffer sized for it.
pub fn frame(msg: &impl prost::Message) -> Bytes {
    let len = msg.encoded_len();
    let mut out = BytesMut::with_capacity(5 + len);
    out.put_u8(0);
    out.put_u32(len as u32);
    msg.encode(&mut out)
        .expect("a buffer of encoded_len bytes holds the message");
    out.freeze()
}

/// Sends a unary answer: headers, the message and `grpc-status: 0`, or a trailers-only error.
fn answer(mut respond: h2::server::SendResponse<Bytes>, out: Result<Bytes, Status>) {
    let grpc = http::HeaderValue::from_static("application/grpc");
    match out {
        Ok(msg) => {
            let mut head = http::Response::new(());
            head.headers_mut().insert(http::header::CONTENT_TYPE, grpc);
            let Ok(mut send) = respond.send_response(head, false) else {
                return;
            };
            let _ = send.send_data(msg, false);
            let mut t = http::HeaderMap::with_capacity(1);
            t.insert("grpc-status", http::HeaderValue::from_static("0"));
            let _ = send.send_trailers(t);
        }
        Err(status) => {
            let mut head = http::Response::new(());
            head.headers_mut().insert(http::header::CONTENT_TYPE, grpc);
            if status.add_header(head.headers_mut()).is_err() {
                head.headers_mut().insert(
                    "grpc-status",
                    http::HeaderValue::from(Code::Internal as i32),
                );
            }
            let _ = respond.send_response(head, true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_table() {
        let h = |v: &str| {
            let mut m = http::HeaderMap::new();
            m.insert("grpc-timeout", v.parse().unwrap());
            deadline(&m)
        };
        assert_eq!(deadline(&http::HeaderMap::new()), REQUEST_TIMEOUT);
        assert_eq!(h("250m"), Duration::from_millis(250));
        assert_eq!(h("3S"), Duration::from_secs(3));
        assert_eq!(h("1500u"), Duration::from_micros(1500));
        assert_eq!(h("2H"), REQUEST_TIMEOUT);
        for bad in ["", "m", "12x", "-1S", "123456789S"] {
            assert_eq!(h(bad), REQUEST_TIMEOUT, "{bad}");
        }
    }
}
