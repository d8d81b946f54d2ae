//! Caller identity from the kernel: SO_PEERCRED for uid/gid/pid, a pidfd to pin the process,
//! and its executable read while the pidfd proves the pid still names that same process.

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{getsockopt, sockopt};
use std::fmt;
use std::io;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::UnixStream;
use tonic::transport::server::Connected;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerIdentity {
    pub uid: u32,
    pub gid: u32,
    pub pid: i32,
    /// None when it could not be read safely (the process exited, or /proc denied it).
    pub exe: Option<PathBuf>,
}

impl fmt::Display for PeerIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "uid={} gid={} pid={}", self.uid, self.gid, self.pid)?;
        match &self.exe {
            Some(e) => write!(f, " exe={}", e.display()),
            None => write!(f, " exe=<unknown>"),
        }
    }
}

impl PeerIdentity {
    /// Reads the peer of a connected Unix socket.
    pub fn of(stream: &UnixStream) -> io::Result<PeerIdentity> {
        let cred = getsockopt(stream, sockopt::PeerCredentials).map_err(io::Error::from)?;
        let (uid, gid, pid) = (cred.uid(), cred.gid(), cred.pid());
        // The pidfd pins the very process that connected. While it has not exited, `pid`
        // cannot have been reused, so the exe we read belongs to the caller.
        let pidfd = getsockopt(stream, sockopt::PeerPidfd).ok();
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok();
        let alive = match &pidfd {
            Some(fd) => {
                let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
                matches!(poll(&mut fds, PollTimeout::ZERO), Ok(0))
            }
            // Kernels before 6.5: fall back to the process still existing with that exe.
            None => std::fs::read_link(format!("/proc/{pid}/exe")).ok() == exe,
        };
        Ok(PeerIdentity {
            uid,
            gid,
            pid,
            exe: if alive { exe } else { None },
        })
    }
}

/// An accepted connection that carries its caller's identity into every request.
pub struct PeerStream {
    inner: UnixStream,
    id: PeerIdentity,
}

impl PeerStream {
    pub fn new(inner: UnixStream, id: PeerIdentity) -> Self {
        Self { inner, id }
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
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for PeerStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn identifies_own_process() {
        let (a, _b) = UnixStream::pair().unwrap();
        let id = PeerIdentity::of(&a).unwrap();
        assert_eq!(id.uid, nix::unistd::getuid().as_raw());
        assert_eq!(id.pid, std::process::id() as i32);
        assert_eq!(id.exe, std::env::current_exe().ok());
    }
}
