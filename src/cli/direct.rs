//! `sidecred revoke-session --openbao ADDRESS`: revokes a session fleet-wide by talking to
//! OpenBao directly, for a security team with no sidecar at hand. It writes the tombstone and
//! the revocation-log entry every sidecar polls, and revokes the session's token by the accessor
//! its sidecar recorded. Idempotent: run it again until nothing is pending.

use crate::backend::openbao::fleet::BaoStore;
use crate::fleet::{self, Tombstone};
use crate::secret::SecretText;
use serde_json::json;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

#[derive(clap::Args, Debug, Clone)]
pub struct Direct {
    /// Revoke through OpenBao at this address (http:// or https://), with no sidecar.
    #[arg(long, value_name = "ADDRESS")]
    pub openbao: Option<String>,
    /// PEM bundle of CAs for OpenBao's certificate.
    #[arg(long)]
    ca_file: Option<PathBuf>,
    /// A file holding the OpenBao token (else BAO_TOKEN or VAULT_TOKEN, else --token).
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// The OpenBao token (visible to other users in the process list: prefer the env or a file).
    #[arg(long)]
    token: Option<String>,
    /// KV v2 mount of the fleet records (the sidecars' `fleet.mount`).
    #[arg(long, default_value = "secret")]
    mount: String,
    /// Prefix of the fleet records (the sidecars' `fleet.prefix`).
    #[arg(long, default_value = "sidecred/fleet")]
    prefix: String,
}

fn token(d: &Direct) -> Result<SecretText, String> {
    if let Some(p) = &d.token_file {
        let t =
            std::fs::read_to_string(p).map_err(|e| format!("token file {}: {e}", p.display()))?;
        return Ok(SecretText::new(t.trim().to_string()));
    }
    for var in ["BAO_TOKEN", "VAULT_TOKEN"] {
        if let Ok(t) = std::env::var(var) {
            if !t.is_empty() {
                return Ok(SecretText::new(t));
            }
        }
    }
    match &d.token {
        Some(t) => Ok(SecretText::new(t.clone())),
        None => Err("no OpenBao token: set BAO_TOKEN, --token-file or --token".into()),
    }
}

fn origin() -> String {
    let who = std::env::var("USER")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| format!("uid{}", nix::unistd::getuid()));
    format!("cli:{who}")
}

/// Returns the exit code (0 done, 5 something pending, 2 usage) and a message.
pub async fn revoke(d: &Direct, session: &str, reason: &str, json_out: bool) -> (i32, String) {
    let addr = d.openbao.clone().unwrap_or_default();
    if let Err(e) = crate::api::validate_id("session_id", session) {
        return (7, e.to_string());
    }
    let (mount, prefix) = match (
        fleet::config::check_path("mount", &d.mount),
        fleet::config::check_path("prefix", &d.prefix),
    ) {
        (Ok(m), Ok(p)) => (m, p),
        (Err(e), _) | (_, Err(e)) => return (2, e),
    };
    let tok = match token(d) {
        Ok(t) => t,
        Err(e) => return (2, e),
    };
    let ca = d.ca_file.as_ref().map(|p| p.display().to_string());
    let store = match BaoStore::direct(
        &addr,
        ca.as_deref(),
        tok,
        Duration::from_secs(10),
        &mount,
        &prefix,
    ) {
        Ok(s) => s,
        Err(e) => return (2, e.to_string()),
    };
    let t = Tombstone {
        session_id: session.to_string(),
        at_ms: fleet::ms(SystemTime::now()),
        reason: if reason.is_empty() {
            "unspecified".into()
        } else {
            reason.to_string()
        },
        origin: origin(),
    };
    let out = fleet::publish(&store, &t, true).await;
    let pending: Vec<_> = out.pending.iter().map(|(s, _)| s.clone()).collect();
    if json_out {
        let steps = |v: &[crate::engine::Step]| -> Vec<serde_json::Value> {
            v.iter()
                .map(|s| json!({"target": s.target, "what": s.what, "count": s.count, "detail": s.detail}))
                .collect()
        };
        outln!(
            "{}",
            json!({"session_id": session, "done": steps(&out.done), "pending": steps(&pending)})
        );
    } else {
        outln!("revoked {session} (through OpenBao at {addr})");
        for s in &out.done {
            outln!(
                "  done     {:<10} {:<14} {:>4} {}",
                s.target,
                s.what,
                s.count,
                s.detail
            );
        }
        for s in &pending {
            outln!(
                "  PENDING  {:<10} {:<14} {:>4} {}",
                s.target,
                s.what,
                s.count,
                s.detail
            );
        }
    }
    match out.pending {
        None => (0, String::new()),
        Some((_, e)) => (
            5,
            format!("revocation incomplete ({e}); run the same command again"),
        ),
    }
}
