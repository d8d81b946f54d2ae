//! Leak guard on responses: every value injected into a request is cut out of the origin's
//! answer (headers and body, e.g. an echo endpoint) before the agent sees it. The body is
//! scanned as it streams, holding back only the bytes a value could still straddle. The same
//! body wrapper counts the bytes and reports once at the end (the audit line).

use super::inject::Needles;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

pub const MARK: &[u8] = b"[REDACTED]";

/// Replaces every occurrence of each needle; true if anything was replaced.
pub fn scrub(buf: &mut Vec<u8>, needles: &[Vec<u8>]) -> bool {
    let mut hit = false;
    for n in needles.iter().filter(|n| !n.is_empty()) {
        let mut i = 0;
        while i + n.len() <= buf.len() {
            if buf[i..].starts_with(n) {
                buf.splice(i..i + n.len(), MARK.iter().copied());
                i += MARK.len();
                hit = true;
            } else {
                i += 1;
            }
        }
    }
    hit
}

/// Scrubs header values in place.
pub fn scrub_headers(h: &mut http::HeaderMap, needles: &[Vec<u8>]) {
    if needles.is_empty() {
        return;
    }
    for v in h.values_mut() {
        let mut b = v.as_bytes().to_vec();
        if scrub(&mut b, needles) {
            *v = http::HeaderValue::from_bytes(&b)
                .unwrap_or(http::HeaderValue::from_static("[REDACTED]"));
        }
    }
}

type OnEnd = Box<dyn FnOnce(u64, bool) + Send + Sync>;

/// A response body passed through the scrubber; `on_end(bytes, complete)` runs exactly once.
pub struct Scrubbed<B> {
    inner: B,
    needles: Arc<Needles>,
    hold: usize,
    held: Vec<u8>,
    bytes: u64,
    ended: bool,
    on_end: Option<OnEnd>,
}

impl<B> Scrubbed<B> {
    pub fn new(inner: B, needles: Arc<Needles>, on_end: OnEnd) -> Self {
        let hold = needles
            .0
            .iter()
            .map(|n| n.len())
            .max()
            .unwrap_or(1)
            .saturating_sub(1);
        Self {
            inner,
            needles,
            hold,
            held: Vec::new(),
            bytes: 0,
            ended: false,
            on_end: Some(on_end),
        }
    }

    fn finish(&mut self, complete: bool) {
        if let Some(f) = self.on_end.take() {
            f(self.bytes, complete);
        }
    }
}

impl<B> Drop for Scrubbed<B> {
    fn drop(&mut self) {
        self.finish(false);
    }
}

impl<B> Body for Scrubbed<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let me = &mut *self;
        loop {
            if me.ended {
                if !me.held.is_empty() {
                    let out = std::mem::take(&mut me.held);
                    return Poll::Ready(Some(Ok(Frame::data(Bytes::from(out)))));
                }
                me.finish(true);
                return Poll::Ready(None);
            }
            match Pin::new(&mut me.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => me.ended = true,
                Poll::Ready(Some(Err(e))) => {
                    me.finish(false);
                    return Poll::Ready(Some(Err(e)));
                }
                // Trailers are not forwarded: they could carry a value past the scrubber.
                Poll::Ready(Some(Ok(f))) => {
                    if let Ok(d) = f.into_data() {
                        me.bytes += d.len() as u64;
                        if me.needles.0.is_empty() {
                            return Poll::Ready(Some(Ok(Frame::data(d))));
                        }
                        me.held.extend_from_slice(&d);
                        scrub(&mut me.held, &me.needles.0);
                        if me.held.len() > me.hold {
                            let rest = me.held.split_off(me.held.len() - me.hold);
                            let out = std::mem::replace(&mut me.held, rest);
                            return Poll::Ready(Some(Ok(Frame::data(Bytes::from(out)))));
                        }
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended && self.held.is_empty() && self.on_end.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        if self.needles.0.is_empty() {
            self.inner.size_hint()
        } else {
            SizeHint::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, StreamBody};

    #[test]
    fn scrub_table() {
        let n = vec![b"s3cret".to_vec(), b"dG9r".to_vec()];
        for (inp, out) in [
            ("x s3cret y", "x [REDACTED] y"),
            ("s3crets3cret", "[REDACTED][REDACTED]"),
            ("s3cre", "s3cre"),
            ("a dG9r", "a [REDACTED]"),
        ] {
            let mut b = inp.as_bytes().to_vec();
            scrub(&mut b, &n);
            assert_eq!(String::from_utf8(b).unwrap(), out);
        }
    }

    #[tokio::test]
    async fn streamed_value_split_across_chunks_is_redacted() {
        let chunks = ["he said s3", "cr", "et and s3cret", "!"];
        let s = futures::stream::iter(
            chunks.map(|c| Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from(c)))),
        );
        let (tx, rx) = std::sync::mpsc::channel();
        let body = Scrubbed::new(
            StreamBody::new(s),
            Arc::new(Needles(vec![b"s3cret".to_vec()])),
            Box::new(move |n, done| tx.send((n, done)).unwrap()),
        );
        let out = body.collect().await.unwrap().to_bytes();
        assert_eq!(&out[..], b"he said [REDACTED] and [REDACTED]!");
        assert_eq!(rx.recv().unwrap(), (26, true));
    }
}
