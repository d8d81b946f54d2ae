//! `refreshNow`, against the real agent: a value changed in moto behind both caches is served
//! from the cache without it and from Secrets Manager with it, by both; bad values get the
//! agent's status. A caller the policy refuses cannot use it to drop what others have cached.

use crate::aws_support::create;
use crate::moto::Moto;
use crate::support::*;

/// Changes the value in moto, outside sidecred and the agent (AWSCURRENT moves to it).
async fn put(m: &Moto, name: &str, value: &str) -> String {
    m.client()
        .put_secret_value()
        .secret_id(name)
        .secret_string(value)
        .send()
        .await
        .unwrap()
        .version_id
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_now_reads_through_like_the_agent() {
    let m = Moto::start();
    create(&m, "app/db", "value-one").await;
    let port = crate::common::free_port(false);
    let policy = format!(
        "{ROOT_POLICY}\n[[policy.workload]]\nname = \"nobody\"\nuids = [65534]\nsecrets = [\"other/*\"]\n"
    );
    let sc = sidecar(&body(&m, port, &["app/db"], "", &policy), port);
    let agent = Agent::start(&m, 300);
    // moto answers an unstaged read with the first version once labels move (see diff.rs), so
    // every read here names AWSCURRENT, on both sides alike.
    let q =
        |extra: &str| format!("/secretsmanager/get?secretId=app/db&versionStage=AWSCURRENT{extra}");
    let both = |path: &str| {
        let theirs = get_tok(agent.port, path);
        let ours = get_tok(port, path);
        assert_eq!(
            ours.0, theirs.0,
            "{path}: sidecred {ours:?}, agent {theirs:?}"
        );
        (json(&ours), json(&theirs))
    };
    let (ours, theirs) = both(&q(""));
    assert_eq!(ours["SecretString"], "value-one");
    assert_eq!(ours, theirs);

    let v2 = put(&m, "app/db", "value-two").await;
    // Without refreshNow (or with it false): both serve what they cached.
    for extra in ["", "&refreshNow=false", "&refreshNow=0"] {
        let (ours, theirs) = both(&q(extra));
        assert_eq!(ours["SecretString"], "value-one", "{extra}");
        assert_eq!(ours, theirs, "{extra}");
    }
    // With it: both read Secrets Manager, and the cache then holds the new value.
    for extra in ["&refreshNow=true", "", "&refreshNow=TRUE"] {
        let (ours, theirs) = both(&q(extra));
        assert_eq!(ours["SecretString"], "value-two", "{extra}");
        assert_eq!(ours["VersionId"], v2.as_str());
        assert_eq!(ours, theirs, "{extra}");
    }
    // The path form, and `1`.
    put(&m, "app/db", "value-three").await;
    let p = "/v1/app/db?versionStage=AWSCURRENT&refreshNow=1";
    let (ours, theirs) = both(p);
    assert_eq!(ours["SecretString"], "value-three");
    assert_eq!(ours, theirs);

    // Bad values: the agent's 400 and plain text, before any secret is looked at.
    for bad in ["maybe", "", "yes", "2"] {
        let path = q(&format!("&refreshNow={bad}"));
        let (theirs, ours) = (get_tok(agent.port, &path), get_tok(port, &path));
        assert_eq!(theirs.0, 400, "agent {path}: {theirs:?}");
        assert_eq!(ours, theirs, "{path}");
    }
    // The SSRF check still comes first.
    let path = q("&refreshNow=maybe");
    assert_eq!(get(port, &path, &[]).0, get(agent.port, &path, &[]).0);
    assert!(
        sc.audit_has("invalid refreshNow value"),
        "{}",
        sc.audit_text()
    );

    // A caller whose rule does not grant app/db is refused, and does not drop the cached
    // value: root still reads value-three from the cache after moto moved on.
    put(&m, "app/db", "value-four").await;
    let url = format!("http://127.0.0.1:{port}{}", q("&refreshNow=true"));
    let (st, body) = curl_as(65534, &url, &[(TOKEN_HEADER, TOKEN)]);
    assert_eq!(st, 403, "{body}");
    assert!(!body.contains("value-"), "{body}");
    assert_eq!(json(&get_tok(port, &q("")))["SecretString"], "value-three");
    assert_eq!(
        json(&get_tok(port, &q("&refreshNow=true")))["SecretString"],
        "value-four"
    );
}
