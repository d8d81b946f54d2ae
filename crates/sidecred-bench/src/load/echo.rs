//! The bare tonic echo service: the floor a gRPC call over a Unix socket costs, for comparison.

tonic::include_proto!("bench.v1");

#[derive(Default)]
struct EchoSvc;

#[tonic::async_trait]
impl echo_server::Echo for EchoSvc {
    async fn echo(
        &self,
        r: tonic::Request<EchoMessage>,
    ) -> Result<tonic::Response<EchoMessage>, tonic::Status> {
        Ok(tonic::Response::new(r.into_inner()))
    }
}

/// Serves the bare echo on a Unix socket until killed.
pub async fn serve_echo(path: &str) {
    let _ = std::fs::remove_file(path);
    let l = tokio::net::UnixListener::bind(path).expect("bind echo socket");
    tonic::transport::Server::builder()
        .add_service(echo_server::EchoServer::new(EchoSvc))
        .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(l))
        .await
        .expect("echo server");
}
