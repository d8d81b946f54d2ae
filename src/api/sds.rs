//! Envoy's Secret Discovery Service (state of the world) on the SPIFFE socket: the caller's
//! certificate under the CA's `sds_certificate` name and the trust bundle under `sds_validation`.
//! A stream re-sends whenever the leaf is renewed, the signing CA changes or the bundle changes.

use super::envoy::config::core::v3::{data_source::Specifier, DataSource};
use super::envoy::extensions::transport_sockets::tls::v3::{
    secret, CertificateValidationContext, Secret, TlsCertificate,
};
use super::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use super::envoy::service::secret::v3::secret_discovery_service_server::SecretDiscoveryService;
use super::error::{status, ApiError};
use super::spiffe::{workload, LeafSlot, Workload};
use crate::backend::ca::{issuer, View};
use crate::engine::Engine;
use prost::Message;
use std::collections::BTreeSet;
use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

pub const SECRET_TYPE: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";

/// Most resource names one request may carry.
const MAX_NAMES: usize = 16;

impl fmt::Debug for DataSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match &self.specifier {
            Some(Specifier::Filename(p)) => format!("filename {p}"),
            Some(Specifier::InlineBytes(b)) => format!("[{} bytes]", b.len()),
            Some(Specifier::InlineString(s)) => format!("[{} chars]", s.len()),
            Some(Specifier::EnvironmentVariable(v)) => format!("env {v}"),
            None => "none".into(),
        };
        write!(f, "DataSource({what})")
    }
}

fn inline(bytes: Vec<u8>) -> Option<DataSource> {
    Some(DataSource {
        specifier: Some(Specifier::InlineBytes(bytes)),
    })
}

fn pack(s: Secret) -> prost_types::Any {
    prost_types::Any {
        type_url: SECRET_TYPE.into(),
        value: s.encode_to_vec(),
    }
}

/// The requested resources this CA knows, in request order.
async fn resources(
    engine: &Engine,
    w: &Workload,
    slot: &mut LeafSlot,
    view: &View,
    names: &[String],
) -> Result<Vec<prost_types::Any>, Status> {
    let s = &w.ca.settings;
    let mut out = Vec::new();
    for name in names {
        if *name == s.sds_certificate {
            let issued = slot.current(engine, w, view, "sds_certificate").await?;
            let mut key = issuer::pem_block("PRIVATE KEY", issued.leaf.key.expose());
            out.push(pack(Secret {
                name: name.clone(),
                r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
                    certificate_chain: inline(issued.chain_pem().into_bytes()),
                    private_key: inline(key.as_bytes().to_vec()),
                })),
            }));
            zeroize::Zeroize::zeroize(&mut key);
        } else if *name == s.sds_validation {
            out.push(pack(Secret {
                name: name.clone(),
                r#type: Some(secret::Type::ValidationContext(
                    CertificateValidationContext {
                        trusted_ca: inline(issuer::pem_certs(&view.bundle).into_bytes()),
                        crl: None,
                    },
                )),
            }));
        } else {
            tracing::debug!(resource = %name, "SDS: unknown resource name requested");
        }
    }
    Ok(out)
}

fn check_request(r: &DiscoveryRequest) -> Result<(), Status> {
    if !r.type_url.is_empty() && r.type_url != SECRET_TYPE {
        return Err(status(ApiError::InvalidArgument(format!(
            "type_url `{}` is not served here (only {SECRET_TYPE})",
            r.type_url
        ))));
    }
    if r.resource_names.len() > MAX_NAMES || r.resource_names.iter().any(|n| n.len() > 256) {
        return Err(status(ApiError::InvalidArgument(
            "resource_names: at most 16, each at most 256 bytes".into(),
        )));
    }
    Ok(())
}

enum Event {
    Request(DiscoveryRequest),
    Changed,
    Due,
}

pub struct SdsService {
    pub engine: Arc<Engine>,
}

type Out = Pin<Box<dyn Stream<Item = Result<DiscoveryResponse, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl SecretDiscoveryService for SdsService {
    type StreamSecretsStream = Out;

    async fn stream_secrets(
        &self,
        req: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamSecretsStream>, Status> {
        let caller = super::caller(&req)?;
        let engine = self.engine.clone();
        let mut w = workload(&engine, caller.clone(), "sds").await?;
        let mut inbound = req.into_inner();
        let stream = async_stream::try_stream! {
            let mut names: Vec<String> = Vec::new();
            let mut slot = LeafSlot::default();
            let mut rx = w.ca.subscribe();
            let mut version = 0u64;
            let mut last: Option<(BTreeSet<String>, Vec<prost_types::Any>)> = None;
            loop {
                let view = w.ca.view(engine.now());
                let pause = slot.sleep_for(&view, engine.now());
                let ev = tokio::select! {
                    msg = inbound.next() => match msg {
                        Some(Ok(r)) => Event::Request(r),
                        Some(Err(e)) => {
                            tracing::debug!(error = %e, "SDS stream ended by the client");
                            break;
                        }
                        None => break,
                    },
                    r = rx.changed() => if r.is_err() { break } else { Event::Changed },
                    _ = tokio::time::sleep(pause) => Event::Due,
                };
                match ev {
                    Event::Request(r) => {
                        check_request(&r)?;
                        if let Some(e) = &r.error_detail {
                            tracing::warn!(code = e.code, message = %e.message, "SDS: Envoy rejected an update");
                        }
                        names = r.resource_names;
                    }
                    Event::Changed => {}
                    Event::Due => {
                        // Re-read policy and config: a reload may move the caller.
                        let next = workload(&engine, caller.clone(), "sds").await?;
                        if !Arc::ptr_eq(&next.ca, &w.ca) || next.spiffe_id != w.spiffe_id {
                            rx = next.ca.subscribe();
                            slot = LeafSlot::default();
                        }
                        w = next;
                    }
                }
                if names.is_empty() {
                    continue;
                }
                let view = w.ca.view(engine.now());
                let res = resources(&engine, &w, &mut slot, &view, &names).await?;
                let set: BTreeSet<String> = names.iter().cloned().collect();
                if last.as_ref().is_some_and(|(s, r)| *s == set && *r == res) {
                    continue;
                }
                version += 1;
                last = Some((set, res.clone()));
                yield DiscoveryResponse {
                    version_info: version.to_string(),
                    resources: res,
                    type_url: SECRET_TYPE.into(),
                    nonce: format!("{version}-{}", hex::encode(rand::random::<[u8; 4]>())),
                };
            }
        };
        Ok(Response::new(Box::pin(stream)))
    }

    async fn fetch_secrets(
        &self,
        req: Request<DiscoveryRequest>,
    ) -> Result<Response<DiscoveryResponse>, Status> {
        let caller = super::caller(&req)?;
        let w = workload(&self.engine, caller, "sds").await?;
        let r = req.into_inner();
        check_request(&r)?;
        let view = w.ca.view(self.engine.now());
        let mut slot = LeafSlot::default();
        let res = resources(&self.engine, &w, &mut slot, &view, &r.resource_names).await?;
        Ok(Response::new(DiscoveryResponse {
            version_info: "1".into(),
            resources: res,
            type_url: SECRET_TYPE.into(),
            nonce: hex::encode(rand::random::<[u8; 4]>()),
        }))
    }
}
