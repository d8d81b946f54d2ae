//! The SPIFFE Workload API on the SPIFFE socket: X.509-SVIDs (streamed, renewed at about half
//! their life and on CA rotation), bundles, JWT-SVIDs and their validation. Callers are
//! identified by the kernel; the first workload rule matching them with a `spiffe_id` says who
//! they are.

use super::error::{status, ApiError};
use super::peer::PeerIdentity;
use super::spiffe_pb::{self as wpb, spiffe_workload_api_server::SpiffeWorkloadApi};
use crate::backend::ca::{timing, Authority, Issued, View};
use crate::engine::Engine;
use crate::policy::{dns, SanPolicy};
use std::collections::HashMap;
use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

/// How often a stream re-checks policy and config even when nothing changed.
const RECHECK: Duration = Duration::from_secs(2);

impl fmt::Debug for wpb::X509svid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("X509SVID")
            .field("spiffe_id", &self.spiffe_id)
            .field(
                "x509_svid",
                &format_args!("[{} bytes]", self.x509_svid.len()),
            )
            .field("x509_svid_key", &"[REDACTED]")
            .finish()
    }
}

impl fmt::Debug for wpb::Jwtsvid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JWTSVID")
            .field("spiffe_id", &self.spiffe_id)
            .field("svid", &"[REDACTED]")
            .finish()
    }
}

/// Who a caller is to the CA: its SPIFFE ID, the SANs its certificates carry, and the CA.
pub(crate) struct Workload {
    pub caller: PeerIdentity,
    pub spiffe_id: String,
    /// Literal DNS names and IPs from the rule, put in every streamed certificate.
    pub dns: Vec<String>,
    pub ips: Vec<std::net::IpAddr>,
    pub ca: Arc<Authority>,
}

/// Resolves the caller against the current config; denials are audited.
pub(crate) async fn workload(
    engine: &Engine,
    caller: PeerIdentity,
    api: &str,
) -> Result<Workload, Status> {
    let cat = engine.catalog();
    let ca = cat
        .config
        .server
        .spiffe_ca
        .as_ref()
        .and_then(|n| cat.backends.get(n))
        .and_then(|b| b.authority())
        .ok_or_else(|| {
            status(ApiError::Unavailable(
                "no certificate authority is configured".into(),
            ))
        })?;
    let rule = engine
        .spiffe_rule(
            &cat,
            &caller,
            api,
            &ca.trust_domain_id(),
            &ca.settings.trust_domain,
        )
        .await
        .map_err(status)?;
    let id = rule.spiffe_id.clone().unwrap_or_default();
    let SanPolicy { dns, ips, .. } = rule.sans.clone();
    Ok(Workload {
        caller,
        spiffe_id: id,
        // Only the rule's literal host names; patterns and wildcards are for CSRs.
        dns: dns.into_iter().filter(|d| dns::is_literal(d)).collect(),
        ips,
        ca,
    })
}

/// One stream's current leaf, re-issued at about half its life, when the signing CA changes,
/// or when its serial lands on the deny list. A revoked certificate is never sent again.
#[derive(Default)]
pub(crate) struct LeafSlot {
    issued: Option<Issued>,
    renew_at: Option<SystemTime>,
}

impl LeafSlot {
    pub async fn current(
        &mut self,
        engine: &Engine,
        w: &Workload,
        view: &View,
        api: &str,
    ) -> Result<&Issued, Status> {
        let now = engine.now();
        let stale = match (&self.issued, self.renew_at) {
            (Some(i), Some(at)) => {
                now >= at || i.chain.id != view.signer || w.ca.is_revoked(&i.leaf.serial)
            }
            _ => true,
        };
        if stale {
            let issued = engine
                .issue_svid(&w.caller, &w.ca, api, &w.spiffe_id, (&w.dns, &w.ips))
                .await
                .map_err(status)?;
            self.renew_at = Some(timing::leaf_renew_at(
                now,
                issued.leaf.not_after,
                rand::random(),
            ));
            self.issued = Some(issued);
        }
        Ok(self.issued.as_ref().expect("set above"))
    }

    /// How long a stream may sleep before something of its own is due.
    pub fn sleep_for(&self, view: &View, now: SystemTime) -> Duration {
        [self.renew_at, view.next_activation]
            .into_iter()
            .flatten()
            .map(|t| t.duration_since(now).unwrap_or_default())
            .chain([RECHECK])
            .min()
            .unwrap_or(RECHECK)
    }
}

pub(crate) fn bundle_der(view: &View) -> Vec<u8> {
    view.bundle.iter().flat_map(|c| c.iter().copied()).collect()
}

fn crls(view: &View) -> Vec<Vec<u8>> {
    view.crls.iter().map(|c| c.der.clone()).collect()
}

/// The spec's security header: every Workload API call carries `workload.spiffe.io: true`.
fn check_header<T>(req: &Request<T>) -> Result<PeerIdentity, Status> {
    match req.metadata().get("workload.spiffe.io") {
        Some(v) if v.to_str().is_ok_and(|s| s.eq_ignore_ascii_case("true")) => super::caller(req),
        _ => Err(status(ApiError::InvalidArgument(
            "security header missing from request".into(),
        ))),
    }
}

pub struct SpiffeService {
    pub engine: Arc<Engine>,
}

type Out<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl SpiffeWorkloadApi for SpiffeService {
    type FetchX509SVIDStream = Out<wpb::X509svidResponse>;

    async fn fetch_x509svid(
        &self,
        req: Request<wpb::X509svidRequest>,
    ) -> Result<Response<Self::FetchX509SVIDStream>, Status> {
        let caller = check_header(&req)?;
        let engine = self.engine.clone();
        let mut w = workload(&engine, caller.clone(), "svid_x509").await?;
        let stream = async_stream::try_stream! {
            let mut slot = LeafSlot::default();
            let mut rx = w.ca.subscribe();
            loop {
                let view = w.ca.view(engine.now());
                let issued = slot.current(&engine, &w, &view, "svid_x509").await?;
                yield wpb::X509svidResponse {
                    svids: vec![wpb::X509svid {
                        spiffe_id: w.spiffe_id.clone(),
                        x509_svid: issued.chain_der(),
                        x509_svid_key: issued.leaf.key.expose().to_vec(),
                        bundle: bundle_der(&view),
                        hint: String::new(),
                    }],
                    crl: crls(&view),
                    federated_bundles: HashMap::new(),
                };
                let serial = issued.leaf.serial.clone();
                // Wait for a change, a due renewal, or a periodic policy re-check.
                loop {
                    let pause = slot.sleep_for(&view, engine.now());
                    tokio::select! {
                        r = rx.changed() => if r.is_err() { break },
                        _ = tokio::time::sleep(pause) => {}
                    }
                    let next = workload(&engine, caller.clone(), "svid_x509").await?;
                    let moved = !Arc::ptr_eq(&next.ca, &w.ca) || next.spiffe_id != w.spiffe_id;
                    if moved {
                        rx = next.ca.subscribe();
                        slot = LeafSlot::default();
                    }
                    w = next;
                    let now_view = w.ca.view(engine.now());
                    let changed = moved
                        || now_view.signer != view.signer
                        || now_view.bundle != view.bundle
                        || now_view.crls.len() != view.crls.len()
                        || now_view.crls.iter().zip(&view.crls).any(|(a, b)| a.der != b.der)
                        || slot.renew_at.is_some_and(|t| t <= engine.now())
                        || w.ca.is_revoked(&serial);
                    if changed {
                        break;
                    }
                }
            }
        };
        Ok(Response::new(Box::pin(stream)))
    }

    type FetchX509BundlesStream = Out<wpb::X509BundlesResponse>;

    async fn fetch_x509_bundles(
        &self,
        req: Request<wpb::X509BundlesRequest>,
    ) -> Result<Response<Self::FetchX509BundlesStream>, Status> {
        let caller = check_header(&req)?;
        let w = workload(&self.engine, caller, "bundle_x509").await?;
        let engine = self.engine.clone();
        let stream = async_stream::try_stream! {
            let mut rx = w.ca.subscribe();
            loop {
                let view = w.ca.view(engine.now());
                yield wpb::X509BundlesResponse {
                    crl: crls(&view),
                    bundles: HashMap::from([(w.ca.trust_domain_id(), bundle_der(&view))]),
                };
                if rx.changed().await.is_err() {
                    break;
                }
            }
        };
        Ok(Response::new(Box::pin(stream)))
    }

    async fn fetch_jwtsvid(
        &self,
        req: Request<wpb::JwtsvidRequest>,
    ) -> Result<Response<wpb::JwtsvidResponse>, Status> {
        let caller = check_header(&req)?;
        let w = workload(&self.engine, caller, "svid_jwt").await?;
        let r = req.into_inner();
        if r.audience.is_empty() || r.audience.iter().any(|a| a.is_empty() || a.len() > 256) {
            return Err(status(ApiError::InvalidArgument(
                "audience: at least one, each 1-256 bytes".into(),
            )));
        }
        if !r.spiffe_id.is_empty() && r.spiffe_id != w.spiffe_id {
            return Err(status(ApiError::Denied(format!(
                "caller is not entitled to `{}`",
                r.spiffe_id
            ))));
        }
        let svid = self
            .engine
            .mint_jwt_svid(&w.caller, &w.ca, &w.spiffe_id, &r.audience)
            .await
            .map_err(status)?;
        Ok(Response::new(wpb::JwtsvidResponse {
            svids: vec![wpb::Jwtsvid {
                spiffe_id: w.spiffe_id,
                svid,
                hint: String::new(),
            }],
        }))
    }

    type FetchJWTBundlesStream = Out<wpb::JwtBundlesResponse>;

    async fn fetch_jwt_bundles(
        &self,
        req: Request<wpb::JwtBundlesRequest>,
    ) -> Result<Response<Self::FetchJWTBundlesStream>, Status> {
        let caller = check_header(&req)?;
        let w = workload(&self.engine, caller, "bundle_jwt").await?;
        let stream = async_stream::try_stream! {
            let mut rx = w.ca.subscribe();
            loop {
                yield wpb::JwtBundlesResponse {
                    bundles: HashMap::from([(w.ca.trust_domain_id(), w.ca.jwks())]),
                };
                if rx.changed().await.is_err() {
                    break;
                }
            }
        };
        Ok(Response::new(Box::pin(stream)))
    }

    async fn validate_jwtsvid(
        &self,
        req: Request<wpb::ValidateJwtsvidRequest>,
    ) -> Result<Response<wpb::ValidateJwtsvidResponse>, Status> {
        let caller = check_header(&req)?;
        let w = workload(&self.engine, caller, "svid_jwt_validate").await?;
        let r = req.into_inner();
        if r.audience.is_empty() || r.svid.is_empty() {
            return Err(status(ApiError::InvalidArgument(
                "audience and svid are required".into(),
            )));
        }
        let v = w
            .ca
            .jwt_validate(&r.svid, &r.audience, self.engine.now())
            .map_err(|e| status(ApiError::InvalidArgument(format!("JWT-SVID rejected: {e}"))))?;
        Ok(Response::new(wpb::ValidateJwtsvidResponse {
            spiffe_id: v.spiffe_id,
            claims: Some(to_struct(v.claims)),
        }))
    }
}

fn to_value(v: serde_json::Value) -> prost_types::Value {
    use prost_types::value::Kind;
    let kind = match v {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(b),
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        serde_json::Value::String(s) => Kind::StringValue(s),
        serde_json::Value::Array(a) => Kind::ListValue(prost_types::ListValue {
            values: a.into_iter().map(to_value).collect(),
        }),
        serde_json::Value::Object(o) => Kind::StructValue(to_struct(o)),
    };
    prost_types::Value { kind: Some(kind) }
}

fn to_struct(m: serde_json::Map<String, serde_json::Value>) -> prost_types::Struct {
    prost_types::Struct {
        fields: m.into_iter().map(|(k, v)| (k, to_value(v))).collect(),
    }
}
