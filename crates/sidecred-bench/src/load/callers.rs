//! The callers a run drives: one request function per caller, over the connections the
//! target and the client kind call for.

use super::{echo, ClientKind, Opts, Target};
use crate::h2c;
use crate::http::Conn;
use sidecred_proto::v1 as pb;
use tonic::transport::{Channel, Endpoint};

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
pub(super) enum Caller {
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
    pub(super) async fn call(&mut self) -> bool {
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

pub(super) async fn callers(t: &Target, opts: &Opts) -> Vec<Caller> {
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
