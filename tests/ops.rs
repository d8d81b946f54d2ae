//! Operations: metrics, SIGHUP reload, status, and the deployment files validated by real tools.

mod common;

use common::*;
use sidecred::api::pb;
use std::io::{Read, Write};
use std::process::Command;
use std::time::Duration;

const CANARY: &str = "CANARY-metrics-5c0ffee";

fn scrape(addr: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 200 OK"), "{out}");
    out
}

fn value(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("series {series} missing:\n{metrics}"))
}

#[tokio::test]
async fn metrics_after_traffic_have_sane_values_and_no_values_in_labels() {
    let port = free_port(false);
    let addr = format!("127.0.0.1:{port}");
    let body = dev_body(&format!(", \"{CANARY}\" = \"{CANARY}\""), &format!("[metrics]\nlisten = \"{addr}\"\n[[secret]]\nname = \"app/canary\"\nbackend = \"dev\"\npath = \"{CANARY}\"\nzone = \"internal\"\n"));
    let sc = Sidecar::start(&body);
    let mut b = sc.broker().await;
    let sid = b
        .open_session(pb::OpenSessionRequest::default())
        .await
        .unwrap()
        .into_inner()
        .session_id;
    for _ in 0..5 {
        b.get_secret(pb::GetSecretRequest {
            name: "app/canary".into(),
            session_id: sid.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    }
    b.get_secret(pb::GetSecretRequest {
        name: "db/dyn".into(),
        session_id: sid.clone(),
        ..Default::default()
    })
    .await
    .unwrap();
    let _ = b
        .get_secret(pb::GetSecretRequest {
            name: "no/such".into(),
            session_id: sid.clone(),
            ..Default::default()
        })
        .await;
    sc.admin()
        .await
        .rotate(pb::RotateRequest {
            name: "app/a".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    sc.admin()
        .await
        .revoke_session(pb::RevokeSessionRequest {
            session_id: sid.clone(),
            reason: CANARY.into(),
        })
        .await
        .unwrap();

    let m = scrape(&addr);
    assert_eq!(
        value(&m, "sidecred_requests_total{rpc=\"GetSecret\",code=\"Ok\"}"),
        6.0
    );
    assert_eq!(
        value(
            &m,
            "sidecred_requests_total{rpc=\"GetSecret\",code=\"NotFound\"}"
        ),
        1.0
    );
    assert_eq!(
        value(
            &m,
            "sidecred_requests_total{rpc=\"OpenSession\",code=\"Ok\"}"
        ),
        1.0
    );
    assert_eq!(
        value(
            &m,
            "sidecred_requests_total{rpc=\"RevokeSession\",code=\"Ok\"}"
        ),
        1.0
    );
    assert_eq!(value(&m, "sidecred_cache_hits_total"), 4.0);
    assert_eq!(value(&m, "sidecred_cache_misses_total"), 2.0);
    assert_eq!(
        value(
            &m,
            "sidecred_backend_call_seconds_count{backend=\"dev\",op=\"fetch\"}"
        ),
        2.0
    );
    assert!(
        value(
            &m,
            "sidecred_backend_call_seconds_sum{backend=\"dev\",op=\"fetch\"}"
        ) < 1.0
    );
    assert_eq!(value(&m, "sidecred_rotations_total{secret=\"app/a\"}"), 1.0);
    assert_eq!(value(&m, "sidecred_revocations_total"), 1.0);
    assert_eq!(value(&m, "sidecred_sessions_active"), 0.0);
    assert_eq!(value(&m, "sidecred_leases_active"), 0.0);
    assert_eq!(value(&m, "sidecred_journal_backlog"), 0.0);
    assert_eq!(value(&m, "sidecred_config_generation"), 1.0);
    assert!(m.contains("sidecred_revocation_propagation_seconds_count"));
    // The canary is a secret's value (and, here, also its backend path and a revocation reason):
    // none of them may become a label or a sample.
    assert!(!m.contains("CANARY"), "canary in metrics:\n{m}");
}

const EXTRA_SECRET: &str = "\n[[secret]]\nname = \"app/new\"\nbackend = \"dev\"\npath = \"static/a\"\nzone = \"internal\"\n";

#[tokio::test]
async fn sighup_reloads_without_dropping_connections_and_rejects_bad_configs() {
    let sc = Sidecar::start(&dev_body("", ""));
    let mut b = sc.broker().await;
    let sid = b
        .open_session(pb::OpenSessionRequest::default())
        .await
        .unwrap()
        .into_inner()
        .session_id;
    let e = b
        .get_secret(pb::GetSecretRequest {
            name: "app/new".into(),
            session_id: sid.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
    // A stream held open across the reload proves the connection survives it.
    let mut watch = b
        .watch_secret(pb::WatchSecretRequest {
            name: "app/a".into(),
            session_id: sid.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    watch.message().await.unwrap().unwrap();

    let original = std::fs::read_to_string(&sc.config).unwrap();
    std::fs::write(&sc.config, format!("{original}{EXTRA_SECRET}")).unwrap();
    sc.signal(nix::sys::signal::Signal::SIGHUP);
    let reloaded = wait_for(Duration::from_secs(5), || {
        let o = sc.cli(&["status", "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).ok()?;
        (v["config_generation"] == 2).then_some(v)
    });
    assert!(
        reloaded.is_some(),
        "config generation did not advance:\n{}",
        sc.logs()
    );
    let r = b
        .get_secret(pb::GetSecretRequest {
            name: "app/new".into(),
            session_id: sid.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.value, b"value-a-1");
    sc.admin()
        .await
        .rotate(pb::RotateRequest {
            name: "app/a".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let ev = tokio::time::timeout(Duration::from_secs(3), watch.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        ev.kind,
        pb::secret_event::Kind::Rotated as i32,
        "the pre-reload stream still delivers"
    );

    // An invalid config: the running one keeps serving, and status says why.
    std::fs::write(&sc.config, format!("{original}{EXTRA_SECRET}\n[[secret]]\nname = \"x\"\nbackend = \"dev\"\npath = \"p\"\nzone = \"nowhere\"\n")).unwrap();
    sc.signal(nix::sys::signal::Signal::SIGHUP);
    let status = wait_for(Duration::from_secs(5), || {
        let out = String::from_utf8(sc.cli(&["status"]).stdout).ok()?;
        out.contains("CONFIG RELOAD REJECTED").then_some(out)
    })
    .unwrap_or_else(|| panic!("status never reported the rejected reload:\n{}", sc.logs()));
    assert!(
        status.contains("unknown variant `nowhere`") && status.contains("sidecred.toml:"),
        "{status}"
    );
    assert!(status.contains("config generation 2"), "{status}");
    assert!(sc.logs().contains("config reload rejected"));
    b.get_secret(pb::GetSecretRequest {
        name: "app/new".into(),
        session_id: sid.clone(),
        ..Default::default()
    })
    .await
    .unwrap();
}

#[test]
fn status_prints_a_readable_table() {
    let sc = Sidecar::start(&dev_body("", ""));
    let sid = ok_stdout(&sc.cli(&["session", "open"])).trim().to_string();
    ok_stdout(&sc.cli(&["get", "app/a", "--session", &sid]));
    ok_stdout(&sc.cli(&["get", "db/dyn", "--session", &sid]));
    let out = ok_stdout(&sc.cli(&["status"]));
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with("sidecred 0.1.0  up ") && lines[0].ends_with("config generation 1"),
        "{out}"
    );
    let header = lines
        .iter()
        .position(|l| l.starts_with("BACKEND"))
        .expect("backend table");
    let cols: Vec<&str> = lines[header].split_whitespace().collect();
    assert_eq!(cols, ["BACKEND", "KIND", "HEALTH", "FETCHES", "DETAIL"]);
    let dev: Vec<&str> = lines[header + 1].split_whitespace().collect();
    assert_eq!(&dev[..4], ["dev", "dev", "ok", "2"], "{out}");
    for (k, v) in [
        ("sessions", "1"),
        ("leases", "2"),
        ("cached values", "2"),
        ("pending revocations", "0"),
    ] {
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with(k) && l.split_whitespace().last() == Some(v)),
            "{k}={v}:\n{out}"
        );
    }
    assert!(ok_stdout(&sc.cli(&["health"])).contains("SERVING"));
    assert!(ok_stdout(&sc.cli(&["health", "--admin"])).contains("SERVING"));
}

#[test]
fn kubernetes_manifests_validate_against_schemas() {
    let py = std::env::var("SIDECRED_PYTHON").expect("SIDECRED_PYTHON: run through scripts/test");
    let validate = std::path::Path::new(&py).with_file_name("kubernetes-validate");
    for overlay in ["base", "overlays/dev", "overlays/production"] {
        let out = tempfile::tempdir().unwrap();
        let r = Command::new(&py)
            .args([
                "tests/tools/render_overlay.py",
                &format!("deploy/kubernetes/{overlay}"),
            ])
            .arg(out.path())
            .output()
            .unwrap();
        let files = ok_stdout(&r);
        let files: Vec<&str> = files.lines().collect();
        assert_eq!(files.len(), 3, "{overlay}: {files:?}");
        let v = Command::new(&validate)
            .arg("--strict")
            .args(&files)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&v.stdout),
            String::from_utf8_lossy(&v.stderr)
        );
        assert!(v.status.success(), "{overlay}: {text}");
        assert_eq!(text.matches("passed").count(), 3, "{overlay}: {text}");
        let deployment =
            std::fs::read_to_string(files.iter().find(|f| f.contains("deployment")).unwrap())
                .unwrap();
        for needle in [
            "readOnlyRootFilesystem: true",
            "runAsNonRoot: true",
            "- ALL",
            "serviceAccountToken",
            "emptyDir",
            "livenessProbe",
            "readinessProbe",
        ] {
            assert!(deployment.contains(needle), "{overlay}: {needle} missing");
        }
    }
}

#[test]
fn systemd_unit_verifies_and_is_hardened() {
    let unit = std::fs::read_to_string("deploy/systemd/sidecred.service").unwrap();
    for needle in [
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "LimitCORE=0",
        "PrivateTmp=yes",
        "CapabilityBoundingSet=\n",
        "ExecReload=/bin/kill -HUP $MAINPID",
    ] {
        assert!(unit.contains(needle), "{needle} missing");
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sidecred.service");
    std::fs::write(&path, unit.replace("/usr/local/bin/sidecred", BIN)).unwrap();
    let o = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "systemd-analyze verify: {text}");
}

#[test]
fn dockerfile_is_multi_stage_and_runs_unprivileged() {
    let d = std::fs::read_to_string("deploy/Dockerfile").unwrap();
    assert_eq!(d.lines().filter(|l| l.starts_with("FROM ")).count(), 2);
    assert!(d.contains("COPY --from=build"));
    assert!(d
        .lines()
        .any(|l| l.starts_with("USER ") && !l.contains("root") && !l.contains(" 0")));
    for p in ["Cargo.toml", "build.rs", "proto", "src"] {
        assert!(std::path::Path::new(p).exists(), "Dockerfile copies {p}");
    }
}
