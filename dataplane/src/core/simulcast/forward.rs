//! One receiver's view of a simulcast group: which encoding (layer) it is sent, and the
//! rewriting that makes the layers one continuous stream for it. Sans-IO, in virtual time.
//!
//! The receiver sees one SSRC (its group's output SSRC) whatever the layer: sequence numbers run
//! on by one across a switch, timestamps by the wall-clock time between the last packet sent and
//! the switch (90 kHz), VP8 picture ids and TL0PICIDX by one. A switch happens only at the first
//! packet of a keyframe of the target layer; until one comes the receiver stays on the layer it
//! has (a receiver on no layer yet gets nothing), and [`Forwarder::needs_keyframe`] says to ask
//! the publisher for one. Within a layer, the output keeps the input's gaps (the receiver NACKs
//! them) and its order; packets of a layer from before the switch point are dropped.

/// What the forwarder needs of one packet of the group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Packet {
    /// Its layer (index in the group).
    pub layer: u8,
    /// RTP sequence number and timestamp.
    pub seq: u16,
    /// RTP timestamp.
    pub ts: u32,
    /// The first packet of a keyframe.
    pub keyframe: bool,
    /// VP8 picture id (15 bits) and TL0PICIDX, when the codec carries them.
    pub picture_id: Option<u16>,
    /// VP8 TL0PICIDX.
    pub tl0: Option<u8>,
}

/// How a forwarded packet is rewritten for this receiver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Out {
    /// Output packet index (48 bits; its low 16 bits are the sequence number): the SRTP index.
    pub index: u64,
    /// Output timestamp.
    pub ts: u32,
    /// Output picture id (15 bits).
    pub picture_id: u16,
    /// Output TL0PICIDX.
    pub tl0: u8,
}

impl Out {
    /// The output sequence number.
    pub fn seq(&self) -> u16 {
        self.index as u16
    }
}

/// Where a layer's numbering maps to the output's, from one switch on (a receiver's NACK names
/// output numbers: the segment it falls in says which packet of which layer it was).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Segment {
    /// The layer sent from the switch on.
    pub layer: u8,
    /// The first input sequence number of the layer sent after the switch.
    pub from_seq: u16,
    /// Output index of that packet (48 bits).
    pub from_index: u64,
    /// Added to the layer's timestamps.
    pub ts_off: u32,
    /// Added to the layer's VP8 picture ids (15 bits).
    pub pic_off: u16,
    /// Added to the layer's TL0PICIDX.
    pub tl0_off: u8,
}

impl Segment {
    /// The output packet with sequence number `seq` if it is of this segment (before
    /// `next_from`, the next segment's first output sequence number, if any): the layer's input
    /// sequence number it was made from, and its output index.
    pub fn source_of(&self, seq: u16, next_from: Option<u16>) -> Option<(u16, u64)> {
        let delta = seq.wrapping_sub(self.from_index as u16) as i16;
        if delta < 0 || next_from.is_some_and(|n| n.wrapping_sub(seq) as i16 <= 0) {
            return None;
        }
        let index = (self.from_index + delta as u64) & 0xffff_ffff_ffff;
        Some((self.from_seq.wrapping_add(delta as u16), index))
    }

    /// Rewrites `pkt`, a plain RTP packet of this segment's layer (header `hl` bytes, VP8
    /// descriptor `d`), as the output packet `seq` on stream `ssrc`: the bytes the receiver was
    /// sent (less the per-receiver header rewriting and SRTP).
    pub fn rewrite(
        &self,
        pkt: &mut [u8],
        hl: usize,
        d: &super::vp8::Descriptor,
        seq: u16,
        ssrc: u32,
    ) {
        let ts = u32::from_be_bytes([pkt[4], pkt[5], pkt[6], pkt[7]]).wrapping_add(self.ts_off);
        pkt[2..4].copy_from_slice(&seq.to_be_bytes());
        pkt[4..8].copy_from_slice(&ts.to_be_bytes());
        pkt[8..12].copy_from_slice(&ssrc.to_be_bytes());
        let pic = d
            .picture_id
            .map_or(0, |(id, _)| id)
            .wrapping_add(self.pic_off)
            & 0x7fff;
        let tl0 = d.tl0.unwrap_or(0).wrapping_add(self.tl0_off);
        super::vp8::rewrite(&mut pkt[hl..], d, pic, tl0);
    }
}

/// One receiver's forwarding state for one group; see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Forwarder {
    map: Option<Segment>,
    /// Highest output index sent, its timestamp, picture id, TL0PICIDX and when (ms).
    last_index: u64,
    last_ts: u32,
    last_pic: u16,
    last_tl0: u8,
    last_ms: u32,
    /// Switches made.
    pub switches: u32,
}

/// Ticks of the 90 kHz video clock per ms.
const TICKS_PER_MS: u32 = 90;

impl Forwarder {
    /// A forwarder whose output numbering starts at index `first` (random in production, below
    /// 2^15 so its rollover counter starts at 0).
    pub fn new(first: u16) -> Self {
        Self {
            last_index: u64::from(first & 0x7fff).wrapping_sub(1) & 0xffff_ffff_ffff,
            ..Self::default()
        }
    }

    /// The layer the receiver is on, if any.
    pub fn layer(&self) -> Option<u8> {
        self.map.map(|m| m.layer)
    }

    /// Whether the receiver waits for a keyframe of `target` (it is not on it).
    pub fn needs_keyframe(&self, target: Option<u8>) -> bool {
        target.is_some() && self.layer() != target
    }

    /// Decides packet `p` for a receiver whose target layer is `target` (`None`: send nothing)
    /// at `now_ms`: `Some` with its rewriting when it is sent.
    pub fn on_packet(&mut self, p: &Packet, target: Option<u8>, now_ms: u32) -> Option<Out> {
        let target = target?;
        let switch = p.layer == target && p.keyframe && self.layer() != Some(target);
        if switch {
            let started = self.map.is_some() || self.switches > 0;
            let index = (self.last_index + 1) & 0xffff_ffff_ffff;
            let gap = if started {
                now_ms.wrapping_sub(self.last_ms).max(1) * TICKS_PER_MS
            } else {
                0
            };
            let ts = self.last_ts.wrapping_add(gap);
            let pic = if started {
                self.last_pic.wrapping_add(1)
            } else {
                p.picture_id.unwrap_or(0)
            };
            let tl0 = if started {
                self.last_tl0.wrapping_add(1)
            } else {
                p.tl0.unwrap_or(0)
            };
            self.map = Some(Segment {
                layer: target,
                from_seq: p.seq,
                from_index: index,
                ts_off: if started { ts.wrapping_sub(p.ts) } else { 0 },
                pic_off: pic.wrapping_sub(p.picture_id.unwrap_or(0)),
                tl0_off: tl0.wrapping_sub(p.tl0.unwrap_or(0)),
            });
            self.switches += 1;
        }
        let m = self.map.filter(|m| m.layer == p.layer)?;
        // Packets of the layer from before the switch point never go out.
        let delta = p.seq.wrapping_sub(m.from_seq) as i16;
        if delta < 0 {
            return None;
        }
        let out = Out {
            index: (m.from_index + delta as u64) & 0xffff_ffff_ffff,
            ts: p.ts.wrapping_add(m.ts_off),
            picture_id: p.picture_id.unwrap_or(0).wrapping_add(m.pic_off) & 0x7fff,
            tl0: p.tl0.unwrap_or(0).wrapping_add(m.tl0_off),
        };
        // Later than anything sent (in index order): the numbering runs on from it.
        if out.index.wrapping_sub(self.last_index) & 0xffff_ffff_ffff < 1 << 47 {
            self.last_index = out.index;
            self.last_ts = out.ts;
            self.last_ms = now_ms;
            if p.picture_id.is_some() {
                self.last_pic = out.picture_id;
            }
            if p.tl0.is_some() {
                self.last_tl0 = out.tl0;
            }
        }
        Some(out)
    }

    /// The segment the receiver is in (since the last switch), if any.
    pub fn segment(&self) -> Option<Segment> {
        self.map
    }

    /// The input (layer, sequence number) that output sequence number `seq` was made from, if
    /// it is of the current layer's run (a NACK from the receiver names output numbers).
    pub fn source_of(&self, seq: u16) -> Option<(u8, u16)> {
        let m = self.map?;
        m.source_of(seq, None).map(|(s, _)| (m.layer, s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Layer `layer`'s packet `n`: sequence numbers from a per-layer base, 3 packets a frame,
    /// 30 frames/s (3 000 ticks), keyframes where `key` says.
    fn pkt(layer: u8, n: u16, key: bool) -> Packet {
        let base = [1_000u16, 30_000, 65_000][layer as usize];
        Packet {
            layer,
            seq: base.wrapping_add(n),
            ts: [5_000u32, 900_000, 4_000_000_000][layer as usize]
                .wrapping_add(u32::from(n / 3) * 3_000),
            keyframe: key && n.is_multiple_of(3),
            picture_id: Some([10u16, 20_000, 32_760][layer as usize].wrapping_add(n / 3) & 0x7fff),
            tl0: Some([0u8, 100, 250][layer as usize].wrapping_add((n / 3) as u8)),
        }
    }

    #[test]
    fn nothing_goes_out_until_a_keyframe_of_the_target() {
        let mut f = Forwarder::new(100);
        assert_eq!(f.on_packet(&pkt(0, 0, false), Some(0), 0), None);
        assert!(f.needs_keyframe(Some(0)));
        assert_eq!(
            f.on_packet(&pkt(1, 0, true), Some(0), 0),
            None,
            "not the target"
        );
        let out = f.on_packet(&pkt(0, 3, true), Some(0), 10).unwrap();
        assert_eq!(out.seq(), 100);
        assert_eq!((out.ts, out.picture_id, out.tl0), (5_000 + 3_000, 11, 1));
        assert!(!f.needs_keyframe(Some(0)));
        assert_eq!(
            f.on_packet(&pkt(0, 4, false), Some(0), 10).unwrap().seq(),
            101
        );
        assert_eq!(
            f.on_packet(&pkt(0, 5, false), None, 10),
            None,
            "target none"
        );
    }

    #[test]
    fn a_switch_waits_for_the_targets_keyframe_and_the_output_runs_on() {
        let mut f = Forwarder::new(500);
        f.on_packet(&pkt(0, 0, true), Some(0), 0).unwrap();
        let mut last = None;
        for n in 1..9 {
            last = f.on_packet(&pkt(0, n, false), Some(0), 33 * u32::from(n / 3));
        }
        let last = last.unwrap();
        assert_eq!(last.seq(), 508);
        // Up to layer 2: its inter frames are not sent, layer 0 goes on meanwhile.
        assert_eq!(f.on_packet(&pkt(2, 0, false), Some(2), 100), None);
        assert!(f.needs_keyframe(Some(2)));
        assert_eq!(
            f.on_packet(&pkt(0, 9, false), Some(2), 100).unwrap().seq(),
            509
        );
        // Its keyframe: the switch, one past the last sequence number, timestamp on by the
        // 40 ms since the last packet, picture id and TL0PICIDX on by one.
        let out = f.on_packet(&pkt(2, 3, true), Some(2), 140).unwrap();
        assert_eq!(out.seq(), 510);
        assert_eq!(out.ts, f_ts(&pkt(0, 9, false)) + 40 * 90);
        assert_eq!(out.picture_id, (10 + 3 + 1) & 0x7fff);
        assert_eq!(out.tl0, 3 + 1);
        assert_eq!(f.layer(), Some(2));
        // Layer 0 is not sent any more, layer 2 runs on (its sequence wraps at 65 535).
        assert_eq!(f.on_packet(&pkt(0, 10, false), Some(2), 140), None);
        let seqs: Vec<u16> = (4..700)
            .filter_map(|n| f.on_packet(&pkt(2, n, false), Some(2), 150))
            .map(|o| o.seq())
            .collect();
        assert_eq!(seqs, (511..511 + 696).collect::<Vec<u16>>());
        // A packet of layer 2 from before the switch point is dropped.
        assert_eq!(f.on_packet(&pkt(2, 2, false), Some(2), 150), None);
        assert_eq!(f.switches, 2);
    }

    fn f_ts(p: &Packet) -> u32 {
        p.ts
    }

    #[test]
    fn gaps_and_reordering_within_a_layer_are_kept_and_nacks_map_back() {
        let mut f = Forwarder::new(0);
        f.on_packet(&pkt(1, 0, true), Some(1), 0).unwrap();
        assert_eq!(f.on_packet(&pkt(1, 2, false), Some(1), 0).unwrap().seq(), 2);
        assert_eq!(
            f.on_packet(&pkt(1, 1, false), Some(1), 0).unwrap().seq(),
            1,
            "late"
        );
        assert_eq!(
            f.on_packet(&pkt(1, 5, false), Some(1), 0).unwrap().seq(),
            5,
            "a gap"
        );
        assert_eq!(f.source_of(3), Some((1, 30_003)));
        assert_eq!(f.on_packet(&pkt(1, 6, false), Some(1), 0).unwrap().seq(), 6);
    }

    #[test]
    fn a_layer_that_disappears_is_left_at_the_next_keyframe_of_another() {
        let mut f = Forwarder::new(7);
        f.on_packet(&pkt(2, 0, true), Some(2), 0).unwrap();
        f.on_packet(&pkt(2, 1, false), Some(2), 0).unwrap();
        // Layer 2 stops (the publisher dropped it): the policy targets layer 1.
        assert_eq!(f.on_packet(&pkt(1, 0, false), Some(1), 500), None);
        let out = f.on_packet(&pkt(1, 3, true), Some(1), 500).unwrap();
        assert_eq!(out.seq(), 9);
        assert_eq!(f.layer(), Some(1));
    }
}
