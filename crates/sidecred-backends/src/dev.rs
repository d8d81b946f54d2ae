//! Embedded in-memory backend: versioned values, rotation, and simulated dynamic credentials,
//! so every RPC works with no external service. Optionally seeded from a TOML file.

use super::options::{CompiledOptions, OptionError, RawOptions, SecretShape};
use super::setup::SetupError;
use super::{Backend, BackendError, BackendLease, FetchRequest, Fetched, Rotated};
use crate::SecretSpec;
use async_trait::async_trait;
use parking_lot::Mutex;
use rand::distr::{Alphanumeric, SampleString};
use serde::Deserialize;
use sidecred_secret::SecretBytes;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use zeroize::Zeroize;

/// Inline dev seed values, held zeroized from parse time and handed over once: the backend
/// takes them at build, so the parsed config (kept for the life of the process) no longer
/// holds a copy after rotation retires them. Debug shows the paths only.
#[derive(Clone, Default)]
pub struct SeedValues(Arc<Mutex<BTreeMap<String, SecretBytes>>>);

impl SeedValues {
    /// Moves the values out; later calls (and clones of the config) see none.
    pub fn take(&self) -> BTreeMap<String, SecretBytes> {
        std::mem::take(&mut *self.0.lock())
    }
}

impl<'de> Deserialize<'de> for SeedValues {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = BTreeMap::<String, String>::deserialize(d)?;
        let held = raw
            .into_iter()
            .map(|(k, v)| (k, SecretBytes::from_string(v)))
            .collect();
        Ok(Self(Arc::new(Mutex::new(held))))
    }
}

impl std::fmt::Debug for SeedValues {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(self.0.lock().keys().map(|k| (k.clone(), "[REDACTED]")))
            .finish()
    }
}

#[derive(Clone, Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct DevConfig {
    /// TOML file of `"path" = "value"` lines loaded at start.
    #[serde(default)]
    pub seed_file: Option<PathBuf>,
    /// Inline seed values, path → value. Dev only: these live in the config file.
    #[serde(default)]
    pub values: SeedValues,
    /// Artificial latency per fetch, to exercise single-flight and timeouts.
    #[serde(default)]
    pub latency: Option<sidecred_core::duration::Dur>,
    /// Lease ttl of simulated dynamic credentials.
    #[serde(default)]
    pub dynamic_ttl: Option<sidecred_core::duration::Dur>,
    /// Re-validate cached values this often (see `Backend::recheck_interval`).
    #[serde(default)]
    pub recheck_interval: Option<sidecred_core::duration::Dur>,
    /// The first N lease revocations fail, so revocation retries and their backoff can be
    /// exercised without a real backend outage.
    #[serde(default)]
    pub revoke_failures: u32,
}

impl DevConfig {
    pub fn validate(&self) -> Result<(), SetupError> {
        if let Some(p) = &self.seed_file {
            if !p.exists() {
                return Err(SetupError::setting(
                    "seed_file",
                    format!("`{}` does not exist", p.display()),
                ));
            }
        }
        Ok(())
    }

    /// Compiles one secret's options.
    pub fn prepare(
        &self,
        _secret: &SecretShape<'_>,
        raw: RawOptions<'_>,
    ) -> Result<DevOptions, OptionError> {
        raw.decode()
    }
}

/// A dev secret's `options`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, expecting = "a table of dev options")]
pub struct DevOptions {
    /// Every read issues a fresh random credential with a renewable lease.
    #[serde(default)]
    pub dynamic: bool,
}

struct Versions {
    /// Index i holds version i+1; None once retired.
    values: Vec<Option<SecretBytes>>,
}

/// The in-memory store. Locks are never held across an await.
pub struct DevBackend {
    name: String,
    store: Mutex<HashMap<String, Versions>>,
    live_leases: Mutex<HashSet<String>>,
    latency: Duration,
    dynamic_ttl: Duration,
    recheck: Option<Duration>,
    fetches: AtomicU64,
    lease_seq: AtomicU64,
    revoke_failures: std::sync::atomic::AtomicU32,
}

impl DevBackend {
    pub fn new(name: &str, cfg: &DevConfig) -> Result<Self, SetupError> {
        let mut store = HashMap::new();
        if let Some(path) = &cfg.seed_file {
            let mut text = std::fs::read_to_string(path).map_err(|source| SetupError::File {
                setting: "seed_file",
                path: path.clone(),
                source,
            })?;
            let parsed: Result<BTreeMap<String, String>, _> = toml::from_str(&text);
            text.zeroize();
            let mut table = parsed.map_err(|e| SetupError::SeedFile {
                path: path.clone(),
                message: e.message().to_string(),
            })?;
            for (k, v) in std::mem::take(&mut table) {
                store.insert(
                    k,
                    Versions {
                        values: vec![Some(SecretBytes::from_string(v))],
                    },
                );
            }
        }
        for (k, v) in cfg.values.take() {
            store.insert(
                k,
                Versions {
                    values: vec![Some(v)],
                },
            );
        }
        Ok(Self {
            name: name.to_string(),
            store: Mutex::new(store),
            live_leases: Mutex::new(HashSet::new()),
            revoke_failures: std::sync::atomic::AtomicU32::new(cfg.revoke_failures),
            latency: cfg.latency.map(|d| d.0).unwrap_or_default(),
            dynamic_ttl: cfg
                .dynamic_ttl
                .map(|d| d.0)
                .unwrap_or(Duration::from_secs(60)),
            recheck: cfg.recheck_interval.map(|d| d.0).filter(|d| !d.is_zero()),
            fetches: AtomicU64::new(0),
            lease_seq: AtomicU64::new(0),
        })
    }

    /// Backend reads served so far (single-flight tests count these).
    pub fn fetch_count(&self) -> u64 {
        self.fetches.load(Ordering::Relaxed)
    }

    fn is_dynamic(spec: &SecretSpec) -> bool {
        matches!(&spec.options, CompiledOptions::Dev(o) if o.dynamic)
    }

    /// Refuses a spec compiled for another backend kind.
    fn check_kind(spec: &SecretSpec) -> Result<(), BackendError> {
        match &spec.options {
            CompiledOptions::Dev(_) => Ok(()),
            other => Err(other.mismatch(&spec.name, "dev")),
        }
    }

    fn read(&self, spec: &SecretSpec, version: Option<&str>) -> Result<Fetched, BackendError> {
        let store = self.store.lock();
        let v = store.get(&spec.path).ok_or_else(|| {
            BackendError::NotFound(format!("{}: no secret at path `{}`", self.name, spec.path))
        })?;
        let n = match version {
            None => v.values.len(),
            Some(s) => s
                .parse::<usize>()
                .ok()
                .filter(|n| *n >= 1 && *n <= v.values.len())
                .ok_or_else(|| {
                    BackendError::NotFound(format!(
                        "{}: `{}` has no version `{s}`",
                        self.name, spec.path
                    ))
                })?,
        };
        let value = v.values[n - 1].clone().ok_or_else(|| {
            BackendError::NotFound(format!(
                "{}: `{}` version {n} is retired",
                self.name, spec.path
            ))
        })?;
        Ok(Fetched {
            value,
            version: n.to_string(),
            lease: None,
        })
    }
}

fn random_value() -> SecretBytes {
    let mut s = Alphanumeric.sample_string(&mut rand::rng(), 32);
    let out = SecretBytes::new(s.as_bytes().to_vec());
    s.zeroize();
    out
}

#[async_trait]
impl Backend for DevBackend {
    fn kind(&self) -> &'static str {
        "dev"
    }

    async fn fetch(&self, req: &FetchRequest<'_>) -> Result<Fetched, BackendError> {
        self.fetches.fetch_add(1, Ordering::Relaxed);
        if !self.latency.is_zero() {
            tokio::time::sleep(self.latency).await;
        }
        Self::check_kind(req.spec)?;
        if Self::is_dynamic(req.spec) {
            let n = self.lease_seq.fetch_add(1, Ordering::Relaxed) + 1;
            let id = format!("{}/{}/{}", self.name, req.spec.path, n);
            self.live_leases.lock().insert(id.clone());
            return Ok(Fetched {
                value: random_value(),
                version: n.to_string(),
                lease: Some(BackendLease {
                    id,
                    ttl: self.dynamic_ttl,
                    renewable: true,
                }),
            });
        }
        self.read(req.spec, req.version)
    }

    async fn rotate(
        &self,
        spec: &SecretSpec,
        value: Option<SecretBytes>,
    ) -> Result<Rotated, BackendError> {
        Self::check_kind(spec)?;
        if Self::is_dynamic(spec) {
            return Err(BackendError::Precondition(format!(
                "`{}` is dynamic: every session already gets fresh credentials",
                spec.name
            )));
        }
        let mut store = self.store.lock();
        let v = store.get_mut(&spec.path).ok_or_else(|| {
            BackendError::NotFound(format!("{}: no secret at path `{}`", self.name, spec.path))
        })?;
        let prev = v.values.len();
        v.values.push(Some(value.unwrap_or_else(random_value)));
        Ok(Rotated {
            version: v.values.len().to_string(),
            previous_version: Some(prev.to_string()),
        })
    }

    fn reissues(&self, spec: &SecretSpec) -> bool {
        Self::is_dynamic(spec)
    }

    async fn retire(&self, spec: &SecretSpec, version: &str) -> Result<(), BackendError> {
        let mut store = self.store.lock();
        if let (Some(v), Ok(n)) = (store.get_mut(&spec.path), version.parse::<usize>()) {
            if n >= 1 && n < v.values.len() {
                v.values[n - 1] = None;
            }
        }
        Ok(())
    }

    async fn current_version(&self, spec: &SecretSpec) -> Result<Option<String>, BackendError> {
        if Self::is_dynamic(spec) {
            return Ok(None);
        }
        let store = self.store.lock();
        Ok(store.get(&spec.path).map(|v| v.values.len().to_string()))
    }

    fn recheck_interval(&self) -> Option<Duration> {
        self.recheck
    }

    async fn revoke_lease(
        &self,
        lease: &BackendLease,
        _h: Option<&super::SessionHandle>,
    ) -> Result<(), BackendError> {
        let failing = self
            .revoke_failures
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok();
        if failing {
            return Err(BackendError::Unavailable(
                "revocation refused (revoke_failures)".into(),
            ));
        }
        self.live_leases.lock().remove(&lease.id);
        Ok(())
    }

    async fn health(&self) -> Result<String, BackendError> {
        let secrets = self.store.lock().len();
        let leases = self.live_leases.lock().len();
        Ok(format!(
            "{secrets} secrets, {leases} live dynamic leases, {} fetches",
            self.fetch_count()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sidecred_core::spec::Scope;

    fn prepare(text: &str) -> Result<DevOptions, OptionError> {
        let shape = SecretShape {
            path: "p",
            scope: Scope::Session,
        };
        DevConfig::default().prepare(&shape, RawOptions::parse(text).unwrap())
    }

    #[test]
    fn prepare_table() {
        assert_eq!(prepare("{}").unwrap(), DevOptions { dynamic: false });
        assert_eq!(
            prepare("{ dynamic = true }").unwrap(),
            DevOptions { dynamic: true }
        );
        let shape = SecretShape {
            path: "p",
            scope: Scope::Shared,
        };
        let absent = DevConfig::default().prepare(&shape, RawOptions::new(None));
        assert_eq!(absent.unwrap(), DevOptions::default());
        for (text, want, at) in [
            (
                "{ dynamik = true }",
                "unknown field `dynamik`, expected `dynamic`",
                2,
            ),
            (
                "{ dynamic = \"yes\" }",
                "invalid type: string \"yes\", expected a boolean",
                12,
            ),
            ("7", "expected a table of options, found integer", 0),
        ] {
            let e = prepare(text).unwrap_err();
            assert!(e.to_string().contains(want), "{text}: {e}");
            assert_eq!(e.span().map(|s| s.start), Some(at), "{text}: {e}");
        }
    }
}
