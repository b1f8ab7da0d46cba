//! `ringbridge-dtlsbench`: DTLS-SRTP handshakes per second per core of the bridge's DTLS server
//! session ([`DtlsSession`]), DTLS 1.2 and 1.3, in memory.
//!
//! Each handshake is a fresh `DtlsSession` (the bridge's certificate, expecting the client's
//! fingerprint) against a fresh dimpl client with its own certificate (a small pool, made before
//! anything is timed), the datagrams shuttled between them on one thread in virtual time (1 ms
//! per hop: no retransmission timer ever fires). Only the server's calls are timed: the thread's
//! CPU clock (`CLOCK_THREAD_CPUTIME_ID`) read around each of them (creating the session, handing
//! it a flight, draining its datagrams and events), summed per handshake. Handshakes per second
//! per core = 1 s / mean server CPU per handshake. The client's CPU is reported beside it.
//!
//! Baseline, same run, interleaved handshake by handshake: a bare dimpl server with the same
//! settings (MTU, no cookie exchange, its own P-256 certificate) driven the same way: what our
//! session adds on top of the library (the ClientHello filter, the fingerprint check, the key
//! split) is the ratio of the two.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use dimpl::{Dtls, Output};
use ringbridge_bench::cpu::thread_ns;
use ringbridge_bench::report::{host, today};
use ringbridge_bench::webrtc::{ClientCert, ClientProgress, Version, dtls_client, poll_client};
use ringbridge_dataplane::webrtc::dtls::{
    Certificate, DtlsEvent, DtlsSession, DtlsVersion, MTU, SessionState,
};
use serde::Serialize;

/// DTLS handshake cost of the bridge's server session.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    /// Timed handshakes per version and server (after the warm-up).
    #[arg(long, default_value_t = 500)]
    handshakes: usize,
    /// Untimed handshakes per version and server first.
    #[arg(long, default_value_t = 20)]
    warmup: usize,
    /// Do not pin the thread to the last CPU.
    #[arg(long)]
    no_pin: bool,
    /// Write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// The server under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
enum Kind {
    /// `ringbridge_dataplane::webrtc::dtls::DtlsSession`.
    DtlsSession,
    /// `dimpl::Dtls` as a server, nothing around it.
    BareDimpl,
}

/// A DTLS server the driver can shuttle datagrams to.
trait Server {
    /// One datagram from the client at `now`.
    fn handle(&mut self, datagram: &[u8], now: Instant);
    /// Moves the datagrams for the client into `out`; true once connected with keys.
    fn drain(&mut self, out: &mut Vec<Vec<u8>>) -> anyhow::Result<bool>;
}

struct Ours {
    session: DtlsSession,
    connected: bool,
    want: DtlsVersion,
}

impl Server for Ours {
    fn handle(&mut self, datagram: &[u8], now: Instant) {
        self.session.handle_packet(datagram, now);
    }

    fn drain(&mut self, out: &mut Vec<Vec<u8>>) -> anyhow::Result<bool> {
        out.extend(std::iter::from_fn(|| self.session.poll_transmit()));
        while let Some(e) = self.session.poll_event() {
            match e {
                DtlsEvent::Connected { version, .. } if version == self.want => {
                    self.connected = true
                }
                e => bail!("DtlsSession: {e:?} (state {:?})", self.session.state()),
            }
        }
        Ok(self.connected && self.session.state() == SessionState::Connected)
    }
}

struct Bare {
    dtls: Dtls,
    buf: Vec<u8>,
    connected: bool,
    keys: bool,
    error: Option<dimpl::Error>,
}

impl Server for Bare {
    fn handle(&mut self, datagram: &[u8], now: Instant) {
        // As DtlsSession does: bring dimpl's clock to `now`, then the datagram.
        if let Err(e) = self
            .dtls
            .handle_timeout(now)
            .and_then(|()| self.dtls.handle_packet(datagram))
        {
            self.error.get_or_insert(e);
        }
    }

    fn drain(&mut self, out: &mut Vec<Vec<u8>>) -> anyhow::Result<bool> {
        if let Some(e) = &self.error {
            bail!("bare dimpl server: {e}");
        }
        loop {
            match self.dtls.poll_output(&mut self.buf) {
                Output::Packet(p) => out.push(p.to_vec()),
                Output::Connected => self.connected = true,
                Output::KeyingMaterial(..) => self.keys = true,
                Output::Timeout(_) => break,
                _ => {}
            }
        }
        Ok(self.connected && self.keys)
    }
}

/// The bridge's identity for each server: ours, and the bare server's certificate and settings
/// (those `Certificate::generate` uses).
struct Identities {
    ours: Certificate,
    bare_cert: dimpl::DtlsCertificate,
    bare_config: Arc<dimpl::Config>,
}

impl Identities {
    fn new() -> anyhow::Result<Self> {
        let bare_config = dimpl::Config::builder()
            .mtu(MTU)
            .use_server_cookie(false)
            .build()?;
        Ok(Self {
            ours: Certificate::generate()?,
            bare_cert: dimpl::certificate::generate_self_signed_certificate()?,
            bare_config: Arc::new(bare_config),
        })
    }

    fn server(&self, kind: Kind, v: Version, client: &ClientCert, now: Instant) -> Box<dyn Server> {
        match kind {
            Kind::DtlsSession => Box::new(Ours {
                session: DtlsSession::new(&self.ours, client.fingerprint.parse().unwrap(), now),
                connected: false,
                want: match v {
                    Version::V12 => DtlsVersion::Dtls12,
                    Version::V13 => DtlsVersion::Dtls13,
                },
            }),
            Kind::BareDimpl => Box::new(Bare {
                dtls: Dtls::new_auto(Arc::clone(&self.bare_config), self.bare_cert.clone(), now),
                buf: vec![0; MTU + 64],
                connected: false,
                keys: false,
                error: None,
            }),
        }
    }
}

/// CPU and wall time spent inside one side's calls.
#[derive(Debug, Default, Clone, Copy)]
struct Cost {
    cpu_ns: u64,
    wall_ns: u64,
}

impl Cost {
    fn timed<R>(&mut self, f: impl FnOnce() -> R) -> R {
        let (c, w) = (thread_ns(), Instant::now());
        let r = f();
        self.cpu_ns += thread_ns() - c;
        self.wall_ns += w.elapsed().as_nanos() as u64;
        r
    }
}

/// One handshake; returns the server's and the client's costs and the datagrams exchanged.
fn handshake(
    ids: &Identities,
    kind: Kind,
    v: Version,
    client_cert: &ClientCert,
) -> anyhow::Result<(Cost, Cost, usize)> {
    let (mut server_cost, mut client_cost) = (Cost::default(), Cost::default());
    let mut now = Instant::now();
    let mut client = client_cost.timed(|| dtls_client(v, client_cert, now));
    let mut server = server_cost.timed(|| ids.server(kind, v, client_cert, now));
    let mut progress = ClientProgress::default();
    let (mut to_server, mut to_client) = (Vec::<Vec<u8>>::new(), Vec::<Vec<u8>>::new());
    let mut datagrams = 0;
    for _ in 0..64 {
        client_cost.timed(|| -> anyhow::Result<()> {
            client.handle_timeout(now).context("client timeout")?;
            poll_client(&mut client, &mut progress, |d| to_server.push(d.to_vec()));
            Ok(())
        })?;
        datagrams += to_server.len();
        let server_done = server_cost.timed(|| {
            for d in to_server.drain(..) {
                server.handle(&d, now);
            }
            server.drain(&mut to_client)
        })?;
        datagrams += to_client.len();
        client_cost.timed(|| {
            for d in to_client.drain(..) {
                // The client's own verdicts (e.g. on a duplicate) are not the server's cost.
                let _ = client.handle_packet(&d);
            }
            poll_client(&mut client, &mut progress, |d| to_server.push(d.to_vec()));
        });
        if server_done && progress.done() && to_server.is_empty() {
            return Ok((server_cost, client_cost, datagrams));
        }
        now += Duration::from_millis(1);
    }
    bail!("{kind:?} DTLS {}: no handshake in 64 hops", v.name())
}

/// Summary of one (server, version) series.
#[derive(Debug, Serialize)]
struct Series {
    server: Kind,
    version: Version,
    handshakes: usize,
    /// Server CPU per handshake, µs: mean, median, 99th percentile.
    server_cpu_us_mean: f64,
    server_cpu_us_p50: f64,
    server_cpu_us_p99: f64,
    /// Server wall time inside its calls, µs (mean): close to CPU unless preempted.
    server_wall_us_mean: f64,
    /// 1 s / mean server CPU per handshake.
    handshakes_per_s_per_core: f64,
    /// Client (dimpl) CPU per handshake, µs (mean).
    client_cpu_us_mean: f64,
    /// Datagrams exchanged per handshake (mean).
    datagrams_mean: f64,
}

#[derive(Debug, Serialize)]
struct Report {
    date: String,
    host: String,
    cpus: usize,
    pinned_cpu: Option<usize>,
    /// Cost of one thread CPU clock read, ns (each timed call reads it twice).
    clock_read_ns: f64,
    series: Vec<Series>,
    /// DtlsSession mean server CPU / bare dimpl's, per version.
    session_vs_bare: Vec<(Version, f64)>,
}

fn pct(sorted: &[u64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1e3
}

fn summarize(kind: Kind, v: Version, samples: &[(Cost, Cost, usize)]) -> Series {
    let n = samples.len();
    let mut cpu: Vec<u64> = samples.iter().map(|s| s.0.cpu_ns).collect();
    cpu.sort_unstable();
    let mean = |f: &dyn Fn(&(Cost, Cost, usize)) -> u64| {
        samples.iter().map(f).sum::<u64>() as f64 / n as f64 / 1e3
    };
    let server_cpu_us_mean = mean(&|s| s.0.cpu_ns);
    Series {
        server: kind,
        version: v,
        handshakes: n,
        server_cpu_us_mean,
        server_cpu_us_p50: pct(&cpu, 0.5),
        server_cpu_us_p99: pct(&cpu, 0.99),
        server_wall_us_mean: mean(&|s| s.0.wall_ns),
        handshakes_per_s_per_core: 1e6 / server_cpu_us_mean,
        client_cpu_us_mean: mean(&|s| s.1.cpu_ns),
        datagrams_mean: samples.iter().map(|s| s.2).sum::<usize>() as f64 / n as f64,
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let pinned = if cli.no_pin {
        None
    } else {
        let last = core_affinity::get_core_ids()
            .and_then(|ids| ids.last().copied())
            .context("no CPU list")?;
        if !core_affinity::set_for_current(last) {
            bail!("could not pin to CPU {}", last.id);
        }
        Some(last.id)
    };
    let clock_read_ns = {
        let (t, n) = (Instant::now(), 100_000);
        for _ in 0..n {
            std::hint::black_box(thread_ns());
        }
        t.elapsed().as_nanos() as f64 / n as f64
    };
    let ids = Identities::new()?;
    let clients: Vec<ClientCert> = (0..16)
        .map(|_| ClientCert::generate())
        .collect::<Result<_, _>>()?;
    let versions = [Version::V12, Version::V13];
    let kinds = [Kind::DtlsSession, Kind::BareDimpl];
    let mut samples: Vec<Vec<(Cost, Cost, usize)>> = vec![Vec::new(); 4];
    for i in 0..cli.warmup + cli.handshakes {
        for (vi, &v) in versions.iter().enumerate() {
            for (ki, &k) in kinds.iter().enumerate() {
                let s = handshake(&ids, k, v, &clients[i % clients.len()])?;
                if i >= cli.warmup {
                    samples[vi * 2 + ki].push(s);
                }
            }
        }
    }
    let mut series = Vec::new();
    for (vi, &v) in versions.iter().enumerate() {
        for (ki, &k) in kinds.iter().enumerate() {
            series.push(summarize(k, v, &samples[vi * 2 + ki]));
        }
    }
    let session_vs_bare = versions
        .iter()
        .enumerate()
        .map(|(vi, &v)| {
            let (ours, bare) = (&series[vi * 2], &series[vi * 2 + 1]);
            (v, ours.server_cpu_us_mean / bare.server_cpu_us_mean)
        })
        .collect();
    let report = Report {
        date: today(),
        host: host(),
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        pinned_cpu: pinned,
        clock_read_ns,
        series,
        session_vs_bare,
    };
    print_table(&report);
    if let Some(path) = &cli.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn print_table(r: &Report) {
    println!(
        "DTLS server handshakes, in memory, one thread (pinned: {:?}); clock read {:.0} ns",
        r.pinned_cpu, r.clock_read_ns
    );
    println!(
        "{:<13} {:>4} {:>5} {:>13} {:>9} {:>9} {:>10} {:>15} {:>13} {:>9}",
        "server",
        "dtls",
        "n",
        "cpu µs mean",
        "p50",
        "p99",
        "wall µs",
        "handshakes/s",
        "client µs",
        "datagrams"
    );
    for s in &r.series {
        println!(
            "{:<13} {:>4} {:>5} {:>13.1} {:>9.1} {:>9.1} {:>10.1} {:>15.0} {:>13.1} {:>9.1}",
            format!("{:?}", s.server),
            s.version.name(),
            s.handshakes,
            s.server_cpu_us_mean,
            s.server_cpu_us_p50,
            s.server_cpu_us_p99,
            s.server_wall_us_mean,
            s.handshakes_per_s_per_core,
            s.client_cpu_us_mean,
            s.datagrams_mean
        );
    }
    for (v, ratio) in &r.session_vs_bare {
        println!("DtlsSession / bare dimpl, DTLS {}: {ratio:.3}x", v.name());
    }
}
