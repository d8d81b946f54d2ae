//! gRPC services on Unix sockets: the workload `Broker`, the `Admin` API, health and reflection,
//! and on the SPIFFE socket the SPIFFE Workload API and Envoy SDS.

pub mod admin;
pub mod admission;
pub mod broker;
mod certs;
pub mod counted;
pub mod error;
pub mod h2fix;
pub mod h2serve;
pub mod layer;
pub mod limits;
pub mod peer;
pub mod sds;
pub mod server;
pub mod sockdir;
pub mod spiffe;
pub mod tcp_peer;

pub use error::{status, validate_id, validate_name, ApiError};

/// sidecred's wire types (the `sidecred-proto` crate, with server stubs).
pub mod pb {
    pub use sidecred_proto::v1::*;
}

/// The SPIFFE Workload API (the public spec's proto has no package).
/// The SPIFFE Workload API's and Envoy SDS's encoded descriptors (with their imports), for
/// reflection on the SPIFFE socket.
pub const SPIFFE_FILE_DESCRIPTOR_SET: &[u8] =
    tonic::include_file_descriptor_set!("spiffe_descriptor");

pub mod spiffe_pb {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("_");
}

/// Trimmed, wire-compatible Envoy xDS types for SDS, in Envoy's package layout.
#[allow(clippy::all, missing_docs)]
pub mod envoy {
    pub mod config {
        pub mod core {
            pub mod v3 {
                tonic::include_proto!("envoy.config.core.v3");
            }
        }
    }
    pub mod service {
        pub mod discovery {
            pub mod v3 {
                tonic::include_proto!("envoy.service.discovery.v3");
            }
        }
        pub mod secret {
            pub mod v3 {
                tonic::include_proto!("envoy.service.secret.v3");
            }
        }
    }
    pub mod extensions {
        pub mod transport_sockets {
            pub mod tls {
                pub mod v3 {
                    tonic::include_proto!("envoy.extensions.transport_sockets.tls.v3");
                }
            }
        }
    }
}

use peer::PeerIdentity;
use tonic::{Request, Status};

/// The caller of a request, as the kernel reported it at accept, provided the process that
/// connected is still the one it named (see [`PeerIdentity::still_bound`]).
pub fn caller<T>(req: &Request<T>) -> Result<PeerIdentity, Status> {
    let id = req
        .extensions()
        .get::<PeerIdentity>()
        .cloned()
        .ok_or_else(|| status(ApiError::Internal("connection has no peer identity".into())))?;
    id.still_bound().map_err(|why| {
        tracing::info!(caller = %id, reason = %why, "identity no longer bound; refused");
        status(ApiError::Denied(why))
    })?;
    Ok(id)
}
