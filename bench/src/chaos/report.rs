//! The soak's report: per fault and overall, *Never* findings, *Bounded* gaps and joins, *Flat*
//! memory and descriptors; JSON for machines, a table and an SVG timeline for people.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use super::check::{Gap, Violation, quantile};
use super::load::Load;
use super::schedule::Kind;

/// One injected fault as it happened.
#[derive(Debug, Clone, Serialize)]
pub struct FaultRecord {
    /// What.
    pub kind: Kind,
    /// The bridge, control instance or nothing it acted on.
    pub target: Option<String>,
    /// When it started, ms.
    pub at_ms: u64,
    /// When it ended (the process back, the hang over, the surge gone), ms.
    pub end_ms: u64,
    /// Anything worth saying.
    pub note: String,
}

/// One join as a client saw it.
#[derive(Debug, Clone, Serialize)]
pub struct JoinRecord {
    /// The participant.
    pub participant: String,
    /// When it was sent, ms.
    pub at_ms: u64,
    /// How long until the answer, ms.
    pub ms: u64,
    /// Acknowledged.
    pub ok: bool,
    /// The error, when refused.
    pub error: Option<String>,
}

/// Memory and descriptors of one process at one time.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// The process's name.
    pub name: String,
    /// Its pid.
    pub pid: u32,
    /// When, ms.
    pub at_ms: u64,
    /// Its age then, ms.
    pub age_ms: u64,
    /// Resident memory, KiB.
    pub rss_kib: u64,
    /// Open descriptors.
    pub fds: u64,
}

/// What the report is built from.
pub struct Inputs<'a> {
    /// The schedule's seed.
    pub seed: u64,
    /// Minutes run.
    pub minutes: f64,
    /// The participants and the checker.
    pub load: &'a Load,
    /// Faults.
    pub faults: &'a [FaultRecord],
    /// Joins.
    pub joins: &'a [JoinRecord],
    /// Memory samples.
    pub samples: &'a [Sample],
    /// (ms, bridges up, bridges known).
    pub fleet_size: &'a [(u64, usize, usize)],
    /// Each conference's bridges over time.
    pub conf_bridges: &'a super::BridgeHistory,
    /// A fault's window lasts this long after its end.
    pub settle_ms: u64,
    /// The end, ms.
    pub end_ms: u64,
}

/// Gap figures.
#[derive(Debug, Clone, Default, Serialize)]
pub struct GapStats {
    /// Gaps (one per receiver and sender).
    pub count: usize,
    /// Receivers with a gap.
    pub receivers: usize,
    /// Packets missing in all.
    pub missing: u64,
    /// Gap length, ms.
    pub p50_ms: u64,
    /// Gap length, ms.
    pub p99_ms: u64,
    /// Gap length, ms.
    pub max_ms: u64,
}

impl GapStats {
    fn of(gaps: &[&Gap]) -> Self {
        let mut ms: Vec<u64> = gaps.iter().map(|g| g.ms()).collect();
        let receivers: BTreeSet<u32> = gaps.iter().map(|g| g.receiver).collect();
        Self {
            count: gaps.len(),
            receivers: receivers.len(),
            missing: gaps.iter().map(|g| g.missing).sum(),
            p50_ms: quantile(&mut ms, 0.5),
            p99_ms: quantile(&mut ms, 0.99),
            max_ms: quantile(&mut ms, 1.0),
        }
    }
}

/// Join figures.
#[derive(Debug, Clone, Default, Serialize)]
pub struct JoinStats {
    /// Joins sent.
    pub attempts: usize,
    /// Refused (or not answered in time).
    pub refused: usize,
    /// Answer time of acknowledged joins, ms.
    pub p50_ms: u64,
    /// Answer time of acknowledged joins, ms.
    pub p99_ms: u64,
}

impl JoinStats {
    fn of(j: &[&JoinRecord]) -> Self {
        let mut ms: Vec<u64> = j.iter().filter(|j| j.ok).map(|j| j.ms).collect();
        Self {
            attempts: j.len(),
            refused: j.iter().filter(|j| !j.ok).count(),
            p50_ms: quantile(&mut ms, 0.5),
            p99_ms: quantile(&mut ms, 0.99),
        }
    }
}

/// One fault's figures.
#[derive(Debug, Clone, Serialize)]
pub struct FaultReport {
    /// The fault.
    #[serde(flatten)]
    pub fault: FaultRecord,
    /// Gaps of receivers whose media crossed a bridge the fault acted on.
    pub touched: GapStats,
    /// Gaps of everyone else (the goal: none).
    pub untouched: GapStats,
    /// Joins sent from its start to the end of its window.
    pub joins: JoinStats,
    /// The goal for `touched.max_ms` (none: only reported).
    pub goal_max_gap_ms: Option<u64>,
    /// Goals met (touched under the goal, nothing untouched).
    pub pass: bool,
}

/// One process's memory and descriptors from its minute 2 on.
#[derive(Debug, Clone, Serialize)]
pub struct Flat {
    /// The process.
    pub name: String,
    /// Its pid.
    pub pid: u32,
    /// Minutes of samples after its minute 2.
    pub minutes: f64,
    /// RSS at minute 2, KiB.
    pub rss_start_kib: u64,
    /// RSS at the end, KiB.
    pub rss_end_kib: u64,
    /// Growth, %.
    pub rss_growth_pct: f64,
    /// Descriptors at minute 2.
    pub fds_start: u64,
    /// Descriptors at the end.
    pub fds_end: u64,
    /// RSS growth under 5 % and no more descriptors (only judged over 5 minutes or more).
    pub pass: bool,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Seed.
    pub seed: u64,
    /// Minutes.
    pub minutes: f64,
    /// Packets sent by all participants.
    pub packets_sent: u64,
    /// Packets checked at receivers.
    pub packets_checked: u64,
    /// Packets that arrived after a later one of their sender.
    pub packets_late: u64,
    /// Packets sent before their receiver left that arrived well after (a stopped bridge's
    /// backlog).
    pub packets_stale_after_leave: u64,
    /// Participants that joined over the run.
    pub joins: JoinStats,
    /// *Never* findings.
    pub never: Vec<Violation>,
    /// Their count.
    pub never_total: usize,
    /// Per fault.
    pub faults: Vec<FaultReport>,
    /// Gaps outside every fault's window (the goal: none).
    pub unattributed: GapStats,
    /// Per long-lived process.
    pub flat: Vec<Flat>,
    /// (ms, bridges up, bridges known).
    pub fleet_size: Vec<(u64, usize, usize)>,
    /// Gaps in all.
    pub gaps_total: usize,
    /// The longest [`MAX_LISTED_GAPS`] gaps, longest first, with where their media went (a
    /// lossy link makes tens of thousands of short ones).
    pub gaps: Vec<GapView>,
    /// The timeline's dots: (ms, gap ms), one per pixel it draws.
    #[serde(skip)]
    pub dots: Vec<(u64, u64)>,
}

/// Gaps the JSON report lists one by one.
pub const MAX_LISTED_GAPS: usize = 2_000;

/// A gap with the bridges of its receiver and sender when it started.
#[derive(Debug, Clone, Serialize)]
pub struct GapView {
    /// The gap.
    #[serde(flatten)]
    pub gap: Gap,
    /// The conference's index.
    pub conf: Option<u32>,
    /// The receiver's bridge then.
    pub rx_bridge: Option<String>,
    /// The sender's bridge then.
    pub tx_bridge: Option<String>,
    /// The fault it is attributed to (its index) and whether the fault touched its path.
    pub fault: Option<(usize, bool)>,
}

fn goal(kind: Kind) -> Option<u64> {
    match kind {
        Kind::KillBridge | Kind::HangBridge | Kind::RestartBridge => Some(2_999),
        Kind::DrainBridge => Some(0),
        Kind::KillControl | Kind::HangEtcd | Kind::RestartEtcd | Kind::Surge => Some(0),
        Kind::LossyLink => None,
        Kind::ScaleUp | Kind::ScaleDown => Some(0),
    }
}

/// Builds the report.
pub fn build(i: Inputs<'_>) -> Report {
    let load = i.load;
    let gaps = &load.checker.gaps;
    // The fault whose window holds a gap's start (the latest that started before it).
    let window = |f: &FaultRecord| (f.at_ms.saturating_sub(500), f.end_ms + i.settle_ms);
    let bridges_at = |conf: u32, ms: u64| -> BTreeSet<String> {
        let h = i.conf_bridges.get(&conf);
        h.and_then(|h| h.iter().rev().find(|(t, _)| *t <= ms).or(h.first()))
            .map(|(_, s)| s.clone())
            .unwrap_or_default()
    };
    let touched = |g: &Gap, f: &FaultRecord| {
        let mut involved: BTreeSet<&str> = BTreeSet::new();
        if f.kind.on_bridge()
            && let Some(t) = &f.target
        {
            involved.insert(t);
        }
        if involved.is_empty() {
            return false;
        }
        let (rx, tx) = (load.members.get(&g.receiver), load.members.get(&g.sender));
        let conf = rx.or(tx).map(|m| m.conf);
        let broadcast = rx.is_some_and(|m| m.role == super::load::Role::Viewer);
        if broadcast || rx.is_none() || tx.is_none() {
            // A broadcast crosses its pull tree: any bridge of it.
            return conf.is_some_and(|c| {
                bridges_at(c, g.from_ms)
                    .iter()
                    .any(|b| involved.contains(b.as_str()))
            });
        }
        [rx, tx]
            .into_iter()
            .flatten()
            .filter_map(|m| m.bridge_at(g.from_ms))
            .any(|b| involved.contains(b))
    };
    // The fault of a gap: among those whose window holds its start, the latest that touched
    // its path, else the latest.
    let fault_of = |g: &Gap| {
        let open: Vec<(usize, &FaultRecord)> = i
            .faults
            .iter()
            .enumerate()
            .filter(|(_, f)| {
                let (a, b) = window(f);
                (a..=b).contains(&g.from_ms)
            })
            .collect();
        let latest =
            |v: &[(usize, &FaultRecord)]| v.iter().max_by_key(|(_, f)| f.at_ms).map(|(k, _)| *k);
        let touching: Vec<_> = open
            .iter()
            .copied()
            .filter(|(_, f)| touched(g, f))
            .collect();
        latest(&touching)
            .map(|k| (k, true))
            .or_else(|| latest(&open).map(|k| (k, false)))
    };
    let mut per: Vec<(Vec<&Gap>, Vec<&Gap>)> = vec![(Vec::new(), Vec::new()); i.faults.len()];
    let mut unattributed = Vec::new();
    let mut views = Vec::new();
    for g in gaps {
        let f = fault_of(g);
        match f {
            Some((k, true)) => per[k].0.push(g),
            Some((k, false)) => per[k].1.push(g),
            None => unattributed.push(g),
        }
        let (rx, tx) = (load.members.get(&g.receiver), load.members.get(&g.sender));
        views.push(GapView {
            gap: *g,
            conf: rx.or(tx).map(|m| m.conf),
            rx_bridge: rx.and_then(|m| m.bridge_at(g.from_ms)).map(String::from),
            tx_bridge: tx.and_then(|m| m.bridge_at(g.from_ms)).map(String::from),
            fault: f,
        });
    }
    let faults = i
        .faults
        .iter()
        .zip(per)
        .map(|(f, (t, u))| {
            let (a, b) = window(f);
            let j: Vec<&JoinRecord> = i
                .joins
                .iter()
                .filter(|j| (a..=b).contains(&j.at_ms))
                .collect();
            let touched = GapStats::of(&t);
            let untouched = GapStats::of(&u);
            let goal = goal(f.kind);
            let pass = untouched.count == 0 && goal.is_none_or(|g| touched.max_ms <= g);
            FaultReport {
                fault: f.clone(),
                touched,
                untouched,
                joins: JoinStats::of(&j),
                goal_max_gap_ms: goal,
                pass,
            }
        })
        .collect();
    // Flat: every process alive at the end, from its minute 2.
    let mut by_proc: BTreeMap<(String, u32), Vec<&Sample>> = BTreeMap::new();
    for s in i.samples {
        by_proc.entry((s.name.clone(), s.pid)).or_default().push(s);
    }
    let last_at = i.samples.iter().map(|s| s.at_ms).max().unwrap_or(0);
    let flat = by_proc
        .into_iter()
        .filter_map(|((name, pid), v)| {
            let end = *v.last()?;
            if end.at_ms + 5_000 < last_at {
                return None; // gone before the end
            }
            let start = *v.iter().find(|s| s.age_ms >= 120_000)?;
            let minutes = (end.at_ms - start.at_ms) as f64 / 60_000.0;
            let growth = (end.rss_kib as f64 / start.rss_kib.max(1) as f64 - 1.0) * 100.0;
            Some(Flat {
                name,
                pid,
                minutes,
                rss_start_kib: start.rss_kib,
                rss_end_kib: end.rss_kib,
                rss_growth_pct: growth,
                fds_start: start.fds,
                fds_end: end.fds,
                pass: minutes < 5.0 || (growth < 5.0 && end.fds <= start.fds + 2),
            })
        })
        .collect();
    let all_joins: Vec<&JoinRecord> = i.joins.iter().collect();
    Report {
        seed: i.seed,
        minutes: i.minutes,
        packets_sent: load.sent,
        packets_checked: load.checker.packets,
        packets_late: load.checker.late,
        packets_stale_after_leave: load.checker.stale_after_leave,
        joins: JoinStats::of(&all_joins),
        never: load.checker.violations.clone(),
        never_total: load.checker.violations.len(),
        faults,
        unattributed: GapStats::of(&unattributed),
        flat,
        fleet_size: i.fleet_size.to_vec(),
        gaps_total: views.len(),
        dots: {
            // One dot per second and per tenth of a decade of gap length: what a plot shows.
            let mut seen = BTreeSet::new();
            views
                .iter()
                .filter(|v| {
                    let bin = ((v.gap.ms().max(1) as f64).log10() * 10.0) as u64;
                    seen.insert((v.gap.from_ms / 1000, bin))
                })
                .map(|v| (v.gap.from_ms, v.gap.ms()))
                .collect()
        },
        gaps: {
            let mut v = views;
            v.sort_by_key(|g| std::cmp::Reverse(g.gap.ms()));
            v.truncate(MAX_LISTED_GAPS);
            v
        },
    }
}

/// The human table.
pub fn table(r: &Report) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "chaos soak: {:.0} min, seed {}: {} packets sent, {} checked ({} late, {} held up past \
         their receiver's leave), {} joins ({} refused)",
        r.minutes,
        r.seed,
        r.packets_sent,
        r.packets_checked,
        r.packets_late,
        r.packets_stale_after_leave,
        r.joins.attempts,
        r.joins.refused
    );
    let _ = writeln!(
        s,
        "\n{:<3} {:<15} {:<12} {:>7} | {:>5} {:>6} {:>6} {:>6} | {:>9} | {:>11} | ok",
        "#",
        "fault",
        "target",
        "at min",
        "gaps",
        "p50ms",
        "p99ms",
        "maxms",
        "untouched",
        "joins ref."
    );
    for (k, f) in r.faults.iter().enumerate() {
        let _ = writeln!(
            s,
            "{:<3} {:<15} {:<12} {:>7.2} | {:>5} {:>6} {:>6} {:>6} | {:>9} | {:>5}/{:<5} | {}",
            k + 1,
            f.fault.kind.name(),
            f.fault.target.as_deref().unwrap_or("-"),
            f.fault.at_ms as f64 / 60_000.0,
            f.touched.count,
            f.touched.p50_ms,
            f.touched.p99_ms,
            f.touched.max_ms,
            f.untouched.count,
            f.joins.refused,
            f.joins.attempts,
            if f.pass { "yes" } else { "NO" }
        );
    }
    let _ = writeln!(
        s,
        "\ngaps outside every fault's window: {} (max {} ms)",
        r.unattributed.count, r.unattributed.max_ms
    );
    let _ = writeln!(s, "\nflat (from minute 2 of each process):");
    for f in &r.flat {
        let _ = writeln!(
            s,
            "  {:<18} {:>5.1} min  RSS {:>7} -> {:>7} KiB ({:+.1} %)  fds {} -> {}  {}",
            f.name,
            f.minutes,
            f.rss_start_kib,
            f.rss_end_kib,
            f.rss_growth_pct,
            f.fds_start,
            f.fds_end,
            if f.pass { "ok" } else { "NO" }
        );
    }
    let _ = writeln!(s, "\nNEVER violations: {}", r.never_total);
    for v in r.never.iter().take(30) {
        let _ = writeln!(
            s,
            "  [{:.2} min] {}: {}",
            v.at_ms as f64 / 60_000.0,
            v.kind,
            v.detail
        );
    }
    s
}

fn color(k: Kind) -> &'static str {
    match k {
        Kind::KillBridge => "#d62728",
        Kind::HangBridge => "#ff7f0e",
        Kind::DrainBridge => "#2ca02c",
        Kind::RestartBridge => "#9467bd",
        Kind::KillControl => "#8c564b",
        Kind::HangEtcd => "#e377c2",
        Kind::RestartEtcd => "#7f7f7f",
        Kind::Surge => "#bcbd22",
        Kind::LossyLink => "#17becf",
        Kind::ScaleUp => "#1f77b4",
        Kind::ScaleDown => "#aec7e8",
    }
}

/// The SVG timeline: faults (bars), the fleet (bridges up), gaps (dots, log scale).
pub fn svg(r: &Report) -> String {
    let (w, h) = (1200.0, 520.0);
    let (left, right) = (70.0, 20.0);
    let end = (r.minutes * 60_000.0).max(1.0);
    let x = |ms: u64| left + (w - left - right) * (ms as f64 / end).min(1.0);
    let mut s = format!(
        "<svg xmlns='http://www.w3.org/2000/svg' width='{w}' height='{h}' font-family='sans-serif' font-size='11'>\n\
         <rect width='100%' height='100%' fill='white'/>\n\
         <text x='{left}' y='16' font-size='14'>ringbridge chaos soak, seed {}: {} never violations</text>\n",
        r.seed, r.never_total
    );
    // Faults band: y 30..130, one lane per kind.
    let lanes = Kind::ALL.iter().chain(&[Kind::ScaleUp, Kind::ScaleDown]);
    for (lane, k) in lanes.enumerate() {
        let y = 30.0 + lane as f64 * 11.0;
        let _ = writeln!(
            s,
            "<text x='4' y='{}' font-size='9'>{}</text>",
            y + 8.0,
            k.name()
        );
        for f in r.faults.iter().filter(|f| f.fault.kind == *k) {
            let (a, b) = (
                x(f.fault.at_ms),
                x(f.fault.end_ms).max(x(f.fault.at_ms) + 2.0),
            );
            let _ = writeln!(
                s,
                "<rect x='{a:.1}' y='{y}' width='{:.1}' height='9' fill='{}'><title>{} {} at {:.1} min</title></rect>",
                b - a,
                color(*k),
                k.name(),
                f.fault.target.as_deref().unwrap_or(""),
                f.fault.at_ms as f64 / 60_000.0
            );
        }
    }
    // Fleet band: y 160..250.
    let (fy0, fy1) = (250.0, 160.0);
    let max_b = r.fleet_size.iter().map(|f| f.2).max().unwrap_or(1).max(1) as f64;
    let _ = writeln!(s, "<text x='4' y='{}'>bridges up</text>", fy1 + 10.0);
    let pts: Vec<String> = r
        .fleet_size
        .iter()
        .map(|(t, up, _)| format!("{:.1},{:.1}", x(*t), fy0 - (fy0 - fy1) * *up as f64 / max_b))
        .collect();
    let _ = writeln!(
        s,
        "<polyline points='{}' fill='none' stroke='#1f77b4' stroke-width='1.5'/>",
        pts.join(" ")
    );
    for n in 0..=max_b as usize {
        let y = fy0 - (fy0 - fy1) * n as f64 / max_b;
        let _ = writeln!(
            s,
            "<text x='{}' y='{y:.1}' font-size='9'>{n}</text>",
            left - 14.0
        );
    }
    // Gaps band: y 280..480, log10(ms) from 1 ms to 100 s.
    let (gy0, gy1) = (480.0, 280.0);
    let gy = |ms: u64| gy0 - (gy0 - gy1) * ((ms.max(1) as f64).log10() / 5.0).min(1.0);
    for (label, ms) in [
        ("10 ms", 10),
        ("100 ms", 100),
        ("1 s", 1000),
        ("3 s", 3000),
        ("10 s", 10_000),
    ] {
        let y = gy(ms);
        let _ = writeln!(
            s,
            "<line x1='{left}' x2='{}' y1='{y:.1}' y2='{y:.1}' stroke='#ddd'/><text x='4' y='{:.1}' font-size='9'>{label}</text>",
            w - right,
            y + 3.0
        );
    }
    let _ = writeln!(s, "<text x='4' y='{}'>media gaps</text>", gy1 - 6.0);
    for &(at, ms) in &r.dots {
        let _ = writeln!(
            s,
            "<circle cx='{:.1}' cy='{:.1}' r='2' fill='#d62728' fill-opacity='0.5'/>",
            x(at),
            gy(ms)
        );
    }
    // Time axis.
    let mins = r.minutes.ceil() as u64;
    let step = if mins > 20 { 5 } else { 1 };
    for m in (0..=mins).step_by(step as usize) {
        let xx = x(m * 60_000);
        let _ = writeln!(
            s,
            "<line x1='{xx:.1}' x2='{xx:.1}' y1='28' y2='{gy0}' stroke='#eee'/><text x='{xx:.1}' y='{}' text-anchor='middle'>{m} min</text>",
            gy0 + 16.0
        );
    }
    s.push_str("</svg>\n");
    s
}

/// Writes `<date>-chaos-seed<S>.{json,svg,md}` under `out`; returns the paths.
pub fn write(out: &Path, r: &Report) -> anyhow::Result<Vec<String>> {
    std::fs::create_dir_all(out)?;
    let stem = format!("{}-chaos-seed{}", crate::report::today(), r.seed);
    let mut paths = Vec::new();
    for (ext, body) in [
        ("json", serde_json::to_string_pretty(r)?),
        ("svg", svg(r)),
        ("md", format!("```\n{}```\n", table(r))),
    ] {
        let p = out.join(format!("{stem}.{ext}"));
        std::fs::write(&p, body)?;
        paths.push(p.display().to_string());
    }
    Ok(paths)
}
