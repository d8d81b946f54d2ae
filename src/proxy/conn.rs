//! Connections: accept and identify (the kernel's socket table), admit, then HTTP/1.1 with
//! keep-alive. A connection is bound to the first session that authenticates on it and closes
//! the moment that session is revoked or expires; a `CONNECT` either becomes a TLS-terminated
//! inner connection (a rule names the destination) or a byte tunnel (when config allows).

use super::tokens::Entry;
use super::upstream::{self, Route};
use super::{answer, Line, Proxy, Response};
use crate::api::peer::PeerIdentity;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use parking_lot::Mutex;
use sidecred_core::spec::Zone;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::Notify;

/// Accepts until shutdown; identification runs off the async workers, a few at a time.
pub async fn accept(p: Arc<Proxy>, l: tokio::net::TcpListener) {
    let mut stop = p.stop.clone();
    let identifying = Arc::new(tokio::sync::Semaphore::new(8));
    loop {
        tokio::select! {
            a = l.accept() => match a {
                Ok((s, peer)) => {
                    let p = p.clone();
                    let permits = identifying.clone();
                    tokio::spawn(async move {
                        let Ok(permit) = permits.acquire_owned().await else { return };
                        let Ok(local) = s.local_addr() else { return };
                        let _ = s.set_nodelay(true);
                        let id = tokio::task::spawn_blocking(move || crate::api::tcp_peer::identify(local, peer)).await;
                        drop(permit);
                        match id {
                            Ok(Ok(id)) => admit(p, s, id).await,
                            Ok(Err(why)) => {
                                tracing::warn!(reason = %why, "proxy caller not identified; refused");
                                refuse(s, 403, &format!("caller not identified: {why}")).await;
                            }
                            Err(_) => {}
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "proxy accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = async { let _ = stop.wait_for(|s| *s).await; } => return,
        }
    }
}

/// Accepts on the Unix socket until shutdown; callers identified by SO_PEERCRED.
pub async fn accept_unix(p: Arc<Proxy>, l: tokio::net::UnixListener) {
    let mut stop = p.stop.clone();
    loop {
        tokio::select! {
            a = l.accept() => match a {
                Ok((s, _)) => match crate::api::peer::identify(&s) {
                    Ok(id) => {
                        tokio::spawn(admit(p.clone(), s, id));
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot identify proxy peer; dropped"),
                },
                Err(e) => {
                    tracing::warn!(error = %e, "proxy accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = async { let _ = stop.wait_for(|s| *s).await; } => return,
        }
    }
}

async fn refuse<S: AsyncWrite + Unpin>(mut s: S, status: u16, why: &str) {
    let reason = http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("");
    let msg = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{why}\n",
        why.len() + 1
    );
    let _ = tokio::time::timeout(Duration::from_millis(200), async {
        s.write_all(msg.as_bytes()).await?;
        s.shutdown().await
    })
    .await;
}

async fn admit<S>(p: Arc<Proxy>, s: S, id: PeerIdentity)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    match p.gate.admit(&id) {
        Ok(slot) => {
            let _slot = slot;
            let c = Conn::new(p, Arc::new(id), None);
            c.serve(s).await;
        }
        Err(r) => {
            let why = p.gate.reason(&id, r);
            let status = match r {
                crate::api::admission::Refusal::NotAdmitted => 403,
                _ => 429,
            };
            p.gate.report(&id, r, why.clone());
            refuse(s, status, &why).await;
        }
    }
}

/// One client connection (or one TLS-terminated tunnel, with `target` set).
pub struct Conn {
    pub p: Arc<Proxy>,
    pub peer: Arc<PeerIdentity>,
    /// For a terminated tunnel: the destination every inner request goes to.
    pub target: Option<(String, u16)>,
    bound: Mutex<Option<Arc<Entry>>>,
    kill: Arc<Notify>,
    watcher: Mutex<Option<tokio::task::JoinHandle<()>>>,
    pub pool: super::forward::Pool,
}

impl Drop for Conn {
    fn drop(&mut self) {
        if let Some(w) = self.watcher.lock().take() {
            w.abort();
        }
    }
}

impl Conn {
    pub fn new(p: Arc<Proxy>, peer: Arc<PeerIdentity>, target: Option<(String, u16)>) -> Arc<Conn> {
        Arc::new(Conn {
            p,
            peer,
            target,
            bound: Mutex::new(None),
            kill: Arc::new(Notify::new()),
            watcher: Mutex::new(None),
            pool: Default::default(),
        })
    }

    /// Binds the connection to `e`'s session (the first one seen); another session is refused.
    pub fn bind(&self, e: &Arc<Entry>) -> Result<(), Box<Response>> {
        let mut b = self.bound.lock();
        match &*b {
            Some(cur) if cur.session == e.session => Ok(()),
            Some(_) => Err(Box::new(answer(
                403,
                "this connection carries another session; open a new connection",
            ))),
            None => {
                *b = Some(e.clone());
                let kill = self.kill.clone();
                let revoked = e.on_revoke();
                let left = e
                    .expires_at
                    .duration_since(SystemTime::now())
                    .unwrap_or_default();
                *self.watcher.lock() = Some(tokio::spawn(async move {
                    tokio::select! {
                        _ = revoked => {}
                        _ = tokio::time::sleep(left) => {}
                    }
                    kill.notify_one();
                }));
                Ok(())
            }
        }
    }

    pub fn session(&self) -> Option<Arc<Entry>> {
        self.bound.lock().clone()
    }

    /// `serve`, boxed: a terminated tunnel serves a connection from inside a request.
    fn serve_boxed<S>(
        self: Arc<Self>,
        io: S,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        Box::pin(self.serve(io))
    }

    /// Serves HTTP/1.1 on `io` until the client closes, the session ends, or shutdown.
    pub async fn serve<S>(self: Arc<Self>, io: S)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let me = self.clone();
        let svc = hyper::service::service_fn(move |req: http::Request<Incoming>| {
            let me = me.clone();
            async move { Ok::<_, std::convert::Infallible>(me.request(req).await) }
        });
        let mut b = hyper::server::conn::http1::Builder::new();
        b.keep_alive(true)
            .timer(TokioTimer::new())
            .header_read_timeout(Duration::from_secs(30))
            .max_buf_size(self.p.cfg.max_header_bytes.max(8192))
            .max_headers(100);
        let conn = b.serve_connection(TokioIo::new(io), svc).with_upgrades();
        tokio::pin!(conn);
        let mut stop = self.p.stop.clone();
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(caller = %self.peer, error = %e, "proxy connection ended");
                }
            }
            _ = self.kill.notified() => {
                tracing::info!(caller = %self.peer, "session ended; proxy connection closed");
            }
            _ = async { let _ = stop.wait_for(|s| *s).await; } => {}
        }
    }

    async fn request(self: &Arc<Self>, req: http::Request<Incoming>) -> Response {
        if let Some((host, port)) = self.target.clone() {
            // Inside a terminated tunnel: the session was checked at CONNECT.
            let Some(e) = self.session() else {
                return answer(403, "no session");
            };
            return super::forward::forward(self, &e, true, &host, port, req).await;
        }
        if req.method() != http::Method::CONNECT && req.uri().authority().is_none() {
            return self.p.control(&self.peer, req).await;
        }
        let now = SystemTime::now();
        let e = match self.p.tokens.check(
            req.headers().get(http::header::PROXY_AUTHORIZATION),
            self.peer.uid,
            now,
        ) {
            Ok(e) => e,
            Err(r) => {
                self.refused(None, r.status, &r.why, &req).await;
                let mut a = answer(r.status, r.why);
                if r.status == 407 {
                    a.headers_mut().insert(
                        http::header::PROXY_AUTHENTICATE,
                        http::HeaderValue::from_static("Basic realm=\"sidecred\""),
                    );
                }
                return a;
            }
        };
        if let Err(r) = self.bind(&e) {
            return *r;
        }
        if req.method() == http::Method::CONNECT {
            return self.connect(e, req).await;
        }
        let uri = req.uri().clone();
        if uri.scheme() != Some(&http::uri::Scheme::HTTP) {
            let msg = "absolute-form requests must be http://; for https use CONNECT (HTTPS_PROXY)";
            self.refused(Some(&e), 400, msg, &req).await;
            return answer(400, msg);
        }
        let host = uri
            .host()
            .unwrap_or("")
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase();
        let port = uri.port_u16().unwrap_or(80);
        super::forward::forward(self, &e, false, &host, port, req).await
    }

    /// Audits a request refused before it went anywhere.
    pub async fn refused<B>(
        &self,
        e: Option<&Arc<Entry>>,
        status: u16,
        why: &str,
        req: &http::Request<B>,
    ) {
        let host = req.uri().host().unwrap_or("-");
        self.p
            .audit(
                &self.peer,
                Line {
                    outcome: if status == 403 || status == 407 {
                        "denied"
                    } else {
                        "invalid"
                    },
                    session: e.map(|e| e.session.clone()),
                    rule: None,
                    secrets: String::new(),
                    versions: String::new(),
                    detail: format!(
                        "method={} host={} status={status} reason={why}",
                        req.method(),
                        crate::compat::listen::clip(host, 255)
                    ),
                },
            )
            .await;
    }

    async fn connect(self: &Arc<Self>, e: Arc<Entry>, req: http::Request<Incoming>) -> Response {
        let Some(auth) = req.uri().authority().cloned() else {
            return answer(400, "CONNECT needs host:port");
        };
        let host = auth
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase();
        let Some(port) = auth.port_u16() else {
            let msg = "CONNECT needs an explicit port (host:port)";
            self.refused(Some(&e), 400, msg, &req).await;
            return answer(400, msg);
        };
        if let Err(r) = self.p.limit(&e, &host) {
            return *r;
        }
        let named = self
            .p
            .cfg
            .rules
            .iter()
            .any(|r| r.tls && r.port == port && r.host == host);
        if named {
            let mitm = match self.p.mitm.server_config(&host) {
                Ok(c) => c,
                Err(why) => return answer(502, why),
            };
            let inner = Conn::new(self.p.clone(), self.peer.clone(), Some((host, port)));
            let _ = inner.bind(&e);
            let revoked = e.on_revoke();
            tokio::spawn(async move {
                let tunnel = async move {
                    let Ok(up) = hyper::upgrade::on(req).await else {
                        return;
                    };
                    let acceptor = tokio_rustls::TlsAcceptor::from(mitm);
                    let tls = tokio::time::timeout(
                        Duration::from_secs(10),
                        acceptor.accept(TokioIo::new(up)),
                    )
                    .await;
                    match tls {
                        Ok(Ok(s)) => inner.serve_boxed(s).await,
                        Ok(Err(err)) => {
                            tracing::info!(error = %err, "agent TLS handshake failed (does it trust the proxy CA?)")
                        }
                        Err(_) => tracing::info!("agent TLS handshake timed out"),
                    }
                };
                // The session's end closes the tunnel at any stage, the handshake included.
                tokio::select! {
                    _ = tunnel => {}
                    _ = revoked => {}
                }
            });
            return super::connected();
        }
        let why = if self
            .p
            .cfg
            .rules
            .iter()
            .any(|r| r.host == host && r.port == port)
        {
            Some("this destination is named by an http rule; send absolute-form requests, not CONNECT".to_string())
        } else if !self.p.cfg.tunnel_unmatched {
            Some(format!(
                "no rule names {host}:{port} and unmatched destinations are refused"
            ))
        } else if !self.p.cfg.tunnel_ports.contains(&port) {
            Some(format!(
                "port {port} is not one unmatched destinations may be tunnelled to ({:?})",
                self.p.cfg.tunnel_ports
            ))
        } else if self.p.cfg.unmatched_zone == Zone::Restricted {
            Some("unmatched destinations are in the restricted zone: refused".to_string())
        } else {
            None
        };
        if let Some(why) = why {
            self.refused(Some(&e), 403, &why, &req).await;
            return answer(403, why);
        }
        let route = self.p.route(self.p.cfg.unmatched_zone);
        let t0 = Instant::now();
        let s = match upstream::open(&host, port, &route, &[], self.p.cfg.connect_timeout).await {
            Ok(s) => s,
            Err(u) => {
                self.refused(Some(&e), u.status, &u.why, &req).await;
                return answer(u.status, u.why);
            }
        };
        let p = self.p.clone();
        let peer = self.peer.clone();
        tokio::spawn(async move {
            let Ok(up) = hyper::upgrade::on(req).await else {
                return;
            };
            let mut client = TokioIo::new(up);
            let mut s = s;
            let (sent, got, how) = tokio::select! {
                r = tokio::io::copy_bidirectional(&mut client, &mut s) => match r {
                    Ok((a, b)) => (a, b, "closed"),
                    Err(_) => (0, 0, "broken"),
                },
                _ = e.on_revoke() => (0, 0, "session revoked"),
            };
            let detail = format!(
                "method=CONNECT host={host} port={port} tunnel={how} bytes_up={sent} bytes_down={got} latency_us={}",
                t0.elapsed().as_micros()
            );
            let l = Line {
                outcome: "ok",
                session: Some(e.session.clone()),
                rule: None,
                secrets: String::new(),
                versions: String::new(),
                detail,
            };
            p.audit(&peer, l).await;
        });
        super::connected()
    }
}

impl Proxy {
    /// How a destination in `zone` is reached.
    pub fn route(&self, zone: Zone) -> Route {
        match (zone, &self.cfg.egress_proxy) {
            (Zone::External, Some((h, p))) => Route::Egress(h.clone(), *p),
            _ => Route::Direct,
        }
    }

    /// Takes a token from the session's and the destination's buckets; else 429.
    pub fn limit(&self, e: &Entry, host: &str) -> Result<(), Box<Response>> {
        let now = Instant::now();
        let wait = match self.per_session.take(&e.session, now) {
            Err(w) => Some((w, "session")),
            Ok(()) => self
                .per_destination
                .take(host, now)
                .err()
                .map(|w| (w, "destination")),
        };
        match wait {
            None => Ok(()),
            Some((w, which)) => {
                let secs = super::limits::retry_after(w);
                let mut r = answer(
                    429,
                    format!("{which} rate limit reached; retry after {secs}s"),
                );
                r.headers_mut()
                    .insert(http::header::RETRY_AFTER, http::HeaderValue::from(secs));
                Err(Box::new(r))
            }
        }
    }
}
