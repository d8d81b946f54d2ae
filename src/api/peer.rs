//! Caller identity from the kernel: SO_PEERCRED for uid/gid/pid, a pidfd to pin the process,
//! and its executable read while the pidfd proves the pid still names that same process.

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{getsockopt, sockopt};
use parking_lot::Mutex;
use rustix::fs::{Mode, OFlags};
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Weak};
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
    /// The caller's `/proc/PID` directory, pinned at accept and shared by every connection of
    /// that process (see [`ProcDir`]); None where it could not be opened, or for identities
    /// built by hand.
    pub proc_dir: Option<ProcDir>,
    /// Set by transports that carry many requests per read (HTTP/2): requests received by one
    /// read share one re-check (see [`ReadEpoch`]). None: every request re-checks.
    pub reads: Option<ReadEpoch>,
}

/// A connection's count of reads, and the count its last successful identity re-check saw.
///
/// A re-check made after read N has seen the process as it was after every request that read N
/// (or an earlier one) carried had been sent, so it answers for all of them: an exec before any
/// of them was sent is visible to it. A request from a later read makes the next use re-check.
#[derive(Clone, Default)]
pub struct ReadEpoch(Arc<Epochs>);

#[derive(Default)]
struct Epochs {
    reads: std::sync::atomic::AtomicU64,
    /// 1 + the read count the last successful check saw; 0 before any.
    checked: std::sync::atomic::AtomicU64,
}

impl ReadEpoch {
    /// Counts one read that delivered bytes; call before the bytes are handed on.
    pub fn read(&self) {
        self.0
            .reads
            .fetch_add(1, std::sync::atomic::Ordering::Release);
    }

    /// Runs `check` unless a successful one already covers every read so far.
    fn covered(&self, check: impl FnOnce() -> Result<(), String>) -> Result<(), String> {
        use std::sync::atomic::Ordering;
        let seen = self.0.reads.load(Ordering::Acquire);
        if self.0.checked.load(Ordering::Acquire) == seen + 1 {
            return Ok(());
        }
        check()?;
        self.0.checked.fetch_max(seen + 1, Ordering::AcqRel);
        Ok(())
    }
}

/// Identities compare by who the caller is, not by how its connection counts reads.
impl PartialEq for ReadEpoch {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}
impl Eq for ReadEpoch {}

impl fmt::Debug for ReadEpoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ReadEpoch")
    }
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
}

impl PeerIdentity {
    /// Checks, at use, that the identity read at accept still names the process behind `pid`:
    /// the same process (not a later one reusing the pid) running the same executable (no exec
    /// since). A caller whose executable was unknown at accept has nothing to re-check.
    ///
    /// With the pinned `/proc/PID` directory this is one `readlinkat(dir, "exe")` into a stack
    /// buffer: it fails once that process has exited (a later process reusing the pid has a
    /// directory of its own), and names the new program after an exec.
    pub fn still_bound(&self) -> Result<(), String> {
        match &self.reads {
            Some(r) => r.covered(|| self.check_bound()),
            None => self.check_bound(),
        }
    }

    fn check_bound(&self) -> Result<(), String> {
        let Some(exe) = &self.exe else {
            return Ok(());
        };
        let pid = self.pid;
        let exited =
            || format!("the process that opened this connection (pid {pid}) has exited; reconnect");
        let execed = || {
            format!(
                "the process that opened this connection (pid {pid}) has executed another \
                 program since; reconnect"
            )
        };
        if let Some(dir) = &self.proc_dir {
            return match dir.exe_is(exe) {
                Some(true) => Ok(()),
                Some(false) => Err(execed()),
                None => Err(exited()),
            };
        }
        let start = proc_start_time(pid);
        if start.is_none() || start != self.start_time {
            return Err(exited());
        }
        match std::fs::read_link(format!("/proc/{pid}/exe")) {
            Ok(now) if *now == **exe => Ok(()),
            Ok(_) => Err(execed()),
            Err(_) => Err(format!(
                "the executable of the process that opened this connection (pid {pid}) can no \
                 longer be read; reconnect"
            )),
        }
    }
}

/// An `O_PATH` descriptor on one process's `/proc/PID` directory. It stays bound to that very
/// process: once it exits, lookups through it fail, and a later process reusing the pid gets a
/// directory of its own. All connections of one process share one descriptor (a process-wide
/// table of weak references, keyed by pid and start time), so a process holding many
/// connections costs one descriptor, closed when its last identity is dropped.
#[derive(Clone)]
pub struct ProcDir(Arc<OwnedFd>);

/// Pinned directories by pid, with what was read through them. Weak: the table never keeps
/// one open.
static PINNED: Mutex<Pinned> = Mutex::new(Pinned {
    dirs: None,
    prune_at: 64,
});

struct Pinned {
    dirs: Option<HashMap<i32, PinnedEntry>>,
    /// The table is swept of closed entries when it grows to this size.
    prune_at: usize,
}

struct PinnedEntry {
    dir: Weak<OwnedFd>,
    exe: Arc<Path>,
    start_time: u64,
}

/// A live pinned directory and what its process was when pinned.
pub(crate) struct Pinning {
    pub dir: ProcDir,
    pub exe: Arc<Path>,
    pub start_time: u64,
}

impl ProcDir {
    /// Opens `/proc/PID` (`O_PATH`: no read access needed, nothing to read from it directly).
    pub fn open(pid: i32) -> Option<ProcDir> {
        if pid <= 0 {
            return None;
        }
        let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
        rustix::fs::open(format!("/proc/{pid}").as_str(), flags, Mode::empty())
            .ok()
            .map(|fd| ProcDir(Arc::new(fd)))
    }

    /// The directory another connection pinned for `pid`, provided its process still runs the
    /// executable it ran then (one `readlinkat`). The caller must then prove its own process
    /// alive (pidfd) for the two to be the same.
    pub(crate) fn pinned(pid: i32) -> Option<Pinning> {
        let p = PINNED.lock();
        let e = p.dirs.as_ref()?.get(&pid)?;
        let dir = ProcDir(e.dir.upgrade()?);
        let (exe, start_time) = (e.exe.clone(), e.start_time);
        drop(p);
        dir.exe_is(&exe)?.then_some(Pinning {
            dir,
            exe,
            start_time,
        })
    }

    /// The descriptor already pinning this process, if another connection of it holds one;
    /// else this one, recorded for the next. Call only while the process is known to be the
    /// caller (its pidfd not yet signalled), with what was read through `self`.
    pub(crate) fn shared(self, pid: i32, start_time: u64, exe: &Arc<Path>) -> ProcDir {
        let mut p = PINNED.lock();
        let Pinned { dirs, prune_at } = &mut *p;
        let dirs = dirs.get_or_insert_with(HashMap::new);
        if let Some(e) = dirs.get_mut(&pid).filter(|e| e.start_time == start_time) {
            if let Some(fd) = e.dir.upgrade() {
                // Still resolving: the same live process (pid and start time cannot both
                // repeat while it runs), which may have exec'd since it was pinned. Otherwise
                // one that exited shares its key: replace it.
                let old = ProcDir(fd);
                if old.exe().is_some() {
                    e.exe = exe.clone();
                    return old;
                }
            }
        }
        dirs.insert(
            pid,
            PinnedEntry {
                dir: Arc::downgrade(&self.0),
                exe: exe.clone(),
                start_time,
            },
        );
        if dirs.len() >= *prune_at {
            dirs.retain(|_, e| e.dir.strong_count() > 0);
            *prune_at = (dirs.len() * 2).max(64);
        }
        self
    }

    /// The process's executable now; None once it has exited (or cannot be read).
    pub fn exe(&self) -> Option<PathBuf> {
        rustix::fs::readlinkat(&*self.0, c"exe", Vec::new())
            .ok()
            .map(|c| PathBuf::from(std::ffi::OsString::from_vec(c.into_bytes())))
    }

    /// Whether the process still runs `exe`; None once it has exited (or cannot be read).
    /// One system call, no allocation: this runs on every request.
    pub fn exe_is(&self, exe: &Path) -> Option<bool> {
        let mut buf = [MaybeUninit::<u8>::uninit(); EXE_BUF];
        let (now, _) = rustix::fs::readlinkat_raw(&*self.0, c"exe", &mut buf).ok()?;
        if now.len() < EXE_BUF {
            return Some(*now == *exe.as_os_str().as_bytes());
        }
        // A long path may have been cut: read it whole.
        self.exe().map(|now| now == exe)
    }

    /// Start time of the process (field 22 of its `stat`).
    pub fn start_time(&self) -> Option<u64> {
        let fd = rustix::fs::openat(
            &*self.0,
            c"stat",
            OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .ok()?;
        let mut buf = [0u8; 1024];
        let n = rustix::io::read(&fd, &mut buf).ok()?;
        stat_start_time(std::str::from_utf8(&buf[..n]).ok()?)
    }
}

/// Stack buffer for the exe link at use; longer paths are read whole.
const EXE_BUF: usize = 512;

/// Identities compare by what they say, not by which descriptor pins them.
impl PartialEq for ProcDir {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}
impl Eq for ProcDir {}

impl fmt::Debug for ProcDir {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ProcDir")
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

    /// Polls `f` until it returns Some, for at most 10 s.
    fn eventually<T>(mut f: impl FnMut() -> Option<T>) -> Option<T> {
        let end = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(v) = f() {
                return Some(v);
            }
            if std::time::Instant::now() > end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn proc_dir_names_one_process_until_it_exits() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let dir = ProcDir::open(child.id() as i32).expect("own child's /proc dir");
        let exe = dir.exe().expect("a live process has an exe");
        assert!(exe.ends_with("sleep"), "{}", exe.display());
        assert_eq!(dir.exe_is(&exe), Some(true));
        assert_eq!(dir.exe_is(Path::new("/usr/bin/other")), Some(false));
        assert!(dir.start_time().is_some());
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(
            dir.exe(),
            None,
            "an exited process's directory resolves nothing"
        );
        assert_eq!(dir.exe_is(&exe), None);
        assert!(ProcDir::open(-1).is_none() && ProcDir::open(0).is_none());
    }

    /// On a connection that counts its reads, one re-check answers for the requests of the
    /// reads before it; a request from a later read checks again and sees the exec.
    #[test]
    fn one_check_answers_for_the_reads_before_it() {
        use std::io::Write;
        let mut child = std::process::Command::new("sh")
            .args(["-c", "read line; exec sleep 30"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let dir = ProcDir::open(pid).unwrap();
        let exe: Arc<Path> = Arc::from(dir.exe().unwrap());
        let plain = PeerIdentity {
            uid: 0,
            gid: 0,
            pid,
            exe: Some(exe.clone()),
            start_time: dir.start_time(),
            proc_dir: Some(dir.clone().shared(pid, dir.start_time().unwrap(), &exe)),
            reads: None,
        };
        let reads = ReadEpoch::default();
        let counted = PeerIdentity {
            reads: Some(reads.clone()),
            ..plain.clone()
        };
        reads.read();
        assert_eq!(counted.still_bound(), Ok(()));
        child.stdin.take().unwrap().write_all(b"go\n").unwrap();
        eventually(|| plain.still_bound().err()).expect("the exec is seen");
        // No read since the check: nothing arrived that the exec could have sent.
        assert_eq!(counted.still_bound(), Ok(()));
        reads.read();
        let why = counted.still_bound().unwrap_err();
        assert!(why.contains("executed another program"), "{why}");
        // A failed check is not remembered: every later use fails too.
        assert!(counted.still_bound().is_err());
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// A process that execs another program after the identity was read is caught at use; one
    /// that exits is reported as gone.
    #[test]
    fn still_bound_catches_an_exec_and_an_exit() {
        use std::io::Write;
        let mut child = std::process::Command::new("sh")
            .args(["-c", "read line; exec sleep 30"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let dir = ProcDir::open(pid).unwrap();
        let id = PeerIdentity {
            uid: 0,
            gid: 0,
            pid,
            exe: dir.exe().map(Arc::from),
            start_time: dir.start_time(),
            proc_dir: Some(dir.clone().shared(
                pid,
                dir.start_time().unwrap(),
                &Arc::from(dir.exe().unwrap()),
            )),
            reads: None,
        };
        assert_eq!(id.still_bound(), Ok(()));
        child.stdin.take().unwrap().write_all(b"go\n").unwrap();
        let why = eventually(|| id.still_bound().err()).expect("the exec is seen");
        assert!(why.contains("executed another program"), "{why}");
        child.kill().unwrap();
        child.wait().unwrap();
        let why = id.still_bound().unwrap_err();
        assert!(why.contains("has exited"), "{why}");
        // Without a pinned directory the same facts come from /proc/PID by path.
        let by_path = PeerIdentity {
            proc_dir: None,
            ..id
        };
        assert!(by_path.still_bound().is_err());
    }

    #[tokio::test]
    async fn connections_of_one_process_share_one_descriptor() {
        let pairs: Vec<_> = (0..8).map(|_| UnixStream::pair().unwrap()).collect();
        let ids: Vec<_> = pairs
            .iter()
            .map(|(a, _)| PeerIdentity::of(a).unwrap())
            .collect();
        let first = &ids[0].proc_dir.as_ref().expect("own /proc dir pinned").0;
        for id in &ids {
            assert!(Arc::ptr_eq(first, &id.proc_dir.as_ref().unwrap().0));
            assert_eq!(id.still_bound(), Ok(()));
        }
        // The table keeps none open: dropping every holder closes the descriptor.
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let d = ProcDir::open(pid).unwrap();
        let (start, exe) = (d.start_time().unwrap(), Arc::from(d.exe().unwrap()));
        let a = ProcDir::open(pid).unwrap().shared(pid, start, &exe);
        let b = ProcDir::open(pid).unwrap().shared(pid, start, &exe);
        assert!(Arc::ptr_eq(&a.0, &b.0));
        let p = ProcDir::pinned(pid).expect("pinned while held");
        assert!(Arc::ptr_eq(&a.0, &p.dir.0));
        assert_eq!((p.start_time, &p.exe), (start, &exe));
        drop(p);
        let weak = Arc::downgrade(&a.0);
        drop((a, b));
        assert_eq!(weak.strong_count(), 0);
        child.kill().unwrap();
        child.wait().unwrap();
    }

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
        assert_eq!(id.still_bound(), Ok(()));
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
