//! Binds the two sockets and serves them until shutdown.

use super::admin::AdminService;
use super::admission::{Gate, Socket};
use super::broker::BrokerService;
use super::limits::Limits;
use super::pb::{admin_server::AdminServer, broker_server::BrokerServer};
use super::peer::PeerStream;
use crate::engine::Engine;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::UnixListener;
use tokio::sync::watch;

pub use super::limits::MAX_REQUEST_BYTES;

/// Binds a Unix socket in a verified directory (see [`super::sockdir`]): refuses one held by a
/// live server, removes a stale one, applies `mode` through the held directory fd.
pub fn bind(path: &Path, mode: u32) -> Result<(UnixListener, super::sockdir::SocketGuard), String> {
    let b = super::sockdir::bind(path, mode)?;
    b.listener
        .set_nonblocking(true)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let l = UnixListener::from_std(b.listener).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok((l, b.guard))
}

/// Accepted connections tagged with their caller's identity. Each is accepted as soon as it
/// arrives and identified at once, before anything can wait: the pid behind SO_PEERCRED is then
/// still running what it connected with. Only then does the gate refuse a uid no rule admits or
/// a connection over a cap (see api/admission.rs). Each must send its HTTP/2 preface within the
/// handshake timeout. Accept errors (such as running out of descriptors) pause briefly instead
/// of ending the server.
fn incoming(
    listener: UnixListener,
    gate: Arc<Gate>,
) -> impl tokio_stream::Stream<Item = io::Result<PeerStream>> {
    let handshake = gate.limits().handshake_timeout;
    async_stream::stream! {
        loop {
            match listener.accept().await {
                Ok((s, _)) => match crate::api::peer::identify(&s) {
                    Ok(id) => match gate.admit(&id) {
                        Ok(slot) => yield Ok(PeerStream::new(s, id)
                            .with_handshake_deadline(handshake)
                            .with_slot(slot)),
                        Err(r) => gate.refuse(s, &id, r),
                    },
                    Err(e) => tracing::warn!(error = %e, "cannot identify peer; connection dropped"),
                },
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
}

/// Reflection listing only the services this socket serves.
fn reflection(
    service: &'static str,
) -> (
    tonic_reflection::server::v1::ServerReflectionServer<
        impl tonic_reflection::server::v1::ServerReflection,
    >,
    tonic_reflection::server::v1alpha::ServerReflectionServer<
        impl tonic_reflection::server::v1alpha::ServerReflection,
    >,
) {
    let b = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(super::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .with_service_name(service)
            .with_service_name("grpc.health.v1.Health")
    };
    (
        b().build_v1().expect("descriptor set is valid"),
        b().build_v1alpha().expect("descriptor set is valid"),
    )
}

fn builder() -> tonic::transport::Server<
    tower::layer::util::Stack<super::layer::ObserveLayer, tower::layer::util::Identity>,
> {
    // HTTP/2 caps streams per connection itself: no per-request semaphore on the hot path.
    tonic::transport::Server::builder()
        .max_concurrent_streams(Some(256))
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .timeout(Duration::from_secs(60))
        .layer(super::layer::ObserveLayer)
}

/// How long a shutdown waits for open connections before it closes them.
const DRAIN: Duration = Duration::from_secs(5);

/// Serves the sockets until `shutdown` flips to true.
pub async fn serve(
    engine: Arc<Engine>,
    workload: UnixListener,
    admin: UnixListener,
    spiffe: Option<UnixListener>,
    proxy_bundle: Option<String>,
    shutdown: watch::Receiver<bool>,
) -> Result<(), String> {
    let (health, health_svc) = tonic_health::server::health_reporter();
    health.set_serving::<BrokerServer<BrokerService>>().await;
    health.set_serving::<AdminServer<AdminService>>().await;
    let broker = BrokerServer::new(BrokerService {
        engine: engine.clone(),
    })
    .max_decoding_message_size(MAX_REQUEST_BYTES);
    let admin_svc = AdminServer::new(AdminService {
        engine: engine.clone(),
        proxy_bundle,
    })
    .max_decoding_message_size(MAX_REQUEST_BYTES);
    let limits = Limits::from_config(&engine.catalog().config.server);
    let (r1, r1a) = reflection("sidecred.v1.Broker");
    let (r2, r2a) = reflection("sidecred.v1.Admin");
    let shutdown2 = shutdown.clone();
    let wait = |mut rx: watch::Receiver<bool>| async move {
        while !*rx.borrow() {
            if rx.changed().await.is_err() {
                break;
            }
        }
    };
    let shutdown_drain = shutdown.clone();
    // The workload socket carries every tool call: its own lean HTTP/2 server (h2serve), with
    // the tonic services behind it for streams and the standard gRPC services.
    let routes = tonic::service::Routes::new(broker)
        .add_service(health_svc.clone())
        .add_service(r1)
        .add_service(r1a)
        .prepare();
    let workload_svc = Arc::new(super::h2serve::Services {
        broker: BrokerService {
            engine: engine.clone(),
        },
        fallback: super::h2serve::Fallback::new(tower::Layer::layer(
            &super::layer::ObserveLayer,
            routes,
        )),
        limits: limits.clone(),
    });
    let w_stop = wait(shutdown.clone());
    let gate = Gate::new(Socket::Workload, engine.clone(), limits.clone());
    let w = async move {
        super::h2serve::serve(incoming(workload, gate), workload_svc, w_stop).await;
        Ok::<(), tonic::transport::Error>(())
    };
    let a = builder()
        .add_service(admin_svc)
        .add_service(health_svc)
        .add_service(r2)
        .add_service(r2a)
        .serve_with_incoming_shutdown(
            tokio_stream::StreamExt::map(
                incoming(admin, Gate::new(Socket::Admin, engine.clone(), limits)),
                |c| c.map(super::h2fix::AuthorityFix::new),
            ),
            wait(shutdown),
        );
    let s = serve_spiffe(engine.clone(), spiffe, wait(shutdown2));
    // Idle client connections (a long-lived orchestrator's channel, an open watch) would
    // hold a graceful shutdown forever: give in-flight requests DRAIN, then stop anyway.
    let drain_limit = async move {
        wait(shutdown_drain).await;
        tokio::time::sleep(DRAIN).await;
    };
    let (rw, ra, rs) = tokio::select! {
        r = async { tokio::join!(w, a, s) } => r,
        _ = drain_limit => {
            tracing::warn!(limit = ?DRAIN, "connections still open after shutdown; closing them");
            return Ok(());
        }
    };
    rw.map_err(|e| format!("workload socket: {e}"))?;
    ra.map_err(|e| format!("admin socket: {e}"))?;
    rs.map_err(|e| format!("spiffe socket: {e}"))?;
    Ok(())
}

/// Starts the metrics endpoint if configured (TCP on loopback, or a Unix socket).
pub async fn spawn_metrics(
    engine: Arc<Engine>,
    mut stop: watch::Receiver<bool>,
) -> Result<Option<tokio::task::JoinHandle<()>>, String> {
    let cfg = engine
        .catalog()
        .config
        .section::<crate::metrics::MetricsConfig>()
        .cloned()
        .unwrap_or_default();
    let render = {
        let engine = engine.clone();
        move || {
            let st = engine.gauges();
            crate::metrics::METRICS.render(&st)
        }
    };
    if let Some(addr) = cfg.listen {
        let l = tokio::net::TcpListener::bind(&addr)
            .await
            .map_err(|e| format!("metrics.listen {addr}: {e}"))?;
        tracing::info!(%addr, "metrics on http://{addr}/metrics");
        return Ok(Some(tokio::spawn(async move {
            loop {
                tokio::select! {
                    a = l.accept() => if let Ok((s, _)) = a {
                        let r = render.clone();
                        tokio::spawn(crate::metrics::serve_http(s, r));
                    },
                    _ = stop.changed() => break,
                }
            }
        })));
    }
    if let Some(path) = cfg.socket {
        let (l, guard) =
            bind(&path, 0o660).map_err(|e| format!("metrics.socket {}: {e}", path.display()))?;
        return Ok(Some(tokio::spawn(async move {
            loop {
                tokio::select! {
                    a = l.accept() => if let Ok((s, _)) = a {
                        let r = render.clone();
                        tokio::spawn(crate::metrics::serve_http(s, r));
                    },
                    _ = stop.changed() => break,
                }
            }
            drop(guard);
        })));
    }
    Ok(None)
}

/// The SPIFFE Workload API and Envoy SDS, when a SPIFFE socket is configured.
async fn serve_spiffe(
    engine: Arc<Engine>,
    listener: Option<UnixListener>,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    use super::envoy::service::secret::v3::secret_discovery_service_server::SecretDiscoveryServiceServer;
    use super::spiffe_pb::spiffe_workload_api_server::SpiffeWorkloadApiServer;
    let Some(listener) = listener else {
        return Ok(());
    };
    let gate = Gate::new(
        Socket::Spiffe,
        engine.clone(),
        Limits::from_config(&engine.catalog().config.server),
    );
    let spiffe = SpiffeWorkloadApiServer::new(super::spiffe::SpiffeService {
        engine: engine.clone(),
    })
    .max_decoding_message_size(MAX_REQUEST_BYTES);
    let sds = SecretDiscoveryServiceServer::new(super::sds::SdsService { engine })
        .max_decoding_message_size(MAX_REQUEST_BYTES);
    // Health and reflection here too, so grpcurl and probes work on every socket alike.
    let (health, health_svc) = tonic_health::server::health_reporter();
    health
        .set_serving::<SpiffeWorkloadApiServer<super::spiffe::SpiffeService>>()
        .await;
    health
        .set_serving::<SecretDiscoveryServiceServer<super::sds::SdsService>>()
        .await;
    let reflect = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(super::SPIFFE_FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .with_service_name("SpiffeWorkloadAPI")
            .with_service_name("envoy.service.secret.v3.SecretDiscoveryService")
            .with_service_name("grpc.health.v1.Health")
    };
    let (r1, r1a) = (
        reflect().build_v1().expect("descriptor set is valid"),
        reflect().build_v1alpha().expect("descriptor set is valid"),
    );
    // Long-lived streams: no per-request timeout here.
    tonic::transport::Server::builder()
        .concurrency_limit_per_connection(256)
        .max_concurrent_streams(Some(1024))
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .add_service(spiffe)
        .add_service(sds)
        .add_service(health_svc)
        .add_service(r1)
        .add_service(r1a)
        .serve_with_incoming_shutdown(
            tokio_stream::StreamExt::map(incoming(listener, gate), |c| {
                c.map(super::h2fix::AuthorityFix::new)
            }),
            stop,
        )
        .await
}
