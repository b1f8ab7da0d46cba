//! The cost simulation: the real [`Focus`] and [`Scaler`] in virtual time over a day of
//! conferences. Every join, leave, report, tick and autoscaler evaluation goes through the same
//! code the service runs; bridge calls succeed at once, bridges boot in a fixed time, and each
//! bridge's load is computed from the placements (what its report would say).
//!
//! The trace (all assumptions, fixed seed):
//! - Concurrent users follow a business day between `min_users` and `peak_users`: low at night,
//!   a raised-cosine ramp 07:00-10:00, a plateau until 16:00, down by 20:00.
//! - Conferences arrive as a Poisson process whose rate keeps that many users in conferences
//!   (Little's law): size log-normal (median 9, sigma 0.5, 2..=40: mean about 10), length
//!   log-normal (median 40 min, sigma 0.5, 5 min..=4 h: mean about 45 min); participants join
//!   over the first 2 minutes and leave in the last minute.
//! - A flash crowd: `flash_users` more users in conferences of 10 arriving over 5 minutes at
//!   13:30, staying 30 minutes.
//! - Each participant sends `participant_pps`; a bridge's load is packets in + out: every
//!   sender of a conference arrives once (locally or over a relay), each local participant gets
//!   every other sender, and each local sender goes once to each other bridge of the conference.

pub mod cmd;
pub mod stream;

use std::collections::HashMap;
use std::fmt::Write as _;

use crate::core::autoscaler::{Action, HpaConfig, Scaler};
use crate::core::fleet::Bridge;
use crate::core::focus::{Applied, CallResult, Focus, FocusConfig, JoinRequest, KeySource, Plan};
use crate::store::Snapshot;

/// Settings of a simulation.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Random seed.
    pub seed: u64,
    /// Simulated time, s.
    pub duration_s: u64,
    /// Concurrent users at night.
    pub min_users: f64,
    /// Concurrent users on the plateau.
    pub peak_users: f64,
    /// Extra users of the flash crowd at 13:30 (0: none).
    pub flash_users: u32,
    /// Packets/s each participant sends.
    pub participant_pps: f64,
    /// Packets/s (in + out) a bridge carries at stress 1.
    pub capacity_pps: f64,
    /// Seconds from asking for a bridge to its first report.
    pub boot_s: u64,
    /// Report interval, s.
    pub report_s: u64,
    /// Autoscaler evaluation interval, s.
    pub eval_s: u64,
    /// Drain grace, s.
    pub drain_grace_s: u64,
    /// Participants of one conference per bridge before it grows (Octo).
    pub max_per_bridge: usize,
    /// Stress at which a bridge takes nothing new.
    pub stress_threshold: f64,
    /// HPA settings.
    pub hpa: HpaConfig,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            seed: 1,
            duration_s: 24 * 3600,
            min_users: 100.0,
            peak_users: 1000.0,
            flash_users: 300,
            participant_pps: 100.0,
            capacity_pps: 200_000.0,
            boot_s: 60,
            report_s: 5,
            eval_s: 15,
            drain_grace_s: 300,
            max_per_bridge: 80,
            stress_threshold: 0.8,
            hpa: HpaConfig::default(),
        }
    }
}

/// One point of the day, sampled every minute.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Point {
    /// Time, s.
    pub t_s: u64,
    /// Participants placed.
    pub participants: usize,
    /// Total load, in bridge capacities (load / capacity).
    pub load: f64,
    /// Bridges running (booting, serving or draining).
    pub running: usize,
    /// Bridges serving (up, not draining).
    pub serving: usize,
}

/// What a simulation found.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    /// Simulated hours.
    pub hours: f64,
    /// Participants that joined.
    pub participants: u64,
    /// Joins refused (no bridge could take them).
    pub refused: u64,
    /// Most participants at once.
    pub peak_participants: usize,
    /// Bridge-hours with the autoscaler (booting and draining bridges count).
    pub bridge_hours: f64,
    /// Most bridges running at once.
    pub peak_bridges: usize,
    /// Bridge-hours of a fleet provisioned for that peak all day.
    pub peak_bridge_hours: f64,
    /// 1 - bridge_hours / peak_bridge_hours.
    pub saved: f64,
    /// Seconds during which some bridge carried more than its capacity.
    pub overload_seconds: u64,
    /// Highest stress any bridge reached.
    pub max_stress: f64,
    /// Participants moved off draining bridges.
    pub moved_by_drains: u64,
    /// Bridges started and stopped.
    pub started: u64,
    /// Bridges removed after draining.
    pub removed: u64,
    /// Autoscaler decisions that changed the fleet.
    pub decisions: u64,
    /// Wall-clock time of the run, s.
    pub wall_s: f64,
    /// The day, minute by minute.
    #[serde(skip)]
    pub points: Vec<Point>,
}

/// SplitMix64: small, fast, reproducible.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    fn uniform(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn normal(&mut self) -> f64 {
        let u1 = self.uniform().max(f64::MIN_POSITIVE);
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
    fn lognormal(&mut self, median: f64, sigma: f64) -> f64 {
        median * (sigma * self.normal()).exp()
    }
    fn exponential(&mut self, mean: f64) -> f64 {
        -mean * (1.0 - self.uniform()).ln()
    }
}

/// Share of the way from night to plateau at `t_s` into the day (0..=1).
fn day_shape(t_s: f64) -> f64 {
    let h = (t_s / 3600.0) % 24.0;
    let ramp = |x: f64| 0.5 - 0.5 * (std::f64::consts::PI * x.clamp(0.0, 1.0)).cos();
    if !(7.0..20.0).contains(&h) {
        0.0
    } else if h < 10.0 {
        ramp((h - 7.0) / 3.0)
    } else if h < 16.0 {
        1.0
    } else {
        1.0 - ramp((h - 16.0) / 4.0)
    }
}

/// Simulated time before the day starts (the fleet settles; not accounted).
const WARMUP_S: u64 = 2 * 3600;

const MEAN_SIZE: f64 = 10.0;
const MEAN_LENGTH_S: f64 = 45.0 * 60.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Leave,
    Join,
}

/// The trace: (time s since the warm-up began, kind, conference, participant), sorted.
fn trace(cfg: &SimConfig, scale: f64) -> Vec<(u64, Kind, u32, u32)> {
    let mut rng = Rng(cfg.seed);
    let mut events = Vec::new();
    let mut conf = 0u32;
    let mut who = 0u32;
    let mut add = |rng: &mut Rng, start: f64, size: u32, length: f64, events: &mut Vec<_>| {
        conf += 1;
        for _ in 0..size {
            who += 1;
            let join = start + rng.uniform() * 120.0;
            let leave = (start + length - rng.uniform() * 60.0).max(join + 1.0);
            if join < cfg.duration_s as f64 {
                let at = |t: f64| (t + WARMUP_S as f64) as u64;
                events.push((at(join), Kind::Join, conf, who));
                events.push((at(leave), Kind::Leave, conf, who));
            }
        }
    };
    // Non-homogeneous Poisson arrivals by thinning against the peak rate.
    let users = |t: f64| (cfg.min_users + (cfg.peak_users - cfg.min_users) * day_shape(t)) * scale;
    let peak_rate = cfg.peak_users.max(cfg.min_users) * scale / (MEAN_SIZE * MEAN_LENGTH_S);
    let mut t = -(WARMUP_S as f64);
    loop {
        t += rng.exponential(1.0 / peak_rate);
        if t >= cfg.duration_s as f64 {
            break;
        }
        // The warm-up has the night's load.
        if rng.uniform() * peak_rate > users(t.max(0.0)) / (MEAN_SIZE * MEAN_LENGTH_S) {
            continue;
        }
        let size = rng.lognormal(9.0, 0.5).round().clamp(2.0, 40.0) as u32;
        let length = rng.lognormal(40.0 * 60.0, 0.5).clamp(300.0, 4.0 * 3600.0);
        add(&mut rng, t, size, length, &mut events);
    }
    let flash_at = 13.5 * 3600.0;
    if cfg.flash_users > 0 && flash_at < cfg.duration_s as f64 {
        for _ in 0..(f64::from(cfg.flash_users) * scale / 10.0).ceil() as u32 {
            let start = flash_at + rng.uniform() * 300.0;
            add(&mut rng, start, 10, 1800.0, &mut events);
        }
    }
    events.sort_unstable();
    events
}

/// Expected participants over the run per unit of scale (for `--participants`).
fn expected_participants(cfg: &SimConfig) -> f64 {
    let mut total = 0.0;
    let step = 60.0;
    let mut t = 0.0;
    while t < cfg.duration_s as f64 {
        let u = cfg.min_users + (cfg.peak_users - cfg.min_users) * day_shape(t);
        total += u / MEAN_LENGTH_S * step;
        t += step;
    }
    total + f64::from(cfg.flash_users)
}

struct World {
    focus: Focus,
    scaler: Scaler,
    /// Bridge -> load, packets/s.
    load: HashMap<String, f64>,
    /// Conference -> its share of each of its bridges' load.
    contrib: HashMap<String, Vec<(String, f64)>>,
    pps: f64,
}

impl World {
    fn run(&mut self, plan: Plan) -> bool {
        let ok: Vec<CallResult> = plan.calls.iter().map(|_| Ok(Applied::Done)).collect();
        let c = self.focus.complete(plan.op, &plan.calls, &ok);
        if let Some(cleanup) = c.cleanup {
            self.run(cleanup);
        }
        c.result.is_ok()
    }

    /// Recomputes the load `conference` puts on its bridges.
    fn account(&mut self, conference: &str) {
        for (b, v) in self.contrib.remove(conference).unwrap_or_default() {
            if let Some(l) = self.load.get_mut(&b) {
                *l -= v;
            }
        }
        let Some(p) = self.focus.conferences().get(conference) else {
            return;
        };
        let n = p.participants.len() as f64;
        let mut on: HashMap<&str, f64> = HashMap::new();
        for x in p.participants.values() {
            *on.entry(x.bridge.as_str()).or_default() += 1.0;
        }
        let relays = on.len() as f64 - 1.0;
        let mut adds = Vec::with_capacity(on.len());
        for (b, k) in on {
            let v = self.pps * (n + k * (n - 1.0) + k * relays);
            adds.push((b.to_string(), v));
        }
        for (b, v) in &adds {
            *self.load.entry(b.clone()).or_default() += v;
        }
        self.contrib.insert(conference.to_string(), adds);
    }
}

/// Runs a simulation; `participants` (if set) scales the day to that many joins; `progress` is
/// called every simulated hour with the hour.
pub fn run(cfg: &SimConfig, participants: Option<u64>, progress: &mut dyn FnMut(u64)) -> Report {
    let wall = std::time::Instant::now();
    let scale = participants.map_or(1.0, |n| n as f64 / expected_participants(cfg));
    let events = trace(cfg, scale);
    let mut keys_n = cfg.seed;
    let keys: KeySource = Box::new(move |buf: &mut [u8]| {
        for b in buf {
            keys_n = keys_n.wrapping_mul(6364136223846793005).wrapping_add(1);
            *b = (keys_n >> 56) as u8;
        }
    });
    let report_ms = cfg.report_s.max(1) * 1000;
    let focus = Focus::new(
        &FocusConfig {
            report_interval_ms: report_ms,
            missed_reports: 3,
            probe_failures_down: 2,
            per_participant_pps: cfg.participant_pps * MEAN_SIZE * 2.0,
            max_per_bridge: cfg.max_per_bridge,
            stream_fanout: 8,
            max_viewers_per_edge: 1000,
            stress_threshold: cfg.stress_threshold,
            drain_grace_ms: cfg.drain_grace_s * 1000,
            // The simulation has no clients that switch late.
            drain_linger_ms: 0,
        },
        Snapshot::default(),
        keys,
        0,
    );
    let mut w = World {
        focus,
        scaler: Scaler::new(cfg.hpa.clone()),
        load: HashMap::new(),
        contrib: HashMap::new(),
        pps: cfg.participant_pps,
    };
    // (ready at s, id) of bridges booting; ids of bridges running (booting included).
    let mut booting: Vec<(u64, String)> = Vec::new();
    let mut running: usize = 0;
    let mut next_id = 0u64;
    let mut r = Report {
        hours: cfg.duration_s as f64 / 3600.0,
        participants: 0,
        refused: 0,
        peak_participants: 0,
        bridge_hours: 0.0,
        peak_bridges: 0,
        peak_bridge_hours: 0.0,
        saved: 0.0,
        overload_seconds: 0,
        max_stress: 0.0,
        moved_by_drains: 0,
        started: 0,
        removed: 0,
        decisions: 0,
        wall_s: 0.0,
        points: Vec::new(),
    };
    let mut start = |n: u32, now: u64, booting: &mut Vec<(u64, String)>, running: &mut usize| {
        for _ in 0..n {
            next_id += 1;
            booting.push((now + cfg.boot_s, format!("sim-{next_id}")));
            *running += 1;
        }
    };
    // The fleet starts at its minimum, ready.
    start(cfg.hpa.min.max(1), 0, &mut booting, &mut running);
    for b in &mut booting {
        b.0 = 0;
    }
    let mut placed = 0usize;
    let mut base_moves = 0u64;
    let mut bridge_seconds = 0u64;
    let mut ev = events.into_iter().peekable();
    for clock in 0..WARMUP_S + cfg.duration_s {
        let now_ms = clock * 1000;
        // Day time; the warm-up runs at the night's load and is not accounted.
        let accounted = clock >= WARMUP_S;
        let now = clock.saturating_sub(WARMUP_S);
        // Bridges that finished booting register.
        let (ready, still): (Vec<_>, Vec<_>) = booting.drain(..).partition(|(at, _)| *at <= clock);
        booting = still;
        for (_, id) in ready {
            let b = Bridge::new(&id, "sim", "sim", "default", cfg.capacity_pps);
            let _ = w.focus.register(b, now_ms);
            w.load.insert(id, 0.0);
            r.started += 1;
        }
        // Arrivals and departures of this second.
        while let Some(&(t, kind, conf, who)) = ev.peek() {
            if t > clock {
                break;
            }
            ev.next();
            let conference = format!("c{conf}");
            let participant = format!("p{who}");
            match kind {
                Kind::Join => {
                    r.participants += 1;
                    let req = JoinRequest {
                        conference: conference.clone(),
                        participant_id: participant,
                        region: "default".into(),
                        ssrcs: vec![who],
                        remote_addr: String::new(),
                        srtp: None,
                        role: Default::default(),
                        webrtc: None,
                        rewrite: None,
                        media: None,
                        subscription: None,
                        last_n: 0,
                        owner: String::new(),
                    };
                    let ok = w.focus.join(req, now_ms).is_ok_and(|plan| w.run(plan));
                    if ok {
                        placed += 1;
                    } else {
                        r.refused += 1;
                    }
                }
                Kind::Leave => match w.focus.leave(&conference, &participant) {
                    Ok(plan) => {
                        if w.run(plan) {
                            placed -= 1;
                        }
                    }
                    Err(_) => continue, // refused at join
                },
            }
            w.account(&conference);
        }
        // The focus's periodic work (drain moves).
        for plan in w.focus.tick(now_ms) {
            w.run(plan);
        }
        if w.focus.drain_moves() - base_moves != r.moved_by_drains {
            r.moved_by_drains = w.focus.drain_moves() - base_moves;
            // Moves change loads: recompute every conference on a bridge that lost some.
            let confs: Vec<String> = w.focus.conferences().keys().cloned().collect();
            for c in confs {
                w.account(&c);
            }
        }
        // Load reports.
        if clock % cfg.report_s.max(1) == 0 {
            let ids: Vec<(String, f64)> = w
                .focus
                .fleet()
                .iter()
                .map(|b| (b.id.clone(), w.load.get(&b.id).copied().unwrap_or(0.0)))
                .collect();
            for (id, load) in ids {
                w.focus.report(&id, load / cfg.capacity_pps, false, now_ms);
            }
        }
        // The autoscaler.
        if clock % cfg.eval_s.max(1) == 0 {
            let e = w
                .scaler
                .evaluate(&mut w.focus, booting.len() as u32, &|_| true, now_ms);
            if e.decision.desired != e.decision.current && accounted {
                r.decisions += 1;
            }
            for a in e.actions {
                match a {
                    Action::Start(n) => start(n, clock, &mut booting, &mut running),
                    Action::Remove(id) => {
                        w.focus.forget(&id);
                        w.load.remove(&id);
                        running -= 1;
                        r.removed += u64::from(accounted);
                    }
                }
            }
        }
        // Accounting.
        if !accounted {
            r.participants = 0;
            r.refused = 0;
            r.started = 0;
            r.moved_by_drains = 0;
            base_moves = w.focus.drain_moves();
            continue;
        }
        let over = w.load.values().any(|l| *l > cfg.capacity_pps);
        if let Some(m) = w.load.values().copied().reduce(f64::max) {
            r.max_stress = r.max_stress.max(m / cfg.capacity_pps);
        }
        r.overload_seconds += u64::from(over);
        bridge_seconds += running as u64;
        r.peak_bridges = r.peak_bridges.max(running);
        r.peak_participants = r.peak_participants.max(placed);
        if now % 60 == 0 {
            let total: f64 = w.load.values().sum();
            let serving = w
                .focus
                .fleet()
                .iter()
                .filter(|b| b.health == crate::core::fleet::Health::Up && !b.draining)
                .count();
            r.points.push(Point {
                t_s: now,
                participants: placed,
                load: total / cfg.capacity_pps,
                running,
                serving,
            });
        }
        if now % 3600 == 3599 {
            progress(now / 3600 + 1);
        }
    }
    r.bridge_hours = bridge_seconds as f64 / 3600.0;
    r.peak_bridge_hours = r.peak_bridges as f64 * r.hours;
    r.saved = 1.0 - r.bridge_hours / r.peak_bridge_hours.max(1e-9);
    r.wall_s = wall.elapsed().as_secs_f64();
    r
}

/// The day as an SVG: load (in bridge capacities), bridges running and serving, and the load
/// the serving bridges can take at the target utilization.
pub fn svg(r: &Report, target: f64, title: &str) -> String {
    let (w, h, left, right, top, bottom) = (960.0, 420.0, 60.0, 20.0, 40.0, 50.0);
    let pw = w - left - right;
    let ph = h - top - bottom;
    let t_max = r.points.last().map_or(1, |p| p.t_s.max(1)) as f64;
    let y_max = r
        .points
        .iter()
        .map(|p| (p.running as f64).max(p.load / target))
        .fold(1.0f64, f64::max)
        .ceil()
        + 1.0;
    let x = |t: f64| left + pw * t / t_max;
    let y = |v: f64| top + ph * (1.0 - v / y_max);
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = write!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let _ = write!(
        s,
        r#"<text x="{}" y="22" font-size="15" text-anchor="middle">{title}</text>"#,
        w / 2.0
    );
    // Grid and axes.
    let step = (y_max / 8.0).ceil().max(1.0);
    let mut v = 0.0;
    while v <= y_max {
        let _ = write!(
            s,
            r##"<line x1="{left}" x2="{}" y1="{:.1}" y2="{:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{v}</text>"##,
            w - right,
            y(v),
            y(v),
            left - 6.0,
            y(v) + 4.0
        );
        v += step;
    }
    let mut hour = 0.0;
    while hour * 3600.0 <= t_max {
        let _ = write!(
            s,
            r##"<line x1="{:.1}" x2="{:.1}" y1="{top}" y2="{}" stroke="#eee"/><text x="{:.1}" y="{}" text-anchor="middle">{hour:02}:00</text>"##,
            x(hour * 3600.0),
            x(hour * 3600.0),
            h - bottom,
            x(hour * 3600.0),
            h - bottom + 18.0
        );
        hour += 2.0;
    }
    let _ = write!(
        s,
        r#"<text x="16" y="{}" transform="rotate(-90 16 {})" text-anchor="middle">bridges</text>"#,
        top + ph / 2.0,
        top + ph / 2.0
    );
    type Series<'a> = (&'a str, &'a str, Box<dyn Fn(&Point) -> f64>);
    let series: [Series; 4] = [
        (
            "bridges running (cost)",
            "#d62728",
            Box::new(|p: &Point| p.running as f64),
        ),
        (
            "capacity (bridges serving)",
            "#ff9896",
            Box::new(|p: &Point| p.serving as f64),
        ),
        (
            "load (bridge capacities)",
            "#1f77b4",
            Box::new(|p: &Point| p.load),
        ),
        (
            "bridges needed at the target",
            "#2ca02c",
            Box::new(move |p: &Point| p.load / target),
        ),
    ];
    for (i, (name, color, f)) in series.iter().enumerate() {
        let pts: Vec<String> = r
            .points
            .iter()
            .map(|p| format!("{:.1},{:.1}", x(p.t_s as f64), y(f(p))))
            .collect();
        let _ = write!(
            s,
            r#"<polyline fill="none" stroke="{color}" stroke-width="1.6" points="{}"/>"#,
            pts.join(" ")
        );
        let ly = top + 14.0 + 16.0 * i as f64;
        let _ = write!(
            s,
            r#"<line x1="{}" x2="{}" y1="{ly}" y2="{ly}" stroke="{color}" stroke-width="3"/><text x="{}" y="{}">{name}</text>"#,
            left + 10.0,
            left + 30.0,
            left + 36.0,
            ly + 4.0
        );
    }
    let _ = write!(
        s,
        r#"<text x="{}" y="{}" text-anchor="end">{:.1} bridge-hours vs {:.1} for the peak fleet: {:.0} % saved, {} overload-seconds</text>"#,
        w - right,
        h - 8.0,
        r.bridge_hours,
        r.peak_bridge_hours,
        r.saved * 100.0,
        r.overload_seconds
    );
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_day_scales_up_and_down_without_overload() {
        // Six hours from 06:00-equivalent: compress by starting at night and ramping.
        let cfg = SimConfig {
            duration_s: 12 * 3600,
            flash_users: 0,
            ..SimConfig::default()
        };
        let r = run(&cfg, None, &mut |_| {});
        assert!(r.participants > 1000, "{r:?}");
        assert_eq!(r.refused, 0);
        assert_eq!(r.overload_seconds, 0, "max stress {}", r.max_stress);
        assert!(r.peak_bridges >= 3, "the morning ramp adds bridges: {r:?}");
        assert!(r.started > r.peak_bridges as u64 - 1);
        let first = r.points.first().unwrap().running;
        let at_peak = r.points.iter().map(|p| p.running).max().unwrap();
        assert!(at_peak > first);
        assert!(svg(&r, 0.6, "t").starts_with("<svg"));
    }

    #[test]
    fn the_trace_is_reproducible_and_follows_the_day() {
        let cfg = SimConfig::default();
        let a = trace(&cfg, 1.0);
        assert_eq!(a, trace(&cfg, 1.0));
        let joins = |from: u64, to: u64| {
            a.iter()
                .filter(|e| e.1 == Kind::Join && e.0 >= from && e.0 < to)
                .count()
        };
        // The plateau sees many more arrivals than the night.
        assert!(joins(11 * 3600, 12 * 3600) > 4 * joins(2 * 3600, 3 * 3600));
    }
}
