//! sidecred's wire types: the `Broker` service (workload socket) and the `Admin` service (admin
//! socket), generated from `proto/sidecred/v1`. Client stubs always; server stubs with the
//! `server` feature.
#![forbid(unsafe_code)]

mod redact;

/// Generated protobuf and gRPC code for `sidecred.v1`.
pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("sidecred.v1");
    /// The encoded descriptors, for gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("sidecred_descriptor");
}
