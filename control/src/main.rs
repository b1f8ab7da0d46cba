//! `ringbridge-control`: parses the command line and dispatches: `serve`
//! ([`ringbridge_control::run::serve`]), the simulations ([`ringbridge_control::sim::cmd`]) and
//! the client commands ([`ringbridge_control::cli`]).

use clap::{Parser, Subcommand};
use ringbridge_control::cli;
use ringbridge_control::run::serve::{ServeArgs, serve};
use ringbridge_control::sim::cmd::{SimArgs, StreamSimArgs, simulate, simulate_stream};
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
    Serve(Box<ServeArgs>),
    /// Run the focus and the autoscaler in virtual time over a day of conferences and report
    /// bridge-hours saved against a fleet provisioned for the peak.
    Simulate(SimArgs),
    /// Place one live stream's viewers on edges in virtual time (origin, pull tree with bounded
    /// fan-out) and report bridges used, origin fan-out, the deepest tier and placement time.
    SimulateStream(StreamSimArgs),
    #[command(flatten)]
    Client(cli::Command),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // The simulator's focus would log every virtual drain: warnings only, unless asked.
    let level = if matches!(cli.cmd, Cmd::Simulate(_) | Cmd::SimulateStream(_)) {
        "warn"
    } else {
        "info"
    };
    // webrtc-sdp logs a warning per SDP line it does not know (an offer could flood the log):
    // errors only, unless RUST_LOG names it.
    let quiet_sdp = !std::env::var("RUST_LOG").is_ok_and(|v| v.contains("webrtc_sdp"));
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let filter = if quiet_sdp {
        filter.add_directive("webrtc_sdp=error".parse().expect("a valid directive"))
    } else {
        filter
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    match cli.cmd {
        Cmd::Simulate(a) => return simulate(a, cli.json),
        Cmd::SimulateStream(a) => return simulate_stream(a, cli.json),
        _ => {}
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cli.threads.max(1))
        .enable_all()
        .build()?;
    rt.block_on(async move {
        match cli.cmd {
            Cmd::Serve(a) => serve(*a).await,
            Cmd::Simulate(_) | Cmd::SimulateStream(_) => unreachable!("runs without a runtime"),
            Cmd::Client(c) => cli::run(&cli.control, cli.json, c).await,
        }
    })
}
