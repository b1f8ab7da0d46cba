//! Which relay each remote sender's media arrives over, learned from the media itself, so that
//! feedback about a remote sender (NACK, PLI, FIR, REMB) goes to the one bridge that hosts it
//! rather than to every relay of the conference (where the bridges hosting neither end would
//! drop it as `no_receivers`).
//!
//! Shared by every worker of a bridge: a relay's media lands on one worker, feedback about it on
//! the worker of whichever receiver sends it. Like the keyframe gate it is a fixed table of
//! atomic slots (no lock, no allocation, bounded whatever the number of streams): a slot holds a
//! tag of the stream's key (conference slot, SSRC) and the low 32 bits of the relay's uid. A
//! relayed RTP packet costs one load, and a store only when its slot says something else. Two
//! streams sharing a slot overwrite each other; the one that lost its entry is then unknown
//! again, and feedback about it goes to every relay as before, until its next packet.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use super::keyframe::{slot_and_tag, stream_key};

/// Slots of the table (a power of two): 128 KiB.
const SLOTS: usize = 16_384;

/// The shared table; see the module docs.
#[derive(Debug)]
pub struct RemoteSenders {
    slots: Box<[AtomicU64]>,
}

impl Default for RemoteSenders {
    fn default() -> Self {
        Self {
            slots: (0..SLOTS).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

impl RemoteSenders {
    /// Records that the media of `ssrc` in conference slot `conf` arrives over relay `relay`
    /// (its uid).
    #[inline]
    pub fn learn(&self, conf: u32, ssrc: u32, relay: u64) {
        let (i, tag) = slot_and_tag(stream_key(conf, ssrc), SLOTS);
        let v = (u64::from(tag) << 32) | (relay & 0xffff_ffff);
        let slot = &self.slots[i];
        // Read first: in the steady state the entry is already there and the line stays shared.
        if slot.load(Relaxed) != v {
            slot.store(v, Relaxed);
        }
    }

    /// The relay (the low 32 bits of its uid) the media of `ssrc` in conference slot `conf`
    /// last arrived over, if known. The caller checks it is still a relay of that conference.
    #[inline]
    pub fn relay_of(&self, conf: u32, ssrc: u32) -> Option<u32> {
        let (i, tag) = slot_and_tag(stream_key(conf, ssrc), SLOTS);
        let v = self.slots[i].load(Relaxed);
        ((v >> 32) as u32 == tag).then_some(v as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learns_and_forgets_by_overwriting() {
        let s = RemoteSenders::default();
        assert_eq!(s.relay_of(1, 7), None);
        s.learn(1, 7, 42);
        assert_eq!(s.relay_of(1, 7), Some(42));
        assert_eq!(s.relay_of(2, 7), None, "per conference");
        assert_eq!(s.relay_of(1, 8), None);
        // The sender moved behind another relay.
        s.learn(1, 7, 43);
        assert_eq!(s.relay_of(1, 7), Some(43));
    }
}
