//! Coordination records in KV v2 (rotation locks and rotation records): plain JSON documents
//! written with check-and-set, so a fleet of sidecars agrees on who rotates a slot.

use super::client::by_status;
use super::Inner;
use crate::{BackendError, RecordStore};
use async_trait::async_trait;
use reqwest::Method;
use serde_json::{json, Value};

fn data_path(mount: &str, path: &str) -> String {
    format!(
        "{}/data/{}",
        mount.trim_matches('/'),
        path.trim_matches('/')
    )
}

#[async_trait]
impl RecordStore for Inner {
    async fn read_record(
        &self,
        mount: &str,
        path: &str,
    ) -> Result<Option<(Value, u64)>, BackendError> {
        let p = data_path(mount, path);
        let tok = self.token();
        match self
            .bao
            .call(Method::GET, &p, tok.token.expose(), None, None)
            .await
        {
            Ok(Some(r)) => {
                let version = r.data["metadata"]["version"].as_u64().unwrap_or(0);
                let data = r.data.get("data").cloned().unwrap_or(Value::Null);
                if data.is_null() {
                    return Ok(None);
                }
                Ok(Some((data, version)))
            }
            Ok(None) | Err(BackendError::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn write_record(
        &self,
        mount: &str,
        path: &str,
        data: Value,
        cas: u64,
    ) -> Result<u64, BackendError> {
        let p = data_path(mount, path);
        let tok = self.token();
        let body = json!({ "options": { "cas": cas }, "data": data });
        let r = self
            .bao
            .call(Method::POST, &p, tok.token.expose(), None, Some(body))
            .await?
            .ok_or_else(|| by_status(&p, 204, &[]))?;
        r.data["version"]
            .as_u64()
            .ok_or_else(|| BackendError::Internal(format!("`{p}`: no version in the answer")))
    }
}
