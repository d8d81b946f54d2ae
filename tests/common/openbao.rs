//! A real OpenBao dev server on loopback (plain or TLS), restartable on the same port, with an
//! HTTP helper for seeding it as the root token.

use serde_json::{json, Value};
use sidecred::api::pb;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct OpenBao {
    pub port: u16,
    pub addr: String,
    pub root_token: String,
    pub dir: tempfile::TempDir,
    /// The CA bundle of a TLS server (vault-ca.pem).
    pub ca: Option<PathBuf>,
    tls: bool,
    child: Option<Child>,
    http: reqwest::Client,
}

fn bao_bin() -> String {
    std::env::var("SIDECRED_BAO")
        .expect("SIDECRED_BAO is not set: source ~/.cache/sidecred/peers/env.sh")
}

impl OpenBao {
    pub fn start() -> OpenBao {
        Self::launch(false, "root")
    }

    pub fn start_tls() -> OpenBao {
        Self::launch(true, "root")
    }

    /// A server whose root token is `token` (canary tests grep for it).
    pub fn start_with_root(token: &str) -> OpenBao {
        Self::launch(false, token)
    }

    fn launch(tls: bool, root: &str) -> OpenBao {
        let port = super::free_port(true);
        let scheme = if tls { "https" } else { "http" };
        let mut b = OpenBao {
            port,
            addr: format!("{scheme}://127.0.0.1:{port}"),
            root_token: root.into(),
            dir: tempfile::tempdir().unwrap(),
            ca: None,
            tls,
            child: None,
            http: reqwest::Client::new(),
        };
        b.spawn();
        b
    }

    /// Starts the dev server (fresh state) on the configured port and waits until it is unsealed.
    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("bao.log"))
            .unwrap();
        let mut cmd = Command::new(bao_bin());
        cmd.args(["server", "-dev", "-dev-no-store-token"])
            .arg(format!("-dev-root-token-id={}", self.root_token))
            .arg(format!("-dev-listen-address=127.0.0.1:{}", self.port))
            .env("HOME", self.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        if self.tls {
            let certs = self.dir.path().join("certs");
            std::fs::create_dir_all(&certs).unwrap();
            cmd.arg("-dev-tls")
                .arg(format!("-dev-tls-cert-dir={}", certs.display()));
            self.ca = Some(certs.join("vault-ca.pem"));
        }
        let mut child = cmd.spawn().expect("start bao");
        let ready = super::wait_for(Duration::from_secs(20), || {
            if let Ok(Some(s)) = child.try_wait() {
                panic!("bao exited early ({s}): {}", self.log());
            }
            if self.tls && !self.ca.as_ref().unwrap().exists() {
                return None;
            }
            std::net::TcpStream::connect(("127.0.0.1", self.port))
                .ok()
                .map(|_| ())
        });
        if ready.is_none() {
            let _ = child.kill();
            panic!("bao did not listen: {}", self.log());
        }
        self.child = Some(child);
        self.http = self.client();
        let addr = self.addr.clone();
        let http = self.http.clone();
        let ok = super::wait_for(Duration::from_secs(20), || {
            let http = http.clone();
            let url = format!("{addr}/v1/sys/health");
            let st = std::thread::spawn(move || {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap()
                    .block_on(async { http.get(url).send().await.map(|r| r.status().as_u16()) })
            })
            .join()
            .unwrap();
            (st.ok() == Some(200)).then_some(())
        });
        assert!(ok.is_some(), "bao never became healthy: {}", self.log());
    }

    fn client(&self) -> reqwest::Client {
        let mut b = reqwest::Client::builder().timeout(Duration::from_secs(10));
        if let Some(ca) = &self.ca {
            let pem = std::fs::read(ca).unwrap();
            b = b.tls_certs_merge(reqwest::Certificate::from_pem_bundle(&pem).unwrap());
        } else {
            b = b.tls_certs_only(Vec::new());
        }
        b.build().unwrap()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("bao.log")).unwrap_or_default()
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("running").id() as i32
    }

    /// SIGKILL: the server and all its state are gone.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Freezes (SIGSTOP) or thaws (SIGCONT) the server: connections hang instead of failing.
    pub fn freeze(&self, on: bool) {
        use nix::sys::signal::{kill, Signal};
        let sig = if on { Signal::SIGSTOP } else { Signal::SIGCONT };
        kill(nix::unistd::Pid::from_raw(self.pid()), sig).unwrap();
    }

    /// Calls the HTTP API as root; panics on an error status.
    pub async fn api(&self, method: &str, path: &str, body: Value) -> Value {
        self.api_as(&self.root_token.clone(), method, path, body)
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    /// Calls the HTTP API with `token`; Err carries the status and body.
    pub async fn api_as(
        &self,
        token: &str,
        method: &str,
        path: &str,
        body: Value,
    ) -> Result<Value, String> {
        let url = format!("{}/v1/{path}", self.addr);
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = self.http.request(m, url).header("X-Vault-Token", token);
        if !body.is_null() {
            req = req.body(serde_json::to_vec(&body).unwrap());
        }
        let resp = req.send().await.map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.map_err(|e| e.to_string())?;
        let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if (200..300).contains(&status) {
            Ok(v)
        } else {
            Err(format!("{status}: {v}"))
        }
    }

    pub async fn kv_put(&self, path: &str, data: Value) -> u64 {
        let r = self
            .api(
                "POST",
                &format!("secret/data/{path}"),
                json!({ "data": data }),
            )
            .await;
        r["data"]["version"].as_u64().unwrap()
    }

    pub async fn policy(&self, name: &str, hcl: &str) {
        self.api(
            "PUT",
            &format!("sys/policies/acl/{name}"),
            json!({ "policy": hcl }),
        )
        .await;
    }

    /// A token with the given policies (and no root), returned as a string.
    pub async fn token(&self, policies: &[&str], ttl: &str) -> String {
        let r = self
            .api(
                "POST",
                "auth/token/create",
                json!({ "policies": policies, "ttl": ttl }),
            )
            .await;
        r["auth"]["client_token"].as_str().unwrap().to_string()
    }

    /// Enables an engine or auth method; idempotent for fresh servers.
    pub async fn enable(&self, kind: &str, path: &str, what: &str) {
        let p = match kind {
            "auth" => format!("sys/auth/{path}"),
            _ => format!("sys/mounts/{path}"),
        };
        self.api("POST", &p, json!({ "type": what })).await;
    }

    /// Database engine at `database/` pointing at `pg`, with role `name` (ttls in seconds).
    pub async fn database_role(
        &self,
        pg: &super::postgres::Postgres,
        name: &str,
        ttl: u64,
        max: u64,
    ) {
        if self.api("GET", "sys/mounts", Value::Null).await["data"]["database/"].is_null() {
            self.enable("secrets", "database", "database").await;
            self.api(
                "POST",
                "database/config/pg",
                json!({
                    "plugin_name": "postgresql-database-plugin",
                    "connection_url": format!("postgresql://{{{{username}}}}:{{{{password}}}}@127.0.0.1:{}/postgres?sslmode=disable", pg.port),
                    "username": "postgres",
                    "password": super::postgres::SUPERUSER_PASSWORD,
                    "allowed_roles": "*",
                    "verify_connection": true,
                }),
            )
            .await;
        }
        self.api(
            "POST",
            &format!("database/roles/{name}"),
            json!({
                "db_name": "pg",
                "creation_statements": [
                    "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';",
                    "GRANT pg_read_all_data TO \"{{name}}\";"
                ],
                "revocation_statements": [
                    "REVOKE pg_read_all_data FROM \"{{name}}\";",
                    "DROP ROLE IF EXISTS \"{{name}}\";"
                ],
                "default_ttl": ttl,
                "max_ttl": max,
            }),
        )
        .await;
    }
}

impl Drop for OpenBao {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.freeze(false);
        }
        self.kill();
    }
}

/// A `[backends.bao]` table authenticating with a token file.
pub fn token_file_backend(bao: &OpenBao, token_file: &std::path::Path, extra: &str) -> String {
    let ca = bao
        .ca
        .as_ref()
        .map(|c| format!("ca_file = \"{}\"\n", c.display()))
        .unwrap_or_default();
    format!(
        "[backends.bao]\nkind = \"openbao\"\naddress = \"{}\"\n{ca}{extra}\n[backends.bao.auth]\nmethod = \"token_file\"\npath = \"{}\"\n",
        bao.addr,
        token_file.display()
    )
}

/// An open policy for root (uid 0) callers and admins, appended to test configs.
pub const OPEN_POLICY: &str = r#"
[[policy.workload]]
name = "root-callers"
uids = [0]
secrets = ["*"]

[[policy.admin]]
name = "root-admin"
uids = [0]
actions = ["*"]
"#;

// Client-side helpers shared by the OpenBao test files.

pub use super::Broker;

pub async fn open(b: &mut Broker) -> String {
    super::open_labeled(b, "bao-test").await
}

pub async fn get(
    b: &mut Broker,
    sid: &str,
    name: &str,
    version: &str,
) -> Result<pb::GetSecretResponse, tonic::Status> {
    b.get_secret(pb::GetSecretRequest {
        name: name.into(),
        session_id: sid.into(),
        version: version.into(),
        ..Default::default()
    })
    .await
    .map(|r| r.into_inner())
}

pub fn write_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    // Credential files must be owner-only, as sidecred checks.
    std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    p
}

pub fn kv_secret(name: &str, path: &str, extra: &str) -> String {
    format!(
        "[[secret]]\nname = \"{name}\"\nbackend = \"bao\"\npath = \"{path}\"\nzone = \"internal\"\n{extra}\n"
    )
}

pub const KV_READ: &str = r#"path "secret/data/app/*" { capabilities = ["read", "create", "update"] }
path "secret/metadata/app/*" { capabilities = ["read"] }"#;

/// Polls an async condition until true or the deadline.
pub async fn wait_for_async<F, Fut>(limit: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}
