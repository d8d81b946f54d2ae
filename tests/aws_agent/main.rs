//! The AWS-Secrets-Manager-Agent-compatible endpoint through the real binary: differential
//! tests against the real agent (both fed by moto), caller identity over loopback TCP and the
//! Unix socket, sessions, cache, rotation grace and revocation, and bad input.

#[allow(dead_code)]
#[path = "../aws/support.rs"]
mod aws_support;
#[path = "../common/mod.rs"]
mod common;
#[path = "../common/moto.rs"]
mod moto;

mod bad_input;
mod diff;
mod identity;
mod refresh;
mod sessions;
mod support;
