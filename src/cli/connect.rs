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
pub fn connect_checked(path: &Path, expected: u32) -> Result<tokio::net::UnixStream, ConnectError> {
    let s = std::os::unix::net::UnixStream::connect(path).map_err(|e| {
        ConnectError::Unreachable(format!("cannot connect to {}: {e}", path.display()))
    })?;
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
pub async fn channel(path: &Path, expected: u32, timeout: u64) -> Result<Channel, ConnectError> {
    let first = connect_checked(path, expected)?;
    let first = Arc::new(Mutex::new(Some(first)));
    let path: PathBuf = path.to_path_buf();
    let shown = path.display().to_string();
    let connector = tower::service_fn(move |_: tonic::transport::Uri| {
        let first = first.clone();
        let path = path.clone();
        async move {
            let s = match first.lock().take() {
                Some(s) => s,
                None => connect_checked(&path, expected).map_err(|e| match e {
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
        .map_err(|e| ConnectError::Unreachable(format!("cannot connect to {shown}: {e}")))
}
