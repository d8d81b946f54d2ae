//! Caller identity from the kernel: SO_PEERCRED for uid/gid/pid, a pidfd to pin the process,
//! and its executable read while the pidfd proves the pid still names that same process.
//! The identity type itself is a leaf type (`sidecred_core::identity`): the layers below the
//! transport read it, only this module captures it.

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{getsockopt, sockopt};
use std::future::Future;
use std::io;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, ReadBuf};
use tokio::net::UnixStream;
use tokio::time::Sleep;
use tonic::transport::server::Connected;

pub use sidecred_core::identity::{
    proc_start_time, stat_start_time, PeerIdentity, ProcDir, ReadEpoch,
};

/// Reads the peer of a connected Unix socket.
pub fn identify(stream: &UnixStream) -> io::Result<PeerIdentity> {
    let cred = getsockopt(stream, sockopt::PeerCredentials).map_err(io::Error::from)?;
    let (uid, gid, pid) = (cred.uid(), cred.gid(), cred.pid());
    // The pidfd pins the very process that connected. While it has not exited, `pid`
    // cannot have been reused, so the directory opened and the exe read belong to the
    // caller. The pidfd itself is closed on return: no descriptor per connection.
    let pidfd = getsockopt(stream, sockopt::PeerPidfd).ok();
    let alive = |exe: &Option<PathBuf>| match &pidfd {
        Some(fd) => {
            let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
            matches!(poll(&mut fds, PollTimeout::ZERO), Ok(0))
        }
        // Kernels before 6.5: fall back to the process still existing with that exe.
        None => std::fs::read_link(format!("/proc/{pid}/exe")).ok() == *exe,
    };
    let gone = PeerIdentity {
        uid,
        gid,
        pid,
        exe: None,
        start_time: None,
        proc_dir: None,
        reads: None,
    };
    // Another connection of this process pinned its directory already: if that directory
    // still resolves, its process holds `pid` now, and if the caller is still alive after
    // that, the two are one process (a pid names one live process at a time).
    if pidfd.is_some() {
        if let Some(p) = ProcDir::pinned(pid) {
            if !alive(&None) {
                return Ok(gone);
            }
            return Ok(PeerIdentity {
                uid,
                gid,
                pid,
                exe: Some(p.exe),
                start_time: Some(p.start_time),
                proc_dir: Some(p.dir),
                reads: None,
            });
        }
    }
    let dir = ProcDir::open(pid);
    let exe = match &dir {
        Some(d) => d.exe(),
        None => std::fs::read_link(format!("/proc/{pid}/exe")).ok(),
    };
    let start_time = match &dir {
        Some(d) => d.start_time(),
        None => proc_start_time(pid),
    };
    if !alive(&exe) {
        return Ok(gone);
    }
    let exe: Option<Arc<Path>> = exe.map(Arc::from);
    let proc_dir = match (dir, start_time, &exe) {
        (Some(d), Some(t), Some(e)) => Some(d.shared(pid, t, e)),
        _ => None,
    };
    Ok(PeerIdentity {
        uid,
        gid,
        pid,
        exe,
        start_time,
        proc_dir,
        reads: None,
    })
}

/// Length of the HTTP/2 client preface (`PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n`).
const PREFACE_LEN: usize = 24;

/// An accepted connection that carries its caller's identity into every request.
///
/// Until the client has sent the bytes of an HTTP/2 preface, reads fail once the handshake
/// deadline passes, so a caller that connects and sits (or trickles bytes) loses its
/// descriptor instead of holding it forever. It also holds its place in the connection caps.
pub struct PeerStream {
    inner: UnixStream,
    id: PeerIdentity,
    preface_left: usize,
    deadline: Option<Pin<Box<Sleep>>>,
    _slot: Option<super::admission::Slot>,
}

impl PeerStream {
    pub fn new(inner: UnixStream, id: PeerIdentity) -> Self {
        Self {
            inner,
            id,
            preface_left: PREFACE_LEN,
            deadline: None,
            _slot: None,
        }
    }

    /// Drops the connection if its preface has not arrived within `handshake`.
    pub fn with_handshake_deadline(mut self, handshake: Duration) -> Self {
        self.deadline = Some(Box::pin(tokio::time::sleep(handshake)));
        self
    }

    /// The caller, as the kernel reported it at accept.
    pub fn identity(&self) -> &PeerIdentity {
        &self.id
    }

    /// Keeps the connection's admission slot until it closes.
    pub fn with_slot(mut self, slot: super::admission::Slot) -> Self {
        self._slot = Some(slot);
        self
    }
}

impl Connected for PeerStream {
    type ConnectInfo = PeerIdentity;
    fn connect_info(&self) -> PeerIdentity {
        self.id.clone()
    }
}

impl AsyncRead for PeerStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let Some(deadline) = self.deadline.as_mut() else {
            return r;
        };
        let expired = deadline.as_mut().poll(cx).is_ready();
        if let Poll::Ready(Ok(())) = r {
            let n = buf.filled().len() - before;
            self.preface_left = self.preface_left.saturating_sub(n);
            if self.preface_left == 0 || n == 0 {
                self.deadline = None;
                return r;
            }
        }
        if expired {
            self.deadline = None;
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "no HTTP/2 preface within the handshake timeout",
            )));
        }
        r
    }
}

super::forward_async_write!(PeerStream);

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn connections_of_one_process_share_one_descriptor() {
        let pairs: Vec<_> = (0..8).map(|_| UnixStream::pair().unwrap()).collect();
        let ids: Vec<_> = pairs.iter().map(|(a, _)| identify(a).unwrap()).collect();
        let first = ids[0].proc_dir.as_ref().expect("own /proc dir pinned");
        for id in &ids {
            assert!(first.same_descriptor(id.proc_dir.as_ref().unwrap()));
            assert_eq!(id.still_bound(), Ok(()));
        }
    }

    #[tokio::test]
    async fn handshake_deadline_table() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        // (bytes sent before the deadline, read fails)
        for (sent, fails) in [(0, true), (10, true), (PREFACE_LEN, false)] {
            let (a, mut b) = UnixStream::pair().unwrap();
            let id = identify(&a).unwrap();
            let mut s = PeerStream::new(a, id).with_handshake_deadline(Duration::from_millis(200));
            b.write_all(&vec![b'x'; sent]).await.unwrap();
            let mut got = 0;
            let mut buf = [0u8; 64];
            while got < sent {
                got += s.read(&mut buf).await.unwrap();
            }
            let read = tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf)).await;
            match read {
                Ok(Err(e)) => assert!(fails && e.kind() == io::ErrorKind::TimedOut, "{sent}"),
                Err(_) => assert!(!fails, "{sent}: a complete preface must lift the deadline"),
                Ok(Ok(n)) => panic!("{sent}: unexpected read of {n}"),
            }
        }
    }

    #[tokio::test]
    async fn identifies_own_process() {
        let (a, _b) = UnixStream::pair().unwrap();
        let id = identify(&a).unwrap();
        assert_eq!(id.uid, nix::unistd::getuid().as_raw());
        assert_eq!(id.pid, std::process::id() as i32);
        assert_eq!(id.exe.as_deref(), std::env::current_exe().ok().as_deref());
        assert!(id.start_time.is_some());
        assert_eq!(id.still_bound(), Ok(()));
    }
}
