//! The soak's checker, sans-IO: every packet a receiver gets, with the time it got it (ms since
//! the run started), is checked against what the run knows (who is in which conference, who
//! left when). *Never* findings are kept one by one; holes in a sender's numbering at a
//! receiver become gaps, attributed to faults by the run.

use std::collections::HashMap;

/// What every soak payload carries after the RTP header.
pub const MAGIC: &[u8; 4] = b"RBCH";
/// Bytes of [`Stamp`] in a payload.
pub const STAMP_LEN: usize = 24;

/// The numbering of one packet: conference, sender and the sender's counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// Conference index.
    pub conf: u32,
    /// Sender (its SSRC).
    pub sender: u32,
    /// The sender's packet counter, from 0.
    pub counter: u64,
    /// When it was sent, ms since the run started.
    pub sent_ms: u32,
}

impl Stamp {
    /// Writes the stamp into `out` (at least [`STAMP_LEN`] bytes).
    pub fn write(&self, out: &mut [u8]) {
        out[..4].copy_from_slice(MAGIC);
        out[4..8].copy_from_slice(&self.conf.to_be_bytes());
        out[8..12].copy_from_slice(&self.sender.to_be_bytes());
        out[12..20].copy_from_slice(&self.counter.to_be_bytes());
        out[20..24].copy_from_slice(&self.sent_ms.to_be_bytes());
    }

    /// Reads a stamp from an RTP payload; `None` when it carries none.
    pub fn read(payload: &[u8]) -> Option<Self> {
        if payload.len() < STAMP_LEN || &payload[..4] != MAGIC {
            return None;
        }
        let u32_at = |i: usize| u32::from_be_bytes(payload[i..i + 4].try_into().unwrap());
        Some(Stamp {
            conf: u32_at(4),
            sender: u32_at(8),
            counter: u64::from_be_bytes(payload[12..20].try_into().unwrap()),
            sent_ms: u32_at(20),
        })
    }
}

/// A *Never* finding.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Violation {
    /// ms since the start.
    pub at_ms: u64,
    /// "duplicate", "other-conference", "after-leave", "unknown-sender", "undecodable",
    /// "lost-placement", "orphan-endpoint", "crash".
    pub kind: &'static str,
    /// What, in words.
    pub detail: String,
}

/// A hole in one sender's numbering at one receiver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Gap {
    /// Receiver (SSRC of its participant).
    pub receiver: u32,
    /// Sender.
    pub sender: u32,
    /// When the last packet before the hole arrived, ms.
    pub from_ms: u64,
    /// When the first packet after it arrived, ms.
    pub to_ms: u64,
    /// Packets missing.
    pub missing: u64,
}

impl Gap {
    /// The media gap: time without the sender's media, ms.
    pub fn ms(&self) -> u64 {
        self.to_ms - self.from_ms
    }
}

/// How far back a late packet is still told apart from a duplicate.
const WINDOW: u64 = 128;

/// One sender as one receiver has seen it.
#[derive(Debug, Clone, Copy)]
struct Track {
    highest: u64,
    /// Bit i: counter `highest - i` arrived.
    seen: u128,
    last_ms: u64,
}

/// A receiver: its conference and whether (since when) it left.
#[derive(Debug, Clone)]
struct Receiver {
    conf: u32,
    /// Its leave was acknowledged at this time (ms): nothing may arrive later than
    /// [`Checker::leave_grace_ms`] after it.
    left_ms: Option<u64>,
    tracks: HashMap<u32, Track>,
}

/// The checker: receivers, senders' conferences, findings.
#[derive(Debug, Default)]
pub struct Checker {
    receivers: HashMap<u32, Receiver>,
    senders: HashMap<u32, u32>,
    /// *Never* findings, in order.
    pub violations: Vec<Violation>,
    /// Holes, in order of their closing.
    pub gaps: Vec<Gap>,
    /// Packets checked.
    pub packets: u64,
    /// Packets that came late (after a later one of their sender) and filled a hole.
    pub late: u64,
    /// Packets sent before their receiver's leave was acknowledged that arrived more than
    /// `leave_grace_ms` after it: held up in a bridge (a stopped one delivers its backlog when
    /// it continues), not misrouted.
    pub stale_after_leave: u64,
    /// How long after an acknowledged leave a packet may still arrive (sent before the bridge
    /// removed the endpoint), ms; and how long after it one may have been sent.
    pub leave_grace_ms: u64,
}

impl Checker {
    /// A checker allowing `leave_grace_ms` after a leave.
    pub fn new(leave_grace_ms: u64) -> Self {
        Self {
            leave_grace_ms,
            ..Self::default()
        }
    }

    /// `id` joins conference `conf` (as a receiver, and as a sender when it sends).
    pub fn joined(&mut self, id: u32, conf: u32) {
        self.senders.insert(id, conf);
        self.receivers.insert(
            id,
            Receiver {
                conf,
                left_ms: None,
                tracks: HashMap::new(),
            },
        );
    }

    /// `id`'s leave was acknowledged at `now_ms`.
    pub fn left(&mut self, id: u32, now_ms: u64) {
        if let Some(r) = self.receivers.get_mut(&id) {
            r.left_ms = Some(now_ms);
        }
    }

    /// `id`'s socket is closed: nothing more is checked for it.
    pub fn forget(&mut self, id: u32) {
        self.receivers.remove(&id);
    }

    /// Records a *Never* finding.
    pub fn violation(&mut self, at_ms: u64, kind: &'static str, detail: String) {
        self.violations.push(Violation {
            at_ms,
            kind,
            detail,
        });
    }

    /// Receiver `id` got a packet that could not be read (not a soak packet, or SRTP that did
    /// not authenticate).
    pub fn undecodable(&mut self, id: u32, now_ms: u64, why: &str) {
        self.violation(
            now_ms,
            "undecodable",
            format!("receiver {id} got a packet it cannot read: {why}"),
        );
    }

    /// Receiver `id` got packet `s` at `now_ms`.
    pub fn packet(&mut self, id: u32, now_ms: u64, s: Stamp) {
        self.packets += 1;
        let Some(r) = self.receivers.get_mut(&id) else {
            return;
        };
        if let Some(left) = r.left_ms
            && now_ms > left + self.leave_grace_ms
        {
            if u64::from(s.sent_ms) > left + self.leave_grace_ms {
                let detail = format!(
                    "receiver {id} got counter {} of sender {}, sent {} ms after its leave was \
                     acknowledged",
                    s.counter,
                    s.sender,
                    u64::from(s.sent_ms) - left
                );
                self.violation(now_ms, "after-leave", detail);
            } else {
                self.stale_after_leave += 1;
            }
            return;
        }
        if s.conf != r.conf {
            let detail = format!(
                "receiver {id} of conference {} got sender {}'s packet of conference {}",
                r.conf, s.sender, s.conf
            );
            self.violation(now_ms, "other-conference", detail);
            return;
        }
        match self.senders.get(&s.sender) {
            Some(&c) if c == s.conf => {}
            _ => {
                let detail = format!(
                    "receiver {id} got a packet of sender {}, which never joined conference {}",
                    s.sender, s.conf
                );
                self.violation(now_ms, "unknown-sender", detail);
                return;
            }
        }
        if s.sender == id {
            let detail = format!("receiver {id} got its own packet {} back", s.counter);
            self.violation(now_ms, "echo", detail);
            return;
        }
        let Some(t) = r.tracks.get_mut(&s.sender) else {
            r.tracks.insert(
                s.sender,
                Track {
                    highest: s.counter,
                    seen: 1,
                    last_ms: now_ms,
                },
            );
            return;
        };
        if s.counter > t.highest {
            let ahead = s.counter - t.highest;
            if ahead > 1 {
                self.gaps.push(Gap {
                    receiver: id,
                    sender: s.sender,
                    from_ms: t.last_ms,
                    to_ms: now_ms,
                    missing: ahead - 1,
                });
            }
            t.seen = if ahead >= 128 { 0 } else { t.seen << ahead };
            t.seen |= 1;
            t.highest = s.counter;
            t.last_ms = now_ms;
            return;
        }
        let behind = t.highest - s.counter;
        if behind >= WINDOW {
            self.late += 1;
            return;
        }
        if t.seen & (1u128 << behind) != 0 {
            let detail = format!(
                "receiver {id} got counter {} of sender {} twice",
                s.counter, s.sender
            );
            self.violation(now_ms, "duplicate", detail);
            return;
        }
        t.seen |= 1u128 << behind;
        self.late += 1;
    }

    /// Senders receiver `id` heard from, with the time of the last packet of each.
    pub fn last_heard(&self, id: u32) -> impl Iterator<Item = (u32, u64)> + '_ {
        self.receivers
            .get(&id)
            .into_iter()
            .flat_map(|r| r.tracks.iter().map(|(s, t)| (*s, t.last_ms)))
    }
}

/// `q`-quantile (0..=1) of `v` (sorted here), 0 for none.
pub fn quantile(v: &mut [u64], q: f64) -> u64 {
    if v.is_empty() {
        return 0;
    }
    v.sort_unstable();
    let i = ((v.len() - 1) as f64 * q).round() as usize;
    v[i]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(conf: u32, sender: u32, counter: u64) -> Stamp {
        Stamp {
            conf,
            sender,
            counter,
            sent_ms: 0,
        }
    }

    #[test]
    fn stamps_round_trip_and_foreign_payloads_are_refused() {
        let s = Stamp {
            sent_ms: 12_345,
            ..st(7, 1234, 99_999)
        };
        let mut b = [0u8; 32];
        s.write(&mut b);
        assert_eq!(Stamp::read(&b), Some(s));
        assert_eq!(Stamp::read(&b[..10]), None);
        b[0] = b'X';
        assert_eq!(Stamp::read(&b), None);
    }

    #[test]
    fn in_order_media_is_clean_and_holes_become_gaps() {
        let mut c = Checker::new(500);
        c.joined(1, 0);
        c.joined(2, 0);
        for (i, t) in (0..10).zip((0..).step_by(50)) {
            c.packet(2, t, st(0, 1, i));
        }
        assert!(c.violations.is_empty() && c.gaps.is_empty());
        // 10..=29 lost: a 1 050 ms gap of 20 packets.
        c.packet(2, 1500, st(0, 1, 30));
        assert_eq!(
            c.gaps,
            [Gap {
                receiver: 2,
                sender: 1,
                from_ms: 450,
                to_ms: 1500,
                missing: 20
            }]
        );
        assert_eq!(c.gaps[0].ms(), 1050);
    }

    #[test]
    fn duplicates_are_found_late_packets_are_not_duplicates() {
        let mut c = Checker::new(500);
        c.joined(1, 0);
        c.joined(2, 0);
        c.packet(2, 0, st(0, 1, 0));
        c.packet(2, 50, st(0, 1, 2));
        c.packet(2, 60, st(0, 1, 1)); // late, fills the hole
        assert!(c.violations.is_empty());
        assert_eq!(c.late, 1);
        c.packet(2, 70, st(0, 1, 1)); // again
        c.packet(2, 80, st(0, 1, 2)); // again, the highest
        let kinds: Vec<_> = c.violations.iter().map(|v| v.kind).collect();
        assert_eq!(kinds, ["duplicate", "duplicate"]);
    }

    #[test]
    fn misrouted_packets_are_violations() {
        let mut c = Checker::new(500);
        c.joined(1, 0);
        c.joined(2, 0);
        c.joined(3, 1);
        c.packet(3, 0, st(0, 1, 0)); // conference 0's packet at conference 1's receiver
        c.packet(2, 0, st(0, 9, 0)); // nobody 9 joined
        c.packet(2, 0, st(0, 3, 0)); // 3 is in conference 1, the stamp says 0
        c.packet(1, 0, st(0, 1, 0)); // its own
        let kinds: Vec<_> = c.violations.iter().map(|v| v.kind).collect();
        assert_eq!(
            kinds,
            [
                "other-conference",
                "unknown-sender",
                "unknown-sender",
                "echo"
            ]
        );
    }

    #[test]
    fn packets_sent_after_a_leave_are_violations_stale_ones_are_counted() {
        let mut c = Checker::new(500);
        c.joined(1, 0);
        c.joined(2, 0);
        c.left(2, 1000);
        c.packet(2, 1400, st(0, 1, 0)); // in flight when it left
        assert!(c.violations.is_empty());
        // Sent before the leave, held up 3 s in a stopped bridge: late, not misrouted.
        let stale = Stamp {
            sent_ms: 900,
            ..st(0, 1, 1)
        };
        c.packet(2, 4000, stale);
        assert!(c.violations.is_empty());
        assert_eq!(c.stale_after_leave, 1);
        let sent_after = Stamp {
            sent_ms: 1600,
            ..st(0, 1, 2)
        };
        c.packet(2, 1600, sent_after);
        assert_eq!(c.violations[0].kind, "after-leave");
        c.forget(2);
        c.packet(2, 5000, st(0, 1, 2));
        assert_eq!(c.violations.len(), 1);
    }

    #[test]
    fn quantiles() {
        assert_eq!(quantile(&mut [], 0.5), 0);
        let mut v = vec![5, 1, 3, 2, 4];
        assert_eq!(quantile(&mut v, 0.5), 3);
        assert_eq!(quantile(&mut v, 1.0), 5);
        assert_eq!(quantile(&mut v, 0.0), 1);
    }
}
