//! Which layer a receiver gets: the highest encoding that fits its bandwidth estimate and its
//! own limit (a maximum frame height), among the layers the publisher is sending. Sans-IO.
//!
//! The estimate is the receiver's own: its REMB (the receive-side delay-based estimator of
//! Google's congestion control, which libwebrtc runs in every browser receiving with
//! `goog-remb` and abs-send-time), capped by a loss-based bound from its receiver reports (as
//! GCC's loss-based controller: above 10 % loss the rate is cut by half the loss fraction). We
//! do not run a sender-side estimator (TWCC): the browser's receive side already measures the
//! path delay gradient per packet, and REMB reaches us every ~1 s or at once on a drop (Chrome
//! sends one immediately when its estimate falls by 3 % or more), which is what "step down
//! within 2 s" needs. Up-switches wait for the estimate to exceed the current layer's rate by
//! 10 % for [`UP_HOLD_MS`], so a noisy estimate does not flap between layers, and are probes
//! until the estimate has caught up with the new layer ([`PROBE_MAX_MS`]).

/// What the policy knows of one layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Layer {
    /// Measured rate, bits/s (0: not measured yet).
    pub bitrate: u32,
    /// Frame height from its last keyframe (0: unknown).
    pub height: u16,
    /// The publisher sent it lately.
    pub active: bool,
}

/// An up-switch needs the estimate this far above the current layer's rate (permille) for
/// [`UP_HOLD_MS`]: a receive-side estimator reports little more than what it receives (at most
/// 1.5 times), so room above the current rate is the sign that a higher layer may fit.
pub const UP_HEADROOM: u32 = 1_100;
/// The current layer is kept while the estimate is at least this share of its rate
/// (permille): layers' measured rates swing with keyframes, and a receive-side estimate sits
/// close to what it receives, so a strict bound would flap.
pub const KEEP_SHARE: u32 = 850;
/// How long the room must last before a step up.
pub const UP_HOLD_MS: u32 = 1_500;
/// A step up is a probe until the estimate has caught up with the new layer (a receive-side
/// estimate grows about 8 % a second towards 1.5 times what arrives: from the room that
/// started it to the next layer's rate takes some 10 s). Meanwhile the layer is kept unless
/// the receiver says it does not fit: losses, or its estimate falling below where it was at
/// the step. A probe not confirmed within this long failed.
pub const PROBE_MAX_MS: u32 = 20_000;
/// A step up is confirmed when the estimate reaches the new layer's whole rate (kept from then
/// on down to [`KEEP_SHARE`] of it: hysteresis).
pub const CONFIRM_SHARE: u32 = 1_000;
/// A step down within this long of the step up it undoes means the step failed: the next waits
/// twice as long. A step up that lasts this long resets the wait.
pub const PROBE_FAIL_MS: u32 = 8_000;
/// After a step down, no step up for this long: the receiver's estimate lags, and the queue
/// that built up on its link is still draining.
pub const DOWN_QUIET_MS: u32 = 8_000;
/// The longest wait between steps up after failures (each failure doubles the wait).
pub const MAX_HOLD_MS: u32 = 30_000;

/// A receiver's bandwidth estimate from its feedback.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Estimate {
    /// Its last REMB, bits/s (0: none yet).
    pub remb: u32,
    /// Loss-based cap, bits/s (0: none).
    pub loss_cap: u32,
}

impl Estimate {
    /// The estimate in force: the REMB, capped by losses (`u32::MAX`: no feedback yet).
    pub fn bps(&self) -> u32 {
        let remb = if self.remb == 0 { u32::MAX } else { self.remb };
        if self.loss_cap == 0 {
            remb
        } else {
            remb.min(self.loss_cap)
        }
    }

    /// A receiver report said `fraction_lost` (of 256) of what was sent to it at `sent_bps`
    /// was lost: above 10 % the cap falls to `sent * (1 - loss/2)`, below 2 % it goes.
    pub fn on_loss(&mut self, fraction_lost: u8, sent_bps: u32) {
        let loss = u32::from(fraction_lost);
        if loss > 26 {
            self.loss_cap = (u64::from(sent_bps) * u64::from(512 - loss) / 512) as u32;
        } else if loss < 5 {
            self.loss_cap = 0;
        }
    }
}

/// A receiver's layer choice: down at once when its layer does not fit its estimate, up one
/// layer at a time when the estimate has shown room above the current layer for a while, as a
/// probe (see [`PROBE_MAX_MS`]); a failed probe doubles the wait before the next. When no
/// layer fits, the lowest one is still sent: a receive-side estimate measures only what
/// arrives (and dips below the lowest layer's mean rate when a keyframe's burst queues up), so
/// a receiver sent nothing could never show that its link recovered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Policy {
    /// The layer chosen (`None`: none allowed).
    pub target: Option<u8>,
    /// Since when the estimate has shown room for a step up (ms).
    up_since: Option<u32>,
    /// The probe under way (not yet confirmed): when the step up was taken (ms) and the
    /// estimate then.
    probe: Option<(u32, u32)>,
    /// When the last step up was taken (ms), until it lasted [`PROBE_FAIL_MS`].
    up_at: Option<u32>,
    /// When the last step down was taken (ms).
    down_at: Option<u32>,
    /// The wait before a step up, after failures (0: [`UP_HOLD_MS`]).
    hold_ms: u32,
}

impl Policy {
    /// Chooses among `layers` (lowest first) for an estimate of `estimate` bits/s (a REMB, no
    /// loss report) and a receiver limit of `max_height` pixels (0: none) at `now_ms`.
    pub fn choose(
        &mut self,
        layers: &[Layer],
        estimate: u32,
        max_height: u16,
        now_ms: u32,
    ) -> Option<u8> {
        let e = Estimate {
            remb: estimate,
            loss_cap: 0,
        };
        self.choose_with(layers, e, max_height, now_ms)
    }

    /// Whether a step up is being probed at `now_ms`.
    pub fn probing(&self, now_ms: u32) -> bool {
        self.probe
            .is_some_and(|(at, _)| now_ms.wrapping_sub(at) < PROBE_MAX_MS)
    }

    /// Chooses among `layers` (lowest first) for estimate `est` and a receiver limit of
    /// `max_height` pixels (0: none) at `now_ms`. Returns the new target.
    pub fn choose_with(
        &mut self,
        layers: &[Layer],
        est: Estimate,
        max_height: u16,
        now_ms: u32,
    ) -> Option<u8> {
        let estimate = est.bps();
        let allowed = |l: &Layer| l.active && (max_height == 0 || l.height <= max_height);
        let share = |bps: u32, permille: u32| {
            u64::from(bps) * u64::from(permille) / 1000 <= u64::from(estimate)
        };
        // The highest allowed layer at or below `top` that fits, else the lowest allowed one.
        let best_below = |top: usize| {
            let below = &layers[..=top.min(layers.len().saturating_sub(1))];
            below
                .iter()
                .enumerate()
                .rev()
                .find(|(_, l)| allowed(l) && l.bitrate <= estimate)
                .or_else(|| below.iter().enumerate().find(|(_, l)| allowed(l)))
                .map(|(i, _)| i as u8)
        };
        if layers.is_empty() {
            self.target = None;
            return None;
        }
        // A step up that lasted (and was confirmed): the next waits the usual time again.
        if self.probe.is_none()
            && self
                .up_at
                .is_some_and(|at| now_ms.wrapping_sub(at) >= PROBE_FAIL_MS)
        {
            self.up_at = None;
            self.hold_ms = 0;
        }
        let current = self
            .target
            .filter(|&t| layers.get(usize::from(t)).is_some_and(allowed));
        let next = match current {
            None => {
                self.up_since = None;
                self.probe = None;
                best_below(layers.len() - 1)
            }
            Some(c) => {
                let cur = &layers[usize::from(c)];
                if share(cur.bitrate, CONFIRM_SHARE) {
                    // The estimate caught up with the layer: no longer a probe.
                    self.probe = None;
                }
                let keeps = match self.probe.filter(|_| self.probing(now_ms)) {
                    // Under way: kept unless the receiver says it does not fit.
                    Some((_, from)) => {
                        let lossy = est.loss_cap != 0
                            && u64::from(cur.bitrate) * u64::from(KEEP_SHARE) / 1000
                                > u64::from(est.loss_cap);
                        !lossy && share(from, KEEP_SHARE)
                    }
                    None => share(cur.bitrate, KEEP_SHARE),
                };
                if !keeps {
                    // Down, at once; soon after a step up, that step failed.
                    self.up_since = None;
                    self.probe = None;
                    self.down_at = Some(now_ms);
                    if self.up_at.take().is_some() {
                        self.hold_ms = self.hold().saturating_mul(2).min(MAX_HOLD_MS);
                    }
                    best_below(usize::from(c))
                } else {
                    let up = layers
                        .iter()
                        .enumerate()
                        .skip(usize::from(c) + 1)
                        .find(|(_, l)| allowed(l))
                        .map(|(i, _)| i as u8);
                    // Not while a probe is under way, nor soon after a step down.
                    let quiet = self
                        .down_at
                        .is_none_or(|d| now_ms.wrapping_sub(d) >= DOWN_QUIET_MS);
                    let room = share(cur.bitrate, UP_HEADROOM) && self.probe.is_none() && quiet;
                    match up {
                        Some(u) if room => {
                            let since = *self.up_since.get_or_insert(now_ms);
                            if now_ms.wrapping_sub(since) >= self.hold() {
                                self.up_since = None;
                                self.probe = Some((now_ms, estimate));
                                self.up_at = Some(now_ms);
                                Some(u)
                            } else {
                                Some(c)
                            }
                        }
                        _ => {
                            self.up_since = None;
                            Some(c)
                        }
                    }
                }
            }
        };
        self.target = next;
        next
    }

    fn hold(&self) -> u32 {
        if self.hold_ms == 0 {
            UP_HOLD_MS
        } else {
            self.hold_ms
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layers() -> [Layer; 3] {
        [
            Layer {
                bitrate: 150_000,
                height: 180,
                active: true,
            },
            Layer {
                bitrate: 500_000,
                height: 360,
                active: true,
            },
            Layer {
                bitrate: 1_500_000,
                height: 720,
                active: true,
            },
        ]
    }

    #[test]
    fn the_highest_layer_that_fits_and_the_receivers_limit() {
        let mut p = Policy::default();
        assert_eq!(
            p.choose(&layers(), u32::MAX, 0, 0),
            Some(2),
            "no feedback yet"
        );
        let mut p = Policy::default();
        assert_eq!(p.choose(&layers(), 800_000, 0, 0), Some(1));
        let mut p = Policy::default();
        assert_eq!(
            p.choose(&layers(), 10_000_000, 180, 0),
            Some(0),
            "limited to 320x180"
        );
        let mut p = Policy::default();
        assert_eq!(
            p.choose(&layers(), 40_000, 0, 0),
            Some(0),
            "nothing fits: still the lowest"
        );
        // The current layer is kept within the band below its rate (keyframes swing it).
        let mut p = Policy::default();
        assert_eq!(p.choose(&layers(), 1_600_000, 0, 0), Some(2));
        assert_eq!(p.choose(&layers(), 1_300_000, 0, 10), Some(2));
        assert_eq!(p.choose(&layers(), 1_200_000, 0, 20), Some(1));
        // The publisher stops sending its top layer: the next one down.
        let mut l = layers();
        l[2].active = false;
        let mut p = Policy::default();
        assert_eq!(p.choose(&l, 3_000_000, 0, 0), Some(1));
        // No layer allowed at all: none.
        assert_eq!(p.choose(&l, 3_000_000, 100, 10), None);
    }

    #[test]
    fn down_at_once_up_as_a_probe_that_holds_until_the_estimate_catches_up() {
        let mut p = Policy::default();
        assert_eq!(p.choose(&layers(), 3_000_000, 0, 0), Some(2));
        assert_eq!(
            p.choose(&layers(), 300_000, 0, 1_000),
            Some(0),
            "down at once"
        );
        // A receive-side estimate: a little above what it gets (the low layer, 150 kbit/s).
        // Quiet after the step down, then the room must last the hold.
        assert_eq!(p.choose(&layers(), 200_000, 0, 2_000), Some(0));
        let quiet = 1_000 + DOWN_QUIET_MS;
        assert_eq!(p.choose(&layers(), 200_000, 0, quiet - 1), Some(0));
        assert_eq!(p.choose(&layers(), 200_000, 0, quiet), Some(0));
        let up = quiet + UP_HOLD_MS;
        assert_eq!(p.choose(&layers(), 200_000, 0, up - 1), Some(0));
        assert_eq!(p.choose(&layers(), 200_000, 0, up), Some(1), "probe up");
        assert!(p.probing(up));
        // The estimate grows with what arrives, slowly: the probe holds meanwhile.
        assert_eq!(p.choose(&layers(), 250_000, 0, up + 1_000), Some(1));
        assert_eq!(p.choose(&layers(), 330_000, 0, up + 4_000), Some(1));
        assert_eq!(p.choose(&layers(), 430_000, 0, up + 8_000), Some(1));
        assert!(p.probing(up + 8_000), "not yet at the layer's rate");
        // Caught up with the middle layer's rate: no longer a probe.
        assert_eq!(p.choose(&layers(), 510_000, 0, up + 9_000), Some(1));
        assert!(!p.probing(up + 9_000));
        // Kept down to 85 % of it (hysteresis), then a drop takes it down at once, and the
        // step up, which had lasted, does not lengthen the next wait.
        assert_eq!(p.choose(&layers(), 430_000, 0, up + 9_500), Some(1));
        assert_eq!(p.choose(&layers(), 300_000, 0, up + 10_000), Some(0));
        assert_eq!(p.hold(), UP_HOLD_MS);
    }

    #[test]
    fn a_probe_fails_on_losses_a_falling_estimate_or_time_and_the_next_waits_longer() {
        // Up from the low layer at 200 kbit/s (the probe's reference), at `t` or later.
        let probe_from_low = |p: &mut Policy, t: u32| {
            assert_eq!(p.choose(&layers(), 200_000, 0, t), Some(0));
            let up = t + p.hold();
            assert_eq!(p.choose(&layers(), 200_000, 0, up), Some(1), "probe up");
            up
        };
        let mut p = Policy::default();
        assert_eq!(p.choose(&layers(), 160_000, 0, 0), Some(0));
        // The estimate falls below 85 % of where it was: down, and the wait doubles.
        let up = probe_from_low(&mut p, 1_000);
        assert_eq!(p.choose(&layers(), 160_000, 0, up + 500), Some(0));
        assert_eq!(p.hold(), 2 * UP_HOLD_MS);
        // Losses (the receiver's reports cap the estimate below the layer): down.
        let up = probe_from_low(&mut p, up + 500 + DOWN_QUIET_MS);
        let lossy = Estimate {
            remb: 210_000,
            loss_cap: 300_000,
        };
        assert_eq!(p.choose_with(&layers(), lossy, 0, up + 2_500), Some(0));
        assert_eq!(p.hold(), 4 * UP_HOLD_MS);
        // An estimate that never catches up: down when the probe's time is over.
        let up = probe_from_low(&mut p, up + 2_500 + DOWN_QUIET_MS);
        assert_eq!(
            p.choose(&layers(), 220_000, 0, up + PROBE_MAX_MS - 1),
            Some(1)
        );
        assert_eq!(p.choose(&layers(), 220_000, 0, up + PROBE_MAX_MS), Some(0));
        assert_eq!(p.hold(), 8 * UP_HOLD_MS);
        // At most MAX_HOLD_MS.
        let mut t = up + PROBE_MAX_MS;
        for _ in 0..4 {
            let up = probe_from_low(&mut p, t + DOWN_QUIET_MS);
            assert_eq!(p.choose(&layers(), 100_000, 0, up + 1), Some(0));
            t = up + 1;
        }
        assert_eq!(p.hold(), MAX_HOLD_MS);
        // The receiver's limit is lifted while on the top it may have: up a step at a time.
        let mut p = Policy::default();
        assert_eq!(p.choose(&layers(), 250_000, 180, 0), Some(0));
        assert_eq!(p.choose(&layers(), 250_000, 0, 100), Some(0));
        assert_eq!(p.choose(&layers(), 250_000, 0, 100 + UP_HOLD_MS), Some(1));
        assert_eq!(p.choose(&layers(), 700_000, 0, 2_000), Some(1));
        assert_eq!(p.choose(&layers(), 700_000, 0, 2_000 + UP_HOLD_MS), Some(2));
    }

    /// A trace of a receiver's REMBs around a bandwidth drop (libwebrtc's receive-side
    /// estimator: at most 1.5 times what it receives, growing some 8 % a second): the target
    /// follows within the 2 s the issue allows, settles on what fits, tries a step up once
    /// the link has drained and backs off when it fails, and climbs back a layer at a time
    /// when the limit is lifted.
    #[test]
    fn an_estimate_trace_steps_down_within_two_seconds_and_back_up() {
        // (ms, REMB, loss cap from the receiver reports).
        let trace: [(u32, u32, u32); 20] = [
            (0, 2_200_000, 0),
            (1_000, 2_250_000, 0),
            // Link limited to 300 kbit/s at t = 2 000.
            (2_500, 900_000, 0),
            (3_000, 280_000, 0),
            (4_000, 210_000, 0),
            (11_000, 215_000, 0),
            (12_500, 215_000, 0),
            // The step up to the middle layer overflows the link: its reports say 40 % lost.
            (13_500, 290_000, 380_000),
            (14_500, 215_000, 0),
            // Lifted at t = 15 000: the estimate grows with what it receives.
            (16_000, 220_000, 0),
            (21_500, 230_000, 0),
            (23_000, 235_000, 0),
            (24_500, 240_000, 0),
            (25_500, 400_000, 0),
            (27_000, 700_000, 0),
            (28_500, 740_000, 0),
            (30_000, 1_200_000, 0),
            (32_000, 2_300_000, 0),
            (36_000, 2_300_000, 0),
            (40_000, 2_300_000, 0),
        ];
        let mut p = Policy::default();
        let mut got = Vec::new();
        for (t, remb, loss_cap) in trace {
            got.push((
                t,
                p.choose_with(&layers(), Estimate { remb, loss_cap }, 0, t),
            ));
        }
        let at = |t| got.iter().find(|(x, _)| *x == t).unwrap().1;
        assert_eq!(at(1_000), Some(2));
        assert_eq!(at(2_500), Some(1), "down within 0.5 s of the drop");
        assert_eq!(at(3_000), Some(0), "on the layer that fits within 1 s");
        assert_eq!(at(11_000), Some(0), "quiet after the step down");
        assert_eq!(at(12_500), Some(1), "a step up");
        assert_eq!(at(13_500), Some(0), "losses say it does not fit");
        assert_eq!(
            at(21_500),
            Some(0),
            "quiet again, and the next try waits longer"
        );
        assert_eq!(at(23_000), Some(0));
        assert_eq!(at(24_500), Some(1), "climbing back");
        assert_eq!(at(27_000), Some(1), "one step at a time");
        assert_eq!(at(28_500), Some(1), "the wait is still doubled");
        assert_eq!(at(30_000), Some(2));
        assert_eq!(at(40_000), Some(2));
    }

    #[test]
    fn losses_cap_the_estimate() {
        let mut e = Estimate {
            remb: 2_000_000,
            loss_cap: 0,
        };
        e.on_loss(64, 1_000_000); // 25 %
        assert_eq!(e.bps(), 1_000_000 * (512 - 64) / 512);
        e.on_loss(2, 1_000_000);
        assert_eq!(e.bps(), 2_000_000);
        assert_eq!(Estimate::default().bps(), u32::MAX);
    }
}
