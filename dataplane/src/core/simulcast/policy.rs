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

/// A down-switch happens as soon as the current layer does not fit; an up-switch only when the
/// higher one has fitted (with [`UP_HEADROOM`]) for this long.
pub const UP_HOLD_MS: u32 = 1_500;
/// An up-switch needs the estimate at least this much above the layer's rate (permille).
pub const UP_HEADROOM: u32 = 1_100;

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

/// A receiver's layer choice, with the hysteresis of up-switches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Policy {
    /// The layer chosen (`None`: none fits; no video).
    pub target: Option<u8>,
    /// Since when a higher layer than `target` has fitted (ms).
    up_since: Option<u32>,
}

impl Policy {
    /// Chooses among `layers` (lowest first) for `estimate` bits/s and a receiver limit of
    /// `max_height` pixels (0: none) at `now_ms`. Returns the new target.
    pub fn choose(
        &mut self,
        layers: &[Layer],
        estimate: u32,
        max_height: u16,
        now_ms: u32,
    ) -> Option<u8> {
        let allowed = |l: &Layer| l.active && (max_height == 0 || l.height <= max_height);
        let fits = |l: &Layer, headroom: u32| {
            u64::from(l.bitrate) * u64::from(headroom) / 1000 <= u64::from(estimate)
        };
        // The best layer that fits now, and the best that fits with headroom.
        let best = |headroom| {
            layers
                .iter()
                .enumerate()
                .filter(|(_, l)| allowed(l) && fits(l, headroom))
                .map(|(i, _)| i as u8)
                .next_back()
        };
        let now_fit = best(1000);
        let with_room = best(UP_HEADROOM);
        let lowest = layers.iter().position(allowed).map(|i| i as u8);
        let current = self
            .target
            .filter(|&t| layers.get(usize::from(t)).is_some_and(allowed));
        let next = match (current, now_fit) {
            // Nothing fits: the lowest if it does not exceed the estimate either, else none.
            (_, None) => None.or(lowest.filter(|&l| fits(&layers[usize::from(l)], 1000))),
            (None, Some(_)) => with_room.or(now_fit),
            (Some(c), Some(f)) if f < c => Some(f),
            (Some(c), Some(_)) => match with_room {
                Some(up) if up > c => {
                    let since = *self.up_since.get_or_insert(now_ms);
                    if now_ms.wrapping_sub(since) >= UP_HOLD_MS {
                        Some(up)
                    } else {
                        Some(c)
                    }
                }
                _ => Some(c),
            },
        };
        if next.is_none_or(|n| Some(n) != current || with_room.is_none_or(|u| u <= n)) {
            self.up_since = None;
        }
        if next != self.target {
            self.up_since = None;
        }
        self.target = next;
        next
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
                bitrate: 1_700_000,
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
        assert_eq!(p.choose(&layers(), 100_000, 0, 0), None, "nothing fits");
    }

    #[test]
    fn down_at_once_up_after_the_hold_and_a_missing_layer_is_skipped() {
        let mut p = Policy::default();
        assert_eq!(p.choose(&layers(), 3_000_000, 0, 0), Some(2));
        // The link drops to 300 kbit/s: down to the low layer on the first estimate.
        assert_eq!(p.choose(&layers(), 300_000, 0, 1_000), Some(0));
        // It recovers: up only once the estimate has held for UP_HOLD_MS.
        assert_eq!(p.choose(&layers(), 3_000_000, 0, 5_000), Some(0));
        assert_eq!(
            p.choose(&layers(), 3_000_000, 0, 5_000 + UP_HOLD_MS - 1),
            Some(0)
        );
        assert_eq!(
            p.choose(&layers(), 3_000_000, 0, 5_000 + UP_HOLD_MS),
            Some(2)
        );
        // A dip in between restarts the hold.
        let mut p = Policy::default();
        p.choose(&layers(), 300_000, 0, 0);
        p.choose(&layers(), 3_000_000, 0, 100);
        p.choose(&layers(), 200_000, 0, 900);
        assert_eq!(p.choose(&layers(), 3_000_000, 0, 1_700), Some(0));
        // The publisher stops sending its top layer: the next one down.
        let mut l = layers();
        l[2].active = false;
        let mut p = Policy::default();
        assert_eq!(p.choose(&l, 3_000_000, 0, 0), Some(1));
    }

    /// A trace of a receiver's feedback around a bandwidth drop (REMB every second, at once on a
    /// drop, as libwebrtc sends it; rates as a 300 kbit/s shaper makes them): the target
    /// follows within the 2 s the issue allows, and comes back after the hold.
    #[test]
    fn an_estimate_trace_steps_down_within_two_seconds_and_back_up() {
        let trace: [(u32, u32); 10] = [
            (0, 2_500_000),
            (1_000, 2_600_000),
            (2_000, 2_550_000),
            // Link limited to 300 kbit/s at t = 2 500: libwebrtc's estimate falls over ~1 s.
            (2_700, 1_200_000),
            (3_200, 280_000),
            (4_200, 270_000),
            // Limit lifted at t = 6 000: the estimate climbs (+8 %/s multiplicative, then jumps).
            (6_500, 600_000),
            (7_500, 2_000_000),
            (8_500, 2_400_000),
            (10_500, 2_500_000),
        ];
        let mut p = Policy::default();
        let mut got = Vec::new();
        for (t, remb) in trace {
            let e = Estimate { remb, loss_cap: 0 };
            got.push((t, p.choose(&layers(), e.bps(), 0, t)));
        }
        let at = |t| got.iter().find(|(x, _)| *x == t).unwrap().1;
        assert_eq!(at(2_000), Some(2));
        assert_eq!(at(2_700), Some(1));
        assert_eq!(
            at(3_200),
            Some(0),
            "down to the layer that fits within 1 s of the drop"
        );
        assert_eq!(at(6_500), Some(0), "not up before the hold");
        assert_eq!(at(7_500), Some(0), "1 s of room: not yet");
        assert_eq!(
            at(8_500),
            Some(2),
            "room held for 1.5 s: up to the best that fits"
        );
        assert_eq!(at(10_500), Some(2));
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
