//! gRPC services on Unix sockets: the workload `Broker`, the `Admin` API, health and reflection.

pub mod admin;
pub mod broker;
pub mod error;
pub mod layer;
pub mod peer;
mod redact;
pub mod server;

pub use error::{validate_id, validate_name, ApiError};

/// Generated protobuf and gRPC code.
pub mod pb {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("sidecred.v1");
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("sidecred_descriptor");
}

use peer::PeerIdentity;
use tonic::{Request, Status};

/// The caller of a request, as the kernel reported it at accept.
pub fn caller<T>(req: &Request<T>) -> Result<PeerIdentity, Status> {
    req.extensions()
        .get::<PeerIdentity>()
        .cloned()
        .ok_or_else(|| ApiError::Internal("connection has no peer identity".into()).into())
}
