//! Reads by stage, version id, binary and JSON key; error kinds; secrets kept out of logs.
use crate::common::*;
use crate::moto::Moto;
use crate::support::*;
use aws_sdk_secretsmanager::primitives::Blob;
use sidecred::api::pb;
use std::time::Duration;
use tonic::Code;

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
    assert!(!e.message().contains("pw-1"), "{e:?}");
    assert!(sc.logs().contains("no key `nope`"), "detail logged");
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
        sc.logs().contains("`gone` is scheduled for deletion"),
        "detail logged"
    );
    assert!(!e.message().contains("gone-v1"));
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

/// IRSA: no credentials in config; the chain reads AWS_ROLE_ARN + AWS_WEB_IDENTITY_TOKEN_FILE and
/// calls STS AssumeRoleWithWebIdentity (moto answers it), endpoint from AWS_ENDPOINT_URL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_from_web_identity_as_on_eks() {
    let m = Moto::start();
    let proxy = crate::fault_proxy::FaultProxy::start(m.port);
    create(&m, "irsa", "irsa-value").await;
    let cfg = body("", "", &[("app/irsa", "irsa", "")]).replace(
        "access_key_id = \"test\"\nsecret_access_key = \"test\"\n",
        "",
    );
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(
        &token,
        "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2EifQ.c2ln",
    )
    .unwrap();
    let sc = Sidecar::builder(&cfg)
        .env("AWS_ENDPOINT_URL", &proxy.endpoint())
        .env("AWS_ROLE_ARN", "arn:aws:iam::123456789012:role/sidecred")
        .env("AWS_ROLE_SESSION_NAME", "sidecred-test")
        .env("AWS_WEB_IDENTITY_TOKEN_FILE", token.to_str().unwrap())
        .start();
    let mut b = sc.broker().await;
    let sid = open(&mut b).await;
    let r = get(&mut b, &sid, "app/irsa", "").await.unwrap();
    assert_eq!(r.value, b"irsa-value");
    assert_eq!(
        proxy.count("other"),
        1,
        "one STS AssumeRoleWithWebIdentity call"
    );
    assert_eq!(proxy.count("GetSecretValue"), 1);
}
