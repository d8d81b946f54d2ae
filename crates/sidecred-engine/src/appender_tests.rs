//! Group commit: every line written once and in order per writer, waiters woken by the one
//! write that carries their line, failures reported to that batch's waiters.

use super::*;
use std::io::Read;

/// A FIFO whose reader the test controls: the writer thread blocks in `write` until the test
/// reads, which holds a batch in flight without sleeping.
fn fifo(dir: &tempfile::TempDir) -> (std::path::PathBuf, std::fs::File) {
    let p = dir.path().join("fifo");
    nix::unistd::mkfifo(&p, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let reader = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&p)
        .unwrap();
    (p, reader)
}

/// Reads from the non-blocking FIFO until `want` bytes arrived (10 s at most).
fn read_exactly(r: &mut std::fs::File, want: usize) -> Vec<u8> {
    let mut got = Vec::new();
    let end = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut buf = vec![0u8; 1 << 16];
    while got.len() < want && std::time::Instant::now() < end {
        match r.read(&mut buf) {
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(std::time::Duration::from_millis(1))
            }
            Err(e) => panic!("{e}"),
        }
    }
    got
}

/// Both ways of writing: by the waiting caller (no sync) and by the thread (sync).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_lines_are_all_written_once() {
    for sync in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let a = Appender::open(&path, sync).await.unwrap();
        let tasks: Vec<_> = (0..500)
            .map(|i| {
                let a = a.clone();
                tokio::spawn(async move {
                    match i % 3 {
                        0 => a.append(format!("line {i}\n")).await.unwrap(),
                        1 => a
                            .append_bytes(format!("line {i}\n").as_bytes())
                            .await
                            .unwrap(),
                        _ => assert!(a.try_append(format!("line {i}\n"))),
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        // Lines handed over without waiting are written by the thread soon after.
        a.append(String::new()).await.unwrap();
        let done = wait(|| std::fs::read_to_string(&path).unwrap().lines().count() == 500).await;
        assert!(done, "sync={sync}: lines missing");
        let text = std::fs::read_to_string(&path).unwrap();
        let mut lines: Vec<_> = text.lines().collect();
        lines.sort();
        lines.dedup();
        assert_eq!(
            lines.len(),
            500,
            "sync={sync}: a line written twice or torn"
        );
        assert!(a.writes() <= 501);
    }
}

/// While one batch is being written, every line that arrives joins the next one: 100 waiters
/// are answered by one write, not 100.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_meanwhile_share_one_write() {
    let dir = tempfile::tempdir().unwrap();
    let (path, mut reader) = fifo(&dir);
    // (A FIFO cannot be synced: this one writes without.)
    let a = Appender::open(&path, false).await.unwrap();
    // Larger than the pipe's buffer: the writer blocks in this write until the test reads.
    let big = format!("{}\n", "x".repeat(256 * 1024));
    let first = {
        let (a, big) = (a.clone(), big.clone());
        tokio::spawn(async move { a.append(big).await })
    };
    // The first batch is in flight once the writer has taken it.
    let taken = wait(|| {
        let st = a.handle.shared.state.lock();
        st.writing && st.buf.is_empty()
    })
    .await;
    assert!(taken, "the writer never took the first batch");
    let rest: Vec<_> = (0..100)
        .map(|i| {
            let a = a.clone();
            tokio::spawn(async move { a.append(format!("w{i}\n")).await })
        })
        .collect();
    let queued = wait(|| a.handle.shared.state.lock().buf.len() >= 100 * 3).await;
    assert!(queued, "the waiters' lines did not queue");
    assert_eq!(a.writes(), 0, "nothing finished while the pipe is full");
    let want = big.len() + (0..100).map(|i| format!("w{i}\n").len()).sum::<usize>();
    let got = read_exactly(&mut reader, want);
    assert_eq!(got.len(), want);
    first.await.unwrap().unwrap();
    for t in rest {
        t.await.unwrap().unwrap();
    }
    assert_eq!(a.writes(), 2, "the 100 waiters shared one write");
}

/// The tests below count requests in flight, which is process-wide: one at a time.
static IN_FLIGHT_TESTS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Requests ready on one thread at once (the streams of one HTTP/2 read, other connections)
/// share one write: with others in flight, each waiter yields once before writing, so the
/// others add their lines.
#[tokio::test(flavor = "current_thread")]
async fn lines_ready_together_share_one_write() {
    let _one = IN_FLIGHT_TESTS.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log");
    let a = Appender::open(&path, false).await.unwrap();
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let a = a.clone();
            // Counted when received, as a transport does, before any of them is handled.
            let counted = sidecred_core::sched::InFlight::enter();
            tokio::spawn(async move {
                let _counted = counted;
                a.append(format!("r{i}\n")).await
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert_eq!(a.writes(), 1, "20 lines ready together, one write");
    assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 20);
}

/// A request alone in flight writes its line at once, without yielding: a task queued after
/// it finds the write done (a yield would let that task run first).
#[tokio::test(flavor = "current_thread")]
async fn a_lone_request_writes_without_yielding() {
    let _one = IN_FLIGHT_TESTS.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log");
    let a = Appender::open(&path, false).await.unwrap();
    let counted = sidecred_core::sched::InFlight::enter();
    let writer = a.clone();
    let first = tokio::spawn(async move {
        let _counted = counted;
        writer.append("alone\n".into()).await
    });
    let probe = a.clone();
    let after = tokio::spawn(async move { probe.writes() });
    assert_eq!(after.await.unwrap(), 1, "written before the next task ran");
    first.await.unwrap().unwrap();
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "alone\n");
}

/// A waiter that goes away before writing (its request cancelled) leaves its line to the
/// thread: nothing queued is lost.
#[tokio::test(flavor = "current_thread")]
async fn a_dropped_waiter_leaves_its_line_to_the_thread() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log");
    let a = Appender::open(&path, false).await.unwrap();
    drop(a.enqueue(b"cancelled\n"));
    let written = wait(|| std::fs::read_to_string(&path).unwrap() == "cancelled\n").await;
    assert!(written, "the dropped waiter's line was never written");
}

#[tokio::test]
async fn a_failed_write_fails_its_waiters() {
    let a = Appender::open(Path::new("/dev/full"), true).await.unwrap();
    let (x, y) = tokio::join!(a.append("a\n".into()), a.append_bytes(b"b\n"));
    assert!(x.is_err() && y.is_err());
    let e = a.append("c\n".into()).await.unwrap_err();
    assert!(e.to_string().contains("space"), "{e}");
}

/// `try_append` never waits: with a batch stuck in flight and the backlog full it drops the
/// line and says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn try_append_drops_beyond_the_backlog() {
    let dir = tempfile::tempdir().unwrap();
    let (path, mut reader) = fifo(&dir);
    let a = Appender::open(&path, false).await.unwrap();
    assert!(a.try_append(format!("{}\n", "x".repeat(256 * 1024))));
    let taken = wait(|| a.handle.shared.state.lock().buf.is_empty()).await;
    assert!(taken);
    let chunk = format!("{}\n", "y".repeat(64 * 1024 - 1));
    let mut accepted = 0;
    while a.try_append(chunk.clone()) {
        accepted += 1;
        assert!(
            accepted <= MAX_PENDING / chunk.len() + 1,
            "backlog unbounded"
        );
    }
    assert_eq!(accepted, MAX_PENDING / chunk.len());
    let want = 256 * 1024 + 1 + accepted * chunk.len();
    assert_eq!(read_exactly(&mut reader, want).len(), want);
}

/// Polls `f` for up to 10 s.
async fn wait(mut f: impl FnMut() -> bool) -> bool {
    for _ in 0..10_000 {
        if f() {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    false
}
