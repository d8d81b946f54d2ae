//! Behind the endpoint are sidecred's sessions, cache and rotation grace: one session per
//! caller, cached values served while the backend is away, AWSPREVIOUS only inside the grace
//! window, and a revoked session refused with a clear 403.

use crate::aws_support::create;
use crate::moto::Moto;
use crate::support::*;
use sidecred::api::pb;
use std::time::Duration;

const Q: &str = "/secretsmanager/get?secretId=app/db";

/// Sessions opened for the endpoint's callers.
async fn agent_sessions(sc: &crate::common::Sidecar) -> Vec<pb::SessionInfo> {
    let mut admin = sc.admin().await;
    let all = admin
        .list_sessions(pb::ListSessionsRequest {})
        .await
        .unwrap()
        .into_inner()
        .sessions;
    all.into_iter()
        .filter(|s| s.labels.get("api").map(String::as_str) == Some("aws-agent"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_session_is_refused_with_403() {
    let m = Moto::start();
    create(&m, "app/db", "v-one").await;
    let port = crate::common::free_port(false);
    let policy = ROOT_POLICY.replace("uids = [0]\nsecrets", "uids = [0, 65534]\nsecrets");
    let sc = sidecar(
        &body(&m, port, &["app/db"], "session_ttl = \"10m\"", &policy),
        port,
    );
    for _ in 0..3 {
        assert_eq!(get_tok(port, Q).0, 200);
    }
    let url = format!("http://127.0.0.1:{port}{Q}");
    let tok = [(TOKEN_HEADER, TOKEN)];
    assert_eq!(curl_as(65534, &url, &tok).0, 200);
    // One session per caller, whatever the number of requests or connections.
    let sessions = agent_sessions(&sc).await;
    assert_eq!(sessions.len(), 2, "{sessions:?}");
    let mine = sessions.iter().find(|s| s.owner_uid == 0).unwrap();
    assert!(mine.expires_at - mine.opened_at <= 600);

    let mut admin = sc.admin().await;
    admin
        .revoke_session(pb::RevokeSessionRequest {
            session_id: mine.session_id.clone(),
            reason: "agent compromised".into(),
        })
        .await
        .unwrap();
    let (st, body) = get_tok(port, Q);
    assert_eq!(st, 403, "{body}");
    let v = json(&(st, body.clone()));
    assert_eq!(v["__type"], "AccessDeniedException");
    let msg = v["message"].as_str().unwrap();
    assert!(
        msg.contains("revoked") && msg.contains("agent compromised"),
        "{msg}"
    );
    assert!(!body.contains("v-one"));
    // It stays refused (no fresh session behind the caller's back) ...
    assert_eq!(get_tok(port, Q).0, 403);
    assert_eq!(agent_sessions(&sc).await.len(), 1);
    // ... while another caller's session is untouched.
    assert_eq!(curl_as(65534, &url, &tok).0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_values_and_previous_only_in_grace() {
    let mut m = Moto::start();
    let v1 = create(&m, "app/db", "v-one").await;
    let port = crate::common::free_port(false);
    let b =
        body(&m, port, &["app/db"], "", ROOT_POLICY).replace("grace = \"1h\"", "grace = \"3s\"");
    let sc = sidecar(&b, port);
    assert_eq!(json(&get_tok(port, Q))["SecretString"], "v-one");
    // No previous version before any rotation.
    let (st, body) = get_tok(port, &format!("{Q}&versionStage=AWSPREVIOUS"));
    assert_eq!(st, 404, "{body}");

    let mut admin = sc.admin().await;
    let v2 = admin
        .rotate(pb::RotateRequest {
            name: "app/db".into(),
            grace_seconds: 0,
            value: b"v-two".to_vec(),
        })
        .await
        .unwrap()
        .into_inner()
        .version;
    let cur = json(&get_tok(port, Q));
    assert_eq!(
        (cur["SecretString"].as_str(), cur["VersionId"].as_str()),
        (Some("v-two"), Some(v2.as_str()))
    );
    let prev = json(&get_tok(port, &format!("{Q}&versionStage=AWSPREVIOUS")));
    assert_eq!(prev["SecretString"], "v-one");
    assert_eq!(prev["VersionStages"], serde_json::json!(["AWSPREVIOUS"]));
    let pinned = json(&get_tok(port, &format!("{Q}&versionId={v1}")));
    assert_eq!(pinned["VersionStages"], serde_json::json!(["AWSPREVIOUS"]));
    // A stage that does not name the pinned version.
    let (st, body) = get_tok(port, &format!("{Q}&versionId={v1}&versionStage=AWSCURRENT"));
    assert_eq!(st, 400, "{body}");

    // After the window, sidecred no longer serves v1 (AWS still labels it AWSPREVIOUS).
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let (st, body) = get_tok(port, &format!("{Q}&versionStage=AWSPREVIOUS"));
    assert_eq!(st, 404, "{body}");
    let (st, body) = get_tok(port, &format!("{Q}&versionId={v1}"));
    assert_eq!(st, 404, "{body}");
    assert!(
        body.contains("ResourceNotFoundException") && !body.contains("v-one"),
        "{body}"
    );

    // The current value is cached: served with moto gone.
    m.stop();
    for _ in 0..3 {
        let cur = json(&get_tok(port, Q));
        assert_eq!(cur["SecretString"], "v-two");
    }
    // ... and a value never read is not: the backend's absence shows as a 502.
    let (st, body) = get_tok(
        port,
        &format!("{Q}&versionId=00000000-0000-0000-0000-000000000000"),
    );
    assert!(st == 502 || st == 404, "{st} {body}");
}
