//! Unmodified clients through the proxy: the value reaches the origin, never the client or
//! sidecred's logs.

use crate::common::{free_port, Sidecar};
use crate::support::*;
use std::path::{Path, PathBuf};

/// Secrets, policy and the dev backend every proxy test uses. Root may read everything; uid
/// 65534 (nobody) may open sessions and read `tools/gh`.
pub fn body(extra: &str) -> String {
    format!(
        r#"
[backends.dev]
kind = "dev"
values = {{ "gh" = "{CANARY}", "jira" = "{JIRA}", "crlf" = "a\r\nX-Evil: 1", "vault" = "restricted-CANARY-9e1" }}

[[secret]]
name = "tools/gh"
backend = "dev"
path = "gh"
zone = "internal"

[[secret]]
name = "tools/ext"
backend = "dev"
path = "gh"
zone = "external"

[[secret]]
name = "tools/jira"
backend = "dev"
path = "jira"
zone = "internal"

[[secret]]
name = "tools/crlf"
backend = "dev"
path = "crlf"
zone = "internal"

[[secret]]
name = "tools/call"
backend = "dev"
path = "callcred"
zone = "internal"
scope = "call"
options = {{ dynamic = true }}

[[secret]]
name = "tools/vault"
backend = "dev"
path = "vault"
zone = "restricted"

{extra}

[[policy.workload]]
name = "root"
uids = [0]
secrets = ["*"]
zones = ["internal", "external"]

[[policy.workload]]
name = "nobody"
uids = [65534]
secrets = ["tools/gh"]

[[policy.admin]]
name = "root-admin"
uids = [0]
actions = ["*"]
"#
    )
}

/// An https origin with a certificate from its own CA; sidecred trusts that CA upstream.
pub struct World {
    pub tmp: tempfile::TempDir,
    pub origin_ca: PathBuf,
    pub origin: Nginx,
    pub port: u16,
    pub bundle: PathBuf,
}

impl World {
    pub fn new() -> World {
        let tmp = tempfile::tempdir().unwrap();
        let ca = make_ca(tmp.path(), "origin-ca");
        let leaf = make_leaf(tmp.path(), &ca, "origin");
        let origin = Nginx::start(Origin {
            tls: Some(&leaf),
            client_ca: None,
            allow_only: None,
        });
        World {
            bundle: tmp.path().join("sidecred-bundle.pem"),
            origin_ca: ca.0,
            tmp,
            origin,
            port: free_port(false),
        }
    }

    /// `[proxy]` lines shared by the tests (bundle file, upstream CA).
    pub fn proxy_lines(&self, extra: &str) -> String {
        format!(
            "ca_bundle_file = \"{}\"\nupstream_ca_file = \"{}\"\n{extra}",
            self.bundle.display(),
            self.origin_ca.display()
        )
    }
}

pub fn gh_rule(port: u16) -> String {
    format!(
        "[[proxy.rule]]\nname = \"echo\"\nhost = \"localhost\"\nport = {port}\npath_prefix = \"/echo\"\nplaceholders = [\"tools/jira\"]\n\
         [[proxy.rule]]\nname = \"gh\"\nhost = \"localhost\"\nport = {port}\nsecret = \"tools/gh\"\nheader = \"Authorization: Bearer {{value}}\"\n"
    )
}

/// Nothing sidecred wrote (logs at trace, audit) contains a value.
pub fn assert_no_leak(sc: &Sidecar) {
    for v in [CANARY, JIRA] {
        assert!(!sc.logs().contains(v), "a value is in sidecred's logs");
        assert!(!sc.audit_text().contains(v), "a value is in the audit log");
    }
}

#[test]
fn curl_header_injection_over_https_reaches_nginx() {
    let w = World::new();
    let sc = sidecar(w.port, &w.proxy_lines(""), &body(&gh_rule(w.origin.port)));
    let (sid, token) = open_session(w.port);
    assert!(!token.contains(&sid));
    let url = format!("https://localhost:{}/repos", w.origin.port);
    let (status, out, err) = curl(&url, &proxy_url(w.port, &token), &w.bundle, &[]);
    assert_eq!(status, 200, "{out} {err}\n{}", sc.logs());
    assert_eq!(out, "origin-ok");
    assert!(
        w.origin.logged(&format!("auth=\"Bearer {CANARY}\"")),
        "{}",
        w.origin.access_log()
    );
    // The client's own Proxy-Authorization never reaches the origin.
    assert!(
        w.origin.access_log().contains("pa=\"-\""),
        "{}",
        w.origin.access_log()
    );
    assert!(!out.contains(CANARY) && !err.contains(CANARY));
    // One audit line naming session, rule, secret and version; never the value.
    assert!(sc.audit_has("\"event\":\"proxy_request\""));
    let ev = sc
        .audit_events()
        .into_iter()
        .find(|e| e["event"] == "proxy_request" && e["rule"] == "gh")
        .expect("audit line for the request");
    assert_eq!(ev["outcome"], "ok");
    assert_eq!(ev["secret"], "tools/gh");
    assert!(ev["version"].as_str().is_some_and(|v| !v.is_empty()));
    let d = ev["detail"].as_str().unwrap();
    assert!(
        d.contains("host=localhost")
            && d.contains("status=200")
            && d.contains("bytes=10")
            && d.contains("latency_us="),
        "{d}"
    );
    assert_no_leak(&sc);
}

#[test]
fn python_requests_and_httpx_through_env_only() {
    let w = World::new();
    let sc = sidecar(w.port, &w.proxy_lines(""), &body(&gh_rule(w.origin.port)));
    let (_, token) = open_session(w.port);
    let url = format!("https://localhost:{}/py", w.origin.port);
    let script = r#"
import os, sys, requests, httpx
url = sys.argv[1]
r = requests.get(url, timeout=15)
print("requests", r.status_code, r.text.strip())
with httpx.Client(timeout=15) as c:
    for _ in range(3):
        r = c.get(url)
        print("httpx", r.status_code, r.text.strip())
"#;
    let proxy = proxy_url(w.port, &token);
    let out = clean(&python())
        .env("HTTPS_PROXY", &proxy)
        .env("SSL_CERT_FILE", &w.bundle)
        .env("REQUESTS_CA_BUNDLE", &w.bundle)
        .args(["-c", script, &url])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}\n{err}\n{}", sc.logs());
    assert_eq!(text.matches(" 200 origin-ok").count(), 4, "{text}");
    assert!(w.origin.logged("\"GET /py HTTP/1.1\" 200 auth=\"Bearer "));
    assert_eq!(
        w.origin
            .access_log()
            .matches(&format!("Bearer {CANARY}"))
            .count(),
        4
    );
    assert!(!text.contains(CANARY) && !err.contains(CANARY));
    assert_no_leak(&sc);
}

#[test]
fn placeholder_reaches_origin_and_its_echo_is_redacted() {
    let w = World::new();
    let sc = sidecar(w.port, &w.proxy_lines(""), &body(&gh_rule(w.origin.port)));
    let (_, token) = open_session(w.port);
    let url = format!("https://localhost:{}/echo", w.origin.port);
    let hdr = ["-H", "X-Api: key={{sidecred:tools/jira}};"];
    let (status, out, err) = curl(&url, &proxy_url(w.port, &token), &w.bundle, &hdr);
    assert_eq!(status, 200, "{out} {err}\n{}", sc.logs());
    // The origin got the value; its echo reached the client redacted.
    assert!(
        w.origin.logged(&format!("api=\"key={JIRA};\"")),
        "{}",
        w.origin.access_log()
    );
    assert_eq!(out, "auth= api=key=[REDACTED];");
    assert_no_leak(&sc);
    // A placeholder the rule does not list is refused and never resolved.
    let hdr = ["-H", "X-Api: {{sidecred:tools/gh}}"];
    let (status, out, _) = curl(&url, &proxy_url(w.port, &token), &w.bundle, &hdr);
    assert_eq!(status, 403, "{out}");
    assert!(
        out.contains("placeholder `tools/gh` is not allowed"),
        "{out}"
    );
}

/// An origin that requires a client certificate signed by the CA behind a `kind = "ca"` secret.
#[test]
fn mtls_client_certificate_from_the_ca_backend() {
    let w = World::new();
    let ca = make_ca(w.tmp.path(), "client-ca");
    let origin = Nginx::start(Origin {
        tls: Some(&make_leaf(
            w.tmp.path(),
            &make_ca(w.tmp.path(), "o2"),
            "o2leaf",
        )),
        client_ca: Some(&ca.0),
        allow_only: None,
    });
    // The origin above uses another CA: trust both upstream.
    let both = w.tmp.path().join("both.pem");
    let mut pem = std::fs::read(&w.origin_ca).unwrap();
    pem.extend(std::fs::read(w.tmp.path().join("o2.pem")).unwrap());
    std::fs::write(&both, pem).unwrap();
    let extra = format!(
        r#"[backends.ca]
kind = "ca"
trust_domain = "test.example"
cert_file = "{}"
key_file = "{}"

[[secret]]
name = "mtls/router"
backend = "ca"
path = "router"
zone = "internal"
scope = "session"

[[proxy.rule]]
name = "build-api"
host = "localhost"
port = {}
client_cert = "mtls/router"
"#,
        ca.0.display(),
        ca.1.display(),
        origin.port
    );
    let lines = format!(
        "ca_bundle_file = \"{}\"\nupstream_ca_file = \"{}\"\n",
        w.bundle.display(),
        both.display()
    );
    let mut b = body(&extra);
    b = b.replace(
        "secrets = [\"*\"]\nzones",
        "secrets = [\"*\"]\nspiffe_id = \"spiffe://test.example/router\"\nzones",
    );
    let sc = sidecar(w.port, &lines, &b);
    let (_, token) = open_session(w.port);
    let url = format!("https://localhost:{}/build", origin.port);
    let (status, out, err) = curl(&url, &proxy_url(w.port, &token), &w.bundle, &[]);
    assert_eq!(
        status,
        200,
        "{out} {err}\n{}\n{}",
        sc.logs(),
        origin.errors()
    );
    assert!(origin.logged("client=\""), "{}", origin.access_log());
    assert!(
        !origin.access_log().contains("client=\"-\""),
        "{}",
        origin.access_log()
    );
    // Without the rule's certificate the origin refuses: a direct curl has none.
    let direct = clean("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
        .arg(w.tmp.path().join("o2.pem"))
        .arg(&url)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&direct.stdout), "400");
}

/// `external` destinations go through the corporate egress proxy (squid); the origin accepts
/// only squid's address, so the direct route is refused.
#[test]
fn external_zone_goes_through_squid() {
    let w = World::new();
    let ca = make_ca(w.tmp.path(), "ext-ca");
    let leaf = make_leaf(w.tmp.path(), &ca, "ext");
    let origin = Nginx::start(Origin {
        tls: Some(&leaf),
        client_ca: None,
        allow_only: Some("127.0.0.3"),
    });
    let squid = Squid::start("127.0.0.3");
    let rule = format!(
        "[[proxy.rule]]\nname = \"ext\"\nhost = \"localhost\"\nport = {}\nsecret = \"tools/ext\"\nheader = \"Authorization: token {{value}}\"\n",
        origin.port
    );
    let lines = format!(
        "ca_bundle_file = \"{}\"\nupstream_ca_file = \"{}\"\negress_proxy = \"127.0.0.1:{}\"\n",
        w.bundle.display(),
        ca.0.display(),
        squid.port
    );
    let sc = sidecar(w.port, &lines, &body(&rule));
    let (_, token) = open_session(w.port);
    let url = format!("https://localhost:{}/ext", origin.port);
    let (status, out, err) = curl(&url, &proxy_url(w.port, &token), &w.bundle, &[]);
    assert_eq!(status, 200, "{out} {err}\n{}\n{}", sc.logs(), squid.logs());
    assert!(
        origin.logged(&format!(
            "127.0.0.3 \"GET /ext HTTP/1.1\" 200 auth=\"token {CANARY}\""
        )),
        "{}",
        origin.access_log()
    );
    assert!(
        crate::common::wait_for(std::time::Duration::from_secs(5), || squid
            .access_log()
            .contains(&format!("CONNECT localhost:{}", origin.port))
            .then_some(()))
        .is_some(),
        "squid log: {}",
        squid.access_log()
    );
    // Direct, the origin refuses.
    let direct = clean("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
        .arg(&ca.0)
        .arg(&url)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&direct.stdout), "403");
    assert!(!squid.access_log().contains(CANARY));
    assert_no_leak(&sc);
    let _ = Path::new("");
}

/// HTTP/2 upstream where the origin speaks it (ALPN), the agent's side staying HTTP/1.1.
#[test]
fn http2_upstream_where_the_origin_speaks_it() {
    let w = World::new();
    let ca = (w.origin_ca.clone(), w.tmp.path().join("origin-ca.key"));
    let leaf = make_leaf(w.tmp.path(), &ca, "h2leaf");
    let origin = Nginx::start_h2(&leaf);
    let sc = sidecar(w.port, &w.proxy_lines(""), &body(&gh_rule(origin.port)));
    let (_, token) = open_session(w.port);
    let url = format!("https://localhost:{}/h2?q=1", origin.port);
    for _ in 0..3 {
        let (status, out, err) = curl(&url, &proxy_url(w.port, &token), &w.bundle, &[]);
        assert_eq!(status, 200, "{out} {err}\n{}", sc.logs());
        assert_eq!(out, "origin-ok");
    }
    assert!(
        origin.logged(&format!(
            "\"GET /h2?q=1 HTTP/2.0\" 200 auth=\"Bearer {CANARY}\""
        )),
        "{}",
        origin.access_log()
    );
    assert_no_leak(&sc);
}

/// The agents' CA bundle is also served on the admin socket: grpcurl fetches it, it is the
/// file sidecred wrote, and curl trusts sidecred's TLS termination with it alone.
#[test]
fn the_bundle_on_the_admin_socket_is_the_one_agents_trust() {
    let w = World::new();
    let sc = sidecar(w.port, &w.proxy_lines(""), &body(&gh_rule(w.origin.port)));
    let grpcurl = std::env::var("SIDECRED_GRPCURL").expect("SIDECRED_GRPCURL (scripts/test)");
    let out = std::process::Command::new(&grpcurl)
        .args(["-plaintext", "-unix", sc.admin.to_str().unwrap()])
        .arg("sidecred.v1.Admin/GetProxyBundle")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let pem = v["bundlePem"].as_str().expect("bundlePem").to_string();
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"), "{pem}");
    assert_eq!(pem, std::fs::read_to_string(&w.bundle).unwrap());
    let from_admin = w.tmp.path().join("from-admin.pem");
    std::fs::write(&from_admin, &pem).unwrap();
    let (_, token) = open_session(w.port);
    let url = format!("https://localhost:{}/repos", w.origin.port);
    let (status, out, err) = curl(&url, &proxy_url(w.port, &token), &from_admin, &[]);
    assert_eq!(status, 200, "{out} {err}");
    assert!(w.origin.logged(&format!("auth=\"Bearer {CANARY}\"")));
}
