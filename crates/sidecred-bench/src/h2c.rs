//! A lean unary gRPC client on the `h2` crate: one HTTP/2 connection per handle, pre-encoded
//! request body, answers checked by `grpc-status` and decoded with prost.
//!
//! The load generator shares the two cores with the servers it measures. The HTTP/1.1 peers are
//! driven by a minimal hand-written client (`http.rs`); this is its gRPC counterpart, so every
//! target pays a comparably small client cost and the figures compare servers, not clients.
//! (`--client tonic` keeps the tonic `Channel` for comparison.)

use bytes::{BufMut, Bytes, BytesMut};
use std::path::Path;

/// One caller's handle on a shared HTTP/2 connection.
#[derive(Clone)]
pub struct Unary {
    send: h2::client::SendRequest<Bytes>,
    uri: http::Uri,
    body: Bytes,
    check: fn(&[u8]) -> bool,
}

/// Opens one HTTP/2 connection on a Unix socket; its driver runs as a task.
pub async fn connect(path: &Path) -> h2::client::SendRequest<Bytes> {
    let io = tokio::net::UnixStream::connect(path)
        .await
        .unwrap_or_else(|e| panic!("connect {}: {e}", path.display()));
    let (send, conn) = h2::client::Builder::new()
        .initial_window_size(1 << 20)
        .initial_connection_window_size(4 << 20)
        .handshake::<_, Bytes>(io)
        .await
        .expect("HTTP/2 handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    send
}

/// One message with its 5-byte gRPC prefix (uncompressed).
pub fn frame(msg: &impl prost::Message) -> Bytes {
    let mut out = BytesMut::with_capacity(5 + msg.encoded_len());
    out.put_u8(0);
    out.put_u32(msg.encoded_len() as u32);
    msg.encode(&mut out).expect("sized buffer");
    out.freeze()
}

impl Unary {
    /// `method` is the gRPC path, e.g. `/sidecred.v1.Broker/GetSecret`; `check` validates the
    /// answer's message bytes (without the 5-byte prefix).
    pub fn new(
        send: h2::client::SendRequest<Bytes>,
        method: &str,
        body: Bytes,
        check: fn(&[u8]) -> bool,
    ) -> Self {
        let uri = format!("http://localhost{method}").parse().expect("uri");
        Self {
            send,
            uri,
            body,
            check,
        }
    }

    /// One call; true when it answered OK with a message that passes `check`.
    pub async fn call(&mut self) -> bool {
        self.try_call().await.unwrap_or(false)
    }

    async fn try_call(&mut self) -> Result<bool, h2::Error> {
        let mut send = self.send.clone().ready().await?;
        let req = http::Request::post(self.uri.clone())
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .expect("request");
        let (resp, mut out) = send.send_request(req, false)?;
        out.send_data(self.body.clone(), true)?;
        let resp = resp.await?;
        if resp.status() != http::StatusCode::OK {
            return Ok(false);
        }
        // Trailers-only answers (errors) carry grpc-status in the headers.
        if let Some(s) = resp.headers().get("grpc-status") {
            return Ok(s == "0");
        }
        let mut body = resp.into_body();
        let mut msg = BytesMut::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk?;
            let _ = body.flow_control().release_capacity(chunk.len());
            msg.extend_from_slice(&chunk);
        }
        let trailers = body.trailers().await?;
        let ok = trailers
            .as_ref()
            .and_then(|t| t.get("grpc-status"))
            .is_some_and(|s| s == "0");
        Ok(ok && msg.len() >= 5 && msg[0] == 0 && (self.check)(&msg[5..]))
    }
}
