//! Proxy credentials: a session opened through the proxy gets a token, HMAC-SHA256 of its id
//! under a key drawn at start (so it is never the session id, cannot be derived from it, and
//! dies with the process). A request is accepted only with a known token whose session is
//! neither revoked nor expired, from a connection whose caller has the session owner's uid.
//!
//! Each session carries a revocation signal: connections bound to it (keep-alive, CONNECT
//! tunnels) wait on it and close the moment the engine reports the revocation.

use base64::Engine as _;
use parking_lot::RwLock;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;
use tokio::sync::watch;

pub const PREFIX: &str = "sct_";

/// One session as the proxy knows it.
pub struct Entry {
    pub session: Arc<str>,
    pub uid: u32,
    pub expires_at: SystemTime,
    revoked: watch::Sender<Option<Arc<str>>>,
}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entry")
            .field("uid", &self.uid)
            .finish_non_exhaustive()
    }
}

impl Entry {
    /// Why the session was revoked, if it was.
    pub fn revoked(&self) -> Option<Arc<str>> {
        self.revoked.borrow().clone()
    }

    /// Resolves once the session is revoked (or at once if it already is).
    pub fn on_revoke(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.revoked.subscribe();
        async move {
            let _ = rx.wait_for(|r| r.is_some()).await;
        }
    }
}

/// Why a request's credential is refused; `status` is 407 or 403.
#[derive(Debug, PartialEq, Eq)]
pub struct Refused {
    pub status: u16,
    pub why: String,
}

fn refused(status: u16, why: impl Into<String>) -> Refused {
    Refused {
        status,
        why: why.into(),
    }
}

pub struct Tokens {
    key: aws_lc_rs::hmac::Key,
    by_token: RwLock<HashMap<String, Arc<Entry>>>,
    by_session: RwLock<HashMap<Arc<str>, Arc<Entry>>>,
}

impl Default for Tokens {
    fn default() -> Self {
        let key: [u8; 32] = rand::random();
        Self {
            key: aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &key),
            by_token: RwLock::default(),
            by_session: RwLock::default(),
        }
    }
}

impl Tokens {
    /// The token of a session id.
    pub fn token_of(&self, session: &str) -> String {
        let tag = aws_lc_rs::hmac::sign(&self.key, session.as_bytes());
        format!(
            "{PREFIX}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(tag.as_ref())
        )
    }

    /// Records a session opened through the proxy; returns its token.
    pub fn insert(&self, session: &str, uid: u32, expires_at: SystemTime) -> String {
        let token = self.token_of(session);
        let entry = Arc::new(Entry {
            session: session.into(),
            uid,
            expires_at,
            revoked: watch::channel(None).0,
        });
        let mut t = self.by_token.write();
        if t.len() >= 4096 {
            let now = SystemTime::now();
            t.retain(|_, e| e.expires_at > now);
            self.by_session.write().retain(|_, e| e.expires_at > now);
        }
        t.insert(token.clone(), entry.clone());
        self.by_session.write().insert(entry.session.clone(), entry);
        token
    }

    /// Marks a session revoked and wakes every connection bound to it.
    pub fn revoke(&self, session: &str, why: &str) {
        if let Some(e) = self.by_session.read().get(session) {
            e.revoked.send_replace(Some(why.into()));
        }
    }

    /// Revokes every session (the revocation feed was lost: fail closed).
    pub fn revoke_all(&self, why: &str) {
        for e in self.by_session.read().values() {
            e.revoked.send_replace(Some(why.into()));
        }
    }

    /// Checks a `Proxy-Authorization` value for a caller of `uid` at `now`.
    pub fn check(
        &self,
        header: Option<&http::HeaderValue>,
        uid: u32,
        now: SystemTime,
    ) -> Result<Arc<Entry>, Refused> {
        let Some(h) = header else {
            return Err(refused(
                407,
                "proxy authentication required: send Proxy-Authorization with the token from \
                 POST /sidecred/v1/session (e.g. HTTPS_PROXY=http://sidecred:TOKEN@host:port)",
            ));
        };
        let token = parse(h.as_bytes()).ok_or_else(|| {
            refused(
                407,
                "malformed Proxy-Authorization: expected Basic (token as user or password) or Bearer",
            )
        })?;
        let entry = self
            .by_token
            .read()
            .get(&token)
            .cloned()
            .ok_or_else(|| refused(407, "unknown proxy token"))?;
        if entry.uid != uid {
            return Err(refused(
                403,
                format!(
                    "this proxy token belongs to another caller (uid {uid} is not the session owner)"
                ),
            ));
        }
        if let Some(why) = entry.revoked() {
            return Err(refused(403, format!("session revoked: {why}")));
        }
        if now >= entry.expires_at {
            return Err(refused(403, "session expired; open a new one"));
        }
        Ok(entry)
    }
}

/// The token in a `Proxy-Authorization` value: `Bearer T`, or `Basic` of `user:T` / `T:pass`.
fn parse(v: &[u8]) -> Option<String> {
    let s = std::str::from_utf8(v).ok()?.trim();
    let (scheme, rest) = s.split_once(' ')?;
    let rest = rest.trim();
    let tok = if scheme.eq_ignore_ascii_case("bearer") {
        rest.to_string()
    } else if scheme.eq_ignore_ascii_case("basic") {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(rest)
            .ok()?;
        let text = String::from_utf8(raw).ok()?;
        let (u, p) = text.split_once(':')?;
        if p.starts_with(PREFIX) {
            p.to_string()
        } else {
            u.to_string()
        }
    } else {
        return None;
    };
    (tok.starts_with(PREFIX) && tok.len() < 128).then_some(tok)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn hv(s: &str) -> http::HeaderValue {
        http::HeaderValue::from_str(s).unwrap()
    }

    #[test]
    fn tokens_table() {
        let t = Tokens::default();
        let now = SystemTime::now();
        let tok = t.insert("ses_1", 1000, now + Duration::from_secs(60));
        assert_ne!(tok, "ses_1");
        assert!(!tok.contains("ses_1"));
        assert_eq!(tok, t.token_of("ses_1"));
        assert_ne!(Tokens::default().token_of("ses_1"), tok, "per-process key");
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("sidecred:{tok}"));
        assert!(t
            .check(Some(&hv(&format!("Basic {basic}"))), 1000, now)
            .is_ok());
        assert!(t
            .check(Some(&hv(&format!("Bearer {tok}"))), 1000, now)
            .is_ok());
        assert_eq!(t.check(None, 1000, now).unwrap_err().status, 407);
        assert_eq!(
            t.check(Some(&hv("Bearer sct_nope")), 1000, now)
                .unwrap_err()
                .status,
            407
        );
        assert_eq!(
            t.check(Some(&hv("Digest x")), 1000, now)
                .unwrap_err()
                .status,
            407
        );
        assert_eq!(
            t.check(Some(&hv(&format!("Bearer {tok}"))), 65534, now)
                .unwrap_err()
                .status,
            403
        );
        let later = now + Duration::from_secs(61);
        assert_eq!(
            t.check(Some(&hv(&format!("Bearer {tok}"))), 1000, later)
                .unwrap_err()
                .status,
            403
        );
        t.revoke("ses_1", "test");
        let e = t
            .check(Some(&hv(&format!("Bearer {tok}"))), 1000, now)
            .unwrap_err();
        assert_eq!((e.status, e.why.as_str()), (403, "session revoked: test"));
    }
}
