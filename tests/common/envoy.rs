//! Runs a real Envoy ($SIDECRED_ENVOY) with a YAML config; killed on drop.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct Envoy {
    child: Child,
    pub admin_port: u16,
    pub log: PathBuf,
}

impl Envoy {
    /// Starts Envoy with `config` (YAML) in `dir`; waits until its admin endpoint answers.
    pub fn start(dir: &Path, name: &str, config: &str, admin_port: u16) -> Envoy {
        let bin = std::env::var("SIDECRED_ENVOY").expect("SIDECRED_ENVOY must point at envoy");
        let cfg = dir.join(format!("{name}.yaml"));
        // SDS needs a node identity.
        let text = format!("node:\n  id: {name}\n  cluster: sidecred-test\n{config}");
        std::fs::write(&cfg, text).unwrap();
        let log = dir.join(format!("{name}.log"));
        let child = Command::new(bin)
            .arg("-c")
            .arg(&cfg)
            .args([
                "--concurrency",
                "1",
                "--disable-hot-restart",
                "--log-level",
                "info",
            ])
            .arg("--log-path")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("envoy starts");
        let mut e = Envoy {
            child,
            admin_port,
            log,
        };
        let up = super::wait_for(Duration::from_secs(30), || {
            if let Ok(Some(s)) = e.child.try_wait() {
                panic!("envoy {name} exited ({s}):\n{}", e.logs());
            }
            e.admin("/server_info")
                .filter(|s| s.contains("state"))
                .map(|_| ())
        });
        assert!(
            up.is_some(),
            "envoy {name} admin never answered:\n{}",
            e.logs()
        );
        e
    }

    /// GET on the admin endpoint (loopback).
    pub fn admin(&mut self, path: &str) -> Option<String> {
        let o = Command::new("curl")
            .args(["-s", "-m", "2"])
            .arg(format!("http://127.0.0.1:{}{path}", self.admin_port))
            .output()
            .ok()?;
        o.status
            .success()
            .then(|| String::from_utf8_lossy(&o.stdout).into_owned())
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The SDS config source pointing at a sidecred socket (cluster `sds`).
pub fn sds_cluster(sock: &Path) -> String {
    format!(
        r#"
  - name: sds
    type: STATIC
    connect_timeout: 2s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config:
          http2_protocol_options: {{}}
    load_assignment:
      cluster_name: sds
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              pipe:
                path: {}
"#,
        sock.display()
    )
}

/// A common_tls_context whose certificate and trust bundle come from SDS, indented by `indent`.
pub fn sds_tls_context(cert: &str, validation: &str, indent: usize) -> String {
    let pad = " ".repeat(indent);
    let text = format!(
        r#"common_tls_context:
          tls_certificate_sds_secret_configs:
          - name: {cert}
            sds_config:
              resource_api_version: V3
              api_config_source:
                api_type: GRPC
                transport_api_version: V3
                grpc_services:
                - envoy_grpc:
                    cluster_name: sds
          validation_context_sds_secret_config:
            name: {validation}
            sds_config:
              resource_api_version: V3
              api_config_source:
                api_type: GRPC
                transport_api_version: V3
                grpc_services:
                - envoy_grpc:
                    cluster_name: sds
"#
    );
    text.lines()
        .map(|l| format!("{pad}{}\n", l.strip_prefix("        ").unwrap_or(l)))
        .collect()
}
