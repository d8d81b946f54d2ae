//! OTLP/HTTP span export: a loopback collector started here receives the real sidecar's spans.

mod common;

use common::*;
use parking_lot::Mutex;
use serde_json::Value;
use sidecred::api::pb;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

const CANARY: &str = "CANARY-otlp-7e1ec0de";
const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";

/// One request the collector received: request line, Content-Type, body.
#[derive(Clone, Debug)]
struct Post {
    line: String,
    content_type: String,
    body: String,
}

/// A minimal HTTP/1.1 collector on loopback: stores each request and answers 200.
async fn collector() -> (String, Arc<Mutex<Vec<Post>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1/traces", listener.local_addr().unwrap());
    let posts = Arc::new(Mutex::new(Vec::new()));
    let store = posts.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let store = store.clone();
            tokio::spawn(async move {
                let (r, mut w) = stream.into_split();
                let mut r = BufReader::new(r);
                // Keep-alive: one connection may carry many requests.
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    let (mut len, mut content_type) = (0usize, String::new());
                    loop {
                        let mut h = String::new();
                        if r.read_line(&mut h).await.unwrap_or(0) == 0 {
                            return;
                        }
                        let h = h.trim_end();
                        if h.is_empty() {
                            break;
                        }
                        let (k, v) = h.split_once(':').unwrap_or((h, ""));
                        match k.to_ascii_lowercase().as_str() {
                            "content-length" => len = v.trim().parse().unwrap(),
                            "content-type" => content_type = v.trim().to_string(),
                            _ => {}
                        }
                    }
                    let mut body = vec![0; len];
                    r.read_exact(&mut body).await.unwrap();
                    store.lock().push(Post {
                        line: line.trim_end().to_string(),
                        content_type,
                        body: String::from_utf8(body).unwrap(),
                    });
                    w.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}")
                        .await
                        .unwrap();
                }
            });
        }
    });
    (url, posts)
}

/// Every exported span with its resource's service.name.
fn spans(posts: &[Post]) -> Vec<(String, Value)> {
    let mut out = vec![];
    for p in posts {
        let v: Value = serde_json::from_str(&p.body).expect("OTLP body is JSON");
        for rs in v["resourceSpans"].as_array().unwrap() {
            let service = rs["resource"]["attributes"]
                .as_array()
                .unwrap()
                .iter()
                .find(|a| a["key"] == "service.name")
                .map(|a| a["value"]["stringValue"].as_str().unwrap().to_string())
                .unwrap_or_default();
            for ss in rs["scopeSpans"].as_array().unwrap() {
                for s in ss["spans"].as_array().unwrap() {
                    out.push((service.clone(), s.clone()));
                }
            }
        }
    }
    out
}

fn attr<'a>(span: &'a Value, key: &str) -> Option<&'a str> {
    span["attributes"]
        .as_array()?
        .iter()
        .find(|a| a["key"] == key)
        .and_then(|a| a["value"]["stringValue"].as_str())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpc_spans_join_the_callers_trace_and_carry_no_values() {
    let (url, posts) = collector().await;
    let body = dev_body(
        &format!(", \"canary/path\" = \"{CANARY}\""),
        "[[secret]]\nname = \"app/canary\"\nbackend = \"dev\"\npath = \"canary/path\"\nzone = \"internal\"\n",
    );
    let sc = Sidecar::builder(&body)
        .log("trace")
        .log_extra(&format!("otlp_endpoint = \"{url}\""))
        .start();
    let mut b = sc.broker().await;
    let sid = b
        .open_session(pb::OpenSessionRequest::default())
        .await
        .unwrap()
        .into_inner()
        .session_id;
    let mut req = tonic::Request::new(pb::GetSecretRequest {
        name: "app/canary".into(),
        session_id: sid,
        ..Default::default()
    });
    req.metadata_mut().insert(
        "traceparent",
        format!("00-{TRACE}-{PARENT}-01").parse().unwrap(),
    );
    let value = b.get_secret(req).await.unwrap().into_inner();
    assert!(!value.value.is_empty());

    let end = Instant::now() + Duration::from_secs(10);
    let (get, open) = loop {
        let got = spans(&posts.lock());
        let rpc = |name: &str| {
            got.iter()
                .find(|(_, s)| s["name"] == "rpc" && attr(s, "rpc") == Some(name))
                .cloned()
        };
        if let (Some(g), Some(o)) = (rpc("GetSecret"), rpc("OpenSession")) {
            break (g, o);
        }
        assert!(
            Instant::now() < end,
            "no rpc spans exported within 10s: {got:?}\n{}",
            sc.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    let (service, span) = get;
    assert_eq!(service, "sidecred");
    assert_eq!(span["traceId"], TRACE);
    assert_eq!(span["parentSpanId"], PARENT);
    assert_eq!(span["kind"], 2);
    assert_eq!(span["spanId"].as_str().unwrap().len(), 16);
    assert_eq!(attr(&span, "code"), Some("Ok"));
    let start: u128 = span["startTimeUnixNano"].as_str().unwrap().parse().unwrap();
    let stop: u128 = span["endTimeUnixNano"].as_str().unwrap().parse().unwrap();
    assert!(start > 1_600_000_000_000_000_000 && start <= stop, "{span}");

    // Without a traceparent, a span starts its own trace.
    let (_, open) = open;
    assert_ne!(open["traceId"], TRACE);
    assert_eq!(open["traceId"].as_str().unwrap().len(), 32);
    assert!(open.get("parentSpanId").is_none(), "{open}");

    let posts = posts.lock().clone();
    for p in &posts {
        assert!(p.line.starts_with("POST /v1/traces "), "{}", p.line);
        assert_eq!(p.content_type, "application/json");
        assert!(
            !p.body.contains(CANARY),
            "secret value exported: {}",
            p.body
        );
    }
    assert!(!sc.logs().contains(CANARY), "secret value in logs");
}

#[test]
fn a_non_http_endpoint_is_refused_by_check_config() {
    let body = dev_body("", "");
    let sc_dir = tempfile::tempdir().unwrap();
    let path = sc_dir.path().join("c.toml");
    let text = format!(
        "[server]\nworkload_socket = \"{0}/w.sock\"\nadmin_socket = \"{0}/a/a.sock\"\n[log]\notlp_endpoint = \"127.0.0.1:4318\"\n{body}",
        sc_dir.path().display()
    );
    std::fs::write(&path, text).unwrap();
    let o = std::process::Command::new(BIN)
        .arg("check-config")
        .arg(&path)
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("log.otlp_endpoint"), "{err}");
}
