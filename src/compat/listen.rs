//! The HTTP/1.1 listener every compatible endpoint shares. A connection is accepted, its caller
//! identified at once (SO_PEERCRED and a pidfd, api/peer.rs) and admitted by the same gate as
//! the gRPC sockets (api/admission.rs: a uid no workload rule admits, or one over the global or
//! per-uid connection cap, is refused with an error in the endpoint's own shape). Requests are
//! bounded in header size, header count, body size and time; each one is answered by the
//! [`Endpoint`] with the identity read at accept, re-checked at use.
//!
//! TCP callers carry no SO_PEERCRED: a TCP listener identifies the peer itself and hands the
//! stream to [`Listener::serve_identified`], which admits and serves it exactly like a Unix one.

use crate::api::admission::{Gate, Refusal, Socket, LINGER};
use crate::api::limits::{Limits, MAX_REQUEST_BYTES};
use crate::api::peer::PeerIdentity;
use crate::engine::Engine;
use crate::engine::RequestLine;
use crate::metrics::{HttpEndpoint, HttpRoute, HTTP};
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::UnixListener;
use tokio::sync::watch;

/// One compatible API. The listener hands it whole requests (body read and bounded) from
/// admitted callers whose identity still holds.
pub trait Endpoint: Send + Sync + 'static {
    /// Short name (`vault_api`, `aws_agent`): in logs, refusals and audit events
    /// (`<name>_request`).
    fn name(&self) -> &'static str;

    /// Answers one request. It audits what it does (the broker handlers audit grants and
    /// denials); the listener audits only what it refuses before the endpoint sees it.
    fn handle(
        &self,
        caller: &PeerIdentity,
        req: Request<Bytes>,
    ) -> impl Future<Output = Response<Full<Bytes>>> + Send;

    /// An error in this API's own shape: refusals at accept, oversized or slow requests, a
    /// caller whose process changed since it connected.
    fn error(&self, status: StatusCode, message: &str) -> Response<Full<Bytes>>;

    /// True when every route that uses the caller's identity re-checks it at use itself (the
    /// Broker handlers do): the listener then skips its own check, which reads /proc twice
    /// per request. False (the default): the listener checks before `handle`.
    fn rechecks_identity(&self) -> bool {
        false
    }

    /// Which endpoint's rows of the HTTP metrics (`crate::metrics::HTTP`) count this one's
    /// requests; None (the default): not counted.
    fn metrics(&self) -> Option<HttpEndpoint> {
        None
    }

    /// A request's route class for the metrics, from its method and URI alone (before the body
    /// is read, so refusals are classed too). Must not allocate: it runs on every request.
    fn route_class(&self, _method: &http::Method, _uri: &http::Uri) -> HttpRoute {
        HttpRoute::Other
    }
}

/// Bounds on one HTTP/1.1 connection and its requests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpLimits {
    /// Request line and headers together (hyper answers 431 beyond it; at least 8 KiB).
    pub max_header_bytes: usize,
    /// Header fields per request.
    pub max_headers: usize,
    /// Request body; larger ones get 413 before policy runs.
    pub max_body: usize,
    /// A request's headers must arrive within this (from the first byte of the request, or
    /// from the end of the previous one on a kept-alive connection); then the connection closes.
    pub header_timeout: Duration,
    /// A request's body must arrive within this once its headers have; else 408.
    pub body_timeout: Duration,
}

impl HttpLimits {
    /// The same bounds as the gRPC sockets: 16 KiB of headers, 64 KiB bodies, and
    /// `server.handshake_timeout` for headers and for bodies.
    pub fn from_limits(l: &Limits) -> Self {
        Self {
            max_header_bytes: l.max_header_list_size as usize,
            max_headers: 64,
            max_body: MAX_REQUEST_BYTES,
            header_timeout: l.handshake_timeout,
            body_timeout: l.handshake_timeout,
        }
    }
}

/// Serves one [`Endpoint`] on any number of sockets.
pub struct Listener<E> {
    endpoint: E,
    engine: Arc<Engine>,
    gate: Arc<Gate>,
    limits: HttpLimits,
    stop: watch::Receiver<bool>,
}

impl<E: Endpoint> Listener<E> {
    /// A listener whose connection caps come from `[server]`, counted apart from the gRPC
    /// sockets (one gate per endpoint, shared by its Unix and TCP sockets).
    pub fn new(endpoint: E, engine: Arc<Engine>, stop: watch::Receiver<bool>) -> Arc<Self> {
        let limits = Limits::from_config(&engine.catalog().config.server);
        let http = HttpLimits::from_limits(&limits);
        let gate = Gate::new(Socket::Http(endpoint.name()), engine.clone(), limits);
        // Registers the HTTP families at start rather than inside the first request.
        std::sync::LazyLock::force(&HTTP);
        Arc::new(Self {
            endpoint,
            engine,
            gate,
            limits: http,
            stop,
        })
    }

    /// Replaces the request bounds (tests, and endpoints that need other sizes).
    pub fn with_limits(self: Arc<Self>, limits: HttpLimits) -> Arc<Self> {
        match Arc::try_unwrap(self) {
            Ok(mut me) => {
                me.limits = limits;
                Arc::new(me)
            }
            Err(me) => me,
        }
    }

    pub fn endpoint(&self) -> &E {
        &self.endpoint
    }

    /// Accepts on a Unix socket until shutdown. Each connection is identified at accept, then
    /// admitted or refused; accept errors (such as running out of descriptors) pause briefly.
    pub async fn serve_unix(self: Arc<Self>, listener: UnixListener) {
        let mut stop = self.stop.clone();
        loop {
            tokio::select! {
                a = listener.accept() => match a {
                    Ok((s, _)) => match crate::api::peer::identify(&s) {
                        Ok(id) => self.serve_identified(s, id),
                        Err(e) => tracing::warn!(endpoint = self.endpoint.name(), error = %e, "cannot identify peer; connection dropped"),
                    },
                    Err(e) => {
                        tracing::warn!(endpoint = self.endpoint.name(), error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                _ = async { let _ = stop.wait_for(|s| *s).await; } => return,
            }
        }
    }

    /// Accepts on a loopback TCP socket until shutdown. Each connection's caller is found in
    /// the kernel's socket table (api/tcp_peer.rs), off the async workers and a few at a time,
    /// then admitted or refused like a Unix one; a caller that cannot be identified is refused.
    pub async fn serve_tcp(self: Arc<Self>, listener: tokio::net::TcpListener) {
        let mut stop = self.stop.clone();
        let identifying = Arc::new(tokio::sync::Semaphore::new(8));
        loop {
            tokio::select! {
                a = listener.accept() => match a {
                    Ok((s, peer)) => {
                        let me = self.clone();
                        let permits = identifying.clone();
                        tokio::spawn(async move {
                            let Ok(_permit) = permits.acquire_owned().await else { return };
                            let local = match s.local_addr() {
                                Ok(a) => a,
                                Err(_) => return,
                            };
                            let _ = s.set_nodelay(true);
                            let id = tokio::task::spawn_blocking(move || {
                                crate::api::tcp_peer::identify(local, peer)
                            })
                            .await;
                            match id {
                                Ok(Ok(id)) => me.serve_identified(s, id),
                                Ok(Err(why)) => me.unidentified(s, &why).await,
                                Err(_) => {}
                            }
                        });
                    }
                    Err(e) => {
                        tracing::warn!(endpoint = self.endpoint.name(), error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                _ = async { let _ = stop.wait_for(|s| *s).await; } => return,
            }
        }
    }

    /// Refuses a TCP caller that could not be identified: a 403 in the endpoint's shape, then
    /// close. Logged; not audited, as there is no caller to name.
    async fn unidentified(&self, mut stream: tokio::net::TcpStream, why: &str) {
        tracing::warn!(
            endpoint = self.endpoint.name(),
            reason = why,
            "TCP caller not identified; refused"
        );
        let msg = format!("caller not identified: {why}");
        let bytes = encode(self.endpoint.error(StatusCode::FORBIDDEN, &msg));
        let _ = tokio::time::timeout(LINGER, async {
            stream.write_all(&bytes).await?;
            stream.shutdown().await
        })
        .await;
    }

    /// Admits (or refuses) and serves a connection whose caller is already identified: the
    /// seam for transports other than Unix sockets. Returns at once; the connection runs in
    /// a task of its own.
    pub fn serve_identified<S>(self: &Arc<Self>, stream: S, id: PeerIdentity)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        match self.gate.admit(&id) {
            Ok(slot) => {
                let me = self.clone();
                tokio::spawn(async move {
                    let _slot = slot;
                    me.connection(stream, id).await;
                });
            }
            Err(r) => self.refuse(stream, id, r),
        }
    }

    /// Writes the refusal as an HTTP response in the endpoint's shape, then closes once the
    /// client has read it (see `Gate::linger`); beyond the lingering cap, closes at once.
    fn refuse<S>(&self, mut stream: S, id: PeerIdentity, r: Refusal)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let why = self.gate.reason(&id, r);
        let status = match r {
            Refusal::NotAdmitted => StatusCode::FORBIDDEN,
            Refusal::Global | Refusal::PerUid => StatusCode::TOO_MANY_REQUESTS,
        };
        let bytes = encode(self.endpoint.error(status, &why));
        self.gate.report(&id, r, why);
        let Some(permit) = self.gate.linger_permit() else {
            return;
        };
        tokio::spawn(async move {
            let _permit = permit;
            let _ = tokio::time::timeout(LINGER, async {
                stream.write_all(&bytes).await?;
                stream.shutdown().await?;
                let mut buf = [0u8; 1024];
                while stream.read(&mut buf).await? > 0 {}
                Ok::<(), std::io::Error>(())
            })
            .await;
        });
    }

    /// Serves one admitted connection: HTTP/1.1 with keep-alive, bounded headers, until the
    /// client closes, a bound is crossed, or the server shuts down.
    async fn connection<S>(self: Arc<Self>, stream: S, mut id: PeerIdentity)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        // Requests read before one identity re-check began share it (see `ReadEpoch`): pipelined
        // requests, and those of the process's other connections. No yield to gather more: a
        // self-wake at C=1 woke the other worker for every request (measured: server CPU per
        // request 24-31 us with it, 15-26 us without; at C=32 within noise of each other).
        let reads = crate::api::peer::ReadEpoch::default();
        id.reads = Some(reads.clone());
        let stream = crate::api::counted::Counted::new(stream, reads);
        let id = Arc::new(id);
        let me = self.clone();
        let who = id.clone();
        let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
            let me = me.clone();
            let who = who.clone();
            async move { Ok::<_, std::convert::Infallible>(me.request(&who, req).await) }
        });
        let mut b = hyper::server::conn::http1::Builder::new();
        b.keep_alive(true)
            .timer(TokioTimer::new())
            .header_read_timeout(self.limits.header_timeout)
            .max_buf_size(self.limits.max_header_bytes.max(8192))
            .max_headers(self.limits.max_headers);
        let conn = b.serve_connection(TokioIo::new(stream), svc);
        tokio::pin!(conn);
        let mut stop = self.stop.clone();
        let result = tokio::select! {
            r = conn.as_mut() => r,
            _ = async { let _ = stop.wait_for(|s| *s).await; } => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        };
        if let Err(e) = result {
            let (status, what) = if e.is_parse_too_large() {
                (431, "request line or headers larger than the limit")
            } else if e.is_parse() || e.is_parse_status() {
                (400, "malformed HTTP request")
            } else if e.is_timeout() {
                (
                    408,
                    "request headers not received within the header timeout",
                )
            } else {
                tracing::debug!(endpoint = self.endpoint.name(), caller = %id, error = %e, "connection ended");
                return;
            };
            if let Some(ep) = self.endpoint.metrics() {
                HTTP.count(ep, HttpRoute::Other, status);
            }
            let why = format!(
                "{what} (limit {} bytes of headers, {:?}); answered {status} and closed",
                self.limits.max_header_bytes, self.limits.header_timeout
            );
            self.audit(&id, "invalid", &why).await;
        }
    }

    /// Answers one request and counts it, by route class and status, with its latency.
    async fn request(&self, id: &PeerIdentity, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let _counted = sidecred_core::sched::InFlight::enter();
        let Some(ep) = self.endpoint.metrics() else {
            return self.answer(id, req).await;
        };
        let start = std::time::Instant::now();
        let route = self.endpoint.route_class(req.method(), req.uri());
        let r = self.answer(id, req).await;
        HTTP.observe(ep, route, r.status().as_u16(), start.elapsed());
        r
    }

    /// Reads one request's body within its bounds, re-checks the caller, then asks the endpoint.
    async fn answer(&self, id: &PeerIdentity, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let (parts, body) = req.into_parts();
        let max = self.limits.max_body;
        let declared = parts
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > max as u64) {
            return self
                .reject(
                    id,
                    &parts,
                    StatusCode::PAYLOAD_TOO_LARGE,
                    &format!("request body larger than {max} bytes"),
                )
                .await;
        }
        // A request without a body (every GET) arms no timer and collects nothing.
        let body = if http_body::Body::is_end_stream(&body) {
            Bytes::new()
        } else {
            match tokio::time::timeout(self.limits.body_timeout, Limited::new(body, max).collect())
                .await
            {
                Ok(Ok(c)) => c.to_bytes(),
                Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
                    let why = format!("request body larger than {max} bytes");
                    return self
                        .reject(id, &parts, StatusCode::PAYLOAD_TOO_LARGE, &why)
                        .await;
                }
                Ok(Err(_)) => {
                    let why = "request body ended before its declared length";
                    return self.reject(id, &parts, StatusCode::BAD_REQUEST, why).await;
                }
                Err(_) => {
                    let why = format!(
                        "request body not received within {:?}",
                        self.limits.body_timeout
                    );
                    return self
                        .reject(id, &parts, StatusCode::REQUEST_TIMEOUT, &why)
                        .await;
                }
            }
        };
        let bound = if self.endpoint.rechecks_identity() {
            Ok(())
        } else {
            id.still_bound()
        };
        if let Err(why) = bound {
            return self.reject(id, &parts, StatusCode::FORBIDDEN, &why).await;
        }
        self.endpoint
            .handle(id, Request::from_parts(parts, body))
            .await
    }

    /// Audits and answers a request refused before the endpoint saw it.
    async fn reject(
        &self,
        id: &PeerIdentity,
        parts: &http::request::Parts,
        status: StatusCode,
        why: &str,
    ) -> Response<Full<Bytes>> {
        let outcome = if status == StatusCode::FORBIDDEN {
            "denied"
        } else {
            "invalid"
        };
        let detail = format!("{} {}: {why}", parts.method, clip(parts.uri.path(), 256));
        self.audit(id, outcome, &detail).await;
        let mut r = self.endpoint.error(status, why);
        // The rest of an oversized or broken body is not read: the connection cannot carry on.
        if status != StatusCode::FORBIDDEN {
            r.headers_mut().insert(
                http::header::CONNECTION,
                http::HeaderValue::from_static("close"),
            );
        }
        r
    }

    async fn audit(&self, id: &PeerIdentity, outcome: &str, detail: &str) {
        let event = format!("{}_request", self.endpoint.name());
        let line = RequestLine {
            event: &event,
            outcome,
            detail,
            ..Default::default()
        };
        self.engine.record_request(id, line).await;
        tracing::info!(endpoint = self.endpoint.name(), caller = %id, outcome, detail, "request refused");
    }
}

/// At most `max` bytes of `s`, cut at a character boundary.
pub fn clip(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// A whole response as HTTP/1.1 bytes, closing the connection (refusals at accept, before
/// hyper runs).
fn encode(r: Response<Full<Bytes>>) -> Vec<u8> {
    let (parts, body) = r.into_parts();
    // A Full body is one data frame, ready at once.
    let mut body = body;
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    let body = match http_body::Body::poll_frame(std::pin::Pin::new(&mut body), &mut cx) {
        std::task::Poll::Ready(Some(Ok(f))) => f.into_data().unwrap_or_default(),
        _ => Bytes::new(),
    };
    let mut out = format!(
        "HTTP/1.1 {} {}\r\n",
        parts.status.as_u16(),
        parts.status.canonical_reason().unwrap_or("")
    )
    .into_bytes();
    for (k, v) in &parts.headers {
        if k == http::header::CONTENT_LENGTH || k == http::header::CONNECTION {
            continue;
        }
        out.extend_from_slice(k.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(v.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(
        format!(
            "content-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    out.extend_from_slice(&body);
    out
}

#[cfg(test)]
#[path = "listen_tests.rs"]
mod listen_tests;
