//! The proxy's own request handling on arbitrary input (src/proxy/): the `Proxy-Authorization`
//! parser, placeholder discovery and substitution, every wire form of injection, and the
//! response scrubber. Never a panic; a header that comes out is a valid header (no CR/LF/NUL
//! smuggled in through a value or a placeholder); a scrubbed body holds no value any more.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sidecred::config::Zone;
use sidecred::proxy::config::{Rule, Wire};
use sidecred::proxy::{inject, redact, tokens};
use std::collections::HashMap;
use std::time::{Duration, SystemTime};

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

fuzz_target!(|data: &[u8]| {
    // Layout: first byte picks the wire form; then "value\0header-bytes\0body".
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let mut parts = rest.splitn(3, |b| *b == 0);
    let value = parts.next().unwrap_or_default();
    let headers = parts.next().unwrap_or_default();
    let body = parts.next().unwrap_or_default();

    let mut req = http::Request::builder().uri("/x?a=1");
    for line in headers.split(|b| *b == b'\n') {
        let Some(i) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let (Ok(n), Ok(v)) = (
            http::HeaderName::from_bytes(&line[..i]),
            http::HeaderValue::from_bytes(&line[i + 1..]),
        ) else {
            continue;
        };
        req = req.header(n, v);
    }
    let Ok(req) = req.body(()) else { return };
    let (mut p, ()) = req.into_parts();

    // Proxy credentials: any header value parses to a refusal or a session, never a panic.
    let t = tokens::Tokens::default();
    let _ = t.insert("ses_fuzz", 1, SystemTime::now() + Duration::from_secs(60));
    for v in p.headers.values() {
        if let Err(r) = t.check(Some(v), 1, SystemTime::now()) {
            assert!(r.status == 407 || r.status == 403);
        }
        // Another uid never gets through, whatever the header says.
        assert!(t.check(Some(v), 2, SystemTime::now()).is_err());
    }

    let wire = match pick % 4 {
        0 => Wire::None,
        1 => Wire::Header {
            name: http::header::AUTHORIZATION,
            template: "Bearer {value}".into(),
        },
        2 => Wire::Basic {
            user: "u".into(),
            pass: "p".into(),
        },
        _ => Wire::Query("key".into()),
    };
    let names = match inject::placeholders(&p.headers) {
        Ok(n) => n,
        Err((s, _)) => {
            assert!((400..500).contains(&s));
            return;
        }
    };
    let values: HashMap<String, Vec<u8>> = names
        .iter()
        .filter(|n| *n == "tools/p")
        .map(|n| (n.clone(), value.to_vec()))
        .collect();
    match inject::apply(&mut p, &rule(wire), Some(value), &values) {
        Ok(needles) => {
            for v in p.headers.values() {
                assert!(!v.as_bytes().iter().any(|b| matches!(b, b'\r' | b'\n' | 0)));
            }
            let mut out = body.to_vec();
            redact::scrub(&mut out, &needles.0);
            for n in needles.0.iter().filter(|n| !n.is_empty()) {
                // A needle inside the marker itself cannot be cut out: skip those.
                if redact::MARK.windows(n.len()).any(|w| w == &n[..]) {
                    continue;
                }
                assert!(
                    !out.windows(n.len()).any(|w| w == &n[..]),
                    "a value survived scrubbing"
                );
            }
        }
        Err((s, _)) => assert!((400..600).contains(&s)),
    }
});
