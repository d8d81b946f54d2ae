//! Test harness: runs the real `sidecred` binary on temp sockets and talks to it as users do.
#![allow(dead_code)]

pub mod ca;
pub mod engine;
pub mod envoy;

use sidecred::api::pb::{admin_client::AdminClient, broker_client::BrokerClient};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};
use tonic::transport::{Channel, Endpoint};

pub const BIN: &str = env!("CARGO_BIN_EXE_sidecred");

/// A free loopback TCP port (and, with `pair`, the next one too, for servers that bind PORT+1).
pub fn free_port(pair: bool) -> u16 {
    for _ in 0..200 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let p = l.local_addr().unwrap().port();
        if !pair || std::net::TcpListener::bind(("127.0.0.1", p + 1)).is_ok() {
            return p;
        }
    }
    panic!("no free port pair");
}

/// Polls `f` until it returns Some or `limit` passes.
pub fn wait_for<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let end = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// How to start a sidecar.
pub struct SidecarBuilder {
    server: String,
    body: String,
    env: Vec<(String, String)>,
    audit_fail_closed: bool,
    log_level: String,
    log_extra: String,
    audit_path: Option<PathBuf>,
    audit_extra: String,
}

impl SidecarBuilder {
    /// Writes the audit log somewhere else (e.g. /dev/full to test fail-closed).
    pub fn audit_path(mut self, p: &str) -> Self {
        self.audit_path = Some(p.into());
        self
    }

    /// Extra lines for the `[server]` table, e.g. `stale_window = "2s"`.
    pub fn server(mut self, lines: &str) -> Self {
        self.server.push_str(lines);
        self.server.push('\n');
        self
    }

    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }

    /// Extra lines for the `[audit]` table.
    pub fn audit_extra(mut self, lines: &str) -> Self {
        self.audit_extra.push_str(lines);
        self.audit_extra.push('\n');
        self
    }

    pub fn fail_closed(mut self) -> Self {
        self.audit_fail_closed = true;
        self
    }

    pub fn log(mut self, level: &str) -> Self {
        self.log_level = level.into();
        self
    }

    /// Extra lines for the `[log]` table, e.g. `otlp_endpoint = "http://127.0.0.1:4318/v1/traces"`.
    pub fn log_extra(mut self, lines: &str) -> Self {
        self.log_extra.push_str(lines);
        self.log_extra.push('\n');
        self
    }

    pub fn start(self) -> Sidecar {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let workload = root.join("w/workload.sock");
        let admin = root.join("a/admin.sock");
        let audit = self
            .audit_path
            .clone()
            .unwrap_or_else(|| root.join("audit.jsonl"));
        let text = format!(
            "[server]\nworkload_socket = \"{}\"\nworkload_socket_mode = \"0666\"\nadmin_socket = \"{}\"\nstate_dir = \"{}\"\n{}\n[log]\nlevel = \"{}\"\n{}\n[audit]\npath = \"{}\"\nfail_closed = {}\n{}\n{}\n",
            workload.display(),
            admin.display(),
            root.join("state").display(),
            self.server,
            self.log_level,
            self.log_extra,
            audit.display(),
            self.audit_fail_closed,
            self.audit_extra,
            self.body
        );
        let config = root.join("sidecred.toml");
        std::fs::write(&config, text).unwrap();
        let mut sc = Sidecar {
            dir,
            config,
            workload,
            admin,
            audit,
            child: None,
            env: self.env,
        };
        sc.spawn();
        sc
    }
}

/// A running sidecred process; killed on drop.
pub struct Sidecar {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub workload: PathBuf,
    pub admin: PathBuf,
    pub audit: PathBuf,
    child: Option<Child>,
    env: Vec<(String, String)>,
}

impl Sidecar {
    /// `body` is the config after `[server]`, `[log]` and `[audit]`: backends, secrets, policy.
    pub fn builder(body: &str) -> SidecarBuilder {
        SidecarBuilder {
            server: String::new(),
            body: body.into(),
            env: vec![],
            audit_fail_closed: false,
            log_level: "debug".into(),
            log_extra: String::new(),
            audit_path: None,
            audit_extra: String::new(),
        }
    }

    pub fn start(body: &str) -> Sidecar {
        Self::builder(body).start()
    }

    pub fn stderr_path(&self) -> PathBuf {
        self.dir.path().join("stderr.log")
    }

    pub fn stdout_path(&self) -> PathBuf {
        self.dir.path().join("stdout.log")
    }

    /// Starts (or restarts) the process and waits until both sockets accept connections.
    pub fn spawn(&mut self) {
        let err = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.stderr_path())
            .unwrap();
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.stdout_path())
            .unwrap();
        let mut cmd = Command::new(BIN);
        cmd.args(["serve", "--config"])
            .arg(&self.config)
            .stdout(out)
            .stderr(err)
            .stdin(Stdio::null());
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let ready = wait_for(Duration::from_secs(20), || {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("sidecred exited early ({status}):\n{}", self.logs());
            }
            let ok = std::os::unix::net::UnixStream::connect(&self.workload).is_ok()
                && std::os::unix::net::UnixStream::connect(&self.admin).is_ok();
            ok.then_some(())
        });
        if ready.is_none() {
            let _ = child.kill();
            panic!("sidecred did not start serving:\n{}", self.logs());
        }
        self.child = Some(child);
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Sends a signal to the process.
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid() as i32), sig).unwrap();
    }

    /// SIGTERM and wait; returns the exit status.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(s) = child.try_wait().unwrap() {
                return s;
            }
            if Instant::now() > end {
                let _ = child.kill();
                panic!("sidecred did not stop within 10s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL, no cleanup (crash simulation).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn logs(&self) -> String {
        let mut s = std::fs::read_to_string(self.stderr_path()).unwrap_or_default();
        s.push_str(&std::fs::read_to_string(self.stdout_path()).unwrap_or_default());
        s
    }

    pub fn audit_text(&self) -> String {
        std::fs::read_to_string(&self.audit).unwrap_or_default()
    }

    /// Whether an audit line containing `needle` shows up within 3 s (lines are written by a
    /// background appender, so a line may land just after its RPC answered).
    pub fn audit_has(&self, needle: &str) -> bool {
        let until = std::time::Instant::now() + std::time::Duration::from_secs(3);
        loop {
            if self.audit_text().contains(needle) {
                return true;
            }
            if std::time::Instant::now() > until {
                return false;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// Parsed audit lines.
    pub fn audit_events(&self) -> Vec<serde_json::Value> {
        self.audit_text()
            .lines()
            .map(|l| serde_json::from_str(l).expect("audit line is JSON"))
            .collect()
    }

    /// Runs the CLI against this sidecar's sockets.
    pub fn cli(&self, args: &[&str]) -> Output {
        self.cli_cmd(args).output().unwrap()
    }

    pub fn cli_cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.args(args)
            .env("SIDECRED_SOCKET", &self.workload)
            .env("SIDECRED_ADMIN_SOCKET", &self.admin)
            .stdin(Stdio::null());
        c
    }

    pub async fn broker(&self) -> BrokerClient<Channel> {
        BrokerClient::new(uds_channel(&self.workload).await)
    }

    pub async fn admin(&self) -> AdminClient<Channel> {
        AdminClient::new(uds_channel(&self.admin).await)
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        self.kill();
    }
}

pub async fn uds_channel(path: &Path) -> Channel {
    Endpoint::from_shared(format!("unix://{}", path.display()))
        .unwrap()
        .timeout(Duration::from_secs(15))
        .connect()
        .await
        .unwrap_or_else(|e| panic!("connect {}: {e}", path.display()))
}

/// The generated workload client over a Unix socket.
pub type Broker = BrokerClient<Channel>;

/// Opens a session labelled with `agent_id`.
pub async fn open_labeled(b: &mut Broker, agent: &str) -> String {
    b.open_session(sidecred::api::pb::OpenSessionRequest {
        ttl_seconds: 0,
        labels: [("agent_id".into(), agent.into())].into(),
    })
    .await
    .unwrap()
    .into_inner()
    .session_id
}

/// Opens a session with the server's default ttl and no labels.
pub async fn open_default(b: &mut Broker) -> String {
    b.open_session(sidecred::api::pb::OpenSessionRequest::default())
        .await
        .unwrap()
        .into_inner()
        .session_id
}

/// A plain GetSecret request.
pub fn get_req(name: &str, session: &str) -> sidecred::api::pb::GetSecretRequest {
    sidecred::api::pb::GetSecretRequest {
        name: name.into(),
        session_id: session.into(),
        ..Default::default()
    }
}

/// Lease count of a session as the admin API sees it; None once the session is gone.
pub async fn lease_count(sc: &Sidecar, session: &str) -> Option<u32> {
    let r = sc
        .admin()
        .await
        .list_sessions(sidecred::api::pb::ListSessionsRequest {})
        .await
        .unwrap()
        .into_inner();
    r.sessions
        .iter()
        .find(|s| s.session_id == session)
        .map(|s| s.lease_count)
}

/// stdout of a CLI run as text, asserting success.
pub fn ok_stdout(o: &Output) -> String {
    assert!(
        o.status.success(),
        "CLI failed ({}): {}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout.clone()).unwrap()
}

/// The `sidecred-error` code of a status.
pub fn err_code(s: &tonic::Status) -> String {
    s.metadata()
        .get("sidecred-error")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default()
}

/// A dev-backend config body with one static secret, one dynamic, one call-scoped, and open policy.
pub fn dev_body(extra_values: &str, extra: &str) -> String {
    format!(
        r#"
[backends.dev]
kind = "dev"
values = {{ "static/a" = "value-a-1", "short" = "short-lived" {extra_values} }}
dynamic_ttl = "60s"

[[secret]]
name = "app/a"
backend = "dev"
path = "static/a"
zone = "internal"
ttl = "60s"
grace = "2s"

[[secret]]
name = "app/short"
backend = "dev"
path = "short"
zone = "internal"
ttl = "1s"

[[secret]]
name = "db/dyn"
backend = "dev"
path = "db"
zone = "restricted"
scope = "session"
options = {{ dynamic = true }}

[[secret]]
name = "db/call"
backend = "dev"
path = "dbcall"
zone = "restricted"
scope = "call"
options = {{ dynamic = true }}

{extra}

[[policy.workload]]
name = "root-callers"
uids = [0]
secrets = ["*"]

[[policy.admin]]
name = "root-admin"
uids = [0]
actions = ["*"]
"#
    )
}

pub mod openbao;
pub mod postgres;
pub mod readers;

/// Runs `cmd` for its output, retrying while its executable is busy (ETXTBSY): a binary copied
/// by this test can still be open for writing in a child that another test thread forked
/// meanwhile, until that child's exec closes it.
pub fn output_retrying_busy(cmd: &mut Command) -> Output {
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        match cmd.output() {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && Instant::now() < until => {
                std::thread::sleep(Duration::from_millis(10))
            }
            r => return r.unwrap(),
        }
    }
}

/// curl as another uid against a Vault-compatible endpoint on a Unix socket (paths sent as
/// written); the body and the status code.
pub fn curl_vault_as(
    uid: u32,
    sock: &Path,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> (String, String) {
    use std::os::unix::process::CommandExt;
    let mut c = Command::new("curl");
    c.args([
        "-s",
        "--path-as-is",
        "-w",
        "\n%{http_code}",
        "--max-time",
        "10",
        "-X",
        method,
    ])
    .arg("--unix-socket")
    .arg(sock)
    .arg(format!("http://x{path}"))
    .uid(uid)
    .gid(uid);
    if let Some(t) = token {
        c.arg("-H").arg(format!("X-Vault-Token: {t}"));
    }
    let o = c.output().unwrap();
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", ""));
    (body.to_string(), code.to_string())
}
