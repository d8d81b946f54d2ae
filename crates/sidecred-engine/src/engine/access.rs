//! Access decisions and the audit lines that go with them. Every audit line sidecred writes is
//! written by the engine: the policy decisions here, grants and revocations in their
//! components, and refusals that transports report through [`Engine::record_request`].

use super::catalog::LookupError;
use super::{Catalog, Engine};
use crate::audit::AuditEvent;
use crate::backend::SecretSpec;
use crate::error::{validate_id, validate_name, ApiError, IdError};
use crate::policy::{Action, Rule};
use crate::session::Owner;
use sidecred_core::identity::PeerIdentity;

/// A transport's or endpoint's own line about a request: a refusal before any handler ran (a
/// bad path, a refused connection, a failed token check) or an HTTP endpoint's per-request
/// summary. Nothing in it may be a secret value.
#[derive(Clone, Copy, Debug, Default)]
pub struct RequestLine<'a> {
    pub event: &'a str,
    pub outcome: &'a str,
    pub session: Option<&'a str>,
    pub secret: Option<&'a str>,
    /// The secret's version(s), where the line reports what was handed on (the proxy).
    pub version: Option<&'a str>,
    pub lease: Option<&'a str>,
    /// The policy or injection rule the request matched.
    pub rule: Option<&'a str>,
    pub detail: &'a str,
}

/// The identity a session is bound to: uid and the first rule admitting the caller, plus the
/// very process (exe and start time) when that rule names an executable.
pub fn owner_of(caller: &PeerIdentity, principal: &Rule) -> Owner {
    Owner {
        uid: caller.uid,
        rule: principal.name.clone(),
        process: if principal.binds_exe() {
            caller
                .exe
                .clone()
                .map(|e| (e, caller.pid, caller.start_time.unwrap_or(0)))
        } else {
            None
        },
    }
}

fn opt(s: &str) -> Option<&str> {
    (!s.is_empty()).then_some(s)
}

/// Why a caller may not do what it asked: a malformed name or id, an unknown secret, or a
/// policy denial (already audited).
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error("name: {0}")]
    InvalidName(String),
    #[error(transparent)]
    InvalidId(#[from] IdError),
    #[error(transparent)]
    Lookup(#[from] LookupError),
    /// The policy's reason.
    #[error("{0}")]
    Denied(String),
}

impl From<AccessError> for ApiError {
    fn from(e: AccessError) -> Self {
        match e {
            e @ AccessError::InvalidName(_) => ApiError::InvalidArgument(e.to_string()),
            AccessError::InvalidId(e) => e.into(),
            AccessError::Lookup(e) => e.into(),
            AccessError::Denied(why) => ApiError::Denied(why),
        }
    }
}

impl Engine {
    /// Audits and returns a policy denial.
    async fn deny(
        &self,
        caller: &PeerIdentity,
        event: &str,
        session: &str,
        secret: &str,
        why: String,
    ) -> AccessError {
        let mut ev = AuditEvent::new(event, "denied").caller(caller);
        ev.session = opt(session);
        ev.secret = opt(secret);
        ev.detail = Some(&why);
        let _ = self.audit.record(ev).await;
        tracing::info!(caller = %caller, secret, reason = %why, "denied");
        AccessError::Denied(why)
    }

    /// Checks that some workload rule admits the caller at all (every Broker call passes this);
    /// returns the identity its sessions are bound to.
    pub async fn admit(
        &self,
        cat: &Catalog,
        caller: &PeerIdentity,
        event: &str,
        session: &str,
    ) -> Result<Owner, AccessError> {
        match cat.config.workload_policy.caller_rule(caller) {
            Ok(rule) => Ok(owner_of(caller, rule)),
            Err(why) => Err(self.deny(caller, event, session, "", why).await),
        }
    }

    /// Checks the caller may read `name`; returns its session identity, the granting rule (its
    /// SPIFFE ID and allowed SANs matter to certificate issuers) and the secret's spec.
    pub async fn authorize<'c>(
        &self,
        cat: &'c Catalog,
        caller: &PeerIdentity,
        event: &str,
        session: &str,
        name: &str,
    ) -> Result<(Owner, &'c Rule, &'c SecretSpec), AccessError> {
        validate_name(name).map_err(AccessError::InvalidName)?;
        validate_id("session_id", session)?;
        let owner = self.admit(cat, caller, event, session).await?;
        let spec = cat.secret(name)?;
        match cat.config.workload_policy.check_secret(caller, spec) {
            Ok(rule) => Ok((owner, rule, spec)),
            Err(why) => Err(self.deny(caller, event, session, name, why).await),
        }
    }

    /// Checks an Admin call against the admin policy.
    pub async fn allow_admin(
        &self,
        caller: &PeerIdentity,
        action: Action,
        secret: Option<&str>,
    ) -> Result<(), AccessError> {
        let cat = self.catalog();
        match cat.config.admin_policy.check_action(caller, action, secret) {
            Ok(_) => Ok(()),
            Err(why) => Err(self
                .deny(caller, "admin", "", secret.unwrap_or(""), why)
                .await),
        }
    }

    /// The rule that gives the caller its SPIFFE identity, for the SPIFFE Workload API.
    pub async fn spiffe_rule<'c>(
        &self,
        cat: &'c Catalog,
        caller: &PeerIdentity,
        event: &str,
        trust_domain_id: &str,
        trust_domain: &str,
    ) -> Result<&'c Rule, AccessError> {
        let rule = cat
            .config
            .workload_policy
            .spiffe_rule(caller)
            .and_then(|r| {
                let id = r.spiffe_id.as_deref().unwrap_or_default();
                match id.strip_prefix(trust_domain_id) {
                    Some(rest) if rest.starts_with('/') => Ok(r),
                    _ => Err(format!(
                        "rule `{}` assigns `{id}`, outside trust domain `{trust_domain}`",
                        r.name
                    )),
                }
            });
        match rule {
            Ok(r) => Ok(r),
            Err(why) => Err(self.deny(caller, event, "", "", why).await),
        }
    }

    /// Audits a transport's line about a request. Best effort even when the log is
    /// fail-closed: what such a line reports was refused, or was already audited (and made to
    /// wait for the log) by the handler that granted it.
    pub async fn record_request(&self, caller: &PeerIdentity, r: RequestLine<'_>) {
        let mut ev = AuditEvent::new(r.event, r.outcome).caller(caller);
        ev.session = r.session;
        ev.secret = r.secret;
        ev.version = r.version;
        ev.lease = r.lease;
        ev.rule = r.rule;
        ev.detail = Some(r.detail);
        let _ = self.audit.record(ev).await;
    }

    /// Whether audit lines are written at all (callers skip building costly details when not).
    pub fn audit_enabled(&self) -> bool {
        self.audit.enabled()
    }
}
