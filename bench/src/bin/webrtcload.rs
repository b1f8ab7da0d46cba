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
//! stamped with the measuring window it was sent in, its send time and its sequence number. The
//! viewers decrypt every copy. Then `--reps` pairs of windows:
//!
//! - **B**: `--handshakes` endpoints (added beforehand in one `Apply`, in a conference of their
//!   own, outside the window) start ICE + DTLS at the same moment, each from its own socket,
//!   DTLS 1.2 and 1.3 alternately; the window lasts until the last one has connected or failed
//!   (each gives up after 10 s). Their conference is deleted after the window.
//! - **A**: after a pause, a window of the same length with nothing but the stream.
//!
//! Per window: the bridge's CPU by thread from `/proc/PID/task/TID/schedstat` (nanoseconds, the
//! scheduler's accounting): the forwarding worker (`mio-0` / `uring-0`, with any `iou-*` io_uring
//! helper threads), the transport thread (`webrtc`) and the whole process; the copies the
//! viewers received and decrypted that were sent in the window, the copies lost, and the
//! one-way latency (send stamp to receipt, one clock). The figure is the worker's CPU ns per
//! copy in B over A, per repetition; the median and range over repetitions are reported.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use hdrhistogram::Histogram;
use ringbridge_bench::cpu::{SplitCpus, threads_ns};
use ringbridge_bench::report::{host, today};
use ringbridge_bench::target::binary;
use ringbridge_bench::webrtc::{
    ClientCert, ClientProgress, Credentials, Keys, Version, dtls_client, poll_client,
};
use ringbridge_dataplane::webrtc::stun::{Class, Message, TransactionId};
use ringbridge_proto::v1 as pb;
use ringbridge_proto::v1::bridge_client::BridgeClient;
use serde::Serialize;
use tonic::transport::Channel;

const PUB_SSRC: u32 = 0x5eed_0001;
/// Marks the rig's payloads.
const MAGIC: u32 = 0x7762_7463;
/// How long one handshake may take before it counts as failed.
const HANDSHAKE_LIMIT: Duration = Duration::from_secs(10);

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
    #[arg(long, default_value_t = 500)]
    pps: u32,
    /// Size of each RTP packet before SRTP, bytes.
    #[arg(long, default_value_t = 1000)]
    size: usize,
    /// Handshakes started at once in each B window.
    #[arg(long, default_value_t = 200)]
    handshakes: u32,
    /// B/A window pairs per engine.
    #[arg(long, default_value_t = 5)]
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

/// Why a client's handshake did not complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
enum Failure {
    /// No answer to its checks.
    Ice,
    /// dimpl's client failed or gave up.
    Dtls,
    /// Not done within [`HANDSHAKE_LIMIT`].
    Timeout,
}

/// ICE (nominating checks every 200 ms until one is answered) then DTLS as the client, from
/// `sock`; the SRTP keys once connected.
async fn connect(
    sock: &tokio::net::UdpSocket,
    media: SocketAddr,
    creds: &Credentials,
    cert: &ClientCert,
    version: Version,
) -> Result<Keys, Failure> {
    let deadline = tokio::time::Instant::now() + HANDSHAKE_LIMIT;
    let mut buf = [0u8; 2048];
    loop {
        let check = creds.binding_request(true, TransactionId::random());
        sock.send_to(&check, media)
            .await
            .map_err(|_| Failure::Ice)?;
        let wait = tokio::time::Instant::now() + Duration::from_millis(200);
        match tokio::time::timeout_at(wait.min(deadline), sock.recv(&mut buf)).await {
            Ok(Ok(n))
                if Message::parse(&buf[..n]).is_ok_and(|m| m.class() == Class::SuccessResponse) =>
            {
                break;
            }
            _ if tokio::time::Instant::now() >= deadline => return Err(Failure::Ice),
            _ => {}
        }
    }
    let mut client = dtls_client(version, cert, Instant::now());
    let mut progress = ClientProgress::default();
    loop {
        client
            .handle_timeout(Instant::now())
            .map_err(|_| Failure::Dtls)?;
        let mut out = Vec::new();
        poll_client(&mut client, &mut progress, |d| out.push(d.to_vec()));
        for d in &out {
            sock.send_to(d, media).await.map_err(|_| Failure::Dtls)?;
        }
        if let Some((profile, km)) = progress.material.as_ref().filter(|_| progress.connected) {
            return Keys::from_export(*profile, km).ok_or(Failure::Dtls);
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return Err(Failure::Timeout);
        }
        let timer = progress
            .timeout
            .map_or(Duration::from_millis(50), |t| {
                t.saturating_duration_since(Instant::now())
            })
            .clamp(Duration::from_millis(1), Duration::from_millis(50));
        if let Ok(Ok(n)) = tokio::time::timeout_at(now + timer, sock.recv(&mut buf)).await
            && (20..=63).contains(&buf[0])
        {
            // A datagram dimpl refuses is its business; its timers decide the outcome.
            let _ = client.handle_packet(&buf[..n]);
        }
    }
}

/// One client: its credentials, the certificate it presents, the version it offers.
struct Joiner {
    creds: Credentials,
    cert: ClientCert,
    version: Version,
}

impl Joiner {
    fn add_request(&self, conference: &str, ssrcs: Vec<u32>) -> pb::AddEndpointRequest {
        pb::AddEndpointRequest {
            conference_id: conference.into(),
            endpoint_id: self.creds.local_ufrag.clone(),
            ssrcs,
            webrtc: Some(self.creds.params(&self.cert.fingerprint)),
            ..Default::default()
        }
    }
}

/// Adds `joiners` to a new conference `conference` in one Apply; the first sends `PUB_SSRC`
/// when `first_publishes`.
async fn add_all(
    api: &mut BridgeClient<Channel>,
    conference: &str,
    joiners: &[Joiner],
    first_publishes: bool,
) -> anyhow::Result<()> {
    let mut changes = vec![pb::Change {
        change: Some(pb::change::Change::CreateConference(
            pb::CreateConferenceRequest {
                conference_id: conference.into(),
            },
        )),
    }];
    for (i, j) in joiners.iter().enumerate() {
        let ssrcs = if i == 0 && first_publishes {
            vec![PUB_SSRC]
        } else {
            vec![]
        };
        changes.push(pb::Change {
            change: Some(pb::change::Change::AddEndpoint(
                j.add_request(conference, ssrcs),
            )),
        });
    }
    let results = api
        .apply(pb::ApplyRequest { changes })
        .await?
        .into_inner()
        .results;
    if let Some(r) = results.iter().find(|r| r.code != 0) {
        bail!("Apply in {conference}: {}", r.message);
    }
    Ok(())
}

/// What a burst of handshakes did.
#[derive(Debug, Default, Serialize)]
struct Burst {
    completed: u32,
    failed: BTreeMap<String, u32>,
    /// Check sent -> keys, ms.
    handshake_ms_p50: f64,
    handshake_ms_p99: f64,
    handshake_ms_max: f64,
}

/// Runs every joiner's handshake at once (one task each); returns what happened and the
/// established sockets and keys of those that connected, in joiner order.
async fn burst(
    media: SocketAddr,
    joiners: Vec<Joiner>,
    sockets: Vec<tokio::net::UdpSocket>,
) -> (Burst, Vec<Option<(tokio::net::UdpSocket, Keys)>>) {
    let mut set = tokio::task::JoinSet::new();
    for (i, (j, sock)) in joiners.into_iter().zip(sockets).enumerate() {
        set.spawn(async move {
            let t = Instant::now();
            let r = connect(&sock, media, &j.creds, &j.cert, j.version).await;
            (i, t.elapsed(), r.map(|k| (sock, k)))
        });
    }
    let mut out = Burst::default();
    let mut times = Histogram::<u64>::new(3).expect("3 significant figures");
    let mut established: Vec<Option<(tokio::net::UdpSocket, Keys)>> = Vec::new();
    while let Some(joined) = set.join_next().await {
        let (i, took, r) = joined.expect("handshake task panicked");
        if established.len() <= i {
            established.resize_with(i + 1, || None);
        }
        match r {
            Ok(e) => {
                out.completed += 1;
                times.saturating_record(took.as_micros() as u64);
                established[i] = Some(e);
            }
            Err(f) => {
                *out.failed
                    .entry(format!("{f:?}").to_lowercase())
                    .or_default() += 1
            }
        }
    }
    out.handshake_ms_p50 = times.value_at_quantile(0.5) as f64 / 1e3;
    out.handshake_ms_p99 = times.value_at_quantile(0.99) as f64 / 1e3;
    out.handshake_ms_max = times.max() as f64 / 1e3;
    (out, established)
}

/// What the viewers received of the packets sent in one window.
#[derive(Debug)]
struct WindowRx {
    copies: u64,
    undecryptable: u64,
    latency_us: Histogram<u64>,
}

impl Default for WindowRx {
    fn default() -> Self {
        Self {
            copies: 0,
            undecryptable: 0,
            latency_us: Histogram::new(3).expect("3 significant figures"),
        }
    }
}

/// The stream: the publisher's sender and the viewers' receiver threads, and what they count
/// per window id (0: between windows, not counted).
struct Stream {
    window: Arc<AtomicU32>,
    sent: Arc<Mutex<BTreeMap<u32, u64>>>,
    received: Arc<Mutex<BTreeMap<u32, WindowRx>>>,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

/// The packet index a receiver makes of `seq`: the one nearest the highest seen so far.
fn estimate_index(highest: u64, seq: u16) -> u64 {
    let base = highest & !0xffff;
    [base.wrapping_sub(0x1_0000), base, base + 0x1_0000]
        .into_iter()
        .map(|b| b | u64::from(seq))
        .min_by_key(|&i| i.abs_diff(highest))
        .expect("three candidates")
}

impl Stream {
    /// Starts sending from `publisher` at `pps` and receiving on `viewers`; every endpoint sends
    /// a consent check each second.
    fn start(
        media: SocketAddr,
        publisher: (UdpSocket, Keys, Credentials),
        viewers: Vec<(UdpSocket, Keys, Credentials)>,
        pps: u32,
        size: usize,
    ) -> anyhow::Result<Self> {
        let s = Self {
            window: Arc::new(AtomicU32::new(0)),
            sent: Arc::default(),
            received: Arc::default(),
            stop: Arc::new(AtomicBool::new(false)),
            threads: Vec::new(),
        };
        let epoch = Instant::now();
        let mut consent: Vec<(UdpSocket, Credentials)> = vec![];
        for (sock, _, c) in std::iter::once(&publisher).chain(&viewers) {
            consent.push((sock.try_clone()?, c.clone()));
        }
        let (window, sent, stop) = (s.window.clone(), s.sent.clone(), s.stop.clone());
        let sender = std::thread::Builder::new()
            .name("sender".into())
            .spawn(move || {
                let (sock, keys, _) = publisher;
                let interval = Duration::from_secs_f64(1.0 / f64::from(pps));
                let (mut plain, mut wire) = (vec![0u8; size.max(32)], vec![0u8; size.max(32) + 64]);
                let (mut index, mut next, mut next_consent) =
                    (0u64, Instant::now(), Instant::now());
                while !stop.load(Relaxed) {
                    let now = Instant::now();
                    if now >= next_consent {
                        for (sock, c) in &consent {
                            let _ = sock
                                .send_to(&c.binding_request(false, TransactionId::random()), media);
                        }
                        next_consent += Duration::from_secs(1);
                    }
                    if now < next {
                        std::thread::sleep((next - now).min(Duration::from_millis(5)));
                        continue;
                    }
                    let w = window.load(Relaxed);
                    plain[..2].copy_from_slice(&[0x80, 96]);
                    plain[2..4].copy_from_slice(&(index as u16).to_be_bytes());
                    plain[4..8].copy_from_slice(&((index as u32).wrapping_mul(3000)).to_be_bytes());
                    plain[8..12].copy_from_slice(&PUB_SSRC.to_be_bytes());
                    plain[12..16].copy_from_slice(&MAGIC.to_be_bytes());
                    plain[16..20].copy_from_slice(&w.to_be_bytes());
                    let stamp = epoch.elapsed().as_nanos() as u64;
                    plain[20..28].copy_from_slice(&stamp.to_be_bytes());
                    let n = keys
                        .tx
                        .protect_rtp(&plain, index, &mut wire)
                        .expect("the buffer has room for the tag");
                    if sock.send_to(&wire[..n], media).is_ok() {
                        *sent.lock().unwrap().entry(w).or_default() += 1;
                    }
                    index += 1;
                    next += interval;
                }
            })?;
        let (received, stop) = (s.received.clone(), s.stop.clone());
        let receiver = std::thread::Builder::new()
            .name("receiver".into())
            .spawn(move || receive(viewers, epoch, &received, &stop))?;
        Ok(Self {
            threads: vec![sender, receiver],
            ..s
        })
    }

    fn sent(&self, w: u32) -> u64 {
        self.sent.lock().unwrap().get(&w).copied().unwrap_or(0)
    }

    fn take_received(&self, w: u32) -> WindowRx {
        self.received.lock().unwrap().remove(&w).unwrap_or_default()
    }

    fn stop(self) {
        self.stop.store(true, Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// The viewers' receive loop: epoll over their sockets, every copy decrypted with its viewer's
/// keys and counted in the window its stamp names.
fn receive(
    viewers: Vec<(UdpSocket, Keys, Credentials)>,
    epoch: Instant,
    received: &Mutex<BTreeMap<u32, WindowRx>>,
    stop: &AtomicBool,
) {
    let mut poll = mio::Poll::new().expect("epoll");
    let mut socks = Vec::new();
    for (i, (sock, keys, _)) in viewers.into_iter().enumerate() {
        sock.set_nonblocking(true).expect("nonblocking");
        let mut s = mio::net::UdpSocket::from_std(sock);
        poll.registry()
            .register(&mut s, mio::Token(i), mio::Interest::READABLE)
            .expect("register");
        socks.push((s, keys, 0u64));
    }
    let mut events = mio::Events::with_capacity(64);
    let mut buf = [0u8; 2048];
    while !stop.load(Relaxed) {
        let _ = poll.poll(&mut events, Some(Duration::from_millis(50)));
        for ev in &events {
            let (sock, keys, highest) = &mut socks[ev.token().0];
            while let Ok(n) = sock.recv(&mut buf) {
                // STUN answers (0-3) and anything but RTP are not copies.
                if n < 12 || buf[0] >> 6 != 2 || (192..=223).contains(&buf[1]) {
                    continue;
                }
                let at = Instant::now();
                let index = estimate_index(*highest, u16::from_be_bytes([buf[2], buf[3]]));
                let mut got = received.lock().unwrap();
                let Ok(m) = keys.rx.unprotect_rtp(&mut buf[..n], index) else {
                    got.entry(0).or_default().undecryptable += 1;
                    continue;
                };
                *highest = (*highest).max(index);
                if m < 28 || buf[12..16] != MAGIC.to_be_bytes() {
                    got.entry(0).or_default().undecryptable += 1;
                    continue;
                }
                let w = u32::from_be_bytes(buf[16..20].try_into().expect("4 bytes"));
                let stamp = u64::from_be_bytes(buf[20..28].try_into().expect("8 bytes"));
                let now = at.duration_since(epoch).as_nanos() as u64;
                let rx = got.entry(w).or_default();
                rx.copies += 1;
                rx.latency_us
                    .saturating_record(now.saturating_sub(stamp) / 1000);
            }
        }
    }
}

/// The bridge's CPU by thread group, ns.
#[derive(Debug, Clone, Copy, Default)]
struct Cpu {
    worker: u64,
    transport: u64,
    total: u64,
}

fn cpu(pid: u32) -> Cpu {
    let mut c = Cpu::default();
    for (name, ns) in threads_ns(pid) {
        c.total += ns;
        if ["mio-", "uring-", "iou-"]
            .iter()
            .any(|p| name.starts_with(p))
        {
            c.worker += ns;
        } else if name == "webrtc" {
            c.transport += ns;
        }
    }
    c
}

/// One measured window.
#[derive(Debug, Serialize)]
struct Window {
    rep: u32,
    /// "handshakes" (B) or "quiet" (A).
    phase: &'static str,
    seconds: f64,
    packets_sent: u64,
    copies: u64,
    lost: i64,
    undecryptable: u64,
    worker_ns_per_copy: f64,
    /// The worker's share of its core over the window.
    worker_cpu_share: f64,
    transport_cpu_ms: f64,
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

#[derive(Debug, Serialize)]
struct EngineResult {
    engine: String,
    skipped: Option<String>,
    windows: Vec<Window>,
    /// Worker CPU per copy with handshakes / without, per repetition.
    ratios: Vec<f64>,
    ratio_median: f64,
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

/// `n` joiners numbered from `*next`, alternating DTLS 1.2 and 1.3, and a socket each.
async fn joiners(
    n: u32,
    next: &mut u32,
    certs: &[ClientCert],
) -> anyhow::Result<(Vec<Joiner>, Vec<tokio::net::UdpSocket>)> {
    let mut js = Vec::new();
    let mut socks = Vec::new();
    for _ in 0..n {
        *next += 1;
        js.push(Joiner {
            creds: Credentials::new(*next),
            cert: certs[*next as usize % certs.len()].clone(),
            version: if *next % 2 == 0 {
                Version::V12
            } else {
                Version::V13
            },
        });
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)?;
        s.set_recv_buffer_size(1 << 20)?;
        s.set_nonblocking(true)?;
        s.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())?;
        socks.push(tokio::net::UdpSocket::from_std(s.into())?);
    }
    Ok((js, socks))
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
        ratios: Vec::new(),
        ratio_median: f64::NAN,
    };
    let Some(mut b) = start_bridge(engine, split).await? else {
        result.skipped = Some(format!("the bridge did not start with --engine {engine}"));
        return Ok(result);
    };
    let mut next = 0;
    // The stream's endpoints: publisher first, then the viewers.
    let (js, socks) = joiners(1 + cli.viewers, &mut next, certs).await?;
    add_all(&mut b.api, "stream", &js, true).await?;
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
    let stream = Stream::start(b.media, publisher, ends, cli.pps, cli.size)?;
    tokio::time::sleep(Duration::from_secs(1)).await;

    for rep in 0..cli.reps {
        let conf = format!("join-{rep}");
        let (js, socks) = joiners(cli.handshakes, &mut next, certs).await?;
        add_all(&mut b.api, &conf, &js, false).await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let b_window = 2 * rep + 1;
        let (c0, k0, t0) = (cpu(b.pid), counters(&mut b.api).await?, Instant::now());
        stream.window.store(b_window, Relaxed);
        let (done, established) = burst(b.media, js, socks).await;
        stream.window.store(0, Relaxed);
        let (c1, k1, seconds) = (cpu(b.pid), counters(&mut b.api).await?, t0.elapsed());
        drop(established);
        b.api
            .delete_conference(pb::DeleteConferenceRequest {
                conference_id: conf,
            })
            .await?;
        tokio::time::sleep(Duration::from_millis(700)).await;

        let a_window = 2 * rep + 2;
        let (a0, ak0, at0) = (cpu(b.pid), counters(&mut b.api).await?, Instant::now());
        stream.window.store(a_window, Relaxed);
        tokio::time::sleep(seconds).await;
        stream.window.store(0, Relaxed);
        let (a1, ak1, a_seconds) = (cpu(b.pid), counters(&mut b.api).await?, at0.elapsed());
        // Copies in flight when a window closed.
        tokio::time::sleep(Duration::from_millis(300)).await;

        let wb = window(
            &stream,
            cli,
            rep,
            "handshakes",
            b_window,
            seconds,
            (c0, c1),
            (&k0, &k1),
        );
        let wa = window(
            &stream,
            cli,
            rep,
            "quiet",
            a_window,
            a_seconds,
            (a0, a1),
            (&ak0, &ak1),
        );
        let wb = Window {
            burst: Some(done),
            ..wb
        };
        result
            .ratios
            .push(wb.worker_ns_per_copy / wa.worker_ns_per_copy);
        print_window(engine, &wb);
        print_window(engine, &wa);
        result.windows.push(wb);
        result.windows.push(wa);
    }
    stream.stop();
    let mut r = result.ratios.clone();
    r.sort_by(f64::total_cmp);
    result.ratio_median = r.get(r.len() / 2).copied().unwrap_or(f64::NAN);
    Ok(result)
}

#[allow(clippy::too_many_arguments)]
fn window(
    stream: &Stream,
    cli: &Cli,
    rep: u32,
    phase: &'static str,
    id: u32,
    seconds: Duration,
    (c0, c1): (Cpu, Cpu),
    (k0, k1): (&pb::Counters, &pb::Counters),
) -> Window {
    let sent = stream.sent(id);
    let rx = stream.take_received(id);
    let copies = rx.copies.max(1) as f64;
    let drops = |k: &pb::Counters| k.drops.as_ref().map_or(0, |d| d.transport_queue_full);
    Window {
        rep,
        phase,
        seconds: seconds.as_secs_f64(),
        packets_sent: sent,
        copies: rx.copies,
        lost: (sent * u64::from(cli.viewers)) as i64 - rx.copies as i64,
        undecryptable: rx.undecryptable,
        worker_ns_per_copy: (c1.worker - c0.worker) as f64 / copies,
        worker_cpu_share: (c1.worker - c0.worker) as f64 / seconds.as_nanos() as f64,
        transport_cpu_ms: (c1.transport - c0.transport) as f64 / 1e6,
        process_ns_per_copy: (c1.total - c0.total) as f64 / copies,
        latency_us_p50: rx.latency_us.value_at_quantile(0.5),
        latency_us_p99: rx.latency_us.value_at_quantile(0.99),
        latency_us_max: rx.latency_us.max(),
        burst: None,
        bridge_dtls_handshakes: k1.dtls_handshakes - k0.dtls_handshakes,
        bridge_dtls_failed: k1.dtls_failed - k0.dtls_failed,
        bridge_transport_queue_full: drops(k1) - drops(k0),
    }
}

fn print_window(engine: &str, w: &Window) {
    let hs = w.burst.as_ref().map_or(String::new(), |b| {
        format!(
            "  handshakes {} ok {:?} failed, p50 {:.0} ms p99 {:.0} ms",
            b.completed, b.failed, b.handshake_ms_p50, b.handshake_ms_p99
        )
    });
    println!(
        "{engine:<5} rep {} {:<10} {:>5.2} s {:>6} copies lost {:>3}  worker {:>6.0} ns/copy ({:>4.1}% core)  webrtc {:>6.1} ms  process {:>6.0} ns/copy  latency p50 {} µs p99 {} µs{hs}",
        w.rep,
        w.phase,
        w.seconds,
        w.copies,
        w.lost,
        w.worker_ns_per_copy,
        100.0 * w.worker_cpu_share,
        w.transport_cpu_ms,
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
            None => println!(
                "{}: worker CPU per copy with {} handshakes / without: median {:.3}x over {} reps {:?}",
                e.engine,
                cli.handshakes,
                e.ratio_median,
                e.ratios.len(),
                e.ratios
                    .iter()
                    .map(|r| format!("{r:.3}"))
                    .collect::<Vec<_>>()
            ),
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

#[cfg(test)]
mod tests {
    use super::estimate_index;

    #[test]
    fn index_follows_the_highest_seen() {
        assert_eq!(estimate_index(0, 5), 5);
        assert_eq!(estimate_index(65_530, 3), 65_539);
        assert_eq!(estimate_index(65_539, 65_534), 65_534);
        assert_eq!(estimate_index(200_000, 200_001 % 65_536), 200_001);
    }
}
