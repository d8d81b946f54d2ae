//! The fleet's records in OpenBao KV v2 (tombstones, the revocation log, session records) and
//! token revocation by accessor. Used through the backend (sidecred's own token) or directly by
//! `sidecred revoke-session --openbao` with an operator's token.

use super::client::Bao;
use super::Inner;
use crate::BackendError;
use crate::FleetStore as Store;
use async_trait::async_trait;
use reqwest::Method;
use serde_json::{json, Value};
use sidecred_secret::SecretText;
use std::sync::Arc;
use std::time::Duration;

enum Src {
    Backend(Arc<Inner>),
    Direct { bao: Box<Bao>, token: SecretText },
}

pub struct BaoStore {
    src: Src,
    mount: String,
    prefix: String,
}

impl BaoStore {
    pub(super) fn backend(inner: Arc<Inner>, mount: &str, prefix: &str) -> BaoStore {
        BaoStore {
            src: Src::Backend(inner),
            mount: mount.into(),
            prefix: prefix.into(),
        }
    }

    /// A store that talks to OpenBao with `token`, without a sidecar.
    pub fn direct(
        address: &str,
        ca_file: Option<&str>,
        token: SecretText,
        timeout: Duration,
        mount: &str,
        prefix: &str,
    ) -> Result<BaoStore, crate::SetupError> {
        let bao = Bao::new(address, ca_file, None, timeout)?;
        Ok(BaoStore {
            src: Src::Direct {
                bao: Box::new(bao),
                token,
            },
            mount: mount.into(),
            prefix: prefix.into(),
        })
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Option<Value>, BackendError> {
        let (bao, token) = match &self.src {
            Src::Backend(i) => (&i.bao, i.token().token.clone()),
            Src::Direct { bao, token } => (&**bao, token.clone()),
        };
        let r = bao.call(method, path, token.expose(), None, body).await?;
        Ok(r.map(|mut r| std::mem::take(&mut r.data)))
    }

    fn path(&self, kind: &str, key: &str) -> String {
        let key = key.trim_matches('/');
        if key.is_empty() {
            format!("{}/{kind}/{}", self.mount, self.prefix)
        } else {
            format!("{}/{kind}/{}/{key}", self.mount, self.prefix)
        }
    }
}

#[async_trait]
impl Store for BaoStore {
    async fn put(&self, key: &str, data: Value) -> Result<u64, BackendError> {
        let p = self.path("data", key);
        let r = self
            .call(Method::POST, &p, Some(json!({ "data": data })))
            .await?;
        r.and_then(|v| v["version"].as_u64())
            .ok_or_else(|| BackendError::Internal(format!("`{p}`: no version in the answer")))
    }

    async fn get(
        &self,
        key: &str,
        version: Option<u64>,
    ) -> Result<Option<(u64, Value)>, BackendError> {
        let mut p = self.path("data", key);
        if let Some(v) = version {
            p.push_str(&format!("?version={v}"));
        }
        match self.call(Method::GET, &p, None).await {
            Ok(Some(mut v)) => {
                let m = &v["metadata"];
                let gone = m["destroyed"].as_bool().unwrap_or(false)
                    || m["deletion_time"].as_str().is_some_and(|t| !t.is_empty());
                let ver = m["version"].as_u64().unwrap_or(0);
                if gone {
                    return Ok(None);
                }
                Ok(Some((ver, v["data"].take())))
            }
            Ok(None) | Err(BackendError::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn list(&self, dir: &str) -> Result<Vec<String>, BackendError> {
        let list = Method::from_bytes(b"LIST").expect("valid method");
        match self.call(list, &self.path("metadata", dir), None).await {
            Ok(Some(v)) => Ok(v["keys"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|k| k.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default()),
            Ok(None) | Err(BackendError::NotFound(_)) => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }

    async fn remove(&self, key: &str) -> Result<(), BackendError> {
        match self
            .call(Method::DELETE, &self.path("metadata", key), None)
            .await
        {
            Ok(_) | Err(BackendError::NotFound(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn cap_versions(&self, key: &str, max: u64) -> Result<(), BackendError> {
        let body = json!({ "max_versions": max });
        self.call(Method::POST, &self.path("metadata", key), Some(body))
            .await
            .map(|_| ())
    }

    async fn revoke_accessor(&self, accessor: &str) -> Result<(), BackendError> {
        let body = json!({ "accessor": accessor });
        match self
            .call(Method::POST, "auth/token/revoke-accessor", Some(body))
            .await
        {
            Ok(_) => Ok(()),
            // OpenBao answers 400 for an accessor it does not know: expired or already revoked.
            Err(BackendError::Invalid(m)) if m.contains("invalid accessor") => Ok(()),
            Err(e) => Err(e),
        }
    }
}
