//! A loopback HTTP/1.1 proxy for backend fault tests: counts requests per `X-Amz-Target`
//! operation and answers chosen requests with throttling or 5xx instead of forwarding.
//! Self-contained, so it can be included with `#[path]` or from `common`.
#![allow(dead_code)]

use parking_lot::Mutex;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the proxy answers instead of forwarding.
#[derive(Clone, Debug)]
pub enum Fault {
    /// HTTP 400 `ThrottlingException`.
    Throttle,
    /// A bare 5xx.
    Status(u16),
    /// HTTP 400 with this `__type`.
    Error(&'static str),
    /// An AWS JSON error with this `__type` and message.
    ErrorWith(&'static str, &'static str),
    /// Swallows the request and never answers (nothing reaches the upstream).
    Hang,
}

#[derive(Default)]
struct ProxyState {
    counts: Mutex<HashMap<String, u64>>,
    queued: Mutex<VecDeque<Fault>>,
    always: Mutex<Option<Fault>>,
}

/// A loopback HTTP/1.1 proxy in its own thread: counts requests per `X-Amz-Target` operation
/// and injects faults before forwarding to the upstream port.
pub struct FaultProxy {
    pub port: u16,
    state: Arc<ProxyState>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FaultProxy {
    pub fn start(upstream: u16) -> FaultProxy {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        std_listener.set_nonblocking(true).unwrap();
        let port = std_listener.local_addr().unwrap().port();
        let state = Arc::new(ProxyState::default());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let st = state.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = TcpListener::from_std(std_listener).unwrap();
                let accept = async {
                    loop {
                        let Ok((conn, _)) = listener.accept().await else {
                            continue;
                        };
                        tokio::spawn(serve(conn, upstream, st.clone()));
                    }
                };
                tokio::select! {
                    _ = accept => {}
                    _ = rx => {}
                }
            });
        });
        FaultProxy {
            port,
            state,
            stop: Some(tx),
            thread: Some(thread),
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Requests received for one operation (e.g. "GetSecretValue"; "other" for requests without
    /// X-Amz-Target, such as STS query calls), faulted ones included.
    pub fn count(&self, op: &str) -> u64 {
        *self.state.counts.lock().get(op).unwrap_or(&0)
    }

    /// Answers the next requests with these faults, in order.
    pub fn fail_next(&self, faults: &[Fault]) {
        self.state.queued.lock().extend(faults.iter().cloned());
    }

    /// Answers every request with this fault (None: forward again).
    pub fn fail_always(&self, f: Option<Fault>) {
        *self.state.always.lock() = f;
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Reads one HTTP message head plus its Content-Length body; None at EOF.
async fn read_message(conn: &mut TcpStream, buf: &mut Vec<u8>) -> Option<(String, Vec<u8>)> {
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let mut chunk = [0u8; 8192];
        let n = conn.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let len = header(&head, "content-length")
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(0);
    while buf.len() < head_end + len {
        let mut chunk = [0u8; 8192];
        let n = conn.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = buf[head_end..head_end + len].to_vec();
    buf.drain(..head_end + len);
    Some((head, body))
}

fn header(head: &str, name: &str) -> Option<String> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_string())
    })
}

async fn serve(mut conn: TcpStream, upstream: u16, st: Arc<ProxyState>) {
    let mut buf = Vec::new();
    while let Some((head, body)) = read_message(&mut conn, &mut buf).await {
        let op = header(&head, "x-amz-target")
            .and_then(|t| t.rsplit('.').next().map(str::to_string))
            .unwrap_or_else(|| "other".into());
        *st.counts.lock().entry(op).or_default() += 1;
        let fault = st
            .queued
            .lock()
            .pop_front()
            .or_else(|| st.always.lock().clone());
        if let Some(f) = fault {
            let (status, body) = match f {
                Fault::Hang => {
                    let mut b = [0u8; 1];
                    let _ = conn.read(&mut b).await;
                    return;
                }
                Fault::Throttle => (
                    400,
                    r#"{"__type":"ThrottlingException","message":"Rate exceeded"}"#.to_string(),
                ),
                Fault::Status(s) => (s, "{}".to_string()),
                Fault::Error(t) => (400, format!(r#"{{"__type":"{t}","message":"injected"}}"#)),
                Fault::ErrorWith(t, m) => (400, format!(r#"{{"__type":"{t}","message":"{m}"}}"#)),
            };
            let resp = format!(
                "HTTP/1.1 {status} X\r\nContent-Type: application/x-amz-json-1.1\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            if conn.write_all(resp.as_bytes()).await.is_err() {
                return;
            }
            continue;
        }
        // Forward on a fresh upstream connection that the upstream closes after answering.
        let Ok(mut up) = TcpStream::connect(("127.0.0.1", upstream)).await else {
            return;
        };
        let mut req = String::new();
        for l in head.trim_end().lines() {
            if !l.to_ascii_lowercase().starts_with("connection:") {
                req.push_str(l);
                req.push_str("\r\n");
            }
        }
        req.push_str("Connection: close\r\n\r\n");
        if up.write_all(req.as_bytes()).await.is_err() || up.write_all(&body).await.is_err() {
            return;
        }
        let mut resp = Vec::new();
        if up.read_to_end(&mut resp).await.is_err() || resp.is_empty() {
            return;
        }
        if conn.write_all(&resp).await.is_err() {
            return;
        }
        let end = resp.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or(0);
        let rhead = String::from_utf8_lossy(&resp[..end]).to_ascii_lowercase();
        if header(&rhead, "connection").is_some_and(|v| v == "close")
            || header(&rhead, "content-length").is_none()
        {
            return;
        }
    }
}
