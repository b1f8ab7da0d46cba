//! The layer choice replayed on feedback recorded from a real receiver (Chromium behind a
//! shaped link, `traces/`): the estimate it builds from the REMBs and receiver reports and
//! the policy's targets, in the recording's time.

use super::group::SimReceive;
use super::policy::{Layer, Policy};

/// The layers of the recorded run, as the bridge measured them (Chromium's q, h, f).
fn layers() -> [Layer; 3] {
    let layer = |bitrate, height| Layer {
        bitrate,
        height,
        active: true,
    };
    [
        layer(165_000, 180),
        layer(530_000, 360),
        layer(1_500_000, 720),
    ]
}

/// What a replay gave: the targets over time, and when the link was shaped and lifted.
struct Replay {
    targets: Vec<(u32, Option<u8>)>,
    shaped: Vec<u32>,
    lifted: Vec<u32>,
}

impl Replay {
    fn of(trace: &str) -> Self {
        let layers = layers();
        let sim = SimReceive::new(1, 5, 0, 0);
        let mut policy = Policy::default();
        let mut r = Replay {
            targets: vec![(0, None)],
            shaped: Vec::new(),
            lifted: Vec::new(),
        };
        for line in trace
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            let f: Vec<&str> = line.split_whitespace().collect();
            let t: u32 = f[0].parse().unwrap();
            let sent = r.at(t).map_or(0, |l| layers[usize::from(l)].bitrate);
            match f[1] {
                "remb" => sim.on_remb(f[2].parse().unwrap()),
                "rr" => sim.on_report(f[2].parse().unwrap(), f[3].parse().unwrap(), sent, t),
                "shape" => r.shaped.push(t),
                "lift" => r.lifted.push(t),
                other => panic!("unknown event {other:?}"),
            }
            let next = policy.choose_with(&layers, sim.estimate(t), 0, t);
            if next != r.at(t) {
                sim.switched(t);
                r.targets.push((t, next));
            }
        }
        r
    }

    /// The target at `t`.
    fn at(&self, t: u32) -> Option<u8> {
        self.targets
            .iter()
            .rev()
            .find(|(x, _)| *x <= t)
            .and_then(|(_, l)| *l)
    }
}

#[test]
fn chromium_behind_a_300_kbit_link_steps_down_within_2_s_stays_and_climbs_back() {
    let r = Replay::of(include_str!("traces/chromium_tbf_300k.txt"));
    assert_eq!(r.shaped.len(), 2);
    assert_eq!(r.lifted.len(), 2);
    for (i, (&shaped, &lifted)) in r.shaped.iter().zip(&r.lifted).enumerate() {
        assert_eq!(r.at(shaped), Some(2), "cycle {i}: the top layer before");
        // On the layer that fits within 2 s, and on it until the limit was lifted.
        assert_eq!(r.at(shaped + 2_000), Some(0), "cycle {i}: {:?}", r.targets);
        assert!(
            r.targets
                .iter()
                .filter(|(t, _)| (shaped + 2_000..lifted).contains(t))
                .all(|(_, l)| *l == Some(0)),
            "cycle {i}: left the layer that fits: {:?}",
            r.targets
        );
        // Back on the top layer before the next cycle (or the end of the recording).
        let next = r.shaped.get(i + 1).copied().unwrap_or(u32::MAX);
        assert!(
            r.targets
                .iter()
                .any(|(t, l)| (lifted..next).contains(t) && *l == Some(2)),
            "cycle {i}: did not climb back: {:?}",
            r.targets
        );
    }
}
