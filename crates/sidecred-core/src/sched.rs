//! Letting the other ready tasks of this thread run first, without parking.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

/// Pending once, with the task woken at once: the runtime runs the other tasks already
/// queued on this thread (and a `FuturesUnordered` its other ready futures) before this one
/// again, without parking or polling the I/O driver in between as `tokio::task::yield_now`
/// would (its deferred wake costs a driver poll, and at times a wake-up of another worker).
/// Used where work of many ready requests can be shared: one audit write for their lines,
/// one identity re-check for their reads.
#[derive(Default)]
pub struct YieldOnce(bool);

impl Future for YieldOnce {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0 {
            return Poll::Ready(());
        }
        self.0 = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// Requests received and not yet answered, on every socket of this process.
static IN_FLIGHT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Counts one request from when a transport receives it until it is answered (dropped).
/// Transports take it as soon as a request is whole, before any request of the same read is
/// handled, so a handler can tell whether others wait behind it.
pub struct InFlight(());

impl InFlight {
    pub fn enter() -> Self {
        IN_FLIGHT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        InFlight(())
    }

    /// Whether requests other than the caller's are received and unanswered: only then is a
    /// [`YieldOnce`] worth it. With nothing else to run, a self-wake makes the runtime wake
    /// another worker to steal the task (a futex wake and a migration per request at C=1).
    pub fn others() -> bool {
        IN_FLIGHT.load(std::sync::atomic::Ordering::Relaxed) > 1
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        IN_FLIGHT.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_flight_counts_until_dropped() {
        // Other tests of this crate take no guards, so the count is this test's own.
        assert!(!InFlight::others());
        let a = InFlight::enter();
        assert!(!InFlight::others(), "only the caller's own request");
        let b = InFlight::enter();
        assert!(InFlight::others());
        drop(a);
        assert!(!InFlight::others());
        drop(b);
        assert!(!InFlight::others());
    }
}
