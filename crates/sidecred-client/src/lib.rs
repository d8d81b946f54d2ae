//! Client library for the orchestrator and tool router: sessions that close themselves,
//! call-scoped leases released when the call ends, watch streams, per-call deadlines,
//! bounded retries on UNAVAILABLE only, and values held in zeroizing, redacting types.
//! It depends on tonic, prost and the hyper that tonic already uses: a router embedding it
//! compiles none of the server's backends.
//!
//! ```no_run
//! # async fn demo() -> Result<(), sidecred_client::ClientError> {
//! use sidecred_client::Client;
//! let client = Client::from_env().await?; // SIDECRED_SOCKET
//! let session = client.session().await?;
//! {
//!     let call = session.call("call-42");
//!     let token = call.get_secret("tools/github-token").await?;
//!     let _bytes: &[u8] = token.value.expose();
//!     call.release().await?; // or drop it: the release then runs in the background
//! }
//! session.close().await?;
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]

mod conn;
mod error;
mod retry;
mod session;

pub use error::ClientError;
pub use retry::RetryPolicy;
pub use session::{Call, EventKind, PreviousVersion, Secret, SecretEvent, Session, Watch};

use conn::Conn;
use sidecred_proto::v1::{self as pb, broker_client::BrokerClient};
use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tonic::codegen::http::Uri;
use tonic::{Request, Response, Status};

/// The environment variable naming the workload socket.
pub const SOCKET_ENV: &str = "SIDECRED_SOCKET";

/// Deadlines and retries for every call a [`Client`] makes.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Deadline of one attempt of one unary call (also sent to the server as grpc-timeout).
    pub timeout: Duration,
    /// Deadline for establishing the socket connection.
    pub connect_timeout: Duration,
    pub retry: RetryPolicy,
    /// HTTP/2 connections calls are spread over, round robin. A call goes straight to its
    /// connection's task (no buffer task in between, see `conn.rs`), but one connection is
    /// still one task on each side: under a multi-threaded runtime many concurrent callers
    /// queue behind it, so the default is one per CPU (at most 4).
    pub connections: usize,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(2),
            retry: RetryPolicy::default(),
            connections: std::thread::available_parallelism()
                .map(|n| n.get().min(4))
                .unwrap_or(1),
        }
    }
}

/// What to ask for when opening a session.
#[derive(Debug, Clone, Default)]
pub struct SessionOptions {
    /// None means the server's default ttl.
    pub ttl: Option<Duration>,
    /// Recorded in audit lines, e.g. `agent_id`.
    pub labels: HashMap<String, String>,
}

/// Connections to sidecred's workload socket. Cheap to clone; clones share the connections.
#[derive(Clone)]
pub struct Client {
    brokers: Arc<[BrokerClient<Conn>]>,
    next: Arc<AtomicUsize>,
    opts: ClientOptions,
    socket: PathBuf,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("socket", &self.socket)
            .field("opts", &self.opts)
            .finish()
    }
}

impl Client {
    /// Connects to the socket named by `SIDECRED_SOCKET`.
    pub async fn from_env() -> Result<Self, ClientError> {
        let path = std::env::var_os(SOCKET_ENV)
            .filter(|p| !p.is_empty())
            .ok_or_else(|| ClientError::Config(format!("{SOCKET_ENV} is not set")))?;
        Self::connect(PathBuf::from(path)).await
    }

    pub async fn connect(socket: impl AsRef<Path>) -> Result<Self, ClientError> {
        Self::connect_with(socket, ClientOptions::default()).await
    }

    /// Connects now (retrying while the socket is unavailable), so a wrong path fails here.
    pub async fn connect_with(
        socket: impl AsRef<Path>,
        opts: ClientOptions,
    ) -> Result<Self, ClientError> {
        let socket = socket.as_ref().to_path_buf();
        if !socket.is_absolute() {
            return Err(ClientError::Config(format!(
                "socket path `{}` must be absolute",
                socket.display()
            )));
        }
        let mut brokers = Vec::with_capacity(opts.connections.max(1));
        for _ in 0..opts.connections.max(1) {
            let conn = with_retry(&opts.retry, || async {
                Conn::connect(socket.clone(), opts.connect_timeout)
                    .await
                    .map_err(|e| {
                        ClientError::Unavailable(format!(
                            "cannot connect to {}: {e}",
                            socket.display()
                        ))
                    })
            })
            .await?;
            brokers.push(BrokerClient::with_origin(
                conn,
                Uri::from_static("http://localhost"),
            ));
        }
        Ok(Self {
            brokers: brokers.into(),
            next: Arc::new(AtomicUsize::new(0)),
            opts,
            socket,
        })
    }

    /// The next connection, round robin.
    fn broker(&self) -> BrokerClient<Conn> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.brokers.len();
        self.brokers[i].clone()
    }

    /// How many connections this client spreads its calls over.
    pub fn connections(&self) -> usize {
        self.brokers.len()
    }

    pub fn options(&self) -> &ClientOptions {
        &self.opts
    }

    /// Opens a session with the server's default ttl.
    pub async fn session(&self) -> Result<Session, ClientError> {
        self.open_session(SessionOptions::default()).await
    }

    pub async fn open_session(&self, o: SessionOptions) -> Result<Session, ClientError> {
        let msg = pb::OpenSessionRequest {
            ttl_seconds: o.ttl.map(|d| d.as_secs().max(1)).unwrap_or(0),
            labels: o.labels,
        };
        let r = self
            .unary(|mut b, req| async move { b.open_session(req).await }, &msg)
            .await?;
        Ok(Session::new(self.clone(), r.session_id, r.expires_at))
    }

    /// One unary RPC: a deadline per attempt, retried only while UNAVAILABLE.
    pub(crate) async fn unary<M, T, F, Fut>(&self, f: F, msg: &M) -> Result<T, ClientError>
    where
        M: Clone,
        F: Fn(BrokerClient<Conn>, Request<M>) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        with_retry(&self.opts.retry, || async {
            let mut req = Request::new(msg.clone());
            req.set_timeout(self.opts.timeout);
            match tokio::time::timeout(self.opts.timeout, f(self.broker(), req)).await {
                Ok(Ok(r)) => Ok(r.into_inner()),
                // The server enforces the grpc-timeout we sent as CANCELLED.
                Ok(Err(s)) if s.code() == tonic::Code::Cancelled => {
                    Err(ClientError::DeadlineExceeded(format!(
                        "no answer within {:?}",
                        self.opts.timeout
                    )))
                }
                Ok(Err(s)) => Err(ClientError::from_status(&s)),
                Err(_) => Err(ClientError::DeadlineExceeded(format!(
                    "no answer within {:?}",
                    self.opts.timeout
                ))),
            }
        })
        .await
    }

    /// Opens a watch stream: the deadline covers the opening only, never the stream's life.
    pub(crate) async fn unary_stream(
        &self,
        msg: pb::WatchSecretRequest,
    ) -> Result<tonic::Streaming<pb::SecretEvent>, ClientError> {
        with_retry(&self.opts.retry, || async {
            let mut broker = self.broker();
            let call = broker.watch_secret(msg.clone());
            match tokio::time::timeout(self.opts.timeout, call).await {
                Ok(Ok(r)) => Ok(r.into_inner()),
                Ok(Err(s)) => Err(ClientError::from_status(&s)),
                Err(_) => Err(ClientError::DeadlineExceeded(format!(
                    "watch not opened within {:?}",
                    self.opts.timeout
                ))),
            }
        })
        .await
    }
}

/// Runs `attempt` until it succeeds, fails with a non-transient error, or the policy gives up.
async fn with_retry<T, F, Fut>(policy: &RetryPolicy, mut attempt: F) -> Result<T, ClientError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, ClientError>>,
{
    let mut failed = 0u32;
    loop {
        match attempt().await {
            Ok(v) => return Ok(v),
            Err(e) if e.is_transient() => {
                failed += 1;
                match policy.backoff(failed, rand::random::<f64>()) {
                    Some(d) => {
                        tracing::debug!(attempt = failed, delay = ?d, error = %e, "retrying");
                        tokio::time::sleep(d).await;
                    }
                    None => return Err(e.after_attempts(failed)),
                }
            }
            Err(e) => return Err(e),
        }
    }
}
