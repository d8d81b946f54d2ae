//! The credential-injection proxy through the real binary, with real peers only: curl, Python
//! `requests` and `httpx` configured through proxy environment variables and a CA bundle, nginx
//! origins (TLS, client certificates, an echo endpoint), a squid egress proxy, and attackers
//! (no token, another session's token, another uid, revoked sessions, malformed input).

#[path = "../common/mod.rs"]
mod common;

mod attacks;
mod clients;
mod revoke;
mod rotation;
mod support;
mod unix;
