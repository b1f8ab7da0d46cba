//! `ringbridge-loadgen`: programs conferences on a bridge (or starts a forwarder itself), sends
//! paced RTP from real UDP sockets and reports loss, latency, rates and the forwarder's CPU per
//! forwarded packet.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use ringbridge_bench::drive;
use ringbridge_bench::report::Report;
use ringbridge_bench::rig::{Live, Rig, RunOpts, Topology};
use ringbridge_bench::target::{Kind, Target};
use ringbridge_bench::traffic::{Load, MAX_PACKET, MIN_PACKET, Stream};
use ringbridge_dataplane::srtp::Profile;

/// Load-test rig for ringbridge. Either `--api` (a running bridge) or `--spawn` (a forwarder
/// the rig starts on loopback and measures).
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    /// gRPC address of a running bridge to program (e.g. 127.0.0.1:50051).
    #[arg(long, conflicts_with = "spawn")]
    api: Option<String>,
    /// Start this forwarder on loopback: uring, mio (ringbridge engines), floor or naive.
    #[arg(long)]
    spawn: Option<Kind>,
    /// Worker threads of a spawned ringbridge.
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Do not pin a spawned ringbridge's workers to cores.
    #[arg(long)]
    no_pin: bool,
    /// PID of a bridge on this machine whose CPU time to measure (with --api).
    #[arg(long)]
    bridge_pid: Option<u32>,
    /// Conferences to simulate.
    #[arg(long, default_value_t = 1)]
    conferences: usize,
    /// Participants per conference.
    #[arg(long, default_value_t = 3)]
    participants: usize,
    /// Participants per conference that send (the first ones); the others only receive.
    /// Default: all. `--senders 1` is one publisher fanned out to participants - 1 receivers.
    #[arg(long)]
    senders: Option<usize>,
    /// A live stream instead: one publisher per conference (stream) and this many receive-only
    /// viewers (sets --participants to N + 1 and --senders to 1).
    #[arg(long, conflicts_with_all = ["participants", "senders"])]
    viewers: Option<usize>,
    /// Each participant sends an audio stream: 50 pps of 160 bytes.
    #[arg(long)]
    audio: bool,
    /// Each participant sends a video stream at this many kbit/s in 1200-byte packets.
    #[arg(long)]
    video_kbps: Option<f64>,
    /// Fixed load instead: packets per second per participant...
    #[arg(long, conflicts_with_all = ["audio", "video_kbps"])]
    pps: Option<f64>,
    /// ...of this many bytes (RTP header included).
    #[arg(long, default_value_t = 200)]
    size: usize,
    /// Measured seconds.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds sent before measuring (not counted).
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Milliseconds to wait for packets in flight after the last send.
    #[arg(long, default_value_t = 300)]
    drain_ms: u64,
    /// Ramp the load until loss exceeds 0.1% and report the highest clean rate.
    #[arg(long)]
    find_max: bool,
    /// Seconds per --find-max step.
    #[arg(long, default_value_t = 2.0)]
    step_secs: f64,
    /// Every participant uses SRTP with this profile (AES_CM_128_HMAC_SHA1_80,
    /// AES_CM_128_HMAC_SHA1_32, AEAD_AES_128_GCM, AEAD_AES_256_GCM); ringbridge targets only.
    #[arg(long, value_parser = parse_profile)]
    srtp: Option<Profile>,
    /// Each participant subscribes (SetSubscription) to K senders of its conference: the ones
    /// after it in the conference's order, wrapping, itself skipped (all of them when it has
    /// fewer); participants - 1 is an explicit subscription to everyone. Copies are expected
    /// only from subscribed senders; any other counts as misrouted. ringbridge targets only.
    #[arg(long, value_name = "K")]
    subscribe: Option<usize>,
    /// Instead of one run: `--rounds` rounds of windows on one bridge and one rig, a window per
    /// item of this list in turn, each `--warmup` (which lets the bridge apply the change) then
    /// `--duration` measured: `plain` (no subscriptions), K (as `--subscribe K`) or
    /// `simulcast` (one sender per conference whose stream is a one-layer simulcast group,
    /// every receiver getting it as one stream: each copy rewritten), e.g. `plain,8,4` or
    /// `plain,simulcast`. Subscriptions are reprogrammed before each window (the conferences,
    /// when a simulcast window starts or ends). The JSON report lists every window. ringbridge
    /// targets only.
    #[arg(
        long,
        value_delimiter = ',',
        value_parser = parse_window,
        conflicts_with_all = ["subscribe", "find_max"]
    )]
    subscribe_cycle: Vec<Window>,
    /// Rounds of --subscribe-cycle.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// With --subscribe-cycle: sample the bridge with `perf record -e cpu-clock` during every
    /// window for the share of its CPU spent in user mode (needs `perf` and the bridge's PID).
    #[arg(long)]
    user_share: bool,
    /// Address the participants' sockets bind to (must be reachable from the bridge).
    #[arg(long, default_value = "127.0.0.1")]
    bind_ip: IpAddr,
    /// Write the JSON report here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// No progress line and no table (JSON only).
    #[arg(long)]
    quiet: bool,
}

/// One window of `--subscribe-cycle`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Window {
    /// No subscriptions.
    Plain,
    /// Every participant subscribed to K senders.
    Subscribe(usize),
    /// The sender's stream as a one-layer simulcast group, received as one rewritten stream.
    Simulcast,
}

impl Window {
    fn label(self) -> String {
        match self {
            Window::Plain => "plain".into(),
            Window::Subscribe(k) => format!("subscribe {k}"),
            Window::Simulcast => "simulcast".into(),
        }
    }
}

fn parse_window(s: &str) -> Result<Window, String> {
    match s {
        "plain" => Ok(Window::Plain),
        "simulcast" => Ok(Window::Simulcast),
        k => k
            .parse()
            .map(Window::Subscribe)
            .map_err(|_| format!("expected plain, simulcast or a number of senders, not {k:?}")),
    }
}

/// One window of `--subscribe-cycle` in the JSON report.
#[derive(Debug, serde::Serialize)]
struct CycleWindow {
    /// Round, from 1.
    round: usize,
    /// `plain` or `subscribe K`.
    window: String,
    /// Share of the bridge's CPU samples in user mode (`--user-share`).
    user_share: Option<f64>,
    /// The window's report.
    report: Report,
}

/// The JSON report of `--subscribe-cycle`.
#[derive(Debug, serde::Serialize)]
struct CycleReport {
    /// What the traffic flowed through.
    target: String,
    /// The windows of a round, in order.
    cycle: Vec<String>,
    /// Every window, in the order run.
    windows: Vec<CycleWindow>,
}

/// `--subscribe-cycle`: rounds of windows on one bridge, subscriptions reprogrammed between
/// them, so that the windows compared share the machine's state as closely as they can.
fn cycle(
    cli: &Cli,
    rt: &tokio::runtime::Runtime,
    rig: &mut Rig,
    target: &mut Target,
    (topo, load, opts): (&Topology, &Load, &RunOpts),
) -> anyhow::Result<CycleReport> {
    let pid = target.pid;
    if cli.user_share && pid.is_none() {
        bail!("--user-share needs the bridge's PID (--spawn, or --api with --bridge-pid)");
    }
    let mut windows = Vec::new();
    let mut simulcast = false;
    for round in 1..=cli.rounds {
        for &w in &cli.subscribe_cycle {
            match w {
                Window::Plain | Window::Simulcast => rig.unsubscribe(),
                Window::Subscribe(k) => rig.subscribe(k)?,
            }
            // Simulcast parts are set when an endpoint is added: the conferences are programmed
            // again when they change.
            let sim = w == Window::Simulcast;
            rig.simulcast(sim)?;
            if sim != simulcast {
                rt.block_on(target.reprogram(&rig.members()?))?;
                simulcast = sim;
            } else {
                rt.block_on(target.set_subscriptions(&rig.members()?))?;
            }
            let sampler = pid
                .filter(|_| cli.user_share)
                .and_then(ringbridge_bench::cpu::UserSampler::start);
            let r = rig.run(target.media, &target.pids(), load, opts, &Live::default())?;
            let user_share = sampler.and_then(|s| s.finish());
            let report = Report::new(&target.label, topo, load, cli.warmup, &r);
            if !cli.quiet {
                eprintln!(
                    "round {round} {:<12} {:>6.0} ns/copy  {:>5.1}% of a core  user share {}  lost {}  misrouted {}",
                    w.label(),
                    report
                        .bridge_cpu_ns_per_forwarded_packet
                        .unwrap_or(f64::NAN),
                    report.bridge_cpu_percent.unwrap_or(f64::NAN),
                    user_share.map_or("-".into(), |u| format!("{:.2}%", u * 100.0)),
                    report.lost_packets,
                    report.misrouted_packets
                );
            }
            let interrupted = report.interrupted;
            windows.push(CycleWindow {
                round,
                window: w.label(),
                user_share,
                report,
            });
            if interrupted {
                break;
            }
        }
        if opts.stop.load(Relaxed) {
            break;
        }
    }
    Ok(CycleReport {
        target: target.label.clone(),
        cycle: cli.subscribe_cycle.iter().map(|w| w.label()).collect(),
        windows,
    })
}

fn parse_profile(s: &str) -> Result<Profile, String> {
    Profile::from_name(s).ok_or_else(|| format!("unknown SRTP profile {s:?}"))
}

impl Cli {
    fn load(&self) -> anyhow::Result<Load> {
        let mut streams = Vec::new();
        if let Some(pps) = self.pps {
            if !(MIN_PACKET..=MAX_PACKET).contains(&self.size) {
                bail!("--size must be {MIN_PACKET}..={MAX_PACKET} bytes");
            }
            streams.push(Stream {
                pps,
                size: self.size,
            });
        }
        if self.audio {
            streams.push(Load::audio());
        }
        if let Some(k) = self.video_kbps {
            streams.push(Load::video(k));
        }
        if streams.is_empty() {
            streams.push(Load::audio());
        }
        if streams.iter().any(|s| s.pps.is_nan() || s.pps <= 0.0) {
            bail!("rates must be positive");
        }
        Ok(Load { streams })
    }
}

fn main() -> anyhow::Result<()> {
    let mut cli = Cli::parse();
    if let Some(v) = cli.viewers {
        if v == 0 {
            bail!("--viewers: at least 1");
        }
        cli.participants = v + 1;
        cli.senders = Some(1);
    }
    if cli.participants < 2 || cli.conferences == 0 {
        bail!("need at least 1 conference of 2 participants");
    }
    let load = cli.load()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        rt.spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!("\ninterrupted: finishing with a partial report");
                stop.store(true, Relaxed);
            }
        });
    }
    let topo = Topology {
        conferences: cli.conferences,
        participants: cli.participants,
        senders: cli.senders.unwrap_or(cli.participants),
        bind_ip: cli.bind_ip,
        srtp: cli.srtp,
    };
    let mut rig =
        Rig::new(topo.clone(), load.streams.len()).context("binding participant sockets")?;
    // Every run of this process goes through the one target.
    rig.carry_sequences();
    if let Some(k) = cli.subscribe {
        rig.subscribe(k)?;
    }
    let members = rig.members()?;
    let mut target = rt.block_on(async {
        match (&cli.api, cli.spawn) {
            (Some(api), None) => Target::remote(api, &members, cli.bridge_pid).await,
            (None, Some(kind)) => Target::spawn(kind, &members, cli.workers, !cli.no_pin).await,
            _ => bail!("give --api ADDR (a running bridge) or --spawn uring|mio|floor|naive"),
        }
    })?;
    let opts = RunOpts {
        duration: Duration::from_secs_f64(cli.duration),
        warmup: Duration::from_secs_f64(cli.warmup),
        drain: Duration::from_millis(cli.drain_ms),
        stop: stop.clone(),
    };
    if !cli.subscribe_cycle.is_empty() {
        let report = cycle(&cli, &rt, &mut rig, &mut target, (&topo, &load, &opts))?;
        if let Some(path) = &cli.json {
            std::fs::write(path, serde_json::to_string_pretty(&report)?)
                .with_context(|| format!("writing {}", path.display()))?;
        }
        rt.block_on(target.close());
        return Ok(());
    }
    let live = Live::default();
    let bar = (!cli.quiet).then(|| {
        let total = ((cli.warmup + cli.duration) * 10.0) as u64;
        let b = ProgressBar::new(total);
        b.set_style(
            ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {msg}")
                .expect("template"),
        );
        b
    });
    let result = std::thread::scope(|s| {
        let ticker = bar.as_ref().map(|b| {
            let live = &live;
            let stop = &stop;
            s.spawn(move || {
                let mut last = 0;
                while !b.is_finished() && !stop.load(Relaxed) {
                    std::thread::sleep(Duration::from_millis(100));
                    let rx = live.received.load(Relaxed);
                    b.inc(1);
                    b.set_message(format!(
                        "sent {} | received {} ({}/s)",
                        live.sent.load(Relaxed),
                        rx,
                        (rx - last) * 10
                    ));
                    last = rx;
                }
            })
        });
        let r = rig.run(target.media, &target.pids(), &load, &opts, &live);
        if let Some(b) = &bar {
            b.finish_and_clear();
        }
        if let Some(t) = ticker {
            let _ = t.join();
        }
        r
    })?;
    let mut report = Report::new(&target.label, &topo, &load, cli.warmup, &result);
    if cli.find_max && !result.interrupted {
        let fm = drive::find_max(
            &mut rig,
            &target,
            &load,
            Duration::from_secs_f64(cli.step_secs),
            &opts,
            |s| {
                if !cli.quiet {
                    eprintln!(
                        "find-max: offered {:.0} pps -> forwarded {:.0}/s, loss {:.4}%, p99 {:.0} us",
                        s.offered_pps,
                        s.forwarded_pps,
                        s.loss_ratio * 100.0,
                        s.p99_us
                    );
                }
            },
        )?;
        report.find_max = Some(fm);
    }
    if !cli.quiet {
        print!("{}", report.table());
    }
    if let Some(path) = &cli.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    rt.block_on(target.close());
    Ok(())
}
