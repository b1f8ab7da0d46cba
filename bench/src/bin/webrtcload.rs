//! `ringbridge-webrtcload`: RTP forwarding CPU per copy of established WebRTC endpoints while
//! `--handshakes` new endpoints do ICE + DTLS at once, against the same without handshakes in
//! the same run.
//!
//! For each engine: starts `ringbridge --engine E --workers 1 --no-pin`, confined to the last CPU
//! (the rig on the one before; `--shared-cpus` leaves both free), so its worker and its WebRTC
//! transport thread share one core, as on a bridge with one worker per core. One publisher and
//! `--viewers` receive-only viewers connect as WebRTC endpoints the way
//! `dataplane/tests/webrtc.rs` does (a nominating ICE check written with our STUN writer, then
//! dimpl's DTLS client, then SRTP with the exported keys), every one sends a consent check each
//! second, and the publisher sends `--pps` SRTP packets of `--size` bytes per second, each
//! stamped with the measuring window it was sent in and its send time. The viewers decrypt
//! every copy. Then `--reps` rounds of three windows of equal length:
//!
//! - **handshakes**: `--handshakes` endpoints (added beforehand in one `Apply`, in a conference
//!   of their own, outside the window) start ICE + DTLS at the same moment, each from its own
//!   socket, DTLS 1.2 and 1.3 alternately; the window lasts until the last one has connected or
//!   failed (each gives up after 10 s). Their conference is deleted after the window.
//! - **quiet**: the stream alone.
//! - **quiet, rig busy**: the stream alone while the rig's control thread spins on its CPU, as
//!   busy as its handshake clients keep it in the first window: a control for the rig's side
//!   (the kernel delivers the copies to the rig's sockets in the worker's context).
//!
//! Per window: the bridge's CPU by thread from `/proc/PID/task/TID/schedstat` (nanoseconds, the
//! scheduler's accounting): the forwarding worker (`mio-0` / `uring-0`, with any `iou-*` io_uring
//! helper threads; also how long it waited for its CPU and how often it was put on it), the
//! transport thread (`webrtc`) and the whole process; the copies the viewers received and
//! decrypted that were sent in the window, the copies lost, and the one-way latency (send stamp
//! to receipt, one clock). The figure is the worker's CPU per copy with handshakes over quiet,
//! pooled over the repetitions (sum of CPU over sum of copies), with the per-repetition ratios.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use ringbridge_bench::cpu::{SplitCpus, threads};
use ringbridge_bench::report::{host, today};
use ringbridge_bench::target::binary;
use ringbridge_bench::webrtc::join::{Burst, add_all, burst, joiners};
use ringbridge_bench::webrtc::stream::Stream;
use ringbridge_bench::webrtc::{ClientCert, Credentials};
use ringbridge_proto::v1 as pb;
use ringbridge_proto::v1::bridge_client::BridgeClient;
use serde::Serialize;
use tonic::transport::Channel;

/// The publisher's SSRC.
const PUB_SSRC: u32 = 0x5eed_0001;

/// Forwarding CPU of established WebRTC endpoints with and without concurrent handshakes.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    /// Engines to measure, in turn (uring is skipped when the bridge cannot start it).
    #[arg(long, value_delimiter = ',', default_value = "mio,uring")]
    engines: Vec<String>,
    /// Receive-only viewers of the one publisher (copies per packet).
    #[arg(long, default_value_t = 20)]
    viewers: u32,
    /// Packets per second the publisher sends.
    #[arg(long, default_value_t = 1000)]
    pps: u32,
    /// Size of each RTP packet before SRTP, bytes.
    #[arg(long, default_value_t = 1000)]
    size: usize,
    /// Handshakes started at once in each handshakes window.
    #[arg(long, default_value_t = 200)]
    handshakes: u32,
    /// Rounds of the three windows per engine.
    #[arg(long, default_value_t = 10)]
    reps: u32,
    /// Do not confine the bridge and the rig to different CPUs.
    #[arg(long)]
    shared_cpus: bool,
    /// Write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// The bridge under test; killed on drop.
struct Bridge {
    child: Child,
    pid: u32,
    media: SocketAddr,
    api: BridgeClient<Channel>,
}

impl Drop for Bridge {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts a bridge with `engine` (on the forwarder CPU when `split`), `None` when it exits
/// before its ready line (an engine this kernel lacks).
async fn start_bridge(engine: &str, split: Option<SplitCpus>) -> anyhow::Result<Option<Bridge>> {
    if let Some(s) = split {
        s.for_forwarder()?;
    }
    let spawned = Command::new(binary("ringbridge")?)
        .args(["--engine", engine, "--workers", "1", "--no-pin"])
        .args(["--api", "127.0.0.1:0", "--media", "127.0.0.1:0"])
        .env("RUST_LOG", "error")
        .stdout(Stdio::piped())
        .spawn();
    if let Some(s) = split {
        s.for_rig()?;
    }
    let mut child = spawned.context("starting ringbridge")?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().context("piped")?).read_line(&mut line)?;
    let field = |k: &str| {
        line.split_whitespace()
            .find_map(|f| f.strip_prefix(k)?.strip_prefix('='))
            .map(str::to_string)
    };
    let (Some(media), Some(api), Some(got)) = (field("media"), field("api"), field("engine"))
    else {
        let _ = child.kill();
        let _ = child.wait();
        return Ok(None);
    };
    if got != engine {
        bail!("asked for engine {engine}, the bridge runs {got}");
    }
    let api = BridgeClient::connect(format!("http://{api}")).await?;
    Ok(Some(Bridge {
        pid: child.id(),
        child,
        media: media.parse()?,
        api,
    }))
}

/// The bridge's CPU by thread group, ns, and its worker's scheduling.
#[derive(Debug, Clone, Copy, Default)]
struct Cpu {
    worker: u64,
    /// Time the worker was runnable but another thread had its CPU.
    worker_wait: u64,
    /// Times the worker was put on its CPU.
    worker_slices: u64,
    transport: u64,
    total: u64,
}

fn cpu(pid: u32) -> Cpu {
    let mut c = Cpu::default();
    for t in threads(pid) {
        c.total += t.run_ns;
        if ["mio-", "uring-", "iou-"]
            .iter()
            .any(|p| t.name.starts_with(p))
        {
            c.worker += t.run_ns;
            c.worker_wait += t.wait_ns;
            c.worker_slices += t.slices;
        } else if t.name == "webrtc" {
            c.transport += t.run_ns;
        }
    }
    c
}

/// One measured window.
#[derive(Debug, Default, Serialize)]
struct Window {
    #[serde(skip)]
    id: u32,
    rep: u32,
    phase: Phase,
    seconds: f64,
    packets_sent: u64,
    copies: u64,
    lost: i64,
    undecryptable: u64,
    worker_ns: u64,
    /// The worker was runnable but waited for its CPU this long.
    worker_wait_ns: u64,
    /// Times the worker was put on its CPU.
    worker_slices: u64,
    transport_ns: u64,
    process_ns: u64,
    /// STUN and DTLS datagrams the worker handed to the transport thread.
    handed_off: u64,
    worker_ns_per_copy: f64,
    /// The worker's share of its core over the window.
    worker_cpu_share: f64,
    process_ns_per_copy: f64,
    latency_us_p50: u64,
    latency_us_p99: u64,
    latency_us_max: u64,
    burst: Option<Burst>,
    /// The bridge's counters over the window.
    bridge_dtls_handshakes: u64,
    bridge_dtls_failed: u64,
    bridge_transport_queue_full: u64,
}

impl Window {
    /// Takes what the stream counted for this window.
    fn collect(&mut self, stream: &Stream, viewers: u32) {
        let rx = stream.take_received(self.id);
        self.packets_sent = stream.sent(self.id);
        self.copies = rx.copies;
        self.lost = (self.packets_sent * u64::from(viewers)) as i64 - rx.copies as i64;
        self.undecryptable = rx.undecryptable;
        let copies = rx.copies.max(1) as f64;
        self.worker_ns_per_copy = self.worker_ns as f64 / copies;
        self.worker_cpu_share = self.worker_ns as f64 / (self.seconds * 1e9);
        self.process_ns_per_copy = self.process_ns as f64 / copies;
        self.latency_us_p50 = rx.latency_us.value_at_quantile(0.5);
        self.latency_us_p99 = rx.latency_us.value_at_quantile(0.99);
        self.latency_us_max = rx.latency_us.max();
    }
}

/// One phase over all repetitions, pooled: sums of CPU over sums of copies.
#[derive(Debug, Serialize)]
struct PhaseSummary {
    phase: Phase,
    seconds: f64,
    copies: u64,
    lost: i64,
    worker_ns_per_copy: f64,
    process_ns_per_copy: f64,
    transport_cpu_ms: f64,
    /// Time the worker waited for its CPU while runnable, ms.
    worker_wait_ms: f64,
    /// Times the worker was put on its CPU, per packet the publisher sent.
    worker_slices_per_packet: f64,
    /// STUN and DTLS datagrams handed to the transport thread.
    handed_off: u64,
    /// Median over the windows of their p50, and the largest p99.
    latency_us_p50_median: u64,
    latency_us_p99_max: u64,
}

#[derive(Debug, Serialize)]
struct EngineResult {
    engine: String,
    skipped: Option<String>,
    windows: Vec<Window>,
    phases: Vec<PhaseSummary>,
    /// Pooled worker CPU per copy with handshakes / quiet.
    ratio_vs_quiet: f64,
    /// Pooled worker CPU per copy with handshakes / quiet with the rig as busy.
    ratio_vs_quiet_rig_busy: f64,
    /// Per repetition, handshakes / quiet (same repetition).
    ratios_per_rep: Vec<f64>,
}

impl EngineResult {
    fn summarize(&mut self) {
        self.phases = Phase::ALL
            .iter()
            .map(|&phase| {
                let ws: Vec<&Window> = self.windows.iter().filter(|w| w.phase == phase).collect();
                let copies = ws.iter().map(|w| w.copies).sum::<u64>();
                let per_copy = |ns: u64| ns as f64 / copies.max(1) as f64;
                let mut p50: Vec<u64> = ws.iter().map(|w| w.latency_us_p50).collect();
                p50.sort_unstable();
                PhaseSummary {
                    phase,
                    seconds: ws.iter().map(|w| w.seconds).sum(),
                    copies,
                    lost: ws.iter().map(|w| w.lost).sum(),
                    worker_ns_per_copy: per_copy(ws.iter().map(|w| w.worker_ns).sum()),
                    process_ns_per_copy: per_copy(ws.iter().map(|w| w.process_ns).sum()),
                    transport_cpu_ms: ws.iter().map(|w| w.transport_ns).sum::<u64>() as f64 / 1e6,
                    worker_wait_ms: ws.iter().map(|w| w.worker_wait_ns).sum::<u64>() as f64 / 1e6,
                    worker_slices_per_packet: ws.iter().map(|w| w.worker_slices).sum::<u64>()
                        as f64
                        / ws.iter().map(|w| w.packets_sent).sum::<u64>().max(1) as f64,
                    handed_off: ws.iter().map(|w| w.handed_off).sum(),
                    latency_us_p50_median: p50.get(p50.len() / 2).copied().unwrap_or(0),
                    latency_us_p99_max: ws.iter().map(|w| w.latency_us_p99).max().unwrap_or(0),
                }
            })
            .collect();
        let per_copy = |p: Phase| {
            self.phases
                .iter()
                .find(|s| s.phase == p)
                .map_or(f64::NAN, |s| s.worker_ns_per_copy)
        };
        self.ratio_vs_quiet = per_copy(Phase::Handshakes) / per_copy(Phase::Quiet);
        self.ratio_vs_quiet_rig_busy = per_copy(Phase::Handshakes) / per_copy(Phase::QuietRigBusy);
        let of = |rep: u32, p: Phase| {
            self.windows
                .iter()
                .find(|w| w.rep == rep && w.phase == p)
                .map_or(f64::NAN, |w| w.worker_ns_per_copy)
        };
        let reps = self
            .windows
            .iter()
            .map(|w| w.rep)
            .max()
            .map_or(0, |r| r + 1);
        self.ratios_per_rep = (0..reps)
            .map(|r| of(r, Phase::Handshakes) / of(r, Phase::Quiet))
            .collect();
    }
}

#[derive(Debug, Serialize)]
struct Report {
    date: String,
    host: String,
    cpus: usize,
    /// (rig, bridge) CPUs, or none when shared.
    cpus_split: Option<(usize, usize)>,
    viewers: u32,
    pps: u32,
    size: usize,
    copies_per_s: u32,
    handshakes: u32,
    engines: Vec<EngineResult>,
}

async fn counters(api: &mut BridgeClient<Channel>) -> anyhow::Result<pb::Counters> {
    api.get_stats(pb::GetStatsRequest {})
        .await?
        .into_inner()
        .total
        .context("no total counters")
}

/// Waits until every endpoint of `conference` is `connected` on the bridge (keys installed).
async fn wait_connected(api: &mut BridgeClient<Channel>, conference: &str) -> anyhow::Result<()> {
    for _ in 0..200 {
        let confs = api
            .list_conferences(pb::ListConferencesRequest {})
            .await?
            .into_inner()
            .conferences;
        let c = confs.iter().find(|c| c.conference_id == conference);
        if c.is_some_and(|c| c.endpoints.iter().all(|e| e.webrtc_state == "connected")) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("the endpoints of {conference} never all connected")
}

async fn run_engine(
    cli: &Cli,
    engine: &str,
    split: Option<SplitCpus>,
    certs: &[ClientCert],
) -> anyhow::Result<EngineResult> {
    let mut result = EngineResult {
        engine: engine.into(),
        skipped: None,
        windows: Vec::new(),
        phases: Vec::new(),
        ratio_vs_quiet: f64::NAN,
        ratio_vs_quiet_rig_busy: f64::NAN,
        ratios_per_rep: Vec::new(),
    };
    let Some(mut b) = start_bridge(engine, split).await? else {
        result.skipped = Some(format!("the bridge did not start with --engine {engine}"));
        return Ok(result);
    };
    let mut next = 0;
    // The stream's endpoints: publisher first, then the viewers.
    let (js, socks) = joiners(1 + cli.viewers, &mut next, certs).await?;
    add_all(&mut b.api, "stream", &js, Some(PUB_SSRC)).await?;
    let creds: Vec<Credentials> = js.iter().map(|j| j.creds.clone()).collect();
    let (done, established) = burst(b.media, js, socks).await;
    if done.completed != 1 + cli.viewers {
        bail!("{engine}: the stream's endpoints did not all connect: {done:?}");
    }
    wait_connected(&mut b.api, "stream").await?;
    let mut ends = Vec::new();
    for (e, c) in established.into_iter().zip(creds) {
        let (sock, keys) = e.context("connected")?;
        let sock = sock.into_std()?;
        sock.set_nonblocking(false)?;
        ends.push((sock, keys, c));
    }
    let publisher = ends.remove(0);
    let stream = Stream::start(b.media, publisher, ends, PUB_SSRC, cli.pps, cli.size)?;
    tokio::time::sleep(Duration::from_secs(1)).await;

    for rep in 0..cli.reps {
        let conf = format!("join-{rep}");
        let (js, socks) = joiners(cli.handshakes, &mut next, certs).await?;
        add_all(&mut b.api, &conf, &js, None).await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut measure = Measure::start(&mut b, &stream, Phase::Handshakes, rep).await?;
        let (done, established) = burst(b.media, js, socks).await;
        let seconds = measure.t0.elapsed();
        let mut windows = vec![measure.finish(&mut b, Some(done)).await?];
        drop(established);
        b.api
            .delete_conference(pb::DeleteConferenceRequest {
                conference_id: conf,
            })
            .await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        for phase in [Phase::Quiet, Phase::QuietRigBusy] {
            measure = Measure::start(&mut b, &stream, phase, rep).await?;
            if phase == Phase::QuietRigBusy {
                // As busy as the rig's handshake clients keep this CPU in the handshakes window.
                let end = Instant::now() + seconds;
                while Instant::now() < end {
                    std::hint::spin_loop();
                }
            } else {
                tokio::time::sleep(seconds).await;
            }
            windows.push(measure.finish(&mut b, None).await?);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // Copies still in flight when the windows closed.
        tokio::time::sleep(Duration::from_millis(200)).await;
        for w in &mut windows {
            w.collect(&stream, cli.viewers);
            print_window(engine, w);
        }
        result.windows.extend(windows);
    }
    stream.stop();
    result.summarize();
    Ok(result)
}

/// What a window is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
enum Phase {
    /// B: `--handshakes` endpoints connect at once.
    Handshakes,
    /// A: the stream alone.
    #[default]
    Quiet,
    /// A with the rig's CPU kept as busy as its handshake clients keep it in B.
    QuietRigBusy,
}

impl Phase {
    const ALL: [Phase; 3] = [Phase::Handshakes, Phase::Quiet, Phase::QuietRigBusy];

    fn name(self) -> &'static str {
        match self {
            Phase::Handshakes => "handshakes",
            Phase::Quiet => "quiet",
            Phase::QuietRigBusy => "quiet, rig busy",
        }
    }
}

/// A window being measured: what was read at its start.
struct Measure {
    id: u32,
    phase: Phase,
    rep: u32,
    cpu: Cpu,
    counters: pb::Counters,
    t0: Instant,
    window: Arc<AtomicU32>,
}

impl Measure {
    async fn start(b: &mut Bridge, s: &Stream, phase: Phase, rep: u32) -> anyhow::Result<Self> {
        let id = 3 * rep + phase as u32 + 1;
        let (cpu, counters) = (cpu(b.pid), counters(&mut b.api).await?);
        s.window.store(id, Relaxed);
        Ok(Self {
            id,
            phase,
            rep,
            cpu,
            counters,
            t0: Instant::now(),
            window: s.window.clone(),
        })
    }

    async fn finish(&self, b: &mut Bridge, burst: Option<Burst>) -> anyhow::Result<Window> {
        self.window.store(0, Relaxed);
        let seconds = self.t0.elapsed();
        let (c1, k1) = (cpu(b.pid), counters(&mut b.api).await?);
        let (c0, k0) = (self.cpu, &self.counters);
        let drops = |k: &pb::Counters| k.drops.as_ref().map_or(0, |d| d.transport_queue_full);
        Ok(Window {
            id: self.id,
            rep: self.rep,
            phase: self.phase,
            seconds: seconds.as_secs_f64(),
            worker_ns: c1.worker - c0.worker,
            worker_wait_ns: c1.worker_wait - c0.worker_wait,
            worker_slices: c1.worker_slices - c0.worker_slices,
            handed_off: (k1.stun_rx + k1.dtls_rx) - (k0.stun_rx + k0.dtls_rx),
            transport_ns: c1.transport - c0.transport,
            process_ns: c1.total - c0.total,
            burst,
            bridge_dtls_handshakes: k1.dtls_handshakes - k0.dtls_handshakes,
            bridge_dtls_failed: k1.dtls_failed - k0.dtls_failed,
            bridge_transport_queue_full: drops(&k1) - drops(k0),
            ..Window::default()
        })
    }
}

fn print_window(engine: &str, w: &Window) {
    let hs = w.burst.as_ref().map_or(String::new(), |b| {
        format!(
            "  handshakes {} ok {:?} failed, each p50 {:.0} ms p99 {:.0} ms",
            b.completed, b.failed, b.handshake_ms_p50, b.handshake_ms_p99
        )
    });
    println!(
        "{engine:<5} rep {:<2} {:<15} {:>5.2} s {:>6} copies lost {:>3}  worker {:>6.0} ns/copy ({:>4.1}% core, waited {:>4.1} ms, {:.2} slices/packet)  webrtc {:>5.1} ms  process {:>6.0} ns/copy  latency p50 {} µs p99 {} µs{hs}",
        w.rep,
        w.phase.name(),
        w.seconds,
        w.copies,
        w.lost,
        w.worker_ns_per_copy,
        100.0 * w.worker_cpu_share,
        w.worker_wait_ns as f64 / 1e6,
        w.worker_slices as f64 / w.packets_sent.max(1) as f64,
        w.transport_ns as f64 / 1e6,
        w.process_ns_per_copy,
        w.latency_us_p50,
        w.latency_us_p99,
    );
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if cli.size < 32 {
        bail!("--size must be at least 32 (the stamp)");
    }
    let split = if cli.shared_cpus {
        None
    } else {
        let s = SplitCpus::last_two().context("fewer than two CPUs: use --shared-cpus")?;
        s.for_rig()?;
        Some(s)
    };
    // One thread for the rig's control and its handshake clients, on the rig CPU.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let certs: Vec<ClientCert> = (0..16)
        .map(|_| ClientCert::generate())
        .collect::<Result<_, _>>()?;
    let mut engines = Vec::new();
    for e in &cli.engines {
        engines.push(rt.block_on(run_engine(&cli, e, split, &certs))?);
    }
    for e in &engines {
        match &e.skipped {
            Some(why) => println!("{}: skipped ({why})", e.engine),
            None => {
                for p in &e.phases {
                    println!(
                        "{:<5} {:<15} {:>6.2} s {:>7} copies lost {:>4}  worker {:>6.0} ns/copy (waited {:.1} ms, {:.2} slices/packet, {} datagrams handed off)  process {:>6.0} ns/copy  webrtc {:>7.1} ms  latency p50 {} µs, p99 up to {} µs",
                        e.engine,
                        p.phase.name(),
                        p.seconds,
                        p.copies,
                        p.lost,
                        p.worker_ns_per_copy,
                        p.worker_wait_ms,
                        p.worker_slices_per_packet,
                        p.handed_off,
                        p.process_ns_per_copy,
                        p.transport_cpu_ms,
                        p.latency_us_p50_median,
                        p.latency_us_p99_max
                    );
                }
                let reps: Vec<String> =
                    e.ratios_per_rep.iter().map(|r| format!("{r:.2}")).collect();
                println!(
                    "{}: worker CPU per copy with {} handshakes / quiet: {:.3}x (pooled; per rep {}), / quiet with the rig as busy: {:.3}x",
                    e.engine,
                    cli.handshakes,
                    e.ratio_vs_quiet,
                    reps.join(" "),
                    e.ratio_vs_quiet_rig_busy
                );
            }
        }
    }
    let report = Report {
        date: today(),
        host: host(),
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        cpus_split: split.map(|s| s.cpus()),
        viewers: cli.viewers,
        pps: cli.pps,
        size: cli.size,
        copies_per_s: cli.pps * cli.viewers,
        handshakes: cli.handshakes,
        engines,
    };
    if let Some(path) = &cli.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
