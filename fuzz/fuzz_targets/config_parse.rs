//! Config::parse over arbitrary text: never panics, and every error says where (line) or what (key).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sidecred::config::Config;
use std::path::Path;

fn env(name: &str) -> Option<String> {
    match name {
        "HOST" => Some("127.0.0.1".into()),
        "EMPTY" => Some(String::new()),
        "QUOTE" => Some("a\"b'c\nd".into()),
        _ => None,
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::parse(Path::new("/fuzz/sidecred.toml"), text, &env) {
        Ok(cfg) => {
            // Whatever validated is usable: names are valid, durations sane.
            for name in cfg.secrets.keys() {
                assert!(sidecred::api::validate_name(name).is_ok(), "{name:?}");
            }
            assert!(!cfg.server.backend_timeout.is_zero());
        }
        Err(e) => {
            assert!(
                e.line > 0 || !e.key.is_empty(),
                "error without position or key: {e}"
            );
            assert!(!e.message.is_empty(), "empty message: {e:?}");
            let _ = e.to_string();
        }
    }
});
