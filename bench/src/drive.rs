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

/// Ramps the offered load from `base` (x1.6 per clean step), then bisects between the last
/// clean and the first unclean rate until they are within 5%. Each step lasts `step`.
pub fn find_max(
    rig: &mut Rig,
    target: &Target,
    base: &Load,
    step: Duration,
    opts: &RunOpts,
    mut on_step: impl FnMut(&Step),
) -> anyhow::Result<FindMax> {
    let opts = RunOpts {
        duration: step,
        warmup: opts.warmup.min(Duration::from_millis(500)),
        ..opts.clone()
    };
    let (mut good, mut bad): (Option<f64>, Option<f64>) = (None, None);
    let mut f = 1.0;
    let mut steps = Vec::new();
    let mut best = (0.0, 0.0);
    for _ in 0..MAX_STEPS {
        let load = base.scaled(f);
        let r = rig.run(target.media, &[], &load, &opts, &Live::default())?;
        let s = Step {
            offered_pps: r.offered_pps,
            forwarded_pps: r.forwarded_pps(),
            loss_ratio: r.loss_ratio(),
            p99_us: if r.latency_ns.is_empty() {
                0.0
            } else {
                r.latency_ns.value_at_quantile(0.99) as f64 / 1000.0
            },
        };
        on_step(&s);
        steps.push(s);
        if r.interrupted {
            break;
        }
        if clean(&r) {
            good = Some(f);
            if r.offered_pps > best.0 {
                best = (r.offered_pps, r.forwarded_pps());
            }
        } else {
            bad = Some(f);
        }
        f = match (good, bad) {
            (Some(g), None) => g * 1.6,
            (None, Some(b)) => b / 2.0,
            (Some(g), Some(b)) if b / g > 1.05 => (g + b) / 2.0,
            _ => break,
        };
        if f < 1e-3 {
            break;
        }
    }
    Ok(FindMax {
        max_clean_offered_pps: best.0,
        max_clean_forwarded_pps: best.1,
        steps,
    })
}
