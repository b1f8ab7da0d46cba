//! `ringbridge-perf` (`make perf`): the side-by-side run. Measures ringbridge (uring and mio
//! engines) against `floor-forwarder` and `naive-forwarder` with the same traffic at fan-out 1,
//! 4 and 9, interleaved A B A B, then `--find-max` per forwarder and a run at half the max clean
//! rate. Writes `perf/results/<date>-<host>.{md,json,svg}` and prints the table.

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
use ringbridge_bench::drive;
use ringbridge_bench::report::Report;
use ringbridge_bench::rig::{Live, Rig, RunOpts, Topology};
use ringbridge_bench::target::{Kind, Target};
use ringbridge_bench::traffic::{Load, Stream};
use ringbridge_dataplane::srtp::Profile;

/// SRTP profile of the SRTP rows.
const SRTP: Profile = Profile::AeadAes128Gcm;

/// What one row measures: a forwarder, plain or with every participant on SRTP.
#[derive(Clone, Copy)]
struct Variant {
    kind: Kind,
    srtp: bool,
}

const VARIANTS: [Variant; 6] = [
    Variant {
        kind: Kind::Uring,
        srtp: false,
    },
    Variant {
        kind: Kind::Mio,
        srtp: false,
    },
    Variant {
        kind: Kind::Floor,
        srtp: false,
    },
    Variant {
        kind: Kind::Naive,
        srtp: false,
    },
    Variant {
        kind: Kind::Uring,
        srtp: true,
    },
    Variant {
        kind: Kind::Mio,
        srtp: true,
    },
];

impl Variant {
    fn label(self) -> String {
        if self.srtp {
            format!("{} + SRTP {}", self.kind.label(), SRTP.name())
        } else {
            self.kind.label().to_string()
        }
    }
}

/// Side-by-side performance run of ringbridge against baseline forwarders.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
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
    /// Fan-outs to measure (participants = fan-out + 1).
    #[arg(long, value_delimiter = ',', default_value = "1,4,9")]
    fanouts: Vec<usize>,
    /// Fan-outs that also get SRTP rows.
    #[arg(long, value_delimiter = ',', default_value = "4,9")]
    srtp_fanouts: Vec<usize>,
    /// Skip the --find-max ramps and half-max runs.
    #[arg(long)]
    no_find_max: bool,
    /// Seconds per find-max step.
    #[arg(long, default_value_t = 1.5)]
    step_secs: f64,
    /// Directory for the report.
    #[arg(long, default_value = "perf/results")]
    out: PathBuf,
}

/// Figures of one forwarder at one fan-out.
#[derive(Default, serde::Serialize)]
struct Row {
    cpu_ns: Vec<f64>,
    lost: u64,
    expected: u64,
    p99_us: Vec<f64>,
    max_clean_offered_pps: Option<f64>,
    max_clean_forwarded_pps: Option<f64>,
    half_max_loss: Option<f64>,
    half_max_p99_us: Option<f64>,
    reports: Vec<Report>,
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

fn host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "host".into())
}

fn today() -> String {
    std::process::Command::new("date")
        .arg("+%Y-%m-%d")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| "today".into())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
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
    let mut rows: BTreeMap<(usize, usize), Row> = BTreeMap::new();
    for &fanout in &cli.fanouts {
        let p = fanout + 1;
        let pps = cli.copies_per_sec / (p * fanout) as f64;
        let load = Load {
            streams: vec![Stream {
                pps,
                size: cli.size,
            }],
        };
        let topo = Topology {
            conferences: 1,
            participants: p,
            senders: p,
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
        let with_srtp = cli.srtp_fanouts.contains(&fanout);
        eprintln!(
            "fan-out {fanout}: {p} participants x {pps:.0} pps = {:.0} pps in, {:.0} copies/s out",
            pps * p as f64,
            cli.copies_per_sec
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
                let target = rt.block_on(Target::spawn(v.kind, members, 1, false))?;
                let r = rig.run(target.media, target.pid, &load, &opts, &Live::default())?;
                let rep_ = Report::new(&v.label(), topo, &load, 0.5, &r);
                eprintln!(
                    "  rep {} {:<17} cpu {:>7.0} ns/copy  loss {:.4}%  p99 {:.0} us",
                    rep + 1,
                    v.label(),
                    rep_.bridge_cpu_ns_per_forwarded_packet.unwrap_or(f64::NAN),
                    rep_.loss_ratio * 100.0,
                    rep_.latency_us.p99
                );
                let row = rows.entry((fanout, ki)).or_default();
                row.cpu_ns.extend(rep_.bridge_cpu_ns_per_forwarded_packet);
                row.lost += rep_.lost_packets;
                row.expected += rep_.expected_packets;
                row.p99_us.push(rep_.latency_us.p99);
                row.reports.push(rep_);
                drop(target);
            }
        }
        if cli.no_find_max {
            continue;
        }
        for (ki, kind) in Kind::ALL.into_iter().enumerate() {
            let target = rt.block_on(Target::spawn(kind, &members, 1, false))?;
            let fm = drive::find_max(
                &mut rig,
                &target,
                &load,
                Duration::from_secs_f64(cli.step_secs),
                &opts,
                |_| {},
            )?;
            let row = rows.entry((fanout, ki)).or_default();
            row.max_clean_offered_pps = Some(fm.max_clean_offered_pps);
            row.max_clean_forwarded_pps = Some(fm.max_clean_forwarded_pps);
            if fm.max_clean_offered_pps > 0.0 {
                let factor = 0.5 * fm.max_clean_offered_pps / (pps * p as f64);
                let half = load.scaled(factor);
                let r = rig.run(target.media, target.pid, &half, &opts, &Live::default())?;
                row.half_max_loss = Some(r.loss_ratio());
                row.half_max_p99_us = Some(r.latency_ns.value_at_quantile(0.99) as f64 / 1000.0);
            }
            eprintln!(
                "  find-max {:<17} max clean {:.0} pps in / {:.0} copies/s; at half: loss {:.4}%, p99 {:.0} us",
                kind.label(),
                fm.max_clean_offered_pps,
                fm.max_clean_forwarded_pps,
                row.half_max_loss.unwrap_or(f64::NAN) * 100.0,
                row.half_max_p99_us.unwrap_or(f64::NAN)
            );
        }
    }
    let md = markdown(&cli, &rows, started.elapsed());
    print!("{md}");
    std::fs::create_dir_all(&cli.out)?;
    let stem = cli.out.join(format!("{}-{}", today(), host()));
    std::fs::write(stem.with_extension("md"), &md)?;
    let json: Vec<_> = rows
        .iter()
        .map(|((f, k), r)| serde_json::json!({"fanout": f, "target": VARIANTS[*k].label(), "row": r}))
        .collect();
    std::fs::write(
        stem.with_extension("json"),
        serde_json::to_string_pretty(&json)?,
    )?;
    chart(&stem.with_extension("svg"), &cli.fanouts, &rows).context("writing the chart")?;
    eprintln!("wrote {}.{{md,json,svg}}", stem.display());
    Ok(())
}

fn markdown(cli: &Cli, rows: &BTreeMap<(usize, usize), Row>, took: Duration) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# ringbridge side-by-side run, {} on {}\n",
        today(),
        host()
    );
    let _ = writeln!(
        s,
        "Fixed rate: {:.0} forwarded copies/s of {} bytes per fan-out, {} s per run, {} interleaved \
         repetitions (A B A B), one forwarder thread each (ringbridge `--workers 1 --no-pin`: the \
         baselines are not pinned either, and on a machine the rig shares, pinning measures \
         scheduling interference rather than the engine). CPU is the \
         forwarder process's CPU time (all threads, `/proc/PID/task/*/schedstat`) over the measured \
         window, divided by the copies the rig received. Ratios are against floor-forwarder measured \
         in the same run. SRTP rows: every participant on {} (the rig protects and unprotects), \
         *SRTP/plain* compares with the same engine's plain row. Max clean rate: highest offered \
         input rate with loss <= 0.1% (`--find-max`). Run took {:.0} s.\n",
        cli.copies_per_sec,
        cli.size,
        cli.duration,
        cli.reps,
        SRTP.name(),
        took.as_secs_f64()
    );
    let _ = writeln!(
        s,
        "| fan-out | forwarder | CPU ns / forwarded pkt | ratio to floor | SRTP/plain | loss | p99 latency us | max clean pps in (copies/s out) | at half max: loss, p99 us |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|");
    let fanouts: Vec<usize> = rows
        .keys()
        .map(|k| k.0)
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    for f in fanouts {
        let floor = rows
            .get(&(f, 2))
            .map(|r| mean(&r.cpu_ns))
            .unwrap_or(f64::NAN);
        for (ki, v) in VARIANTS.into_iter().enumerate() {
            let Some(r) = rows.get(&(f, ki)) else {
                continue;
            };
            let vs_plain = match (v.srtp, rows.get(&(f, ki - 4 * usize::from(v.srtp)))) {
                (true, Some(plain)) => format!("{:.2}", mean(&r.cpu_ns) / mean(&plain.cpu_ns)),
                _ => "-".into(),
            };
            let cpu = mean(&r.cpu_ns);
            let spread = r.cpu_ns.iter().map(|c| (c - cpu).abs()).fold(0.0, f64::max);
            let loss = r.lost as f64 / r.expected.max(1) as f64 * 100.0;
            let max = match (r.max_clean_offered_pps, r.max_clean_forwarded_pps) {
                (Some(a), Some(b)) => format!("{a:.0} ({b:.0})"),
                _ => "-".into(),
            };
            let half = match (r.half_max_loss, r.half_max_p99_us) {
                (Some(l), Some(p)) => format!("{:.3}%, {p:.0}", l * 100.0),
                _ => "-".into(),
            };
            let _ = writeln!(
                s,
                "| {f} | {} | {cpu:.0} ± {spread:.0} | {:.2} | {vs_plain} | {loss:.3}% | {:.0} | {max} | {half} |",
                v.label(),
                cpu / floor,
                mean(&r.p99_us),
            );
        }
    }
    s
}

fn chart(
    path: &std::path::Path,
    fanouts: &[usize],
    rows: &BTreeMap<(usize, usize), Row>,
) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (900, 500)).into_drawing_area();
    root.fill(&WHITE)?;
    let top = rows.values().map(|r| mean(&r.cpu_ns)).fold(1.0, f64::max) * 1.15;
    let n = fanouts.len();
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
            fanouts
                .get(i)
                .map(|f| format!("fan-out {f}"))
                .unwrap_or_default()
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
    ];
    let width = 0.8 / VARIANTS.len() as f64;
    for (ki, v) in VARIANTS.into_iter().enumerate() {
        let color = colors[ki];
        let bars: Vec<_> = fanouts
            .iter()
            .enumerate()
            .filter_map(|(i, f)| {
                let r = rows.get(&(*f, ki))?;
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
