//! A session's gate: whether anything may still be recorded or replied for it.
//!
//! Revocation must be final: a backend read that was in flight when the session ended may not
//! leave a lease or cache entry behind, nor reach the caller. Every insert made for a session
//! runs under the gate's lock while it is open, and every reply holds a read guard taken while
//! it is open. Closing flips the gate under the lock, then waits for the replies already let
//! through; after that, nothing new can appear and teardown removes what exists.

use parking_lot::Mutex;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use tokio::sync::{OwnedRwLockReadGuard, RwLock};

pub use sidecred_core::GateError;

#[derive(Debug, Default)]
struct State {
    closed: bool,
    calls: HashSet<String>,
    /// Releases so far of a call's lease of a secret: a request carries the count it saw at
    /// its start and is refused once it changed.
    released: HashMap<(String, String), u64>,
    watches: usize,
}

#[derive(Debug, Default)]
pub struct Gate {
    state: Mutex<State>,
    replies: Arc<RwLock<()>>,
}

/// A call id, the secret read under it, and the release count seen when the request began.
pub type CallKey<'a> = Option<(&'a str, &'a str, u64)>;

impl State {
    fn releases(&self, call: &str, secret: &str) -> u64 {
        // Looked up by borrowed parts: no allocation on the hot path when nothing was released.
        if self.released.is_empty() {
            return 0;
        }
        self.released
            .get(&(call.to_string(), secret.to_string()))
            .copied()
            .unwrap_or(0)
    }

    fn check(&self, call: CallKey<'_>) -> Result<(), GateError> {
        if self.closed {
            return Err(GateError::Closed);
        }
        if let Some((c, s, seen)) = call {
            if self.releases(c, s) != seen {
                return Err(GateError::Released);
            }
        }
        Ok(())
    }
}

impl Gate {
    pub fn is_open(&self) -> bool {
        !self.state.lock().closed
    }

    /// Checks a call id before any backend work, counting it against `max` distinct calls.
    /// Returns the release count the request carries from now on.
    pub fn admit_call(&self, call: &str, secret: &str, max: usize) -> Result<u64, GateError> {
        let mut st = self.state.lock();
        st.check(None)?;
        if !st.calls.contains(call) {
            if st.calls.len() >= max {
                return Err(GateError::TooManyCalls(max));
            }
            st.calls.insert(call.to_string());
        }
        Ok(st.releases(call, secret))
    }

    /// Runs `record` (a lease or cache insert) only while the session, and the call's lease of
    /// this secret, are still open; the lock makes the check and the insert one step.
    pub fn record<T>(&self, call: CallKey<'_>, record: impl FnOnce() -> T) -> Result<T, GateError> {
        let st = self.state.lock();
        st.check(call)?;
        Ok(record())
    }

    /// A guard to hold while a reply carrying a value is built and handed to the transport.
    /// Closing (or releasing) waits for guards taken before it.
    pub async fn reply(&self, call: CallKey<'_>) -> Result<OwnedRwLockReadGuard<()>, GateError> {
        let guard = self.replies.clone().read_owned().await;
        self.state.lock().check(call)?;
        Ok(guard)
    }

    /// Ends the session: nothing is recorded or replied from now on. Returns once the replies
    /// that passed the gate earlier are out. False if it was already closed.
    pub async fn close(&self) -> bool {
        let first = !std::mem::replace(&mut self.state.lock().closed, true);
        drop(self.replies.write().await);
        first
    }

    /// Releases a call's lease of a secret, like `close` does for the whole session: requests
    /// for it that began earlier are refused from now on (later ones get a new credential).
    /// Returns once replies let through earlier are out.
    pub async fn release(&self, call: &str, secret: &str) {
        *self
            .state
            .lock()
            .released
            .entry((call.to_string(), secret.to_string()))
            .or_default() += 1;
        drop(self.replies.write().await);
    }

    /// Takes one of at most `max` watch slots; the slot frees itself when dropped.
    pub fn watch(self: &Arc<Self>, max: usize) -> Result<WatchSlot, GateError> {
        let mut st = self.state.lock();
        st.check(None)?;
        if st.watches >= max {
            return Err(GateError::TooManyWatches(max));
        }
        st.watches += 1;
        Ok(WatchSlot(self.clone()))
    }
}

/// One open watch of a session.
pub struct WatchSlot(Arc<Gate>);

impl Drop for WatchSlot {
    fn drop(&mut self) {
        let mut st = self.0.state.lock();
        st.watches = st.watches.saturating_sub(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn nothing_is_recorded_after_close() {
        let g = Gate::default();
        assert_eq!(g.record(None, || 1), Ok(1));
        assert!(g.close().await);
        assert!(!g.close().await, "closing twice reports the second");
        assert_eq!(g.record(None, || 2), Err(GateError::Closed));
        assert_eq!(g.record(Some(("c", "s", 0)), || 3), Err(GateError::Closed));
        assert_eq!(g.reply(None).await.err(), Some(GateError::Closed));
        assert_eq!(g.admit_call("c", "s", 8), Err(GateError::Closed));
    }

    #[tokio::test]
    async fn close_waits_for_replies_in_flight() {
        let g = Arc::new(Gate::default());
        let guard = g.reply(None).await.unwrap();
        let g2 = g.clone();
        let closing = tokio::spawn(async move { g2.close().await });
        tokio::task::yield_now().await;
        // Closed for newcomers at once, but close() has not returned while a reply is out.
        assert_eq!(g.record(None, || ()), Err(GateError::Closed));
        assert!(!closing.is_finished());
        drop(guard);
        assert!(closing.await.unwrap());
    }

    #[tokio::test]
    async fn release_refuses_requests_that_began_before_it() {
        let g = Gate::default();
        let seen = g.admit_call("c1", "a", 8).unwrap();
        let other = g.admit_call("c1", "b", 8).unwrap();
        g.release("c1", "a").await;
        let c1a = Some(("c1", "a", seen));
        assert_eq!(g.record(c1a, || ()), Err(GateError::Released));
        assert_eq!(g.reply(c1a).await.err(), Some(GateError::Released));
        // Other secrets of the call, and other calls, are untouched.
        assert_eq!(g.record(Some(("c1", "b", other)), || 5), Ok(5));
        assert_eq!(g.record(Some(("c2", "a", 0)), || 6), Ok(6));
        // A request that begins after the release gets through.
        let later = g.admit_call("c1", "a", 8).unwrap();
        assert_eq!(later, seen + 1);
        assert_eq!(g.record(Some(("c1", "a", later)), || 7), Ok(7));
    }

    #[test]
    fn call_and_watch_caps() {
        let g = Arc::new(Gate::default());
        g.admit_call("c1", "a", 2).unwrap();
        g.admit_call("c1", "b", 2).unwrap();
        g.admit_call("c2", "a", 2).unwrap();
        assert_eq!(g.admit_call("c3", "a", 2), Err(GateError::TooManyCalls(2)));
        let w1 = g.watch(2).unwrap();
        let _w2 = g.watch(2).unwrap();
        assert!(matches!(g.watch(2), Err(GateError::TooManyWatches(2))));
        drop(w1);
        assert!(g.watch(2).is_ok());
    }
}
