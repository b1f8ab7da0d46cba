//! Audio levels (RFC 6464): the client-to-mixer audio level header extension a sender puts on
//! its audio packets (`urn:ietf:params:rtp-hdrext:ssrc-audio-level`, the id its SDP negotiated),
//! read on the packet path and summed in an [`AudioMeter`] per endpoint, which the bridge's
//! agent reads and reports to the control plane (where the dominant speaker is decided).
//!
//! Cost on the packet path: only for RTP of an endpoint with an extension id configured, a walk
//! of the header extension block (a few bytes) and two relaxed atomic adds. No lock, no
//! allocation; the meter is shared by every copy of the table and read (and reset) by the agent.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Loudness summed over the audio packets of one endpoint since the last read.
#[derive(Debug, Default)]
pub struct AudioMeter {
    /// Sum of loudness (127 - level: 0 is silence, 127 is 0 dBov).
    loudness: AtomicU64,
    /// Packets that carried a level.
    packets: AtomicU64,
}

impl AudioMeter {
    /// Counts one packet with audio `level` (-dBov, 0-127).
    #[inline]
    pub fn record(&self, level: u8) {
        self.loudness
            .fetch_add(u64::from(127 - level.min(127)), Relaxed);
        self.packets.fetch_add(1, Relaxed);
    }

    /// What was recorded since the last take: (mean loudness 0-127, packets); resets.
    pub fn take(&self) -> (f64, u64) {
        let n = self.packets.swap(0, Relaxed);
        let sum = self.loudness.swap(0, Relaxed);
        if n == 0 {
            (0.0, 0)
        } else {
            (sum as f64 / n as f64, n)
        }
    }
}

/// The audio level in the RTP header `hdr` (fixed part, CSRCs and extension: its parsed
/// length), in extension element `id` (one-byte form 1-14, or two-byte form 1-255); `None` when
/// the packet has no such element or the block is malformed.
#[inline]
pub fn level(hdr: &[u8], id: u8) -> Option<u8> {
    super::rtp::extension(hdr, id)?.first().map(|v| v & 0x7f)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(profile: u16, elements: &[u8]) -> Vec<u8> {
        let mut p = vec![0x90, 111, 0, 1, 0, 0, 0, 0, 0, 0, 0, 9];
        let mut e = elements.to_vec();
        while !e.len().is_multiple_of(4) {
            e.push(0);
        }
        p.extend(profile.to_be_bytes());
        p.extend(((e.len() / 4) as u16).to_be_bytes());
        p.extend(e);
        p
    }

    #[test]
    fn one_byte_and_two_byte_forms() {
        // id 1 (len 1, mid "a"), then id 3: audio level with the V bit, level 30.
        let p = packet(0xbede, &[0x10, b'a', 0x30, 0x80 | 30]);
        assert_eq!(level(&p, 3), Some(30));
        assert_eq!(level(&p, 1), Some(b'a' & 0x7f));
        assert_eq!(level(&p, 2), None);
        let p = packet(0x1000, &[5, 2, 0, 0, 9, 1, 0x80 | 55]);
        assert_eq!(level(&p, 9), Some(55));
        assert_eq!(level(&p, 5), Some(0));
    }

    #[test]
    fn no_extension_or_malformed_is_none() {
        assert_eq!(level(&[0x80, 111, 0, 1, 0, 0, 0, 0, 0, 0, 0, 9], 1), None);
        let mut p = packet(0xbede, &[0x30, 40]);
        p.truncate(p.len() - 2);
        assert_eq!(level(&p, 3), None);
        assert_eq!(level(&packet(0xbede, &[0xf0, 1]), 3), None);
        assert_eq!(level(&packet(0x4242, &[0x30, 40]), 3), None);
    }

    #[test]
    fn the_meter_averages_loudness_and_resets() {
        let m = AudioMeter::default();
        m.record(27);
        m.record(127);
        assert_eq!(m.take(), (50.0, 2));
        assert_eq!(m.take(), (0.0, 0));
    }
}
