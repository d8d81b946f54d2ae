//! Entry point: parse arguments and hand over to the command.
#![forbid(unsafe_code)]

fn main() {
    let code = sidecred::cli::main();
    std::process::exit(code);
}
