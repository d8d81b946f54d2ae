//! The fork/exec identity attack on the HTTP endpoints: a process opens keep-alive connections
//! (loopback TCP and a Unix socket), reads a secret on each, then executes another program
//! that keeps the connections and asks again. The re-check at use sees the exec, even though
//! requests of the same process on other connections were checked moments before (checks are
//! shared across a process's connections, only for requests read before the check began).

mod common;

use common::*;
use std::time::Duration;

const TOKEN: &str = "ssrf-token-for-exec";
const CANARY: &str = "CANARY-exec-4c1d";

/// Python: two connections (TCP, Unix), one read on each (200), then exec `sh`, which sends
/// the same request on both inherited descriptors and prints what comes back.
const SCRIPT: &str = r#"
import os, socket, sys
port, path, token = int(sys.argv[1]), sys.argv[2], sys.argv[3]
req = ("GET /secretsmanager/get?secretId=app/canary HTTP/1.1\r\nhost: x\r\n"
       "X-Aws-Parameters-Secrets-Token: %s\r\n\r\n" % token)
t = socket.create_connection(("127.0.0.1", port))
u = socket.socket(socket.AF_UNIX); u.connect(path)
for s in (t, u):
    s.sendall(req.encode())
    got = s.recv(65536).decode()
    print("before:", got.split("\r\n")[0], flush=True)
    if "CANARY" not in got:
        sys.exit("no value before the exec")
for s in (t, u):
    os.set_inheritable(s.fileno(), True)
req_sh = req.replace("\r\n", "\\r\\n")
sh = ""
for s in (t, u):
    fd = s.fileno()
    sh += "printf '%s' >&%d; dd bs=65536 count=1 <&%d 2>/dev/null; echo; " % (req_sh, fd, fd)
os.execv("/bin/sh", ["sh", "-c", sh])
"#;

#[test]
fn an_exec_after_connecting_is_refused_on_both_transports() {
    let tmp = tempfile::tempdir().unwrap();
    let sock = tmp.path().join("aws/agent.sock");
    let port = free_port(false);
    let extra = format!(
        r#"
[[secret]]
name = "app/canary"
backend = "dev"
path = "canary"
zone = "internal"

[aws_agent_api]
listen = "127.0.0.1:{port}"
socket = "{}"
"#,
        sock.display()
    );
    let body = dev_body(&format!(", \"canary\" = \"{CANARY}\""), &extra);
    let sc = Sidecar::builder(&body).env("AWS_TOKEN", TOKEN).start();
    let up = wait_for(Duration::from_secs(10), || {
        (sock.exists() && std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()).then_some(())
    });
    assert!(up.is_some(), "endpoint not up:\n{}", sc.logs());

    let py = tmp.path().join("exec.py");
    std::fs::write(&py, SCRIPT).unwrap();
    let python = std::env::var("SIDECRED_PYTHON").unwrap_or_else(|_| "python3".into());
    let out = std::process::Command::new(python)
        .arg(&py)
        .arg(port.to_string())
        .arg(&sock)
        .arg(TOKEN)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout.matches("before: HTTP/1.1 200").count(),
        2,
        "{stdout}"
    );
    let after: Vec<&str> = stdout.split("HTTP/1.1 ").skip(3).collect();
    assert_eq!(after.len(), 2, "two answers after the exec: {stdout}");
    for a in after {
        assert!(a.starts_with("403"), "refused after the exec: {a}");
        assert!(a.contains("executed another program"), "{a}");
        assert!(!a.contains(CANARY), "no value after the exec: {a}");
    }
    assert!(!sc.logs().contains(CANARY));
}
