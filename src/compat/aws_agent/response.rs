//! Answers in the agent's shapes: the GetSecretValue JSON (`ARN`, `Name`, `VersionId`,
//! `SecretString` or `SecretBinary`, `VersionStages`, `CreatedDate`) and its error body
//! `{"__type": ..., "message": ...}`. Bodies carry names and versions, never a value except
//! in the one success body.

use crate::api::ApiError;
use crate::backend::VersionInfo;
use base64::Engine as _;
use serde::Serialize;

/// The AWS message for a secret that does not exist (what the agent relays from the service).
pub const NO_SUCH_SECRET: &str = "Secrets Manager can't find the specified secret.";

/// An error answer: status and JSON body.
pub fn error(status: u16, kind: &str, message: &str) -> (u16, String) {
    let body = serde_json::json!({ "__type": kind, "message": message }).to_string();
    (status, body)
}

/// sidecred's error kinds as the agent's status and exception names. Not found is 404, as the
/// agent answers when its service does; a denial or revocation is 403, which says at once that
/// retrying will not help.
pub fn from_api(e: &ApiError) -> (u16, String) {
    let (status, kind) = match e {
        ApiError::NotFound(_) => (404, "ResourceNotFoundException"),
        ApiError::InvalidArgument(_) => (400, "InvalidParameterException"),
        ApiError::Precondition(_) => (400, "InvalidRequestException"),
        ApiError::Denied(_) | ApiError::SessionRevoked(_) => (403, "AccessDeniedException"),
        ApiError::SessionExpired(_) => (403, "AccessDeniedException"),
        ApiError::Exhausted(_) => (429, "LimitExceededException"),
        ApiError::Unavailable(_) => (502, "ConnectionError"),
        ApiError::DeadlineExceeded(_) => (504, "TimeoutError"),
        ApiError::Internal(_) | ApiError::Cancelled(_) | ApiError::Unimplemented(_) => {
            return (500, r#"{"__type":"InternalFailure"}"#.into())
        }
    };
    error(status, kind, &e.to_string())
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Body<'a> {
    #[serde(rename = "ARN")]
    arn: Option<&'a str>,
    name: &'a str,
    version_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    secret_string: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    secret_binary: Option<String>,
    version_stages: &'a [&'a str],
    created_date: Option<String>,
}

/// Seconds since the epoch with their fraction, as a string: the agent's `CreatedDate`.
pub fn created_date((secs, nanos): (i64, u32)) -> String {
    let f = secs as f64 + f64::from(nanos) / 1e9;
    format!("{f}")
}

/// The success body for one version. A value stored as binary, or not UTF-8, is SecretBinary.
pub fn secret(
    name: &str,
    version: &str,
    value: &[u8],
    stages: &[&str],
    info: Option<&VersionInfo>,
) -> String {
    let text = match info {
        Some(i) if i.binary => None,
        _ => std::str::from_utf8(value).ok(),
    };
    let body = Body {
        arn: info.and_then(|i| i.arn.as_deref()),
        name: info.and_then(|i| i.name.as_deref()).unwrap_or(name),
        version_id: version,
        secret_string: text,
        secret_binary: text
            .is_none()
            .then(|| base64::engine::general_purpose::STANDARD.encode(value)),
        version_stages: stages,
        created_date: info.and_then(|i| i.created).map(created_date),
    };
    // Serializing plain strings and slices cannot fail.
    serde_json::to_string(&body).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_body_table() {
        let info = VersionInfo {
            arn: Some("arn:aws:secretsmanager:us-east-1:123456789012:secret:a-AbCdEf".into()),
            name: Some("a".into()),
            created: Some((1_700_000_000, 500_000_000)),
            stages: vec!["AWSCURRENT".into()],
            binary: false,
        };
        let b = secret("a", "v1", b"s3cr3t", &["AWSCURRENT"], Some(&info));
        assert_eq!(
            b,
            r#"{"ARN":"arn:aws:secretsmanager:us-east-1:123456789012:secret:a-AbCdEf","Name":"a","VersionId":"v1","SecretString":"s3cr3t","VersionStages":["AWSCURRENT"],"CreatedDate":"1700000000.5"}"#
        );
        let bin = VersionInfo {
            binary: true,
            ..info
        };
        let b = secret("a", "v1", b"hi", &[], Some(&bin));
        assert!(
            b.contains(r#""SecretBinary":"aGk=""#) && !b.contains("SecretString"),
            "{b}"
        );
        let b = secret("local/x", "3", &[0xff, 0], &["AWSPREVIOUS"], None);
        assert_eq!(
            b,
            r#"{"ARN":null,"Name":"local/x","VersionId":"3","SecretBinary":"/wA=","VersionStages":["AWSPREVIOUS"],"CreatedDate":null}"#
        );
    }

    #[test]
    fn error_table() {
        for (e, status, kind) in [
            (
                ApiError::NotFound("x".into()),
                404,
                "ResourceNotFoundException",
            ),
            (ApiError::Denied("x".into()), 403, "AccessDeniedException"),
            (
                ApiError::SessionRevoked("x".into()),
                403,
                "AccessDeniedException",
            ),
            (ApiError::Unavailable("x".into()), 502, "ConnectionError"),
            (
                ApiError::Exhausted("x".into()),
                429,
                "LimitExceededException",
            ),
        ] {
            let (s, body) = from_api(&e);
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert_eq!((s, v["__type"].as_str().unwrap()), (status, kind));
        }
        assert_eq!(
            from_api(&ApiError::Internal("boom".into())).1,
            r#"{"__type":"InternalFailure"}"#
        );
    }
}
