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
