//! One proxied request: rate limits, the rule, the values (through the Broker's `get_secret`,
//! one call id per request), injection, the upstream exchange on a kept-alive connection, the
//! scrubbed response, then the leases released and one audit line.

use super::conn::Conn;
use super::inject;
use super::redact::{scrub_headers, Scrubbed};
use super::tokens::Entry;
use super::upstream::{self, UpError};
use super::{answer, status_of, Line, Response};
use crate::api::pb;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use sidecred_core::spec::Zone;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use super::upstream::Sender;

/// Upstream connections kept alive for one client connection, by (tls, host, port, cert).
#[derive(Default)]
pub struct Pool(tokio::sync::Mutex<HashMap<(bool, String, u16, String), Sender>>);

/// Hop-by-hop headers (RFC 9110 7.6.1) and the proxy's own: never forwarded.
const HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-authorization",
    "proxy-authenticate",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

fn strip_hop(h: &mut http::HeaderMap) {
    if let Some(c) = h
        .get(http::header::CONNECTION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
    {
        for name in c.split(',') {
            h.remove(name.trim());
        }
    }
    for n in HOP {
        h.remove(n);
    }
}

struct Got {
    name: String,
    version: String,
    lease: String,
    value: zeroize::Zeroizing<Vec<u8>>,
}

pub async fn forward(
    c: &Arc<Conn>,
    e: &Arc<Entry>,
    tls: bool,
    host: &str,
    port: u16,
    req: http::Request<Incoming>,
) -> Response {
    let t0 = Instant::now();
    let p = &c.p;
    if let Err(r) = p.limit(e, host) {
        return *r;
    }
    let rule = p
        .cfg
        .rules
        .iter()
        .find(|r| r.matches(tls, host, port, req.method(), req.uri().path()));
    let zone = rule.map(|r| r.zone).unwrap_or(p.cfg.unmatched_zone);
    let refuse = |status: u16, why: String| async move {
        c.refused(Some(e), status, &why, &req_line(host, port))
            .await;
        answer(status, why)
    };
    if rule.is_none() && !tls && !p.cfg.tunnel_unmatched {
        return refuse(
            403,
            format!("no rule names {host}:{port} and unmatched destinations are refused"),
        )
        .await;
    }
    if zone == Zone::Restricted && rule.and_then(|r| r.secret.as_ref()).is_none() {
        return refuse(
            403,
            format!("{host} is in the restricted zone and no rule grants a secret for it"),
        )
        .await;
    }
    let (mut parts, body) = req.into_parts();
    let names = match inject::placeholders(&parts.headers) {
        Ok(n) => n,
        Err((s, why)) => return refuse(s, why).await,
    };
    let call = format!("prx-{}", p.seq.fetch_add(1, Ordering::Relaxed));
    let mut got: Vec<Got> = Vec::new();
    let mut wanted: Vec<&str> = Vec::new();
    if let Some(r) = rule {
        if let Some(s) = &r.secret {
            if r.wire != super::config::Wire::None {
                wanted.push(s);
            }
        }
        if let Some(cc) = &r.client_cert {
            wanted.push(cc);
        }
    }
    for n in &names {
        if !rule.is_some_and(|r| r.placeholders.contains(n)) {
            return refuse(
                403,
                format!("placeholder `{n}` is not allowed for {host}:{port}"),
            )
            .await;
        }
        wanted.push(n);
    }
    let cat = p.engine.catalog();
    for name in wanted {
        if got.iter().any(|g| g.name == name) {
            continue;
        }
        // Call-scoped secrets get one call (and lease) per request, released when the response
        // ends; the others are the session's own lease, shared by its requests.
        let per_call = cat
            .secret(name)
            .is_ok_and(|s| s.scope == sidecred_core::spec::Scope::Call);
        let ask = pb::GetSecretRequest {
            name: name.into(),
            session_id: e.session.to_string(),
            call_id: if per_call {
                call.clone()
            } else {
                String::new()
            },
            ..Default::default()
        };
        match p.broker.get_secret(&c.peer, ask).await {
            Ok(r) => got.push(Got {
                name: name.into(),
                version: r.version.clone(),
                lease: if per_call {
                    r.lease_id.clone()
                } else {
                    String::new()
                },
                value: zeroize::Zeroizing::new(r.value.clone()),
            }),
            Err(err) => {
                release(c, e, &got).await;
                return refuse(status_of(&err), format!("secret `{name}`: {err}")).await;
            }
        }
    }
    let value_of = |n: &str| got.iter().find(|g| g.name == n).map(|g| g.value.as_slice());
    strip_hop(&mut parts.headers);
    let pq = parts
        .uri
        .path_and_query()
        .map(|x| x.as_str())
        .unwrap_or("/")
        .to_string();
    parts.uri = match pq.parse() {
        Ok(u) => u,
        Err(_) => return refuse(400, "bad request target".into()).await,
    };
    // The origin sees the destination the rule matched, whatever Host the client wrote.
    let h = if port == if tls { 443 } else { 80 } {
        host.to_string()
    } else {
        format!("{host}:{port}")
    };
    match http::HeaderValue::from_str(&h) {
        Ok(v) => {
            parts.headers.insert(http::header::HOST, v);
        }
        Err(_) => return refuse(400, "bad destination host".into()).await,
    }
    parts.version = http::Version::HTTP_11;
    let mut needles = inject::Needles::default();
    if let Some(r) = rule {
        let main = r.secret.as_deref().and_then(value_of);
        let ph: HashMap<String, Vec<u8>> = names
            .iter()
            .filter_map(|n| value_of(n).map(|v| (n.clone(), v.to_vec())))
            .collect();
        let applied = inject::apply(&mut parts, r, main, &ph);
        drop(ph);
        match applied {
            Ok(n) => needles = n,
            Err((s, why)) => {
                release(c, e, &got).await;
                return refuse(s, why).await;
            }
        }
    }
    if !needles.0.is_empty() {
        // The scrubber reads plain bytes: ask the origin for an uncompressed answer.
        parts.headers.remove(http::header::ACCEPT_ENCODING);
    }
    drop(cat);
    let cert = rule.and_then(|r| r.client_cert.as_deref()).unwrap_or("");
    let key = (tls, host.to_string(), port, cert.to_string());
    let sender = {
        let cached = c.pool.0.lock().await.remove(&key);
        let reused = match cached {
            Some(mut s) if !s.is_closed() => s.ready().await.is_ok().then_some(s),
            _ => None,
        };
        match reused {
            Some(s) => Ok(s),
            None => connect(c, rule, zone, tls, host, port, value_of(cert)).await,
        }
    };
    let mut sender = match sender {
        Ok(s) => s,
        Err(u) => {
            release(c, e, &got).await;
            return refuse(u.status, u.why).await;
        }
    };
    let method = parts.method.clone();
    if sender.is_h2() {
        // HTTP/2 carries the destination in :scheme and :authority, not in Host.
        let scheme = if tls { "https" } else { "http" };
        let now = parts
            .uri
            .path_and_query()
            .map(|x| x.as_str())
            .unwrap_or("/");
        let mut full = format!("{scheme}://{h}{now}");
        let parsed = full.parse();
        zeroize::Zeroize::zeroize(&mut full);
        match parsed {
            Ok(u) => parts.uri = u,
            Err(_) => return refuse(400, "bad request target".into()).await,
        }
        parts.headers.remove(http::header::HOST);
        parts.version = http::Version::HTTP_2;
    }
    let resp = sender.send(http::Request::from_parts(parts, body)).await;
    c.pool.0.lock().await.insert(key, sender);
    let resp = match resp {
        Ok(r) => r,
        Err(err) => {
            release(c, e, &got).await;
            return refuse(502, format!("upstream request failed: {err}")).await;
        }
    };
    let (mut rp, rb) = resp.into_parts();
    strip_hop(&mut rp.headers);
    scrub_headers(&mut rp.headers, &needles.0);
    // Redaction may change the length: a small body with a declared length is scrubbed whole
    // and sent with its new length; any other goes out chunked, scrubbed as it streams.
    let declared = rp
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let whole = !needles.0.is_empty() && declared.is_some_and(|n| n <= WHOLE);
    if !needles.0.is_empty() {
        rp.headers.remove(http::header::CONTENT_LENGTH);
    }
    let status = rp.status.as_u16();
    let line = Line {
        outcome: "ok",
        session: Some(e.session.clone()),
        rule: rule.map(|r| r.name.clone()),
        secrets: got
            .iter()
            .map(|g| g.name.as_str())
            .collect::<Vec<_>>()
            .join(","),
        versions: got
            .iter()
            .map(|g| g.version.as_str())
            .collect::<Vec<_>>()
            .join(","),
        detail: format!("method={method} host={host} port={port} status={status}"),
    };
    let leases: Vec<String> = got
        .iter()
        .map(|g| g.lease.clone())
        .filter(|l| !l.is_empty())
        .collect();
    drop(got);
    let (c2, e2) = (c.clone(), e.clone());
    let on_end = Box::new(move |bytes: u64, complete: bool| {
        let mut line = line;
        line.detail = format!(
            "{} bytes={bytes}{} latency_us={}",
            line.detail,
            if complete { "" } else { " incomplete=true" },
            t0.elapsed().as_micros()
        );
        tokio::spawn(async move {
            for l in leases {
                let r = pb::ReleaseLeaseRequest {
                    lease_id: l,
                    session_id: e2.session.to_string(),
                };
                let _ = c2.p.broker.release_lease(&c2.peer, r).await;
            }
            c2.p.audit(&c2.peer, line).await;
        });
    });
    let body = Scrubbed::new(rb, Arc::new(needles), on_end);
    if whole {
        let limit = std::time::Duration::from_secs(60);
        return match tokio::time::timeout(limit, body.collect()).await {
            Ok(Ok(b)) => {
                let b = b.to_bytes();
                rp.headers.insert(
                    http::header::CONTENT_LENGTH,
                    http::HeaderValue::from(b.len()),
                );
                let full = http_body_util::Full::new(b).map_err(|never| match never {});
                http::Response::from_parts(rp, full.boxed())
            }
            _ => answer(502, "the origin's response body broke off or took too long"),
        };
    }
    let body = body.map_err(|e| Box::new(e) as super::BoxError);
    http::Response::from_parts(rp, body.boxed())
}

/// Responses up to this size (with a declared length) are scrubbed whole.
const WHOLE: u64 = 1 << 20;

async fn release(c: &Conn, e: &Entry, got: &[Got]) {
    for g in got.iter().filter(|g| !g.lease.is_empty()) {
        let r = pb::ReleaseLeaseRequest {
            lease_id: g.lease.clone(),
            session_id: e.session.to_string(),
        };
        let _ = c.p.broker.release_lease(&c.peer, r).await;
    }
}

/// A stand-in request naming only the destination, for audit lines of refusals.
fn req_line(host: &str, port: u16) -> http::Request<()> {
    let mut r = http::Request::new(());
    if let Ok(u) = format!("//{host}:{port}/").parse::<http::Uri>() {
        *r.uri_mut() = u;
    }
    r
}

async fn connect(
    c: &Conn,
    rule: Option<&super::config::Rule>,
    zone: Zone,
    tls: bool,
    host: &str,
    port: u16,
    cert: Option<&[u8]>,
) -> Result<Sender, UpError> {
    let p = &c.p;
    let route = p.route(zone);
    let allowed = rule.map(|r| r.addresses.as_slice()).unwrap_or(&[]);
    let s = upstream::open(host, port, &route, allowed, p.cfg.connect_timeout).await?;
    let io = if tls {
        let cfg = match cert {
            Some(pem) => super::tls::client_config(p.roots.clone(), Some(pem))
                .map_err(|why| UpError { status: 502, why })?,
            None => p.plain_tls.clone(),
        };
        upstream::tls(s, host, cfg, p.cfg.connect_timeout).await?
    } else {
        (Box::new(s) as Box<dyn upstream::Io>, false)
    };
    upstream::handshake(io.0, io.1).await
}
