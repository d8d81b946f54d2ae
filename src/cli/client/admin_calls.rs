//! The Admin service's calls (revoke, rotate, sessions, status), and health on either socket.

use super::{admin, channel, print_json, sockets, Conn, Fail};
use crate::api::pb;
use crate::config::parse_duration;
use serde_json::json;
use std::io::Read;
use std::path::PathBuf;

pub(super) async fn revoke_session(
    conn: &Conn,
    session: String,
    reason: String,
) -> Result<(), Fail> {
    let r = admin(conn)
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

pub(super) async fn rotate(
    conn: &Conn,
    name: String,
    grace: Option<String>,
    value_file: Option<PathBuf>,
) -> Result<(), Fail> {
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
        Some(p) => std::fs::read(&p).map_err(|e| Fail(2, format!("{}: {e}", p.display())))?,
    };
    let r = admin(conn)
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

/// grpc.health.v1 on the workload socket, or the admin socket with `on_admin`.
pub(super) async fn health(conn: &Conn, on_admin: bool) -> Result<(), Fail> {
    let (w, a) = sockets(conn)?;
    let path = if on_admin { a } else { w };
    let mut c = tonic_health::pb::health_client::HealthClient::new(channel(&path, conn).await?);
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

pub(super) async fn sessions(conn: &Conn) -> Result<(), Fail> {
    let r = admin(conn)
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
            let mut labels: Vec<_> = s.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
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

pub(super) async fn status(conn: &Conn) -> Result<(), Fail> {
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
