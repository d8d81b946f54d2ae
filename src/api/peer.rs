//! Caller identity from the kernel: SO_PEERCRED for uid/gid/pid, a pidfd to pin the process,
//! and its executable read while the pidfd proves the pid still names that same process.

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{getsockopt, sockopt};
use std::fmt;
use std::future::Future;
use std::io;
use std::os::fd::AsFd;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::UnixStream;
use tokio::time::Sleep;
use tonic::transport::server::Connected;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerIdentity {
    pub uid: u32,
    pub gid: u32,
    pub pid: i32,
    /// None when it could not be read safely (the process exited, or /proc denied it).
    /// Shared: the identity is cloned into every request of the connection.
    pub exe: Option<Arc<Path>>,
    /// Start time of the process (clock ticks since boot, /proc/PID/stat field 22), read with
    /// `exe`: together they name one process, so a session opened under an `exe` rule stays
    /// with that process and not with a later one that reuses the pid.
    pub start_time: Option<u64>,
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
        let start_time = proc_start_time(pid);
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
            exe: if alive { exe.map(Arc::from) } else { None },
            start_time: if alive { start_time } else { None },
        })
    }
}

impl PeerIdentity {
    /// Checks, at use, that the identity read at accept still names the process behind `pid`:
    /// same start time (not a new process reusing the pid) and same executable (no exec since).
    /// A caller whose executable was unknown at accept has nothing to re-check.
    pub fn still_bound(&self) -> Result<(), String> {
        let Some(exe) = &self.exe else {
            return Ok(());
        };
        let pid = self.pid;
        let start = proc_start_time(pid);
        if start.is_none() || start != self.start_time {
            return Err(format!(
                "the process that opened this connection (pid {pid}) has exited; reconnect"
            ));
        }
        match std::fs::read_link(format!("/proc/{pid}/exe")) {
            Ok(now) if *now == **exe => Ok(()),
            Ok(_) => Err(format!(
                "the process that opened this connection (pid {pid}) has executed another \
                 program since; reconnect"
            )),
            Err(_) => Err(format!(
                "the executable of the process that opened this connection (pid {pid}) can no \
                 longer be read; reconnect"
            )),
        }
    }
}

/// The start time of `pid` from `/proc/PID/stat`, read with one `read` into a stack buffer:
/// this runs on every request, and `read_to_string` would add a `statx` and a handful of small
/// reads (procfs reports size 0). A stat line is far shorter than the buffer.
pub fn proc_start_time(pid: i32) -> Option<u64> {
    use std::io::Read;
    let mut buf = [0u8; 1024];
    let mut f = std::fs::File::open(format!("/proc/{pid}/stat")).ok()?;
    let n = f.read(&mut buf).ok()?;
    stat_start_time(std::str::from_utf8(&buf[..n]).ok()?)
}

/// Field 22 (starttime) of a `/proc/PID/stat` line. The command name (field 2) may hold spaces
/// and parentheses, so fields are counted from the last `)`.
pub fn stat_start_time(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // After the name come field 3 (state) onwards: starttime is the 20th of those.
    rest.split_ascii_whitespace().nth(19)?.parse().ok()
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
    async fn handshake_deadline_table() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        // (bytes sent before the deadline, read fails)
        for (sent, fails) in [(0, true), (10, true), (PREFACE_LEN, false)] {
            let (a, mut b) = UnixStream::pair().unwrap();
            let id = PeerIdentity::of(&a).unwrap();
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
        let id = PeerIdentity::of(&a).unwrap();
        assert_eq!(id.uid, nix::unistd::getuid().as_raw());
        assert_eq!(id.pid, std::process::id() as i32);
        assert_eq!(id.exe.as_deref(), std::env::current_exe().ok().as_deref());
        assert!(id.start_time.is_some());
    }

    #[test]
    fn stat_start_time_table() {
        let tail = "S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 424242 20 21";
        for (comm, want) in [
            ("(bash)", Some(424242)),
            ("(a b) c)", Some(424242)),
            ("(x))", Some(424242)),
            ("()", Some(424242)),
        ] {
            assert_eq!(
                stat_start_time(&format!("77 {comm} {tail}")),
                want,
                "{comm}"
            );
        }
        assert_eq!(stat_start_time("77 (x) S 1 2"), None);
        assert_eq!(stat_start_time("no paren at all"), None);
        assert_eq!(stat_start_time(""), None);
    }
}
