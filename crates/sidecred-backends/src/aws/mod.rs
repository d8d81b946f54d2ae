//! AWS Secrets Manager: reads by stage or version id, change detection with DescribeSecret,
//! and rotation by staging labels (put as AWSPENDING, verify, promote to AWSCURRENT).
//!
//! Split in three: `client` (SDK setup and error mapping), `value` (JSON key selection,
//! password generation, verification command) and this file (the backend itself).

mod client;
mod options;
mod value;

pub use options::AwsOptions;

use super::options::CompiledOptions;
use super::setup::SetupError;
use super::{Backend, BackendError, FetchRequest, Fetched, Rotated, VersionInfo};
use crate::SecretSpec;
use async_trait::async_trait;
use aws_sdk_secretsmanager::primitives::Blob;
use aws_sdk_secretsmanager::Client;
use client::{classify, describe_error};
use parking_lot::Mutex;
use serde::Deserialize;
use sidecred_core::duration::Dur;
use sidecred_secret::{SecretBytes, SecretText};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

const CURRENT: &str = "AWSCURRENT";
const PENDING: &str = "AWSPENDING";
const PREVIOUS: &str = "AWSPREVIOUS";

/// `[backends.NAME] kind = "aws"`. Unset fields fall back to the standard AWS chain
/// (environment, shared profile, web identity as used by IRSA, container and instance metadata).
#[derive(Clone, Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct AwsConfig {
    pub region: Option<String>,
    /// Endpoint override, e.g. a VPC endpoint or a local emulator; empty means none.
    pub endpoint: Option<String>,
    /// Named profile from the shared config files; empty means the default.
    pub profile: Option<String>,
    /// Static credentials; both or neither. Prefer the chain in production.
    pub access_key_id: Option<String>,
    #[serde(default, deserialize_with = "secret_text")]
    pub secret_access_key: Option<SecretText>,
    #[serde(default, deserialize_with = "secret_text")]
    pub session_token: Option<SecretText>,
    /// Attempts per call, including the first (throttling and 5xx are retried with jittered backoff).
    pub max_attempts: Option<u32>,
    pub initial_backoff: Option<Dur>,
    pub max_backoff: Option<Dur>,
    pub connect_timeout: Option<Dur>,
    /// How often cached values are re-validated with DescribeSecret; unset: never.
    pub recheck_interval: Option<Dur>,
    /// On retirement, also remove the AWSPREVIOUS label from the retired version.
    #[serde(default)]
    pub retire_removes_previous_label: bool,
}

fn secret_text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<SecretText>, D::Error> {
    Ok(Option::<String>::deserialize(d)?.map(SecretText::new))
}

impl AwsConfig {
    pub fn validate(&self) -> Result<(), SetupError> {
        if self.access_key_id.is_some() != self.secret_access_key.is_some() {
            return Err(SetupError::setting(
                "access_key_id",
                "set both access_key_id and secret_access_key, or neither",
            ));
        }
        if self.session_token.is_some() && self.access_key_id.is_none() {
            return Err(SetupError::setting(
                "session_token",
                "needs access_key_id and secret_access_key",
            ));
        }
        if let Some(e) = self.endpoint.as_deref().filter(|e| !e.is_empty()) {
            if !(e.starts_with("http://") || e.starts_with("https://")) {
                return Err(SetupError::setting(
                    "endpoint",
                    format!("`{e}` must start with http:// or https://"),
                ));
            }
        }
        if matches!(self.max_attempts, Some(0) | Some(11..)) {
            return Err(SetupError::setting(
                "max_attempts",
                "must be between 1 and 10",
            ));
        }
        if self.recheck_interval.is_some_and(|d| d.0.is_zero()) {
            return Err(SetupError::setting(
                "recheck_interval",
                "must be greater than 0 (omit it to disable)",
            ));
        }
        Ok(())
    }
}

/// The AWS Secrets Manager backend.
pub struct AwsBackend {
    name: String,
    client: Client,
    recheck: Option<Duration>,
    remove_previous_label: bool,
    /// Version ids sidecred retired, per secret path: never served again by id.
    retired: Mutex<HashMap<String, HashSet<String>>>,
    /// ARN, name, creation date and labels of the versions read last, per path (no values).
    infos: Mutex<HashMap<String, Infos>>,
}

/// Details of a path's versions read last, oldest first.
type Infos = VecDeque<(String, Arc<VersionInfo>)>;

/// Versions whose details are kept per secret path.
const INFOS_PER_PATH: usize = 8;

/// The spec's compiled AWS options.
fn opts(spec: &SecretSpec) -> Result<&AwsOptions, BackendError> {
    match &spec.options {
        CompiledOptions::Aws(o) => Ok(o),
        other => Err(other.mismatch(&spec.name, "aws")),
    }
}

impl AwsBackend {
    pub async fn new(name: &str, cfg: &AwsConfig, timeout: Duration) -> Result<Self, SetupError> {
        Ok(Self {
            name: name.to_string(),
            client: client::build(cfg, timeout).await?,
            recheck: cfg.recheck_interval.map(|d| d.0),
            remove_previous_label: cfg.retire_removes_previous_label,
            retired: Mutex::new(HashMap::new()),
            infos: Mutex::new(HashMap::new()),
        })
    }

    fn is_retired(&self, path: &str, version: &str) -> bool {
        self.retired
            .lock()
            .get(path)
            .is_some_and(|s| s.contains(version))
    }

    /// VersionIdsToStages and deletion state of one secret.
    async fn describe(&self, path: &str) -> Result<HashMap<String, Vec<String>>, BackendError> {
        let out = self
            .client
            .describe_secret()
            .secret_id(path)
            .send()
            .await
            .map_err(|e| describe_error(&self.name, path, e))?;
        if let Some(d) = out.deleted_date() {
            return Err(deleted(&self.name, path, Some(d)));
        }
        Ok(out.version_ids_to_stages.unwrap_or_default())
    }

    /// Turns an InvalidRequestException into the deletion message when DescribeSecret confirms it.
    async fn explain(&self, path: &str, e: BackendError) -> BackendError {
        if !matches!(e, BackendError::Precondition(_)) {
            return e;
        }
        match self.describe(path).await {
            Err(d @ BackendError::Precondition(_)) => d,
            _ => e,
        }
    }

    async fn get(&self, path: &str, by: By<'_>) -> Result<(SecretBytes, String), BackendError> {
        let mut req = self.client.get_secret_value().secret_id(path);
        req = match by {
            By::Stage(s) => req.version_stage(s),
            By::Id(v) => req.version_id(v),
        };
        let out = match req.send().await {
            Ok(o) => o,
            Err(e) => {
                let e = classify(&self.name, "GetSecretValue", path, e);
                return Err(self.explain(path, e).await);
            }
        };
        let version = out.version_id.clone().unwrap_or_default();
        self.remember(path, &version, &out);
        let bytes = match (out.secret_string, out.secret_binary) {
            (Some(s), _) => SecretBytes::from_string(s),
            (None, Some(b)) => SecretBytes::new(b.into_inner()),
            (None, None) => {
                return Err(BackendError::Precondition(format!(
                    "{}: `{path}` version `{version}` has no value",
                    self.name
                )))
            }
        };
        Ok((bytes, version))
    }

    /// Builds the new value: supplied, or generated; with `key`, merged into the current JSON.
    async fn new_value(
        &self,
        spec: &SecretSpec,
        supplied: Option<SecretBytes>,
    ) -> Result<SecretBytes, BackendError> {
        let o = opts(spec)?;
        let v = match supplied {
            Some(v) => v,
            None => o.generator.generate(),
        };
        match &spec.key {
            None => Ok(v),
            Some(key) => {
                let (doc, _) = self.get(&spec.path, By::Stage(&o.stage)).await?;
                value::replace_key(&doc, key, &v)
                    .map_err(|m| BackendError::Precondition(format!("`{}`: {m}", spec.path)))
            }
        }
    }

    /// Keeps what GetSecretValue said about the version besides its value.
    fn remember(
        &self,
        path: &str,
        version: &str,
        out: &aws_sdk_secretsmanager::operation::get_secret_value::GetSecretValueOutput,
    ) {
        let info = Arc::new(VersionInfo {
            arn: out.arn.clone(),
            name: out.name.clone(),
            created: out.created_date.map(|d| (d.secs(), d.subsec_nanos())),
            stages: out.version_stages.clone().unwrap_or_default(),
            binary: out.secret_string.is_none() && out.secret_binary.is_some(),
        });
        let mut infos = self.infos.lock();
        let list = infos.entry(path.to_string()).or_default();
        list.retain(|(v, _)| v != version);
        if list.len() >= INFOS_PER_PATH {
            list.pop_front();
        }
        list.push_back((version.to_string(), info));
    }

    /// Best-effort label removal; failures are logged, never fatal.
    async fn drop_label(&self, path: &str, label: &str, from: &str) {
        let r = self
            .client
            .update_secret_version_stage()
            .secret_id(path)
            .version_stage(label)
            .remove_from_version_id(from)
            .send()
            .await;
        if let Err(e) = r {
            let e = classify(&self.name, "UpdateSecretVersionStage", path, e);
            tracing::warn!(backend = %self.name, path, label, version = from, error = %e, "could not remove staging label");
        }
    }
}

enum By<'a> {
    Stage(&'a str),
    Id(&'a str),
}

fn deleted(
    backend: &str,
    path: &str,
    at: Option<&aws_sdk_secretsmanager::primitives::DateTime>,
) -> BackendError {
    let when = at.map(|d| format!(" (deleted at {d})")).unwrap_or_default();
    BackendError::Precondition(format!(
        "{backend}: secret `{path}` is scheduled for deletion{when}"
    ))
}

#[async_trait]
impl Backend for AwsBackend {
    fn kind(&self) -> &'static str {
        "aws"
    }

    async fn fetch(&self, req: &FetchRequest<'_>) -> Result<Fetched, BackendError> {
        let spec = req.spec;
        let by = match req.version {
            Some(v) if self.is_retired(&spec.path, v) => {
                return Err(BackendError::NotFound(format!(
                    "{}: version `{v}` of `{}` is retired",
                    self.name, spec.path
                )))
            }
            Some(v) => By::Id(v),
            None => By::Stage(&opts(spec)?.stage),
        };
        let (raw, version) = self.get(&spec.path, by).await?;
        let value = match &spec.key {
            Some(k) => value::select_key(&raw, k)
                .map_err(|m| BackendError::Precondition(format!("`{}`: {m}", spec.path)))?,
            None => raw,
        };
        Ok(Fetched {
            value,
            version,
            lease: None,
        })
    }

    fn version_info(&self, spec: &SecretSpec, version: &str) -> Option<Arc<VersionInfo>> {
        let infos = self.infos.lock();
        let (_, info) = infos.get(&spec.path)?.iter().find(|(v, _)| v == version)?;
        Some(info.clone())
    }

    async fn rotate(
        &self,
        spec: &SecretSpec,
        supplied: Option<SecretBytes>,
    ) -> Result<Rotated, BackendError> {
        let path = spec.path.as_str();
        let o = opts(spec)?;
        let label = o.stage.as_str();
        let stages = self.describe(path).await?;
        let old = stages
            .iter()
            .find(|(_, s)| s.iter().any(|x| x == label))
            .map(|(id, _)| id.clone())
            .ok_or_else(|| {
                BackendError::Precondition(format!(
                    "{}: `{path}` has no {label} version to rotate from",
                    self.name
                ))
            })?;
        let new_value = self.new_value(spec, supplied).await?;
        let binary = o.binary;
        // The token makes the put idempotent across SDK retries, and becomes the VersionId.
        let token = hex::encode(rand::random::<[u8; 16]>());
        let mut put = self
            .client
            .put_secret_value()
            .secret_id(path)
            .client_request_token(&token)
            .version_stages(PENDING);
        put = match std::str::from_utf8(new_value.expose()) {
            Ok(s) if !binary => put.secret_string(s),
            _ => put.secret_binary(Blob::new(new_value.expose().to_vec())),
        };
        let out = put
            .send()
            .await
            .map_err(|e| classify(&self.name, "PutSecretValue", path, e))?;
        let new = out.version_id.unwrap_or(token);
        if let Some(v) = &o.verifier {
            if let Err(m) = v.run(&new_value).await {
                self.drop_label(path, PENDING, &new).await;
                return Err(BackendError::Precondition(format!(
                    "{}: verification of the new version of `{path}` failed: {m}; {label} left on `{old}`",
                    self.name
                )));
            }
        }
        self.client
            .update_secret_version_stage()
            .secret_id(path)
            .version_stage(label)
            .move_to_version_id(&new)
            .remove_from_version_id(&old)
            .send()
            .await
            .map_err(|e| classify(&self.name, "UpdateSecretVersionStage", path, e))?;
        self.drop_label(path, PENDING, &new).await;
        tracing::info!(backend = %self.name, path, version = %new, previous = %old, "promoted new version");
        Ok(Rotated {
            version: new,
            previous_version: Some(old),
        })
    }

    async fn retire(&self, spec: &SecretSpec, version: &str) -> Result<(), BackendError> {
        self.retired
            .lock()
            .entry(spec.path.clone())
            .or_default()
            .insert(version.to_string());
        if self.remove_previous_label {
            let stages = self.describe(&spec.path).await?;
            if stages
                .get(version)
                .is_some_and(|s| s.iter().any(|x| x == PREVIOUS))
            {
                self.drop_label(&spec.path, PREVIOUS, version).await;
            }
        }
        Ok(())
    }

    async fn current_version(&self, spec: &SecretSpec) -> Result<Option<String>, BackendError> {
        let label = opts(spec)?.stage.as_str();
        let stages = self.describe(&spec.path).await?;
        Ok(stages
            .into_iter()
            .find(|(_, s)| s.iter().any(|x| x == label))
            .map(|(id, _)| id))
    }

    fn recheck_interval(&self) -> Option<Duration> {
        self.recheck
    }

    async fn health(&self) -> Result<String, BackendError> {
        let region = self
            .client
            .config()
            .region()
            .map(|r| r.to_string())
            .unwrap_or_default();
        match self.client.list_secrets().max_results(1).send().await {
            Ok(_) => Ok(format!("region {region}: reachable")),
            Err(e) => match classify(&self.name, "ListSecrets", "*", e) {
                BackendError::Denied(_) => Ok(format!(
                    "region {region}: reachable (ListSecrets not allowed)"
                )),
                e => Err(e),
            },
        }
    }
}
