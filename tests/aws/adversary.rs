//! Attacks through the AWS backend: pinning a retired version id (before and after a restart)
//! and reading IAM text out of error messages.
use crate::common::*;
use crate::fault_proxy::{Fault, FaultProxy};
use crate::moto::Moto;
use crate::support::*;
use sidecred::api::pb;
use std::time::Duration;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retired_version_id_is_refused_after_restart() {
    let m = Moto::start();
    let v1 = create(&m, "ret", "ret-v1").await;
    // The retired version keeps its AWSPREVIOUS label: AWS still serves it by id.
    let mut sc = Sidecar::start(&body(&m.endpoint(), "", &[("app/ret", "ret", "")]));
    let r = sc
        .admin()
        .await
        .rotate(pb::RotateRequest {
            name: "app/ret".into(),
            grace_seconds: 1,
            value: b"ret-v2".to_vec(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.previous_version, v1);
    let v = format!("\"version\":\"{v1}\"");
    let retired = wait_for(Duration::from_secs(10), || {
        sc.audit_text()
            .lines()
            .any(|l| l.contains("\"event\":\"retire\"") && l.contains(&v))
            .then_some(())
    });
    assert!(retired.is_some(), "{}", sc.logs());
    let mut b = sc.broker().await;
    let sid = open(&mut b).await;
    let e = get(&mut b, &sid, "app/ret", &v1).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");

    sc.stop();
    sc.spawn();
    let mut b = sc.broker().await;
    let sid = open(&mut b).await;
    let e = get(&mut b, &sid, "app/ret", &v1).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "served after restart: {e:?}");
    assert!(!e.message().contains("ret-v1"));
    assert_eq!(
        get(&mut b, &sid, "app/ret", "").await.unwrap().value,
        b"ret-v2"
    );
    assert!(stages(&m, "ret").await[&v1]
        .iter()
        .any(|s| s == "AWSPREVIOUS"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_denied_reaches_the_caller_without_iam_text() {
    let m = Moto::start();
    let proxy = FaultProxy::start(m.port);
    create(&m, "den", "den-v1").await;
    let sc = Sidecar::start(&body(&proxy.endpoint(), "", &[("app/den", "den", "")]));
    let mut b = sc.broker().await;
    let sid = open(&mut b).await;
    proxy.fail_always(Some(Fault::ErrorWith(
        "AccessDeniedException",
        "User: arn:aws:iam::123456789012:user/sidecred is not authorized to perform: secretsmanager:GetSecretValue",
    )));
    let e = get(&mut b, &sid, "app/den", "").await.unwrap_err();
    assert_eq!(
        (e.code(), err_code(&e).as_str()),
        (Code::PermissionDenied, "denied"),
        "{e:?}"
    );
    let msg = e.message();
    assert!(
        !msg.contains("arn:") && !msg.contains("123456789012") && !msg.contains("GetSecretValue"),
        "IAM text reached the caller: {msg}"
    );
    assert!(msg.contains("app/den") && msg.contains("`aws`"), "{msg}");
    assert!(
        sc.logs().contains("arn:aws:iam::123456789012"),
        "detail logged"
    );
    proxy.fail_always(None);
}
