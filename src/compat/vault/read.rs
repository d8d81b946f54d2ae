//! Reads: KV v2 data and metadata, and leased reads, each one GetSecret under the caller's
//! session (the token), shaped as Vault shapes them.

use super::config::Target;
use super::reply::{self, LeaseInfo};
use super::{spec_of, token, Fail, Note, Reply, VaultApi, VaultApiConfig};
use crate::api::pb;
use crate::api::peer::PeerIdentity;
use crate::compat::listen::clip;
use crate::engine::Catalog;
use bytes::Bytes;
use http::{Request, StatusCode};
use serde_json::{json, Map, Value};
use sidecred_core::spec::Scope;
use std::time::SystemTime;

/// A version as Vault numbers it (KV versions are integers); other backends' ids as text.
fn version_value(v: &str) -> Value {
    v.parse::<u64>().map_or_else(|_| json!(v), |n| json!(n))
}

/// The `data` object of a value: an explicit `field` holds the value as text; else a value
/// that is a JSON object is that object; else the secret's `key` (or `value`) holds it.
fn data_object(
    secret: &str,
    value: &[u8],
    field: Option<&str>,
    key: Option<&str>,
) -> Result<Value, Fail> {
    if field.is_none() {
        if let Ok(Value::Object(m)) = serde_json::from_slice::<Value>(value) {
            return Ok(Value::Object(m));
        }
    }
    let text = std::str::from_utf8(value).map_err(|_| {
        Fail::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("secret `{secret}` holds binary data; Vault's API carries text"),
        )
    })?;
    let mut m = Map::new();
    m.insert(
        field.or(key).unwrap_or("value").to_string(),
        Value::String(text.to_string()),
    );
    Ok(Value::Object(m))
}

async fn get(
    api: &VaultApi,
    caller: &PeerIdentity,
    session: &str,
    name: &str,
    call_id: String,
    version: Option<String>,
) -> Result<pb::GetSecretResponse, Fail> {
    Ok(api
        .broker
        .get_secret(
            caller,
            pb::GetSecretRequest {
                name: name.to_string(),
                session_id: session.to_string(),
                call_id,
                version: version.unwrap_or_default(),
            },
        )
        .await?)
}

/// `GET <mount>/data/<path>[?version=N]` and `GET <mount>/metadata/<path>`.
pub(super) async fn kv(
    api: &VaultApi,
    caller: &PeerIdentity,
    req: &Request<Bytes>,
    cat: &Catalog,
    cfg: &VaultApiConfig,
    (mount, rest): (&str, &str),
    note: &mut Note,
) -> Result<Reply, Fail> {
    let (meta, path) = if let Some(p) = rest.strip_prefix("data/") {
        (false, p)
    } else if let Some(p) = rest.strip_prefix("metadata/") {
        (true, p)
    } else {
        return Err(Fail::new(
            StatusCode::NOT_FOUND,
            format!(
                "invalid path for a versioned K/V secrets engine: {:?}; read {mount}/data/PATH \
                 or {mount}/metadata/PATH",
                clip(rest, 128)
            ),
        ));
    };
    let version = reply::version_param(req.uri().query()).map_err(Fail::bad)?;
    let t = cfg.kv(mount, path).ok_or_else(|| {
        Fail::new(
            StatusCode::NOT_FOUND,
            format!(
                "no secret at {mount}/{}/{}: no [[vault_api.kv]] mapping names it",
                if meta { "metadata" } else { "data" },
                clip(path, 128)
            ),
        )
    })?;
    note.secret = Some(t.secret.clone());
    let session = token(req, note)?;
    let version = if meta { None } else { version };
    let g = get(api, caller, &session, &t.secret, String::new(), version).await?;
    let now = crate::audit::rfc3339(SystemTime::now());
    if meta {
        let mut versions = Map::new();
        for v in std::iter::once(&g.version).chain(g.previous.as_ref().map(|p| &p.version)) {
            versions.insert(
                v.clone(),
                json!({"created_time": now, "deletion_time": "", "destroyed": false}),
            );
        }
        let data = json!({
            "cas_required": false,
            "created_time": now,
            "current_metadata_version": 0,
            "current_version": version_value(&g.version),
            "custom_metadata": null,
            "delete_version_after": "0s",
            "max_versions": 0,
            "metadata_cas_required": false,
            "oldest_version": 0,
            "updated_time": now,
            "versions": versions,
        });
        return Ok(reply::json(
            StatusCode::OK,
            &reply::envelope(data, None, Value::Null),
        ));
    }
    let key = spec_of(cat, &t.secret).and_then(|s| s.key.as_deref());
    let data = data_object(&t.secret, &g.value, t.field.as_deref(), key)?;
    let body = json!({
        "data": data,
        "metadata": {
            "created_time": now,
            "custom_metadata": null,
            "deletion_time": "",
            "destroyed": false,
            "version": version_value(&g.version),
        },
    });
    Ok(reply::json(
        StatusCode::OK,
        &reply::envelope(body, None, Value::Null),
    ))
}

/// `GET <path>` of a leased mapping: the credential under a lease, `<path>/<lease id>` as
/// Vault writes lease ids. A call-scoped secret gets a call of its own per read, so each read
/// is a fresh credential that revoking its lease ends, as Vault's dynamic secrets.
pub(super) async fn leased(
    api: &VaultApi,
    caller: &PeerIdentity,
    req: &Request<Bytes>,
    cat: &Catalog,
    path: &str,
    t: Target,
    note: &mut Note,
) -> Result<Reply, Fail> {
    note.secret = Some(t.secret.clone());
    let session = token(req, note)?;
    let spec = spec_of(cat, &t.secret);
    let call_id = match spec.map(|s| s.scope) {
        Some(Scope::Call) => crate::session::new_id("vault"),
        _ => String::new(),
    };
    let g = get(api, caller, &session, &t.secret, call_id, None).await?;
    note.lease = Some(g.lease_id.clone());
    let key = spec.and_then(|s| s.key.as_deref());
    let data = data_object(&t.secret, &g.value, t.field.as_deref(), key)?;
    let left =
        u64::try_from(g.expires_at - crate::clock::unix_secs(api.engine().now())).unwrap_or(0);
    let lease_id = format!("{path}/{}", g.lease_id);
    let info = LeaseInfo {
        id: &lease_id,
        duration: left,
        renewable: true,
    };
    Ok(reply::json(
        StatusCode::OK,
        &reply::envelope(data, Some(info), Value::Null),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_objects() {
        let obj = data_object("s", br#"{"a":"1","b":2}"#, None, None).unwrap();
        assert_eq!(obj, json!({"a": "1", "b": 2}));
        assert_eq!(
            data_object("s", b"tok", None, Some("token")).unwrap(),
            json!({"token": "tok"})
        );
        assert_eq!(
            data_object("s", b"tok", None, None).unwrap(),
            json!({"value": "tok"})
        );
        assert_eq!(
            data_object("s", br#"{"a":1}"#, Some("f"), None).unwrap(),
            json!({"f": "{\"a\":1}"})
        );
        assert!(data_object("s", &[0xff, 0xfe], None, None).is_err());
    }
}
