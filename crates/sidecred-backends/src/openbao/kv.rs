//! KV v2: read the current or a pinned version, rotate with check-and-set, soft-delete on retire.

use super::client::{from_vaultrs, wipe};
use super::{select, Inner, Opts};
use crate::SecretSpec;
use crate::{BackendError, Fetched, Rotated};
use rand::distr::{Alphanumeric, SampleString};
use serde_json::Value;
use sidecred_secret::SecretBytes;
use vaultrs::api::kv2::requests::{ReadSecretRequest, SetSecretRequestOptions};
use zeroize::Zeroize;

fn api_path(o: &Opts) -> String {
    format!("{}/data/{}", o.mount, o.path)
}

fn parse_version(v: &str, o: &Opts) -> Result<u64, BackendError> {
    v.parse::<u64>()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| BackendError::NotFound(format!("`{}` has no version `{v}`", api_path(o))))
}

/// Reads one version (the current one when `version` is None) with its version number.
async fn read_raw(
    inner: &Inner,
    o: &Opts,
    version: Option<u64>,
) -> Result<(Value, u64), BackendError> {
    let tok = inner.token();
    let c = inner.bao.vault(tok.token.expose(), o.namespace.as_deref());
    let ep = ReadSecretRequest::builder()
        .mount(o.mount.as_str())
        .path(o.path.as_str())
        .version(version)
        .build()
        .map_err(|e| BackendError::Internal(e.to_string()))?;
    let mut r = vaultrs::api::exec_with_result(&c.0, ep)
        .await
        .map_err(|e| from_vaultrs(&api_path(o), e))?;
    if r.metadata.destroyed || !r.metadata.deletion_time.is_empty() || r.data.is_null() {
        wipe(&mut r.data);
        return Err(BackendError::NotFound(format!(
            "`{}` version {} is deleted",
            api_path(o),
            r.metadata.version
        )));
    }
    Ok((std::mem::take(&mut r.data), r.metadata.version))
}

pub async fn read(
    inner: &Inner,
    spec: &SecretSpec,
    o: &Opts,
    version: Option<&str>,
) -> Result<Fetched, BackendError> {
    let v = version.map(|v| parse_version(v, o)).transpose()?;
    let (mut data, n) = read_raw(inner, o, v).await?;
    let value = select(&data, spec.key.as_deref(), &api_path(o));
    wipe(&mut data);
    Ok(Fetched {
        value: value?,
        version: n.to_string(),
        lease: None,
    })
}

pub async fn current_version(inner: &Inner, o: &Opts) -> Result<String, BackendError> {
    let tok = inner.token();
    let c = inner.bao.vault(tok.token.expose(), o.namespace.as_deref());
    let m = vaultrs::kv2::read_metadata(&c.0, &o.mount, &o.path)
        .await
        .map_err(|e| from_vaultrs(&format!("{}/metadata/{}", o.mount, o.path), e))?;
    Ok(m.current_version.to_string())
}

/// Writes a new version with `cas` = the version read, so a concurrent writer makes this fail
/// (FAILED_PRECONDITION) instead of being silently overwritten. Other fields are kept.
pub async fn rotate(
    inner: &Inner,
    spec: &SecretSpec,
    o: &Opts,
    value: Option<SecretBytes>,
) -> Result<Rotated, BackendError> {
    let (mut data, current) = read_raw(inner, o, None).await?;
    let field = spec.key.clone().or_else(|| match &data {
        Value::Object(m) if m.len() == 1 => m.keys().next().cloned(),
        _ => None,
    });
    let new = match value {
        Some(v) => String::from_utf8(v.expose().to_vec()).map_err(|_| {
            BackendError::Invalid("kv2 values are text; the new value is not UTF-8".into())
        })?,
        None => Alphanumeric.sample_string(&mut rand::rng(), 32),
    };
    let mut body = match (field, &mut data) {
        (Some(f), Value::Object(m)) => {
            if let Some(old) = m.get_mut(&f) {
                wipe(old);
            }
            m.insert(f, Value::String(new));
            std::mem::take(&mut data)
        }
        (None, _) => match serde_json::from_str::<Value>(&new) {
            Ok(v @ Value::Object(_)) => {
                let mut new = new;
                new.zeroize();
                wipe(&mut data);
                v
            }
            _ => {
                wipe(&mut data);
                serde_json::json!({ "value": new })
            }
        },
        (Some(f), _) => serde_json::json!({ f: new }),
    };
    let tok = inner.token();
    let c = inner.bao.vault(tok.token.expose(), o.namespace.as_deref());
    let cas = u32::try_from(current).unwrap_or(u32::MAX);
    let res = vaultrs::kv2::set_with_options(
        &c.0,
        &o.mount,
        &o.path,
        &body,
        SetSecretRequestOptions { cas },
    )
    .await;
    wipe(&mut body);
    let meta = res.map_err(|e| from_vaultrs(&api_path(o), e))?;
    Ok(Rotated {
        version: meta.version.to_string(),
        previous_version: Some(current.to_string()),
    })
}

/// Soft-deletes a retired version (recoverable with `kv undelete`), so OpenBao no longer
/// serves it either.
pub async fn soft_delete(inner: &Inner, o: &Opts, version: &str) -> Result<(), BackendError> {
    let n = parse_version(version, o)?;
    let tok = inner.token();
    let c = inner.bao.vault(tok.token.expose(), o.namespace.as_deref());
    vaultrs::kv2::delete_versions(&c.0, &o.mount, &o.path, vec![n])
        .await
        .map_err(|e| from_vaultrs(&format!("{}/delete/{}", o.mount, o.path), e))
}
