//! HTTP/1.1 keep-alive over TLS, straight to an origin or through a proxy's `CONNECT` tunnel
//! (where sidecred terminates the TLS with its own leaf and originates it again upstream).
//! rustls with aws-lc-rs, the stack sidecred itself uses. Connections are opened and their
//! handshakes finished while the callers are built, before the timed window.

use crate::http::Conn;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use std::path::PathBuf;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// `tls-tcp=LABEL,HOST:PORT,SNI,CA_FILE,PATH[,H:V]`: TLS to HOST:PORT, `H:V` on every request.
/// `connect-tls=LABEL,PROXY:PORT,DEST:PORT,CA_FILE,PATH[,H:V]`: `CONNECT DEST:PORT` to the
/// proxy with `H:V` (its Proxy-Authorization) once per connection, then TLS with SNI = DEST.
#[derive(Clone, Debug)]
pub struct TlsTarget {
    pub label: &'static str,
    /// Where the TCP connection goes: the origin, or the proxy.
    addr: String,
    /// The server name verified (and sent as SNI).
    sni: String,
    /// Through a proxy: the `CONNECT` authority and the header sent with it.
    connect: Option<(String, Option<String>)>,
    /// Sent on every request (direct only).
    header: Option<String>,
    /// The trust anchors (PEM): the origin's CA, or the proxy's bundle.
    ca: PathBuf,
    path: String,
}

impl TlsTarget {
    pub fn parse(kind: &str, rest: &str) -> Result<TlsTarget, String> {
        let usage = || {
            format!(
                "target `{kind}={rest}`: expected LABEL,HOST:PORT,{},CA_FILE,PATH[,H:V]",
                if kind == "tls-tcp" {
                    "SNI"
                } else {
                    "DEST:PORT"
                }
            )
        };
        let f: Vec<&str> = rest.splitn(6, ',').collect();
        if f.len() < 5 || f[..5].iter().any(|s| s.is_empty()) {
            return Err(usage());
        }
        let extra = f.get(5).map(|s| s.to_string());
        let (sni, connect, header) = if kind == "connect-tls" {
            let (host, _) = f[2].rsplit_once(':').ok_or_else(usage)?;
            (host.to_string(), Some((f[2].to_string(), extra)), None)
        } else {
            (f[2].to_string(), None, extra)
        };
        ServerName::try_from(sni.clone()).map_err(|e| format!("{}: {e}", usage()))?;
        Ok(TlsTarget {
            // Leaked once per target: a command-line tool.
            label: Box::leak(f[0].to_string().into_boxed_str()),
            addr: f[1].to_string(),
            sni,
            connect,
            header,
            ca: f[3].into(),
            path: f[4].to_string(),
        })
    }

    /// One client config for all of a thread's connections: the given roots, HTTP/1.1 only.
    pub fn client_config(&self) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        let certs = CertificateDer::pem_file_iter(&self.ca)
            .and_then(|i| i.collect::<Result<Vec<_>, _>>())
            .unwrap_or_else(|e| panic!("CA file {}: {e}", self.ca.display()));
        let (ok, _) = roots.add_parsable_certificates(certs);
        assert!(ok > 0, "CA file {}: no certificate", self.ca.display());
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(cfg)
    }

    /// A connected, handshaken keep-alive connection repeating `GET PATH`.
    pub async fn connect(&self, cfg: Arc<rustls::ClientConfig>) -> Conn<TlsStream<TcpStream>> {
        let mut s = TcpStream::connect(&self.addr)
            .await
            .unwrap_or_else(|e| panic!("connect {}: {e}", self.addr));
        s.set_nodelay(true).ok();
        if let Some((dest, header)) = &self.connect {
            tunnel(&mut s, dest, header.as_deref()).await;
        }
        let name = ServerName::try_from(self.sni.clone()).expect("checked at parse");
        let tls = tokio_rustls::TlsConnector::from(cfg)
            .connect(name, s)
            .await
            .unwrap_or_else(|e| panic!("TLS handshake with {} ({}): {e}", self.sni, self.addr));
        Conn::new(tls, &self.path, self.header.as_deref())
    }
}

/// Sends `CONNECT dest` and reads the proxy's answer; panics unless it is 200. The proxy sends
/// nothing after its answer until the client's hello, so reading up to the blank line is exact.
async fn tunnel(s: &mut TcpStream, dest: &str, header: Option<&str>) {
    let mut req = format!("CONNECT {dest} HTTP/1.1\r\nHost: {dest}\r\n");
    if let Some(h) = header {
        req.push_str(h);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.expect("send CONNECT");
    let mut head = Vec::with_capacity(256);
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = s.read(&mut byte).await.expect("read CONNECT answer");
        assert!(n == 1, "proxy closed during CONNECT {dest}");
        head.push(byte[0]);
        assert!(head.len() < 16 * 1024, "CONNECT answer too long");
    }
    let text = String::from_utf8_lossy(&head);
    let status = text.split(' ').nth(1).unwrap_or("");
    assert!(
        status == "200",
        "CONNECT {dest}: {}",
        text.lines().next().unwrap_or("")
    );
}
