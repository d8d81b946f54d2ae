//! Vault's wire shapes: the response envelope, `{"errors": [...]}` with Vault's status codes,
//! and the strict reading of request paths and query strings.

use crate::api::ApiError;
use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use serde_json::{json, Value};

/// A JSON response as Vault sends it (never cached by intermediaries).
pub fn json(status: StatusCode, v: &Value) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec(v).unwrap_or_default();
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::CACHE_CONTROL, "no-store")
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_default()
}

/// Vault's error shape.
pub fn errors(status: StatusCode, messages: &[&str]) -> Response<Full<Bytes>> {
    json(status, &json!({ "errors": messages }))
}

pub fn no_content(status: StatusCode) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(http::header::CACHE_CONTROL, "no-store")
        .body(Full::new(Bytes::new()))
        .unwrap_or_default()
}

/// A lease as Vault reports it on a response.
pub struct LeaseInfo<'a> {
    pub id: &'a str,
    pub duration: u64,
    pub renewable: bool,
}

/// The envelope every Vault answer carries around `data` (or `auth`).
pub fn envelope(data: Value, lease: Option<LeaseInfo<'_>>, auth: Value) -> Value {
    let (id, duration, renewable) =
        lease.map_or(("", 0, false), |l| (l.id, l.duration, l.renewable));
    json!({
        "request_id": request_id(),
        "lease_id": id,
        "renewable": renewable,
        "lease_duration": duration,
        "data": data,
        "wrap_info": null,
        "warnings": null,
        "auth": auth,
    })
}

/// A random request id in UUID form, as Vault's.
pub fn request_id() -> String {
    let b: [u8; 16] = rand::random();
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// The HTTP status Vault would use for each kind of sidecred error. A revoked or expired
/// session is a dead token: 403, as Vault answers a revoked token.
pub fn status_of(e: &ApiError) -> StatusCode {
    match e {
        ApiError::InvalidArgument(_) | ApiError::Precondition(_) | ApiError::Cancelled(_) => {
            StatusCode::BAD_REQUEST
        }
        ApiError::NotFound(_) => StatusCode::NOT_FOUND,
        ApiError::Denied(_) | ApiError::SessionRevoked(_) | ApiError::SessionExpired(_) => {
            StatusCode::FORBIDDEN
        }
        ApiError::Unavailable(_) | ApiError::DeadlineExceeded(_) => StatusCode::SERVICE_UNAVAILABLE,
        ApiError::Exhausted(_) => StatusCode::TOO_MANY_REQUESTS,
        ApiError::Unimplemented(_) => StatusCode::METHOD_NOT_ALLOWED,
        ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        // ApiError is non-exhaustive.
        #[allow(unreachable_patterns)]
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// Longest request path accepted (after `/v1/`), decoded.
pub const MAX_PATH: usize = 512;

/// Percent-decodes a request path and refuses what no secret path holds: NUL and other control
/// characters, `.` and `..` segments, empty segments, invalid UTF-8, and over-long paths.
pub fn decode_path(raw: &str) -> Result<String, String> {
    let bytes = percent_decode(raw).ok_or("malformed percent-encoding in the path")?;
    let s = String::from_utf8(bytes).map_err(|_| "the path is not valid UTF-8")?;
    if s.len() > MAX_PATH {
        return Err(format!(
            "the path is {} bytes; the limit is {MAX_PATH}",
            s.len()
        ));
    }
    if s.contains('\0') {
        return Err("the path contains a NUL byte".into());
    }
    if s.chars().any(char::is_control) {
        return Err("the path contains a control character".into());
    }
    let trimmed = s.strip_suffix('/').unwrap_or(&s);
    if trimmed
        .split('/')
        .any(|seg| seg.is_empty() || seg == "." || seg == "..")
    {
        return Err("the path has an empty, `.` or `..` segment".into());
    }
    Ok(trimmed.to_string())
}

fn percent_decode(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3)?;
            let v = u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?;
            out.push(v);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Some(out)
}

/// One query parameter, decoded (`+` is a space); None when absent. A malformed query is an
/// error, not an absent parameter.
pub fn query_param(query: Option<&str>, name: &str) -> Result<Option<String>, String> {
    let Some(q) = query else { return Ok(None) };
    for pair in q.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if k == name {
            let v = percent_decode(&v.replace('+', " "))
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(|| format!("malformed query parameter `{name}`"))?;
            return Ok(Some(v));
        }
    }
    Ok(None)
}

/// Vault's `version` parameter: a non-negative integer; 0 (or absent) is the current version.
pub fn version_param(query: Option<&str>) -> Result<Option<String>, String> {
    match query_param(query, "version")? {
        None => Ok(None),
        Some(v) => match v.parse::<u64>() {
            Ok(0) => Ok(None),
            Ok(n) => Ok(Some(n.to_string())),
            Err(_) => Err(format!(
                "Field validation failed: error converting input for field \"version\": \
                 '{}' cannot parse value as 'int'",
                crate::compat::listen::clip(&v, 32).escape_default()
            )),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_decode_strictly() {
        assert_eq!(
            decode_path("secret/data/app/db").unwrap(),
            "secret/data/app/db"
        );
        assert_eq!(
            decode_path("secret/data/a%2Db/").unwrap(),
            "secret/data/a-b"
        );
        for bad in [
            "secret/data/../x",
            "secret/data/%2e%2e/x",
            "secret//x",
            "secret/data/a%00b",
            "secret/data/a%0ab",
            "secret/data/a%zz",
            "secret/data/a%2",
            "secret/data/%ff",
            "./x",
        ] {
            assert!(decode_path(bad).is_err(), "{bad}");
        }
        assert!(decode_path(&"a/".repeat(300)).is_err());
    }

    #[test]
    fn versions_follow_vault() {
        assert_eq!(version_param(None).unwrap(), None);
        assert_eq!(version_param(Some("version=0")).unwrap(), None);
        assert_eq!(
            version_param(Some("a=1&version=3")).unwrap(),
            Some("3".into())
        );
        assert!(version_param(Some("version=abc"))
            .unwrap_err()
            .contains("cannot parse"));
        assert!(version_param(Some("version=-1")).is_err());
        assert!(version_param(Some("version=%zz")).is_err());
    }

    #[test]
    fn request_ids_look_like_uuids() {
        let id = request_id();
        assert_eq!(id.len(), 36);
        assert_eq!(id.matches('-').count(), 4);
    }
}
