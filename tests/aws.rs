//! The AWS Secrets Manager backend through the real binary, against moto's server mode.

mod common;
#[path = "common/moto.rs"]
mod moto;

use aws_sdk_secretsmanager::primitives::Blob;
use common::*;
use moto::{Fault, FaultProxy, Moto};
use sidecred::api::pb;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::transport::Channel;
use tonic::Code;

type Broker = pb::broker_client::BrokerClient<Channel>;

/// Config body: one aws backend at `endpoint`, the given secrets, open policy for root.
fn body(endpoint: &str, backend_extra: &str, secrets: &[(&str, &str, &str)]) -> String {
    let mut s = format!(
        r#"
[backends.aws]
kind = "aws"
region = "us-east-1"
endpoint = "{endpoint}"
access_key_id = "test"
secret_access_key = "test"
initial_backoff = "20ms"
max_backoff = "200ms"
connect_timeout = "500ms"
{backend_extra}
"#
    );
    for (name, path, extra) in secrets {
        s.push_str(&format!(
            "\n[[secret]]\nname = \"{name}\"\nbackend = \"aws\"\npath = \"{path}\"\nzone = \"internal\"\n{extra}\n"
        ));
    }
    s.push_str(
        r#"
[[policy.workload]]
name = "root"
uids = [0]
secrets = ["*"]

[[policy.admin]]
name = "root-admin"
uids = [0]
actions = ["*"]
"#,
    );
    s
}

async fn create(m: &Moto, name: &str, value: &str) -> String {
    m.client()
        .create_secret()
        .name(name)
        .secret_string(value)
        .send()
        .await
        .unwrap()
        .version_id
        .unwrap()
}

/// A rotation done outside sidecred: put as AWSPENDING, then move AWSCURRENT.
async fn rotate_outside(m: &Moto, name: &str, value: &str) -> String {
    let c = m.client();
    let d = c.describe_secret().secret_id(name).send().await.unwrap();
    let old = d
        .version_ids_to_stages()
        .unwrap()
        .iter()
        .find(|(_, s)| s.iter().any(|x| x == "AWSCURRENT"))
        .map(|(id, _)| id.clone())
        .unwrap();
    let new = c
        .put_secret_value()
        .secret_id(name)
        .secret_string(value)
        .version_stages("AWSPENDING")
        .send()
        .await
        .unwrap()
        .version_id
        .unwrap();
    c.update_secret_version_stage()
        .secret_id(name)
        .version_stage("AWSCURRENT")
        .move_to_version_id(&new)
        .remove_from_version_id(old)
        .send()
        .await
        .unwrap();
    new
}

async fn stages(m: &Moto, name: &str) -> std::collections::HashMap<String, Vec<String>> {
    m.client()
        .describe_secret()
        .secret_id(name)
        .send()
        .await
        .unwrap()
        .version_ids_to_stages
        .unwrap_or_default()
}

async fn open(b: &mut Broker) -> String {
    b.open_session(pb::OpenSessionRequest::default())
        .await
        .unwrap()
        .into_inner()
        .session_id
}

async fn get(
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

async fn next_event(w: &mut tonic::Streaming<pb::SecretEvent>, limit: Duration) -> pb::SecretEvent {
    tokio::time::timeout(limit, w.message())
        .await
        .expect("watch event in time")
        .unwrap()
        .unwrap()
}

async fn watch(b: &mut Broker, sid: &str, name: &str) -> tonic::Streaming<pb::SecretEvent> {
    let mut w = b
        .watch_secret(pb::WatchSecretRequest {
            name: name.into(),
            session_id: sid.into(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = next_event(&mut w, Duration::from_secs(5)).await;
    assert_eq!(first.kind, pb::secret_event::Kind::Current as i32);
    w
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_by_stage_version_binary_json_key_and_error_kinds() {
    let m = Moto::start();
    let c = m.client();
    let v1 = create(&m, "plain", "plain-v1").await;
    let v2 = rotate_outside(&m, "plain", "plain-v2").await;
    c.update_secret_version_stage()
        .secret_id("plain")
        .version_stage("blue")
        .move_to_version_id(&v1)
        .send()
        .await
        .unwrap();
    c.create_secret()
        .name("bin")
        .secret_binary(Blob::new(vec![0u8, 159, 146, 150, 255]))
        .send()
        .await
        .unwrap();
    create(
        &m,
        "db",
        r#"{"username":"app","password":"pw-1","port":5432}"#,
    )
    .await;
    create(&m, "gone", "gone-v1").await;
    c.delete_secret().secret_id("gone").send().await.unwrap();
    let sc = Sidecar::start(&body(
        &m.endpoint(),
        "",
        &[
            ("app/plain", "plain", ""),
            ("app/blue", "plain", "options = { stage = \"blue\" }"),
            ("app/bin", "bin", ""),
            ("db/password", "db", "key = \"password\""),
            ("db/port", "db", "key = \"port\""),
            ("db/nokey", "db", "key = \"nope\""),
            ("app/missing", "does-not-exist", ""),
            ("app/gone", "gone", ""),
        ],
    ));
    let mut b = sc.broker().await;
    let sid = open(&mut b).await;

    let r = get(&mut b, &sid, "app/plain", "").await.unwrap();
    assert_eq!(
        (r.value.as_slice(), r.version.as_str()),
        (&b"plain-v2"[..], v2.as_str())
    );
    let r = get(&mut b, &sid, "app/blue", "").await.unwrap();
    assert_eq!(
        (r.value.as_slice(), r.version.as_str()),
        (&b"plain-v1"[..], v1.as_str())
    );
    let r = get(&mut b, &sid, "app/plain", &v1).await.unwrap();
    assert_eq!(
        (r.value.as_slice(), r.version.as_str()),
        (&b"plain-v1"[..], v1.as_str())
    );
    let r = get(&mut b, &sid, "app/bin", "").await.unwrap();
    assert_eq!(r.value, vec![0u8, 159, 146, 150, 255]);
    assert_eq!(
        get(&mut b, &sid, "db/password", "").await.unwrap().value,
        b"pw-1"
    );
    assert_eq!(
        get(&mut b, &sid, "db/port", "").await.unwrap().value,
        b"5432"
    );

    let e = get(&mut b, &sid, "db/nokey", "").await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(
        e.message().contains("no key `nope`") && !e.message().contains("pw-1"),
        "{e:?}"
    );
    let e = get(&mut b, &sid, "app/missing", "").await.unwrap_err();
    assert_eq!(
        (e.code(), err_code(&e).as_str()),
        (Code::NotFound, "not-found"),
        "{e:?}"
    );
    let e = get(
        &mut b,
        &sid,
        "app/plain",
        "0123456789abcdef0123456789abcdef",
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    let e = get(&mut b, &sid, "app/gone", "").await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(
        e.message().contains("`gone` is scheduled for deletion"),
        "{e:?}"
    );
    assert!(!e.message().contains("gone-v1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_with_50_concurrent_readers_previous_in_grace_then_retired() {
    let m = Moto::start();
    let v1 = create(&m, "db", r#"{"username":"app","password":"initial-pw"}"#).await;
    let opts = r#"key = "password"
grace = "2s"
options = { password_length = 24, password_classes = ["lower", "digit"], password_exclude = "0o1l" }"#;
    let sc = Sidecar::start(&body(
        &m.endpoint(),
        "retire_removes_previous_label = true",
        &[("db/password", "db", opts)],
    ));
    let mut b = sc.broker().await;
    let sid = open(&mut b).await;
    let mut w = watch(&mut b, &sid, "db/password").await;
    assert_eq!(
        get(&mut b, &sid, "db/password", "").await.unwrap().value,
        b"initial-pw"
    );

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut readers = Vec::new();
    for _ in 0..50 {
        let (mut b, sid, stop, ok, failed) = (
            b.clone(),
            sid.clone(),
            stop.clone(),
            ok.clone(),
            failed.clone(),
        );
        readers.push(tokio::spawn(async move {
            let mut seen = std::collections::BTreeSet::new();
            while !stop.load(Ordering::Relaxed) {
                match get(&mut b, &sid, "db/password", "").await {
                    Ok(r) => {
                        ok.fetch_add(1, Ordering::Relaxed);
                        seen.insert(r.value);
                    }
                    Err(e) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        eprintln!("read failed during rotation: {e:?}");
                    }
                }
            }
            seen
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let cli = sc.cli_cmd(&["rotate", "db/password", "--json"]);
    let out = tokio::task::spawn_blocking(move || {
        let mut cli = cli;
        cli.output().unwrap()
    })
    .await
    .unwrap();
    let rot: serde_json::Value = serde_json::from_str(&ok_stdout(&out)).unwrap();
    let v2 = rot["version"].as_str().unwrap().to_string();
    assert_eq!(rot["previous_version"], v1.as_str());
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let mut seen = std::collections::BTreeSet::new();
    for r in readers {
        seen.extend(r.await.unwrap());
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    println!("rotation under load: {ok} reads, {failed} failed");
    assert_eq!(failed, 0);
    assert!(ok > 100, "only {ok} reads");
    assert_eq!(
        seen.len(),
        2,
        "readers saw exactly the old and the new value"
    );

    // The new password follows the generator options; the other JSON keys are kept.
    let r = get(&mut b, &sid, "db/password", "").await.unwrap();
    let pw = String::from_utf8(r.value.clone()).unwrap();
    assert_eq!((pw.len(), r.version.as_str()), (24, v2.as_str()));
    assert!(pw
        .chars()
        .all(|c| (c.is_ascii_lowercase() || c.is_ascii_digit()) && !"0o1l".contains(c)));
    // moto serves its first version when no stage is given: name AWSCURRENT.
    let doc = m
        .client()
        .get_secret_value()
        .secret_id("db")
        .version_stage("AWSCURRENT")
        .send()
        .await
        .unwrap();
    let doc: serde_json::Value = serde_json::from_str(doc.secret_string().unwrap()).unwrap();
    assert_eq!(
        (doc["username"].as_str(), doc["password"].as_str()),
        (Some("app"), Some(pw.as_str()))
    );
    let st = stages(&m, "db").await;
    assert_eq!(
        st[&v2],
        vec!["AWSCURRENT".to_string()],
        "AWSPENDING removed after promotion"
    );
    assert_eq!(st[&v1], vec!["AWSPREVIOUS".to_string()]);

    // Previous during grace, with its retirement time.
    let prev = r.previous.expect("previous during grace");
    assert_eq!(
        (prev.value.as_slice(), prev.version.as_str()),
        (&b"initial-pw"[..], v1.as_str())
    );
    assert!(r.previous_retires_at > 0);
    let ev = next_event(&mut w, Duration::from_secs(2)).await;
    assert_eq!(
        (ev.kind, ev.version.as_str(), ev.previous_version.as_str()),
        (
            pb::secret_event::Kind::Rotated as i32,
            v2.as_str(),
            v1.as_str()
        )
    );
    let ev = next_event(&mut w, Duration::from_secs(5)).await;
    assert_eq!(
        (ev.kind, ev.previous_version.as_str()),
        (pb::secret_event::Kind::Retired as i32, v1.as_str())
    );
    let r = get(&mut b, &sid, "db/password", "").await.unwrap();
    assert!(r.previous.is_none(), "previous served after grace");
    let e = get(&mut b, &sid, "db/password", &v1).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    assert!(
        stages(&m, "db").await[&v1].is_empty(),
        "AWSPREVIOUS label removed on retire"
    );

    // A value from stdin (a rotation cron job).
    let mut cli = sc.cli_cmd(&["rotate", "db/password", "--value-file", "-"]);
    cli.stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped());
    let out = tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let mut child = cli.spawn().unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(b"from-stdin-pw")
            .unwrap();
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        get(&mut b, &sid, "db/password", "").await.unwrap().value,
        b"from-stdin-pw"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verification_command_gates_promotion() {
    let m = Moto::start();
    let v1 = create(&m, "api", "api-v1").await;
    let opts = r#"options = { verify_command = ["sh", "-c", "read -r v; test \"$v\" = good-value"], verify_timeout = "5s" }"#;
    let sc = Sidecar::start(&body(&m.endpoint(), "", &[("app/api", "api", opts)]));
    let mut admin = sc.admin().await;
    let rot = |value: &str| pb::RotateRequest {
        name: "app/api".into(),
        grace_seconds: 0,
        value: value.as_bytes().to_vec(),
    };
    let e = admin.rotate(rot("bad-value\n")).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(
        e.message().contains("verification") && !e.message().contains("bad-value"),
        "{e:?}"
    );
    let st = stages(&m, "api").await;
    assert_eq!(
        st[&v1],
        vec!["AWSCURRENT".to_string()],
        "current unchanged: {st:?}"
    );
    assert!(
        !st.values().flatten().any(|s| s == "AWSPENDING"),
        "pending label dropped: {st:?}"
    );

    let r = admin
        .rotate(rot("good-value\n"))
        .await
        .unwrap()
        .into_inner();
    let mut b = sc.broker().await;
    let sid = open(&mut b).await;
    let g = get(&mut b, &sid, "app/api", "").await.unwrap();
    assert_eq!(
        (g.value.as_slice(), g.version.as_str()),
        (&b"good-value\n"[..], r.version.as_str())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outside_rotation_is_noticed_by_describe_without_refetching() {
    let m = Moto::start();
    let proxy = FaultProxy::start(m.port);
    let v1 = create(&m, "tok", "tok-v1").await;
    let sc = Sidecar::start(&body(
        &proxy.endpoint(),
        "recheck_interval = \"300ms\"",
        &[("app/tok", "tok", "ttl = \"60s\"")],
    ));
    let mut b = sc.broker().await;
    let sid = open(&mut b).await;
    let mut w = watch(&mut b, &sid, "app/tok").await;
    for _ in 0..200 {
        assert_eq!(get(&mut b, &sid, "app/tok", "").await.unwrap().version, v1);
    }
    assert_eq!(proxy.count("GetSecretValue"), 1, "200 reads, one fetch");

    let t0 = Instant::now();
    let v2 = rotate_outside(&m, "tok", "tok-v2").await;
    let ev = next_event(&mut w, Duration::from_secs(3)).await;
    let noticed = t0.elapsed();
    assert_eq!(
        (ev.kind, ev.version.as_str(), ev.previous_version.as_str()),
        (
            pb::secret_event::Kind::Changed as i32,
            v2.as_str(),
            v1.as_str()
        )
    );
    assert!(
        noticed < Duration::from_millis(1500),
        "noticed after {noticed:?}"
    );
    for _ in 0..100 {
        let r = get(&mut b, &sid, "app/tok", "").await.unwrap();
        assert_eq!(
            (r.value.as_slice(), r.version.as_str()),
            (&b"tok-v2"[..], v2.as_str())
        );
    }
    let (gets, describes) = (proxy.count("GetSecretValue"), proxy.count("DescribeSecret"));
    println!("outside rotation noticed after {noticed:?}; GetSecretValue={gets} DescribeSecret={describes} for 300 reads");
    assert_eq!(gets, 2, "one fetch per version");
    assert!(describes >= 1);
    assert!(sc.audit_text().contains("\"event\":\"changed\""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emulator_down_stale_in_window_then_unavailable_then_recovery() {
    let mut m = Moto::start();
    create(&m, "svc", "svc-v1").await;
    let sc = Sidecar::builder(&body(
        &m.endpoint(),
        "max_attempts = 2",
        &[("app/svc", "svc", "ttl = \"1s\"")],
    ))
    .server("stale_window = \"2s\"\nbackend_timeout = \"2s\"")
    .start();
    let mut b = sc.broker().await;
    let sid = open(&mut b).await;
    let fetched = Instant::now();
    assert!(!get(&mut b, &sid, "app/svc", "").await.unwrap().stale);
    m.stop();

    tokio::time::sleep(Duration::from_millis(1300).saturating_sub(fetched.elapsed())).await;
    let t = Instant::now();
    let r = get(&mut b, &sid, "app/svc", "").await.unwrap();
    println!("stale read with emulator down took {:?}", t.elapsed());
    assert!(r.stale, "served stale inside the window");
    assert_eq!(r.value, b"svc-v1");

    tokio::time::sleep(Duration::from_millis(3300).saturating_sub(fetched.elapsed())).await;
    let t = Instant::now();
    let e = get(&mut b, &sid, "app/svc", "").await.unwrap_err();
    println!("UNAVAILABLE after the window took {:?}", t.elapsed());
    assert_eq!(
        (e.code(), err_code(&e).as_str()),
        (Code::Unavailable, "unavailable"),
        "{e:?}"
    );
    assert!(t.elapsed() < Duration::from_secs(2));

    m.spawn();
    create(&m, "svc", "svc-v1").await;
    let r = get(&mut b, &sid, "app/svc", "").await.unwrap();
    assert!(!r.stale);
    assert_eq!(r.value, b"svc-v1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_and_5xx_are_retried_then_unavailable_promptly_and_denied_is_named() {
    let m = Moto::start();
    let proxy = FaultProxy::start(m.port);
    for n in ["one", "two", "three"] {
        create(&m, n, &format!("{n}-value")).await;
    }
    let sc = Sidecar::start(&body(
        &proxy.endpoint(),
        "max_attempts = 4",
        &[
            ("app/one", "one", ""),
            ("app/two", "two", ""),
            ("app/three", "three", ""),
        ],
    ));
    let mut b = sc.broker().await;
    let sid = open(&mut b).await;

    proxy.fail_next(&[Fault::Throttle, Fault::Throttle, Fault::Status(503)]);
    let t = Instant::now();
    let r = get(&mut b, &sid, "app/one", "").await.unwrap();
    println!("read through 2 throttles + one 503 took {:?}", t.elapsed());
    assert_eq!(r.value, b"one-value");
    assert_eq!(
        proxy.count("GetSecretValue"),
        4,
        "three retries, then success"
    );

    proxy.fail_always(Some(Fault::Status(500)));
    let t = Instant::now();
    let e = get(&mut b, &sid, "app/two", "").await.unwrap_err();
    let took = t.elapsed();
    println!("persistent 500: UNAVAILABLE after {took:?}");
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(took < Duration::from_secs(2), "{took:?}");
    assert_eq!(
        proxy.count("GetSecretValue"),
        8,
        "bounded: max_attempts = 4"
    );

    proxy.fail_always(Some(Fault::Error("AccessDeniedException")));
    let e = get(&mut b, &sid, "app/three", "").await.unwrap_err();
    assert_eq!(
        (e.code(), err_code(&e).as_str()),
        (Code::PermissionDenied, "denied"),
        "{e:?}"
    );
    assert!(
        e.message().contains("app/three") && e.message().contains("`three`"),
        "{e:?}"
    );
    assert_eq!(proxy.count("GetSecretValue"), 9, "denied is not retried");

    proxy.fail_always(None);
    assert_eq!(
        get(&mut b, &sid, "app/two", "").await.unwrap().value,
        b"two-value"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_values_never_reach_logs_audit_or_errors_at_trace() {
    const CANARY: &str = "canary-3f9c1e7a-aws";
    let m = Moto::start();
    create(&m, "c1", &format!("{CANARY}-plain")).await;
    create(
        &m,
        "c2",
        &format!(r#"{{"user":"u","password":"{CANARY}-json"}}"#),
    )
    .await;
    let sc = Sidecar::builder(&body(
        &m.endpoint(),
        "recheck_interval = \"200ms\"",
        &[
            ("c/plain", "c1", ""),
            ("c/json", "c2", "key = \"password\""),
            ("c/badkey", "c1", "key = \"password\""),
        ],
    ))
    .log("trace")
    .env("SIDECRED_LOG", "trace")
    // Makes the AWS SDK print response bodies at trace: only sidecred's log cap stops them.
    .env("LOG_SENSITIVE_BODIES", "true")
    .start();
    let mut b = sc.broker().await;
    let sid = open(&mut b).await;
    let mut errors = String::new();
    let r = get(&mut b, &sid, "c/plain", "").await.unwrap();
    assert_eq!(r.value, format!("{CANARY}-plain").as_bytes());
    let r = get(&mut b, &sid, "c/json", "").await.unwrap();
    assert_eq!(r.value, format!("{CANARY}-json").as_bytes());
    let e = get(&mut b, &sid, "c/badkey", "").await.unwrap_err();
    errors.push_str(&format!("{e:?}"));
    let rot = sc
        .admin()
        .await
        .rotate(pb::RotateRequest {
            name: "c/plain".into(),
            grace_seconds: 1,
            value: format!("{CANARY}-rotated").into_bytes(),
        })
        .await
        .unwrap()
        .into_inner();
    let r = get(&mut b, &sid, "c/plain", "").await.unwrap();
    assert_eq!(r.version, rot.version);
    let e = get(&mut b, &sid, "c/plain", "no-such-version")
        .await
        .unwrap_err();
    errors.push_str(&format!("{e:?}"));
    // Let the recheck poller and the grace retirement run with trace logging on.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let logs = sc.logs();
    assert!(
        logs.contains("TRACE") || logs.contains("DEBUG"),
        "trace logging is on"
    );
    assert!(logs.contains("promoted new version"));
    for (what, text) in [
        ("logs", &logs),
        ("audit", &sc.audit_text()),
        ("errors", &errors),
    ] {
        assert!(!text.contains(CANARY), "canary in {what}");
    }
}

#[test]
fn example_config_is_accepted() {
    let out = std::process::Command::new(BIN)
        .args([
            "check-config",
            concat!(env!("CARGO_MANIFEST_DIR"), "/config/aws.toml"),
        ])
        .env("AWS_REGION", "eu-west-1")
        .env("SIDECRED_AWS_ENDPOINT", "http://127.0.0.1:4566")
        .output()
        .unwrap();
    ok_stdout(&out);
}
