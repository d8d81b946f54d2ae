//! Retiring a previous version when its grace window closes (at its backend, in the cache,
//! for watchers), and resuming the windows the retirement journal holds after a restart.

use super::retirements::{self, Line};
use super::{bounded_retirement, Held};
use crate::audit::AuditEvent;
use crate::backend::BackendLease;
use crate::clock::from_millis;
use crate::engine::{Engine, WatchEvent, WatchKind};
use std::path::Path;
use std::time::Duration;

/// The retirement journal could not be opened or read.
#[derive(Debug, thiserror::Error)]
#[error("{}: {source}", path.display())]
pub struct JournalError {
    pub path: std::path::PathBuf,
    #[source]
    pub source: std::io::Error,
}

impl Engine {
    /// Retires a previous version: gone at the backend and from the cache, watchers told.
    pub(in crate::engine) async fn retire(&self, name: &str, version: &str) {
        // Refused from now on, before the backend and the cache let go of it.
        self.rotation.mark_retired(name, version);
        let held: Vec<Held> = {
            let mut h = self.rotation.held.lock();
            let (mine, rest) = std::mem::take(&mut *h)
                .into_iter()
                .partition(|x| x.secret == name && x.epoch == version);
            *h = rest;
            mine
        };
        let cat = self.catalog();
        for h in &held {
            let Some(b) = cat.backends.get(&h.backend) else {
                continue;
            };
            if let Err(e) = self
                .bounded(&h.backend, b.revoke_lease(&h.lease, h.handle.as_ref()))
                .await
            {
                tracing::warn!(secret = %name, lease = %h.lease.id, error = %e, "revoking a retired credential failed; queued for retry");
                self.queue_lease_revocation(&h.backend, h.lease.clone(), h.handle.clone())
                    .await;
            }
        }
        if let Ok(spec) = cat.secret(name) {
            if let Ok(b) = cat.backend(&spec.backend) {
                if !b.reissues(spec) {
                    if let Err(e) = self.bounded(&spec.backend, b.retire(spec, version)).await {
                        tracing::warn!(secret = %name, version, error = %e, "backend retirement failed; the version is no longer served regardless");
                    }
                }
            }
        }
        self.grants.remove_secret(name, Some(version));
        self.journal_retirement(Line::Retired {
            secret: name.to_string(),
            version: version.to_string(),
        })
        .await;
        let current = self.current_epoch(name);
        self.notify(
            name,
            WatchEvent {
                kind: WatchKind::Retired,
                version: current,
                previous_version: version.to_string(),
                previous_retires_at: None,
                at: self.now(),
            },
        );
        let detail = format!("revoked={}", held.len());
        let mut ev = AuditEvent::new("retire", "ok");
        ev.secret = Some(name);
        ev.version = Some(version);
        ev.detail = Some(&detail);
        let _ = self.audit.record(ev).await;
    }

    pub(super) async fn journal_retirement(&self, line: Line) {
        let app = self.rotation.journal.lock().clone();
        if let Some(app) = app {
            if let Err(e) = app.append(retirements::encode(&line)).await {
                tracing::error!(error = %e, "cannot write the retirement journal; a restart would lose this grace window");
            }
        }
    }

    /// Opens `state_dir/retirements.jsonl` and resumes the grace windows it holds: open ones
    /// run to their end, overdue ones retire at the next housekeeping pass.
    pub async fn resume_retirements(&self, state_dir: &Path) -> Result<usize, JournalError> {
        let (r, app) = retirements::open(state_dir)
            .await
            .map_err(|source| JournalError {
                path: retirements::path(state_dir),
                source,
            })?;
        *self.rotation.journal.lock() = Some(app);
        for l in &r.retired {
            if let Line::Retired { secret, version } = l {
                self.rotation.mark_retired(secret, version);
            }
        }
        let now = self.now();
        let n = r.open.len() + r.superseded.len();
        for line in r.superseded.into_iter().chain(r.open) {
            let Line::Grace {
                secret,
                current,
                version,
                retires_at_ms,
                leases,
            } = line
            else {
                continue;
            };
            tracing::info!(secret = %secret, version = %version, "resuming grace window from the journal");
            {
                let mut h = self.rotation.held.lock();
                for l in leases {
                    h.push(Held {
                        secret: secret.clone(),
                        epoch: version.clone(),
                        backend: l.backend,
                        lease: BackendLease {
                            id: l.id,
                            ttl: Duration::ZERO,
                            renewable: false,
                        },
                        handle: None,
                    });
                }
            }
            let applied = self
                .rotation
                .windows
                .lock()
                .entry(secret.clone())
                .or_default()
                .apply_until(Some(version), current, now, {
                    // A window never outlasts the secret's grace, whatever the file says.
                    let at = from_millis(retires_at_ms).max(now);
                    match self.catalog().secret(&secret) {
                        Ok(spec) => bounded_retirement(at, now, spec.grace),
                        Err(_) => now,
                    }
                });
            for v in applied.retire_now {
                self.retire(&secret, &v).await;
            }
        }
        Ok(n)
    }
}
