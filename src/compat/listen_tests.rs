//! The shared listener with a trivial endpoint, over a real Unix socket: admission, limits,
//! refusals in the endpoint's shape, keep-alive.

use super::*;
use crate::audit::Audit;
use crate::clock::SystemClock;
use crate::engine::settings::{ConfigSource, SchedulerConfig, ServerConfig, Settings};
use crate::engine::Catalog;
use crate::policy::{Policy, RawRule};
use sidecred_core::spec::Locator;
use std::collections::BTreeMap;
use std::path::Path;
use tokio::net::UnixStream;

/// Answers `uid=<caller uid> body=<len>`; errors as `{"error": "..."}`.
struct Echo;

impl Endpoint for Echo {
    fn name(&self) -> &'static str {
        "echo_api"
    }
    async fn handle(&self, caller: &PeerIdentity, req: Request<Bytes>) -> Response<Full<Bytes>> {
        let text = format!("uid={} body={}", caller.uid, req.body().len());
        Response::new(Full::new(Bytes::from(text)))
    }
    fn error(&self, status: StatusCode, message: &str) -> Response<Full<Bytes>> {
        let body = serde_json::json!({ "error": message }).to_string();
        Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .unwrap()
    }
}

/// The engine's settings for the listener: the sockets, a per-uid cap of 2 and one workload
/// rule for `uids`; no backends or secrets (the echo endpoint reads none). Built without the
/// config layer, which sits above compat.
struct Fixture(Settings);

impl ConfigSource for Fixture {
    fn settings(&self) -> &Settings {
        &self.0
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

async fn engine(dir: &Path, uids: &str) -> Arc<Engine> {
    #[derive(serde::Deserialize)]
    struct Rules {
        rule: Vec<RawRule>,
    }
    let text = format!("[[rule]]\nname = \"some\"\nuids = [{uids}]\n");
    let raw: Rules = toml::from_str(&text).unwrap();
    let loc = Locator {
        file: Path::new("t.toml"),
        text: &text,
    };
    let secrets = BTreeMap::new();
    let workload_policy = Policy::build(raw.rule, "policy.workload", &secrets, &loc).unwrap();
    let server = ServerConfig {
        workload_socket: dir.join("w/w.sock"),
        workload_socket_mode: 0o660,
        admin_socket: dir.join("a/a.sock"),
        admin_socket_mode: 0o600,
        default_session_ttl: Duration::from_secs(3600),
        max_session_ttl: Duration::from_secs(86400),
        stale_window: Duration::from_secs(300),
        backend_timeout: Duration::from_secs(5),
        handshake_timeout: Duration::from_secs(10),
        max_connections: 1024,
        max_connections_per_uid: 2,
        state_dir: None,
        mlockall: false,
        spiffe_socket: None,
        spiffe_ca: None,
        max_sessions_per_identity: 256,
        max_calls_per_session: 4096,
        max_watches_per_session: 64,
        test_hold_dir: None,
    };
    let settings = Settings {
        server,
        scheduler: SchedulerConfig::default(),
        backends: BTreeMap::new(),
        secrets,
        workload_policy,
        admin_policy: Policy::default(),
    };
    let cat = Catalog::build(Fixture(settings), 1, Arc::new(SystemClock))
        .await
        .unwrap();
    Engine::new(cat, Arc::new(SystemClock), Audit::disabled())
}

/// Starts the listener on a fresh socket; returns its path and the shutdown switch.
async fn start(
    dir: &Path,
    uids: &str,
    limits: Option<HttpLimits>,
) -> (std::path::PathBuf, watch::Sender<bool>) {
    let e = engine(dir, uids).await;
    let (tx, rx) = watch::channel(false);
    let mut l = Listener::new(Echo, e, rx);
    if let Some(lim) = limits {
        l = l.with_limits(lim);
    }
    let path = dir.join("h/echo.sock");
    let b = crate::api::sockdir::bind(&path, 0o600).unwrap();
    b.listener.set_nonblocking(true).unwrap();
    let ul = UnixListener::from_std(b.listener).unwrap();
    tokio::spawn(async move {
        let _guard = b.guard;
        l.serve_unix(ul).await
    });
    (path, tx)
}

/// Sends raw bytes and reads until the server closes or `until` appears.
async fn exchange(s: &mut UnixStream, send: &[u8], until: &str) -> String {
    let _ = s.write_all(send).await;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let read = async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
            if String::from_utf8_lossy(&got).contains(until) {
                break;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .expect("server answered in time");
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test]
async fn serves_keeps_alive_and_bounds_requests() {
    let t = tempfile::tempdir().unwrap();
    let lim = HttpLimits {
        max_body: 100,
        header_timeout: Duration::from_millis(300),
        body_timeout: Duration::from_millis(300),
        ..HttpLimits::from_limits(&Limits::default())
    };
    let (path, _stop) = start(t.path(), "\"self\"", Some(lim)).await;
    let me = nix::unistd::geteuid().as_raw();
    let mut s = UnixStream::connect(&path).await.unwrap();
    // Two requests on one connection.
    for _ in 0..2 {
        let r = exchange(&mut s, b"GET /x HTTP/1.1\r\nhost: h\r\n\r\n", "body=0").await;
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        assert!(r.contains(&format!("uid={me} body=0")), "{r}");
    }
    let big = b"POST /x HTTP/1.1\r\nhost: h\r\ncontent-length: 101\r\n\r\n";
    let r = exchange(&mut s, big, "}").await;
    assert!(r.starts_with("HTTP/1.1 413"), "{r}");
    assert!(r.contains("larger than 100 bytes"), "{r}");
    // Chunked, with no declared length, crossing the limit as it arrives.
    let mut s = UnixStream::connect(&path).await.unwrap();
    let chunked = format!(
        "POST /x HTTP/1.1\r\nhost: h\r\ntransfer-encoding: chunked\r\n\r\n96\r\n{}\r\n0\r\n\r\n",
        "a".repeat(150)
    );
    let r = exchange(&mut s, chunked.as_bytes(), "}").await;
    assert!(r.starts_with("HTTP/1.1 413"), "{r}");
    // A body that never comes.
    let mut s = UnixStream::connect(&path).await.unwrap();
    let r = exchange(
        &mut s,
        b"POST /x HTTP/1.1\r\nhost: h\r\ncontent-length: 10\r\n\r\nabc",
        "}",
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 408"), "{r}");
    // Headers over the limit: hyper answers 431 and closes.
    let mut s = UnixStream::connect(&path).await.unwrap();
    let huge = format!(
        "GET /x HTTP/1.1\r\nhost: h\r\nx-pad: {}\r\n\r\n",
        "p".repeat(20_000)
    );
    let r = exchange(&mut s, huge.as_bytes(), "\r\n\r\n").await;
    assert!(r.starts_with("HTTP/1.1 431"), "{r}");
    // Headers that never end: the connection is closed, not held.
    let mut s = UnixStream::connect(&path).await.unwrap();
    let r = exchange(&mut s, b"GET /x HTTP/1.1\r\nhost: h\r\n", "never").await;
    assert!(!r.contains("200"), "{r}");
    // Garbage.
    let mut s = UnixStream::connect(&path).await.unwrap();
    let r = exchange(&mut s, b"\x00\x01 nonsense\r\n\r\n", "\r\n\r\n").await;
    assert!(r.starts_with("HTTP/1.1 400"), "{r}");
}

#[tokio::test]
async fn refuses_unadmitted_uid_and_caps_per_uid_in_the_endpoint_shape() {
    let t = tempfile::tempdir().unwrap();
    let (path, _stop) = start(t.path(), "4242424", None).await;
    let mut s = UnixStream::connect(&path).await.unwrap();
    let r = exchange(&mut s, b"GET /x HTTP/1.1\r\nhost: h\r\n\r\n", "}").await;
    assert!(r.starts_with("HTTP/1.1 403"), "{r}");
    assert!(
        r.contains("{\"error\":\"no policy.workload rule admits uid="),
        "{r}"
    );

    let t = tempfile::tempdir().unwrap();
    let (path, stop) = start(t.path(), "\"self\"", None).await;
    let _a = UnixStream::connect(&path).await.unwrap();
    let _b = UnixStream::connect(&path).await.unwrap();
    let mut c = UnixStream::connect(&path).await.unwrap();
    let r = exchange(&mut c, b"GET /x HTTP/1.1\r\nhost: h\r\n\r\n", "}").await;
    assert!(r.starts_with("HTTP/1.1 429"), "{r}");
    assert!(r.contains("server.max_connections_per_uid (2)"), "{r}");
    // Shutdown ends idle kept-alive connections.
    stop.send(true).unwrap();
    let mut a = _a;
    let r = exchange(&mut a, b"", "never").await;
    assert!(r.is_empty(), "{r}");
}

#[test]
fn clip_keeps_char_boundaries() {
    assert_eq!(clip("abc", 8), "abc");
    assert_eq!(clip("abcdef", 3), "abc");
    assert_eq!(clip("aé", 2), "a");
}

#[test]
fn encode_writes_one_closing_response() {
    let r = Response::builder()
        .status(403)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(b"{\"errors\":[]}")))
        .unwrap();
    let b = String::from_utf8(encode(r)).unwrap();
    assert!(b.starts_with("HTTP/1.1 403 Forbidden\r\n"), "{b}");
    assert!(b.contains("content-length: 13\r\nconnection: close\r\n\r\n{\"errors\":[]}"));
}
