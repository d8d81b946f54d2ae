//! The Broker service's calls, on the workload socket: get, sessions, leases, watch.

use super::{broker, print_json, Conn, Fail};
use crate::api::pb;
use crate::config::parse_duration;
use serde_json::json;
use std::io::Write;

pub(super) async fn open_session(
    conn: &Conn,
    ttl: Option<String>,
    labels: Vec<String>,
) -> Result<(), Fail> {
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
    let r = broker(conn)
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

pub(super) async fn close_session(conn: &Conn, session: String) -> Result<(), Fail> {
    let r = broker(conn)
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

pub(super) async fn release(conn: &Conn, lease: String, session: String) -> Result<(), Fail> {
    broker(conn)
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

pub(super) async fn watch(
    conn: &Conn,
    name: String,
    session: String,
    count: u32,
) -> Result<(), Fail> {
    let mut c = broker(conn).await?;
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

pub(super) async fn get(
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
