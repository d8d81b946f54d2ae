//! validate_name / validate_id: never panic, and what they accept is safe to use as a path part.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sidecred::api::{validate_id, validate_name};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if validate_name(s).is_ok() {
        assert!(!s.is_empty() && s.len() <= 256, "length {}", s.len());
        assert!(!s.contains('\0'), "NUL accepted");
        assert!(s.is_ascii(), "non-ASCII accepted: {s:?}");
        assert!(!s.starts_with('/'), "absolute accepted: {s:?}");
        for seg in s.split('/') {
            assert!(
                !seg.is_empty() && seg != "." && seg != "..",
                "bad segment in {s:?}"
            );
        }
        // The same name joined under a root never leaves it.
        let root = std::path::Path::new("/root");
        let joined = root.join(s);
        assert!(joined.starts_with(root));
        assert!(joined
            .components()
            .all(|c| !matches!(c, std::path::Component::ParentDir)));
    }
    if validate_id("id", s).is_ok() {
        assert!(!s.is_empty() && s.len() <= 128);
        assert!(!s.contains('\0') && !s.contains('/'));
        assert!(s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b)));
    }
});
