//! The `:authority` rewriting shim (api/h2fix.rs) on arbitrary bytes: a header block rewritten
//! is never longer than the original (so the HPACK tables of client and server stay in step),
//! rewriting is stable, and the stream adapter never panics on any client byte stream.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sidecred::api::h2fix::{rewrite_block, AuthorityFix};
use std::sync::OnceLock;
use tokio::io::AsyncReadExt;

fn rt() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
    })
}

fuzz_target!(|data: &[u8]| {
    if let Some(out) = rewrite_block(data) {
        assert!(out.len() <= data.len(), "rewritten block grew");
        let again = rewrite_block(&out).expect("a rewritten block parses");
        assert_eq!(again, out, "rewriting is stable");
    }
    // The same bytes as a connection: preface then frames (read to the end or to an error).
    let mut fix = AuthorityFix::new(data);
    let mut sink = Vec::new();
    let _ = rt().block_on(fix.read_to_end(&mut sink));
});
