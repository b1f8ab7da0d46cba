//! The gRPC server both binaries start from: `grpc.health.v1.Health` and server reflection over
//! every ringbridge service are always there; the caller adds its own services.

use tonic::transport::Server;
use tonic::transport::server::Router;
use tonic_health::server::HealthReporter;

/// A server router carrying health and reflection, and the reporter that sets serving states.
pub fn router() -> anyhow::Result<(HealthReporter, Router)> {
    let (health, health_svc) = tonic_health::server::health_reporter();
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(ringbridge_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let router = Server::builder()
        .add_service(health_svc)
        .add_service(reflection);
    Ok((health, router))
}

/// Serves `router` on `listener` until `shutdown` resolves. Accepted connections get
/// `TCP_NODELAY`: tonic sets it only on listeners it binds itself, and without it small unary
/// responses wait for the peer's delayed ACK (~40 ms tails on loopback).
pub async fn serve(
    router: Router,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    use tokio_stream::StreamExt;
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener).map(|conn| {
        conn.inspect(|c| {
            if let Err(e) = c.set_nodelay(true) {
                tracing::debug!("TCP_NODELAY: {e}");
            }
        })
    });
    router
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await?;
    Ok(())
}
