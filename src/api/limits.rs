//! Every bound a caller meets on a socket, in one place: how many connections (in all and per
//! uid), how long a handshake may take, how large a request may be, and how much memory one
//! HTTP/2 connection may make the server hold.
//!
//! Memory per workload connection is bounded by flow control: a unary request's DATA is not
//! credited back to the client until its whole body has arrived (or been refused), so what one
//! connection can make the server buffer is at most `initial_connection_window` of bodies plus
//! `max_concurrent_streams` header lists of `max_header_list_size`, and each stream at most
//! `initial_stream_window`. Answers wait in at most `max_send_buffer` per stream.

use crate::engine::settings::ServerConfig;
use std::time::Duration;

/// Largest request message accepted; secret requests are small.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// The limits of one server, read from `[server]` where they are configurable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// `server.max_connections`: open connections per socket. Further callers are accepted,
    /// identified and refused at once (never left waiting in the backlog).
    pub max_connections: usize,
    /// `server.max_connections_per_uid`: open connections per socket from one uid.
    pub max_connections_per_uid: usize,
    /// `server.handshake_timeout`: a connection must send its HTTP/2 preface by then.
    pub handshake_timeout: Duration,
    /// A request message (after the 5-byte gRPC prefix), checked as DATA arrives.
    pub max_request_bytes: usize,
    /// Decoded size of one request's header list.
    pub max_header_list_size: u32,
    /// Streams open at once on one connection.
    pub max_concurrent_streams: u32,
    /// Flow-control window of one stream: at least one whole request.
    pub initial_stream_window: u32,
    /// Flow-control window of one connection: all request bodies it may have in flight.
    pub initial_connection_window: u32,
    /// Largest HTTP/2 frame accepted.
    pub max_frame_size: u32,
    /// Bytes of answer queued per stream before the handler waits for the client to read.
    pub max_send_buffer: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            max_connections_per_uid: 256,
            handshake_timeout: Duration::from_secs(10),
            max_request_bytes: MAX_REQUEST_BYTES,
            max_header_list_size: 16 * 1024,
            max_concurrent_streams: 256,
            // A whole request (prefix included) fits in one stream's window, so its body never
            // needs credit back before it is complete.
            initial_stream_window: 128 * 1024,
            // Clients such as tonic send each request's message in a DATA frame of its own, ended
            // by an empty one; h2 lets half the connection window's worth of such small frames
            // sit unread before it calls the peer abusive. 1 MiB covers a burst on every stream.
            initial_connection_window: 1 << 20,
            max_frame_size: 16 * 1024,
            max_send_buffer: 64 * 1024,
        }
    }
}

impl Limits {
    /// The configurable limits from `[server]`, the rest at their defaults.
    pub fn from_config(s: &ServerConfig) -> Self {
        Self {
            max_connections: s.max_connections,
            max_connections_per_uid: s.max_connections_per_uid,
            handshake_timeout: s.handshake_timeout,
            ..Self::default()
        }
    }

    /// The largest whole unary request body: one message and its 5-byte prefix.
    pub fn max_body(&self) -> usize {
        self.max_request_bytes + 5
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_whole_request_fits_one_stream_window() {
        let l = Limits::default();
        assert!(l.max_body() <= l.initial_stream_window as usize);
        assert!(l.initial_stream_window <= l.initial_connection_window);
    }
}
