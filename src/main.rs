//! Entry point: parse arguments and hand over to the command.
#![forbid(unsafe_code)]

/// Every freed heap block is zeroed: buffers that carried a value leave no residue.
#[global_allocator]
static ALLOC: sidecred::harden::ZeroizingAlloc = sidecred::harden::ZeroizingAlloc;

fn main() {
    sidecred::harden::install_page_locker();
    sidecred::panic_hook::install();
    let code = sidecred::cli::main();
    std::process::exit(code);
}
