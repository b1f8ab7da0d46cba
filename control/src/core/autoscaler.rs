//! The autoscaler's arithmetic, sans-IO, with Kubernetes HPA semantics: time and measurements
//! come in, a [`Decision`] with its inputs and reason comes out. Nothing here starts, drains or
//! stops a bridge (that is the actuator's job) and the same code can run in a simulator.
//!
//! - `desired = ceil(ready * metric / target)`; no change while `|metric / target - 1|` is within
//!   the tolerance (default 0.1).
//! - Bridges still starting count as capacity coming: the metric is the utilization of the ready
//!   bridges, but scale-up compares against ready + starting, so booting bridges are not ordered
//!   twice.
//! - Stabilization: scale-up takes the lowest recommendation of its window (default 0 s: at
//!   once), scale-down the highest of its window (default 300 s).
//! - Rate policies per period: up by at most max(100 %, +4 bridges) per 15 s, down by at most 1
//!   bridge per 60 s (a drain takes time); then min and max.
//! - No decision on stale reports.

use std::collections::VecDeque;

use crate::core::fleet::{BridgeId, Health};
use crate::core::focus::Focus;

/// Settings (all flags of `ringbridge-control serve` once the autoscaler is wired in).
#[derive(Debug, Clone, PartialEq)]
pub struct HpaConfig {
    /// Target utilization of the ready bridges (load / capacity), e.g. 0.6.
    pub target: f64,
    /// No change while the ratio to the target is within 1 ± tolerance.
    pub tolerance: f64,
    /// Fewest bridges.
    pub min: u32,
    /// Most bridges.
    pub max: u32,
    /// Scale-up stabilization window, ms.
    pub up_window_ms: u64,
    /// Scale-down stabilization window, ms.
    pub down_window_ms: u64,
    /// Scale-up policy: at most this percentage more bridges per period...
    pub up_percent: u32,
    /// ...or this many more, whichever allows more.
    pub up_bridges: u32,
    /// Scale-up policy period, ms.
    pub up_period_ms: u64,
    /// Scale-down policy: at most this many fewer bridges per period.
    pub down_bridges: u32,
    /// Scale-down policy period, ms.
    pub down_period_ms: u64,
}

impl Default for HpaConfig {
    fn default() -> Self {
        Self {
            target: 0.6,
            tolerance: 0.1,
            min: 1,
            max: 100,
            up_window_ms: 0,
            down_window_ms: 300_000,
            up_percent: 100,
            up_bridges: 4,
            up_period_ms: 15_000,
            down_bridges: 1,
            down_period_ms: 60_000,
        }
    }
}

impl HpaConfig {
    /// Checks the settings; the error names the flag.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.target.is_finite() && self.target > 0.0 && self.target <= 1.0) {
            return Err(format!(
                "--target-utilization: must be > 0 and at most 1 (a bridge at its capacity), got {}",
                self.target
            ));
        }
        if !(self.tolerance.is_finite() && self.tolerance >= 0.0) {
            return Err(format!("--tolerance: must be >= 0, got {}", self.tolerance));
        }
        if self.min > self.max {
            return Err(format!(
                "--min-bridges: {} is more than --max-bridges {}",
                self.min, self.max
            ));
        }
        if self.up_percent == 0 && self.up_bridges == 0 {
            return Err(
                "--scale-up-percent and --scale-up-bridges: both 0, the fleet could never grow"
                    .into(),
            );
        }
        Ok(())
    }
}

/// What the autoscaler sees at one evaluation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// Time, ms.
    pub now_ms: u64,
    /// Bridges up and reporting.
    pub ready: u32,
    /// Bridges started but not ready yet.
    pub starting: u32,
    /// Utilization of the ready bridges: their reported traffic over their capacity.
    pub metric: f64,
    /// Some ready bridge's last report is too old to decide on.
    pub stale: bool,
}

/// One evaluation: inputs, the raw recommendation, the decision and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// The inputs.
    pub sample: Sample,
    /// Bridges counted as current (ready + starting).
    pub current: u32,
    /// `ceil(ready * metric / target)` (or current within the tolerance).
    pub raw: u32,
    /// Bridges to run.
    pub desired: u32,
    /// Why `desired` is what it is.
    pub reason: String,
}

/// The autoscaler's state: recent recommendations and scaling events.
#[derive(Debug, Clone, Default)]
pub struct Hpa {
    cfg: HpaConfig,
    /// (time, raw recommendation), newest last.
    recs: VecDeque<(u64, u32)>,
    /// (time, bridges before, bridges after) of past changes, newest last.
    events: VecDeque<(u64, u32, u32)>,
}

impl Hpa {
    /// An autoscaler with `cfg` (validated by the caller).
    pub fn new(cfg: HpaConfig) -> Self {
        Self {
            cfg,
            ..Self::default()
        }
    }

    /// Bridges at the start of the last `period_ms` (before the changes made since).
    fn at_period_start(&self, now_ms: u64, period_ms: u64, current: u32) -> u32 {
        self.events
            .iter()
            .find(|(t, _, _)| now_ms.saturating_sub(*t) < period_ms)
            .map_or(current, |(_, before, _)| *before)
    }

    /// The settings.
    pub fn config(&self) -> &HpaConfig {
        &self.cfg
    }

    /// Recent raw recommendations (time ms, bridges), oldest first: the stabilization window.
    pub fn window(&self) -> impl Iterator<Item = (u64, u32)> + '_ {
        self.recs.iter().copied()
    }

    /// Evaluates `s`; records the decision when it changes the fleet.
    pub fn decide(&mut self, s: Sample) -> Decision {
        let c = &self.cfg;
        let current = s.ready + s.starting;
        let keep = |reason: String| Decision {
            sample: s,
            current,
            raw: current,
            desired: current.clamp(c.min, c.max.max(c.min)),
            reason,
        };
        if s.stale {
            return keep("no decision: a bridge's load report is stale".into());
        }
        if s.ready == 0 && current > 0 {
            // Nothing measured yet: the bridges coming are the capacity.
            return keep("no decision: no bridge has reported load yet".into());
        }
        if !s.metric.is_finite() || s.metric < 0.0 {
            return keep(format!(
                "no decision: metric {} is not a utilization",
                s.metric
            ));
        }
        let ratio = s.metric / c.target;
        let raw = if (ratio - 1.0).abs() <= c.tolerance {
            current
        } else {
            ((f64::from(s.ready) * ratio).ceil() as u32).max(u32::from(s.ready > 0 || current > 0))
        };
        let horizon = c.up_window_ms.max(c.down_window_ms);
        self.recs.push_back((s.now_ms, raw));
        while self
            .recs
            .front()
            .is_some_and(|(t, _)| s.now_ms.saturating_sub(*t) > horizon)
        {
            self.recs.pop_front();
        }
        // A zero window is this recommendation alone.
        let in_window = |w: u64| {
            let n = if w == 0 { 1 } else { self.recs.len() };
            self.recs
                .iter()
                .rev()
                .take(n)
                .filter(move |(t, _)| s.now_ms.saturating_sub(*t) <= w)
                .map(|(_, r)| *r)
        };
        let (mut desired, mut reason) = if raw > current {
            let d = in_window(c.up_window_ms).min().unwrap_or(raw);
            (
                d,
                format!(
                    "metric {:.3} over target {:.3}: {raw} wanted",
                    s.metric, c.target
                ),
            )
        } else if raw < current {
            let d = in_window(c.down_window_ms).max().unwrap_or(raw);
            let r = if d > raw {
                format!(
                    "metric {:.3} under target {:.3}: {raw} wanted, {d} kept by the {} s scale-down window",
                    s.metric,
                    c.target,
                    c.down_window_ms / 1000
                )
            } else {
                format!(
                    "metric {:.3} under target {:.3}: {raw} wanted",
                    s.metric, c.target
                )
            };
            (d, r)
        } else if (ratio - 1.0).abs() <= c.tolerance {
            (
                current,
                format!(
                    "metric {:.3} within {:.0} % of target {:.3}",
                    s.metric,
                    c.tolerance * 100.0,
                    c.target
                ),
            )
        } else {
            (
                current,
                format!(
                    "metric {:.3} against target {:.3}: {raw} wanted, as many as now",
                    s.metric, c.target
                ),
            )
        };
        if desired > current {
            let base = self.at_period_start(s.now_ms, c.up_period_ms, current);
            let limit = (base + base * c.up_percent / 100).max(base + c.up_bridges);
            if desired > limit {
                desired = limit;
                reason += &format!("; capped at {limit} by the scale-up policy");
            }
        } else if desired < current {
            let base = self.at_period_start(s.now_ms, c.down_period_ms, current);
            let limit = base.saturating_sub(c.down_bridges);
            if desired < limit {
                desired = limit.min(current);
                reason += &format!(
                    "; at most {} fewer per {} s",
                    c.down_bridges,
                    c.down_period_ms / 1000
                );
            }
        }
        let bounded = desired.clamp(c.min, c.max.max(c.min));
        if bounded != desired {
            reason += &format!("; bounded to [{}, {}]", c.min, c.max);
            desired = bounded;
        }
        if desired != current {
            self.events.push_back((s.now_ms, current, desired));
            let keep_ms = c.up_period_ms.max(c.down_period_ms);
            while self
                .events
                .front()
                .is_some_and(|(t, _, _)| s.now_ms.saturating_sub(*t) > keep_ms)
            {
                self.events.pop_front();
            }
        }
        Decision {
            sample: s,
            current,
            raw,
            desired,
            reason,
        }
    }
}

/// What the autoscaler asks the actuator to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Start this many bridges.
    Start(u32),
    /// Stop this bridge: it was drained and is empty (or went down empty).
    Remove(BridgeId),
}

/// One evaluation of the [`Scaler`]: the decision and what to do about it.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    /// The HPA decision with its inputs and reason.
    pub decision: Decision,
    /// Bridges put to drain by this evaluation.
    pub drained: Vec<BridgeId>,
    /// Work for the actuator.
    pub actions: Vec<Action>,
}

/// The autoscaler over a [`Focus`]: reads the fleet, decides with [`Hpa`], drains the bridges a
/// scale-down removes (fewest participants first) and hands the actuator what to start and
/// stop. Sans-IO: the service and the simulator drive the same code.
#[derive(Debug, Clone)]
pub struct Scaler {
    hpa: Hpa,
    /// Recent decisions that changed something or said why not, newest last.
    history: VecDeque<Decision>,
    last: Option<Decision>,
}

/// Decisions the [`Scaler`] keeps for the API.
pub const HISTORY: usize = 32;

impl Scaler {
    /// A scaler with `cfg` (validated by the caller).
    pub fn new(cfg: HpaConfig) -> Self {
        Self {
            hpa: Hpa::new(cfg),
            history: VecDeque::new(),
            last: None,
        }
    }

    /// The HPA state (settings and window).
    pub fn hpa(&self) -> &Hpa {
        &self.hpa
    }

    /// The last evaluation's decision.
    pub fn last(&self) -> Option<&Decision> {
        self.last.as_ref()
    }

    /// Recent decisions that changed the fleet, newest last.
    pub fn history(&self) -> impl Iterator<Item = &Decision> {
        self.history.iter()
    }

    /// What the autoscaler sees in `focus` at `now_ms`, with `booting` bridges started by the
    /// actuator that have not registered yet.
    pub fn sample(focus: &Focus, booting: u32, now_ms: u64) -> Sample {
        let fleet = focus.fleet();
        let stale_after = fleet.report_interval_ms.saturating_mul(2).max(1);
        let (mut ready, mut starting, mut load, mut capacity, mut stale) =
            (0, booting, 0.0, 0.0, false);
        for b in fleet.iter() {
            if b.health != Health::Up || b.draining {
                continue;
            }
            if !b.reported {
                // Registered, no load report yet: capacity coming, not measured.
                starting += 1;
                continue;
            }
            ready += 1;
            load += b.stress * b.capacity;
            capacity += b.capacity;
            stale |= now_ms.saturating_sub(b.last_report_ms) > stale_after;
        }
        Sample {
            now_ms,
            ready,
            starting,
            metric: if capacity > 0.0 { load / capacity } else { 0.0 },
            stale,
        }
    }

    /// One evaluation at `now_ms`: drained bridges are handed over for removal (the caller
    /// forgets them with [`Focus::forget`] once stopped);
    /// the HPA decides; a scale-up asks for bridges, a scale-down drains the `removable`
    /// bridges whose removal moves the fewest participants.
    pub fn evaluate(
        &mut self,
        focus: &mut Focus,
        booting: u32,
        removable: &dyn Fn(&str) -> bool,
        now_ms: u64,
    ) -> Evaluation {
        let mut actions = Vec::new();
        // Forgotten by the caller once stopped: a bridge forgotten while it still runs would
        // register again as a new one.
        actions.extend(focus.drained().into_iter().map(Action::Remove));
        let sample = Self::sample(focus, booting, now_ms);
        let decision = self.hpa.decide(sample);
        let mut drained = Vec::new();
        if decision.desired > decision.current {
            actions.push(Action::Start(decision.desired - decision.current));
        } else if decision.desired < decision.current {
            let per = focus.participants_per_bridge();
            let mut candidates: Vec<(usize, f64, BridgeId)> = focus
                .fleet()
                .iter()
                .filter(|b| b.health == Health::Up && !b.draining && b.reported)
                .filter(|b| removable(&b.id))
                .map(|b| {
                    (
                        per.get(b.id.as_str()).copied().unwrap_or(0),
                        b.stress,
                        b.id.clone(),
                    )
                })
                .collect();
            candidates.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)).then(a.2.cmp(&b.2)));
            let n = (decision.current - decision.desired) as usize;
            for (_, _, id) in candidates.into_iter().take(n) {
                if focus.drain(&id, now_ms).is_ok() {
                    drained.push(id);
                }
            }
        }
        if decision.desired != decision.current {
            self.history.push_back(decision.clone());
            while self.history.len() > HISTORY {
                self.history.pop_front();
            }
        }
        self.last = Some(decision.clone());
        Evaluation {
            decision,
            drained,
            actions,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(now_s: u64, ready: u32, metric: f64) -> Sample {
        Sample {
            now_ms: now_s * 1000,
            ready,
            starting: 0,
            metric,
            stale: false,
        }
    }

    #[test]
    fn within_the_tolerance_nothing_changes() {
        let mut h = Hpa::new(HpaConfig::default());
        for m in [0.55, 0.6, 0.65] {
            let d = h.decide(sample(0, 4, m));
            assert_eq!((d.raw, d.desired), (4, 4), "{d:?}");
        }
        assert_eq!(h.decide(sample(0, 4, 0.9)).desired, 6); // ceil(4 * 1.5)
    }

    #[test]
    fn scale_up_is_immediate_but_capped_by_the_policy() {
        let mut h = Hpa::new(HpaConfig::default());
        // 2 bridges at 6x the target want 12: at most max(2 * 2, 2 + 4) = 6 this period.
        let d = h.decide(sample(0, 2, 3.6));
        assert_eq!((d.raw, d.desired), (12, 6));
        assert!(d.reason.contains("scale-up policy"), "{}", d.reason);
        // Still within the period: the base is the 2 bridges before it.
        let d = h.decide(Sample {
            starting: 4,
            ..sample(5, 2, 3.6)
        });
        assert_eq!(d.desired, 6, "{d:?}");
        // Next period: from 6.
        let d = h.decide(sample(20, 6, 1.2));
        assert_eq!((d.raw, d.desired), (12, 12), "{d:?}");
    }

    #[test]
    fn starting_bridges_count_as_capacity_coming() {
        let mut h = Hpa::new(HpaConfig::default());
        // 4 ready at 0.9 want 6; 2 are already starting: nothing more.
        let d = h.decide(Sample {
            starting: 2,
            ..sample(0, 4, 0.9)
        });
        assert_eq!((d.current, d.raw, d.desired), (6, 6, 6));
    }

    #[test]
    fn scale_down_waits_for_the_window_and_goes_one_at_a_time() {
        let mut h = Hpa::new(HpaConfig::default());
        assert_eq!(h.decide(sample(0, 4, 0.6)).desired, 4);
        // Load halves: 2 wanted, but the 300 s window still holds the earlier 4.
        for t in [10, 100, 299] {
            let d = h.decide(sample(t, 4, 0.3));
            assert_eq!((d.raw, d.desired), (2, 4), "at {t} s: {d:?}");
            assert!(d.reason.contains("scale-down window"), "{}", d.reason);
        }
        // Past the window: down, one bridge per 60 s.
        let d = h.decide(sample(301, 4, 0.3));
        assert_eq!(d.desired, 3, "{d:?}");
        assert_eq!(
            h.decide(sample(330, 3, 0.4)).desired,
            3,
            "within the period"
        );
        assert_eq!(h.decide(sample(362, 3, 0.4)).desired, 2);
    }

    #[test]
    fn bounds_stale_reports_and_bad_settings() {
        let cfg = HpaConfig {
            min: 2,
            max: 5,
            ..HpaConfig::default()
        };
        let mut h = Hpa::new(cfg.clone());
        assert_eq!(h.decide(sample(0, 4, 6.0)).desired, 5);
        let d = h.decide(Sample {
            stale: true,
            ..sample(1, 4, 6.0)
        });
        assert_eq!(d.desired, 4);
        assert!(d.reason.contains("stale"));
        let mut h = Hpa::new(HpaConfig {
            down_window_ms: 0,
            down_bridges: 10,
            ..cfg
        });
        assert_eq!(h.decide(sample(0, 3, 0.0)).desired, 2, "never below min");
        let bad = HpaConfig {
            min: 3,
            max: 2,
            ..HpaConfig::default()
        };
        assert!(bad.validate().unwrap_err().starts_with("--min-bridges"));
        let bad = HpaConfig {
            target: 0.0,
            ..HpaConfig::default()
        };
        assert!(
            bad.validate()
                .unwrap_err()
                .starts_with("--target-utilization")
        );
        for (bad, flag) in [
            (
                HpaConfig {
                    target: f64::NAN,
                    ..HpaConfig::default()
                },
                "--target-utilization",
            ),
            (
                HpaConfig {
                    target: 1.5,
                    ..HpaConfig::default()
                },
                "--target-utilization",
            ),
            (
                HpaConfig {
                    tolerance: f64::INFINITY,
                    ..HpaConfig::default()
                },
                "--tolerance",
            ),
            (
                HpaConfig {
                    up_percent: 0,
                    up_bridges: 0,
                    ..HpaConfig::default()
                },
                "--scale-up-percent",
            ),
        ] {
            let e = bad.validate().unwrap_err();
            assert!(e.starts_with(flag), "{bad:?}: {e}");
        }
        assert!(HpaConfig::default().validate().is_ok());
    }

    mod scaler {
        use super::super::*;
        use crate::core::fleet::Bridge;
        use crate::core::focus::{Applied, CallResult, FocusConfig, JoinRequest};
        use crate::store::Snapshot;

        fn focus() -> Focus {
            let cfg = FocusConfig {
                report_interval_ms: 1000,
                missed_reports: 3,
                probe_failures_down: 2,
                per_participant_pps: 1.0,
                max_per_bridge: 80,
                stream_fanout: 8,
                max_viewers_per_edge: 1000,
                stress_threshold: 0.8,
                drain_grace_ms: 2000,
                drain_linger_ms: 0,
            };
            let mut f = Focus::new(
                &cfg,
                Snapshot::default(),
                Box::new(|b: &mut [u8]| b.fill(7)),
                0,
            );
            for id in ["a", "b", "c"] {
                f.register(Bridge::new(id, "x:1", "x:2", "eu", 1000.0), 0)
                    .unwrap();
            }
            f
        }

        fn join(f: &mut Focus, conf: &str, who: &str) -> String {
            let p = f
                .join(
                    JoinRequest {
                        conference: conf.into(),
                        participant_id: who.into(),
                        region: "eu".into(),
                        ssrcs: vec![1],
                        remote_addr: String::new(),
                        srtp: None,
                        role: Default::default(),
                        webrtc: None,
                        rewrite: None,
                        media: None,
                        subscription: None,
                        last_n: 0,
                        owner: String::new(),
                    },
                    0,
                )
                .unwrap();
            let ok: Vec<CallResult> = p.calls.iter().map(|_| Ok(Applied::Done)).collect();
            f.complete(p.op, &p.calls, &ok).result.unwrap();
            f.conferences()[conf].participants[who].bridge.clone()
        }

        fn report(f: &mut Focus, stress: f64, now: u64) {
            for id in ["a", "b", "c"] {
                f.report(id, stress, false, now);
            }
        }

        #[test]
        fn scale_down_drains_the_bridge_with_the_fewest_participants_then_removes_it() {
            let mut f = focus();
            let x = join(&mut f, "big", "p1");
            join(&mut f, "big", "p2");
            join(&mut f, "big", "p3");
            let y = join(&mut f, "small", "q1");
            assert_ne!(x, y);
            let empty = ["a", "b", "c"]
                .into_iter()
                .find(|b| *b != x && *b != y)
                .unwrap()
                .to_string();
            let mut s = Scaler::new(HpaConfig {
                down_window_ms: 0,
                ..HpaConfig::default()
            });
            // Registered but never reported: capacity coming, no decision yet to shrink.
            let e = s.evaluate(&mut f, 0, &|_| true, 0);
            assert_eq!(
                (e.decision.sample.ready, e.decision.sample.starting),
                (0, 3)
            );
            // 3 bridges at 0.1 want 1: one per period, the emptiest first.
            report(&mut f, 0.1, 500);
            let e = s.evaluate(&mut f, 0, &|_| true, 1000);
            assert_eq!(e.decision.desired, 2, "{:?}", e.decision);
            assert_eq!(e.drained, vec![empty.clone()]);
            // Empty: handed to the actuator at the next evaluation.
            report(&mut f, 0.1, 1500);
            let e = s.evaluate(&mut f, 0, &|_| true, 2000);
            assert_eq!(e.actions, vec![Action::Remove(empty.clone())]);
            f.forget(&empty);
            // Next period: the bridge with 1 participant, never one the actuator cannot stop.
            report(&mut f, 0.1, 61_500);
            let e = s.evaluate(&mut f, 0, &|b| b != y, 62_000);
            assert_eq!(e.drained, vec![x.clone()], "{:?}", e.decision);
            assert_eq!(s.history().count(), 2);
        }

        #[test]
        fn a_scale_up_asks_for_bridges_and_counts_booting_ones() {
            let mut f = focus();
            report(&mut f, 0.9, 500);
            let mut s = Scaler::new(HpaConfig::default());
            let e = s.evaluate(&mut f, 0, &|_| true, 1000);
            // 3 at 0.9 against 0.6: ceil(4.5) = 5.
            assert_eq!(e.actions, vec![Action::Start(2)]);
            // The 2 are booting: nothing more.
            let e = s.evaluate(&mut f, 2, &|_| true, 2000);
            assert!(e.actions.is_empty(), "{e:?}");
            // A stale report: no decision.
            let e = s.evaluate(&mut f, 0, &|_| true, 10_000);
            assert!(e.decision.sample.stale && e.actions.is_empty(), "{e:?}");
        }
    }
}
