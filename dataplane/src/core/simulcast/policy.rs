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
//! within 2 s" needs. Up-switches wait for the estimate to exceed the next layer's rate by 10 %
//! for [`UP_HOLD_MS`], so a noisy estimate does not flap between layers.

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
/// When no layer fits, the lowest one is still sent while the estimate is at least this share
/// of its rate (permille): below that, no video.
pub const FLOOR_SHARE: u32 = 500;
/// How long the room must last before a step up.
pub const UP_HOLD_MS: u32 = 1_500;
/// After a step up the receiver's estimate needs time to follow what it now receives (a
/// receive-side estimator reports little more than that): for this long only a drop below the
/// layer it came from takes it down.
pub const PROBE_GRACE_MS: u32 = 5_000;
/// A step up that has to step down again within this long failed: the next waits twice as long.
pub const PROBE_FAIL_MS: u32 = 8_000;
/// The longest wait between steps up after failures.
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
/// layer at a time when the estimate has shown room above the current layer for a while (with
/// a wait that doubles after each step up that failed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Policy {
    /// The layer chosen (`None`: none fits; no video).
    pub target: Option<u8>,
    /// Since when the estimate has shown room for a step up (ms).
    up_since: Option<u32>,
    /// When the last step up was taken (ms), and from which layer.
    up_at: Option<u32>,
    up_from: u8,
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
        let share = |l: &Layer, permille: u32| {
            u64::from(l.bitrate) * u64::from(permille) / 1000 <= u64::from(estimate)
        };
        let fits = |l: &Layer| l.bitrate <= estimate;
        // The highest allowed layer at or below `top` that fits, else the lowest allowed one
        // while the estimate is not far below it.
        let best_below = |top: usize| {
            let below = &layers[..=top.min(layers.len().saturating_sub(1))];
            below
                .iter()
                .enumerate()
                .rev()
                .find(|(_, l)| allowed(l) && fits(l))
                .or_else(|| {
                    below
                        .iter()
                        .enumerate()
                        .find(|(_, l)| allowed(l) && share(l, FLOOR_SHARE))
                })
                .map(|(i, _)| i as u8)
        };
        if layers.is_empty() {
            self.target = None;
            return None;
        }
        let current = self
            .target
            .filter(|&t| layers.get(usize::from(t)).is_some_and(allowed));
        let probing = self
            .up_at
            .is_some_and(|at| now_ms.wrapping_sub(at) < PROBE_GRACE_MS);
        let keeps = |c: u8| {
            if probing {
                // The estimate has not caught up yet; losses tell at once.
                let cur = &layers[usize::from(c)];
                let lossy = est.loss_cap != 0
                    && u64::from(cur.bitrate) * u64::from(KEEP_SHARE) / 1000
                        > u64::from(est.loss_cap);
                !lossy
                    && layers
                        .get(usize::from(self.up_from))
                        .is_none_or(|l| share(l, KEEP_SHARE))
            } else {
                share(&layers[usize::from(c)], KEEP_SHARE)
            }
        };
        // A step up that held: the next one waits the usual time again.
        if current.is_some()
            && self
                .up_at
                .is_some_and(|at| now_ms.wrapping_sub(at) >= PROBE_FAIL_MS)
        {
            self.up_at = None;
            self.hold_ms = 0;
        }
        let next = match current {
            None => {
                self.up_since = None;
                best_below(layers.len() - 1)
            }
            Some(c) if !keeps(c) => {
                // Down, at once; a step up that ends so soon failed.
                self.up_since = None;
                if self
                    .up_at
                    .is_some_and(|at| now_ms.wrapping_sub(at) < PROBE_FAIL_MS)
                {
                    self.hold_ms = (self.hold().saturating_mul(2)).min(MAX_HOLD_MS);
                }
                self.up_at = None;
                best_below(usize::from(c))
            }
            Some(c) => {
                let up = layers
                    .iter()
                    .enumerate()
                    .skip(usize::from(c) + 1)
                    .find(|(_, l)| allowed(l))
                    .map(|(i, _)| i as u8);
                let cur = &layers[usize::from(c)];
                let room =
                    u64::from(cur.bitrate) * u64::from(UP_HEADROOM) / 1000 <= u64::from(estimate);
                match up {
                    Some(u) if room => {
                        let since = *self.up_since.get_or_insert(now_ms);
                        if now_ms.wrapping_sub(since) >= self.hold() {
                            self.up_since = None;
                            self.up_at = Some(now_ms);
                            self.up_from = c;
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
            p.choose(&layers(), 100_000, 0, 0),
            Some(0),
            "the lowest, not far off"
        );
        let mut p = Policy::default();
        assert_eq!(p.choose(&layers(), 70_000, 0, 0), None, "nothing fits");
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
    }

    #[test]
    fn down_at_once_up_one_step_after_room_held_and_failed_steps_back_off() {
        let mut p = Policy::default();
        assert_eq!(p.choose(&layers(), 3_000_000, 0, 0), Some(2));
        assert_eq!(
            p.choose(&layers(), 300_000, 0, 1_000),
            Some(0),
            "down at once"
        );
        // A receive-side estimate: a little above what it gets (the low layer, 150 kbit/s).
        assert_eq!(p.choose(&layers(), 200_000, 0, 2_000), Some(0));
        let up = 2_000 + UP_HOLD_MS;
        assert_eq!(p.choose(&layers(), 200_000, 0, up), Some(1), "probe up");
        // The middle layer does not fit (the link is 300 kbit/s): the estimate stays near what
        // the receiver gets. After the grace, down, and the next probe waits twice as long.
        assert_eq!(
            p.choose(&layers(), 280_000, 0, up + 500),
            Some(1),
            "given time to show"
        );
        let down = up + PROBE_GRACE_MS;
        assert_eq!(p.choose(&layers(), 280_000, 0, down), Some(0));
        assert_eq!(p.choose(&layers(), 200_000, 0, down + 1), Some(0));
        assert_eq!(
            p.choose(&layers(), 200_000, 0, down + 1 + UP_HOLD_MS),
            Some(0)
        );
        assert_eq!(
            p.choose(&layers(), 200_000, 0, down + 1 + 2 * UP_HOLD_MS),
            Some(1)
        );
        // But a real drop below where it came from takes it down during the grace too.
        assert_eq!(
            p.choose(&layers(), 60_000, 0, down + 10 + 2 * UP_HOLD_MS),
            None
        );
        // The receiver's limit is lifted while on the top it may have: up a step at a time.
        let mut p = Policy::default();
        assert_eq!(p.choose(&layers(), 250_000, 180, 0), Some(0));
        assert_eq!(p.choose(&layers(), 250_000, 0, 100), Some(0));
        assert_eq!(p.choose(&layers(), 250_000, 0, 100 + UP_HOLD_MS), Some(1));
        assert_eq!(p.choose(&layers(), 700_000, 0, 2_000), Some(1));
        assert_eq!(p.choose(&layers(), 700_000, 0, 2_000 + UP_HOLD_MS), Some(2));
    }

    /// A trace of a receiver's REMBs around a bandwidth drop (libwebrtc's receive-side
    /// estimator: at most 1.5 times what it receives, a REMB every second and at once on a
    /// drop): the target follows within the 2 s the issue allows, settles on what fits, and
    /// climbs back a layer at a time when the limit is lifted.
    #[test]
    fn an_estimate_trace_steps_down_within_two_seconds_and_back_up() {
        // (ms, REMB, loss cap from the receiver reports).
        let trace: [(u32, u32, u32); 17] = [
            (0, 2_200_000, 0),
            (1_000, 2_250_000, 0),
            // Link limited to 300 kbit/s at t = 2 000.
            (2_500, 900_000, 0),
            (3_000, 280_000, 0),
            (4_000, 210_000, 0),
            (5_000, 215_000, 0),
            (6_000, 215_000, 0),
            // The step up to the middle layer overflows the link: its reports say 40 % lost.
            (7_000, 290_000, 380_000),
            (8_000, 215_000, 0),
            // Lifted at t = 10 000: the estimate grows with what it receives.
            (10_000, 220_000, 0),
            (11_000, 230_000, 0),
            (12_000, 700_000, 0),
            (13_000, 740_000, 0),
            (14_000, 2_200_000, 0),
            (16_000, 2_300_000, 0),
            (17_000, 2_300_000, 0),
            (18_000, 2_300_000, 0),
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
        // While limited it tries the middle layer once (room above the low one), fails, and
        // waits twice as long before the next try.
        assert_eq!(at(6_000), Some(1), "a step up");
        assert_eq!(at(7_000), Some(0), "losses say it does not fit");
        assert_eq!(at(8_000), Some(0), "settled");
        assert_eq!(at(10_000), Some(0), "the next try waits longer");
        assert_eq!(at(11_000), Some(1), "climbing back");
        assert_eq!(at(14_000), Some(1), "one step at a time");
        assert_eq!(at(16_000), Some(2));
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
