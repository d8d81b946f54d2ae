//! What a reader of the audit file learns: ids and label values are HMAC digests, so a copied
//! line cannot be replayed as a session id, while `sidecred audit hash` still finds one.

mod common;

use common::*;
use sidecred::api::pb;
use std::os::unix::fs::PermissionsExt;

#[tokio::test]
async fn audit_lines_hold_digests_of_ids_and_labels_and_the_cli_finds_them() {
    let sc = Sidecar::start(&dev_body("", ""));
    let mut b = sc.broker().await;
    let sid = b
        .open_session(pb::OpenSessionRequest {
            labels: [("agent_id".to_string(), "agent-label-canary".to_string())].into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .session_id;
    let g = b
        .get_secret(pb::GetSecretRequest {
            name: "app/a".into(),
            session_id: sid.clone(),
            call_id: "call-canary-1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(sc.audit_has("\"grant\""), "{}", sc.audit_text());
    let text = sc.audit_text();
    for raw in [
        sid.as_str(),
        g.lease_id.as_str(),
        "call-canary-1",
        "agent-label-canary",
    ] {
        assert!(!text.contains(raw), "`{raw}` is in the audit file:\n{text}");
    }
    let hash = |v: &str| {
        let out = sc.cli(&["audit", "hash", v, "--config", sc.config.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    let events = sc.audit_events();
    let open = events
        .iter()
        .find(|e| e["event"] == "session_open")
        .unwrap();
    assert_eq!(open["session"], hash(&sid));
    assert_eq!(open["labels"]["agent_id"], hash("agent-label-canary"));
    let grant = events.iter().find(|e| e["event"] == "grant").unwrap();
    assert_eq!(
        grant["session"],
        hash(&sid),
        "lines of one session correlate"
    );
    assert_eq!(grant["lease"], hash(&g.lease_id));
    assert_eq!(grant["call"], hash("call-canary-1"));
    assert!(hash(&sid).starts_with("hmac-sha256:"));

    // The key is private to the sidecar's uid.
    let key = sc.dir.path().join("state/audit-hmac.key");
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // A digest is not a session id: presented as one, it is refused like any unknown id.
    let e = b
        .get_secret(pb::GetSecretRequest {
            name: "app/a".into(),
            session_id: hash(&sid),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
}

#[test]
fn hashing_can_be_turned_off_and_a_shared_key_file_is_refused() {
    let sc = Sidecar::builder(&format!("{}\n", dev_body("", ""))).start();
    // The CLI refuses a key that group or other may read.
    let key = sc.dir.path().join("state/audit-hmac.key");
    assert!(wait_for(std::time::Duration::from_secs(5), || key
        .exists()
        .then_some(()))
    .is_some());
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = sc.cli(&[
        "audit",
        "hash",
        "x",
        "--config",
        sc.config.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("mode 0644"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(sc);

    let sc = Sidecar::builder(&dev_body("", ""))
        .audit_extra("hmac_ids = false")
        .start();
    let sid = String::from_utf8(sc.cli(&["session", "open"]).stdout)
        .unwrap()
        .trim()
        .to_string();
    assert!(sc.audit_has(&sid), "ids as they are when hmac_ids = false");
    let out = sc.cli(&[
        "audit",
        "hash",
        "x",
        "--config",
        sc.config.to_str().unwrap(),
    ]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("hmac_ids is false"));
}
