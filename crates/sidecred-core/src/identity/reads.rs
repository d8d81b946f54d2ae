//! The order of the reads that deliver requests, so one identity re-check can answer for many.
//!
//! Every counted read takes the next value of one process-wide clock, after its bytes arrived
//! and before they are handed on. A re-check that began at clock value C saw the caller's
//! process as it was after every read stamped C or lower had completed, so after every byte
//! those reads carried had been sent: an exec before any of them was sent is visible to it.
//! Requests from such reads, on any connection of that process that expects the executable
//! the check found, need no check of their own. A request from a later read checks again.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Process-wide: stamps reads on every connection in one order.
static CLOCK: AtomicU64 = AtomicU64::new(0);

/// The clock now: taken just before a re-check starts.
pub(super) fn clock() -> u64 {
    CLOCK.load(Ordering::SeqCst)
}

/// One connection's latest read stamp (0 before any). Transports call [`ReadEpoch::read`] for
/// every read that delivers bytes.
#[derive(Clone, Default)]
pub struct ReadEpoch(Arc<AtomicU64>);

impl ReadEpoch {
    /// Stamps one read that delivered bytes; call before the bytes are handed on.
    pub fn read(&self) {
        let stamp = CLOCK.fetch_add(1, Ordering::SeqCst) + 1;
        self.0.fetch_max(stamp, Ordering::AcqRel);
    }

    /// The stamp of the connection's latest read.
    pub(super) fn last(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }
}

/// Identities compare by who the caller is, not by how its connection counts reads.
impl PartialEq for ReadEpoch {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}
impl Eq for ReadEpoch {}

impl std::fmt::Debug for ReadEpoch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReadEpoch")
    }
}
