//! Session and call guards, the values they hand out, and the watch stream.
//! A guard's Drop cannot await: it spawns the close/release on the current runtime, best
//! effort. Call `close()` / `release()` to await the outcome and see errors.

use super::{Client, ClientError};
use parking_lot::Mutex;
use sidecred_proto::v1 as pb;
use sidecred_secret::SecretBytes;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

/// One credential and its lease. Debug shows names, versions and ids, never the value.
#[derive(Debug)]
#[non_exhaustive]
pub struct Secret {
    pub name: String,
    pub value: SecretBytes,
    pub version: String,
    pub lease_id: String,
    /// Unix seconds when the lease ends.
    pub expires_at: i64,
    pub zone: String,
    /// The previous version, only while a rotation grace window is open.
    pub previous: Option<PreviousVersion>,
    /// Served from cache past its lifetime because the backend failed.
    pub stale: bool,
}

#[derive(Debug)]
#[non_exhaustive]
pub struct PreviousVersion {
    pub version: String,
    pub value: SecretBytes,
    /// Unix seconds when this version stops being valid.
    pub retires_at: i64,
}

impl Secret {
    /// Moves the decoded buffers into zeroizing storage without copying them.
    fn from_pb(mut r: pb::GetSecretResponse) -> Self {
        let previous = r.previous.take().map(|mut p| PreviousVersion {
            version: std::mem::take(&mut p.version),
            value: SecretBytes::new(std::mem::take(&mut p.value)),
            retires_at: r.previous_retires_at,
        });
        Self {
            value: SecretBytes::new(std::mem::take(&mut r.value)),
            name: std::mem::take(&mut r.name),
            version: std::mem::take(&mut r.version),
            lease_id: std::mem::take(&mut r.lease_id),
            expires_at: r.expires_at,
            zone: std::mem::take(&mut r.zone),
            previous,
            stale: r.stale,
        }
    }
}

pub(super) struct SessionInner {
    client: Client,
    id: String,
    expires_at: i64,
}

impl SessionInner {
    async fn get(&self, name: &str, call_id: &str) -> Result<Secret, ClientError> {
        let msg = pb::GetSecretRequest {
            name: name.to_string(),
            session_id: self.id.clone(),
            call_id: call_id.to_string(),
            version: String::new(),
        };
        let r = self
            .client
            .unary(|mut b, req| async move { b.get_secret(req).await }, &msg)
            .await?;
        Ok(Secret::from_pb(r))
    }

    async fn release(&self, lease_id: &str) -> Result<(), ClientError> {
        let msg = pb::ReleaseLeaseRequest {
            lease_id: lease_id.to_string(),
            session_id: self.id.clone(),
        };
        match self
            .client
            .unary(|mut b, req| async move { b.release_lease(req).await }, &msg)
            .await
        {
            // Already gone: expired, or ended with its revoked/expired session.
            Ok(_) | Err(ClientError::NotFound(_)) => Ok(()),
            Err(e) if e.is_session_gone() => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn close(&self) -> Result<u32, ClientError> {
        let msg = pb::CloseSessionRequest {
            session_id: self.id.clone(),
        };
        self.client
            .unary(|mut b, req| async move { b.close_session(req).await }, &msg)
            .await
            .map(|r| r.leases_released)
    }
}

/// An agent session. Closing it (explicitly, or by dropping the guard) ends all its leases.
pub struct Session {
    inner: Arc<SessionInner>,
    open: bool,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("id", &self.inner.id)
            .field("open", &self.open)
            .finish()
    }
}

impl Session {
    pub(super) fn new(client: Client, id: String, expires_at: i64) -> Self {
        Self {
            inner: Arc::new(SessionInner {
                client,
                id,
                expires_at,
            }),
            open: true,
        }
    }

    pub fn id(&self) -> &str {
        &self.inner.id
    }

    /// Unix seconds when the session expires.
    pub fn expires_at(&self) -> i64 {
        self.inner.expires_at
    }

    /// A credential leased to this session (ends when the session does).
    pub async fn get_secret(&self, name: &str) -> Result<Secret, ClientError> {
        self.inner.get(name, "").await
    }

    /// A tool call inside this session: its leases end when the call guard is released.
    pub fn call(&self, call_id: impl Into<String>) -> Call {
        Call {
            session: self.inner.clone(),
            call_id: call_id.into(),
            leases: Mutex::new(Vec::new()),
        }
    }

    /// Version changes of one secret: the current version first, then every step.
    pub async fn watch(&self, name: &str) -> Result<Watch, ClientError> {
        let msg = pb::WatchSecretRequest {
            name: name.to_string(),
            session_id: self.inner.id.clone(),
        };
        let stream = self.inner.client.unary_stream(msg).await?;
        Ok(Watch { stream })
    }

    /// Closes the session now; returns how many leases ended with it.
    pub async fn close(mut self) -> Result<u32, ClientError> {
        self.open = false;
        self.inner.close().await
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if !self.open {
            return;
        }
        let inner = self.inner.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(h) => {
                h.spawn(async move {
                    if let Err(e) = inner.close().await {
                        tracing::debug!(session = %inner.id, error = %e, "closing dropped session failed");
                    }
                });
            }
            Err(_) => {
                tracing::warn!(session = %self.inner.id, "session dropped outside a tokio runtime; it stays open until its ttl")
            }
        }
    }
}

/// One tool call. Every credential fetched through it is released when it ends.
pub struct Call {
    session: Arc<SessionInner>,
    call_id: String,
    /// Never held across an await.
    leases: Mutex<Vec<String>>,
}

impl std::fmt::Debug for Call {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Call")
            .field("session", &self.session.id)
            .field("call_id", &self.call_id)
            .finish()
    }
}

impl Call {
    pub fn id(&self) -> &str {
        &self.call_id
    }

    /// A credential leased to this call.
    pub async fn get_secret(&self, name: &str) -> Result<Secret, ClientError> {
        let s = self.session.get(name, &self.call_id).await?;
        self.leases.lock().push(s.lease_id.clone());
        Ok(s)
    }

    /// Releases every lease of this call; returns how many were released.
    /// Leases already gone (expired, or ended with a revoked session) count as released.
    pub async fn release(self) -> Result<usize, ClientError> {
        let leases = self.take();
        release_all(&self.session, &leases).await
    }

    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.leases.lock())
    }
}

async fn release_all(s: &SessionInner, leases: &[String]) -> Result<usize, ClientError> {
    let mut first_err = None;
    for id in leases {
        if let Err(e) = s.release(id).await {
            first_err.get_or_insert(e);
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(leases.len()),
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        let leases = self.take();
        if leases.is_empty() {
            return;
        }
        let session = self.session.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(h) => {
                h.spawn(async move {
                    if let Err(e) = release_all(&session, &leases).await {
                        tracing::debug!(session = %session.id, error = %e, "releasing dropped call failed");
                    }
                });
            }
            Err(_) => {
                tracing::warn!(call = %self.call_id, "call dropped outside a tokio runtime; its leases end at their ttl")
            }
        }
    }
}

/// What a watch reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum EventKind {
    /// The version current when the watch started.
    Current,
    /// A new version became current; the previous one is in its grace window.
    Rotated,
    /// The previous version left its grace window.
    Retired,
    /// The backend changed the secret outside sidecred.
    Changed,
    Unknown(i32),
}

#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SecretEvent {
    pub name: String,
    pub kind: EventKind,
    pub version: String,
    pub previous_version: String,
    /// Unix seconds (Rotated only; 0 otherwise).
    pub previous_retires_at: i64,
    pub at: i64,
}

impl From<pb::SecretEvent> for SecretEvent {
    fn from(e: pb::SecretEvent) -> Self {
        use pb::secret_event::Kind;
        let kind = match Kind::try_from(e.kind) {
            Ok(Kind::Current) => EventKind::Current,
            Ok(Kind::Rotated) => EventKind::Rotated,
            Ok(Kind::Retired) => EventKind::Retired,
            Ok(Kind::Changed) => EventKind::Changed,
            _ => EventKind::Unknown(e.kind),
        };
        Self {
            name: e.name,
            kind,
            version: e.version,
            previous_version: e.previous_version,
            previous_retires_at: e.previous_retires_at,
            at: e.at,
        }
    }
}

/// A stream of [`SecretEvent`]s. It ends with `SessionRevoked`/`SessionExpired` when the
/// session does; it is not resumed on its own after a disconnect (call `watch` again).
pub struct Watch {
    stream: tonic::Streaming<pb::SecretEvent>,
}

impl Watch {
    /// The next event; None when the server ended the stream.
    pub async fn next(&mut self) -> Option<Result<SecretEvent, ClientError>> {
        match self.stream.message().await {
            Ok(Some(e)) => Some(Ok(e.into())),
            Ok(None) => None,
            Err(s) => Some(Err(ClientError::from_status(&s))),
        }
    }
}

impl futures::Stream for Watch {
    type Item = Result<SecretEvent, ClientError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.stream)
            .poll_next(cx)
            .map(|o| o.map(|r| r.map(Into::into).map_err(|s| ClientError::from_status(&s))))
    }
}
