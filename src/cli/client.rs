//! The client commands: connect to a socket, make one call, print it readably or as JSON.

use super::{Cmd, Conn, SessionOp};
use crate::api::pb::{self, admin_client::AdminClient, broker_client::BrokerClient};
use crate::config::{parse_duration, Config};
use serde_json::json;
use std::io::{Read, Write};
use std::path::PathBuf;
use tonic::transport::Channel;
use tonic::{Code, Status};

/// A client failure with the exit code it maps to.
struct Fail(i32, String);

impl From<Status> for Fail {
    fn from(s: Status) -> Fail {
        let code = match s.code() {
            Code::PermissionDenied | Code::Unauthenticated => 3,
            Code::NotFound => 4,
            Code::Unavailable | Code::DeadlineExceeded => 5,
            Code::FailedPrecondition => 6,
            Code::InvalidArgument => 7,
            _ => 1,
        };
        let mut msg = format!("{:?}: {}", s.code(), s.message());
        if let Some(why) = super::connect::goaway(&s) {
            msg = format!("{msg}: {why}");
        }
        Fail(code, msg)
    }
}

/// A socket path and where it came from (for errors).
type Sock = (PathBuf, String);

fn sockets(conn: &Conn) -> Result<(Sock, Sock), Fail> {
    match &conn.config {
        Some(p) => {
            let c = Config::load(p).map_err(|e| Fail(2, e.to_string()))?.engine;
            let at = |k: &str| format!("{k} in {}", p.display());
            Ok((
                (c.server.workload_socket, at("server.workload_socket")),
                (c.server.admin_socket, at("server.admin_socket")),
            ))
        }
        None => {
            let from = |var: &str, flag: &str| {
                if std::env::var_os(var).is_some() {
                    format!("the {var} variable")
                } else {
                    format!("{flag} or the default; set {flag}, {var} or --config")
                }
            };
            Ok((
                (conn.socket.clone(), from("SIDECRED_SOCKET", "--socket")),
                (
                    conn.admin_socket.clone(),
                    from("SIDECRED_ADMIN_SOCKET", "--admin-socket"),
                ),
            ))
        }
    }
}

async fn channel((path, origin): &Sock, conn: &Conn) -> Result<Channel, Fail> {
    let expected = conn
        .server_uid
        .unwrap_or_else(|| nix::unistd::geteuid().as_raw());
    super::connect::channel(path, expected, conn.timeout, origin)
        .await
        .map_err(|e| match e {
            super::connect::ConnectError::WrongServer(m) => Fail(super::connect::WRONG_SERVER, m),
            super::connect::ConnectError::Unreachable(m) => Fail(5, m),
        })
}

async fn broker(conn: &Conn) -> Result<BrokerClient<Channel>, Fail> {
    Ok(BrokerClient::new(channel(&sockets(conn)?.0, conn).await?))
}

async fn admin(conn: &Conn) -> Result<AdminClient<Channel>, Fail> {
    Ok(AdminClient::new(channel(&sockets(conn)?.1, conn).await?))
}

fn print_json(v: serde_json::Value) {
    outln!("{v}");
}

pub(super) async fn run(cmd: Cmd) -> i32 {
    match exec(cmd).await {
        Ok(()) => 0,
        Err(Fail(code, msg)) => {
            eprintln!("sidecred: {msg}");
            code
        }
    }
}

async fn exec(cmd: Cmd) -> Result<(), Fail> {
    match cmd {
        Cmd::Get {
            name,
            session,
            call,
            version,
            conn,
        } => get(&conn, name, session, call, version).await,
        Cmd::Session {
            op: SessionOp::Open { ttl, labels, conn },
        } => {
            let ttl_seconds = match ttl {
                Some(t) => parse_duration(&t)
                    .map_err(|e| Fail(2, e.to_string()))?
                    .as_secs(),
                None => 0,
            };
            let mut map = std::collections::HashMap::new();
            for l in labels {
                let (k, v) = l
                    .split_once('=')
                    .ok_or_else(|| Fail(2, format!("label `{l}` is not key=value")))?;
                map.insert(k.to_string(), v.to_string());
            }
            let r = broker(&conn)
                .await?
                .open_session(pb::OpenSessionRequest {
                    ttl_seconds,
                    labels: map,
                })
                .await?
                .into_inner();
            if conn.json {
                print_json(json!({"session_id": r.session_id, "expires_at": r.expires_at}));
            } else {
                outln!("{}", r.session_id);
            }
            Ok(())
        }
        Cmd::Session {
            op: SessionOp::Close { session, conn },
        } => {
            let r = broker(&conn)
                .await?
                .close_session(pb::CloseSessionRequest {
                    session_id: session.clone(),
                })
                .await?
                .into_inner();
            if conn.json {
                print_json(json!({"session_id": session, "leases_released": r.leases_released}));
            } else {
                outln!("closed {session}: {} leases released", r.leases_released);
            }
            Ok(())
        }
        Cmd::Release {
            lease,
            session,
            conn,
        } => {
            broker(&conn)
                .await?
                .release_lease(pb::ReleaseLeaseRequest {
                    lease_id: lease.clone(),
                    session_id: session,
                })
                .await?;
            if conn.json {
                print_json(json!({"lease_id": lease, "released": true}));
            } else {
                outln!("released {lease}");
            }
            Ok(())
        }
        Cmd::Watch {
            name,
            session,
            count,
            conn,
        } => {
            let mut c = broker(&conn).await?;
            let mut stream = c
                .watch_secret(pb::WatchSecretRequest {
                    name,
                    session_id: session,
                })
                .await?
                .into_inner();
            let mut seen = 0;
            while let Some(ev) = stream.message().await? {
                let kind = pb::secret_event::Kind::try_from(ev.kind)
                    .map(|k| k.as_str_name())
                    .unwrap_or("UNKNOWN");
                if conn.json {
                    print_json(json!({"name": ev.name, "kind": kind, "version": ev.version,
                        "previous_version": ev.previous_version, "previous_retires_at": ev.previous_retires_at, "at": ev.at}));
                } else {
                    outln!(
                        "{kind} {} version={} previous={}",
                        ev.name,
                        ev.version,
                        ev.previous_version
                    );
                }
                let _ = std::io::stdout().flush();
                seen += 1;
                if count > 0 && seen >= count {
                    break;
                }
            }
            Ok(())
        }
        Cmd::RevokeSession {
            session,
            reason,
            direct,
            conn,
        } if direct.openbao.is_some() => {
            let (code, msg) = super::direct::revoke(&direct, &session, &reason, conn.json).await;
            if code == 0 {
                Ok(())
            } else {
                Err(Fail(code, msg))
            }
        }
        Cmd::RevokeSession {
            session,
            reason,
            conn,
            ..
        } => {
            let r = admin(&conn)
                .await?
                .revoke_session(pb::RevokeSessionRequest {
                    session_id: session,
                    reason,
                })
                .await?
                .into_inner();
            let steps = |v: &[pb::RevocationStep]| -> Vec<serde_json::Value> {
                v.iter().map(|s| json!({"target": s.target, "what": s.what, "count": s.count, "detail": s.detail})).collect()
            };
            if conn.json {
                print_json(
                    json!({"session_id": r.session_id, "done": steps(&r.done), "pending": steps(&r.pending)}),
                );
            } else {
                outln!("revoked {}", r.session_id);
                for s in &r.done {
                    outln!(
                        "  done     {:<10} {:<14} {:>4} {}",
                        s.target,
                        s.what,
                        s.count,
                        s.detail
                    );
                }
                for s in &r.pending {
                    outln!(
                        "  PENDING  {:<10} {:<14} {:>4} {}",
                        s.target,
                        s.what,
                        s.count,
                        s.detail
                    );
                }
            }
            Ok(())
        }
        Cmd::Rotate {
            name,
            grace,
            value_file,
            conn,
        } => {
            let grace_seconds = match grace {
                Some(g) => parse_duration(&g)
                    .map_err(|e| Fail(2, e.to_string()))?
                    .as_secs(),
                None => 0,
            };
            let value = match value_file {
                None => Vec::new(),
                Some(p) if p.as_os_str() == "-" => {
                    let mut v = Vec::new();
                    std::io::stdin()
                        .read_to_end(&mut v)
                        .map_err(|e| Fail(2, format!("stdin: {e}")))?;
                    v
                }
                Some(p) => {
                    std::fs::read(&p).map_err(|e| Fail(2, format!("{}: {e}", p.display())))?
                }
            };
            let r = admin(&conn)
                .await?
                .rotate(pb::RotateRequest {
                    name,
                    grace_seconds,
                    value,
                })
                .await?
                .into_inner();
            if conn.json {
                print_json(
                    json!({"name": r.name, "version": r.version, "previous_version": r.previous_version,
                    "previous_retires_at": r.previous_retires_at}),
                );
            } else {
                outln!(
                    "rotated {}: version {} is current; {} valid until {}",
                    r.name,
                    r.version,
                    r.previous_version,
                    r.previous_retires_at
                );
            }
            Ok(())
        }
        Cmd::Status { conn } => status(&conn).await,
        Cmd::Health { admin, conn } => {
            let (w, a) = sockets(&conn)?;
            let path = if admin { a } else { w };
            let mut c =
                tonic_health::pb::health_client::HealthClient::new(channel(&path, &conn).await?);
            let r = c
                .check(tonic_health::pb::HealthCheckRequest {
                    service: String::new(),
                })
                .await?
                .into_inner();
            let serving =
                r.status == tonic_health::pb::health_check_response::ServingStatus::Serving as i32;
            if conn.json {
                print_json(json!({"socket": path.0.display().to_string(), "serving": serving}));
            } else {
                outln!(
                    "{}: {}",
                    path.0.display(),
                    if serving { "SERVING" } else { "NOT_SERVING" }
                );
            }
            if serving {
                Ok(())
            } else {
                Err(Fail(5, "not serving".into()))
            }
        }
        Cmd::Sessions { conn } => {
            let r = admin(&conn)
                .await?
                .list_sessions(pb::ListSessionsRequest {})
                .await?
                .into_inner();
            if conn.json {
                let v: Vec<_> = r
                    .sessions
                    .iter()
                    .map(|s| {
                        json!({"session_id": s.session_id, "labels": s.labels,
                    "opened_at": s.opened_at, "expires_at": s.expires_at, "owner_uid": s.owner_uid,
                    "lease_count": s.lease_count, "lease_ids": s.lease_ids})
                    })
                    .collect();
                print_json(json!({"sessions": v}));
            } else {
                outln!(
                    "{:<38} {:>6} {:>6} {:>12}  LABELS",
                    "SESSION",
                    "UID",
                    "LEASES",
                    "EXPIRES_AT"
                );
                for s in &r.sessions {
                    let mut labels: Vec<_> =
                        s.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    labels.sort();
                    outln!(
                        "{:<38} {:>6} {:>6} {:>12}  {}",
                        s.session_id,
                        s.owner_uid,
                        s.lease_count,
                        s.expires_at,
                        labels.join(",")
                    );
                }
            }
            Ok(())
        }
        Cmd::Serve { .. } | Cmd::CheckConfig { .. } | Cmd::Audit { .. } => {
            unreachable!("handled by cli::main")
        }
    }
}

async fn get(
    conn: &Conn,
    name: String,
    session: Option<String>,
    call: Option<String>,
    version: Option<String>,
) -> Result<(), Fail> {
    let mut c = broker(conn).await?;
    let (sid, temp) = match session {
        Some(s) => (s, false),
        None => {
            let r = c
                .open_session(pb::OpenSessionRequest {
                    ttl_seconds: 0,
                    labels: [("opened_by".into(), "sidecred-cli".into())].into(),
                })
                .await?;
            (r.into_inner().session_id, true)
        }
    };
    let r = c
        .get_secret(pb::GetSecretRequest {
            name,
            session_id: sid.clone(),
            call_id: call.unwrap_or_default(),
            version: version.unwrap_or_default(),
        })
        .await;
    if temp {
        let _ = c
            .close_session(pb::CloseSessionRequest { session_id: sid })
            .await;
    }
    let mut r = r?.into_inner();
    let text = |v: &[u8]| match std::str::from_utf8(v) {
        Ok(s) => json!(s),
        Err(_) => json!({"hex": hex::encode(v)}),
    };
    if conn.json {
        let prev = r
            .previous
            .as_ref()
            .map(|p| json!({"version": p.version, "value": text(&p.value)}));
        print_json(
            json!({"name": r.name, "value": text(&r.value), "version": r.version, "lease_id": r.lease_id,
            "expires_at": r.expires_at, "zone": r.zone, "previous": prev, "previous_retires_at": r.previous_retires_at, "stale": r.stale}),
        );
    } else {
        let mut out = std::io::stdout();
        let _ = out.write_all(&r.value);
        let _ = out.write_all(b"\n");
        eprintln!(
            "version={} lease={} expires_at={} zone={}{}",
            r.version,
            r.lease_id,
            r.expires_at,
            r.zone,
            if r.stale { " (stale)" } else { "" }
        );
        if let Some(p) = &r.previous {
            eprintln!(
                "previous version {} valid until {}",
                p.version, r.previous_retires_at
            );
        }
    }
    zeroize::Zeroize::zeroize(&mut r.value);
    Ok(())
}

async fn status(conn: &Conn) -> Result<(), Fail> {
    let s = admin(conn)
        .await?
        .status(pb::StatusRequest {})
        .await?
        .into_inner();
    if conn.json {
        let b: Vec<_> = s.backends.iter().map(|b| json!({"name": b.name, "kind": b.kind, "healthy": b.healthy, "detail": b.detail, "fetches": b.fetches})).collect();
        print_json(
            json!({"version": s.version, "uptime_seconds": s.uptime_seconds, "sessions": s.sessions, "leases": s.leases,
            "cached_values": s.cached_values, "backends": b, "pending_revocations": s.pending_revocations,
            "pending_retirements": s.pending_retirements, "config_generation": s.config_generation,
            "config_error": s.config_error, "revoked_sessions": s.revoked_sessions,
            "locked_pages": s.locked_pages, "lock_failures": s.lock_failures, "dumpable": s.dumpable, "watches": s.watches}),
        );
        return Ok(());
    }
    outln!(
        "sidecred {}  up {}s  config generation {}",
        s.version,
        s.uptime_seconds,
        s.config_generation
    );
    if !s.config_error.is_empty() {
        outln!("CONFIG RELOAD REJECTED: {}", s.config_error);
    }
    outln!();
    outln!(
        "{:<16} {:<10} {:<9} {:>8}  DETAIL",
        "BACKEND",
        "KIND",
        "HEALTH",
        "FETCHES"
    );
    for b in &s.backends {
        outln!(
            "{:<16} {:<10} {:<9} {:>8}  {}",
            b.name,
            b.kind,
            if b.healthy { "ok" } else { "DOWN" },
            b.fetches,
            b.detail
        );
    }
    outln!();
    outln!("sessions             {}", s.sessions);
    outln!("revoked sessions     {}", s.revoked_sessions);
    outln!("leases               {}", s.leases);
    outln!("cached values        {}", s.cached_values);
    outln!("open watches         {}", s.watches);
    outln!("pending revocations  {}", s.pending_revocations);
    outln!("pending retirements  {}", s.pending_retirements);
    outln!(
        "locked secret pages  {} ({} could not be locked)",
        s.locked_pages,
        s.lock_failures
    );
    outln!(
        "dumpable             {}",
        if s.dumpable { "YES" } else { "no" }
    );
    Ok(())
}
