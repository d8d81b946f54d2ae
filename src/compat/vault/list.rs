//! KV v2 LIST: `LIST /v1/<mount>/metadata/<dir>/` and `GET ...?list=true`, answered as
//! OpenBao answers, `{"data": {"keys": [...]}}`, sorted, with sub-folders ending in `/`.
//!
//! The keys are the mapped paths (see `config::VaultApiConfig::kv_paths`) whose secret the
//! caller's policy lets it read; the others are hidden, not refused: a caller learns nothing of
//! secrets it may not read, not even that they exist, and a folder shows only when something
//! readable lies under it. A directory with nothing visible is OpenBao's answer for an empty
//! path: 404 with `{"errors": []}`.

use super::{reply, spec_of, token, Fail, Note, Reply, VaultApi, VaultApiConfig};
use crate::api::peer::PeerIdentity;
use crate::compat::listen::clip;
use crate::engine::Catalog;
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use serde_json::{json, Value};
use std::collections::BTreeSet;

/// Go's `strconv.ParseBool`, which Vault applies to `list`.
fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// Whether a request to a KV mount is a LIST: the `LIST` method, or GET with `list=true`.
/// A `list` value Go cannot parse is Vault's 400.
pub(super) fn is_list(m: &Method, query: Option<&str>) -> Result<bool, Fail> {
    if m.as_str() == "LIST" {
        return Ok(true);
    }
    if m != Method::GET {
        return Ok(false);
    }
    match reply::query_param(query, "list").map_err(Fail::bad)? {
        None => Ok(false),
        Some(v) if v.is_empty() => Ok(false),
        Some(v) => parse_bool(&v).ok_or_else(|| {
            Fail::bad(format!(
                "invalid value for `list`: {:?} (true or false)",
                clip(&v, 32)
            ))
        }),
    }
}

/// The keys directly under `dir` (no trailing `/`; empty for the mount's root) that `caller`
/// may see.
fn visible_keys(
    cat: &Catalog,
    cfg: &VaultApiConfig,
    caller: &PeerIdentity,
    mount: &str,
    dir: &str,
) -> BTreeSet<String> {
    let names: Vec<&str> = cat.config.secrets.keys().map(String::as_str).collect();
    let policy = &cat.config.workload_policy;
    let mut keys = BTreeSet::new();
    for path in cfg.kv_paths(mount, &names) {
        let rest = if dir.is_empty() {
            path.as_str()
        } else {
            match path.strip_prefix(dir).and_then(|r| r.strip_prefix('/')) {
                Some(r) => r,
                None => continue,
            }
        };
        if rest.is_empty() {
            continue;
        }
        // What a read of this path would serve, and whether this caller may read it.
        let readable = cfg
            .kv(mount, &path)
            .and_then(|t| spec_of(cat, &t.secret))
            .is_some_and(|spec| policy.check_secret(caller, spec).is_ok());
        if !readable {
            continue;
        }
        let key = match rest.split_once('/') {
            Some((folder, _)) => format!("{folder}/"),
            None => rest.to_string(),
        };
        keys.insert(key);
    }
    keys
}

/// `LIST <mount>/metadata/<dir>` (`rest` is what follows `<mount>/`).
pub(super) async fn list(
    api: &VaultApi,
    caller: &PeerIdentity,
    req: &Request<Bytes>,
    cat: &Catalog,
    cfg: &VaultApiConfig,
    (mount, rest): (&str, &str),
    note: &mut Note,
) -> Result<Reply, Fail> {
    let session = token(req, note)?;
    api.broker.session_view(caller, &session).await?;
    // As OpenBao: LIST of `data/` is an unsupported operation; other paths are not KV v2's.
    let dir = match rest {
        "metadata" => "",
        r if r == "data" || r.starts_with("data/") => {
            return Err(Fail::new(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("unsupported operation: list {mount}/data; list {mount}/metadata/PATH"),
            ))
        }
        r => r.strip_prefix("metadata/").ok_or_else(|| {
            Fail::new(
                StatusCode::NOT_FOUND,
                format!(
                    "invalid path for a versioned K/V secrets engine: {:?}; list \
                     {mount}/metadata/PATH",
                    clip(rest, 128)
                ),
            )
        })?,
    };
    let keys = visible_keys(cat, cfg, caller, mount, dir);
    if keys.is_empty() {
        return Ok(reply::errors(StatusCode::NOT_FOUND, &[]));
    }
    let data = json!({ "keys": keys });
    Ok(reply::json(
        StatusCode::OK,
        &reply::envelope(data, None, Value::Null),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_flags_follow_go() {
        let get = Method::GET;
        let list = Method::from_bytes(b"LIST").unwrap();
        assert!(is_list(&list, None).unwrap());
        assert!(!is_list(&get, None).unwrap());
        assert!(is_list(&get, Some("list=true")).unwrap());
        assert!(is_list(&get, Some("a=1&list=1")).unwrap());
        assert!(!is_list(&get, Some("list=false")).unwrap());
        assert!(!is_list(&get, Some("list=")).unwrap());
        assert!(is_list(&get, Some("list=maybe")).is_err());
        assert!(!is_list(&Method::POST, Some("list=true")).unwrap());
    }
}
