//! One HTTP/2 connection to the workload socket, as a tower service that tonic's generated
//! client drives, written on the `h2` crate directly.
//!
//! Why not hyper's client: hyper streams every request body that is not empty from a task of
//! its own, so each unary call spawned a task and crossed threads twice more under a
//! work-stealing runtime. A gRPC request here is one small message, so the call collects it
//! and hands it to h2 in the caller's own task: the only task besides the caller is the
//! connection's. A broken connection is replaced on the next call (the retry policy decides
//! whether that call is repeated).

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame};
use http_body_util::BodyExt;
use parking_lot::Mutex;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tonic::body::Body;

/// Largest window the client offers, so a burst of answers never waits for a WINDOW_UPDATE.
const WINDOW: u32 = 1 << 20;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Cheap to clone: clones share the connection.
#[derive(Clone)]
pub(crate) struct Conn {
    inner: Arc<Inner>,
}

struct Inner {
    socket: PathBuf,
    connect_timeout: Duration,
    /// The live connection; None once it broke (the next call reconnects).
    live: Mutex<Option<Live>>,
    /// Serialises reconnects, so a burst of callers after a break opens one connection.
    connecting: tokio::sync::Mutex<()>,
}

#[derive(Clone)]
struct Live {
    send: h2::client::SendRequest<Bytes>,
    /// Set by the connection's task when the connection ends.
    closed: Arc<AtomicBool>,
}

impl Conn {
    /// Connects now, so a wrong path or a server that is not there fails here.
    pub(crate) async fn connect(
        socket: PathBuf,
        connect_timeout: Duration,
    ) -> std::io::Result<Conn> {
        let live = handshake(&socket, connect_timeout).await?;
        Ok(Conn {
            inner: Arc::new(Inner {
                socket,
                connect_timeout,
                live: Mutex::new(Some(live)),
                connecting: tokio::sync::Mutex::new(()),
            }),
        })
    }

    /// A sender on a live connection, reconnecting when the last one broke.
    async fn sender(&self) -> Result<Live, BoxError> {
        if let Some(s) = self.live() {
            return Ok(s);
        }
        let _one = self.inner.connecting.lock().await;
        if let Some(s) = self.live() {
            return Ok(s);
        }
        let s = handshake(&self.inner.socket, self.inner.connect_timeout).await?;
        *self.inner.live.lock() = Some(s.clone());
        Ok(s)
    }

    fn live(&self) -> Option<Live> {
        let mut g = self.inner.live.lock();
        match g.as_ref() {
            Some(l) if !l.closed.load(Ordering::Acquire) => Some(l.clone()),
            Some(_) => {
                *g = None;
                None
            }
            None => None,
        }
    }

    /// Forgets `broken` (if it is still the current connection), so the next call reconnects.
    fn forget(&self, broken: &Live) {
        let mut g = self.inner.live.lock();
        if g.as_ref()
            .is_some_and(|l| Arc::ptr_eq(&l.closed, &broken.closed))
        {
            *g = None;
        }
    }
}

async fn handshake(socket: &PathBuf, timeout: Duration) -> std::io::Result<Live> {
    let timed_out = || std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out");
    let stream = tokio::time::timeout(timeout, tokio::net::UnixStream::connect(socket))
        .await
        .map_err(|_| timed_out())??;
    let mut b = h2::client::Builder::new();
    b.initial_window_size(WINDOW)
        .initial_connection_window_size(WINDOW);
    let (send, conn) = tokio::time::timeout(timeout, b.handshake::<_, Bytes>(stream))
        .await
        .map_err(|_| timed_out())?
        .map_err(std::io::Error::other)?;
    let closed = Arc::new(AtomicBool::new(false));
    let flag = closed.clone();
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "sidecred connection ended");
        }
        flag.store(true, Ordering::Release);
    });
    Ok(Live { send, closed })
}

impl tower_service::Service<http::Request<Body>> for Conn {
    type Response = http::Response<RecvBody>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // Readiness is per call: the connection may be replaced between calls.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let me = self.clone();
        Box::pin(async move {
            let (parts, body) = req.into_parts();
            // One encoded message (or none): tonic's body yields it without waiting.
            let data = body.collect().await?.to_bytes();
            let live = me.sender().await.map_err(unavailable)?;
            let broken = |e: h2::Error| {
                me.forget(&live);
                unavailable(e)
            };
            let mut send = live.send.clone().ready().await.map_err(broken)?;
            let eos = data.is_empty();
            let (answer, mut stream) = send
                .send_request(http::Request::from_parts(parts, ()), eos)
                .map_err(broken)?;
            if !eos {
                stream.send_data(data, true).map_err(broken)?;
            }
            let answer = answer.await.map_err(|e| {
                // Refused or reset before an answer: a transient failure like a refused
                // connection, which the retry policy may repeat.
                if e.is_io() || e.is_go_away() || e.reason() == Some(h2::Reason::REFUSED_STREAM) {
                    broken(e)
                } else {
                    Box::new(e) as BoxError
                }
            })?;
            Ok(answer.map(|recv| RecvBody { recv, done: false }))
        })
    }
}

/// An answer's body: h2's stream as an `http_body::Body`, trailers last (gRPC's status).
pub(crate) struct RecvBody {
    recv: h2::RecvStream,
    done: bool,
}

impl HttpBody for RecvBody {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        if self.done {
            return Poll::Ready(None);
        }
        if let Some(chunk) = ready!(self.recv.poll_data(cx)) {
            let chunk = chunk?;
            // Read data is window the server may use again at once.
            let _ = self.recv.flow_control().release_capacity(chunk.len());
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        let trailers = ready!(self.recv.poll_trailers(cx))?;
        self.done = true;
        Poll::Ready(trailers.map(|t| Ok(Frame::trailers(t))))
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}

fn unavailable(e: impl std::fmt::Display) -> BoxError {
    Box::new(tonic::Status::unavailable(format!(
        "sidecred connection: {e}"
    )))
}
