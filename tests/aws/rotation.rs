//! Rotation through sidecred: AWSPENDING, verification, promotion, grace and retirement.
use crate::common::*;
use crate::moto::Moto;
use crate::support::*;
use sidecred::api::pb;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tonic::Code;

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
