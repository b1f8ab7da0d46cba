//! Runs built from single rig runs: `--find-max`'s ramp.

use std::time::Duration;

use crate::report::{FindMax, Step};
use crate::rig::{Live, Rig, RunOpts, RunResult};
use crate::target::Target;
use crate::traffic::Load;

/// Loss above which a rate is not clean (0.1%).
pub const CLEAN_LOSS: f64 = 0.001;
/// Most steps `find_max` tries.
const MAX_STEPS: usize = 12;

/// True when `r` lost at most 0.1%, misrouted nothing and the rig sent what it meant to.
pub fn clean(r: &RunResult) -> bool {
    r.loss_ratio() <= CLEAN_LOSS
        && r.misrouted_packets == 0
        && r.achieved_pps >= 0.95 * r.offered_pps
        && !r.interrupted
}

/// The `--find-max` search as a state machine, so several forwarders' ramps can take their
/// steps in turn (interleaved, a slow minute of a shared machine hits them all): the offered
/// load goes up from the base rate x1.6 per clean step, then bisects between the last clean and
/// the first unclean rate until they are within 5%.
#[derive(Debug, Clone)]
pub struct Ramp {
    good: Option<f64>,
    bad: Option<f64>,
    /// The next step's factor of the base load, `None` when done.
    next: Option<f64>,
    best: (f64, f64),
    steps: Vec<Step>,
}

impl Default for Ramp {
    fn default() -> Self {
        Self::new()
    }
}

impl Ramp {
    /// A ramp starting at the base load.
    pub fn new() -> Self {
        Self {
            good: None,
            bad: None,
            next: Some(1.0),
            best: (0.0, 0.0),
            steps: Vec::new(),
        }
    }

    /// The factor of the base load to offer next, or `None` when the search is over.
    pub fn next_factor(&self) -> Option<f64> {
        self.next
    }

    /// Takes in the step just run at [`Ramp::next_factor`] and returns what it measured.
    pub fn record(&mut self, r: &RunResult) -> &Step {
        let step = Step {
            offered_pps: r.offered_pps,
            forwarded_pps: r.forwarded_pps(),
            loss_ratio: r.loss_ratio(),
            p99_us: if r.latency_ns.is_empty() {
                0.0
            } else {
                r.latency_ns.value_at_quantile(0.99) as f64 / 1000.0
            },
        };
        self.take(step, clean(r), r.interrupted)
    }

    /// The search itself: `step` was run at the current factor and was `clean` or not.
    fn take(&mut self, step: Step, clean: bool, interrupted: bool) -> &Step {
        let Some(f) = self.next else {
            unreachable!("a step after the ramp ended");
        };
        if clean {
            self.good = Some(f);
            if step.offered_pps > self.best.0 {
                self.best = (step.offered_pps, step.forwarded_pps);
            }
        } else {
            self.bad = Some(f);
        }
        self.steps.push(step);
        self.next = match (self.good, self.bad) {
            _ if interrupted || self.steps.len() >= MAX_STEPS => None,
            (Some(g), None) => Some(g * 1.6),
            (None, Some(b)) => Some(b / 2.0).filter(|f| *f >= 1e-3),
            (Some(g), Some(b)) if b / g > 1.05 => Some((g + b) / 2.0),
            _ => None,
        };
        self.steps.last().expect("just pushed")
    }

    /// The search's outcome.
    pub fn result(self) -> FindMax {
        FindMax {
            max_clean_offered_pps: self.best.0,
            max_clean_forwarded_pps: self.best.1,
            steps: self.steps,
        }
    }
}

/// Runs a [`Ramp`] against `target` from `base`, each step lasting `step`.
pub fn find_max(
    rig: &mut Rig,
    target: &Target,
    base: &Load,
    step: Duration,
    opts: &RunOpts,
    mut on_step: impl FnMut(&Step),
) -> anyhow::Result<FindMax> {
    let opts = step_opts(step, opts);
    let mut ramp = Ramp::new();
    while let Some(f) = ramp.next_factor() {
        let r = rig.run(target.media, &[], &base.scaled(f), &opts, &Live::default())?;
        on_step(ramp.record(&r));
    }
    Ok(ramp.result())
}

/// The run options of one ramp step: `step` long, at most 0.5 s of warm-up.
pub fn step_opts(step: Duration, opts: &RunOpts) -> RunOpts {
    RunOpts {
        duration: step,
        warmup: opts.warmup.min(Duration::from_millis(500)),
        ..opts.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs a ramp from 20 000 pps against a forwarder that is clean up to `capacity`.
    fn search(capacity: f64) -> FindMax {
        let mut ramp = Ramp::new();
        while let Some(f) = ramp.next_factor() {
            let offered = 20_000.0 * f;
            let step = Step {
                offered_pps: offered,
                forwarded_pps: offered.min(capacity) * 4.0,
                loss_ratio: (1.0 - capacity / offered).max(0.0),
                p99_us: 0.0,
            };
            ramp.take(step, offered <= capacity, false);
        }
        ramp.result()
    }

    #[test]
    fn ramp_ends_within_five_percent_under_the_capacity() {
        for capacity in [7_000.0, 20_000.0, 66_000.0, 150_000.0] {
            let fm = search(capacity);
            assert!(fm.max_clean_offered_pps <= capacity, "{capacity}: {fm:?}");
            assert!(
                fm.max_clean_offered_pps >= capacity / 1.05,
                "{capacity}: {fm:?}"
            );
            assert_eq!(fm.max_clean_forwarded_pps, fm.max_clean_offered_pps * 4.0);
            assert!(fm.steps.len() <= MAX_STEPS);
        }
    }

    #[test]
    fn ramp_with_nothing_clean_reports_zero() {
        let fm = search(0.0);
        assert_eq!(fm.max_clean_offered_pps, 0.0);
        assert!(!fm.steps.is_empty());
    }
}
