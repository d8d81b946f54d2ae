//! The internal CA through the real binary: GetSecret certificates used by openssl for mTLS,
//! CSR signing under policy, revocation into the CRL, and CA rotation with overlap.

mod common;

use common::ca::*;
use sidecred::api::pb;
use sidecred::api::spiffe_pb as wpb;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

/// Leaf, intermediates and key files from a GetSecret PEM bundle.
struct Files {
    leaf: std::path::PathBuf,
    chain: std::path::PathBuf,
    key: std::path::PathBuf,
    leaf_der: Vec<u8>,
}

fn split_bundle(dir: &Path, tag: &str, text: &str) -> Files {
    let certs = pem_blocks(text, "CERTIFICATE");
    let keys = pem_blocks(text, "PRIVATE KEY");
    assert_eq!((certs.len(), keys.len()), (2, 1), "leaf, intermediate, key");
    let leaf_der = x509_parser::pem::parse_x509_pem(certs[0].as_bytes())
        .unwrap()
        .1
        .contents;
    Files {
        leaf: write(dir, &format!("{tag}-leaf.pem"), &certs[0]),
        chain: write(dir, &format!("{tag}-chain.pem"), &certs[1..].concat()),
        key: write(dir, &format!("{tag}-key.pem"), &keys[0]),
        leaf_der,
    }
}

async fn get_cert(ca: &CaSidecar, name: &str, dir: &Path, tag: &str) -> (String, Files) {
    let mut b = ca.sc.broker().await;
    let sid = session(&mut b).await;
    let r = b
        .get_secret(pb::GetSecretRequest {
            session_id: sid.clone(),
            name: name.into(),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("{e:?}\n{}", ca.sc.logs()))
        .into_inner();
    let text = String::from_utf8(r.value).unwrap();
    (sid, split_bundle(dir, tag, &text))
}

/// The trust bundle as the SPIFFE socket serves it, written as PEM.
async fn bundle(ca: &CaSidecar, dir: &Path, tag: &str) -> (std::path::PathBuf, usize) {
    let first = first_svid(&ca.spiffe).await;
    let roots = split_der(&first.svids[0].bundle);
    (
        write(dir, &format!("{tag}-bundle.pem"), &pem_all(&roots)),
        roots.len(),
    )
}

/// The child, its log, and its stdin held open (s_server stops at EOF on stdin).
struct Server {
    child: Child,
    log: std::path::PathBuf,
    _stdin: Option<std::process::ChildStdin>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `openssl s_server` requiring a client certificate from `bundle`; one connection.
fn s_server(dir: &Path, f: &Files, bundle: &Path) -> (Server, u16) {
    let port = common::free_port(false);
    let out = dir.join(format!("s_server-{port}.log"));
    let log = std::fs::File::create(&out).unwrap();
    let child = Command::new("openssl")
        .args(["s_server", "-accept"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("-cert")
        .arg(&f.leaf)
        .arg("-cert_chain")
        .arg(&f.chain)
        .arg("-key")
        .arg(&f.key)
        .arg("-CAfile")
        .arg(bundle)
        .args(["-Verify", "2", "-verify_return_error", "-naccept", "1"])
        .stdin(Stdio::piped())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let mut child = child;
    let stdin = child.stdin.take();
    let ok = common::wait_for(Duration::from_secs(10), || {
        std::fs::read_to_string(&out)
            .unwrap_or_default()
            .contains("ACCEPT")
            .then_some(())
    });
    assert!(ok.is_some(), "s_server did not start");
    (
        Server {
            child,
            log: out,
            _stdin: stdin,
        },
        port,
    )
}

/// Connects with `s_client`, sends a line; returns what the server logged.
fn s_client(server: Server, port: u16, f: &Files, bundle: &Path) -> String {
    let mut c = Command::new("openssl")
        .args(["s_client", "-connect"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("-cert")
        .arg(&f.leaf)
        .arg("-cert_chain")
        .arg(&f.chain)
        .arg("-key")
        .arg(&f.key)
        .arg("-CAfile")
        .arg(bundle)
        .args(["-verify_return_error", "-verify", "2"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = c.stdin.take().unwrap();
        let _ = stdin.write_all(b"ping-from-client\n");
        std::thread::sleep(Duration::from_millis(500));
    }
    let end = Instant::now() + Duration::from_secs(10);
    while c.try_wait().unwrap().is_none() && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = c.kill();
    let o = c.wait_with_output().unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let log = std::fs::read_to_string(&server.log).unwrap_or_default();
    format!(
        "{log}\n--- client ---\n{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn get_secret_certificates_do_mtls_with_openssl_and_a_foreign_ca_is_refused() {
    let ca = start("", "");
    let dir = tempfile::tempdir().unwrap();
    let (_, srv) = get_cert(&ca, "mtls/web", dir.path(), "srv").await;
    let (_, cli) = get_cert(&ca, "mtls/router", dir.path(), "cli").await;
    assert_eq!(uri_sans(&srv.leaf_der), vec![ROOT_ID.to_string()]);
    let (bundle_path, n) = bundle(&ca, dir.path(), "b").await;
    assert_eq!(n, 1);
    for f in [&srv, &cli] {
        let v = verify(&bundle_path, &f.chain, &f.leaf, &["-purpose", "sslclient"]);
        assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stderr));
    }
    let (server, port) = s_server(dir.path(), &srv, &bundle_path);
    let out = s_client(server, port, &cli, &bundle_path);
    assert!(out.contains("ping-from-client"), "mTLS failed:\n{out}");

    // A client certificate from another CA is refused by the server.
    let now = SystemTime::now();
    let other =
        sidecred::backend::ca::issuer::generate(9, "evil.example", now, Duration::from_secs(600))
            .unwrap();
    let leaf = sidecred::backend::ca::issuer::issue(
        &other,
        &sidecred::backend::ca::issuer::LeafSpec {
            spiffe_id: "spiffe://evil.example/x",
            dns: &[],
            ips: &[],
            now,
            not_after: now + Duration::from_secs(60),
        },
    )
    .unwrap();
    let evil = Files {
        leaf: write(dir.path(), "evil-leaf.pem", &pem("CERTIFICATE", &leaf.cert)),
        chain: write(
            dir.path(),
            "evil-chain.pem",
            &pem_all(&[other.chain[0].to_vec()]),
        ),
        key: write(
            dir.path(),
            "evil-key.pem",
            &pem("PRIVATE KEY", leaf.key.expose()),
        ),
        leaf_der: leaf.cert.to_vec(),
    };
    let (server, port) = s_server(dir.path(), &srv, &bundle_path);
    let out = s_client(server, port, &evil, &bundle_path);
    assert!(
        !out.contains("ping-from-client"),
        "foreign CA accepted:\n{out}"
    );
    assert!(out.to_lowercase().contains("verify"), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn revoked_session_certificates_appear_in_the_crl() {
    let ca = start("", "");
    let dir = tempfile::tempdir().unwrap();
    let (sid, f) = get_cert(&ca, "mtls/router", dir.path(), "r").await;
    let (_, keep) = get_cert(&ca, "mtls/router", dir.path(), "k").await;
    let serial = |der: &[u8]| {
        let (_, c) = x509_parser::parse_x509_certificate(der).unwrap();
        hex::encode(c.raw_serial())
    };
    let mut admin = ca.sc.admin().await;
    admin
        .revoke_session(pb::RevokeSessionRequest {
            session_id: sid,
            reason: "test".into(),
        })
        .await
        .unwrap();
    let crl = admin
        .get_crl(pb::GetCrlRequest {
            name: "mtls/router".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(crl.revoked_serials.contains(&serial(&f.leaf_der)));
    assert!(!crl.revoked_serials.contains(&serial(&keep.leaf_der)));
    let (_, parsed) = x509_parser::parse_x509_crl(&crl.crls[0].der).unwrap();
    let listed: Vec<String> = parsed
        .iter_revoked_certificates()
        .map(|c| hex::encode(c.raw_serial()))
        .collect();
    assert_eq!(listed, vec![serial(&f.leaf_der)]);
    // The CRL file says the same, and openssl refuses the revoked certificate with it.
    let file = std::fs::read_to_string(&ca.crl_file).unwrap();
    assert_eq!(file, crl.crls[0].pem);
    let (bundle_path, _) = bundle(&ca, dir.path(), "b").await;
    let v = verify(
        &bundle_path,
        &f.chain,
        &f.leaf,
        &["-crl_check", "-CRLfile", ca.crl_file.to_str().unwrap()],
    );
    assert!(!v.status.success());
    assert!(
        String::from_utf8_lossy(&v.stdout).contains("revoked")
            || String::from_utf8_lossy(&v.stderr).contains("revoked")
    );
    let v = verify(
        &bundle_path,
        &keep.chain,
        &keep.leaf,
        &["-crl_check", "-CRLfile", ca.crl_file.to_str().unwrap()],
    );
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stderr));
}

#[tokio::test(flavor = "multi_thread")]
async fn ca_rotation_keeps_old_and_new_interoperating_within_the_overlap() {
    let ca = start("rotation_stage = \"2s\"", "");
    let dir = tempfile::tempdir().unwrap();
    // A bundle watcher records every step.
    let mut watch = spiffe_client(&ca.spiffe)
        .await
        .fetch_x509_bundles(wpb::X509BundlesRequest {})
        .await
        .unwrap()
        .into_inner();
    let sizes = tokio::spawn(async move {
        let mut sizes = Vec::new();
        while let Ok(Ok(Some(m))) =
            tokio::time::timeout(Duration::from_secs(15), watch.message()).await
        {
            let n = m
                .bundles
                .values()
                .map(|b| split_der(b).len())
                .sum::<usize>();
            sizes.push(n);
            if sizes.ends_with(&[2, 1]) {
                break;
            }
        }
        sizes
    });
    let (_, old_client) = get_cert(&ca, "mtls/router", dir.path(), "old").await;
    let old_issuer = std::fs::read(&old_client.chain).unwrap();

    let mut admin = ca.sc.admin().await;
    let rotated = admin
        .rotate(pb::RotateRequest {
            name: "mtls/router".into(),
            grace_seconds: 8,
            value: vec![],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (rotated.version.as_str(), rotated.previous_version.as_str()),
        ("2", "1")
    );
    // Step 1: the new CA is trusted before it signs anything.
    let (held_bundle, n) = bundle(&ca, dir.path(), "held").await;
    assert_eq!(n, 2, "old and new CA in the bundle");
    let (_, still_old) = get_cert(&ca, "mtls/router", dir.path(), "still").await;
    assert_eq!(std::fs::read(&still_old.chain).unwrap(), old_issuer);
    // Step 2: after the stage delay the new CA signs.
    let mut new_server = None;
    for i in 0..40 {
        let (_, f) = get_cert(&ca, "mtls/web", dir.path(), &format!("new{i}")).await;
        if std::fs::read(&f.chain).unwrap() != old_issuer {
            new_server = Some(f);
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let new_server = new_server.expect("the new CA signs after the stage delay");
    // A client holding the bundle from step 1 and an old-CA certificate talks to a new-CA server.
    let (server, port) = s_server(dir.path(), &new_server, &held_bundle);
    let out = s_client(server, port, &old_client, &held_bundle);
    assert!(
        out.contains("ping-from-client"),
        "overlap mTLS failed:\n{out}"
    );
    // Step 3: after the grace window the old CA leaves the bundle.
    let end = Instant::now() + Duration::from_secs(12);
    while bundle(&ca, dir.path(), "late").await.1 != 1 {
        assert!(Instant::now() < end, "old CA still trusted after grace");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let sizes = sizes.await.unwrap();
    assert_eq!(sizes.first(), Some(&1), "{sizes:?}");
    assert!(sizes.windows(2).any(|w| w == [1, 2]), "{sizes:?}");
    assert_eq!(sizes.last(), Some(&1), "{sizes:?}");
}

/// The middle of a PEM block's base64: distinctive, and never in a log line by chance.
fn canary(pem_text: &str) -> String {
    let body: String = pem_text
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    body[body.len() / 4..body.len() / 4 + 40].to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn private_keys_and_tokens_never_reach_logs_or_audit() {
    let ca = start_logged("", "", "trace");
    let dir = tempfile::tempdir().unwrap();
    let (_, f) = get_cert(&ca, "mtls/router", dir.path(), "c").await;
    let key_pem = std::fs::read_to_string(&f.key).unwrap();
    let svid = first_svid(&ca.spiffe).await;
    let svid_key = pem("PRIVATE KEY", &svid.svids[0].x509_svid_key);
    let jwt = spiffe_client(&ca.spiffe)
        .await
        .fetch_jwtsvid(wpb::JwtsvidRequest {
            audience: vec!["svc".into()],
            spiffe_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .svids[0]
        .svid
        .clone();
    let jwt_sig = jwt.rsplit('.').next().unwrap().to_string();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (logs, audit) = (ca.sc.logs(), ca.sc.audit_text());
    assert!(logs.contains("DEBUG"), "verbose logging is on");
    for secret in [canary(&key_pem), canary(&svid_key), jwt_sig] {
        assert!(!logs.contains(&secret), "secret material in logs");
        assert!(!audit.contains(&secret), "secret material in audit");
    }
}

#[test]
fn ca_example_config_loads_files_and_refuses_a_readable_key() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let ca = sidecred::backend::ca::issuer::generate(
        1,
        "example.org",
        SystemTime::now(),
        Duration::from_secs(3600),
    )
    .unwrap();
    let certs = [ca.chain[0].to_vec(), ca.roots[0].to_vec()];
    let cert = write(dir.path(), "ca.pem", &pem_all(&certs));
    let key = write(dir.path(), "ca.key", &ca.issuer.key().serialize_pem());
    let check = |mode: u32| {
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(mode)).unwrap();
        Command::new(common::BIN)
            .args(["check-config", "config/ca.toml"])
            .env("SIDECRED_CA_CERT", &cert)
            .env("SIDECRED_CA_KEY", &key)
            .output()
            .unwrap()
    };
    let ok = check(0o600);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let bad = check(0o640);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("group or world"));
}

/// SIGHUP rebuilds the catalog but keeps the CA itself: the same issuing key, the same deny list.
/// A reload that changes a setting read only at start is refused and names it.
#[tokio::test(flavor = "multi_thread")]
async fn reload_keeps_the_ca_and_its_deny_list_and_refuses_static_changes() {
    let ca = start("", "");
    let dir = tempfile::tempdir().unwrap();
    let (sid, before) = get_cert(&ca, "mtls/router", dir.path(), "b").await;
    let serial = |der: &[u8]| {
        let (_, c) = x509_parser::parse_x509_certificate(der).unwrap();
        hex::encode(c.raw_serial())
    };
    let issuer = |der: &[u8]| {
        let (_, c) = x509_parser::parse_x509_certificate(der).unwrap();
        c.issuer().to_string()
    };
    let bundle_before = split_der(&first_svid(&ca.spiffe).await.svids[0].bundle);
    let mut admin = ca.sc.admin().await;
    admin
        .revoke_session(pb::RevokeSessionRequest {
            session_id: sid,
            reason: "test".into(),
        })
        .await
        .unwrap();
    let original = std::fs::read_to_string(&ca.sc.config).unwrap();
    let extra = "\n[[secret]]\nname = \"mtls/new\"\nbackend = \"ca\"\npath = \"new\"\nzone = \"internal\"\nscope = \"session\"\n";
    std::fs::write(&ca.sc.config, format!("{original}{extra}")).unwrap();
    ca.sc.signal(nix::sys::signal::Signal::SIGHUP);
    let reloaded = common::wait_for(Duration::from_secs(5), || {
        let o = ca.sc.cli(&["status", "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).ok()?;
        (v["config_generation"] == 2).then_some(())
    });
    assert!(reloaded.is_some(), "no reload:\n{}", ca.sc.logs());
    let crl = admin
        .get_crl(pb::GetCrlRequest {
            name: "mtls/router".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        crl.revoked_serials.contains(&serial(&before.leaf_der)),
        "the deny list survived the reload: {:?}",
        crl.revoked_serials
    );
    let (_, after) = get_cert(&ca, "mtls/new", dir.path(), "a").await;
    assert_eq!(
        issuer(&after.leaf_der),
        issuer(&before.leaf_der),
        "the same CA issues after the reload"
    );
    let bundle_after = split_der(&first_svid(&ca.spiffe).await.svids[0].bundle);
    assert_eq!(bundle_after, bundle_before, "the trust bundle is unchanged");

    // A setting read only at start: refused, named, and the running config keeps serving.
    let moved = original.replacen("[server]", "[server]\nmax_connections = 7", 1);
    std::fs::write(&ca.sc.config, format!("{moved}{extra}")).unwrap();
    ca.sc.signal(nix::sys::signal::Signal::SIGHUP);
    let status = common::wait_for(Duration::from_secs(5), || {
        let out = String::from_utf8(ca.sc.cli(&["status"]).stdout).ok()?;
        out.contains("CONFIG RELOAD REJECTED").then_some(out)
    })
    .unwrap_or_else(|| panic!("not rejected:\n{}", ca.sc.logs()));
    assert!(
        status.contains("server.max_connections cannot change on reload"),
        "{status}"
    );
    assert!(status.contains("config generation 2"), "{status}");
}
