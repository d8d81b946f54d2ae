//! The credential-injection forward proxy (`[proxy]`): agents send their tool traffic through it
//! with `HTTP_PROXY`/`HTTPS_PROXY`, and the credential goes on the wire here, so the agent never
//! holds it.
//!
//! - Loopback TCP; each connection's caller is identified at accept (api/tcp_peer.rs) and
//!   admitted by the same gate as the other sockets.
//! - A session is opened through the proxy itself (`POST /sidecred/v1/session`, origin-form, by
//!   the session's owner); the answer carries its proxy token (see `tokens`). Every proxied
//!   request carries the token in `Proxy-Authorization`, which is never forwarded.
//! - Values come only from the Broker's handlers (`get_secret` with a call id per request,
//!   `release_lease` when the response ends), so policy, leases, rotation grace, revocation and
//!   audit are the gRPC ones.
//! - `CONNECT` to an https destination a rule names is terminated here with a leaf from the
//!   proxy's CA (`tls`) and originated again with verification; other destinations are tunnelled
//!   or refused by config.
//! - Values echoed by an origin are scrubbed from responses (`redact`); one audit line per
//!   request; revocation closes the session's connections at once.

pub mod config;
mod conn;
mod forward;
pub mod inject;
pub mod limits;
pub mod redact;
pub mod tls;
pub mod tokens;
pub mod upstream;

use crate::api::admission::{Gate, Socket};
use crate::api::broker::BrokerService;
use crate::api::limits::Limits;
use crate::api::pb;
use crate::api::peer::PeerIdentity;
use crate::engine::Engine;
use crate::engine::RequestLine;
use bytes::Bytes;
use config::ProxyConfig;
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};
use tokio::sync::watch;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type Body = BoxBody<Bytes, BoxError>;
pub type Response = http::Response<Body>;

/// The running proxy's shared state.
pub struct Proxy {
    engine: Arc<Engine>,
    broker: BrokerService,
    cfg: ProxyConfig,
    tokens: tokens::Tokens,
    mitm: tls::Mitm,
    roots: Arc<rustls::RootCertStore>,
    plain_tls: Arc<rustls::ClientConfig>,
    gate: Arc<Gate>,
    per_session: limits::Buckets,
    per_destination: limits::Buckets,
    stop: watch::Receiver<bool>,
    seq: AtomicU64,
}

/// A plain-text answer from the proxy itself (refusals, errors, control endpoints).
pub fn answer(status: u16, body: impl Into<String>) -> Response {
    let mut body: String = body.into();
    if !body.ends_with('\n') {
        body.push('\n');
    }
    let mut r = http::Response::new(
        Full::new(Bytes::from(body))
            .map_err(|never| match never {})
            .boxed(),
    );
    *r.status_mut() = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::BAD_GATEWAY);
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r.headers_mut().insert(
        "x-sidecred-proxy",
        http::HeaderValue::from_static("refused-or-answered-by-proxy"),
    );
    r
}

/// The answer to a CONNECT that is going through: 200, no body.
pub fn connected() -> Response {
    http::Response::new(
        http_body_util::Empty::new()
            .map_err(|never| match never {})
            .boxed(),
    )
}

/// One audit line: what the proxy did with one request (never a value or a query).
pub struct Line {
    pub outcome: &'static str,
    pub session: Option<Arc<str>>,
    pub rule: Option<String>,
    pub secrets: String,
    pub versions: String,
    pub detail: String,
}

impl Proxy {
    pub fn new(
        engine: Arc<Engine>,
        stop: watch::Receiver<bool>,
    ) -> Result<Option<Arc<Proxy>>, String> {
        let Some(cfg) = engine
            .catalog()
            .config
            .section::<config::ProxyConfig>()
            .cloned()
        else {
            return Ok(None);
        };
        let mitm = tls::Mitm::new(
            cfg.ca_files
                .as_ref()
                .map(|(c, k)| (c.as_path(), k.as_path())),
        )?;
        if let Some(p) = &cfg.ca_bundle_file {
            std::fs::write(p, mitm.bundle_pem())
                .map_err(|e| format!("proxy.ca_bundle_file {}: {e}", p.display()))?;
        }
        let roots = tls::roots(cfg.upstream_ca_file.as_deref())?;
        let plain_tls = tls::client_config(roots.clone(), None)?;
        let limits = Limits::from_config(&engine.catalog().config.server);
        let gate = Gate::new(Socket::Http("proxy"), engine.clone(), limits);
        Ok(Some(Arc::new(Proxy {
            broker: BrokerService {
                engine: engine.clone(),
            },
            engine,
            per_session: limits::Buckets::new(cfg.session_rate),
            per_destination: limits::Buckets::new(cfg.destination_rate),
            cfg,
            tokens: tokens::Tokens::default(),
            mitm,
            roots,
            plain_tls,
            gate,
            stop,
            seq: AtomicU64::new(0),
        })))
    }

    /// The CA bundle agents trust, PEM.
    pub fn bundle_pem(&self) -> String {
        self.mitm.bundle_pem()
    }

    pub async fn audit(&self, caller: &PeerIdentity, l: Line) {
        let line = RequestLine {
            event: "proxy_request",
            outcome: l.outcome,
            session: l.session.as_deref(),
            secret: (!l.secrets.is_empty()).then_some(l.secrets.as_str()),
            version: (!l.versions.is_empty()).then_some(l.versions.as_str()),
            lease: None,
            rule: l.rule.as_deref(),
            detail: &l.detail,
        };
        self.engine.record_request(caller, line).await;
        tracing::info!(caller = %caller, outcome = l.outcome, rule = l.rule.as_deref().unwrap_or("-"), detail = %l.detail, "proxied");
    }

    /// `POST /sidecred/v1/session` (origin-form, to the proxy itself): opens a session owned by
    /// the caller and answers its id and proxy token. `GET /sidecred/v1/ca.pem`: the bundle.
    async fn control(
        &self,
        caller: &PeerIdentity,
        req: http::Request<hyper::body::Incoming>,
    ) -> Response {
        match (req.method().as_str(), req.uri().path()) {
            ("GET", "/sidecred/v1/ca.pem") => {
                let mut r = answer(200, self.bundle_pem());
                r.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("application/x-pem-file"),
                );
                r
            }
            ("POST", "/sidecred/v1/session") => {
                let body = match tokio::time::timeout(
                    Duration::from_secs(5),
                    http_body_util::Limited::new(req.into_body(), 16 * 1024).collect(),
                )
                .await
                {
                    Ok(Ok(b)) => b.to_bytes(),
                    _ => return answer(400, "request body missing, too large or too slow"),
                };
                #[derive(serde::Deserialize, Default)]
                #[serde(deny_unknown_fields)]
                struct Ask {
                    #[serde(default)]
                    ttl_seconds: u64,
                    #[serde(default)]
                    labels: std::collections::HashMap<String, String>,
                }
                let ask: Ask = if body.is_empty() {
                    Ask::default()
                } else {
                    match serde_json::from_slice(&body) {
                        Ok(a) => a,
                        Err(e) => return answer(400, format!("body: {e}")),
                    }
                };
                let mut labels = ask.labels;
                labels.insert("api".into(), "proxy".into());
                let ttl = if ask.ttl_seconds > 0 {
                    ask.ttl_seconds
                } else {
                    self.cfg.session_ttl.map(|t| t.as_secs().max(1)).unwrap_or(0)
                };
                let r = self
                    .broker
                    .open_session(caller, pb::OpenSessionRequest { ttl_seconds: ttl, labels })
                    .await;
                match r {
                    Ok(s) => {
                        let exp = UNIX_EPOCH + Duration::from_secs(s.expires_at.max(0) as u64);
                        let token = self.tokens.insert(&s.session_id, caller.uid, exp);
                        let url = format!("http://sidecred:{token}@{}", self.cfg.listen);
                        let body = serde_json::json!({
                            "session_id": s.session_id,
                            "expires_at": s.expires_at,
                            "proxy_token": token,
                            "proxy_url": url,
                        });
                        let mut r = answer(200, body.to_string());
                        r.headers_mut().insert(
                            http::header::CONTENT_TYPE,
                            http::HeaderValue::from_static("application/json"),
                        );
                        r
                    }
                    Err(e) => answer(status_of(&e), e.to_string()),
                }
            }
            _ => answer(
                400,
                "not a proxy request: send absolute-form requests (http://host/path) or CONNECT; \
                 the proxy's own endpoints are POST /sidecred/v1/session and GET /sidecred/v1/ca.pem",
            ),
        }
    }
}

/// The HTTP status an engine refusal becomes on the proxy.
pub fn status_of(e: &crate::api::ApiError) -> u16 {
    use crate::api::ApiError as E;
    match e {
        E::InvalidArgument(_) => 400,
        E::Denied(_) | E::SessionRevoked(_) | E::SessionExpired(_) | E::Precondition(_) => 403,
        E::NotFound(_) => 502,
        E::Exhausted(_) => 429,
        E::DeadlineExceeded(_) => 504,
        E::Unavailable(_) => 503,
        _ => 502,
    }
}

/// What `spawn` started.
pub struct Running {
    pub tasks: Vec<tokio::task::JoinHandle<()>>,
    /// The CA bundle agents trust (PEM), also served on the admin socket.
    pub bundle_pem: String,
    /// Removes the Unix socket when dropped.
    pub guard: Option<crate::api::sockdir::SocketGuard>,
}

/// Binds and serves the proxy when `[proxy]` is set, and follows revocations.
pub async fn spawn(
    engine: Arc<Engine>,
    stop: watch::Receiver<bool>,
) -> Result<Option<Running>, String> {
    let Some(proxy) = Proxy::new(engine.clone(), stop.clone())? else {
        return Ok(None);
    };
    // The Unix socket is bound first: once the TCP port answers, both are ready.
    let unix = match &proxy.cfg.socket {
        Some((path, mode)) => {
            let (u, guard) = crate::api::server::bind(path, *mode)
                .map_err(|e| format!("proxy.socket {}: {e}", path.display()))?;
            tracing::info!(socket = %path.display(), "credential-injection proxy on a Unix socket");
            Some((u, guard))
        }
        None => None,
    };
    let addr = proxy.cfg.listen;
    let l = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("proxy.listen {addr}: {e}"))?;
    tracing::info!(%addr, rules = proxy.cfg.rules.len(), "credential-injection proxy listening on loopback TCP");
    let mut feed = engine.subscribe_revocations();
    let p = proxy.clone();
    let mut stop2 = stop.clone();
    let revocations = tokio::spawn(async move {
        loop {
            tokio::select! {
                r = feed.recv() => match r {
                    Ok(id) => p.tokens.revoke(&id, "revoked by an administrator"),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "revocation feed lagged; closing every proxy session");
                        p.tokens.revoke_all("revocations were missed; open a new session");
                    }
                    Err(_) => return,
                },
                _ = async { let _ = stop2.wait_for(|s| *s).await; } => return,
            }
        }
    });
    let mut running = Running {
        tasks: vec![revocations],
        bundle_pem: proxy.bundle_pem(),
        guard: None,
    };
    if let Some((u, guard)) = unix {
        running.guard = Some(guard);
        running
            .tasks
            .push(tokio::spawn(conn::accept_unix(proxy.clone(), u)));
    }
    running.tasks.push(tokio::spawn(conn::accept(proxy, l)));
    Ok(Some(running))
}
