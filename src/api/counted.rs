//! A stream that stamps every read that delivers bytes (see `ReadEpoch`), for transports
//! whose requests are parsed by a library that reads on its own (hyper's HTTP/1.1 server):
//! requests read before one identity re-check began share it.

use super::peer::ReadEpoch;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, ReadBuf};

pub struct Counted<S> {
    inner: S,
    reads: ReadEpoch,
}

impl<S> Counted<S> {
    pub fn new(inner: S, reads: ReadEpoch) -> Self {
        Self { inner, reads }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.reads.read();
        }
        r
    }
}

super::forward_async_write!(Counted<S>, S);
