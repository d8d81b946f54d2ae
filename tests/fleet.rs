//! Fleet-wide session revocation with real processes: three sidecred sidecars against one
//! OpenBao (database engine) and one PostgreSQL. A revocation started on one sidecar, or by
//! `sidecred revoke-session --openbao` with no sidecar, is refused on every sidecar within 1 s
//! and drops the session's database roles; crashes and outages delay it but never lose it.

mod common;
#[path = "common/fault_proxy.rs"]
mod fault_proxy;

use common::openbao::{token_file_backend, OpenBao, OPEN_POLICY};
use common::postgres::Postgres;
use common::*;
use serde_json::json;
use sidecred::api::pb;
use std::path::Path;
use std::time::{Duration, Instant};

struct Fleet {
    scs: Vec<Sidecar>,
    pg: Postgres,
    bao: OpenBao,
    /// Between the sidecars and OpenBao, counting requests.
    proxy: fault_proxy::FaultProxy,
    _tmp: tempfile::TempDir,
}

fn body(bao: &OpenBao, proxy: &str, token_file: &Path, id: &str) -> String {
    let backend = token_file_backend(bao, token_file, "").replace(&bao.addr, proxy);
    format!(
        r#"{backend}
[fleet]
backend = "bao"
prefix = "sidecred/fleet"
poll_interval = "250ms"
sidecar_id = "{id}"

[[secret]]
name = "db/session"
backend = "bao"
path = "database/creds/ro"
zone = "restricted"
scope = "session"
ttl = "10m"
options = {{ engine = "dynamic" }}
{OPEN_POLICY}"#
    )
}

/// PostgreSQL, OpenBao with role `ro`, a counting proxy, and `n` sidecars sharing the fleet.
async fn fleet(n: usize) -> Fleet {
    let pg = Postgres::start();
    let bao = OpenBao::start();
    bao.database_role(&pg, "ro", 300, 600).await;
    let tmp = tempfile::tempdir().unwrap();
    let proxy = fault_proxy::FaultProxy::start(bao.port);
    let tf = tmp.path().join("token");
    std::fs::write(&tf, &bao.root_token).unwrap();
    std::fs::set_permissions(&tf, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let scs = (0..n)
        .map(|i| {
            Sidecar::builder(&body(&bao, &proxy.endpoint(), &tf, &format!("sc-{i}")))
                .server("backend_timeout = \"1s\"")
                .start()
        })
        .collect();
    Fleet {
        scs,
        pg,
        bao,
        proxy,
        _tmp: tmp,
    }
}

struct Creds {
    user: String,
    password: String,
}

use common::open_labeled as open;

async fn get(b: &mut Broker, sid: &str) -> Result<pb::GetSecretResponse, tonic::Status> {
    b.get_secret(pb::GetSecretRequest {
        name: "db/session".into(),
        session_id: sid.into(),
        ..Default::default()
    })
    .await
    .map(|r| r.into_inner())
}

async fn creds(b: &mut Broker, sid: &str) -> Creds {
    let r = get(b, sid).await.unwrap();
    let v: serde_json::Value = serde_json::from_slice(&r.value).unwrap();
    Creds {
        user: v["username"].as_str().unwrap().into(),
        password: v["password"].as_str().unwrap().into(),
    }
}

fn login(pg: &Postgres, c: &Creds) -> Result<String, String> {
    pg.psql(&c.user, &c.password, "SELECT current_user")
}

/// Waits until every sidecar refuses `sid` as revoked; returns when each did, from `t0`.
async fn refused_everywhere(f: &Fleet, sid: &str, t0: Instant, limit: Duration) -> Vec<Duration> {
    let mut clients = Vec::new();
    for sc in &f.scs {
        clients.push(sc.broker().await);
    }
    let mut when: Vec<Option<Duration>> = vec![None; clients.len()];
    while when.iter().any(Option::is_none) && t0.elapsed() < limit {
        for (i, b) in clients.iter_mut().enumerate() {
            if when[i].is_none() {
                if let Err(s) = get(b, sid).await {
                    if err_code(&s) == "session-revoked" {
                        when[i] = Some(t0.elapsed());
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    when.into_iter()
        .enumerate()
        .map(|(i, w)| {
            w.unwrap_or_else(|| {
                panic!(
                    "sidecar {i} still accepts {sid} after {limit:?}:\n{}",
                    f.scs[i].logs()
                )
            })
        })
        .collect()
}

/// Requests the sidecars sent to OpenBao so far.
fn bao_requests(f: &Fleet) -> u64 {
    f.proxy.count("other")
}

async fn admin_revoke(sc: &Sidecar, sid: &str) -> Result<pb::RevokeSessionResponse, tonic::Status> {
    sc.admin()
        .await
        .revoke_session(pb::RevokeSessionRequest {
            session_id: sid.into(),
            reason: "compromised".into(),
        })
        .await
        .map(|r| r.into_inner())
}

async fn pending(sc: &Sidecar) -> u32 {
    sc.admin()
        .await
        .status(pb::StatusRequest {})
        .await
        .unwrap()
        .into_inner()
        .pending_revocations
}

#[tokio::test]
async fn revocation_through_one_sidecar_is_refused_everywhere_within_a_second() {
    let f = fleet(3).await;
    // Idle load first: each sidecar polls the log once per 250 ms.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = bao_requests(&f);
    let window = Duration::from_secs(3);
    tokio::time::sleep(window).await;
    let per_sidecar = (bao_requests(&f) - before) as f64 / window.as_secs_f64() / 3.0;
    eprintln!("idle OpenBao load: {per_sidecar:.2} requests/s per sidecar");
    assert!(
        per_sidecar <= 5.0,
        "idle load {per_sidecar:.2}/s per sidecar"
    );

    let mut a = f.scs[0].broker().await;
    let mut c = f.scs[2].broker().await;
    let victim = open(&mut a, "agent-victim").await;
    let other = open(&mut c, "agent-other").await;
    let vc = creds(&mut a, &victim).await;
    let oc = creds(&mut c, &other).await;
    assert_eq!(login(&f.pg, &vc).unwrap(), vc.user);
    assert_eq!(login(&f.pg, &oc).unwrap(), oc.user);
    // Before: the other sidecars simply do not know the session (refused like any session
    // that is not the caller's).
    let mut b = f.scs[1].broker().await;
    assert_eq!(err_code(&get(&mut b, &victim).await.unwrap_err()), "denied");

    // Revoked through sidecar B, which does not hold it.
    let t0 = Instant::now();
    let rep = admin_revoke(&f.scs[1], &victim).await.unwrap();
    let took = t0.elapsed();
    assert!(rep.pending.is_empty(), "{rep:?}");
    for what in ["tombstone", "log", "token"] {
        assert!(
            rep.done
                .iter()
                .any(|s| s.target == "fleet" && s.what == what),
            "no fleet {what} step: {rep:?}"
        );
    }
    let when = refused_everywhere(&f, &victim, t0, Duration::from_secs(1)).await;
    eprintln!("revoke call {took:?}; refused on A/B/C after {when:?}");
    let died = wait_for(Duration::from_secs(1), || {
        login(&f.pg, &vc).is_err().then_some(())
    });
    assert!(died.is_some(), "revoked credentials still log in");
    assert!(!f.pg.role_exists(&vc.user), "role still in pg_roles");
    assert_eq!(
        login(&f.pg, &oc).unwrap(),
        oc.user,
        "other session untouched"
    );
    assert!(
        get(&mut c, &other).await.is_ok(),
        "other session still served"
    );
    // Sidecar A tore its own session down and audited it.
    let torn = wait_for(Duration::from_secs(2), || {
        f.scs[0]
            .audit_text()
            .lines()
            .any(|l| l.contains("session_revoke") && l.contains("via=fleet"))
            .then_some(())
    });
    assert!(torn.is_some(), "{}", f.scs[0].audit_text());
    for sc in &f.scs {
        let text = format!("{}{}", sc.logs(), sc.audit_text());
        assert!(!text.contains(&vc.password) && !text.contains(&oc.password));
    }
}

#[tokio::test]
async fn cli_revokes_through_openbao_with_no_sidecar() {
    let f = fleet(3).await;
    let mut a = f.scs[0].broker().await;
    let mut c = f.scs[2].broker().await;
    let victim = open(&mut a, "agent-victim").await;
    let other = open(&mut c, "agent-other").await;
    let vc = creds(&mut a, &victim).await;
    let oc = creds(&mut c, &other).await;
    let t0 = Instant::now();
    let out = std::process::Command::new(BIN)
        .args(["revoke-session", &victim, "--reason", "incident-42"])
        .args(["--openbao", &f.bao.addr, "--json"])
        .env("BAO_TOKEN", &f.bao.root_token)
        .env("SIDECRED_ADMIN_SOCKET", "/nonexistent/admin.sock")
        .output()
        .unwrap();
    let text = ok_stdout(&out);
    let rep: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
    assert_eq!(rep["pending"], json!([]), "{rep}");
    assert_eq!(rep["done"].as_array().unwrap().len(), 3, "{rep}");
    let when = refused_everywhere(&f, &victim, t0, Duration::from_secs(1)).await;
    eprintln!("CLI took {:?}; refused after {when:?}", t0.elapsed());
    assert!(wait_for(Duration::from_secs(1), || login(&f.pg, &vc)
        .is_err()
        .then_some(()))
    .is_some());
    assert!(!f.pg.role_exists(&vc.user));
    assert_eq!(login(&f.pg, &oc).unwrap(), oc.user);
    // The tombstone says who and why.
    let t = f
        .bao
        .api(
            "GET",
            &format!("secret/data/sidecred/fleet/tombstones/{victim}"),
            serde_json::Value::Null,
        )
        .await;
    assert_eq!(t["data"]["data"]["reason"], "incident-42");
    assert!(t["data"]["data"]["origin"]
        .as_str()
        .unwrap()
        .starts_with("cli:"));
    // Unknown token: a clear failure, exit code 5 or 3, nothing printed as done.
    let bad = std::process::Command::new(BIN)
        .args(["revoke-session", &other, "--openbao", &f.bao.addr])
        .env("BAO_TOKEN", "s.not-a-token")
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("403"),
        "{bad:?}"
    );
    assert_eq!(login(&f.pg, &oc).unwrap(), oc.user);
}

#[tokio::test]
async fn a_sidecar_killed_mid_revocation_finishes_it_after_restart() {
    let mut f = fleet(2).await;
    let _ = &f.bao;
    let mut a = f.scs[0].broker().await;
    let victim = open(&mut a, "agent-victim").await;
    let vc = creds(&mut a, &victim).await;
    // OpenBao stops answering, and nothing sent now reaches it: only the journal remembers.
    f.proxy.fail_always(Some(fault_proxy::Fault::Hang));
    let admin = f.scs[0].admin().await;
    let call = tokio::spawn(async move {
        let mut admin = admin;
        admin
            .revoke_session(pb::RevokeSessionRequest {
                session_id: victim.clone(),
                reason: "crash test".into(),
            })
            .await
    });
    tokio::time::sleep(Duration::from_millis(400)).await;
    f.scs[0].kill();
    let _ = call.await;
    let journal = f.scs[0].dir.path().join("state/journal.jsonl");
    let text = std::fs::read_to_string(&journal).unwrap();
    assert!(
        text.contains("\"op\":\"session\"") && text.contains("\"op\":\"revoke\""),
        "{text}"
    );
    assert!(!text.contains(&vc.password));
    f.proxy.fail_always(None);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        login(&f.pg, &vc).unwrap(),
        vc.user,
        "still alive before the restart"
    );
    let t = Instant::now();
    f.scs[0].spawn();
    let died = wait_for(Duration::from_secs(10), || {
        login(&f.pg, &vc).is_err().then_some(())
    });
    assert!(
        died.is_some(),
        "role survived the restart:\n{}",
        f.scs[0].logs()
    );
    assert!(!f.pg.role_exists(&vc.user));
    eprintln!("role dropped {:?} after restart", t.elapsed());
    assert!(f.scs[0].logs().contains("journal replayed"));
    // The replayed publication reaches the other sidecar too.
    let victim = text
        .lines()
        .find_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).ok()?;
            (v["op"] == "revoke").then(|| v["session"].as_str().unwrap().to_string())
        })
        .unwrap();
    assert!(
        revoked_on(&f.scs[1], &victim, Duration::from_secs(10)).await,
        "sidecar B never learned of the revocation"
    );
    assert!(
        wait_for_async(Duration::from_secs(5), || async {
            pending(&f.scs[0]).await == 0
        })
        .await
    );
}

/// Whether `sc` refuses `sid` as revoked within `limit`.
async fn revoked_on(sc: &Sidecar, sid: &str, limit: Duration) -> bool {
    let mut b = sc.broker().await;
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if matches!(get(&mut b, sid).await, Err(s) if err_code(&s) == "session-revoked") {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

async fn wait_for_async<F, Fut>(limit: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

#[tokio::test]
async fn a_revocation_during_an_outage_is_pending_then_completes() {
    let f = fleet(2).await;
    let mut a = f.scs[0].broker().await;
    let victim = open(&mut a, "agent-victim").await;
    let vc = creds(&mut a, &victim).await;
    f.bao.freeze(true);
    let rep = admin_revoke(&f.scs[0], &victim).await.unwrap();
    let targets: Vec<_> = rep
        .pending
        .iter()
        .map(|s| (s.target.as_str(), s.what.as_str()))
        .collect();
    assert!(targets.contains(&("bao", "session")), "{rep:?}");
    assert!(targets.contains(&("fleet", "tombstone")), "{rep:?}");
    assert_eq!(
        err_code(&get(&mut a, &victim).await.unwrap_err()),
        "session-revoked"
    );
    assert!(pending(&f.scs[0]).await >= 2);
    tokio::time::sleep(Duration::from_secs(1)).await;
    f.bao.freeze(false);
    let t = Instant::now();
    assert!(
        wait_for_async(Duration::from_secs(10), || async {
            pending(&f.scs[0]).await == 0
        })
        .await,
        "still pending:\n{}",
        f.scs[0].logs()
    );
    assert!(wait_for(Duration::from_secs(1), || login(&f.pg, &vc)
        .is_err()
        .then_some(()))
    .is_some());
    assert!(!f.pg.role_exists(&vc.user));
    assert!(revoked_on(&f.scs[1], &victim, Duration::from_secs(2)).await);
    eprintln!(
        "outage revocation completed {:?} after OpenBao returned",
        t.elapsed()
    );
    let logs = f.scs[0].logs();
    assert!(
        logs.contains("pending fleet revocation completed"),
        "{logs}"
    );
}
