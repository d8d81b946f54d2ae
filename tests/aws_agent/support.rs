//! Helpers for the AWS-agent-compatible endpoint tests: the real AWS Secrets Manager Agent as a
//! peer, sidecred configs with `[aws_agent_api]`, and plain HTTP/1.1 requests (std sockets, and
//! curl run as another uid).

use crate::common::{free_port, wait_for, Sidecar};
use crate::moto::Moto;
use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub const TOKEN: &str = "ssrf-token-for-tests";
pub const TOKEN_HEADER: &str = "X-Aws-Parameters-Secrets-Token";

/// An HTTP answer: status and body.
pub type Answer = (u16, String);

/// Sends one request with `Connection: close` and reads the whole answer.
pub fn send(
    stream: &mut (impl Read + Write),
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Answer {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    parse(&raw)
}

/// Status and body of a raw HTTP/1.1 response (0 and the raw text when it is not one).
pub fn parse(raw: &[u8]) -> Answer {
    let text = String::from_utf8_lossy(raw).to_string();
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return (0, text);
    };
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, body.to_string())
}

/// A GET over loopback TCP, with the right token unless `headers` says otherwise.
pub fn get(port: u16, path: &str, headers: &[(&str, &str)]) -> Answer {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    send(&mut s, "GET", path, headers)
}

pub fn get_tok(port: u16, path: &str) -> Answer {
    get(port, path, &[(TOKEN_HEADER, TOKEN)])
}

/// The JSON body, for comparing answers field by field.
pub fn json(a: &Answer) -> serde_json::Value {
    serde_json::from_str(&a.1).unwrap_or_else(|_| serde_json::Value::String(a.1.clone()))
}

/// curl run as `uid` (and the same gid, no supplementary groups) through setpriv.
pub fn curl_as(uid: u32, url: &str, headers: &[(&str, &str)]) -> Answer {
    let mut c = Command::new("setpriv");
    c.args([
        &format!("--reuid={uid}"),
        &format!("--regid={uid}"),
        "--clear-groups",
        "curl",
        "-s",
        "--max-time",
        "10",
        "-w",
        "\n%{http_code}",
    ]);
    for (k, v) in headers {
        c.arg("-H").arg(format!("{k}: {v}"));
    }
    let out = c
        .arg(url)
        .stdin(Stdio::null())
        .output()
        .expect("run setpriv curl");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// Config body: the aws backend on moto, the given secrets (name = AWS name), the endpoint on
/// `port` (and `extra` lines for `[aws_agent_api]`), then `policy`.
pub fn body(moto: &Moto, port: u16, secrets: &[&str], extra: &str, policy: &str) -> String {
    let mut s = format!(
        r#"
[aws_agent_api]
listen = "127.0.0.1:{port}"
{extra}

[backends.aws]
kind = "aws"
region = "us-east-1"
endpoint = "{}"
access_key_id = "test"
secret_access_key = "test"
initial_backoff = "20ms"
max_backoff = "200ms"
connect_timeout = "500ms"
"#,
        moto.endpoint()
    );
    for name in secrets {
        s.push_str(&format!(
            "\n[[secret]]\nname = \"{name}\"\nbackend = \"aws\"\npath = \"{name}\"\nzone = \"internal\"\ngrace = \"1h\"\n"
        ));
    }
    s.push_str(policy);
    s
}

/// Root may read everything; root administers.
pub const ROOT_POLICY: &str = r#"
[[policy.workload]]
name = "root"
uids = [0]
secrets = ["*"]

[[policy.admin]]
name = "root-admin"
uids = [0]
actions = ["*"]
"#;

/// Starts sidecred with the SSRF token in AWS_TOKEN; waits until its TCP port answers.
pub fn sidecar(body: &str, port: u16) -> Sidecar {
    let sc = Sidecar::builder(body).env("AWS_TOKEN", TOKEN).start();
    let up = wait_for(Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).ok()
    });
    assert!(up.is_some(), "endpoint not listening:\n{}", sc.logs());
    sc
}

/// The real AWS Secrets Manager Agent, fed by moto; killed on drop.
pub struct Agent {
    pub port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

pub fn agent_bin() -> String {
    std::env::var("SIDECRED_AWS_AGENT").unwrap_or_else(|_| {
        let peers = std::env::var("SIDECRED_PEERS_DIR").expect(
            "SIDECRED_PEERS_DIR is not set: run scripts/test or source ~/.cache/sidecred/peers/env.sh",
        );
        format!("{peers}/cargo/bin/aws_secretsmanager_agent")
    })
}

impl Agent {
    pub fn start(moto: &Moto, ttl_seconds: u32) -> Agent {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port(false);
        let cfg = dir.path().join("agent.toml");
        std::fs::write(
            &cfg,
            format!(
                "log_level = \"WARN\"\nlog_to_file = false\nhttp_port = \"{port}\"\nregion = \"us-east-1\"\nvalidate_credentials = false\nttl_seconds = \"{ttl_seconds}\"\n"
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.path().join("agent.log")).unwrap();
        let child = Command::new(agent_bin())
            .arg("--config")
            .arg(&cfg)
            .current_dir(dir.path())
            .env_remove("AWS_SESSION_TOKEN")
            .env_remove("AWS_CONTAINER_AUTHORIZATION_TOKEN")
            .env("AWS_TOKEN", TOKEN)
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ENDPOINT_URL", moto.endpoint())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start aws_secretsmanager_agent (installed by scripts/peers.sh)");
        let mut a = Agent {
            port,
            child,
            _dir: dir,
        };
        let up = wait_for(Duration::from_secs(20), || {
            if let Ok(Some(st)) = a.child.try_wait() {
                panic!("agent exited early: {st}");
            }
            std::net::TcpStream::connect(("127.0.0.1", port))
                .ok()
                .map(|_| get(port, "/ping", &[]))
                .filter(|r| r.0 == 200)
        });
        assert!(up.is_some(), "agent not ready");
        a
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
