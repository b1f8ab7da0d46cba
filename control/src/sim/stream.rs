//! The stream simulation: one broadcast to many viewers through the real [`Focus`] in virtual
//! time. Every join is planned and committed by the same code the service runs (bridge calls
//! succeed at once). Assumptions:
//! - Viewers arrive one after the other, round-robin over the regions; none leaves.
//! - The publisher joins first, in the first region; one bridge per region is up at the start.
//! - Capacity comes when needed, as the autoscaler would provide it: when the newest edge of a
//!   viewer's region has no room for one more viewer under the stress threshold, a new bridge
//!   starts in that region (at once: boot time is the autoscaler simulation's subject).
//! - A bridge's load is packets in + out: one stream per viewer, one in per pull, one out per
//!   edge it feeds; its report (stress) follows each change.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use crate::core::fleet::Bridge;
use crate::core::focus::{Applied, CallResult, Focus, FocusConfig, JoinRequest, Plan};
use crate::store::{Role, Snapshot};

/// Settings of a stream simulation.
#[derive(Debug, Clone)]
pub struct StreamSimConfig {
    /// Viewers of the stream.
    pub viewers: u64,
    /// Regions the viewers come from (round-robin); the publisher is in the first.
    pub regions: Vec<String>,
    /// Packets/s (in + out) a bridge carries at stress 1.
    pub capacity_pps: f64,
    /// Packets/s of the stream.
    pub stream_pps: f64,
    /// Edges one bridge feeds (`--stream-fanout`).
    pub fanout: usize,
    /// Stress at which an edge takes no more viewers.
    pub stress_threshold: f64,
}

/// What [`run`] found.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StreamReport {
    /// Viewers placed.
    pub viewers: u64,
    /// Joins the focus refused.
    pub refused: u64,
    /// Bridges used (the origin and the edges).
    pub bridges: usize,
    /// Edges pulling from the origin.
    pub origin_fanout: usize,
    /// Edges pulling.
    pub edges: usize,
    /// The deepest tier of the pull tree.
    pub deepest_tier: usize,
    /// Highest stress of any bridge at the end.
    pub max_stress: f64,
    /// Viewers per region.
    pub per_region: BTreeMap<String, u64>,
    /// Mean wall-clock time of one viewer's join (plan + commit in the focus), ns.
    pub placement_ns: f64,
    /// Wall-clock time of the whole run, s.
    pub wall_s: f64,
}

fn run_plan(focus: &mut Focus, plan: Plan) -> bool {
    let ok: Vec<CallResult> = plan.calls.iter().map(|_| Ok(Applied::Done)).collect();
    let c = focus.complete(plan.op, &plan.calls, &ok);
    if let Some(cleanup) = c.cleanup {
        run_plan(focus, cleanup);
    }
    c.result.is_ok()
}

/// Runs the simulation; `progress` gets the viewers placed so far now and then.
pub fn run(cfg: &StreamSimConfig, progress: &mut dyn FnMut(u64)) -> StreamReport {
    const S: &str = "stream";
    let start = Instant::now();
    let mut focus = Focus::new(
        &FocusConfig {
            report_interval_ms: 1_000,
            missed_reports: 3,
            probe_failures_down: 2,
            per_participant_pps: cfg.stream_pps,
            max_per_bridge: 80,
            stress_threshold: cfg.stress_threshold,
            drain_grace_ms: 300_000,
            drain_linger_ms: 0,
            stream_fanout: cfg.fanout,
            max_viewers_per_edge: usize::MAX,
        },
        Snapshot::default(),
        Box::new(|b: &mut [u8]| b.fill(7)),
        0,
    );
    // The newest bridge of each region.
    let mut newest: HashMap<String, String> = HashMap::new();
    let add_bridge = |focus: &mut Focus, newest: &mut HashMap<String, String>, region: &str| {
        let id = format!("{region}-{}", focus.fleet().iter().count());
        let b = Bridge::new(&id, "", "", region, cfg.capacity_pps);
        focus.register(b, 0).expect("fresh id");
        focus.report(&id, 0.0, false, 0);
        newest.insert(region.to_string(), id);
    };
    for r in &cfg.regions {
        add_bridge(&mut focus, &mut newest, r);
    }
    let viewer_stress = cfg.stream_pps / cfg.capacity_pps;
    let mut publisher = JoinRequest {
        conference: S.into(),
        participant_id: "publisher".into(),
        region: cfg.regions[0].clone(),
        ssrcs: vec![1],
        remote_addr: "10.0.0.1:5000".into(),
        srtp: None,
        role: Role::Publisher,
        webrtc: None,
        rewrite: None,
        media: None,
        subscription: None,
        last_n: 0,
        owner: String::new(),
    };
    let plan = focus
        .join(publisher.clone(), 0)
        .expect("a bridge for the publisher");
    run_plan(&mut focus, plan);
    publisher.role = Role::Viewer;
    let origin = focus.conferences()[S].bridge.clone();
    // Reported stress per bridge: the origin carries the publisher's stream in.
    let mut stress: HashMap<String, f64> = HashMap::from([(origin.clone(), viewer_stress)]);
    let (mut refused, mut placing) = (0u64, Duration::ZERO);
    let mut per_region: BTreeMap<String, u64> = BTreeMap::new();
    let mut last_progress = Instant::now();
    for v in 0..cfg.viewers {
        let region = &cfg.regions[(v % cfg.regions.len() as u64) as usize];
        // The autoscaler's part: room in the region's newest edge, or a new bridge.
        let room = |id: &String| {
            *id != origin
                && stress.get(id).copied().unwrap_or(0.0) + 2.0 * viewer_stress
                    < cfg.stress_threshold
        };
        if !newest.get(region).is_some_and(room) {
            add_bridge(&mut focus, &mut newest, region);
        }
        let mut req = publisher.clone();
        req.participant_id = format!("v{v}");
        req.region = region.clone();
        req.ssrcs.clear();
        let t = Instant::now();
        let plan = focus.join(req, v);
        let ok = plan.is_ok_and(|p| run_plan(&mut focus, p));
        placing += t.elapsed();
        if !ok {
            refused += 1;
            continue;
        }
        *per_region.entry(region.clone()).or_default() += 1;
        // The report of every bridge whose load changed: the viewer's edge (one stream out),
        // and for a new pull the edge (one in) and its parent (one out).
        let edge = focus.conferences()[S].participants[&format!("v{v}")]
            .bridge
            .clone();
        let pulled = focus
            .take_announcements()
            .iter()
            .any(|a| a.reason == "pulled");
        let tree = focus.conferences()[S].tree().expect("published");
        let mut add = vec![(edge.clone(), viewer_stress)];
        if pulled {
            let parent = tree
                .edges()
                .find(|(e, _)| *e == edge)
                .map(|(_, p)| p.to_string());
            add.push((edge.clone(), viewer_stress));
            add.extend(parent.map(|p| (p, viewer_stress)));
        }
        for (id, d) in add {
            let s = stress.entry(id.clone()).or_default();
            *s += d;
            focus.report(&id, *s, false, v);
        }
        focus.take_changes();
        if last_progress.elapsed() > Duration::from_secs(1) {
            progress(v);
            last_progress = Instant::now();
        }
    }
    let p = &focus.conferences()[S];
    let tree = p.tree().expect("published");
    StreamReport {
        viewers: cfg.viewers - refused,
        refused,
        bridges: p.bridges().len(),
        origin_fanout: tree.fanout(tree.origin()),
        edges: tree.edges().count(),
        deepest_tier: tree.deepest(),
        max_stress: stress.values().copied().fold(0.0, f64::max),
        per_region,
        placement_ns: placing.as_nanos() as f64 / cfg.viewers.max(1) as f64,
        wall_s: start.elapsed().as_secs_f64(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_big_stream_keeps_the_origin_fanout_bounded_and_no_edge_overloaded() {
        let cfg = StreamSimConfig {
            viewers: 20_000,
            regions: vec!["eu".into(), "us".into(), "ap".into()],
            capacity_pps: 20_000.0,
            stream_pps: 55.0,
            fanout: 4,
            stress_threshold: 0.8,
        };
        let r = run(&cfg, &mut |_| {});
        assert_eq!((r.viewers, r.refused), (20_000, 0));
        assert_eq!(r.origin_fanout, 4, "{r:?}");
        assert!(r.deepest_tier >= 2, "{r:?}");
        // ~290 viewers per edge at 0.8 of 20 000 pps: about 70 edges, plus the origin.
        assert!((60..=80).contains(&r.bridges), "{r:?}");
        // An edge filled to the threshold may still feed up to `fanout` more edges.
        assert!(r.max_stress < 0.8 + 6.0 * 55.0 / 20_000.0, "{r:?}");
        assert_eq!(r.per_region["eu"], 6_667);
    }
}
