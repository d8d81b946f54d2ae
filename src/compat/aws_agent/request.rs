//! What the AWS Secrets Manager Agent accepts, checked in the agent's own order: the SSRF
//! header first (a forwarded request is refused before anything else), then the method, then
//! the route and its query. Status codes and plain-text messages are the agent's, so a client
//! written against the agent sees the same answer from sidecred.

use http::{HeaderMap, Method};
use subtle::ConstantTimeEq;

/// A refusal before any secret is looked at: status and the agent's plain-text body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reject {
    pub status: u16,
    pub body: String,
}

fn reject(status: u16, body: impl Into<String>) -> Reject {
    Reject {
        status,
        body: body.into(),
    }
}

/// One GetSecretValue-style read, as the agent parses it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Query {
    pub secret_id: String,
    pub version_id: Option<String>,
    pub version_stage: Option<String>,
    /// Read from the backend, not the cache (the agent's `refreshNow`).
    pub refresh_now: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// `/ping`: "healthy", no token needed.
    Ping,
    Get(Query),
}

/// The SSRF check: no `X-Forwarded-For`, and one of `headers` carrying exactly `token`.
/// Only the first value of a repeated header counts, as in the agent.
pub fn check_token(headers: &HeaderMap, names: &[String], token: &[u8]) -> Result<(), Reject> {
    if headers.contains_key("x-forwarded-for") {
        return Err(reject(400, "Forwarded"));
    }
    let ok = names.iter().any(|n| {
        headers
            .get(n.as_str())
            .is_some_and(|v| bool::from(v.as_bytes().ct_eq(token)))
    });
    if ok {
        Ok(())
    } else {
        Err(reject(403, "Bad Token"))
    }
}

/// Routes a request (after identity and before policy): token, method, path, query.
pub fn route(
    method: &Method,
    path: &str,
    query: Option<&str>,
    headers: &HeaderMap,
    ssrf_headers: &[String],
    token: &[u8],
    prefix: &str,
) -> Result<Route, Reject> {
    if path != "/ping" {
        check_token(headers, ssrf_headers, token)?;
    }
    if method != Method::GET {
        return Err(reject(405, "Not allowed"));
    }
    match path {
        "/ping" => Ok(Route::Ping),
        "/secretsmanager/get" => parse_query(query.unwrap_or(""), None).map(Route::Get),
        p if p.starts_with(prefix) => {
            let id = decode_path(&p[prefix.len()..])?;
            if id.is_empty() {
                return Err(reject(400, "missing secret ID"));
            }
            parse_query(query.unwrap_or(""), Some(id)).map(Route::Get)
        }
        _ => Err(reject(404, "Not found")),
    }
}

/// Percent-decodes the secret id of a path-style request; it must stay UTF-8.
fn decode_path(raw: &str) -> Result<String, Reject> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| reject(400, "invalid percent-encoding in the secret ID"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| reject(400, "the secret ID is not UTF-8"))
}

fn parse_refresh(v: &str) -> Result<bool, Reject> {
    match v.to_lowercase().as_str() {
        "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        _ => Err(reject(400, "invalid refreshNow value")),
    }
}

/// The query string, form-decoded. A later duplicate wins and an unknown parameter is refused,
/// as in the agent. `roleArn` (the agent's cross-account AssumeRole) is refused: sidecred's
/// backends hold their own credentials.
fn parse_query(q: &str, path_id: Option<String>) -> Result<Query, Reject> {
    let by_path = path_id.is_some();
    let mut out = Query {
        secret_id: path_id.unwrap_or_default(),
        ..Query::default()
    };
    for (k, v) in form_urlencoded::parse(q.as_bytes()) {
        match k.as_ref() {
            "secretId" if !by_path => out.secret_id = v.into_owned(),
            "versionId" => out.version_id = Some(v.into_owned()),
            "versionStage" => out.version_stage = Some(v.into_owned()),
            "refreshNow" => out.refresh_now = parse_refresh(&v)?,
            "roleArn" => {
                return Err(reject(
                    400,
                    "roleArn is not supported: sidecred reads with its backend's own credentials",
                ))
            }
            p => return Err(reject(400, format!("unknown parameter: {p}"))),
        }
    }
    if out.secret_id.is_empty() {
        return Err(reject(400, "missing parameter secretId"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Vec<String> {
        vec![
            "X-Aws-Parameters-Secrets-Token".into(),
            "X-Vault-Token".into(),
        ]
    }

    fn run(method: Method, uri: &str, hdrs: &[(&str, &str)]) -> Result<Route, Reject> {
        let mut h = HeaderMap::new();
        for (k, v) in hdrs {
            h.append(
                http::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        let (path, query) = match uri.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (uri, None),
        };
        route(&method, path, query, &h, &names(), b"tok", "/v1/")
    }

    const T: (&str, &str) = ("x-aws-parameters-secrets-token", "tok");

    #[test]
    fn token_and_method_table() {
        let get = |id: &str| {
            Ok(Route::Get(Query {
                secret_id: id.into(),
                ..Query::default()
            }))
        };
        let rej = |s: u16, b: &str| Err(reject(s, b));
        type Case<'a> = (
            Method,
            &'a str,
            Vec<(&'a str, &'a str)>,
            Result<Route, Reject>,
        );
        let cases: Vec<Case> = vec![
            (Method::GET, "/ping", vec![], Ok(Route::Ping)),
            (Method::POST, "/ping", vec![], rej(405, "Not allowed")),
            (
                Method::GET,
                "/secretsmanager/get?secretId=a",
                vec![T],
                get("a"),
            ),
            (
                Method::GET,
                "/secretsmanager/get?secretId=a",
                vec![],
                rej(403, "Bad Token"),
            ),
            (
                Method::GET,
                "/secretsmanager/get?secretId=a",
                vec![("X-Aws-Parameters-Secrets-Token", "tok ")],
                rej(403, "Bad Token"),
            ),
            (
                Method::GET,
                "/secretsmanager/get?secretId=a",
                vec![("X-Aws-Parameters-Secrets-Token", "TOK")],
                rej(403, "Bad Token"),
            ),
            (
                Method::GET,
                "/secretsmanager/get?secretId=a",
                vec![("X-Vault-Token", "tok")],
                get("a"),
            ),
            (
                Method::GET,
                "/secretsmanager/get?secretId=a",
                vec![T, ("X-Forwarded-For", "1.2.3.4")],
                rej(400, "Forwarded"),
            ),
            (
                Method::POST,
                "/secretsmanager/get?secretId=a",
                vec![T],
                rej(405, "Not allowed"),
            ),
            (
                Method::POST,
                "/secretsmanager/get?secretId=a",
                vec![],
                rej(403, "Bad Token"),
            ),
            (Method::GET, "/other", vec![T], rej(404, "Not found")),
            (Method::GET, "/other", vec![], rej(403, "Bad Token")),
        ];
        for (m, uri, h, want) in cases {
            assert_eq!(run(m.clone(), uri, &h), want, "{m} {uri} {h:?}");
        }
    }

    #[test]
    fn repeated_token_header_first_counts() {
        let mut h = HeaderMap::new();
        h.append("x-aws-parameters-secrets-token", "bad".parse().unwrap());
        h.append("x-aws-parameters-secrets-token", "tok".parse().unwrap());
        assert!(check_token(&h, &names(), b"tok").is_err());
    }

    #[test]
    fn query_table() {
        let q = |uri: &str| run(Method::GET, uri, &[T]);
        let Ok(Route::Get(got)) =
            q("/secretsmanager/get?secretId=a%2Fb&versionStage=AWSPREVIOUS&refreshNow=TRUE")
        else {
            panic!()
        };
        assert_eq!(got.secret_id, "a/b");
        assert_eq!(got.version_stage.as_deref(), Some("AWSPREVIOUS"));
        assert!(got.refresh_now);
        let Ok(Route::Get(got)) = q("/v1/tools/github%2Dtoken?versionId=v1") else {
            panic!()
        };
        assert_eq!(
            (got.secret_id.as_str(), got.version_id.as_deref()),
            ("tools/github-token", Some("v1"))
        );
        for (uri, status, body) in [
            ("/secretsmanager/get", 400, "missing parameter secretId"),
            (
                "/secretsmanager/get?secretId=",
                400,
                "missing parameter secretId",
            ),
            (
                "/secretsmanager/get?secretId=a&abc=1",
                400,
                "unknown parameter: abc",
            ),
            (
                "/secretsmanager/get?secretId=a&refreshNow=2",
                400,
                "invalid refreshNow value",
            ),
            ("/v1/a?secretId=b", 400, "unknown parameter: secretId"),
            ("/v1/", 400, "missing secret ID"),
            ("/v1/a%zz", 400, "invalid percent-encoding in the secret ID"),
            ("/v1/a%ff", 400, "the secret ID is not UTF-8"),
        ] {
            assert_eq!(q(uri), Err(reject(status, body)), "{uri}");
        }
        assert_eq!(
            q("/secretsmanager/get?secretId=a&roleArn=arn:aws:iam::123456789012:role/x")
                .unwrap_err()
                .status,
            400
        );
    }
}
