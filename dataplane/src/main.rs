//! `ringbridge`: the data-plane binary. Serves the Bridge gRPC API and forwards RTP/RTCP.

use std::net::SocketAddr;

use anyhow::Context;
use clap::{Parser, Subcommand};
use ringbridge_dataplane::engine::Choice;
use ringbridge_dataplane::{agent, bridge, demo, metrics};
use ringbridge_edge::ready::Ready;
use tracing_subscriber::EnvFilter;

/// ringbridge: a thread-per-core RTP/RTCP forwarder (SFU data plane) programmed over gRPC.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    #[command(flatten)]
    bridge: BridgeArgs,
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(clap::Args, Debug, Clone)]
struct BridgeArgs {
    /// UDP address every endpoint sends RTP and RTCP to (one port, RFC 5761 mux).
    #[arg(long, default_value = "127.0.0.1:10000", global = true)]
    media: SocketAddr,
    /// TCP address of the gRPC API (Bridge, health, reflection).
    #[arg(long, default_value = "127.0.0.1:50051", global = true)]
    api: SocketAddr,
    /// Worker threads, each pinned with its own socket and ring. Default: one per core.
    #[arg(long, global = true)]
    workers: Option<usize>,
    /// I/O engine: uring, mio (epoll), auto (uring when usable) or xdp (AF_XDP on --xdp-iface
    /// beside the auto engine; auto alone, with the reason logged, when the interface cannot be
    /// taken over).
    #[arg(long, default_value = "auto", global = true)]
    engine: Choice,
    /// The interface whose media traffic the xdp engine takes (its XDP hook must be free).
    #[arg(long, global = true, required_if_eq("engine", "xdp"))]
    xdp_iface: Option<String>,
    /// Address announced to endpoints as `media_addr` (default: the bound media address).
    #[arg(long, global = true)]
    advertise: Option<SocketAddr>,
    /// In-flight sends per io_uring worker before it waits for completions.
    #[arg(long, default_value_t = ringbridge_dataplane::engine::uring::SEND_SLOTS, global = true)]
    uring_send_slots: usize,
    /// Provided receive buffers per io_uring worker, a power of two from 8 to 32768.
    #[arg(long, default_value_t = ringbridge_dataplane::engine::uring::BUFFERS, global = true,
          value_parser = parse_buffers)]
    uring_buffers: u16,
    /// Pin workers to cores even when the host's CPUs are shared (default: pin only when the
    /// process's CPU set is narrowed to one dedicated CPU per worker).
    #[arg(long, global = true, conflicts_with = "no_pin")]
    pin: bool,
    /// How io_uring workers send each copy: send-fixed (IORING_OP_SEND with the destination, on
    /// the socket registered with the ring), send (the same on the raw descriptor) or sendmsg.
    #[arg(long, default_value = "send-fixed", global = true)]
    uring_send: ringbridge_dataplane::engine::uring::SendPath,
    /// Never pin workers to cores.
    #[arg(long, global = true)]
    no_pin: bool,
    /// Control plane to register with and report load to, e.g. http://127.0.0.1:7000.
    #[arg(long)]
    control: Option<String>,
    /// Region announced to the control plane.
    #[arg(long, default_value = "default")]
    region: String,
    /// Bridge id announced to the control plane (default: "bridge-" + media port).
    #[arg(long)]
    bridge_id: Option<String>,
    /// Packets/s (in + out) at which the bridge reports stress 1.0.
    #[arg(long, default_value_t = 200_000.0)]
    capacity_pps: f64,
    /// Serve Prometheus metrics over HTTP on this address.
    #[arg(long)]
    metrics: Option<SocketAddr>,
    /// With --control, SIGTERM drains: the bridge reports draining and exits once its
    /// endpoints have left or been moved, or after this many seconds (a second signal exits
    /// at once). SIGINT (Ctrl-C) stops at once.
    #[arg(long, default_value_t = 360)]
    drain_timeout_secs: u64,
    /// Stop (SIGKILL) when the process that started this bridge exits: the control plane's
    /// process actuator sets it, so its bridges never outlive it.
    #[arg(long)]
    exit_with_parent: bool,
    /// At most one keyframe request (PLI/FIR) per media stream goes on towards its sender per
    /// this many ms, whatever the number of receivers asking (the rest are dropped and counted
    /// as keyframe_throttled); 0 forwards every one.
    #[arg(long, default_value_t = 500)]
    keyframe_interval_ms: u32,
    /// Retransmission cache: packets kept per stream (rounded up to a power of two; 512 is about
    /// 2 s of a 2.5 Mbit/s video stream). The bridge answers receivers' NACKs from it and sends
    /// upstream only what it does not hold. 0 disables it (NACKs go to the sender).
    #[arg(long, default_value_t = ringbridge_dataplane::core::repair::DEFAULT_PACKETS)]
    nack_cache_packets: usize,
    /// Retransmission cache: streams cached at once (those receivers NACKed; a stream nobody
    /// asked anything of for 10 s gives its ring to another). Memory: streams x packets x 1.5 KB
    /// at most, reported by GetStats (repair_cache).
    #[arg(long, default_value_t = ringbridge_dataplane::core::repair::DEFAULT_STREAMS)]
    nack_cache_streams: usize,
    /// Most endpoints over all conferences (AddEndpoint beyond it: RESOURCE_EXHAUSTED).
    #[arg(long, default_value_t = 1_000_000, global = true)]
    max_endpoints: usize,
    /// Most endpoints in one conference.
    #[arg(long, default_value_t = 100_000, global = true)]
    max_endpoints_per_conference: usize,
    /// Most relays over all conferences (AddRelay beyond it: RESOURCE_EXHAUSTED). Relays do
    /// not count as endpoints.
    #[arg(long, default_value_t = 100_000, global = true)]
    max_relays: usize,
    /// Most relays of one conference (each local packet is sealed once per relay).
    #[arg(long, default_value_t = 1_000, global = true)]
    max_relays_per_conference: usize,
    /// How long a WebRTC endpoint's nominated address keeps ICE consent without a valid check
    /// (RFC 7675: 30 s). Shorter only for tests.
    #[arg(long, default_value_t = ringbridge_dataplane::webrtc::ice::CONSENT_TIMEOUT_MS,
          hide = true, global = true)]
    ice_consent_ms: u64,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Starts a bridge, runs a short 3-party demo conference through its gRPC API over
    /// loopback, prints what was forwarded and exits.
    Demo {
        /// Packets each participant sends.
        #[arg(long, default_value_t = 200)]
        packets: u32,
    },
}

/// `--uring-buffers`: a power of two the buffer ring can hold.
fn parse_buffers(s: &str) -> Result<u16, String> {
    match s.parse::<u16>() {
        Ok(n) if n.is_power_of_two() && (8..=32768).contains(&n) => Ok(n),
        _ => Err(format!("must be a power of two from 8 to 32768, not {s:?}")),
    }
}

/// The DTLS fingerprint as the ready line carries it (no spaces): `sha-256:AB:CD:...`.
fn ready_fingerprint(fp: &ringbridge_dataplane::webrtc::dtls::Fingerprint) -> String {
    fp.to_string().replacen(' ', ":", 1)
}

/// Drains (reports draining, takes nothing new) until no endpoint is left, `timeout` passes or
/// a second signal arrives.
async fn drain_then_stop(
    d: &agent::Drain,
    publisher: &ringbridge_dataplane::publish::Publisher,
    timeout: std::time::Duration,
) {
    d.start();
    let until = tokio::time::Instant::now() + timeout;
    tracing::info!(
        endpoints = publisher.counts().1,
        "draining: waiting for endpoints to leave or be moved (at most {} s; signal again to stop now)",
        timeout.as_secs()
    );
    let second = ringbridge_edge::shutdown::signal();
    tokio::pin!(second);
    loop {
        let (_, endpoints) = publisher.counts();
        if endpoints == 0 {
            tracing::info!("drained: no endpoint left");
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_millis(100)) => {}
            _ = &mut second => return,
            _ = tokio::time::sleep_until(until) => {
                tracing::warn!(endpoints, "drain timed out: stopping with endpoints left");
                return;
            }
        }
    }
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let a = cli.bridge;
    if a.exit_with_parent {
        use rustix::process::{Signal, getppid, set_parent_process_death_signal};
        let parent = getppid();
        set_parent_process_death_signal(Some(Signal::KILL))
            .context("--exit-with-parent: prctl(PR_SET_PDEATHSIG)")?;
        // The parent may have gone before the call: then we were reparented already.
        if getppid() != parent {
            anyhow::bail!("--exit-with-parent: the parent process is gone");
        }
    }
    let config = bridge::Config {
        media: a.media,
        api: a.api,
        workers: a
            .workers
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
        engine: a.engine,
        xdp_iface: a.xdp_iface.clone(),
        advertise: a.advertise,
        tuning: ringbridge_dataplane::engine::Tuning {
            uring_send_slots: a.uring_send_slots,
            uring_buffers: a.uring_buffers,
            uring_send: a.uring_send,
            pin: match (a.pin, a.no_pin) {
                (true, _) => ringbridge_dataplane::engine::pin::Pin::On,
                (_, true) => ringbridge_dataplane::engine::pin::Pin::Off,
                _ => ringbridge_dataplane::engine::pin::Pin::Auto,
            },
        },
        limits: ringbridge_dataplane::state::Limits {
            endpoints: a.max_endpoints,
            endpoints_per_conference: a.max_endpoints_per_conference,
            relays: a.max_relays,
            relays_per_conference: a.max_relays_per_conference,
        },
        keyframe_interval_ms: a.keyframe_interval_ms,
        nack_cache: (a.nack_cache_packets, a.nack_cache_streams),
        ice_consent_ms: a.ice_consent_ms,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("tokio runtime")?;
    rt.block_on(async move {
        match cli.cmd {
            None => {
                let running = bridge::start(config).await?;
                let drain = std::sync::Arc::new(agent::Drain::default());
                let draining = a.control.is_some().then(|| drain.clone());
                if let Some(control) = a.control {
                    let agent = agent::Agent {
                        control,
                        bridge_id: a
                            .bridge_id
                            .unwrap_or_else(|| format!("bridge-{}", running.media.port())),
                        region: a.region,
                        capacity_pps: a.capacity_pps,
                        api_addr: running.api.to_string(),
                        media_addr: running.advertise.to_string(),
                        drain,
                        instance_id: agent::new_instance_id(),
                        dtls_fingerprint: running.dtls_fingerprint.to_string(),
                    };
                    tokio::spawn(agent.clone().report_audio(running.publisher()));
                    tokio::spawn(agent.run(running.publisher()));
                }
                let mut metrics_addr = None;
                if let Some(addr) = a.metrics {
                    let l = tokio::net::TcpListener::bind(addr)
                        .await
                        .with_context(|| format!("binding --metrics {addr}"))?;
                    metrics_addr = Some(l.local_addr()?);
                    let p = running.publisher();
                    tokio::spawn(ringbridge_edge::metrics::serve(
                        l,
                        std::sync::Arc::new(move |r| {
                            let t = p.total_counters();
                            let (c, e) = p.counts();
                            metrics::bridge(r, &t, &p.webrtc_stats(), c, e)
                        }),
                    ));
                }
                println!(
                    "{}",
                    Ready::new("ringbridge")
                        .field("engine", running.engine)
                        .field("media", running.media)
                        .field("api", running.api)
                        .field("advertise", running.advertise)
                        .field("workers", running.workers)
                        .field("dtls", ready_fingerprint(&running.dtls_fingerprint))
                        .field_opt("metrics", metrics_addr)
                );
                let publisher = running.publisher();
                let timeout = std::time::Duration::from_secs(a.drain_timeout_secs);
                running
                    .serve(async move {
                        let sig = ringbridge_edge::shutdown::stop_signal().await;
                        // SIGTERM drains (an orchestrator stopping us); Ctrl-C stops now.
                        if let (Some(d), ringbridge_edge::shutdown::Stop::Terminate) =
                            (draining, sig)
                        {
                            drain_then_stop(&d, &publisher, timeout).await;
                        }
                    })
                    .await
            }
            Some(Cmd::Demo { packets }) => demo::run(config, packets).await,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::parse_buffers;

    #[test]
    fn uring_buffers_must_be_a_power_of_two_in_range() {
        assert_eq!(parse_buffers("512"), Ok(512));
        assert_eq!(parse_buffers("32768"), Ok(32768));
        for bad in ["0", "4", "500", "65536", "x"] {
            let e = parse_buffers(bad).unwrap_err();
            assert!(e.contains("power of two"), "{bad}: {e}");
        }
    }
}
