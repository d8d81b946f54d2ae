//! gRPC services on Unix sockets: the workload `Broker`, the `Admin` API, health and reflection,
//! and on the SPIFFE socket the SPIFFE Workload API and Envoy SDS.

/// Writes of a stream wrapper go straight to its `inner` stream, vectored writes included:
/// without those, h2 writes a response's frame heads and its DATA payload with separate
/// `write` calls (one syscall each, and a client wake-up for each partial answer).
macro_rules! forward_async_write {
    ($ty:ty $(, $s:ident)?) => {
        impl$(<$s: tokio::io::AsyncWrite + Unpin>)? tokio::io::AsyncWrite for $ty {
            fn poll_write(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                buf: &[u8],
            ) -> std::task::Poll<std::io::Result<usize>> {
                tokio::io::AsyncWrite::poll_write(std::pin::Pin::new(&mut self.inner), cx, buf)
            }
            fn poll_flush(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                tokio::io::AsyncWrite::poll_flush(std::pin::Pin::new(&mut self.inner), cx)
            }
            fn poll_shutdown(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                tokio::io::AsyncWrite::poll_shutdown(std::pin::Pin::new(&mut self.inner), cx)
            }
            fn poll_write_vectored(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                bufs: &[std::io::IoSlice<'_>],
            ) -> std::task::Poll<std::io::Result<usize>> {
                tokio::io::AsyncWrite::poll_write_vectored(std::pin::Pin::new(&mut self.inner), cx, bufs)
            }
            fn is_write_vectored(&self) -> bool {
                tokio::io::AsyncWrite::is_write_vectored(&self.inner)
            }
        }
    };
}
pub(crate) use forward_async_write;

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
