//! Two real Envoys fed by sidecred over SDS on its Unix socket establish mTLS (A → B), and a
//! client certificate from another CA is refused by B.

mod common;

use common::ca::*;
use common::envoy::{sds_cluster, sds_tls_context, Envoy};
use std::process::Command;
use std::time::Duration;

const HCM: &str = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
const ROUTER: &str = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router";

fn hcm(prefix: &str, route: &str) -> String {
    format!(
        r#"      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": {HCM}
          stat_prefix: {prefix}
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{ prefix: "/" }}
{route}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": {ROUTER}
"#
    )
}

fn envoy_b(sock: &std::path::Path, admin: u16, port: u16) -> String {
    format!(
        r#"admin:
  address:
    socket_address: {{ address: 127.0.0.1, port_value: {admin} }}
static_resources:
  listeners:
  - name: b
    address:
      socket_address: {{ address: 127.0.0.1, port_value: {port} }}
    filter_chains:
    - filters:
{hcm}      transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          require_client_certificate: true
{tls}  clusters:
{sds}"#,
        hcm = hcm(
            "b",
            "                direct_response:\n                  status: 200\n                  body: { inline_string: \"hello-from-b\" }"
        ),
        tls = sds_tls_context("default", "ROOTCA", 10),
        sds = sds_cluster(sock),
    )
}

fn envoy_a(sock: &std::path::Path, admin: u16, port: u16, b_port: u16) -> String {
    format!(
        r#"admin:
  address:
    socket_address: {{ address: 127.0.0.1, port_value: {admin} }}
static_resources:
  listeners:
  - name: a
    address:
      socket_address: {{ address: 127.0.0.1, port_value: {port} }}
    filter_chains:
    - filters:
{hcm}  clusters:
  - name: b
    type: STATIC
    connect_timeout: 2s
    load_assignment:
      cluster_name: b
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: {{ address: 127.0.0.1, port_value: {b_port} }}
    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
{tls}{sds}"#,
        hcm = hcm("a", "                route: { cluster: b }"),
        tls = sds_tls_context("default", "ROOTCA", 8),
        sds = sds_cluster(sock),
    )
}

fn curl(args: &[&str]) -> (bool, String) {
    let o = Command::new("curl")
        .args(["-s", "-m", "5"])
        .args(args)
        .output()
        .expect("curl is installed");
    (
        o.status.success(),
        format!(
            "exit {:?}: {}{}",
            o.status.code(),
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn two_envoys_do_mtls_with_sds_certificates_and_refuse_a_foreign_ca() {
    let ca = start("", "");
    let dir = tempfile::tempdir().unwrap();
    let (b_admin, b_listen) = (common::free_port(false), common::free_port(false));
    let (a_admin, a_port) = (common::free_port(false), common::free_port(false));
    let mut b = Envoy::start(
        dir.path(),
        "b",
        &envoy_b(&ca.spiffe, b_admin, b_listen),
        b_admin,
    );
    let mut a = Envoy::start(
        dir.path(),
        "a",
        &envoy_a(&ca.spiffe, a_admin, a_port, b_listen),
        a_admin,
    );
    let url = format!("http://127.0.0.1:{a_port}/");
    let ok = common::wait_for(Duration::from_secs(30), || {
        let (ok, out) = curl(&[&url]);
        (ok && out.contains("hello-from-b")).then_some(())
    });
    assert!(
        ok.is_some(),
        "request through A to B failed: {}\nA certs: {:?}\nB certs: {:?}\nA: {}\nB: {}\nsidecred: {}",
        curl(&[&url]).1,
        a.admin("/certs"),
        b.admin("/certs"),
        a.logs(),
        b.logs(),
        ca.sc.logs()
    );
    let certs = b.admin("/certs").unwrap();
    assert!(
        certs.contains(ROOT_ID),
        "B serves the SDS certificate: {certs}"
    );

    // Directly to B: a sidecred certificate is accepted, one from another CA is refused.
    let first = first_svid(&ca.spiffe).await;
    let svid = &first.svids[0];
    let chain = split_der(&svid.x509_svid);
    let bundle = write(dir.path(), "bundle.pem", &pem_all(&split_der(&svid.bundle)));
    let good_cert = write(dir.path(), "good.pem", &pem_all(&chain));
    let good_key = write(
        dir.path(),
        "good.key",
        &pem("PRIVATE KEY", &svid.x509_svid_key),
    );
    let b_url = format!("https://localhost:{b_listen}/");
    let (ok, out) = curl(&[
        "--cacert",
        bundle.to_str().unwrap(),
        "--cert",
        good_cert.to_str().unwrap(),
        "--key",
        good_key.to_str().unwrap(),
        &b_url,
    ]);
    assert!(ok && out.contains("hello-from-b"), "{out}");

    let now = std::time::SystemTime::now();
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
    let evil_cert = write(
        dir.path(),
        "evil.pem",
        &format!(
            "{}{}",
            pem("CERTIFICATE", &leaf.cert),
            pem("CERTIFICATE", &other.chain[0])
        ),
    );
    let evil_key = write(
        dir.path(),
        "evil.key",
        &pem("PRIVATE KEY", leaf.key.expose()),
    );
    let (ok, out) = curl(&[
        "--cacert",
        bundle.to_str().unwrap(),
        "--cert",
        evil_cert.to_str().unwrap(),
        "--key",
        evil_key.to_str().unwrap(),
        &b_url,
    ]);
    assert!(
        !ok && !out.contains("hello-from-b"),
        "foreign CA accepted: {out}"
    );
    let (ok, _) = curl(&["--cacert", bundle.to_str().unwrap(), &b_url]);
    assert!(!ok, "B accepted a client without a certificate");
}
