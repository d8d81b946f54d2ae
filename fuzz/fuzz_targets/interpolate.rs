//! `${VAR}` interpolation: never panics, keeps line numbers, and an environment value can never
//! change the document's structure (same TOML shape with a plain value and a hostile one).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sidecred::config::interpolate;

const HOSTILE: &str = "v\"\\\t\u{1}#]=,[x] = 1 \"\"\" \\u0041 ${Y}";
const NEWLINE: &str = "v\n[evil]\nk = 1";

/// The document with every string and key name erased: what interpolation must not change.
fn shape(v: &toml::Value) -> String {
    match v {
        toml::Value::String(_) => "s".into(),
        toml::Value::Table(t) => {
            let mut kids: Vec<String> = t.values().map(shape).collect();
            kids.sort();
            format!("{{{}}}", kids.join(","))
        }
        toml::Value::Array(a) => {
            format!("[{}]", a.iter().map(shape).collect::<Vec<_>>().join(","))
        }
        other => other.type_str().into(),
    }
}

fn parse_shape(text: &str) -> Option<String> {
    text.parse::<toml::Table>()
        .ok()
        .map(|t| shape(&toml::Value::Table(t)))
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let plain = interpolate(text, &|_| Some("v".into()));
    let hostile = interpolate(text, &|n| {
        Some(if n == "NL" { NEWLINE } else { HOSTILE }.into())
    });
    let unset = interpolate(text, &|_| None);
    for out in [&plain, &hostile, &unset] {
        match out {
            Ok(o) => assert_eq!(
                o.matches('\n').count(),
                text.matches('\n').count(),
                "line numbers moved"
            ),
            Err(e) => {
                assert!(e.line >= 1 && e.column >= 1, "{e:?}");
                assert!(e.line <= text.matches('\n').count() + 1, "{e:?}");
            }
        }
    }
    if !text.contains('$') {
        assert_eq!(plain.as_deref().ok(), Some(text));
    }
    if let (Ok(p), Ok(h)) = (&plain, &hostile) {
        if let (Some(a), Some(b)) = (parse_shape(p), parse_shape(h)) {
            assert_eq!(a, b, "a value changed the document:\n{p}\n---\n{h}");
        }
    }
});
