//! Dynamic PostgreSQL credentials through OpenBao's database engine, obtained via sidecred and
//! used to log in to a real PostgreSQL: per-session and per-call credentials, renewal, session
//! revocation cascading to the database, and revocation retried across an OpenBao outage.

mod common;

use common::openbao::{token_file_backend, OpenBao, OPEN_POLICY};
use common::postgres::Postgres;
use common::*;
use sidecred::api::pb;
use std::time::{Duration, Instant};

struct Env {
    sc: Sidecar,
    pg: Postgres,
    _tmp: tempfile::TempDir,
}

/// PostgreSQL, OpenBao with role `ro` (lease ttl/max in seconds), and a sidecar in front.
async fn setup(ttl: u64, max: u64) -> (Env, OpenBao) {
    let pg = Postgres::start();
    let bao = OpenBao::start();
    bao.database_role(&pg, "ro", ttl, max).await;
    let tmp = tempfile::tempdir().unwrap();
    let tf = tmp.path().join("token");
    std::fs::write(&tf, &bao.root_token).unwrap();
    std::fs::set_permissions(&tf, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let body = format!(
        r#"{}
[[secret]]
name = "db/session"
backend = "bao"
path = "database/creds/ro"
zone = "restricted"
scope = "session"
ttl = "10m"
options = {{ engine = "dynamic" }}

[[secret]]
name = "db/call"
backend = "bao"
path = "database/creds/ro"
zone = "restricted"
scope = "call"
ttl = "30s"
options = {{ engine = "dynamic" }}
{OPEN_POLICY}"#,
        token_file_backend(&bao, &tf, "")
    );
    let sc = Sidecar::builder(&body)
        .server("backend_timeout = \"1s\"")
        .start();
    (Env { sc, pg, _tmp: tmp }, bao)
}

struct Creds {
    user: String,
    password: String,
    lease_id: String,
    /// OpenBao's lease id (the version is its last segment).
    bao_lease: String,
}

use common::open_labeled as open;

async fn creds(b: &mut Broker, sid: &str, name: &str, call: &str) -> Creds {
    let r = b
        .get_secret(pb::GetSecretRequest {
            name: name.into(),
            session_id: sid.into(),
            call_id: call.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let v: serde_json::Value = serde_json::from_slice(&r.value).unwrap();
    Creds {
        user: v["username"].as_str().unwrap().into(),
        password: v["password"].as_str().unwrap().into(),
        lease_id: r.lease_id,
        bao_lease: format!("database/creds/ro/{}", r.version),
    }
}

fn login(pg: &Postgres, c: &Creds) -> Result<String, String> {
    pg.psql(&c.user, &c.password, "SELECT current_user")
}

/// How long until `c` can no longer log in (None if it still can after `limit`).
fn dies_within(pg: &Postgres, c: &Creds, limit: Duration) -> Option<Duration> {
    let t = Instant::now();
    wait_for(limit, || login(pg, c).is_err().then(|| t.elapsed()))
}

/// The OpenBao token (lookup data) whose metadata has `key` = `value`.
async fn token_with(bao: &OpenBao, key: &str, value: &str) -> serde_json::Value {
    let list = bao
        .api("LIST", "auth/token/accessors", serde_json::Value::Null)
        .await;
    for acc in list["data"]["keys"].as_array().unwrap() {
        let t = bao
            .api(
                "POST",
                "auth/token/lookup-accessor",
                serde_json::json!({ "accessor": acc }),
            )
            .await;
        if t["data"]["meta"][key] == value {
            return t["data"].clone();
        }
    }
    panic!("no OpenBao token has {key} = {value}");
}

#[tokio::test]
async fn session_credentials_log_in_and_die_with_the_session() {
    let (env, bao) = setup(300, 600).await;
    let mut b = env.sc.broker().await;
    let s1 = open(&mut b, "agent-1").await;
    let s2 = open(&mut b, "agent-2").await;
    let c1 = creds(&mut b, &s1, "db/session", "").await;
    let c2 = creds(&mut b, &s2, "db/session", "").await;
    assert_ne!(c1.user, c2.user, "each session has its own role");
    assert_eq!(login(&env.pg, &c1).unwrap(), c1.user);
    assert_eq!(login(&env.pg, &c2).unwrap(), c2.user);
    let again = creds(&mut b, &s1, "db/session", "").await;
    assert_eq!(again.user, c1.user, "same session, same credentials");
    let t = token_with(&bao, "sidecred_session", &s1).await;
    assert_eq!(t["meta"]["agent_id"], "agent-1", "{t}");
    assert!(t["ttl"].as_u64().unwrap() <= 3600, "session ttl: {t}");

    let t = Instant::now();
    let rep = env
        .sc
        .admin()
        .await
        .revoke_session(pb::RevokeSessionRequest {
            session_id: s1.clone(),
            reason: "compromised".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let revoke_took = t.elapsed();
    assert!(rep.pending.is_empty(), "{rep:?}");
    let step = rep
        .done
        .iter()
        .find(|s| s.target == "bao")
        .expect("bao step");
    assert_eq!((step.what.as_str(), step.count), ("session", 1), "{rep:?}");
    let died = dies_within(&env.pg, &c1, Duration::from_secs(1));
    assert!(died.is_some(), "revoked credentials still log in");
    assert!(!env.pg.role_exists(&c1.user), "role still in pg_roles");
    assert_eq!(
        login(&env.pg, &c2).unwrap(),
        c2.user,
        "other session unaffected"
    );
    eprintln!("revoke_session took {revoke_took:?}; login failed {died:?} after it returned");
    let text = format!("{}{}", env.sc.logs(), env.sc.audit_text());
    assert!(
        !text.contains(&c1.password) && !text.contains(&c2.password),
        "password leaked"
    );
}

#[tokio::test]
async fn call_credentials_differ_per_call_and_die_on_release() {
    let (env, bao) = setup(300, 600).await;
    let mut b = env.sc.broker().await;
    let s = open(&mut b, "agent-call").await;
    let a = creds(&mut b, &s, "db/call", "call-a").await;
    let c = creds(&mut b, &s, "db/call", "call-b").await;
    assert_ne!(a.user, c.user);
    // The role grants 300 s, but the lease hangs off a call token that OpenBao expires (and
    // revokes, with its leases) after the secret's ttl of 30 s.
    let body = serde_json::json!({ "lease_id": a.bao_lease });
    let l = bao.api("PUT", "sys/leases/lookup", body).await;
    assert!(l["data"]["ttl"].as_u64().unwrap() > 30);
    let t = token_with(&bao, "sidecred_call", "call-a").await;
    assert!(t["ttl"].as_u64().unwrap() <= 30, "{t}");
    assert_eq!(t["meta"]["sidecred_session"], s.as_str());
    assert_eq!(login(&env.pg, &a).unwrap(), a.user);
    assert_eq!(login(&env.pg, &c).unwrap(), c.user);
    b.release_lease(pb::ReleaseLeaseRequest {
        lease_id: a.lease_id.clone(),
        session_id: s.clone(),
    })
    .await
    .unwrap();
    assert!(dies_within(&env.pg, &a, Duration::from_secs(1)).is_some());
    assert!(!env.pg.role_exists(&a.user));
    assert_eq!(
        login(&env.pg, &c).unwrap(),
        c.user,
        "the other call keeps its credentials"
    );
}

#[tokio::test]
async fn renewal_keeps_credentials_alive_past_their_ttl() {
    // Leases live 3 s unless renewed; sidecred renews at about two thirds of that. One real
    // renewal against OpenBao and PostgreSQL is the point here: 4 s is past the first ttl.
    // When renewal falls due, to the second, is checked with a manual clock in
    // engine_rotation_time.rs.
    let (env, _bao) = setup(3, 60).await;
    let mut b = env.sc.broker().await;
    let s = open(&mut b, "agent-renew").await;
    let c = creds(&mut b, &s, "db/session", "").await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        login(&env.pg, &c).unwrap(),
        c.user,
        "expired despite renewal"
    );
    assert!(env.pg.role_exists(&c.user));
    let again = creds(&mut b, &s, "db/session", "").await;
    assert_eq!(again.user, c.user, "renewed credentials are still served");
    assert!(env.sc.logs().contains("backend lease renewed"));
}

#[tokio::test]
async fn revocation_is_retried_across_an_outage() {
    let (env, bao) = setup(300, 600).await;
    let mut b = env.sc.broker().await;
    let s = open(&mut b, "agent-outage").await;
    let c = creds(&mut b, &s, "db/session", "").await;
    bao.freeze(true);
    let rep = env
        .sc
        .admin()
        .await
        .revoke_session(pb::RevokeSessionRequest {
            session_id: s.clone(),
            reason: "outage".into(),
        })
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    bao.freeze(false);
    let rep = rep.unwrap().into_inner();
    assert_eq!(rep.pending.len(), 1, "{rep:?}");
    assert_eq!(rep.pending[0].target, "bao");
    let mut admin = env.sc.admin().await;
    let t = Instant::now();
    let mut cleared = false;
    while t.elapsed() < Duration::from_secs(8) {
        let st = admin
            .status(pb::StatusRequest {})
            .await
            .unwrap()
            .into_inner();
        if st.pending_revocations == 0 {
            cleared = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(cleared, "revocation still pending:\n{}", env.sc.logs());
    assert!(dies_within(&env.pg, &c, Duration::from_secs(1)).is_some());
    assert!(!env.pg.role_exists(&c.user));
    assert!(env.sc.logs().contains("pending revocation completed"));
}
