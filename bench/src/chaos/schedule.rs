//! The soak's fault schedule, sans-IO: from a seed, which fault comes when and for how long.
//! The same seed gives the same schedule (the targets are picked by the run from `pick`, among
//! what exists at that moment).

use std::time::Duration;

/// A small seeded generator (SplitMix64): the schedule must not depend on a crate's version.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn bits(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `lo..hi` (`lo` when the range is empty).
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            return lo;
        }
        lo + self.bits() % (hi - lo)
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        (self.bits() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }
}

/// A fault the run injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// SIGKILL of a bridge (the run starts it again, same id, after `hold`).
    KillBridge,
    /// SIGSTOP of a bridge for `hold`, then SIGCONT.
    HangBridge,
    /// SIGTERM of a bridge: it drains and exits (the run starts it again once it has).
    DrainBridge,
    /// SIGKILL of a bridge and a new process with the same id and ports at once.
    RestartBridge,
    /// SIGKILL of the active control instance (started again after `hold`, as a standby).
    KillControl,
    /// SIGSTOP of etcd for `hold`, then SIGCONT.
    HangEtcd,
    /// SIGKILL of etcd, started again on its data after `hold`.
    RestartEtcd,
    /// Extra load for `hold`: the autoscaler scales up, then down once it ends.
    Surge,
    /// Packet loss on one bridge's traffic for `hold`.
    LossyLink,
    /// Observed, not injected: the autoscaler started a bridge (until it registered).
    ScaleUp,
    /// Observed, not injected: the autoscaler drained one of its bridges (until it is gone).
    ScaleDown,
}

impl Kind {
    /// Every kind, in a fixed order.
    pub const ALL: [Kind; 9] = [
        Kind::KillBridge,
        Kind::HangBridge,
        Kind::DrainBridge,
        Kind::RestartBridge,
        Kind::KillControl,
        Kind::HangEtcd,
        Kind::RestartEtcd,
        Kind::Surge,
        Kind::LossyLink,
    ];

    /// The kebab-case name.
    pub fn name(self) -> &'static str {
        match self {
            Kind::KillBridge => "kill-bridge",
            Kind::HangBridge => "hang-bridge",
            Kind::DrainBridge => "drain-bridge",
            Kind::RestartBridge => "restart-bridge",
            Kind::KillControl => "kill-control",
            Kind::HangEtcd => "hang-etcd",
            Kind::RestartEtcd => "restart-etcd",
            Kind::Surge => "surge",
            Kind::LossyLink => "lossy-link",
            Kind::ScaleUp => "scale-up",
            Kind::ScaleDown => "scale-down",
        }
    }

    /// Whether it acts on one bridge.
    pub fn on_bridge(self) -> bool {
        matches!(
            self,
            Kind::KillBridge
                | Kind::HangBridge
                | Kind::DrainBridge
                | Kind::RestartBridge
                | Kind::LossyLink
                | Kind::ScaleUp
                | Kind::ScaleDown
        )
    }

    /// How long it lasts (the hang, the time away, the surge, the loss).
    fn hold(self, rng: &mut Rng) -> Duration {
        let ms = match self {
            Kind::KillBridge => rng.range(3_000, 8_000),
            Kind::HangBridge => rng.range(3_000, 6_000),
            Kind::DrainBridge | Kind::RestartBridge => 0,
            Kind::KillControl => rng.range(2_000, 6_000),
            Kind::HangEtcd => rng.range(2_000, 6_000),
            Kind::RestartEtcd => rng.range(1_000, 4_000),
            Kind::Surge => rng.range(50_000, 70_000),
            Kind::LossyLink => rng.range(10_000, 20_000),
            Kind::ScaleUp | Kind::ScaleDown => 0,
        };
        Duration::from_millis(ms)
    }
}

/// One planned fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Planned {
    /// When, from the start of the run.
    pub at: Duration,
    /// What.
    pub kind: Kind,
    /// For how long.
    pub hold: Duration,
    /// Picks the target among the candidates at that moment (`pick % candidates`).
    pub pick: u64,
}

/// The schedule of a run of `total` from `seed`: nothing in the first `warmup`, then one fault
/// every 10 to 30 s (from one fault's end to the next's start), kinds in seeded rounds in which
/// every kind comes once; nothing starts later than `quiet` before the end (the run settles and
/// checks). A surge overlaps the faults after it (the fleet carries more load meanwhile); the
/// others come one at a time. A round has one of each kind, so surges never overlap.
pub fn plan(seed: u64, total: Duration, warmup: Duration, quiet: Duration) -> Vec<Planned> {
    let mut rng = Rng::new(seed);
    let mut out = Vec::new();
    let mut t = warmup;
    let mut round: Vec<Kind> = Vec::new();
    let end = total.saturating_sub(quiet);
    loop {
        if round.is_empty() {
            round = Kind::ALL.to_vec();
            // Fisher-Yates, seeded.
            for i in (1..round.len()).rev() {
                let j = rng.range(0, i as u64 + 1) as usize;
                round.swap(i, j);
            }
        }
        let kind = round.pop().unwrap();
        let hold = kind.hold(&mut rng);
        let pick = rng.bits();
        // A surge overlaps the faults after it (the fleet is under more load meanwhile); other
        // faults are one at a time.
        let lasts = if kind == Kind::Surge {
            Duration::ZERO
        } else {
            hold
        };
        if t + lasts > end {
            break;
        }
        out.push(Planned {
            at: t,
            kind,
            hold,
            pick,
        });
        t += lasts + Duration::from_millis(rng.range(10_000, 30_001));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_gives_one_schedule_and_every_kind_comes() {
        let total = Duration::from_secs(30 * 60);
        let (w, q) = (Duration::from_secs(60), Duration::from_secs(40));
        let a = plan(7, total, w, q);
        assert_eq!(a, plan(7, total, w, q));
        assert_ne!(a, plan(8, total, w, q));
        for k in Kind::ALL {
            assert!(a.iter().any(|p| p.kind == k), "{k:?} never comes");
        }
        assert!(a[0].at >= w);
        for p in &a {
            let lasts = if p.kind == Kind::Surge {
                Duration::ZERO
            } else {
                p.hold
            };
            assert!(p.at + lasts <= total - q, "{p:?} ends in the quiet tail");
        }
        // One every 10-30 s after the previous one's end.
        for w in a.windows(2) {
            let lasts = if w[0].kind == Kind::Surge {
                Duration::ZERO
            } else {
                w[0].hold
            };
            let between = w[1].at - (w[0].at + lasts);
            assert!(
                (Duration::from_secs(10)..=Duration::from_secs(30)).contains(&between),
                "{between:?}"
            );
        }
    }

    #[test]
    fn the_generator_is_spread() {
        let mut r = Rng::new(1);
        let mut hits = [0u32; 10];
        for _ in 0..10_000 {
            hits[r.range(0, 10) as usize] += 1;
        }
        assert!(hits.iter().all(|&h| (800..1200).contains(&h)), "{hits:?}");
        assert_eq!(r.range(5, 5), 5);
    }
}
