//! Admission at accept. A connection is accepted at once and its caller identified at once (so
//! the identity is the one of the process that connected, not of whatever that pid runs later);
//! only then is it refused if no policy rule admits its uid, or if it would exceed the global or
//! per-uid connection cap. A refused caller is told why in an HTTP/2 GOAWAY (gRPC clients show
//! it as PERMISSION_DENIED or RESOURCE_EXHAUSTED) and its connection closed; each kind of
//! refusal is audited at most once per uid every [`AUDIT_EVERY`], with a count of the others.

use super::limits::Limits;
use super::peer::PeerIdentity;
use crate::engine::Engine;
use crate::engine::RequestLine;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::UnixStream;
use tokio::time::Instant;

/// At most one audit line per uid and kind of refusal in this window.
pub const AUDIT_EVERY: Duration = Duration::from_secs(10);
/// How long a refused connection stays open for its client to read why.
pub const LINGER: Duration = Duration::from_millis(200);
/// Refused connections lingering at once, per socket.
pub const LINGER_MAX: usize = 64;

/// Which policy decides who may connect to a socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Socket {
    Workload,
    Admin,
    Spiffe,
    /// An HTTP/1.1 endpoint compatible with another product's API (src/compat/), by name.
    /// Its callers are admitted by the workload policy.
    Http(&'static str),
}

impl Socket {
    fn name(self) -> &'static str {
        match self {
            Socket::Workload => "workload",
            Socket::Admin => "admin",
            Socket::Spiffe => "spiffe",
            Socket::Http(name) => name,
        }
    }
}

/// Why a connection was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Refusal {
    NotAdmitted,
    Global,
    PerUid,
}

/// Open connections, in all and per uid.
#[derive(Default)]
struct Open {
    total: usize,
    per_uid: HashMap<u32, usize>,
}

/// The last audit line written for one (uid, refusal), and how many were left out since.
struct Quiet {
    last: Instant,
    suppressed: u64,
}

/// Counts a socket's connections and decides on each new one.
pub struct Gate {
    socket: Socket,
    engine: Arc<Engine>,
    limits: Limits,
    open: Mutex<Open>,
    quiet: Mutex<HashMap<(u32, Refusal), Quiet>>,
    lingering: Arc<tokio::sync::Semaphore>,
}

/// An admitted connection's place in the counts; given back when the connection closes.
pub struct Slot {
    gate: Arc<Gate>,
    uid: u32,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut o = self.gate.open.lock();
        o.total = o.total.saturating_sub(1);
        if let Some(n) = o.per_uid.get_mut(&self.uid) {
            *n -= 1;
            if *n == 0 {
                o.per_uid.remove(&self.uid);
            }
        }
    }
}

impl Gate {
    pub fn new(socket: Socket, engine: Arc<Engine>, limits: Limits) -> Arc<Gate> {
        Arc::new(Gate {
            socket,
            engine,
            limits,
            open: Mutex::new(Open::default()),
            quiet: Mutex::new(HashMap::new()),
            lingering: Arc::new(tokio::sync::Semaphore::new(LINGER_MAX)),
        })
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Whether the current policy of this socket admits the uid (and gid) at all.
    fn admits(&self, id: &PeerIdentity) -> bool {
        let cat = self.engine.catalog();
        let p = match self.socket {
            Socket::Admin => &cat.config.admin_policy,
            Socket::Workload | Socket::Spiffe | Socket::Http(_) => &cat.config.workload_policy,
        };
        p.admits_uid(id.uid, id.gid)
    }

    /// Takes a slot for the caller, or says why it gets none.
    pub fn admit(self: &Arc<Self>, id: &PeerIdentity) -> Result<Slot, Refusal> {
        if !self.admits(id) {
            return Err(Refusal::NotAdmitted);
        }
        let mut o = self.open.lock();
        if o.total >= self.limits.max_connections {
            return Err(Refusal::Global);
        }
        let n = o.per_uid.entry(id.uid).or_insert(0);
        if *n >= self.limits.max_connections_per_uid {
            return Err(Refusal::PerUid);
        }
        *n += 1;
        o.total += 1;
        Ok(Slot {
            gate: self.clone(),
            uid: id.uid,
        })
    }

    /// Why, in words a caller and an auditor understand.
    pub fn reason(&self, id: &PeerIdentity, r: Refusal) -> String {
        let s = self.socket.name();
        match r {
            Refusal::NotAdmitted => format!(
                "no policy.{} rule admits uid={} gid={}; connection closed at accept",
                if self.socket == Socket::Admin {
                    "admin"
                } else {
                    "workload"
                },
                id.uid,
                id.gid
            ),
            Refusal::Global => format!(
                "{s} socket at server.max_connections ({}); connection refused",
                self.limits.max_connections
            ),
            Refusal::PerUid => format!(
                "uid {} at server.max_connections_per_uid ({}) on the {s} socket; connection refused",
                id.uid, self.limits.max_connections_per_uid
            ),
        }
    }

    /// Tells the caller why (one GOAWAY, written without waiting), audits at the allowed rate,
    /// and lets the connection drop.
    pub fn refuse(&self, stream: UnixStream, id: &PeerIdentity, r: Refusal) {
        let why = self.reason(id, r);
        let _ = stream.try_write(&goaway(r, why.as_bytes()));
        self.linger(stream);
        self.report(id, r, why);
    }

    /// A place among the refused connections allowed to linger (see [`Gate::linger`]), for
    /// transports that write their refusal themselves; None: close at once.
    pub fn linger_permit(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        self.lingering.clone().try_acquire_owned().ok()
    }

    /// Logs and audits a refusal, at most once per uid and kind every [`AUDIT_EVERY`].
    pub fn report(&self, id: &PeerIdentity, r: Refusal, why: String) {
        let Some(suppressed) = self.should_audit(id.uid, r) else {
            return;
        };
        let detail = if suppressed > 0 {
            format!("{why} ({suppressed} more from this uid since the last line)")
        } else {
            why
        };
        tracing::warn!(caller = %id, socket = self.socket.name(), reason = %detail, "connection refused");
        let engine = self.engine.clone();
        let id = id.clone();
        tokio::spawn(async move {
            let line = RequestLine {
                event: "connection_refused",
                outcome: "denied",
                detail: &detail,
                ..Default::default()
            };
            engine.record_request(&id, line).await;
        });
    }

    /// Closes a refused connection once its client has had time to read the GOAWAY: closing
    /// at once would fail the client's first write (EPIPE) before it reads why. At most
    /// [`LINGER_MAX`] refused connections wait, each for at most [`LINGER`], reading and
    /// discarding what the client sends; beyond that they are closed at once.
    fn linger(&self, stream: UnixStream) {
        let Ok(permit) = self.lingering.clone().try_acquire_owned() else {
            return;
        };
        tokio::spawn(async move {
            let _permit = permit;
            let drain = async {
                let mut buf = [0u8; 1024];
                loop {
                    if stream.readable().await.is_err() {
                        return;
                    }
                    match stream.try_read(&mut buf) {
                        Ok(0) => return,
                        Ok(_) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                        Err(_) => return,
                    }
                }
            };
            let _ = tokio::time::timeout(LINGER, drain).await;
        });
    }

    /// Some(count left out since the last line) when a line is due for (uid, r).
    fn should_audit(&self, uid: u32, r: Refusal) -> Option<u64> {
        let now = Instant::now();
        let mut q = self.quiet.lock();
        if q.len() > 4096 {
            q.retain(|_, v| now.duration_since(v.last) < AUDIT_EVERY);
        }
        match q.get_mut(&(uid, r)) {
            Some(v) if now.duration_since(v.last) < AUDIT_EVERY => {
                v.suppressed += 1;
                None
            }
            Some(v) => {
                let n = v.suppressed;
                *v = Quiet {
                    last: now,
                    suppressed: 0,
                };
                Some(n)
            }
            None => {
                q.insert(
                    (uid, r),
                    Quiet {
                        last: now,
                        suppressed: 0,
                    },
                );
                Some(0)
            }
        }
    }
}

/// A server preface (empty SETTINGS) and a GOAWAY carrying `why`: INADEQUATE_SECURITY for a uid
/// no rule admits, ENHANCE_YOUR_CALM for a cap.
fn goaway(r: Refusal, why: &[u8]) -> Vec<u8> {
    let code: u32 = match r {
        Refusal::NotAdmitted => 0xc,
        Refusal::Global | Refusal::PerUid => 0xb,
    };
    let why = &why[..why.len().min(1024)];
    let mut out = vec![0, 0, 0, 0x4, 0, 0, 0, 0, 0];
    let len = (8 + why.len()) as u32;
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.extend_from_slice(&[0x7, 0, 0, 0, 0, 0]);
    out.extend_from_slice(&0u32.to_be_bytes());
    out.extend_from_slice(&code.to_be_bytes());
    out.extend_from_slice(why);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn goaway_frames() {
        let b = goaway(Refusal::PerUid, b"why");
        assert_eq!(
            &b[..9],
            &[0, 0, 0, 4, 0, 0, 0, 0, 0],
            "empty SETTINGS first"
        );
        assert_eq!(&b[9..15], &[0, 0, 11, 7, 0, 0], "GOAWAY of 8 + 3 bytes");
        assert_eq!(&b[18..26], &[0, 0, 0, 0, 0, 0, 0, 0xb]);
        assert_eq!(&b[26..], b"why");
    }
}
