//! Connections from the CLI to a sidecred socket, checked before a byte is sent: whoever can
//! put a listener at the socket path would otherwise receive the new value of `rotate
//! --value-file`, admin requests, and the secrets `get` prints. Each connection is made here,
//! the server's uid is read from that very connection (SO_PEERCRED, fixed when the server called
//! listen) and from the socket file, and only then is the stream handed to tonic.

use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
use parking_lot::Mutex;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};

/// Exit code when the server is not the expected uid.
pub const WRONG_SERVER: i32 = 8;

/// Why a socket was refused or could not be reached.
pub enum ConnectError {
    /// The listener is not run by the expected uid: nothing was sent.
    WrongServer(String),
    Unreachable(String),
}

/// Connects to `path` and checks that the socket file and the listening process both belong to
/// `expected` before returning the stream.
/// `origin` says where the path came from (a flag, a variable, a config key), for the error.
pub fn connect_checked(
    path: &Path,
    expected: u32,
    origin: &str,
) -> Result<tokio::net::UnixStream, ConnectError> {
    let s = std::os::unix::net::UnixStream::connect(path)
        .map_err(|e| ConnectError::Unreachable(why_unreachable(path, origin, &e)))?;
    let cred = getsockopt(&s, PeerCredentials).map_err(|e| {
        ConnectError::Unreachable(format!("cannot read the server's credentials: {e}"))
    })?;
    let owner = std::fs::symlink_metadata(path).map(|m| m.uid()).ok();
    if cred.uid() as u32 != expected || owner != Some(expected) {
        return Err(ConnectError::WrongServer(format!(
            "refusing to talk to {}: the server listening there runs as uid {} (pid {}) and the \
             socket file is owned by {}, but uid {expected} was expected; nothing was sent. \
             Someone else may have put a listener at that path: check the socket's directory, \
             or pass --server-uid (SIDECRED_SERVER_UID) if sidecred really runs as that uid",
            path.display(),
            cred.uid(),
            cred.pid(),
            owner.map_or_else(|| "nobody (gone)".to_string(), |u| format!("uid {u}")),
        )));
    }
    s.set_nonblocking(true)
        .map_err(|e| ConnectError::Unreachable(e.to_string()))?;
    tokio::net::UnixStream::from_std(s).map_err(|e| ConnectError::Unreachable(e.to_string()))
}

/// A channel over connections made and checked by [`connect_checked`]: the first one up front
/// (so a refusal is a clear error with its own exit code), any reconnection checked the same way.
pub async fn channel(
    path: &Path,
    expected: u32,
    timeout: u64,
    origin: &str,
) -> Result<Channel, ConnectError> {
    let first = connect_checked(path, expected, origin)?;
    let origin = origin.to_string();
    let first = Arc::new(Mutex::new(Some(first)));
    let path: PathBuf = path.to_path_buf();
    let shown = path.display().to_string();
    let connector = tower::service_fn(move |_: tonic::transport::Uri| {
        let first = first.clone();
        let path = path.clone();
        let origin = origin.clone();
        async move {
            let s = match first.lock().take() {
                Some(s) => s,
                None => connect_checked(&path, expected, &origin).map_err(|e| match e {
                    ConnectError::WrongServer(m) | ConnectError::Unreachable(m) => {
                        std::io::Error::other(m)
                    }
                })?,
            };
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(s))
        }
    });
    // The URI is only a label: every connection comes from the connector.
    Endpoint::from_static("http://localhost")
        .timeout(Duration::from_secs(timeout))
        .connect_timeout(Duration::from_secs(timeout))
        .connect_with_connector(connector)
        .await
        .map_err(|e| {
            let why = goaway(&e).map(|w| format!(": {w}")).unwrap_or_default();
            ConnectError::Unreachable(format!("cannot connect to {shown}: {e}{why}"))
        })
}

/// A connection refused at accept carries the server's reason in its GOAWAY.
pub fn goaway(e: &dyn std::error::Error) -> Option<String> {
    let mut src = e.source();
    while let Some(e) = src {
        if let Some(h) = e.downcast_ref::<h2::Error>().filter(|h| h.is_go_away()) {
            return Some(h.to_string());
        }
        src = e.source();
    }
    None
}

/// Turns a failed connect into what to do about it: a missing socket names where its path came
/// from, a permission error shows the socket's (or its directory's) owner and mode next to this
/// process's ids, and a refused connection means a socket file with no server behind it.
fn why_unreachable(path: &Path, origin: &str, e: &std::io::Error) -> String {
    let p = path.display();
    match e.kind() {
        std::io::ErrorKind::NotFound => format!(
            "socket {p} does not exist (the path comes from {origin}): is sidecred running, \
             and does its config set this path?"
        ),
        std::io::ErrorKind::PermissionDenied => {
            let me = format!(
                "this process runs as uid {} gid {}",
                nix::unistd::geteuid(),
                nix::unistd::getegid()
            );
            // The socket's directory may be what refuses, before the socket's own mode does.
            let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
            let blocked_dir = dir.and_then(|d| {
                std::fs::metadata(d)
                    .ok()
                    .filter(|_| std::fs::read_dir(d).is_err() && !path.exists())
                    .map(|m| (d, m))
            });
            match (blocked_dir, std::fs::symlink_metadata(path)) {
                (Some((d, m)), _) => format!(
                    "permission denied on {p}: its directory {} is mode {:04o}, owner uid {} gid {}; \
                     {me}. Run as that owner or group, or give the directory search (x) permission \
                     for them",
                    d.display(),
                    m.mode() & 0o7777,
                    m.uid(),
                    m.gid()
                ),
                (None, Ok(m)) => format!(
                    "permission denied on {p}: the socket is mode {:04o}, owner uid {} gid {}; {me}. \
                     Run as that uid or group, or widen the socket's mode in sidecred's config \
                     (server.workload_socket_mode / server.admin_socket_mode, e.g. \"0660\" with \
                     this process in the group)",
                    m.mode() & 0o7777,
                    m.uid(),
                    m.gid()
                ),
                (None, Err(_)) => format!("permission denied on {p}: {me}"),
            }
        }
        std::io::ErrorKind::ConnectionRefused => format!(
            "nothing is listening on {p}: the socket file is there but no server accepts on it \
             (sidecred stopped without removing it, or is still starting)"
        ),
        _ => format!("cannot connect to {p}: {e}"),
    }
}
