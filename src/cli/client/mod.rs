//! The client commands: connect to a socket, make one call, print it readably or as JSON.
//! `broker_calls` are the Broker service's calls (the workload socket), `admin_calls` the Admin
//! service's and health.

mod admin_calls;
mod broker_calls;

use super::{Cmd, Conn, SessionOp};
use crate::api::pb::{admin_client::AdminClient, broker_client::BrokerClient};
use crate::config::Config;
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
        } => broker_calls::get(&conn, name, session, call, version).await,
        Cmd::Session {
            op: SessionOp::Open { ttl, labels, conn },
        } => broker_calls::open_session(&conn, ttl, labels).await,
        Cmd::Session {
            op: SessionOp::Close { session, conn },
        } => broker_calls::close_session(&conn, session).await,
        Cmd::Release {
            lease,
            session,
            conn,
        } => broker_calls::release(&conn, lease, session).await,
        Cmd::Watch {
            name,
            session,
            count,
            conn,
        } => broker_calls::watch(&conn, name, session, count).await,
        #[cfg(feature = "openbao")]
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
        } => admin_calls::revoke_session(&conn, session, reason).await,
        Cmd::Rotate {
            name,
            grace,
            value_file,
            conn,
        } => admin_calls::rotate(&conn, name, grace, value_file).await,
        Cmd::Status { conn } => admin_calls::status(&conn).await,
        Cmd::Health { admin, conn } => admin_calls::health(&conn, admin).await,
        Cmd::Sessions { conn } => admin_calls::sessions(&conn).await,
        Cmd::Serve { .. } | Cmd::CheckConfig { .. } | Cmd::Audit { .. } => {
            unreachable!("handled by cli::main")
        }
    }
}
