//! `ringbridge-control`: the control plane server (`serve`) and its client commands.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use ringbridge_control::api::{FocusService, RegistryService, RouterService};
use ringbridge_control::cli;
use ringbridge_control::service::{Config, Control};
use ringbridge_control::store::FileStore;
use ringbridge_edge::ready::Ready;
use ringbridge_proto::v1::focus_server::FocusServer;
use ringbridge_proto::v1::registry_server::RegistryServer;
use ringbridge_proto::v1::router_server::RouterServer;
use tracing_subscriber::EnvFilter;

/// Largest request the control plane decodes: every limited field at its limit fits easily.
const MAX_REQUEST_BYTES: usize = 64 << 10;

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
    /// Runtime threads. The control plane is I/O-bound: one thread measured fastest on a 2-core
    /// host shared with bridges (fewer cross-thread wakeups); raise it on bigger hosts.
    #[arg(long, default_value_t = 1, global = true)]
    threads: usize,
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
    /// Deadline of every call to a bridge's API, ms. A call that misses it makes the bridge
    /// suspect (no new conferences) and fails the operation with UNAVAILABLE.
    #[arg(long, default_value_t = 2000)]
    bridge_timeout_ms: u64,
    /// Interval between gRPC health probes of each bridge, ms.
    #[arg(long, default_value_t = 250)]
    probe_interval_ms: u64,
    /// Deadline of a health probe, ms.
    #[arg(long, default_value_t = 500)]
    probe_timeout_ms: u64,
    /// Failed health probes in a row after which a bridge is down and its conferences move.
    #[arg(long, default_value_t = 2)]
    probe_failures: u32,
    /// Interval at which placement changes are appended to the store, ms; a crash (not a
    /// shutdown) loses at most this much.
    #[arg(long, default_value_t = 250)]
    flush_interval_ms: u64,
    /// Participants of one conference a bridge takes before the conference grows onto another
    /// bridge of the region (Octo).
    #[arg(long, default_value_t = 80)]
    max_per_bridge: usize,
    /// Stress at which a bridge counts as full for new participants.
    #[arg(long, default_value_t = 0.8)]
    stress_threshold: f64,
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
        .worker_threads(cli.threads.max(1))
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
    let store = FileStore::new(&a.data_dir).with_context(|| {
        format!(
            "--data-dir {} must be a writable directory",
            a.data_dir.display()
        )
    })?;
    let (health, router) = ringbridge_edge::grpc::router()?;
    let control = Control::new(
        Config {
            shard_id: a.shard_id.clone(),
            shard_addr: listen.to_string(),
            report_interval_ms: a.report_interval_ms.max(10),
            missed_reports: a.missed_reports.max(1),
            route_ttl_ms: a.route_ttl_secs * 1000,
            per_participant_pps: a.participant_pps,
            bridge_timeout_ms: a.bridge_timeout_ms.max(1),
            probe_interval_ms: a.probe_interval_ms.max(10),
            probe_timeout_ms: a.probe_timeout_ms.max(1),
            probe_failures: a.probe_failures.max(1),
            flush_interval_ms: a.flush_interval_ms.max(1),
            max_per_bridge: a.max_per_bridge.max(1),
            stress_threshold: a.stress_threshold,
        },
        Arc::new(store),
        health.clone(),
    )
    .with_context(|| format!("loading state from --data-dir {}", a.data_dir.display()))?;
    let monitor = tokio::spawn(control.clone().monitor());
    let flusher = tokio::spawn(control.clone().flusher());
    let mut metrics_addr = None;
    if let Some(m) = a.metrics {
        let l = tokio::net::TcpListener::bind(m)
            .await
            .with_context(|| format!("binding --metrics {m}"))?;
        metrics_addr = Some(l.local_addr()?);
        let c = control.clone();
        tokio::spawn(ringbridge_edge::metrics::serve(
            l,
            Arc::new(move |r| ringbridge_control::metrics::render(&c, r)),
        ));
    }
    health.set_serving::<FocusServer<FocusService>>().await;
    health.set_serving::<RouterServer<RouterService>>().await;
    health
        .set_serving::<RegistryServer<RegistryService>>()
        .await;
    println!(
        "{}",
        Ready::new("ringbridge-control")
            .field("listen", listen)
            .field("shard", &a.shard_id)
            .field("data_dir", a.data_dir.display())
            .field_opt("metrics", metrics_addr)
    );
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(ringbridge_edge::grpc::serve(
        router
            .add_service(
                FocusServer::new(FocusService(control.clone()))
                    .max_decoding_message_size(MAX_REQUEST_BYTES),
            )
            .add_service(
                RouterServer::new(RouterService(control.clone()))
                    .max_decoding_message_size(MAX_REQUEST_BYTES),
            )
            .add_service(
                RegistryServer::new(RegistryService(control.clone()))
                    .max_decoding_message_size(MAX_REQUEST_BYTES),
            ),
        listener,
        async {
            let _ = stop_rx.await;
        },
    ));
    ringbridge_edge::shutdown::signal().await;
    // No failover decisions while stopping.
    monitor.abort();
    flusher.abort();
    let saved = control.flush().await;
    let _ = stop_tx.send(());
    // Long-lived watch streams would hold a graceful stop open: give calls a moment, then go.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), server).await;
    match saved {
        Ok(()) => {
            tracing::info!("state saved; stopped");
            Ok(())
        }
        Err(e) => anyhow::bail!("stopping with unsaved state: {e}"),
    }
}
