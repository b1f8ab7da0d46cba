//! The simulation commands (`simulate`, `simulate-stream`): their flags and their printing.

use std::path::PathBuf;

use anyhow::Context;

use crate::run::serve::{HpaArgs, positive};
use crate::sim::{self, SimConfig};

/// The flags of `simulate`.
#[derive(clap::Args, Debug)]
pub struct SimArgs {
    /// Random seed of the trace.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Simulated hours.
    #[arg(long, default_value_t = 24)]
    pub hours: u64,
    /// Scale the day to about this many participants (default: the 100-1000 users day).
    #[arg(long)]
    pub participants: Option<u64>,
    /// Extra users of the flash crowd at 13:30.
    #[arg(long, default_value_t = 300)]
    pub flash_users: u32,
    /// Packets/s (in + out) one bridge carries at stress 1.
    #[arg(long, default_value_t = 200_000.0)]
    pub capacity_pps: f64,
    /// Packets/s each participant sends.
    #[arg(long, default_value_t = 100.0)]
    pub participant_pps: f64,
    /// Seconds from asking for a bridge until it reports.
    #[arg(long, default_value_t = 60)]
    pub boot_secs: u64,
    /// Autoscaler evaluation interval, s.
    #[arg(long, default_value_t = 15)]
    pub eval_secs: u64,
    /// Drain grace, s.
    #[arg(long, default_value_t = 300)]
    pub drain_grace_secs: u64,
    /// Write the day as an SVG here.
    #[arg(long)]
    pub svg: Option<PathBuf>,
    /// The autoscaler's settings.
    #[command(flatten)]
    pub hpa: HpaArgs,
}

/// The flags of `simulate-stream`.
#[derive(clap::Args, Debug)]
pub struct StreamSimArgs {
    /// Viewers of the stream.
    #[arg(long, default_value_t = 1_000_000)]
    pub viewers: u64,
    /// Regions the viewers come from (round-robin), comma-separated.
    #[arg(long, default_value = "eu,us,ap", value_delimiter = ',')]
    pub regions: Vec<String>,
    /// Packets/s (in + out) one bridge carries at stress 1.
    #[arg(long, default_value_t = 200_000.0)]
    pub capacity_pps: f64,
    /// Packets/s of the stream (600 kbps video + audio is about 55).
    #[arg(long, default_value_t = 55.0)]
    pub stream_pps: f64,
    /// Edges one bridge feeds at most (the origin's fan-out limit, as `serve --stream-fanout`).
    #[arg(long, default_value_t = 8)]
    pub stream_fanout: usize,
    /// Stress at which an edge takes no more viewers.
    #[arg(long, default_value_t = 0.8)]
    pub stress_threshold: f64,
}

/// Runs `simulate-stream` and prints its report (a table, or JSON).
pub fn simulate_stream(a: StreamSimArgs, json: bool) -> anyhow::Result<()> {
    if a.regions.is_empty() {
        anyhow::bail!("--regions: at least one");
    }
    if a.capacity_pps.is_nan()
        || a.capacity_pps < 1.0
        || a.stream_pps.is_nan()
        || a.stream_pps <= 0.0
    {
        anyhow::bail!("--capacity-pps and --stream-pps: must be > 0");
    }
    positive("--stress-threshold", a.stress_threshold).map_err(anyhow::Error::msg)?;
    let cfg = crate::sim::stream::StreamSimConfig {
        viewers: a.viewers,
        regions: a.regions.clone(),
        capacity_pps: a.capacity_pps,
        stream_pps: a.stream_pps,
        fanout: a.stream_fanout.max(1),
        stress_threshold: a.stress_threshold,
    };
    let r = crate::sim::stream::run(&cfg, &mut |n| {
        eprintln!("  {n} viewers placed");
    });
    if json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(());
    }
    println!(
        "one stream, {} viewers over {} (through the focus, in virtual time)",
        r.viewers,
        a.regions.join(", ")
    );
    println!("  refused             {:>10}", r.refused);
    println!("  bridges used        {:>10} (origin + edges)", r.bridges);
    println!(
        "  origin fan-out      {:>10} edges (limit {})",
        r.origin_fanout, cfg.fanout
    );
    println!("  edges pulling       {:>10}", r.edges);
    println!("  deepest tier        {:>10}", r.deepest_tier);
    println!("  max bridge stress   {:>10.3}", r.max_stress);
    println!(
        "  placement           {:>10.0} ns per viewer (plan + commit)",
        r.placement_ns
    );
    println!("  wall clock          {:>10.1} s", r.wall_s);
    Ok(())
}

/// Runs `simulate` and prints its report (a table, or JSON), with an SVG plot if asked.
pub fn simulate(a: SimArgs, json: bool) -> anyhow::Result<()> {
    let hpa = a.hpa.config()?;
    positive("--capacity-pps", a.capacity_pps).map_err(anyhow::Error::msg)?;
    positive("--participant-pps", a.participant_pps).map_err(anyhow::Error::msg)?;
    let target = hpa.target;
    let cfg = SimConfig {
        seed: a.seed,
        duration_s: a.hours.max(1) * 3600,
        flash_users: a.flash_users,
        capacity_pps: a.capacity_pps,
        participant_pps: a.participant_pps,
        boot_s: a.boot_secs,
        eval_s: a.eval_secs.max(1),
        drain_grace_s: a.drain_grace_secs,
        hpa,
        ..SimConfig::default()
    };
    let r = sim::run(&cfg, a.participants, &mut |h| {
        eprint!("\rsimulated {h:>2} of {} hours", a.hours.max(1));
    });
    eprintln!();
    if let Some(path) = &a.svg {
        let title = format!(
            "ringbridge autoscaler over {} h: {} participants, seed {}",
            a.hours, r.participants, a.seed
        );
        std::fs::write(path, sim::svg(&r, target, &title))
            .with_context(|| format!("writing --svg {}", path.display()))?;
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(());
    }
    println!(
        "simulated {:.0} h in {:.1} s (wall clock)",
        r.hours, r.wall_s
    );
    println!(
        "  participants        {:>10} (refused {}, peak at once {})",
        r.participants, r.refused, r.peak_participants
    );
    println!(
        "  bridge-hours        {:>10.1} with the autoscaler",
        r.bridge_hours
    );
    println!(
        "  peak fleet          {:>10} bridges -> {:.1} bridge-hours all day",
        r.peak_bridges, r.peak_bridge_hours
    );
    println!("  saved               {:>9.1} %", r.saved * 100.0);
    println!(
        "  overload-seconds    {:>10} (highest stress {:.2})",
        r.overload_seconds, r.max_stress
    );
    println!(
        "  moved by drains     {:>10} participants",
        r.moved_by_drains
    );
    println!(
        "  bridges             {:>10} started, {} removed, {} scaling decisions",
        r.started, r.removed, r.decisions
    );
    if let Some(p) = &a.svg {
        println!("  plot                {}", p.display());
    }
    Ok(())
}
