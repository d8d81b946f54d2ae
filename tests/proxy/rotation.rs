//! Rotation under load: requests keep flowing on kept-alive connections while the secret
//! rotates; an origin that accepts both values during grace sees no failure, and requests sent
//! after the rotation carry the new value.

use crate::clients::{assert_no_leak, body};
use crate::common::free_port;
use crate::revoke::read_response;
use crate::support::*;
use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

const NEW: &str = "ghp-CANARY-rotated-value-0b44";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_under_load_switches_to_the_new_value_without_failures() {
    let http = format!(
        "map $http_authorization $authok {{ default 0; \"Bearer {CANARY}\" 1; \"Bearer {NEW}\" 1; }}"
    );
    let origin = Nginx::start_with(
        Origin {
            tls: None,
            client_ca: None,
            allow_only: None,
        },
        &http,
        "if ($authok = 0) { return 401; }",
    );
    let port = free_port(false);
    let rules = format!(
        "[[proxy.rule]]\nname = \"plain\"\nscheme = \"http\"\nhost = \"127.0.0.1\"\nport = {}\nsecret = \"tools/gh\"\nheader = \"Authorization: Bearer {{value}}\"\n",
        origin.port
    );
    let sc = sidecar(port, "", &body(&rules));
    let (_, tok) = open_session(port);
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let (stop, sent, tok) = (stop.clone(), sent.clone(), tok.clone());
            let target = format!("http://127.0.0.1:{}/load", origin.port);
            std::thread::spawn(move || {
                let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
                c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                let req = format!(
                    "GET {target} HTTP/1.1\r\nHost: x\r\nProxy-Authorization: Bearer {tok}\r\n\r\n"
                );
                let mut codes = Vec::new();
                // Bounded: at most 3000 requests per connection.
                for _ in 0..3000 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    c.write_all(req.as_bytes()).unwrap();
                    codes.push(read_response(&mut c).0);
                    sent.fetch_add(1, Ordering::Relaxed);
                }
                codes
            })
        })
        .collect();
    while sent.load(Ordering::Relaxed) < 200 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    sc.admin()
        .await
        .rotate(sidecred::api::pb::RotateRequest {
            name: "tools/gh".into(),
            grace_seconds: 60,
            value: NEW.as_bytes().to_vec(),
        })
        .await
        .unwrap();
    let at_rotation = origin.access_log().lines().count();
    let until = sent.load(Ordering::Relaxed) + 400;
    while sent.load(Ordering::Relaxed) < until {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let codes: Vec<u16> = workers
        .into_iter()
        .flat_map(|w| w.join().unwrap())
        .collect();
    assert!(codes.len() >= 600);
    assert!(
        codes.iter().all(|c| *c == 200),
        "failures during rotation: {:?}",
        codes.iter().filter(|c| **c != 200).count()
    );
    let log = origin.access_log();
    let lines: Vec<&str> = log.lines().collect();
    assert!(lines[..at_rotation.min(lines.len())]
        .iter()
        .any(|l| l.contains(CANARY)));
    // At most one request per connection was in flight when the rotation returned.
    let after = &lines[(at_rotation + 4).min(lines.len())..];
    assert!(after.len() > 300, "{}", after.len());
    assert!(
        after.iter().all(|l| l.contains(NEW)),
        "a request after the rotation carried the old value"
    );
    assert!(!sc.logs().contains(NEW) && !sc.audit_text().contains(NEW));
    assert_no_leak(&sc);
}

/// A call-scoped secret: one lease per proxied request, released when its response ends; a
/// session carries many more requests than it may hold calls at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_scoped_leases_are_released_when_each_response_ends() {
    let origin = Nginx::start(Origin {
        tls: None,
        client_ca: None,
        allow_only: None,
    });
    let port = free_port(false);
    let rules = format!(
        "[[proxy.rule]]\nname = \"call\"\nscheme = \"http\"\nhost = \"127.0.0.1\"\nport = {}\nsecret = \"tools/call\"\nheader = \"Authorization: Bearer {{value}}\"\n",
        origin.port
    );
    let sc = sidecar(port, "", &body(&rules));
    let (sid, tok) = open_session(port);
    let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let req = format!("GET http://127.0.0.1:{}/call HTTP/1.1\r\nHost: x\r\nProxy-Authorization: Bearer {tok}\r\n\r\n", origin.port);
    for _ in 0..30 {
        c.write_all(req.as_bytes()).unwrap();
        assert_eq!(read_response(&mut c).0, 200);
    }
    let released = crate::common::wait_for(Duration::from_secs(5), || {
        let n = futures_lite_block(crate::common::lease_count(&sc, &sid));
        (n == Some(0)).then_some(())
    });
    assert!(
        released.is_some(),
        "leases still held after the responses ended"
    );
    // Each request had its own credential (dynamic, per call).
    let log = origin.access_log();
    let mut seen: Vec<&str> = log
        .lines()
        .filter_map(|l| l.split("auth=\"Bearer ").nth(1))
        .collect();
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 30, "{log}");
    assert_no_leak(&sc);
}

/// Runs a future to completion on a fresh current-thread runtime (from a blocking poll loop).
fn futures_lite_block<F: std::future::Future>(f: F) -> F::Output {
    tokio::task::block_in_place(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    })
}
