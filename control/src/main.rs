//! `ringbridge-control`: the control plane server (`serve`) and its client commands.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use ringbridge_control::cli;
use ringbridge_control::service::{Config, Control, FocusService, RegistryService, RouterService};
use ringbridge_control::store::FileStore;
use ringbridge_proto::v1::focus_server::FocusServer;
use ringbridge_proto::v1::registry_server::RegistryServer;
use ringbridge_proto::v1::router_server::RouterServer;
use tracing_subscriber::EnvFilter;

/// ringbridge control plane: places conferences on bridges (focus), routes conferences to
/// shards (router) and tracks bridges (registry).
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    /// Control plane URL for the client commands.
    #[arg(long, default_value = "http://127.0.0.1:7000", global = true)]
    control: String,
    /// JSON output for the client commands.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run the control plane.
    Serve(ServeArgs),
    #[command(flatten)]
    Client(cli::Command),
}

#[derive(clap::Args, Debug)]
struct ServeArgs {
    /// gRPC address (Focus, Router, Registry, health, reflection).
    #[arg(long, default_value = "127.0.0.1:7000")]
    listen: SocketAddr,
    /// Directory of the embedded store (routes and placements survive restarts).
    #[arg(long, default_value = "ringbridge-control-data")]
    data_dir: PathBuf,
    /// Serve Prometheus metrics over HTTP on this address.
    #[arg(long)]
    metrics: Option<SocketAddr>,
    /// This shard's id in the router.
    #[arg(long, default_value = "shard-0")]
    shard_id: String,
    /// Interval bridges report load at, ms.
    #[arg(long, default_value_t = 2000)]
    report_interval_ms: u64,
    /// Reports a bridge may miss before it is declared down.
    #[arg(long, default_value_t = 3)]
    missed_reports: u64,
    /// Idle seconds after which a conference's route is forgotten.
    #[arg(long, default_value_t = 3600)]
    route_ttl_secs: u64,
    /// Packets/s (in + out) one participant is assumed to add until its bridge's next report
    /// shows the real load (the stress correction for placements between reports).
    #[arg(long, default_value_t = 100.0)]
    participant_pps: f64,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        match cli.cmd {
            Cmd::Serve(a) => serve(a).await,
            Cmd::Client(c) => cli::run(&cli.control, cli.json, c).await,
        }
    })
}

async fn serve(a: ServeArgs) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(a.listen)
        .await
        .with_context(|| format!("binding --listen {}", a.listen))?;
    let listen = listener.local_addr()?;
    let store = FileStore::new(&a.data_dir)
        .with_context(|| format!("--data-dir {}", a.data_dir.display()))?;
    let control = Control::new(
        Config {
            shard_id: a.shard_id.clone(),
            shard_addr: listen.to_string(),
            report_interval_ms: a.report_interval_ms.max(10),
            missed_reports: a.missed_reports.max(1),
            route_ttl_ms: a.route_ttl_secs * 1000,
            per_participant_pps: a.participant_pps,
        },
        Box::new(store),
    )?;
    let monitor = tokio::spawn(control.clone().monitor());
    let mut metrics_addr = String::new();
    if let Some(m) = a.metrics {
        let l = tokio::net::TcpListener::bind(m)
            .await
            .with_context(|| format!("binding --metrics {m}"))?;
        metrics_addr = format!(" metrics={}", l.local_addr()?);
        let c = control.clone();
        let handle = tokio::runtime::Handle::current();
        tokio::spawn(ringbridge_dataplane::metrics::serve(
            l,
            Arc::new(move || tokio::task::block_in_place(|| handle.block_on(c.metrics()))),
        ));
    }
    let (health, health_svc) = tonic_health::server::health_reporter();
    health.set_serving::<FocusServer<FocusService>>().await;
    health.set_serving::<RouterServer<RouterService>>().await;
    health
        .set_serving::<RegistryServer<RegistryService>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(ringbridge_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    println!(
        "ringbridge-control ready listen={listen} shard={} data_dir={}{metrics_addr}",
        a.shard_id,
        a.data_dir.display()
    );
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(health_svc)
            .add_service(reflection)
            .add_service(FocusServer::new(FocusService(control.clone())))
            .add_service(RouterServer::new(RouterService(control.clone())))
            .add_service(RegistryServer::new(RegistryService(control.clone())))
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                async {
                    let _ = stop_rx.await;
                },
            ),
    );
    ringbridge_dataplane::bridge::shutdown_signal().await;
    // No failover decisions while stopping: bridges' reports are refused from here on.
    monitor.abort();
    control.flush().await;
    tracing::info!("state saved; stopping");
    let _ = stop_tx.send(());
    // Long-lived watch streams would hold a graceful stop open: give calls a moment, then go.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), server).await;
    Ok(())
}
