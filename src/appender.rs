//! An append-only line file owned by one background task, so request handlers never block on
//! file IO and never hold a lock across an await. Writers either wait for the write (and its
//! fsync, when asked) or hand the line over and move on.

use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, oneshot};

type Ack = oneshot::Sender<std::io::Result<()>>;

#[derive(Clone)]
pub struct Appender {
    tx: mpsc::Sender<(String, Option<Ack>)>,
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
        let mut file = tokio::fs::File::from_std(file);
        let (tx, mut rx) = mpsc::channel::<(String, Option<Ack>)>(4096);
        tokio::spawn(async move {
            // Lines that queued up meanwhile go out in one write.
            let mut batch = String::new();
            let mut acks = Vec::new();
            while let Some((line, ack)) = rx.recv().await {
                batch.push_str(&line);
                acks.extend(ack);
                while batch.len() < 256 * 1024 {
                    match rx.try_recv() {
                        Ok((line, ack)) => {
                            batch.push_str(&line);
                            acks.extend(ack);
                        }
                        Err(_) => break,
                    }
                }
                let mut r = file.write_all(batch.as_bytes()).await;
                if r.is_ok() {
                    r = file.flush().await;
                }
                if r.is_ok() && sync && !acks.is_empty() {
                    r = file.sync_data().await;
                }
                if let Err(e) = &r {
                    tracing::error!(error = %e, "append failed");
                }
                for ack in acks.drain(..) {
                    let _ = ack.send(
                        r.as_ref()
                            .map(|_| ())
                            .map_err(|e| std::io::Error::new(e.kind(), e.to_string())),
                    );
                }
                batch.clear();
            }
        });
        Ok(Appender { tx })
    }

    /// Appends a line and waits until it is written.
    pub async fn append(&self, line: String) -> std::io::Result<()> {
        let (ack, done) = oneshot::channel();
        self.tx
            .send((line, Some(ack)))
            .await
            .map_err(|_| std::io::Error::other("writer stopped"))?;
        done.await
            .map_err(|_| std::io::Error::other("writer stopped"))?
    }

    /// Hands a line over without waiting; false if the queue is full.
    pub fn try_append(&self, line: String) -> bool {
        self.tx.try_send((line, None)).is_ok()
    }
}
