//! moto's server mode as a real AWS Secrets Manager peer on loopback.
//! Self-contained (no `super::`), so it can be included with `#[path]` or from `common`.
#![allow(dead_code)]

use aws_sdk_secretsmanager::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_secretsmanager::Client;
use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One plain HTTP/1.0 request; returns the status code.
fn http(port: u16, method: &str, path: &str) -> Option<u16> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.split_whitespace().nth(1)?.parse().ok()
}

/// A moto_server process; killed on drop.
pub struct Moto {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Moto {
    pub fn start() -> Moto {
        let mut m = Moto {
            port: free_port(),
            dir: tempfile::tempdir().unwrap(),
            child: None,
        };
        m.spawn();
        m
    }

    /// Starts moto on this port again (after `stop`); its state starts empty.
    pub fn spawn(&mut self) {
        let bin = std::env::var("SIDECRED_MOTO").expect(
            "SIDECRED_MOTO is not set: run scripts/test or source ~/.cache/sidecred/peers/env.sh",
        );
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("moto.log"))
            .unwrap();
        let child = Command::new(bin)
            .args(["-H", "127.0.0.1", "-p", &self.port.to_string()])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start moto_server");
        self.child = Some(child);
        let end = Instant::now() + Duration::from_secs(20);
        while http(self.port, "GET", "/moto-api/") != Some(200) {
            if let Some(Ok(Some(st))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("moto_server exited ({st}):\n{}", self.log());
            }
            assert!(
                Instant::now() < end,
                "moto_server not ready:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn reset(&self) {
        assert_eq!(http(self.port, "POST", "/moto-api/reset"), Some(200));
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("moto.log")).unwrap_or_default()
    }

    /// An SDK client straight to moto (not through any proxy), for seeding and outside changes.
    pub fn client(&self) -> Client {
        let conf = aws_sdk_secretsmanager::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .endpoint_url(self.endpoint())
            .credentials_provider(Credentials::new("test", "test", None, None, "test"))
            .build();
        Client::from_conf(conf)
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        self.stop();
    }
}
