//! How sidecred itself authenticates to OpenBao (token file, AppRole, JWT), and the keeper task
//! that renews its token ahead of expiry, logs in again when renewal fails, and picks up a
//! rewritten token file.

use super::client::{from_vaultrs, Bao};
use super::Inner;
use crate::{BackendError, SetupError};
use serde::Deserialize;
use sidecred_core::fileperm::FileModeError;
use sidecred_secret::SecretText;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};
use zeroize::Zeroize;

#[derive(Clone, Debug, Deserialize)]
#[serde(tag = "method", rename_all = "snake_case", deny_unknown_fields)]
pub enum AuthConfig {
    /// A token in a file (written by an init container or an agent); re-read when it changes.
    TokenFile { path: PathBuf },
    /// AppRole: the role id inline, the secret id in a file.
    Approle {
        role_id: String,
        secret_id_file: PathBuf,
        #[serde(default = "approle_mount")]
        mount: String,
    },
    /// JWT auth, e.g. a Kubernetes projected service-account token, re-read at every login.
    Jwt {
        role: String,
        jwt_file: PathBuf,
        #[serde(default = "jwt_mount")]
        mount: String,
    },
}

fn approle_mount() -> String {
    "approle".into()
}
fn jwt_mount() -> String {
    "jwt".into()
}

impl AuthConfig {
    pub fn method(&self) -> &'static str {
        match self {
            AuthConfig::TokenFile { .. } => "token_file",
            AuthConfig::Approle { .. } => "approle",
            AuthConfig::Jwt { .. } => "jwt",
        }
    }

    /// Whether a new token can be obtained without outside help.
    fn can_login(&self) -> bool {
        !matches!(self, AuthConfig::TokenFile { .. })
    }

    pub fn validate(&self) -> Result<(), SetupError> {
        let (setting, file) = match self {
            AuthConfig::TokenFile { path } => ("auth.path", path),
            AuthConfig::Approle {
                secret_id_file,
                role_id,
                ..
            } => {
                if role_id.is_empty() {
                    return Err(SetupError::setting("auth.role_id", "must not be empty"));
                }
                ("auth.secret_id_file", secret_id_file)
            }
            AuthConfig::Jwt { jwt_file, .. } => ("auth.jwt_file", jwt_file),
        };
        if !file.is_absolute() {
            return Err(SetupError::setting(
                setting,
                format!("`{}` must be an absolute path", file.display()),
            ));
        }
        // Checked here when the file is already there, so check-config and start refuse it;
        // every later read checks again.
        if file.exists() {
            self.check_file_mode(file)?;
        }
        Ok(())
    }

    /// The same owner-only rule as the CA key file.
    fn check_file_mode(&self, file: &Path) -> Result<(), FileModeError> {
        let setting = match self {
            AuthConfig::TokenFile { .. } => "auth.path",
            AuthConfig::Approle { .. } => "auth.secret_id_file",
            AuthConfig::Jwt { .. } => "auth.jwt_file",
        };
        sidecred_core::fileperm::check_private(file, setting, "a credential")
    }
}

/// sidecred's own token and what OpenBao said about it.
pub struct OwnToken {
    pub token: SecretText,
    pub accessor: String,
    /// Zero when the token does not expire.
    pub ttl: Duration,
    /// The ttl granted at login, to notice when renewals hit the max ttl.
    pub initial_ttl: Duration,
    pub renewable: bool,
    pub obtained: Instant,
}

/// Reads a small credential file, trimmed, into a secret.
fn read_secret_file(path: &Path, method: &str) -> Result<SecretText, BackendError> {
    sidecred_core::fileperm::check_private(path, &format!("auth ({method})"), "a credential")
        .map_err(|e| BackendError::Invalid(e.to_string()))?;
    let mut raw = std::fs::read_to_string(path).map_err(|e| {
        BackendError::Invalid(format!(
            "auth ({method}): cannot read `{}`: {}",
            path.display(),
            e.kind()
        ))
    })?;
    let out = SecretText::new(raw.trim().to_string());
    raw.zeroize();
    if out.expose().is_empty() {
        return Err(BackendError::Invalid(format!(
            "auth ({method}): `{}` is empty",
            path.display()
        )));
    }
    Ok(out)
}

fn failed(method: &str, e: BackendError) -> BackendError {
    let add = |m: String| format!("{method} login failed: {m}");
    match e {
        BackendError::Unavailable(m) => BackendError::Unavailable(add(m)),
        BackendError::Internal(m) => BackendError::Internal(add(m)),
        BackendError::Denied(m) | BackendError::Invalid(m) | BackendError::NotFound(m) => {
            BackendError::Denied(add(m))
        }
        other => other,
    }
}

/// Obtains a token by the configured method.
pub async fn login(bao: &Bao, cfg: &AuthConfig) -> Result<OwnToken, BackendError> {
    let method = cfg.method();
    let info = match cfg {
        AuthConfig::TokenFile { path } => {
            let token = read_secret_file(path, method)?;
            return describe(bao, token).await.map_err(|e| failed(method, e));
        }
        AuthConfig::Approle {
            role_id,
            secret_id_file,
            mount,
        } => {
            let secret_id = read_secret_file(secret_id_file, method)?;
            let c = bao.vault("", None);
            vaultrs::auth::approle::login(&c.0, mount, role_id, secret_id.expose())
                .await
                .map_err(|e| failed(method, from_vaultrs(&format!("auth/{mount}/login"), e)))?
        }
        AuthConfig::Jwt {
            role,
            jwt_file,
            mount,
        } => {
            let jwt = read_secret_file(jwt_file, method)?;
            let c = bao.vault("", None);
            vaultrs::auth::oidc::login(&c.0, mount, jwt.expose(), Some(role.clone()))
                .await
                .map_err(|e| failed(method, from_vaultrs(&format!("auth/{mount}/login"), e)))?
        }
    };
    let ttl = Duration::from_secs(info.lease_duration);
    Ok(OwnToken {
        token: SecretText::new(info.client_token),
        accessor: info.accessor,
        ttl,
        initial_ttl: ttl,
        renewable: info.renewable,
        obtained: Instant::now(),
    })
}

/// Looks a given token up to learn its ttl. An unreachable server is not fatal here: the
/// token is used as is and described again later.
async fn describe(bao: &Bao, token: SecretText) -> Result<OwnToken, BackendError> {
    let c = bao.vault(token.expose(), None);
    match vaultrs::token::lookup_self(&c.0).await {
        Ok(mut r) => {
            r.id.zeroize();
            let ttl = Duration::from_secs(r.ttl);
            Ok(OwnToken {
                accessor: std::mem::take(&mut r.accessor),
                token,
                ttl,
                initial_ttl: Duration::from_secs(r.creation_ttl.max(r.ttl)),
                renewable: r.renewable.unwrap_or(false),
                obtained: Instant::now(),
            })
        }
        Err(e) => match from_vaultrs("auth/token/lookup-self", e) {
            BackendError::Unavailable(m) => {
                tracing::warn!(error = %m, "cannot look up the token yet; using it as is");
                Ok(OwnToken {
                    token,
                    accessor: String::new(),
                    ttl: Duration::ZERO,
                    initial_ttl: Duration::ZERO,
                    renewable: false,
                    obtained: Instant::now(),
                })
            }
            other => Err(other),
        },
    }
}

/// What the keeper does next.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    Wait(Duration),
    Renew,
    Login,
}

/// How often the keeper wakes at most; bounds how late a rewritten token file is noticed.
pub const POLL: Duration = Duration::from_secs(1);

/// Renew at about two thirds of the token's life (less up to 10% jitter, `r` in [0,1)); log in
/// again instead when renewal is impossible or renewals have shrunk below a third of the grant.
pub fn next_step(
    age: Duration,
    ttl: Duration,
    initial: Duration,
    renewable: bool,
    can_login: bool,
    r: f64,
) -> Next {
    if ttl.is_zero() {
        return Next::Wait(POLL);
    }
    let due = ttl.mul_f64((0.66 - 0.1 * r).clamp(0.1, 0.95));
    if age < due {
        return Next::Wait((due - age).min(POLL));
    }
    let capped = !initial.is_zero() && ttl < initial / 3;
    match (renewable && !(capped && can_login), can_login) {
        (true, _) => Next::Renew,
        (false, true) => Next::Login,
        (false, false) => Next::Wait(POLL),
    }
}

/// Runs until the backend is dropped (the weak reference dies) or aborted.
pub async fn keeper(weak: Weak<Inner>) {
    let mut backoff = POLL;
    loop {
        let Some(inner) = weak.upgrade() else { return };
        let wait = step(&inner, &mut backoff).await;
        drop(inner);
        tokio::time::sleep(wait).await;
    }
}

async fn step(inner: &Arc<Inner>, backoff: &mut Duration) -> Duration {
    let cfg = &inner.auth;
    if let AuthConfig::TokenFile { path } = cfg {
        if let Ok(t) = read_secret_file(path, "token_file") {
            let same = sidecred_secret::SecretBytes::new(t.expose().as_bytes().to_vec())
                .ct_eq(inner.token().token.expose().as_bytes());
            if !same {
                match describe(&inner.bao, t).await {
                    Ok(tok) => {
                        tracing::info!(backend = %inner.name, accessor = %tok.accessor, "token file changed; using the new token");
                        inner.set_token(tok);
                    }
                    Err(e) => {
                        tracing::warn!(backend = %inner.name, error = %e, "token file changed but OpenBao rejects the new token; keeping the old one")
                    }
                }
            }
        }
    }
    let tok = inner.token();
    if tok.token.expose().is_empty() {
        return relogin(inner, backoff).await;
    }
    let r: f64 = rand::random();
    let next = next_step(
        tok.obtained.elapsed(),
        tok.ttl,
        tok.initial_ttl,
        tok.renewable,
        cfg.can_login(),
        r,
    );
    match next {
        Next::Wait(d) => d,
        Next::Renew => {
            let c = inner.bao.vault(tok.token.expose(), None);
            match vaultrs::token::renew_self(&c.0, None).await {
                Ok(mut info) => {
                    info.client_token.zeroize();
                    let ttl = Duration::from_secs(info.lease_duration);
                    tracing::debug!(backend = %inner.name, ttl = ttl.as_secs(), "own token renewed");
                    inner.set_token(OwnToken {
                        token: tok.token.clone(),
                        accessor: tok.accessor.clone(),
                        ttl,
                        initial_ttl: tok.initial_ttl,
                        renewable: info.renewable,
                        obtained: Instant::now(),
                    });
                    Duration::ZERO
                }
                Err(e) => {
                    let e = from_vaultrs("auth/token/renew-self", e);
                    tracing::warn!(backend = %inner.name, error = %e, "own token renewal failed; logging in again");
                    relogin(inner, backoff).await
                }
            }
        }
        Next::Login => relogin(inner, backoff).await,
    }
}

async fn relogin(inner: &Arc<Inner>, backoff: &mut Duration) -> Duration {
    if !inner.auth.can_login() {
        return POLL;
    }
    match login(&inner.bao, &inner.auth).await {
        Ok(tok) => {
            tracing::info!(backend = %inner.name, method = inner.auth.method(), accessor = %tok.accessor, ttl = tok.ttl.as_secs(), "logged in to OpenBao");
            inner.set_token(tok);
            *backoff = POLL;
            Duration::ZERO
        }
        Err(e) => {
            tracing::warn!(backend = %inner.name, method = inner.auth.method(), error = %e, "OpenBao login failed; retrying");
            let d = *backoff;
            *backoff = (*backoff * 2).min(Duration::from_secs(30));
            d
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_step_table() {
        let s = Duration::from_secs;
        let cases = [
            // age, ttl, initial, renewable, can_login, r, want
            (s(0), s(0), s(0), false, false, 0.0, Next::Wait(POLL)),
            (s(10), s(60), s(60), true, true, 0.0, Next::Wait(POLL)),
            (
                s(39),
                s(60),
                s(60),
                true,
                true,
                0.0,
                Next::Wait(Duration::from_millis(600)),
            ),
            (s(40), s(60), s(60), true, true, 0.0, Next::Renew),
            (s(34), s(60), s(60), true, true, 0.999, Next::Renew),
            (s(40), s(60), s(60), false, true, 0.0, Next::Login),
            (s(40), s(60), s(60), false, false, 0.0, Next::Wait(POLL)),
            // Renewals capped near the max ttl: log in again rather than renew a sliver.
            (s(10), s(15), s(60), true, true, 0.0, Next::Login),
            (s(10), s(15), s(60), true, false, 0.0, Next::Renew),
        ];
        for (age, ttl, init, ren, login, r, want) in cases {
            assert_eq!(
                next_step(age, ttl, init, ren, login, r),
                want,
                "{age:?} {ttl:?} {init:?} {ren} {login} {r}"
            );
        }
    }
}
