//! `[fleet]`: where revocation records live in OpenBao, how often each sidecar looks, and who
//! this sidecar is in them.

use crate::backend::BackendConfig;
use serde::Deserialize;
use sidecred_core::duration::Dur;
use std::collections::BTreeMap;
use std::time::Duration;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFleet {
    /// The OpenBao backend (by name) whose token reads and writes the records.
    pub backend: String,
    #[serde(default = "default_mount")]
    pub mount: String,
    #[serde(default = "default_prefix")]
    pub prefix: String,
    #[serde(default = "default_poll")]
    pub poll_interval: Dur,
    #[serde(default)]
    pub sidecar_id: Option<String>,
}

fn default_mount() -> String {
    "secret".into()
}
fn default_prefix() -> String {
    "sidecred/fleet".into()
}
fn default_poll() -> Dur {
    Dur(Duration::from_millis(250))
}

/// Validated fleet settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FleetConfig {
    pub backend: String,
    /// A KV v2 mount.
    pub mount: String,
    /// Path under the mount: `tombstones/<id>`, `sessions/<id>` and `log` live below it.
    pub prefix: String,
    pub poll_interval: Duration,
    pub sidecar_id: String,
}

/// Bounds on the poll interval: faster loads OpenBao for little gain, slower misses the 1 s goal.
pub const MIN_POLL: Duration = Duration::from_millis(50);
pub const MAX_POLL: Duration = Duration::from_secs(10);

/// A KV path made of plain segments (no empty, `.` or `..` segment, no odd characters).
pub fn check_path(what: &str, p: &str) -> Result<String, String> {
    let p = p.trim_matches('/');
    sidecred_core::spec::check_segments(what, p)?;
    Ok(p.to_string())
}

fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_string())
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "sidecar".into())
}

impl RawFleet {
    /// Returns (key, message) on error.
    pub fn validate(
        self,
        backends: &BTreeMap<String, BackendConfig>,
    ) -> Result<FleetConfig, (&'static str, String)> {
        match backends.get(&self.backend) {
            Some(b) if b.kind() == "openbao" => {}
            Some(b) => {
                return Err((
                    "fleet.backend",
                    format!(
                        "backend `{}` is of kind `{}`; the fleet needs an openbao backend",
                        self.backend,
                        b.kind()
                    ),
                ))
            }
            None => {
                let known: Vec<_> = backends.keys().cloned().collect();
                return Err((
                    "fleet.backend",
                    format!(
                        "unknown backend `{}` (defined: {})",
                        self.backend,
                        known.join(", ")
                    ),
                ));
            }
        }
        let mount = check_path("mount", &self.mount).map_err(|m| ("fleet.mount", m))?;
        let prefix = check_path("prefix", &self.prefix).map_err(|m| ("fleet.prefix", m))?;
        let poll = self.poll_interval.0;
        if !(MIN_POLL..=MAX_POLL).contains(&poll) {
            return Err((
                "fleet.poll_interval",
                format!("{poll:?} is outside {MIN_POLL:?}..={MAX_POLL:?}"),
            ));
        }
        let sidecar_id = self.sidecar_id.unwrap_or_else(hostname);
        if sidecar_id.is_empty()
            || sidecar_id.len() > 128
            || sidecar_id.chars().any(|c| c.is_control() || c == '/')
        {
            return Err((
                "fleet.sidecar_id",
                "1-128 characters, no `/` or control characters".into(),
            ));
        }
        Ok(FleetConfig {
            backend: self.backend,
            mount,
            prefix,
            poll_interval: poll,
            sidecar_id,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert_eq!(check_path("p", "/a/b-c_d.e/").unwrap(), "a/b-c_d.e");
        for bad in ["", "/", "a//b", "a/../b", "a b", "a/./b", "x?y"] {
            assert!(check_path("p", bad).is_err(), "{bad}");
        }
    }
}
