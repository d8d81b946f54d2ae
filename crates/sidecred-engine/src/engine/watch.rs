//! Watchers: WatchSecret streams subscribe per secret; rotation, retirement and rechecks
//! publish to them.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::time::SystemTime;
use tokio::sync::broadcast;

/// A change to one secret, pushed to watchers.
#[derive(Clone, Debug)]
pub struct WatchEvent {
    pub kind: WatchKind,
    pub version: String,
    pub previous_version: String,
    pub previous_retires_at: Option<SystemTime>,
    pub at: SystemTime,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WatchKind {
    Current,
    Rotated,
    Retired,
    Changed,
}

/// The subscribers of each secret's changes.
#[derive(Default)]
pub(super) struct Watchers(Mutex<HashMap<String, broadcast::Sender<WatchEvent>>>);

impl Watchers {
    pub fn subscribe(&self, secret: &str) -> broadcast::Receiver<WatchEvent> {
        self.0
            .lock()
            .entry(secret.to_string())
            .or_insert_with(|| broadcast::channel(64).0)
            .subscribe()
    }

    /// Open WatchSecret streams (each holds one receiver until its stream ends).
    pub fn watch_count(&self) -> usize {
        let w = self.0.lock();
        w.values().map(|tx| tx.receiver_count()).sum()
    }

    pub(super) fn notify(&self, secret: &str, ev: WatchEvent) {
        if let Some(tx) = self.0.lock().get(secret) {
            let _ = tx.send(ev);
        }
    }
}
