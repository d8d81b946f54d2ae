//! Puts values on the wire: a header from a template, basic auth from a JSON secret's fields,
//! a query parameter, and `{{sidecred:NAME}}` placeholders in request headers. Values that
//! cannot go into a header (CR, LF, NUL) are refused, never sent. Every form a value takes on
//! the wire is returned as a needle for the response scrubber.

use super::config::{Rule, Wire};
use base64::Engine as _;
use http::{HeaderValue, Uri};
use std::collections::HashMap;
use zeroize::Zeroize;

pub const OPEN: &str = "{{sidecred:";
pub const CLOSE: &str = "}}";

/// Byte strings to cut out of responses; wiped when dropped.
#[derive(Default)]
pub struct Needles(pub Vec<Vec<u8>>);

impl std::fmt::Debug for Needles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Needles({} values, redacted)", self.0.len())
    }
}

impl Drop for Needles {
    fn drop(&mut self) {
        for n in &mut self.0 {
            n.zeroize();
        }
    }
}

impl Needles {
    fn add(&mut self, v: &[u8]) {
        if v.len() >= 3 && !self.0.iter().any(|n| n == v) {
            self.0.push(v.to_vec());
        }
    }
}

/// A refusal: status and a message naming no value.
pub type Refusal = (u16, String);

/// Names of the secrets whose placeholders appear in the request's headers.
pub fn placeholders(h: &http::HeaderMap) -> Result<Vec<String>, Refusal> {
    let mut out = Vec::new();
    for v in h.values() {
        let mut s = v.as_bytes();
        while let Some(i) = find(s, OPEN.as_bytes()) {
            let rest = &s[i + OPEN.len()..];
            let end = find(rest, CLOSE.as_bytes())
                .ok_or((400, "unterminated {{sidecred:...}} placeholder".to_string()))?;
            let name = std::str::from_utf8(&rest[..end])
                .map_err(|_| (400, "placeholder name is not UTF-8".to_string()))?;
            crate::api::validate_name(name)
                .map_err(|m| (400, format!("placeholder `{}`: {m}", name.escape_debug())))?;
            if !out.iter().any(|o| o == name) {
                out.push(name.to_string());
            }
            s = &rest[end + CLOSE.len()..];
        }
    }
    Ok(out)
}

fn find(hay: &[u8], n: &[u8]) -> Option<usize> {
    hay.windows(n.len()).position(|w| w == n)
}

fn header_safe(name: &str, v: &[u8]) -> Result<(), Refusal> {
    if v.iter().any(|b| matches!(b, b'\r' | b'\n' | 0)) {
        return Err((
            400,
            format!("the value of `{name}` contains CR, LF or NUL and cannot go into a header; not sent"),
        ));
    }
    Ok(())
}

fn header_value(mut b: Vec<u8>) -> Result<HeaderValue, Refusal> {
    let r = HeaderValue::from_bytes(&b)
        .map(|mut v| {
            v.set_sensitive(true);
            v
        })
        .map_err(|_| {
            (
                400,
                "an injected header value is not a valid header value; not sent".to_string(),
            )
        });
    b.zeroize();
    r
}

/// Applies the rule's wire form (with `value`, the rule's secret) and replaces placeholders
/// (`values` by secret name). Returns what the scrubber must look for.
pub fn apply(
    parts: &mut http::request::Parts,
    rule: &Rule,
    value: Option<&[u8]>,
    values: &HashMap<String, Vec<u8>>,
) -> Result<Needles, Refusal> {
    let mut needles = Needles::default();
    let secret = rule.secret.as_deref().unwrap_or("");
    // Placeholders first, so a template cannot smuggle one in through a value.
    if !values.is_empty() {
        for (name, v) in values {
            header_safe(name, v)?;
            needles.add(v);
        }
        for hv in parts.headers.values_mut() {
            let b = hv.as_bytes();
            if find(b, OPEN.as_bytes()).is_none() {
                continue;
            }
            let mut out = Vec::with_capacity(b.len());
            let mut s = b;
            while let Some(i) = find(s, OPEN.as_bytes()) {
                out.extend_from_slice(&s[..i]);
                let rest = &s[i + OPEN.len()..];
                let end = find(rest, CLOSE.as_bytes()).unwrap_or(rest.len());
                let name = String::from_utf8_lossy(&rest[..end]);
                let v = values.get(name.as_ref()).ok_or((
                    403,
                    format!("placeholder `{name}` is not allowed for this destination"),
                ))?;
                out.extend_from_slice(v);
                s = rest.get(end + CLOSE.len()..).unwrap_or(&[]);
            }
            out.extend_from_slice(s);
            *hv = header_value(out)?;
        }
    }
    let Some(value) = value else {
        return Ok(needles);
    };
    match &rule.wire {
        Wire::None => {}
        Wire::Header { name, template } => {
            header_safe(secret, value)?;
            needles.add(value);
            let (a, b) = template.split_once("{value}").unwrap_or((template, ""));
            let mut out = Vec::with_capacity(a.len() + value.len() + b.len());
            out.extend_from_slice(a.as_bytes());
            out.extend_from_slice(value);
            out.extend_from_slice(b.as_bytes());
            needles.add(&out);
            parts.headers.insert(name.clone(), header_value(out)?);
        }
        Wire::Basic { user, pass } => {
            let json: serde_json::Value = serde_json::from_slice(value).map_err(|_| {
                (
                    502,
                    format!("secret `{secret}` is not a JSON object; basic auth needs one"),
                )
            })?;
            let field = |f: &str| {
                json.get(f)
                    .and_then(|v| v.as_str())
                    .map(str::to_owned)
                    .ok_or((
                        502,
                        format!("secret `{secret}` has no string field `{f}` for basic auth"),
                    ))
            };
            let (mut u, mut p) = (field(user)?, field(pass)?);
            header_safe(secret, p.as_bytes())?;
            header_safe(secret, u.as_bytes())?;
            needles.add(p.as_bytes());
            needles.add(value);
            let mut up = format!("{u}:{p}");
            let mut b64 = base64::engine::general_purpose::STANDARD.encode(up.as_bytes());
            needles.add(b64.as_bytes());
            let hv = header_value(format!("Basic {b64}").into_bytes())?;
            parts.headers.insert(http::header::AUTHORIZATION, hv);
            for s in [&mut u, &mut p, &mut up, &mut b64] {
                s.zeroize();
            }
        }
        Wire::Query(q) => {
            needles.add(value);
            let mut enc = form_urlencoded::Serializer::new(String::new());
            enc.append_pair(q, &String::from_utf8_lossy(value));
            let mut pair = enc.finish();
            if let Some((_, v)) = pair.split_once('=') {
                needles.add(v.as_bytes());
            }
            let pq = parts
                .uri
                .path_and_query()
                .map(|p| p.as_str())
                .unwrap_or("/");
            let mut joined = if pq.contains('?') {
                format!("{pq}&{pair}")
            } else {
                format!("{pq}?{pair}")
            };
            let mut up = parts.uri.clone().into_parts();
            up.path_and_query = Some(joined.parse().map_err(|_| {
                (
                    400,
                    "the request path cannot carry the query parameter".to_string(),
                )
            })?);
            parts.uri = Uri::from_parts(up).map_err(|_| (400, "bad request URI".to_string()))?;
            pair.zeroize();
            joined.zeroize();
        }
    }
    Ok(needles)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sidecred_core::spec::Zone;

    fn rule(wire: Wire) -> Rule {
        Rule {
            name: "r".into(),
            host: "h".into(),
            port: 443,
            tls: true,
            path_prefix: None,
            methods: vec![],
            secret: Some("tools/a".into()),
            wire,
            placeholders: vec!["tools/p".into()],
            client_cert: None,
            zone: Zone::Internal,
            addresses: vec![],
        }
    }

    fn parts(uri: &str, h: &[(&str, &str)]) -> http::request::Parts {
        let mut b = http::Request::builder().uri(uri);
        for (k, v) in h {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn wire_forms_table() {
        let none = HashMap::new();
        let mut p = parts("/x", &[("authorization", "client-supplied")]);
        let tmpl = Wire::Header {
            name: http::header::AUTHORIZATION,
            template: "Bearer {value}".into(),
        };
        let n = apply(&mut p, &rule(tmpl.clone()), Some(b"tok123"), &none).unwrap();
        assert_eq!(p.headers["authorization"], "Bearer tok123");
        assert!(n.0.contains(&b"tok123".to_vec()));

        let mut p = parts("/x?a=1", &[]);
        apply(
            &mut p,
            &rule(Wire::Query("key".into())),
            Some(b"v a&"),
            &none,
        )
        .unwrap();
        assert_eq!(p.uri.to_string(), "/x?a=1&key=v+a%26");

        let mut p = parts("/x", &[]);
        let basic = Wire::Basic {
            user: "u".into(),
            pass: "p".into(),
        };
        apply(
            &mut p,
            &rule(basic.clone()),
            Some(br#"{"u":"bob","p":"pw1"}"#),
            &none,
        )
        .unwrap();
        assert_eq!(p.headers["authorization"], "Basic Ym9iOnB3MQ==");
        assert_eq!(
            apply(&mut parts("/", &[]), &rule(basic), Some(b"nope"), &none)
                .unwrap_err()
                .0,
            502
        );

        let err = apply(
            &mut parts("/", &[]),
            &rule(tmpl),
            Some(b"a\r\nX-Evil: 1"),
            &none,
        )
        .unwrap_err();
        assert_eq!(err.0, 400);
        assert!(!err.1.contains("Evil"));
    }

    #[test]
    fn placeholders_table() {
        let h = parts(
            "/",
            &[
                ("x-api", "k={{sidecred:tools/p}};"),
                ("x-b", "{{sidecred:tools/q}}"),
            ],
        )
        .headers;
        assert_eq!(placeholders(&h).unwrap(), vec!["tools/p", "tools/q"]);
        assert_eq!(
            placeholders(&parts("/", &[("x", "{{sidecred:a")]).headers)
                .unwrap_err()
                .0,
            400
        );
        assert_eq!(
            placeholders(&parts("/", &[("x", "{{sidecred:../x}}")]).headers)
                .unwrap_err()
                .0,
            400
        );

        let mut p = parts("/", &[("x-api", "k={{sidecred:tools/p}};")]);
        let vals = HashMap::from([("tools/p".to_string(), b"pv1".to_vec())]);
        let r = rule(Wire::None);
        apply(&mut p, &r, None, &vals).unwrap();
        assert_eq!(p.headers["x-api"], "k=pv1;");
        let bad = HashMap::from([("tools/p".to_string(), b"a\nb".to_vec())]);
        let mut p = parts("/", &[("x-api", "{{sidecred:tools/p}}")]);
        assert_eq!(apply(&mut p, &r, None, &bad).unwrap_err().0, 400);
    }
}
