//! Keyframe-request throttling: at most one PLI/FIR per media stream per interval goes on
//! towards its sender, whatever the number of receivers asking (a live stream's viewers joining
//! at once all want a keyframe; one is enough for all of them).
//!
//! One [`KeyframeGate`] is shared by every worker of a bridge, so the limit holds per bridge
//! whatever worker a request arrives on. It is a fixed table of atomic slots (no lock, no
//! allocation): a slot holds a tag of the stream's key and the time its last request went
//! through. Two streams hashing to the same slot overwrite each other's tag, which can only let
//! an extra request through, never hold one back wrongly.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Slots of a gate (a power of two).
const SLOTS: usize = 4096;

/// The shared throttle; see the module docs.
#[derive(Debug)]
pub struct KeyframeGate {
    interval_ms: u32,
    epoch: Instant,
    slots: Box<[AtomicU64]>,
    ssrc: u32,
}

impl KeyframeGate {
    /// A gate letting one request per stream through every `interval_ms`; 0 lets every request
    /// through.
    pub fn new(interval_ms: u32) -> Self {
        Self::with_ssrc(interval_ms, 0x5242_5247) // "RBRG"
    }

    /// As [`KeyframeGate::new`]; the bridge's own keyframe requests carry sender SSRC `ssrc`
    /// (random per bridge, so each bridge's requests are one RTCP stream wherever they go).
    pub fn with_ssrc(interval_ms: u32, ssrc: u32) -> Self {
        Self {
            interval_ms,
            epoch: Instant::now(),
            slots: (0..SLOTS).map(|_| AtomicU64::new(0)).collect(),
            ssrc,
        }
    }

    /// The sender SSRC of this bridge's own keyframe requests.
    pub fn ssrc(&self) -> u32 {
        self.ssrc
    }

    /// The interval, ms (0: off).
    pub fn interval_ms(&self) -> u32 {
        self.interval_ms
    }

    /// Milliseconds on the gate's clock (engines read it once per batch and hand it to their
    /// core; it wraps after 49 days, which the comparisons allow for).
    pub fn now_ms(&self) -> u32 {
        self.epoch.elapsed().as_millis() as u32
    }

    /// Whether a keyframe request for stream `key` at `now_ms` goes on (and counts as the
    /// stream's last).
    pub fn allow(&self, key: u64, now_ms: u32) -> bool {
        if self.interval_ms == 0 {
            return true;
        }
        let (i, tag) = slot_and_tag(key, SLOTS);
        let slot = &self.slots[i];
        let stamp = (u64::from(tag) << 32) | u64::from(now_ms);
        let mut cur = slot.load(Ordering::Relaxed);
        loop {
            let (t, at) = ((cur >> 32) as u32, cur as u32);
            if t == tag && now_ms.wrapping_sub(at) < self.interval_ms {
                return false;
            }
            match slot.compare_exchange_weak(cur, stamp, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return true,
                // Another worker got there first: judge again against what it wrote.
                Err(now) => cur = now,
            }
        }
    }
}

/// Where `key` goes in a table of `slots` (a power of two) atomic slots, and the tag that tells
/// it from the other keys of its slot (never 0, which marks an empty slot): the low bits of a
/// splitmix64 finalizer pick the slot, the high bits are the tag.
#[inline]
pub(crate) fn slot_and_tag(key: u64, slots: usize) -> (usize, u32) {
    let mut h = key.wrapping_add(0x9e37_79b9_7f4a_7c15);
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^= h >> 31;
    (h as usize & (slots - 1), ((h >> 32) as u32).max(1))
}

impl Default for KeyframeGate {
    /// A gate that lets everything through.
    fn default() -> Self {
        Self::new(0)
    }
}

/// A Picture Loss Indication (RFC 4585 6.3.1: PSFB, FMT 1, no FCI) from `sender` about `media`.
pub fn pli(sender: u32, media: u32) -> [u8; PLI_LEN] {
    let mut p = [0u8; PLI_LEN];
    p[..4].copy_from_slice(&[0x81, 206, 0, 2]);
    p[4..8].copy_from_slice(&sender.to_be_bytes());
    p[8..].copy_from_slice(&media.to_be_bytes());
    p
}

/// Length of a PLI.
pub const PLI_LEN: usize = 12;

/// How long after a receive-only endpoint joins a conference fed through an upstream relay the
/// bridge asks for a keyframe of each stream that arrives (once per stream; the gate throttles).
pub const JOIN_WINDOW_MS: u32 = 1_000;

/// Streams of one conference to ask keyframes for, after a viewer joined.
#[derive(Debug, Clone, Copy)]
pub struct Wanted {
    /// Until when (gate clock, ms).
    pub until_ms: u32,
    asked: [u32; 4],
    n: u8,
}

impl Wanted {
    /// Wanted until `until_ms`.
    pub fn until(until_ms: u32) -> Self {
        Self {
            until_ms,
            asked: [0; 4],
            n: 0,
        }
    }

    /// Whether `ssrc` is a stream not asked for yet (and now is).
    pub fn first(&mut self, ssrc: u32) -> bool {
        let n = usize::from(self.n);
        if self.asked[..n].contains(&ssrc) || n == self.asked.len() {
            return false;
        }
        self.asked[n] = ssrc;
        self.n += 1;
        true
    }
}

/// The key of a media stream: its SSRC within a conference (conference slots are the same in
/// every worker's table).
#[inline]
pub fn stream_key(conf: u32, ssrc: u32) -> u64 {
    (u64::from(conf) << 32) | u64::from(ssrc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_request_per_stream_per_interval() {
        let g = KeyframeGate::new(500);
        let a = stream_key(1, 7);
        assert!(g.allow(a, 1000));
        assert!(!g.allow(a, 1001));
        assert!(!g.allow(a, 1499));
        assert!(g.allow(a, 1500));
        // Another stream has its own budget.
        assert!(g.allow(stream_key(2, 7), 1501));
        assert!(g.allow(stream_key(1, 8), 1501));
    }

    #[test]
    fn off_lets_everything_through_and_the_clock_wraps() {
        let g = KeyframeGate::default();
        assert!(g.allow(1, 5) && g.allow(1, 5));
        let g = KeyframeGate::new(100);
        assert!(g.allow(9, u32::MAX - 10));
        assert!(!g.allow(9, 20)); // 31 ms later, across the wrap
        assert!(g.allow(9, 200));
    }

    #[test]
    fn shared_by_threads_one_wins() {
        let g = std::sync::Arc::new(KeyframeGate::new(10_000));
        let wins: usize = (0..4)
            .map(|_| {
                let g = g.clone();
                std::thread::spawn(move || (0..1000).filter(|_| g.allow(42, 77)).count())
            })
            .map(|t| t.join().unwrap())
            .sum();
        assert_eq!(wins, 1);
    }
}
