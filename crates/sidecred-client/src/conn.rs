//! One HTTP/2 connection to the workload socket, as a tower service that tonic's generated
//! client drives. A call goes straight to hyper's connection task: unlike tonic's `Channel`
//! there is no buffer task in between, so under a work-stealing runtime each call costs one
//! hand-off instead of two. A broken connection is replaced on the next call (the retry
//! policy decides whether that call is repeated).

use parking_lot::Mutex;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
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
    /// The live connection's sender; None once it broke (the next call reconnects).
    send: Mutex<Option<SendRequest<Body>>>,
    /// Serialises reconnects, so a burst of callers after a break opens one connection.
    connecting: tokio::sync::Mutex<()>,
}

impl Conn {
    /// Connects now, so a wrong path or a server that is not there fails here.
    pub(crate) async fn connect(
        socket: PathBuf,
        connect_timeout: Duration,
    ) -> std::io::Result<Conn> {
        let send = handshake(&socket, connect_timeout).await?;
        Ok(Conn {
            inner: Arc::new(Inner {
                socket,
                connect_timeout,
                send: Mutex::new(Some(send)),
                connecting: tokio::sync::Mutex::new(()),
            }),
        })
    }

    /// A sender on a live connection, reconnecting when the last one broke.
    async fn sender(&self) -> Result<SendRequest<Body>, BoxError> {
        if let Some(s) = self.live() {
            return Ok(s);
        }
        let _one = self.inner.connecting.lock().await;
        if let Some(s) = self.live() {
            return Ok(s);
        }
        let s = handshake(&self.inner.socket, self.inner.connect_timeout).await?;
        *self.inner.send.lock() = Some(s.clone());
        Ok(s)
    }

    fn live(&self) -> Option<SendRequest<Body>> {
        let mut g = self.inner.send.lock();
        match g.as_ref() {
            Some(s) if !s.is_closed() => Some(s.clone()),
            Some(_) => {
                *g = None;
                None
            }
            None => None,
        }
    }
}

async fn handshake(socket: &PathBuf, timeout: Duration) -> std::io::Result<SendRequest<Body>> {
    let timed_out = || std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out");
    let stream = tokio::time::timeout(timeout, tokio::net::UnixStream::connect(socket))
        .await
        .map_err(|_| timed_out())??;
    let mut b = hyper::client::conn::http2::Builder::new(TokioExecutor::new());
    b.timer(TokioTimer::new())
        .initial_stream_window_size(WINDOW)
        .initial_connection_window_size(WINDOW)
        .keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10));
    let (send, conn) = tokio::time::timeout(timeout, b.handshake(TokioIo::new(stream)))
        .await
        .map_err(|_| timed_out())?
        .map_err(std::io::Error::other)?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "sidecred connection ended");
        }
    });
    Ok(send)
}

impl tower_service::Service<http::Request<Body>> for Conn {
    type Response = http::Response<hyper::body::Incoming>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // Readiness is per call: the connection may be replaced between calls.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let me = self.clone();
        Box::pin(async move {
            let mut send = me.sender().await.map_err(unavailable)?;
            send.ready().await.map_err(unavailable)?;
            send.send_request(req).await.map_err(|e| {
                // Never sent, or the connection went away under it: like a refused connection,
                // a transient failure the retry policy may repeat.
                if e.is_canceled() || e.is_closed() {
                    unavailable(e)
                } else {
                    e.into()
                }
            })
        })
    }
}

fn unavailable(e: impl std::fmt::Display) -> BoxError {
    Box::new(tonic::Status::unavailable(format!(
        "sidecred connection: {e}"
    )))
}
