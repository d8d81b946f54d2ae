//! Closed-loop load: C callers over N connections for a fixed duration, latencies in an HDR histogram.

use crate::h2c;
use crate::http::Conn;
pub use crate::target::Target;
use hdrhistogram::Histogram;
use sidecred_proto::v1 as pb;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::transport::{Channel, Endpoint};

pub mod echo {
    tonic::include_proto!("bench.v1");
}

/// Which client each caller drives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientKind {
    /// The lean `h2` client for gRPC, the minimal keep-alive client for HTTP/1.1.
    Lean,
    /// tonic's `Channel` for gRPC.
    Tonic,
    /// What an application would embed: `sidecred-client` for sidecred, hyper's HTTP/1.1
    /// client for the HTTP peers.
    Stock,
}

pub struct Opts {
    /// Stop after this many measured requests (a soak) instead of at the end of `duration`.
    pub requests: Option<u64>,
    pub duration: Duration,
    pub concurrency: usize,
    pub connections: usize,
    pub warmup: Duration,
    /// The clients the callers use.
    pub client: ClientKind,
    /// Load threads, each with its own runtime and share of callers and connections.
    pub threads: usize,
    /// Instead: one work-stealing runtime with `threads` workers, a task per caller.
    pub stealing: bool,
}

pub struct Outcome {
    pub name: &'static str,
    pub layout: String,
    pub requests: u64,
    pub errors: u64,
    pub elapsed: Duration,
    pub hist: Histogram<u64>,
}

impl Outcome {
    pub fn rps(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }
    pub fn q(&self, q: f64) -> f64 {
        self.hist.value_at_quantile(q) as f64
    }
}

async fn uds_channel(path: &std::path::Path) -> Channel {
    Endpoint::from_shared(format!("unix://{}", path.display()))
        .expect("socket uri")
        .initial_stream_window_size(Some(1 << 20))
        .initial_connection_window_size(Some(4 << 20))
        .connect()
        .await
        .unwrap_or_else(|e| panic!("connect {}: {e}", path.display()))
}

/// One caller's request function, built per caller over its assigned connection.
enum Caller {
    Sidecred(
        pb::broker_client::BrokerClient<Channel>,
        pb::GetSecretRequest,
    ),
    Echo(echo::echo_client::EchoClient<Channel>),
    Grpc(h2c::Unary),
    HttpUnix(Conn<tokio::net::UnixStream>),
    HttpTcp(Conn<tokio::net::TcpStream>),
    HttpTls(Box<Conn<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>>),
    Client(std::sync::Arc<sidecred_client::Session>, String),
    Hyper(
        hyper::client::conn::http1::SendRequest<http_body_util::Empty<bytes::Bytes>>,
        http::Request<()>,
    ),
}

impl Caller {
    async fn call(&mut self) -> bool {
        match self {
            Caller::Sidecred(c, req) => c.get_secret(req.clone()).await.is_ok(),
            Caller::Echo(c) => c
                .echo(echo::EchoMessage {
                    payload: b"dev-github-token-0001".to_vec(),
                })
                .await
                .is_ok(),
            Caller::Grpc(c) => c.call().await,
            Caller::HttpUnix(c) => matches!(c.get().await, Ok(200)),
            Caller::HttpTcp(c) => matches!(c.get().await, Ok(200)),
            Caller::HttpTls(c) => matches!(c.get().await, Ok(200)),
            Caller::Client(s, name) => s.get_secret(name).await.is_ok(),
            Caller::Hyper(c, req) => {
                let mut r = http::Request::new(http_body_util::Empty::new());
                *r.uri_mut() = req.uri().clone();
                *r.headers_mut() = req.headers().clone();
                match c.send_request(r).await {
                    Ok(resp) if resp.status() == 200 => {
                        http_body_util::BodyExt::collect(resp.into_body())
                            .await
                            .is_ok()
                    }
                    _ => false,
                }
            }
        }
    }
}

/// A hyper HTTP/1.1 client connection (its driver spawned) with the request it repeats.
async fn hyper_caller(s: tokio::net::TcpStream, path: &str, header: Option<&str>) -> Caller {
    let (tx, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(s))
        .await
        .expect("http/1.1 handshake");
    tokio::spawn(conn);
    let mut b = http::Request::builder()
        .uri(path)
        .header("host", "localhost");
    if let Some((k, v)) = header.and_then(|h| h.split_once(':')) {
        b = b.header(k.trim(), v.trim());
    }
    Caller::Hyper(tx, b.body(()).expect("request"))
}

async fn callers(t: &Target, opts: &Opts) -> Vec<Caller> {
    let mut out = Vec::new();
    match t {
        Target::Sidecred { socket, secret, .. } => {
            if opts.client == ClientKind::Stock {
                let client = sidecred_client::Client::connect_with(
                    socket,
                    sidecred_client::ClientOptions {
                        connections: opts.connections,
                        ..Default::default()
                    },
                )
                .await
                .expect("sidecred-client connects");
                let session = std::sync::Arc::new(client.session().await.expect("open session"));
                for _ in 0..opts.concurrency {
                    out.push(Caller::Client(session.clone(), secret.clone()));
                }
                return out;
            }
            let chans: Vec<Channel> =
                futures::future::join_all((0..opts.connections).map(|_| uds_channel(socket))).await;
            let mut b = pb::broker_client::BrokerClient::new(chans[0].clone());
            let sid = b
                .open_session(pb::OpenSessionRequest {
                    ttl_seconds: 3600,
                    labels: Default::default(),
                })
                .await
                .expect("open session")
                .into_inner()
                .session_id;
            let req = pb::GetSecretRequest {
                name: secret.clone(),
                session_id: sid,
                ..Default::default()
            };
            if opts.client == ClientKind::Tonic {
                for i in 0..opts.concurrency {
                    out.push(Caller::Sidecred(
                        pb::broker_client::BrokerClient::new(chans[i % chans.len()].clone()),
                        req.clone(),
                    ));
                }
            } else {
                let conns = h2_conns(socket, opts.connections).await;
                let body = h2c::frame(&req);
                let check: fn(&[u8]) -> bool = |m| {
                    <pb::GetSecretResponse as prost::Message>::decode(m)
                        .is_ok_and(|r| !r.value.is_empty())
                };
                for i in 0..opts.concurrency {
                    out.push(Caller::Grpc(h2c::Unary::new(
                        conns[i % conns.len()].clone(),
                        "/sidecred.v1.Broker/GetSecret",
                        body.clone(),
                        check,
                    )));
                }
            }
            out
        }
        Target::Echo { socket } => {
            let payload = b"dev-github-token-0001".to_vec();
            if opts.client == ClientKind::Tonic {
                let chans: Vec<Channel> =
                    futures::future::join_all((0..opts.connections).map(|_| uds_channel(socket)))
                        .await;
                for i in 0..opts.concurrency {
                    out.push(Caller::Echo(echo::echo_client::EchoClient::new(
                        chans[i % chans.len()].clone(),
                    )));
                }
            } else {
                let conns = h2_conns(socket, opts.connections).await;
                let body = h2c::frame(&echo::EchoMessage { payload });
                let check: fn(&[u8]) -> bool = |m| {
                    <echo::EchoMessage as prost::Message>::decode(m)
                        .is_ok_and(|r| !r.payload.is_empty())
                };
                for i in 0..opts.concurrency {
                    out.push(Caller::Grpc(h2c::Unary::new(
                        conns[i % conns.len()].clone(),
                        "/bench.v1.Echo/Echo",
                        body.clone(),
                        check,
                    )));
                }
            }
            out
        }
        Target::HttpUnix {
            socket,
            path,
            header,
            ..
        } => {
            for _ in 0..opts.concurrency {
                let s = tokio::net::UnixStream::connect(socket)
                    .await
                    .expect("connect");
                out.push(Caller::HttpUnix(Conn::new(s, path, header.as_deref())));
            }
            out
        }
        Target::HttpTcp {
            addr, path, header, ..
        } => {
            for _ in 0..opts.concurrency {
                let s = tokio::net::TcpStream::connect(addr).await.expect("connect");
                s.set_nodelay(true).ok();
                out.push(if opts.client == ClientKind::Stock {
                    hyper_caller(s, path, header.as_deref()).await
                } else {
                    Caller::HttpTcp(Conn::new(s, path, header.as_deref()))
                });
            }
            out
        }
        Target::Tls(t) => {
            let cfg = t.client_config();
            for _ in 0..opts.concurrency {
                out.push(Caller::HttpTls(Box::new(t.connect(cfg.clone()).await)));
            }
            out
        }
    }
}

async fn h2_conns(
    socket: &std::path::Path,
    n: usize,
) -> Vec<h2::client::SendRequest<bytes::Bytes>> {
    futures::future::join_all((0..n).map(|_| h2c::connect(socket))).await
}

fn grpc_layout(opts: &Opts) -> String {
    format!(
        "{} callers / {} HTTP/2 conns ({})",
        opts.concurrency,
        opts.connections,
        match opts.client {
            ClientKind::Lean => "h2",
            ClientKind::Tonic => "tonic",
            ClientKind::Stock => "sidecred-client",
        }
    )
}

/// Runs one target on `opts.threads` load threads, each with its own single-threaded runtime
/// and its share of the callers and connections (no task ever moves between threads, as in
/// wrk or h2load), so the generator adds no scheduling hops of its own. With `stealing`, one
/// multi-threaded tokio runtime runs every caller as its own task instead.
fn run_one(t: &Target, opts: &Opts) -> Outcome {
    let threads = if opts.stealing {
        1
    } else {
        opts.threads
            .clamp(1, opts.concurrency.min(opts.connections).max(1))
    };
    let share = |n: usize, k: usize| n / threads + usize::from(k < n % threads);
    let ready = std::sync::Barrier::new(threads);
    let begin = std::sync::OnceLock::new();
    let budget = Arc::new(AtomicU64::new(opts.requests.unwrap_or(u64::MAX)));
    let parts: Vec<(Histogram<u64>, u64, u64)> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..threads)
            .map(|k| {
                let (ready, begin, budget) = (&ready, &begin, &budget);
                let sub = Opts {
                    concurrency: share(opts.concurrency, k),
                    connections: share(opts.connections, k),
                    threads: 1,
                    ..*opts
                };
                sc.spawn(move || {
                    let rt = if opts.stealing {
                        tokio::runtime::Builder::new_multi_thread()
                            .worker_threads(opts.threads.max(1))
                            .enable_all()
                            .build()
                    } else {
                        tokio::runtime::Builder::new_current_thread()
                            .enable_all()
                            .build()
                    }
                    .expect("runtime");
                    rt.block_on(async {
                        let cs = callers(t, &sub).await;
                        if ready.wait().is_leader() {
                            let _ = begin.set(Instant::now() + sub.warmup);
                        }
                        ready.wait();
                        let start = *begin.get().expect("start time");
                        let end = start + sub.duration;
                        let (h, n, e) = drive(cs, start, end, budget.clone(), opts.stealing).await;
                        (h, n, e)
                    })
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().expect("load thread"))
            .collect()
    });
    let start = *begin.get().expect("start time");
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
    let (mut requests, mut errors) = (0, 0);
    for (h, n, e) in &parts {
        hist.add(h).expect("merge");
        requests += n;
        errors += e;
    }
    // A soak ends when its request budget is spent, usually well before `duration`.
    let elapsed = Instant::now()
        .saturating_duration_since(start)
        .min(opts.duration);
    let layout = match t {
        Target::Sidecred { .. } | Target::Echo { .. } => grpc_layout(opts),
        Target::Tls(_) => format!("{} keep-alive HTTP/1.1 TLS conns", opts.concurrency),
        _ => format!("{} keep-alive HTTP/1.1 conns", opts.concurrency),
    };
    Outcome {
        name: t.name(),
        layout: if opts.stealing {
            format!("{layout}, 1 rt/{} thr", opts.threads)
        } else {
            format!("{layout}, {threads} thr")
        },
        requests,
        errors,
        elapsed,
        hist,
    }
}

/// One caller's closed loop until `end` or the shared request budget runs out.
async fn drive_one(
    mut c: Caller,
    start: Instant,
    end: Instant,
    budget: Arc<AtomicU64>,
) -> (Histogram<u64>, u64, u64) {
    let relaxed = std::sync::atomic::Ordering::Relaxed;
    let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
    let (mut n, mut errors) = (0u64, 0u64);
    loop {
        let t0 = Instant::now();
        if t0 >= end {
            break;
        }
        if t0 >= start
            && budget
                .fetch_update(relaxed, relaxed, |b| b.checked_sub(1))
                .is_err()
        {
            break;
        }
        let ok = c.call().await;
        if t0 >= start {
            let _ = h.record(t0.elapsed().as_micros().max(1) as u64);
            n += 1;
            if !ok {
                errors += 1;
            }
        }
    }
    (h, n, errors)
}

/// One thread's callers, closed loop, until `end` or the shared request budget runs out.
async fn drive(
    cs: Vec<Caller>,
    start: Instant,
    end: Instant,
    budget: Arc<AtomicU64>,
    spawn: bool,
) -> (Histogram<u64>, u64, u64) {
    let all = if spawn {
        let tasks: Vec<_> = cs
            .into_iter()
            .map(|c| tokio::spawn(drive_one(c, start, end, budget.clone())))
            .collect();
        futures::future::join_all(tasks)
            .await
            .into_iter()
            .map(|r| r.expect("caller task"))
            .collect::<Vec<_>>()
    } else {
        futures::future::join_all(
            cs.into_iter()
                .map(|c| drive_one(c, start, end, budget.clone())),
        )
        .await
    };
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
    let (mut requests, mut errors) = (0, 0);
    for (h, n, e) in all {
        hist.add(h).expect("merge");
        requests += n;
        errors += e;
    }
    (hist, requests, errors)
}

pub async fn run_all(opts: &Opts, targets: &[Target]) -> Vec<Outcome> {
    let mut out = Vec::new();
    for t in targets {
        eprintln!(
            "running {} for {:?} at C={} ...",
            t.name(),
            opts.duration,
            opts.concurrency
        );
        out.push(run_one(t, opts));
    }
    out
}

pub fn print_table(opts: &Opts, rs: &[Outcome]) {
    println!(
        "\nC={} duration={:?} (latency in microseconds; ratios are sidecred / peer)",
        opts.concurrency, opts.duration
    );
    println!(
        "{:<32} {:<50} {:>10} {:>8} {:>8} {:>8} {:>8} {:>7} {:>9} {:>9}",
        "target", "layout", "rps", "p50", "p99", "p999", "max", "errors", "rps ×", "p99 ×"
    );
    let base = &rs[0];
    for r in rs {
        println!(
            "{:<32} {:<50} {:>10.0} {:>8.0} {:>8.0} {:>8.0} {:>8.0} {:>7} {:>9.2} {:>9.2}",
            r.name,
            r.layout,
            r.rps(),
            r.q(0.5),
            r.q(0.99),
            r.q(0.999),
            r.hist.max() as f64,
            r.errors,
            base.rps() / r.rps(),
            base.q(0.99) / r.q(0.99),
        );
    }
}

#[derive(Default)]
struct EchoSvc;

#[tonic::async_trait]
impl echo::echo_server::Echo for EchoSvc {
    async fn echo(
        &self,
        r: tonic::Request<echo::EchoMessage>,
    ) -> Result<tonic::Response<echo::EchoMessage>, tonic::Status> {
        Ok(tonic::Response::new(r.into_inner()))
    }
}

/// Serves the bare echo on a Unix socket until killed.
pub async fn serve_echo(path: &str) {
    let _ = std::fs::remove_file(path);
    let l = tokio::net::UnixListener::bind(path).expect("bind echo socket");
    tonic::transport::Server::builder()
        .add_service(echo::echo_server::EchoServer::new(EchoSvc))
        .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(l))
        .await
        .expect("echo server");
}
