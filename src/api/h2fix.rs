//! Interop shim, on every socket, for gRPC clients on Unix sockets (grpcurl, py-spiffe, grpcio):
//! they send the socket path (grpcurl) or its percent-encoded form (C-core) as `:authority`,
//! which the HTTP/2 server rejects with PROTOCOL_ERROR. This reader rewrites the value of every literal `:authority` field in the
//! client's header blocks to a valid host ("localhost", or a shorter prefix of it) before the
//! server parses them. Nothing else changes, and no Huffman decoding is needed: only the field
//! boundaries are parsed.
//!
//! HPACK dynamic table: a rewritten value is never longer than the original, so the server's
//! table evicts no earlier than the client's and every index the client uses still names the
//! same entry on the server.

use bytes::{Buf, BytesMut};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, ReadBuf};

const PREFACE_LEN: usize = 24;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// Largest frame accepted from a client (the server's default max frame size is 16 KiB).
const MAX_FRAME: usize = 1 << 20;
const OUT_FRAME: usize = 16 * 1024;
/// Room made in the read buffer before each read from the socket.
const READ_CHUNK: usize = 8 * 1024;

/// Reads an HPACK integer with an `n`-bit prefix at `b[*i]`.
fn int(b: &[u8], i: &mut usize, n: u8) -> Option<usize> {
    let mask = (1u16 << n) as usize - 1;
    let mut v = (*b.get(*i)? as usize) & mask;
    *i += 1;
    if v < mask {
        return Some(v);
    }
    let mut shift = 0;
    loop {
        let c = *b.get(*i)? as usize;
        *i += 1;
        v = v.checked_add((c & 0x7f).checked_shl(shift)?)?;
        shift += 7;
        if c & 0x80 == 0 || shift > 28 {
            return (c & 0x80 == 0).then_some(v);
        }
    }
}

fn put_int(out: &mut Vec<u8>, first: u8, n: u8, v: usize) {
    let mask = (1usize << n) - 1;
    if v < mask {
        out.push(first | v as u8);
        return;
    }
    out.push(first | mask as u8);
    let mut v = v - mask;
    while v >= 0x80 {
        out.push((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Skips a string literal; returns (huffman, length, start of bytes).
fn string(b: &[u8], i: &mut usize) -> Option<(bool, usize, usize)> {
    let huff = *b.get(*i)? & 0x80 != 0;
    let len = int(b, i, 7)?;
    let start = *i;
    *i = start.checked_add(len).filter(|e| *e <= b.len())?;
    Some((huff, len, start))
}

/// Rewrites `:authority` values in one header block; None if the block does not parse
/// (it is then passed on unchanged and the server reports the error).
pub fn rewrite_block(b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let start = i;
        let c = b[i];
        let prefix = match c {
            _ if c & 0x80 != 0 => {
                int(b, &mut i, 7)?;
                out.extend_from_slice(&b[start..i]);
                continue;
            }
            _ if c & 0xe0 == 0x20 => {
                int(b, &mut i, 5)?;
                out.extend_from_slice(&b[start..i]);
                continue;
            }
            _ if c & 0xc0 == 0x40 => 6,
            _ => 4,
        };
        let index = int(b, &mut i, prefix)?;
        let mut authority = index == 1;
        if index == 0 {
            let (huff, len, s) = string(b, &mut i)?;
            authority = !huff && &b[s..s + len] == b":authority";
        }
        let name_end = i;
        let (huff, len, _) = string(b, &mut i)?;
        out.extend_from_slice(&b[start..name_end]);
        if authority {
            // Never longer than the decoded original, even when that is empty, so the server's
            // HPACK table never outgrows the client's. Huffman: symbols take at most 30 bits and
            // padding under 8, so `len` bytes hold at least ceil((8 len - 7) / 30) symbols (one
            // or more whenever len > 0: a short name such as a cluster's stays non-empty).
            let decoded_min = if huff {
                (len * 8).saturating_sub(7).div_ceil(30)
            } else {
                len
            };
            let host = &b"localhost"[..decoded_min.min(9)];
            put_int(&mut out, 0, 7, host.len());
            out.extend_from_slice(host);
        } else {
            out.extend_from_slice(&b[name_end..i]);
        }
    }
    Some(out)
}

/// Client-to-server bytes with header blocks rewritten.
pub struct AuthorityFix<S> {
    inner: S,
    raw: BytesMut,
    ready: BytesMut,
    preface_left: usize,
    /// A header block spanning HEADERS + CONTINUATION: (flags, stream id, priority, block).
    pending: Option<(u8, u32, Vec<u8>, Vec<u8>)>,
    /// Counts reads for the connection's shared identity re-check, where the server keeps one.
    reads: Option<super::peer::ReadEpoch>,
}

impl<S> AuthorityFix<S> {
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            raw: BytesMut::new(),
            ready: BytesMut::new(),
            preface_left: PREFACE_LEN,
            pending: None,
            reads: None,
        }
    }

    /// Counts every read that delivers bytes into `reads` (see [`super::peer::ReadEpoch`]).
    pub fn counting(mut self, reads: super::peer::ReadEpoch) -> Self {
        self.reads = Some(reads);
        self
    }

    fn emit_headers(&mut self, flags: u8, stream: u32, prio: &[u8], block: &[u8]) {
        let block = rewrite_block(block).unwrap_or_else(|| block.to_vec());
        let mut first = prio.to_vec();
        let take = block.len().min(OUT_FRAME - prio.len());
        first.extend_from_slice(&block[..take]);
        let mut rest = &block[take..];
        let end = if rest.is_empty() { END_HEADERS } else { 0 };
        let f = (flags & !(PADDED | END_HEADERS)) | end;
        frame(&mut self.ready, HEADERS, f, stream, &first);
        while !rest.is_empty() {
            let n = rest.len().min(OUT_FRAME);
            let end = if n == rest.len() { END_HEADERS } else { 0 };
            frame(&mut self.ready, CONTINUATION, end, stream, &rest[..n]);
            rest = &rest[n..];
        }
    }

    /// Moves every complete frame from `raw` to `ready`.
    fn process(&mut self) -> io::Result<()> {
        if self.preface_left > 0 {
            let n = self.preface_left.min(self.raw.len());
            let preface = self.raw.split_to(n);
            self.ready.extend_from_slice(&preface);
            self.preface_left -= n;
            if self.preface_left > 0 {
                return Ok(());
            }
        }
        while self.raw.len() >= 9 {
            let len = u32::from_be_bytes([0, self.raw[0], self.raw[1], self.raw[2]]) as usize;
            if len > MAX_FRAME {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "HTTP/2 frame too large",
                ));
            }
            if self.raw.len() < 9 + len {
                break;
            }
            let (ty, flags) = (self.raw[3], self.raw[4]);
            let stream = u32::from_be_bytes([self.raw[5], self.raw[6], self.raw[7], self.raw[8]]);
            let frame_bytes = self.raw.split_to(9 + len);
            let payload = &frame_bytes[9..];
            match ty {
                HEADERS => {
                    let mut p = payload;
                    if flags & PADDED != 0 {
                        let pad = *p.first().unwrap_or(&0) as usize;
                        p = p.get(1..p.len().saturating_sub(pad)).unwrap_or_default();
                    }
                    let (prio, block) = if flags & PRIORITY != 0 && p.len() >= 5 {
                        p.split_at(5)
                    } else {
                        (&p[..0], p)
                    };
                    if flags & END_HEADERS != 0 {
                        self.emit_headers(flags, stream, prio, block);
                    } else {
                        self.pending = Some((flags, stream, prio.to_vec(), block.to_vec()));
                    }
                }
                CONTINUATION if self.pending.is_some() => {
                    let (f, s, prio, mut block) = self.pending.take().expect("checked");
                    block.extend_from_slice(payload);
                    if flags & END_HEADERS != 0 {
                        self.emit_headers(f, s, &prio, &block);
                    } else if block.len() > MAX_FRAME {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            "header block too large",
                        ));
                    } else {
                        self.pending = Some((f, s, prio, block));
                    }
                }
                _ => self.ready.extend_from_slice(&frame_bytes),
            }
        }
        Ok(())
    }
}

fn frame(out: &mut BytesMut, ty: u8, flags: u8, stream: u32, payload: &[u8]) {
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    out.extend_from_slice(&[ty, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
}

impl<S: AsyncRead + Unpin> AsyncRead for AuthorityFix<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if !this.ready.is_empty() {
                let n = this.ready.len().min(buf.remaining());
                buf.put_slice(&this.ready[..n]);
                this.ready.advance(n);
                return Poll::Ready(Ok(()));
            }
            // Read straight into `raw`'s spare room: no zeroed scratch buffer, no second copy.
            this.raw.reserve(READ_CHUNK);
            let n =
                match tokio_util::io::poll_read_buf(Pin::new(&mut this.inner), cx, &mut this.raw) {
                    Poll::Ready(Ok(n)) => n,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => return Poll::Pending,
                };
            if n == 0 {
                // EOF: hand over whatever is left as is.
                this.ready = this.raw.split();
                if this.ready.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                continue;
            }
            if let Some(r) = &this.reads {
                r.read();
            }
            this.process()?;
        }
    }
}

super::forward_async_write!(AuthorityFix<S>, S);

impl<S: tonic::transport::server::Connected> tonic::transport::server::Connected
    for AuthorityFix<S>
{
    type ConnectInfo = S::ConnectInfo;
    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrites_only_the_authority_value() {
        // :method GET (indexed 2), :authority literal-with-indexing "tmp%2Fa.sock",
        // a literal "x-a" = "b" without indexing.
        let mut b = vec![0x82, 0x41, 12];
        b.extend_from_slice(b"tmp%2Fa.sock");
        b.extend_from_slice(&[0x00, 3]);
        b.extend_from_slice(b"x-a");
        b.extend_from_slice(&[1, b'b']);
        let out = rewrite_block(&b).unwrap();
        let mut want = vec![0x82, 0x41, 9];
        want.extend_from_slice(b"localhost");
        want.extend_from_slice(&b[15..]);
        assert_eq!(out, want);
        // A short Huffman value becomes a shorter host; a broken block is refused.
        assert_eq!(
            rewrite_block(&[0x41, 0x84, 1, 2, 3, 4]).unwrap(),
            vec![0x41, 1, b'l']
        );
        // A Huffman value of 1-3 bytes still decodes to at least one character: it must not
        // become an empty authority, which the server would reject.
        for n in 1..=3u8 {
            let mut b = vec![0x41, 0x80 | n];
            b.extend(std::iter::repeat_n(0xff, n as usize));
            assert_eq!(rewrite_block(&b).unwrap(), vec![0x41, 1, b'l'], "{n} bytes");
        }
        assert_eq!(rewrite_block(&[0x41, 0x80]).unwrap(), vec![0x41, 0]);
        assert!(rewrite_block(&[0x41, 20, b'a']).is_none());
        let mut i = 0;
        assert_eq!(int(&[0x1f, 0x9a, 0x0a], &mut i, 5), Some(1337));
    }
}
