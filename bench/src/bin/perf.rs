//! `ringbridge-perf` (`make perf`): the side-by-side run. Measures ringbridge (uring and mio
//! engines) against `floor-forwarder` (plain libc recvmmsg/sendmmsg) and `naive-forwarder` with
//! the same traffic, interleaved A B A B, then `--find-max` per forwarder and a run at half the
//! max clean rate. Scenarios: a full mesh at fan-out 1, 4 and 9 (200 B), and video: one sender
//! of 1200 B packets to F receive-only participants (F = 4 at 20 000 pps in, F = 9 at 10 000).
//! Writes `perf/results/<date>-<host>.{md,json,svg}` and prints the table.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use plotters::prelude::*;
use ringbridge_bench::cpu::SplitCpus;
use ringbridge_bench::cpu::UserSampler;
use ringbridge_bench::drive;
use ringbridge_bench::report::{Report, host, today};
use ringbridge_bench::rig::{Live, Rig, RunOpts, Topology};
use ringbridge_bench::target::{Kind, Target};
use ringbridge_bench::traffic::{Load, Stream};
use ringbridge_dataplane::srtp::Profile;

/// SRTP profile of the SRTP rows.
const SRTP: Profile = Profile::AeadAes128Gcm;

/// What one row measures: a forwarder, plain or with every participant on SRTP, and for the
/// A/B rows of the io_uring engine, the earlier setting it runs with (default otherwise).
#[derive(Clone, Copy)]
struct Variant {
    kind: Kind,
    srtp: bool,
    /// An A/B row: (label, ringbridge arguments).
    ab: Option<(&'static str, &'static [&'static str])>,
    /// Whether the row also gets a `--find-max` ramp.
    find_max: bool,
}

const fn v(kind: Kind, srtp: bool) -> Variant {
    Variant {
        kind,
        srtp,
        ab: None,
        find_max: !srtp,
    }
}

const fn ab(label: &'static str, args: &'static [&'static str], find_max: bool) -> Variant {
    Variant {
        kind: Kind::Uring,
        srtp: false,
        ab: Some((label, args)),
        find_max,
    }
}

/// Index 2 is the floor; SRTP rows are 4 after their plain row; A/B rows come last.
const VARIANTS: [Variant; 9] = [
    v(Kind::Uring, false),
    v(Kind::Mio, false),
    v(Kind::Floor, false),
    v(Kind::Naive, false),
    v(Kind::Uring, true),
    v(Kind::Mio, true),
    ab("sendmsg", &["--uring-send", "sendmsg"], false),
    ab("send", &["--uring-send", "send"], false),
    ab("4096 buffers", &["--uring-buffers", "4096"], true),
];

impl Variant {
    fn label(self) -> String {
        match (self.srtp, self.ab) {
            (true, _) => format!("{} + SRTP {}", self.kind.label(), SRTP.name()),
            (false, Some((label, _))) => format!("{} (A/B: {label})", self.kind.label()),
            (false, None) => self.kind.label().to_string(),
        }
    }

    fn extra(self) -> &'static [&'static str] {
        self.ab.map_or(&[], |(_, args)| args)
    }

    async fn spawn(
        self,
        members: &[Vec<ringbridge_bench::target::Member>],
    ) -> anyhow::Result<Target> {
        Target::spawn_with(self.kind, members, 1, false, self.extra()).await
    }
}

/// Side-by-side performance run of ringbridge against baseline forwarders.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    /// `chaos`: the soak of the whole fleet under seeded faults instead of the side-by-side run.
    #[command(subcommand)]
    cmd: Option<Cmd>,
    /// Forwarded copies per second to offer at the fixed rate (input pps x fan-out).
    #[arg(long, default_value_t = 40_000.0)]
    copies_per_sec: f64,
    /// Packet size in bytes.
    #[arg(long, default_value_t = 200)]
    size: usize,
    /// Seconds per measured run.
    #[arg(long, default_value_t = 3.0)]
    duration: f64,
    /// Repetitions of each forwarder, interleaved A B A B.
    #[arg(long, default_value_t = 2)]
    reps: usize,
    /// Fan-outs to measure (participants = fan-out + 1); 0 measures no full mesh.
    #[arg(long, value_delimiter = ',', default_value = "1,4,9")]
    fanouts: Vec<usize>,
    /// Fan-outs that also get SRTP rows.
    #[arg(long, value_delimiter = ',', default_value = "4,9")]
    srtp_fanouts: Vec<usize>,
    /// Video scenarios, FANOUT:PPS_IN: one sender of `--video-size` packets to FANOUT receivers.
    #[arg(long, value_delimiter = ',', default_value = "4:20000,9:10000")]
    video: Vec<String>,
    /// Packet size of the video scenarios.
    #[arg(long, default_value_t = 1200)]
    video_size: usize,
    /// Packets/s in of the relay (Octo) comparisons: one sender to 8 receivers, on one bridge vs
    /// 4 + 4 over two relayed bridges, at each rate. Empty skips them.
    #[arg(long, value_delimiter = ',', default_value = "10000,30000")]
    relay_pps: Vec<f64>,
    /// Video scenarios of the veth topology, FANOUT:PPS_IN (the forwarders on the host side of
    /// a veth pair, the rig's participants in a network namespace on the other; needs root).
    /// Empty skips it.
    #[arg(long, value_delimiter = ',', default_value = "4:20000,9:10000")]
    veth_video: Vec<String>,
    /// Skip the --find-max ramps and half-max runs.
    #[arg(long)]
    no_find_max: bool,
    /// Run the --find-max ramps with the rig and the forwarder sharing all CPUs (default: the
    /// rig on the second-to-last CPU, the forwarder on the last, when there are two or more).
    #[arg(long)]
    shared_cpus: bool,
    /// Seconds per find-max step.
    #[arg(long, default_value_t = 1.5)]
    step_secs: f64,
    /// Directory for the report.
    #[arg(long, default_value = "perf/results")]
    out: PathBuf,
}

/// Other runs than the side-by-side one.
#[derive(clap::Subcommand, Debug)]
enum Cmd {
    /// A real fleet (etcd, two control instances, bridges in two regions, the autoscaler) under
    /// load and seeded faults; reports what must never happen, media gaps per fault and memory
    /// over time; exits 1 when something that must never happen did.
    Chaos(ringbridge_bench::chaos::Options),
}

/// One traffic shape measured side by side.
#[derive(Debug, Clone, Copy, serde::Serialize)]
struct Scenario {
    /// Receivers of each packet.
    fanout: usize,
    /// One sender (video) rather than everybody (full mesh).
    one_sender: bool,
    /// Packet size, bytes.
    size: usize,
    /// Packets per second in, all senders together.
    pps_in: f64,
}

impl Scenario {
    fn label(&self) -> String {
        if self.one_sender {
            format!(
                "video 1 to {}, {} B, {:.0}k pps in",
                self.fanout,
                self.size,
                self.pps_in / 1000.0
            )
        } else {
            format!("mesh fan-out {}, {} B", self.fanout, self.size)
        }
    }

    fn short(&self) -> String {
        if self.one_sender {
            format!("video 1->{}", self.fanout)
        } else {
            format!("mesh {}", self.fanout)
        }
    }
}

/// Figures of one forwarder in one scenario.
#[derive(Default, serde::Serialize)]
struct Row {
    cpu_ns: Vec<f64>,
    /// Share of the forwarder's CPU time in user mode (a sampled pass), when `perf` runs here.
    user_share: Option<f64>,
    lost: u64,
    expected: u64,
    p99_us: Vec<f64>,
    /// Per repetition of `--find-max`: (max clean pps offered, copies/s forwarded at it).
    max_clean: Vec<(f64, f64)>,
    half_max_loss: Option<f64>,
    half_max_p99_us: Option<f64>,
    reports: Vec<Report>,
}

impl Row {
    /// The median repetition's max clean rate (the lower middle one for an even count), or
    /// zeroes without any.
    fn max_clean_median(&self) -> (f64, f64) {
        let mut v = self.max_clean.clone();
        v.sort_by(|a, b| a.0.total_cmp(&b.0));
        v.get(v.len().saturating_sub(1) / 2)
            .copied()
            .unwrap_or_default()
    }
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(Cmd::Chaos(o)) = cli.cmd {
        let clean = ringbridge_bench::chaos::run(o)?;
        std::process::exit(if clean { 0 } else { 1 });
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let opts = RunOpts {
        duration: Duration::from_secs_f64(cli.duration),
        warmup: Duration::from_millis(500),
        drain: Duration::from_millis(300),
        stop: stop.clone(),
    };
    let mut scenarios: Vec<Scenario> = cli
        .fanouts
        .iter()
        .filter(|&&f| f > 0)
        .map(|&f| Scenario {
            fanout: f,
            one_sender: false,
            size: cli.size,
            pps_in: cli.copies_per_sec / f as f64,
        })
        .collect();
    for v in cli.video.iter().filter(|v| !v.is_empty()) {
        let (f, pps) = v
            .split_once(':')
            .and_then(|(f, p)| Some((f.parse().ok()?, p.parse().ok()?)))
            .with_context(|| format!("--video {v:?}: expected FANOUT:PPS_IN"))?;
        scenarios.push(Scenario {
            fanout: f,
            one_sender: true,
            size: cli.video_size,
            pps_in: pps,
        });
    }
    let mut rows: BTreeMap<(usize, usize), Row> = BTreeMap::new();
    for (si, sc) in scenarios.iter().enumerate() {
        let fanout = sc.fanout;
        let p = fanout + 1;
        let senders = if sc.one_sender { 1 } else { p };
        let pps = sc.pps_in / senders as f64;
        let load = Load {
            streams: vec![Stream { pps, size: sc.size }],
        };
        let topo = Topology {
            conferences: 1,
            participants: p,
            senders,
            bind_ip: IpAddr::from([127, 0, 0, 1]),
            srtp: None,
        };
        let mut rig = Rig::new(topo.clone(), 1)?;
        let members = rig.members()?;
        let srtp_topo = Topology {
            srtp: Some(SRTP),
            ..topo.clone()
        };
        let mut srtp_rig = Rig::new(srtp_topo.clone(), 1)?;
        let srtp_members = srtp_rig.members()?;
        let with_srtp = !sc.one_sender && cli.srtp_fanouts.contains(&fanout);
        eprintln!(
            "{}: {p} participants, {senders} sending {pps:.0} pps each = {:.0} pps in, {:.0} copies/s out",
            sc.label(),
            sc.pps_in,
            sc.pps_in * fanout as f64
        );
        for rep in 0..cli.reps {
            for (ki, v) in VARIANTS.into_iter().enumerate() {
                if v.srtp && !with_srtp {
                    continue;
                }
                let (rig, members, topo) = if v.srtp {
                    (&mut srtp_rig, &srtp_members, &srtp_topo)
                } else {
                    (&mut rig, &members, &topo)
                };
                let target = rt.block_on(v.spawn(members))?;
                let r = rig.run(target.media, &target.pids(), &load, &opts, &Live::default())?;
                let rep_ = Report::new(&v.label(), topo, &load, 0.5, &r);
                eprintln!(
                    "  rep {} {:<17} cpu {:>7.0} ns/copy  loss {:.4}%  p99 {:.0} us",
                    rep + 1,
                    v.label(),
                    rep_.bridge_cpu_ns_per_forwarded_packet.unwrap_or(f64::NAN),
                    rep_.loss_ratio * 100.0,
                    rep_.latency_us.p99
                );
                let row = rows.entry((si, ki)).or_default();
                row.cpu_ns.extend(rep_.bridge_cpu_ns_per_forwarded_packet);
                row.lost += rep_.lost_packets;
                row.expected += rep_.expected_packets;
                row.p99_us.push(rep_.latency_us.p99);
                row.reports.push(rep_);
                drop(target);
            }
        }
        // A separate pass sampled with perf: the user-mode share of each forwarder's CPU (kept
        // out of the runs above so sampling does not disturb their CPU figures).
        for (ki, v) in VARIANTS.into_iter().enumerate() {
            if v.srtp && !with_srtp {
                continue;
            }
            let (rig, members) = if v.srtp {
                (&mut srtp_rig, &srtp_members)
            } else {
                (&mut rig, &members)
            };
            let target = rt.block_on(v.spawn(members))?;
            let Some(sampler) = target.pid.and_then(UserSampler::start) else {
                break; // no perf here
            };
            rig.run(target.media, &target.pids(), &load, &opts, &Live::default())?;
            let share = sampler.finish();
            eprintln!(
                "  sampled {:<17} user share {:.1}%",
                v.label(),
                share.unwrap_or(f64::NAN) * 100.0
            );
            rows.entry((si, ki)).or_default().user_share = share;
        }
        if cli.no_find_max {
            continue;
        }
        // On a thread of its own, which pins itself (and so the rig and the forwarders it
        // starts) without touching the rest of the run.
        let split = (!cli.shared_cpus).then(SplitCpus::last_two).flatten();
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    find_max_rows(
                        &rt, &cli, split, sc, si, &mut rig, &members, &load, &opts, &mut rows,
                    )
                })
                .join()
                .expect("find-max thread")
        })?;
    }
    let mut relay = Vec::new();
    for &pps in cli.relay_pps.iter().filter(|p| **p > 0.0) {
        relay.push(relay_runs(&rt, &cli, pps, &opts)?);
    }
    let mut veth = Vec::new();
    if !cli.veth_video.iter().all(|v| v.is_empty()) {
        match veth::Setup::new() {
            Ok(setup) => {
                for v in cli.veth_video.iter().filter(|v| !v.is_empty()) {
                    let (f, pps) = v
                        .split_once(':')
                        .and_then(|(f, p)| Some((f.parse().ok()?, p.parse().ok()?)))
                        .with_context(|| format!("--veth-video {v:?}: expected FANOUT:PPS_IN"))?;
                    let sc = Scenario {
                        fanout: f,
                        one_sender: true,
                        size: cli.video_size,
                        pps_in: pps,
                    };
                    veth.push(veth::runs(&rt, &cli, &setup, sc, &opts)?);
                }
            }
            Err(e) => eprintln!("veth topology skipped: {e:#}"),
        }
    }
    let mut md = markdown(&cli, &scenarios, &rows, started.elapsed());
    for r in &relay {
        md += &relay_markdown(&cli, r);
    }
    if !veth.is_empty() {
        md += &veth::markdown(&cli, &veth);
    }
    print!("{md}");
    std::fs::create_dir_all(&cli.out)?;
    let stem = cli.out.join(format!("{}-{}", today(), host()));
    std::fs::write(stem.with_extension("md"), &md)?;
    let mut json: Vec<_> = rows
        .iter()
        .map(|((si, k), r)| serde_json::json!({"scenario": scenarios[*si], "label": scenarios[*si].label(), "target": VARIANTS[*k].label(), "row": r}))
        .collect();
    for r in &relay {
        json.push(serde_json::json!({"relay": r}));
    }
    for r in &veth {
        json.push(serde_json::json!({"veth": r}));
    }
    std::fs::write(
        stem.with_extension("json"),
        serde_json::to_string_pretty(&json)?,
    )?;
    chart(&stem.with_extension("svg"), &scenarios, &rows).context("writing the chart")?;
    eprintln!("wrote {}.{{md,json,svg}}", stem.display());
    Ok(())
}

/// The `--find-max` ramps of one scenario, their steps interleaved, `--reps` times, and a run at
/// half the median max clean rate of each forwarder; with `split`, the rig and the forwarder on CPUs of
/// their own.
#[allow(clippy::too_many_arguments)]
fn find_max_rows(
    rt: &tokio::runtime::Runtime,
    cli: &Cli,
    split: Option<SplitCpus>,
    sc: &Scenario,
    si: usize,
    rig: &mut Rig,
    members: &[Vec<ringbridge_bench::target::Member>],
    load: &Load,
    opts: &RunOpts,
    rows: &mut BTreeMap<(usize, usize), Row>,
) -> anyhow::Result<()> {
    if let Some(sp) = split {
        let (r, f) = sp.cpus();
        eprintln!("  find-max: rig on CPU {r}, forwarder on CPU {f}");
    }
    let step = drive::step_opts(Duration::from_secs_f64(cli.step_secs), opts);
    for rep in 0..cli.reps {
        // Every forwarder up at once (idle ones sleep); their ramps take steps in turn.
        let mut ramps = Vec::new();
        for (ki, v) in VARIANTS.into_iter().enumerate().filter(|(_, v)| v.find_max) {
            if let Some(sp) = split {
                sp.for_forwarder()?;
            }
            ramps.push((ki, v, rt.block_on(v.spawn(members))?, drive::Ramp::new()));
        }
        if let Some(sp) = split {
            sp.for_rig()?;
        }
        loop {
            let mut stepped = false;
            for (_, _, target, ramp) in ramps.iter_mut() {
                if let Some(f) = ramp.next_factor() {
                    let r = rig.run(target.media, &[], &load.scaled(f), &step, &Live::default())?;
                    ramp.record(&r);
                    stepped = true;
                }
            }
            if !stepped {
                break;
            }
        }
        for (ki, v, target, ramp) in ramps {
            let fm = ramp.result();
            let row = rows.entry((si, ki)).or_default();
            row.max_clean
                .push((fm.max_clean_offered_pps, fm.max_clean_forwarded_pps));
            eprintln!(
                "  rep {} find-max {:<17} max clean {:.0} pps in / {:.0} copies/s",
                rep + 1,
                v.label(),
                fm.max_clean_offered_pps,
                fm.max_clean_forwarded_pps,
            );
            let max = row.max_clean_median();
            if rep + 1 == cli.reps && max.0 > 0.0 {
                let half = load.scaled(0.5 * max.0 / sc.pps_in);
                let r = rig.run(target.media, &target.pids(), &half, opts, &Live::default())?;
                row.half_max_loss = Some(r.loss_ratio());
                row.half_max_p99_us = Some(r.latency_ns.value_at_quantile(0.99) as f64 / 1000.0);
                eprintln!(
                    "  half of the median max {:<17} {:.0} pps in: loss {:.4}%, p99 {:.0} us",
                    v.label(),
                    max.0 / 2.0,
                    r.loss_ratio() * 100.0,
                    row.half_max_p99_us.unwrap_or(f64::NAN)
                );
            }
        }
    }
    Ok(())
}

/// One relay-comparison run: CPU ns per delivered copy summed over the bridges, loss ratio,
/// and latency percentiles in microseconds, overall and for receivers 1-4 (`near`: on the
/// sender's bridge when relayed) and 5-8 (`far`: behind the relay when relayed).
#[derive(Default, Clone, Copy, serde::Serialize)]
struct RelayRun {
    cpu_ns_per_copy: f64,
    loss_ratio: f64,
    p50_us: f64,
    p99_us: f64,
    near_p50_us: f64,
    far_p50_us: f64,
}

/// The relay (Octo) comparison: per repetition, one bridge and relayed over two.
#[derive(Default, serde::Serialize)]
struct RelayRuns {
    /// Packets/s in.
    pps: f64,
    one_bridge: Vec<RelayRun>,
    relayed: Vec<RelayRun>,
}

/// Receivers from this participant index on sit behind the relay in the relayed layout
/// (index 0 sends, 1-4 share its bridge).
const RELAY_SPLIT: usize = 5;

fn relay_runs(
    rt: &tokio::runtime::Runtime,
    cli: &Cli,
    pps: f64,
    opts: &RunOpts,
) -> anyhow::Result<RelayRuns> {
    let topo = Topology {
        conferences: 1,
        participants: 9,
        senders: 1,
        bind_ip: IpAddr::from([127, 0, 0, 1]),
        srtp: None,
    };
    let load = Load {
        streams: vec![Stream {
            pps,
            size: cli.video_size,
        }],
    };
    let mut rig = Rig::new(topo.clone(), 1)?;
    rig.split_latency_from(RELAY_SPLIT);
    let members = rig.members()?;
    eprintln!(
        "relay: one sender x {:.0} pps of {} B to 8 receivers, one bridge vs 4 + 4 on two relayed bridges",
        pps, cli.video_size
    );
    let mut out = RelayRuns {
        pps,
        ..RelayRuns::default()
    };
    let p50 = |h: &hdrhistogram::Histogram<u64>| {
        if h.is_empty() {
            f64::NAN
        } else {
            h.value_at_quantile(0.5) as f64 / 1000.0
        }
    };
    for rep in 0..cli.reps {
        for relayed in [false, true] {
            let target = if relayed {
                rt.block_on(Target::spawn_relayed(&members[0], RELAY_SPLIT, &[]))?
            } else {
                rt.block_on(Target::spawn(Kind::Uring, &members, 1, false))?
            };
            let r = rig.run(target.media, &target.pids(), &load, opts, &Live::default())?;
            let rep_ = Report::new(&target.label, &topo, &load, 0.5, &r);
            let far = r
                .far_latency_ns
                .clone()
                .unwrap_or_else(|| r.latency_ns.clone());
            let mut near = r.latency_ns.clone();
            near.subtract(&far)
                .context("splitting the latency histogram")?;
            let row = RelayRun {
                cpu_ns_per_copy: rep_.bridge_cpu_ns_per_forwarded_packet.unwrap_or(f64::NAN),
                loss_ratio: rep_.loss_ratio,
                p50_us: rep_.latency_us.p50,
                p99_us: rep_.latency_us.p99,
                near_p50_us: p50(&near),
                far_p50_us: p50(&far),
            };
            eprintln!(
                "  rep {} {:<36} cpu {:>6.0} ns/copy  loss {:.4}%  p50 {:.0} us (receivers 1-4 {:.0}, 5-8 {:.0})  p99 {:.0} us",
                rep + 1,
                target.label,
                row.cpu_ns_per_copy,
                row.loss_ratio * 100.0,
                row.p50_us,
                row.near_p50_us,
                row.far_p50_us,
                row.p99_us
            );
            if relayed {
                out.relayed.push(row);
            } else {
                out.one_bridge.push(row);
            }
        }
    }
    Ok(out)
}

fn relay_markdown(cli: &Cli, r: &RelayRuns) -> String {
    let m = |v: &[RelayRun], f: fn(&RelayRun) -> f64| mean(&v.iter().map(f).collect::<Vec<_>>());
    let c1 = m(&r.one_bridge, |x| x.cpu_ns_per_copy);
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\n## Relay (Octo), {:.0} pps in\n\nOne sender of {} B packets at {:.0} pps to 8 receivers: all on one bridge, \
         or the sender and receivers 1-4 on one bridge and receivers 5-8 on a second bridge reached \
         through the relay (AES-128-GCM per link). CPU per delivered copy is summed over both \
         bridges' processes; {} repetitions interleaved. Goal: relayed <= 1.10x one bridge.\n",
        r.pps, cli.video_size, r.pps, cli.reps
    );
    let _ = writeln!(
        s,
        "| layout | CPU ns / copy | vs one bridge | loss | p50 us | p99 us | p50 us, receivers 1-4 | p50 us, receivers 5-8 |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|");
    for (name, v) in [
        ("one bridge, 8 receivers", &r.one_bridge),
        ("relayed 4 + 4", &r.relayed),
    ] {
        let c = m(v, |x| x.cpu_ns_per_copy);
        let _ = writeln!(
            s,
            "| {name} | {c:.0} | {:.2} | {:.3}% | {:.0} | {:.0} | {:.0} | {:.0} |",
            c / c1,
            m(v, |x| x.loss_ratio) * 100.0,
            m(v, |x| x.p50_us),
            m(v, |x| x.p99_us),
            m(v, |x| x.near_p50_us),
            m(v, |x| x.far_p50_us),
        );
    }
    let hop = m(&r.relayed, |x| x.far_p50_us - x.near_p50_us);
    let _ = writeln!(
        s,
        "\nThe relay hop adds **{hop:.0} us at p50**: the relayed receivers' p50 minus the local \
         receivers' p50 in the same runs (goal < 100 us). Against the same receivers on one \
         bridge: {:+.0} us.",
        m(&r.relayed, |x| x.far_p50_us) - m(&r.one_bridge, |x| x.far_p50_us)
    );
    s
}

fn markdown(
    cli: &Cli,
    scenarios: &[Scenario],
    rows: &BTreeMap<(usize, usize), Row>,
    took: Duration,
) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# ringbridge side-by-side run, {} on {}\n",
        today(),
        host()
    );
    let _ = writeln!(
        s,
        "Scenarios: a full mesh at {:.0} forwarded copies/s of {} bytes per fan-out, and video \
         (one sender of {}-byte packets to receive-only participants). {} s per run, {} \
         interleaved repetitions (A B A B), one forwarder thread each (ringbridge `--workers 1 \
         --no-pin`, like the baselines: on a machine the rig shares, pinning measures scheduling \
         interference rather than the engine). CPU is the forwarder process's CPU time (all \
         threads, `/proc/PID/task/*/schedstat`) over the measured window, divided by the copies \
         the rig received; user is the part of it spent in user mode, from a separate pass sampled \
         with `perf record -e cpu-clock` (`/proc`'s tick-based utime is biased for bursty \
         processes; this VM has no hardware counters). The \
         floor is `floor-forwarder`: plain libc `recvmmsg` + `sendmmsg`, no ringbridge code. \
         Ratios are against the floor in the same run (CPU: <= 1.00 means no more than the bare \
         kernel path; max clean rate: >= 1.00 means at least as much). SRTP rows: every \
         participant on {}; *SRTP/plain* compares with the same engine's plain row. Max clean \
         rate: highest offered input rate with loss <= 0.1% (`--find-max`, steps bisected to \
         5%), the median of {} ramps [lowest-highest] whose steps take turns between the forwarders, run with the rig on one CPU \
         and the forwarder on another ({}), so it measures what one core forwards. ± is the \
         largest deviation between repetitions. Rows *(A/B: ...)* run the io_uring engine with \
         an earlier setting, interleaved with the default: *sendmsg* and *send* are its earlier \
         send paths (`--uring-send`; the default `send-fixed` is IORING_OP_SEND with the \
         destination, on the socket registered as a \
         fixed file); *4096 buffers* is the earlier provided-buffer count (`--uring-buffers`, now \
         {}), so each step is measured in the same run. Run took {:.0} s.\n",
        cli.copies_per_sec,
        cli.size,
        cli.video_size,
        cli.duration,
        cli.reps,
        SRTP.name(),
        cli.reps,
        if cli.shared_cpus {
            "not with `--shared-cpus`: there both share every CPU".to_string()
        } else {
            SplitCpus::last_two().map_or("not on a single-CPU machine".to_string(), |s| {
                let (r, f) = s.cpus();
                format!("CPU {r} and CPU {f}")
            })
        },
        ringbridge_dataplane::engine::uring::BUFFERS,
        took.as_secs_f64()
    );
    let _ = writeln!(
        s,
        "| scenario | forwarder | CPU ns / copy | CPU vs floor | user ns / copy | user vs floor | SRTP/plain | loss | p99 us | max clean pps in (copies/s) | max clean vs floor | at half max: loss, p99 us |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|---|---|");
    for (si, sc) in scenarios.iter().enumerate() {
        let floor = rows.get(&(si, 2));
        let floor_cpu = floor.map_or(f64::NAN, |r| mean(&r.cpu_ns));
        let user_ns = |r: &Row| r.user_share.map(|u| u * mean(&r.cpu_ns));
        let floor_user = floor.and_then(user_ns).unwrap_or(f64::NAN);
        let floor_max = floor
            .filter(|r| !r.max_clean.is_empty())
            .map_or(f64::NAN, |r| r.max_clean_median().0);
        for (ki, v) in VARIANTS.into_iter().enumerate() {
            let Some(r) = rows.get(&(si, ki)) else {
                continue;
            };
            let plain_row = if v.srtp { ki - 4 } else { ki };
            let vs_plain = match (v.srtp, rows.get(&(si, plain_row))) {
                (true, Some(plain)) => format!("{:.2}", mean(&r.cpu_ns) / mean(&plain.cpu_ns)),
                _ => "-".into(),
            };
            let cpu = mean(&r.cpu_ns);
            let spread = r.cpu_ns.iter().map(|c| (c - cpu).abs()).fold(0.0, f64::max);
            let (user, user_ratio) = match user_ns(r) {
                Some(u) => (format!("{u:.0}"), format!("{:.2}", u / floor_user)),
                None => ("-".into(), "-".into()),
            };
            let loss = r.lost as f64 / r.expected.max(1) as f64 * 100.0;
            let (max, max_ratio) = if r.max_clean.is_empty() {
                ("-".into(), "-".into())
            } else {
                let (a, b) = r.max_clean_median();
                let lo = r
                    .max_clean
                    .iter()
                    .map(|m| m.0)
                    .fold(f64::INFINITY, f64::min);
                let hi = r.max_clean.iter().map(|m| m.0).fold(0.0, f64::max);
                (
                    format!("{a:.0} ({b:.0}) [{lo:.0}-{hi:.0}]"),
                    format!("{:.2}", a / floor_max),
                )
            };
            let half = match (r.half_max_loss, r.half_max_p99_us) {
                (Some(l), Some(p)) => format!("{:.3}%, {p:.0}", l * 100.0),
                _ => "-".into(),
            };
            let _ = writeln!(
                s,
                "| {} | {} | {cpu:.0} ± {spread:.0} | {:.2} | {user} | {user_ratio} | {vs_plain} | {loss:.3}% | {:.0} | {max} | {max_ratio} | {half} |",
                sc.label(),
                v.label(),
                cpu / floor_cpu,
                mean(&r.p99_us),
            );
        }
    }
    s
}

fn chart(
    path: &std::path::Path,
    scenarios: &[Scenario],
    rows: &BTreeMap<(usize, usize), Row>,
) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (1100, 500)).into_drawing_area();
    root.fill(&WHITE)?;
    let top = rows.values().map(|r| mean(&r.cpu_ns)).fold(1.0, f64::max) * 1.15;
    let n = scenarios.len();
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "CPU ns per forwarded packet (lower is better)",
            ("sans-serif", 22),
        )
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..n as f64, 0.0..top)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(n)
        .x_label_formatter(&|x| {
            let i = x.floor() as usize;
            scenarios.get(i).map(Scenario::short).unwrap_or_default()
        })
        .y_desc("ns / forwarded packet")
        .draw()?;
    let colors = [
        RGBColor(31, 119, 180),
        RGBColor(44, 160, 44),
        RGBColor(127, 127, 127),
        RGBColor(214, 39, 40),
        RGBColor(148, 103, 189),
        RGBColor(188, 189, 34),
        RGBColor(23, 190, 207),
        RGBColor(255, 127, 14),
        RGBColor(140, 86, 75),
    ];
    let width = 0.8 / VARIANTS.len() as f64;
    for (ki, v) in VARIANTS.into_iter().enumerate() {
        let color = colors[ki % colors.len()];
        let bars: Vec<_> = (0..scenarios.len())
            .filter_map(|i| {
                let r = rows.get(&(i, ki))?;
                let x0 = i as f64 + 0.1 + ki as f64 * width;
                Some(Rectangle::new(
                    [(x0, 0.0), (x0 + width * 0.9, mean(&r.cpu_ns))],
                    color.filled(),
                ))
            })
            .collect();
        chart
            .draw_series(bars)?
            .label(v.label())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled()));
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()?;
    root.present()?;
    Ok(())
}

/// The veth topology: the forwarders on the host side of a veth pair (the AF_XDP engine takes
/// that interface over), the rig's participants in a network namespace on the other side, so
/// every packet crosses a real (virtual) NIC both ways, as on a bridge host.
mod veth {
    use super::*;
    use ringbridge_dataplane::testkit::netns::Link;

    /// The namespace and link every forwarder of the run shares.
    pub struct Setup {
        pub link: Link,
        /// Keeps the namespace side's receive path in a kernel thread of its own.
        _threaded: ringbridge_dataplane::engine::xdp::program::Program,
    }

    impl Setup {
        /// Makes the namespace and veth pair (root only).
        pub fn new() -> anyhow::Result<Self> {
            if !is_root() {
                anyhow::bail!("needs root (a network namespace and a veth pair)");
            }
            let link = std::panic::catch_unwind(|| Link::new(7))
                .map_err(|_| anyhow::anyhow!("could not make the namespace (iproute2?)"))?;
            // Without it, a forwarder sending through the UDP stack runs the namespace's
            // receive path (IP, UDP, the rig's socket queues) for every copy in its own
            // context, and one writing frames (AF_XDP) does not: unequal accounting.
            let threaded = link
                .thread_receive()
                .context("threaded receive on the namespace side")?;
            Ok(Self {
                link,
                _threaded: threaded,
            })
        }
    }

    fn is_root() -> bool {
        std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("Uid:"))
                    .map(|l| l.split_whitespace().nth(2) == Some("0"))
            })
            .unwrap_or(false)
    }

    /// The forwarders compared: the floor, ringbridge's io_uring engine, its AF_XDP engine.
    pub const KINDS: [Kind; 3] = [Kind::Floor, Kind::Uring, Kind::Xdp];

    /// One forwarder's figures in one scenario.
    #[derive(Default, serde::Serialize)]
    pub struct Row {
        pub label: String,
        pub cpu_ns: Vec<f64>,
        pub lost: u64,
        pub expected: u64,
        pub p99_us: Vec<f64>,
        /// Per repetition: (max clean pps offered, copies/s forwarded at it).
        pub max_clean: Vec<(f64, f64)>,
        /// Of the AF_XDP rows: copies written to the interface directly / through the kernel.
        pub xdp_direct: u64,
        pub xdp_kernel: u64,
    }

    /// One scenario's rows, in [`KINDS`] order.
    #[derive(serde::Serialize)]
    pub struct Runs {
        pub scenario: Scenario,
        pub rows: Vec<Row>,
    }

    async fn spawn(
        kind: Kind,
        setup: &Setup,
        members: &[Vec<ringbridge_bench::target::Member>],
    ) -> anyhow::Result<Target> {
        let iface = setup.link.host_if.clone();
        let extra: Vec<&str> = match kind {
            Kind::Xdp => vec!["--xdp-iface", &iface],
            _ => Vec::new(),
        };
        let host = IpAddr::V4(setup.link.host);
        let t = Target::spawn_on(kind, members, 1, false, &extra, Some(host)).await?;
        Ok(t)
    }

    /// Interleaved fixed-rate runs (CPU per copy), then a `--find-max` ramp per forwarder.
    pub fn runs(
        rt: &tokio::runtime::Runtime,
        cli: &Cli,
        setup: &Setup,
        sc: Scenario,
        opts: &RunOpts,
    ) -> anyhow::Result<Runs> {
        let topo = Topology {
            conferences: 1,
            participants: sc.fanout + 1,
            senders: 1,
            bind_ip: IpAddr::V4(setup.link.inner),
            srtp: None,
        };
        let load = Load {
            streams: vec![Stream {
                pps: sc.pps_in,
                size: sc.size,
            }],
        };
        let mut rig = Rig::new_in(topo.clone(), 1, Some(&setup.link.ns))?;
        setup.link.threaded(true)?;
        let members = rig.members()?;
        // The namespace resolves the host side before any burst.
        setup.link.inside(&format!(
            "ping -q -c 1 -W 2 {} > /dev/null",
            setup.link.host
        ));
        eprintln!(
            "veth {}: forwarders on {}, rig in {}",
            sc.label(),
            setup.link.host_if,
            setup.link.ns
        );
        let mut rows: Vec<Row> = KINDS
            .iter()
            .map(|k| Row {
                label: k.label().into(),
                ..Row::default()
            })
            .collect();
        for rep in 0..cli.reps {
            for (ki, kind) in KINDS.into_iter().enumerate() {
                let mut target = rt.block_on(spawn(kind, setup, &members))?;
                let r = rig.run(target.media, &target.pids(), &load, opts, &Live::default())?;
                let rep_ = Report::new(kind.label(), &topo, &load, 0.5, &r);
                eprintln!(
                    "  rep {} {:<17} cpu {:>7.0} ns/copy  loss {:.4}%  p99 {:.0} us",
                    rep + 1,
                    kind.label(),
                    rep_.bridge_cpu_ns_per_forwarded_packet.unwrap_or(f64::NAN),
                    rep_.loss_ratio * 100.0,
                    rep_.latency_us.p99
                );
                let row = &mut rows[ki];
                row.cpu_ns.extend(rep_.bridge_cpu_ns_per_forwarded_packet);
                row.lost += rep_.lost_packets;
                row.expected += rep_.expected_packets;
                row.p99_us.push(rep_.latency_us.p99);
                if kind == Kind::Xdp
                    && let Some(t) = rt.block_on(target.bridge_stats()).and_then(|s| s.total)
                {
                    row.xdp_direct += t.xdp_tx;
                    row.xdp_kernel += t.xdp_kernel_tx;
                }
                rt.block_on(target.close());
            }
        }
        if cli.no_find_max {
            return Ok(Runs { scenario: sc, rows });
        }
        let split = (!cli.shared_cpus).then(SplitCpus::last_two).flatten();
        let step = drive::step_opts(Duration::from_secs_f64(cli.step_secs), opts);
        // For the ceilings the namespace's receive runs in the forwarder's softirq context for
        // every forwarder alike: a kernel thread of its own would be the ceiling of them all.
        setup.link.threaded(false)?;
        std::thread::scope(|scope| {
            scope
                .spawn(|| -> anyhow::Result<()> {
                    for rep in 0..cli.reps {
                        for (ki, kind) in KINDS.into_iter().enumerate() {
                            if let Some(sp) = split {
                                sp.for_forwarder()?;
                            }
                            let target = rt.block_on(spawn(kind, setup, &members))?;
                            if let Some(sp) = split {
                                sp.for_rig()?;
                            }
                            let mut ramp = drive::Ramp::new();
                            while let Some(f) = ramp.next_factor() {
                                let r = rig.run(
                                    target.media,
                                    &[],
                                    &load.scaled(f),
                                    &step,
                                    &Live::default(),
                                )?;
                                ramp.record(&r);
                            }
                            let fm = ramp.result();
                            eprintln!(
                                "  rep {} find-max {:<17} max clean {:.0} pps in / {:.0} copies/s",
                                rep + 1,
                                kind.label(),
                                fm.max_clean_offered_pps,
                                fm.max_clean_forwarded_pps,
                            );
                            rows[ki]
                                .max_clean
                                .push((fm.max_clean_offered_pps, fm.max_clean_forwarded_pps));
                            rt.block_on(target.close());
                        }
                    }
                    Ok(())
                })
                .join()
                .expect("find-max thread")
        })?;
        Ok(Runs { scenario: sc, rows })
    }

    fn median(v: &[(f64, f64)]) -> f64 {
        let mut v: Vec<f64> = v.iter().map(|x| x.1).collect();
        v.sort_by(f64::total_cmp);
        v.get(v.len().saturating_sub(1) / 2)
            .copied()
            .unwrap_or(f64::NAN)
    }

    /// The veth section of the report.
    pub fn markdown(cli: &Cli, runs: &[Runs]) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "\n## veth topology: the AF_XDP engine\n\nThe forwarders bind the host side of a veth \
             pair; the rig's participants sit in a network namespace on the other side, so every \
             packet crosses the (virtual) NIC both ways. `ringbridge xdp` is `--engine xdp \
             --xdp-iface <host side>` (native XDP, copy mode: veth has no zero-copy), `ringbridge \
             uring` the io_uring engine, the floor `floor-forwarder` (plain libc recvmmsg/sendmmsg, \
             no ringbridge code), all with one worker thread, in the same namespace setup, \
             interleaved, {} repetitions of {} s. CPU is the forwarder process's CPU time per \
             delivered copy. For the CPU figures the namespace side receives in a kernel thread of \
             its own (threaded NAPI, enabled by an XDP program passing everything): otherwise a \
             forwarder sending through the UDP stack runs the namespace's receive path for every \
             copy in its own context and one writing AF_XDP frames does not; so they compare what \
             each forwarder's own threads and sends cost. For the ceilings (find-max, the rig and \
             the forwarder on a CPU each) that receive path runs in the forwarder's softirq \
             context for every forwarder alike (one kernel thread would cap them all). The host \
             side's receive runs in the sending rig's context for every forwarder alike. Goals: xdp <= 0.50x the floor's CPU per \
             copy, >= 2.0x its max clean copies/s.\n",
            cli.reps, cli.duration
        );
        let _ = writeln!(
            s,
            "| scenario | forwarder | CPU ns / copy | CPU vs floor | loss | p99 us | max clean copies/s | vs floor | vs uring | copies direct / through the kernel |"
        );
        let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|");
        for r in runs {
            let floor_cpu = mean(&r.rows[0].cpu_ns);
            let floor_max = median(&r.rows[0].max_clean);
            let uring_max = median(&r.rows[1].max_clean);
            for row in &r.rows {
                let cpu = mean(&row.cpu_ns);
                let max = median(&row.max_clean);
                let loss = row.lost as f64 / row.expected.max(1) as f64;
                let _ = writeln!(
                    s,
                    "| {} | {} | {cpu:.0} | {:.2} | {:.3}% | {:.0} | {max:.0} | {:.2} | {:.2} | {} |",
                    r.scenario.short(),
                    row.label,
                    cpu / floor_cpu,
                    loss * 100.0,
                    mean(&row.p99_us),
                    max / floor_max,
                    max / uring_max,
                    if row.label == Kind::Xdp.label() {
                        format!("{} / {}", row.xdp_direct, row.xdp_kernel)
                    } else {
                        "-".into()
                    }
                );
            }
        }
        let _ = writeln!(
            s,
            "\nOn a NIC with AF_XDP zero-copy (ice, i40e, mlx5) the driver receives into and \
             sends from the UMEM itself: the copy into the UMEM on receive and the copy the \
             kernel makes of each tx frame disappear, and the receive work runs in the NIC's \
             NAPI context rather than the sender's, so both the CPU per copy and the ceiling \
             improve beyond what veth shows; the ladder takes zero-copy there by itself."
        );
        s
    }
}
