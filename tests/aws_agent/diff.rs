//! The same requests against the real AWS Secrets Manager Agent and against sidecred, both
//! reading the same moto: the same status codes and the same JSON fields and values.

use crate::aws_support::{create, rotate_outside};
use crate::moto::Moto;
use crate::support::*;
use sidecred::api::pb;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_answers_as_the_real_agent() {
    let m = Moto::start();
    let v1 = create(&m, "app/db", "value-one").await;
    m.client()
        .create_secret()
        .name("bin/blob")
        .secret_binary(aws_sdk_secretsmanager::primitives::Blob::new(vec![
            0xff, 0, b'a',
        ]))
        .send()
        .await
        .unwrap();
    let port = crate::common::free_port(false);
    let sc = sidecar(
        &body(&m, port, &["app/db", "bin/blob", "other"], "", ROOT_POLICY),
        port,
    );

    let agent = Agent::start(&m, 300);
    let ok = [(TOKEN_HEADER, TOKEN)];
    let vault = [("X-Vault-Token", TOKEN)];
    let wrong = [(TOKEN_HEADER, "not-the-token")];
    let fwd = [(TOKEN_HEADER, TOKEN), ("X-Forwarded-For", "10.1.2.3")];
    let q = |s: &str| format!("/secretsmanager/get?secretId={s}");
    type Headers<'a> = &'a [(&'a str, &'a str)];
    fn both(p: String, h: Headers, st: u16) -> (String, String, Headers, u16) {
        (p.clone(), p, h, st)
    }
    // (request to sidecred, the same to the agent, headers, status)
    let same = |cases: &[(String, String, Headers, u16)]| {
        for (ours_path, their_path, headers, status) in cases {
            let theirs = get(agent.port, their_path, headers);
            let ours = get(port, ours_path, headers);
            assert_eq!(theirs.0, *status, "agent {their_path}: {theirs:?}");
            assert_eq!(
                ours.0, theirs.0,
                "status of {ours_path}: sidecred {ours:?}, agent {theirs:?}"
            );
            assert_eq!(json(&ours), json(&theirs), "body of {ours_path}");
        }
    };
    same(&[
        both(q("app/db"), &ok, 200),
        both("/v1/app/db".into(), &ok, 200),
        both(q("app%2Fdb"), &ok, 200),
        both(q(&format!("app/db&versionId={v1}")), &ok, 200),
        both(q("bin/blob"), &ok, 200),
        both(q("app/db"), &vault, 200),
        both(q("app/db&refreshNow=false"), &ok, 200),
        // Unknown secret, unknown version.
        both(q("nope"), &ok, 404),
        both(q("app/db&versionId=no-such-version"), &ok, 404),
        // The SSRF header: missing, wrong, forwarded; then method, route and query checks.
        both(q("app/db"), &[], 403),
        both(q("app/db"), &wrong, 403),
        both(q("app/db"), &fwd, 400),
        both("/ping".into(), &[], 200),
        both("/nowhere".into(), &ok, 404),
        both("/nowhere".into(), &[], 403),
        both("/secretsmanager/get".into(), &ok, 400),
        both(q("app/db&abc=1"), &ok, 400),
        both(q("app/db&refreshNow=maybe"), &ok, 400),
        both("/v1/".into(), &ok, 400),
    ]);

    // Rotated through sidecred: AWS now labels v1 AWSPREVIOUS, and sidecred serves v1 as the
    // previous version for the secret's grace (1h). moto answers an unstaged GetSecretValue
    // with the version it created first once labels have moved (AWS answers AWSCURRENT), so
    // after the rotation sidecred's unstaged answer is compared with the agent's AWSCURRENT one.
    let mut admin = sc.admin().await;
    let v2 = admin
        .rotate(pb::RotateRequest {
            name: "app/db".into(),
            grace_seconds: 0,
            value: b"value-two".to_vec(),
        })
        .await
        .unwrap()
        .into_inner()
        .version;
    assert_ne!(v1, v2);
    let cur = |p: &str| format!("{p}&versionStage=AWSCURRENT");
    same(&[
        (
            q("app/db&versionStage=AWSCURRENT"),
            cur(&q("app/db")),
            &ok,
            200,
        ),
        (q("app/db"), cur(&q("app/db")), &ok, 200),
        (
            "/v1/app/db".into(),
            "/v1/app/db?versionStage=AWSCURRENT".into(),
            &ok,
            200,
        ),
        both(q("app/db&versionStage=AWSPREVIOUS"), &ok, 200),
        both("/v1/app/db?versionStage=AWSPREVIOUS".into(), &ok, 200),
        both(q(&format!("app/db&versionId={v2}")), &ok, 200),
    ]);
    // The fields a client reads, spelled out once.
    let cur = json(&get_tok(port, &q("app/db")));
    assert_eq!(cur["SecretString"], "value-two");
    assert_eq!(cur["VersionId"], v2.as_str());
    assert_eq!(cur["VersionStages"], serde_json::json!(["AWSCURRENT"]));
    assert!(cur["ARN"]
        .as_str()
        .unwrap()
        .starts_with("arn:aws:secretsmanager:us-east-1:"));
    assert!(cur["CreatedDate"].as_str().unwrap().parse::<f64>().is_ok());
    let prev = json(&get_tok(port, &q("app/db&versionStage=AWSPREVIOUS")));
    assert_eq!(
        (prev["SecretString"].as_str(), prev["VersionId"].as_str()),
        (Some("value-one"), Some(v1.as_str()))
    );
    assert_eq!(json(&get_tok(port, &q("bin/blob")))["SecretBinary"], "/wBh");
    // A secret sidecred serves but AWS does not have: the agent's not-found shape.
    let (st, body) = get_tok(port, &q("other"));
    assert_eq!(st, 404, "{body}");
    assert_eq!(json(&(st, body))["__type"], "ResourceNotFoundException");

    // A change made outside sidecred and the agent alike is seen by both once their caches
    // look again; here both are asked for the pinned new version, which neither has cached.
    let v3 = rotate_outside(&m, "app/db", "value-three").await;
    let path = q(&format!("app/db&versionId={v3}"));
    let (theirs, ours) = (get(agent.port, &path, &ok), get(port, &path, &ok));
    assert_eq!(theirs.0, 200);
    assert_eq!(json(&ours)["SecretString"], json(&theirs)["SecretString"]);
    assert_eq!(json(&ours)["VersionId"], json(&theirs)["VersionId"]);
}
