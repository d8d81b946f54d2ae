//! HTTP/1.1 endpoints that speak other products' APIs (a Vault-compatible one, an AWS Secrets
//! Manager Agent-compatible one), so existing clients switch to sidecred unchanged. Each API is
//! one [`listen::Endpoint`]; the listener gives all of them the same caller identity,
//! admission, limits and audit as the gRPC sockets, and every request goes through the
//! `Broker` handlers (api/broker.rs): one policy, one session and lease model.

pub mod aws_agent;
pub mod listen;

pub use listen::{Endpoint, HttpLimits, Listener};
