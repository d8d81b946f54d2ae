//! An append-only line file written as a group commit, so request handlers never hold a lock
//! across an await and a waiting writer waits for one write only.
//!
//! Lines are appended to the open batch under a short lock. Whoever writes takes the whole
//! batch, writes it with one `write` (and one `fdatasync` when the file syncs and someone waits),
//! then wakes every waiter of that batch at once with its result. Lines that arrive meanwhile
//! form the next batch. A failed write fails every waiter of that batch, and no other.
//!
//! Who writes: a file that syncs is written by its own thread, so no request handler ever
//! blocks on an fsync. A file that does not sync (the audit log) is written by a waiting
//! caller: one `write` into the page cache, on the caller's thread, where a hand-off to another
//! thread would cost a wake-up on each side. When other requests are in flight, the caller
//! first yields once to its runtime, so the other requests ready on that thread (the streams
//! of one HTTP/2 read, other connections) add their lines and one `write` carries them all;
//! then, if no write is in flight and its batch is still open, it writes the batch, and what
//! queued meanwhile for a few rounds, and leaves the rest to the thread. A waiter dropped
//! before writing hands its batch to the thread.

use parking_lot::{Condvar, Mutex};
use sidecred_core::sched::{InFlight, YieldOnce};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use tokio::sync::Notify;

/// Bytes of lines waiting for the writer beyond which `try_append` drops a line.
const MAX_PENDING: usize = 4 << 20;

#[derive(Clone)]
pub struct Appender {
    handle: Arc<Handle>,
}

/// Owned by every clone of one appender: the last one dropped stops the writer (after it has
/// written what is pending).
struct Handle {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    file: std::fs::File,
    /// Sync each awaited batch; then only the writer thread writes.
    sync: bool,
    /// Wakes the writer thread.
    work: Condvar,
    /// Batches written so far (successful or not).
    writes: AtomicU64,
}

struct State {
    /// Lines of the open batch, in order.
    buf: Vec<u8>,
    /// The last written batch's buffer, cleared, for the next one.
    spare: Vec<u8>,
    /// A batch is being written (by the thread or a caller); nobody else starts one.
    writing: bool,
    /// The open batch: whoever adds a line to `buf` waits on it.
    batch: Arc<Batch>,
    /// Someone waits on the open batch (it is synced when the file syncs).
    awaited: bool,
    /// No more lines will come: the writer drains `buf` and exits.
    closing: bool,
}

/// A line's place in a batch: [`Ticket::wait`] resolves when that batch is written.
pub struct Ticket {
    batch: Arc<Batch>,
    /// Set when this waiter is to write its batch itself if nobody else has (no sync).
    writer: Option<Arc<Shared>>,
}

impl Ticket {
    pub async fn wait(mut self) -> std::io::Result<()> {
        if let Some(shared) = self.writer.clone() {
            // Other requests ready on this thread add their lines first, so one write carries
            // them all; alone, the caller writes at once (see `InFlight::others`).
            if InFlight::others() {
                YieldOnce::default().await;
            }
            shared.write_open(&self.batch);
            self.writer = None;
        }
        self.batch.wait().await
    }
}

impl Drop for Ticket {
    /// A waiter dropped before it wrote: its line still waits in the open batch, so the thread
    /// writes it.
    fn drop(&mut self) {
        if let Some(shared) = &self.writer {
            if self.batch.result.get().is_none() {
                shared.work.notify_one();
            }
        }
    }
}

/// One write of the group commit, and the result its waiters get.
#[derive(Default)]
struct Batch {
    result: OnceLock<Result<(), (std::io::ErrorKind, String)>>,
    done: Notify,
}

impl Batch {
    fn finish(&self, r: std::io::Result<()>) {
        let _ = self.result.set(r.map_err(|e| (e.kind(), e.to_string())));
        self.done.notify_waiters();
    }

    async fn wait(&self) -> std::io::Result<()> {
        let done = self.done.notified();
        tokio::pin!(done);
        // Registered before the result is looked at: a finish in between still wakes it.
        done.as_mut().enable();
        if self.result.get().is_none() {
            done.await;
        }
        match self.result.get() {
            Some(Ok(())) => Ok(()),
            Some(Err((kind, msg))) => Err(std::io::Error::new(*kind, msg.clone())),
            None => Err(std::io::Error::other("writer stopped")),
        }
    }
}

impl Appender {
    /// Opens `path` for appending; with `sync`, every acknowledged line is fsynced. The file is
    /// created 0600 whatever the umask, and an existing one is narrowed to 0600.
    pub async fn open(path: &Path, sync: bool) -> std::io::Result<Appender> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)?;
        crate::fileperm::make_private(&file, path)?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                buf: Vec::new(),
                spare: Vec::new(),
                writing: false,
                batch: Arc::default(),
                awaited: false,
                closing: false,
            }),
            work: Condvar::new(),
            writes: AtomicU64::new(0),
            file,
            sync,
        });
        let writer = shared.clone();
        let (started_tx, started_rx) = std::sync::mpsc::sync_channel(1);
        std::thread::Builder::new()
            .name("sidecred-append".into())
            .spawn(move || write_batches(&writer, started_tx))?;
        // Lines enqueued from here on find the thread asleep: it writes them only when asked
        // (a sync file, leftovers, a dropped waiter), never by racing a caller at start-up.
        let _ = started_rx.recv();
        Ok(Appender {
            handle: Arc::new(Handle { shared }),
        })
    }

    /// Appends a line and waits until the batch carrying it is written (and synced).
    pub async fn append(&self, line: String) -> std::io::Result<()> {
        self.append_bytes(line.as_bytes()).await
    }

    /// Appends bytes (one or more whole lines) and waits until the batch carrying them is
    /// written (and synced).
    pub async fn append_bytes(&self, line: &[u8]) -> std::io::Result<()> {
        self.enqueue(line).wait().await
    }

    /// Adds bytes (one or more whole lines) to the open batch at once; the ticket resolves
    /// when that batch is written (and synced). Not bounded by the backlog cap: every such
    /// line has a caller waiting on it, so callers bound them.
    pub fn enqueue(&self, line: &[u8]) -> Ticket {
        let shared = &self.handle.shared;
        let mut st = shared.state.lock();
        let batch = st.batch.clone();
        if shared.sync {
            self.push(&mut st, line);
            st.awaited = true;
            return Ticket {
                batch,
                writer: None,
            };
        }
        // No fsync to wait for: the waiter writes (see `Ticket::wait`), the thread sleeps on.
        st.buf.extend_from_slice(line);
        st.awaited = true;
        Ticket {
            batch,
            writer: Some(shared.clone()),
        }
    }

    /// Hands a line over without waiting; false if the backlog is full.
    pub fn try_append(&self, line: String) -> bool {
        self.try_append_bytes(line.as_bytes())
    }

    /// Hands bytes over without waiting; false if the backlog is full.
    pub fn try_append_bytes(&self, line: &[u8]) -> bool {
        let mut st = self.handle.shared.state.lock();
        if !st.buf.is_empty() && st.buf.len() + line.len() > MAX_PENDING {
            return false;
        }
        self.push(&mut st, line);
        true
    }

    /// Batches written so far: one `write` (and at most one sync) each.
    pub fn writes(&self) -> u64 {
        self.handle.shared.writes.load(Ordering::Relaxed)
    }

    fn push(&self, st: &mut State, line: &[u8]) {
        let was_empty = st.buf.is_empty() && !st.awaited;
        st.buf.extend_from_slice(line);
        // The writer thread sleeps on an empty buffer with no write in flight: the first line
        // of such a batch wakes it. Whoever is writing looks at the buffer again when done.
        if was_empty && !st.writing {
            self.handle.shared.work.notify_one();
        }
    }
}

/// Rounds a caller that writes takes for lines that queued behind its own.
const LEAD_ROUNDS: usize = 3;

/// Takes the open batch out of `st` for writing: its lines, its waiters, whether anyone waits.
fn take_batch(st: &mut State) -> (Vec<u8>, Arc<Batch>, bool) {
    let spare = std::mem::take(&mut st.spare);
    let out = std::mem::replace(&mut st.buf, spare);
    let awaited = std::mem::take(&mut st.awaited);
    (out, std::mem::take(&mut st.batch), awaited)
}

impl Shared {
    /// Writes the open batch on the caller's thread if `batch` is still unwritten and no write
    /// is in flight (whoever is writing takes it, or hands it to the thread), then what queued
    /// meanwhile for a few rounds; what is left goes to the thread.
    fn write_open(&self, batch: &Arc<Batch>) {
        let mut st = self.state.lock();
        if st.writing || batch.result.get().is_some() {
            return;
        }
        st.writing = true;
        for round in 0.. {
            let (out, batch, awaited) = take_batch(&mut st);
            drop(st);
            self.write_batch(out, &batch, awaited);
            st = self.state.lock();
            if (st.buf.is_empty() && !st.awaited) || round == LEAD_ROUNDS {
                break;
            }
        }
        st.writing = false;
        if !st.buf.is_empty() || st.awaited {
            self.work.notify_one();
        }
    }

    /// Writes one batch (and syncs it when asked and awaited), answers its waiters, and keeps
    /// the buffer for the next batch. Called with `writing` held by the caller.
    fn write_batch(&self, mut out: Vec<u8>, batch: &Batch, awaited: bool) {
        let mut r = (&self.file).write_all(&out);
        if r.is_ok() && self.sync && awaited {
            r = self.file.sync_data();
        }
        if let Err(e) = &r {
            tracing::error!(error = %e, "append failed");
        }
        self.writes.fetch_add(1, Ordering::Relaxed);
        batch.finish(r);
        out.clear();
        if out.capacity() <= MAX_PENDING {
            let mut st = self.state.lock();
            if st.spare.capacity() < out.capacity() {
                st.spare = out;
            }
        }
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.shared.state.lock().closing = true;
        self.shared.work.notify_one();
    }
}

/// The writer thread: one write (and sync) per batch until the last handle is dropped and
/// everything pending is written.
fn write_batches(shared: &Shared, started: std::sync::mpsc::SyncSender<()>) {
    let mut st = shared.state.lock();
    // Sent under the state lock, which the first wait releases: no line can be enqueued
    // between the opener's return and this thread's first look at the buffer.
    let _ = started.send(());
    loop {
        // A batch is due when it has lines, or a waiter (even one that added no bytes).
        if !st.writing && (!st.buf.is_empty() || st.awaited) {
            st.writing = true;
            let (out, batch, awaited) = take_batch(&mut st);
            drop(st);
            shared.write_batch(out, &batch, awaited);
            st = shared.state.lock();
            st.writing = false;
            continue;
        }
        if st.closing && !st.writing && st.buf.is_empty() && !st.awaited {
            return;
        }
        shared.work.wait(&mut st);
    }
}

#[cfg(test)]
#[path = "appender_tests.rs"]
mod tests;
