//! Reaching an origin: directly (`internal`), or through the corporate egress proxy with a
//! chained CONNECT (`external`); then TLS with verification when the destination is https, and
//! an HTTP/1.1 client connection on top.

use hyper::body::Incoming;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A failure to reach the origin, as the status the agent gets and a message naming no value.
#[derive(Debug)]
pub struct UpError {
    pub status: u16,
    pub why: String,
}

fn up(status: u16, why: impl Into<String>) -> UpError {
    UpError {
        status,
        why: why.into(),
    }
}

/// How to reach a destination.
#[derive(Clone, Debug)]
pub enum Route {
    Direct,
    Egress(String, u16),
}

/// Opens a byte stream to `host:port` along `route`. With `allowed` addresses, a direct
/// route refuses a host that resolves anywhere else.
pub async fn open(
    host: &str,
    port: u16,
    route: &Route,
    allowed: &[IpAddr],
    limit: Duration,
) -> Result<TcpStream, UpError> {
    let work = async {
        match route {
            Route::Direct => {
                let addrs: Vec<_> = tokio::net::lookup_host((host, port))
                    .await
                    .map_err(|e| up(502, format!("cannot resolve {host}: {e}")))?
                    .collect();
                if addrs.is_empty() {
                    return Err(up(502, format!("{host} resolves to no address")));
                }
                if !allowed.is_empty() {
                    if let Some(a) = addrs.iter().find(|a| !allowed.contains(&a.ip())) {
                        return Err(up(
                            403,
                            format!(
                                "{host} resolves to {}, which the rule does not allow (expected {allowed:?})",
                                a.ip()
                            ),
                        ));
                    }
                }
                let mut last = None;
                for a in addrs {
                    match TcpStream::connect(a).await {
                        Ok(s) => return Ok(s),
                        Err(e) => last = Some(e),
                    }
                }
                Err(up(
                    502,
                    format!(
                        "cannot connect to {host}:{port}: {}",
                        last.map(|e| e.to_string()).unwrap_or_default()
                    ),
                ))
            }
            Route::Egress(ph, pp) => {
                let mut s = TcpStream::connect((ph.as_str(), *pp)).await.map_err(|e| {
                    up(502, format!("cannot reach the egress proxy {ph}:{pp}: {e}"))
                })?;
                let req = format!("CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n");
                s.write_all(req.as_bytes())
                    .await
                    .map_err(|e| up(502, format!("egress proxy {ph}:{pp}: {e}")))?;
                let head = read_head(&mut s)
                    .await
                    .map_err(|e| up(502, format!("egress proxy {ph}:{pp}: {e}")))?;
                let status = head.split(' ').nth(1).unwrap_or("");
                if status != "200" {
                    let line = head.lines().next().unwrap_or("").escape_debug().to_string();
                    return Err(up(
                        502,
                        format!("the egress proxy refused CONNECT {host}:{port}: {line}"),
                    ));
                }
                let _ = s.set_nodelay(true);
                Ok(s)
            }
        }
    };
    let s = tokio::time::timeout(limit, work).await.map_err(|_| {
        up(
            504,
            format!("no connection to {host}:{port} within {limit:?}"),
        )
    })??;
    let _ = s.set_nodelay(true);
    Ok(s)
}

/// Reads an HTTP response head (up to 8 KiB) byte by byte, so nothing after it is consumed.
async fn read_head(s: &mut TcpStream) -> std::io::Result<String> {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 8192 || s.read(&mut b).await? == 0 {
            return Err(std::io::Error::other("no complete response to CONNECT"));
        }
        head.push(b[0]);
    }
    Ok(String::from_utf8_lossy(&head).into_owned())
}

/// TLS to the origin, verified against the config's roots, with SNI `host`; true when the
/// origin chose HTTP/2 (ALPN).
pub async fn tls(
    s: TcpStream,
    host: &str,
    cfg: Arc<rustls::ClientConfig>,
    limit: Duration,
) -> Result<(Box<dyn Io>, bool), UpError> {
    let name = rustls::pki_types::ServerName::try_from(host.to_string())
        .map_err(|_| up(400, format!("`{host}` is not a TLS server name")))?;
    let c = tokio_rustls::TlsConnector::from(cfg);
    let t = tokio::time::timeout(limit, c.connect(name, s))
        .await
        .map_err(|_| up(504, format!("TLS handshake with {host} timed out")))?
        .map_err(|e| up(502, format!("TLS to {host} failed: {e}")))?;
    let h2 = t.get_ref().1.alpn_protocol() == Some(b"h2");
    Ok((Box::new(t), h2))
}

/// A client connection to the origin: HTTP/1.1, or HTTP/2 where the origin speaks it.
pub enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Incoming>),
    H2(hyper::client::conn::http2::SendRequest<Incoming>),
}

impl Sender {
    pub fn is_closed(&self) -> bool {
        match self {
            Sender::H1(s) => s.is_closed(),
            Sender::H2(s) => s.is_closed(),
        }
    }

    pub fn is_h2(&self) -> bool {
        matches!(self, Sender::H2(_))
    }

    /// Waits until the connection can take a request (HTTP/1.1: the previous one is done).
    pub async fn ready(&mut self) -> Result<(), hyper::Error> {
        match self {
            Sender::H1(s) => s.ready().await,
            Sender::H2(s) => s.ready().await,
        }
    }

    pub async fn send(
        &mut self,
        req: http::Request<Incoming>,
    ) -> Result<http::Response<Incoming>, hyper::Error> {
        match self {
            Sender::H1(s) => s.send_request(req).await,
            Sender::H2(s) => s.send_request(req).await,
        }
    }
}

/// A client connection over `io`; its driver runs in a task of its own.
pub async fn handshake(io: Box<dyn Io>, h2: bool) -> Result<Sender, UpError> {
    let io = hyper_util::rt::TokioIo::new(io);
    if h2 {
        let (send, conn) =
            hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
                .await
                .map_err(|e| up(502, format!("HTTP/2 handshake with the origin failed: {e}")))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream HTTP/2 connection ended");
            }
        });
        return Ok(Sender::H2(send));
    }
    let (send, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| up(502, format!("HTTP handshake with the origin failed: {e}")))?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "upstream connection ended");
        }
    });
    Ok(Sender::H1(send))
}
