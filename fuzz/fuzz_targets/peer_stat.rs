//! Caller identity parsing (api/peer.rs): `stat_start_time` on arbitrary `/proc/PID/stat`
//! lines never panics, and for a well-formed line with any command name (spaces, parentheses)
//! it returns field 22.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sidecred::api::peer::stat_start_time;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let _ = stat_start_time(s);
    // The bytes as a command name inside an otherwise well-formed line (the kernel caps
    // comm at 16 bytes; the parser must not rely on that).
    if !s.contains('\n') {
        let line =
            format!("42 ({s}) S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 987654 20 21\n");
        assert_eq!(stat_start_time(&line), Some(987654), "{line:?}");
    }
});
