//! Peers for the proxy tests: certificates made with the openssl CLI, a real nginx origin (TLS,
//! optionally requiring a client certificate, logging the Authorization it received), a real
//! squid egress proxy, and sidecred configured with `[proxy]`.

use crate::common::{free_port, wait_for, Sidecar};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub const CANARY: &str = "ghp-CANARY-proxy-value-7f3a9";
pub const JIRA: &str = "jira-CANARY-placeholder-51c2";

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A self-signed P-256 CA in `dir/NAME.pem` and `dir/NAME.key` (mode 0600).
pub fn make_ca(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let (c, k) = (format!("{name}.pem"), format!("{name}.key"));
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &k,
            "-out",
            &c,
            "-subj",
            &format!("/CN={name}"),
            "-days",
            "2",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
        ],
    );
    let key = dir.join(&k);
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    (dir.join(c), key)
}

/// A server leaf for localhost / 127.0.0.1 signed by `ca`.
pub fn make_leaf(dir: &Path, ca: &(PathBuf, PathBuf), name: &str) -> (PathBuf, PathBuf) {
    let (c, k, csr) = (
        format!("{name}.pem"),
        format!("{name}.key"),
        format!("{name}.csr"),
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &k,
            "-out",
            &csr,
            "-subj",
            "/CN=localhost",
        ],
    );
    std::fs::write(dir.join("ext.cnf"), "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n").unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            ca.0.to_str().unwrap(),
            "-CAkey",
            ca.1.to_str().unwrap(),
            "-CAcreateserial",
            "-out",
            &c,
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ],
    );
    (dir.join(c), dir.join(k))
}

/// A real nginx; killed on drop.
pub struct Nginx {
    pub dir: tempfile::TempDir,
    pub port: u16,
    child: Child,
}

/// How the origin is set up.
pub struct Origin<'a> {
    pub tls: Option<&'a (PathBuf, PathBuf)>,
    /// Trust anchors for client certificates (then one is required).
    pub client_ca: Option<&'a Path>,
    /// Only this source address may connect (others get 403).
    pub allow_only: Option<&'a str>,
}

impl Nginx {
    pub fn start(o: Origin<'_>) -> Nginx {
        Self::start_with(o, "", "")
    }

    /// A TLS origin that speaks HTTP/2 (ALPN h2) as well as HTTP/1.1.
    pub fn start_h2(leaf: &(PathBuf, PathBuf)) -> Nginx {
        let o = Origin {
            tls: Some(leaf),
            client_ca: None,
            allow_only: None,
        };
        Self::launch(o, "", "", true)
    }

    /// With extra lines in the `http` and `server` blocks.
    pub fn start_with(o: Origin<'_>, http_extra: &str, server_extra: &str) -> Nginx {
        Self::launch(o, http_extra, server_extra, false)
    }

    fn launch(o: Origin<'_>, http_extra: &str, server_extra: &str, h2: bool) -> Nginx {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port(false);
        let d = dir.path().display();
        let listen = match (o.tls.is_some(), h2) {
            (true, true) => format!("127.0.0.1:{port} ssl http2"),
            (true, false) => format!("127.0.0.1:{port} ssl"),
            _ => format!("127.0.0.1:{port}"),
        };
        let mut tls = String::new();
        if let Some((c, k)) = o.tls {
            tls = format!(
                "ssl_certificate {};\nssl_certificate_key {};\n",
                c.display(),
                k.display()
            );
        }
        if let Some(ca) = o.client_ca {
            tls.push_str(&format!(
                "ssl_client_certificate {};\nssl_verify_client on;\nssl_verify_depth 3;\n",
                ca.display()
            ));
        }
        let access = match o.allow_only {
            // At server level: runs before any location's `return`.
            Some(a) => format!("if ($remote_addr != \"{a}\") {{ return 403; }}\n"),
            None => String::new(),
        };
        let conf = format!(
            r#"daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 256; }}
http {{
  client_body_temp_path {d}/body;
  proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fastcgi;
  uwsgi_temp_path {d}/uwsgi;
  scgi_temp_path {d}/scgi;
  log_format seen '$remote_addr "$request" $status auth="$http_authorization" api="$http_x_api" client="$ssl_client_s_dn" pa="$http_proxy_authorization" proto=$server_protocol';
  access_log {d}/access.log seen;
  keepalive_requests 100000;
  {http_extra}
  server {{
    listen {listen};
    server_name localhost;
    {tls}
    {access}
    {server_extra}
    location /echo {{ default_type text/plain; return 200 "auth=$http_authorization api=$http_x_api\n"; }}
    location / {{ default_type text/plain; return 200 "origin-ok\n"; }}
  }}
}}
"#
        );
        std::fs::write(dir.path().join("nginx.conf"), conf).unwrap();
        let child = Command::new("/usr/sbin/nginx")
            .arg("-c")
            .arg(dir.path().join("nginx.conf"))
            .arg("-p")
            .arg(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("stderr.log")).unwrap())
            .spawn()
            .expect("start nginx (installed by scripts/peers.sh)");
        let up = wait_for(Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).ok()
        });
        let n = Nginx { dir, port, child };
        assert!(up.is_some(), "nginx did not listen: {}", n.errors());
        n
    }

    pub fn access_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default()
    }

    /// Waits until the access log has a line containing `needle`.
    pub fn logged(&self, needle: &str) -> bool {
        wait_for(Duration::from_secs(3), || {
            self.access_log().contains(needle).then_some(())
        })
        .is_some()
    }

    pub fn errors(&self) -> String {
        let mut s = std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default();
        s.push_str(
            &std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default(),
        );
        s
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A real squid forward proxy whose outgoing connections come from `outgoing`; killed on drop.
pub struct Squid {
    pub dir: tempfile::TempDir,
    pub port: u16,
    child: Child,
}

impl Squid {
    pub fn start(outgoing: &str) -> Squid {
        let dir = tempfile::tempdir().unwrap();
        // squid drops to its own user for logs: let it write here.
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o777),
        )
        .unwrap();
        let port = free_port(false);
        let d = dir.path().display();
        let conf = format!(
            "http_port 127.0.0.1:{port}\nacl CONNECT method CONNECT\nhttp_access allow all\n\
             tcp_outgoing_address {outgoing}\naccess_log stdio:{d}/access.log squid\ncache_log {d}/cache.log\n\
             pid_filename {d}/squid.pid\ncache deny all\ncoredump_dir {d}\nshutdown_lifetime 0 seconds\n\
             pinger_enable off\nhosts_file /etc/hosts\nnetdb_filename none\n"
        );
        std::fs::write(dir.path().join("squid.conf"), conf).unwrap();
        let child = Command::new("/usr/sbin/squid")
            .args(["-N", "-f"])
            .arg(dir.path().join("squid.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("stderr.log")).unwrap())
            .spawn()
            .expect("start squid (installed by scripts/peers.sh)");
        let up = wait_for(Duration::from_secs(20), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).ok()
        });
        let s = Squid { dir, port, child };
        assert!(up.is_some(), "squid did not listen: {}", s.logs());
        s
    }

    pub fn access_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default()
    }

    pub fn logs(&self) -> String {
        let mut s = std::fs::read_to_string(self.dir.path().join("cache.log")).unwrap_or_default();
        s.push_str(
            &std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default(),
        );
        s
    }
}

impl Drop for Squid {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// sidecred with `[proxy]` on `port` (the given proxy lines, rules and the rest of the body).
pub fn sidecar(port: u16, proxy: &str, body: &str) -> Sidecar {
    let text = format!("[proxy]\nlisten = \"127.0.0.1:{port}\"\n{proxy}\n{body}");
    let sc = Sidecar::builder(&text).log("trace").start();
    let up = wait_for(Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).ok()
    });
    assert!(up.is_some(), "proxy not listening:\n{}", sc.logs());
    sc
}

/// Opens a session through the proxy (as the caller running this test); returns (id, token).
pub fn open_session(port: u16) -> (String, String) {
    let (status, body) = raw(port, "POST /sidecred/v1/session HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    (
        v["session_id"].as_str().unwrap().into(),
        v["proxy_token"].as_str().unwrap().into(),
    )
}

/// Sends raw bytes and reads the whole answer: (status, body).
pub fn raw(port: u16, req: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(req.as_bytes()).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    parse(&out)
}

pub fn parse(raw: &[u8]) -> (u16, String) {
    let text = String::from_utf8_lossy(raw).to_string();
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return (0, text);
    };
    (
        head.split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0),
        body.to_string(),
    )
}

/// The proxy URL with the token in it.
pub fn proxy_url(port: u16, token: &str) -> String {
    format!("http://sidecred:{token}@127.0.0.1:{port}")
}

/// A command with a clean proxy environment: only what the test sets.
pub fn clean(cmd: &str) -> Command {
    let mut c = Command::new(cmd);
    for k in [
        "http_proxy",
        "https_proxy",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "no_proxy",
        "NO_PROXY",
        "ALL_PROXY",
        "all_proxy",
        "SSL_CERT_FILE",
        "REQUESTS_CA_BUNDLE",
        "CURL_CA_BUNDLE",
    ] {
        c.env_remove(k);
    }
    c.stdin(Stdio::null());
    c
}

/// curl through the proxy with only environment settings; (status, body, stderr).
pub fn curl(url: &str, proxy: &str, bundle: &Path, extra: &[&str]) -> (u16, String, String) {
    let out = clean("curl")
        .env("HTTPS_PROXY", proxy)
        .env("HTTP_PROXY", proxy)
        .env("CURL_CA_BUNDLE", bundle)
        .args(["-s", "-S", "--max-time", "15", "-w", "\n%{http_code}"])
        .args(extra)
        .arg(url)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (
        code.trim().parse().unwrap_or(0),
        body.trim_end().to_string(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

/// The Python in the peers venv (requests, httpx).
pub fn python() -> String {
    match std::env::var("SIDECRED_PEERS_DIR") {
        Ok(d) => format!("{d}/venv/bin/python"),
        Err(_) => "python3".into(),
    }
}
