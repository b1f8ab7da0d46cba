//! What the table knows of simulcast: a publisher's group of layers (their SSRCs, lowest
//! first, and what its worker measures of each), and a receiver's subscription to one group as
//! one stream. Shared by every copy of the table; measured and chosen with relaxed atomics (one
//! writer each: the publisher's worker measures, the receiver's feedback sets the estimate).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};

use super::policy::{Estimate, Layer};
use crate::core::EndpointUid;

/// Most layers of a group.
pub const MAX_LAYERS: usize = 4;
/// A layer that sent nothing for this long is not active.
pub const ACTIVE_MS: u32 = 1_000;
/// Rates are measured over windows of this length.
const WINDOW_MS: u32 = 500;

/// What the publisher's worker measures of one layer.
#[derive(Debug, Default)]
pub struct LayerStats {
    bytes: AtomicU64,
    window_bytes: AtomicU64,
    window_start: AtomicU32,
    last_ms: AtomicU32,
    bitrate: AtomicU32,
    height: AtomicU32,
    width: AtomicU32,
}

impl LayerStats {
    /// Counts a packet of `len` bytes at `now_ms`, and a keyframe's `size` when it starts one.
    #[inline]
    pub fn record(&self, len: usize, now_ms: u32, size: Option<(u16, u16)>) {
        let bytes = self.bytes.load(Relaxed) + len as u64;
        self.bytes.store(bytes, Relaxed);
        // 0 means never: a packet at 0 ms counts as 1.
        self.last_ms.store(now_ms.max(1), Relaxed);
        let start = self.window_start.load(Relaxed);
        let elapsed = now_ms.wrapping_sub(start);
        if start == 0 {
            self.window_start.store(now_ms.max(1), Relaxed);
            self.window_bytes.store(bytes, Relaxed);
        } else if elapsed >= WINDOW_MS {
            let sent = bytes - self.window_bytes.load(Relaxed);
            self.bitrate
                .store((sent * 8 * 1000 / u64::from(elapsed)) as u32, Relaxed);
            self.window_start.store(now_ms.max(1), Relaxed);
            self.window_bytes.store(bytes, Relaxed);
        }
        if let Some((w, h)) = size {
            self.width.store(u32::from(w), Relaxed);
            self.height.store(u32::from(h), Relaxed);
        }
    }

    /// The layer as the policy sees it at `now_ms`.
    pub fn layer(&self, now_ms: u32) -> Layer {
        let last = self.last_ms.load(Relaxed);
        Layer {
            bitrate: self.bitrate.load(Relaxed),
            height: self.height.load(Relaxed) as u16,
            active: last != 0 && now_ms.wrapping_sub(last) < ACTIVE_MS,
        }
    }

    /// Its last keyframe's size (0 x 0: none seen).
    pub fn size(&self) -> (u32, u32) {
        (self.width.load(Relaxed), self.height.load(Relaxed))
    }
}

/// A publisher's simulcast group.
#[derive(Debug)]
pub struct Group {
    /// The publisher (receivers name their group by it).
    pub owner: EndpointUid,
    /// Its layers' SSRCs, lowest first.
    pub ssrcs: Box<[u32]>,
    /// What is measured of each (parallel to `ssrcs`).
    pub stats: Box<[LayerStats]>,
    /// The layers' RTP stream ids (RFC 8852), parallel to `ssrcs`, when the publisher names
    /// them (WebRTC): a layer's SSRC (0 until then) is learned from its packets' RID.
    pub rids: Box<[Box<[u8]>]>,
    /// The id of the RID header extension in the publisher's packets (0: none).
    pub rid_ext: u8,
    /// When the publisher was last sent its REMB (ms; 0: never).
    remb_at: AtomicU32,
}

impl Group {
    /// A group of `ssrcs` (at most [`MAX_LAYERS`], lowest first) sent by `owner`.
    pub fn new(owner: EndpointUid, ssrcs: &[u32]) -> Self {
        Self {
            owner,
            ssrcs: ssrcs.into(),
            stats: ssrcs.iter().map(|_| LayerStats::default()).collect(),
            rids: Box::default(),
            rid_ext: 0,
            remb_at: AtomicU32::new(0),
        }
    }

    /// Whether the publisher is due its REMB at `now_ms` (every `every_ms`); if so, it counts as
    /// sent.
    #[inline]
    pub fn remb_due(&self, now_ms: u32, every_ms: u32) -> bool {
        let at = self.remb_at.load(Relaxed);
        if at != 0 && now_ms.wrapping_sub(at) < every_ms {
            return false;
        }
        self.remb_at.store(now_ms.max(1), Relaxed);
        true
    }

    /// A group whose layers are named by `rids` (lowest first), carried in header extension
    /// `rid_ext`; `ssrcs` parallel to them, 0 where not learned yet.
    pub fn with_rids(owner: EndpointUid, ssrcs: &[u32], rids: &[String], rid_ext: u8) -> Self {
        Self {
            rids: rids.iter().map(|r| r.as_bytes().into()).collect(),
            rid_ext,
            ..Self::new(owner, ssrcs)
        }
    }

    /// The layer a packet carrying RID `rid` belongs to.
    pub fn layer_of_rid(&self, rid: &[u8]) -> Option<u8> {
        self.rids
            .iter()
            .position(|r| &r[..] == rid)
            .map(|i| i as u8)
    }

    /// The layers as the policy sees them at `now_ms` (the first `n` entries).
    #[inline]
    pub fn layers(&self, now_ms: u32) -> ([Layer; MAX_LAYERS], usize) {
        let mut out = [Layer::default(); MAX_LAYERS];
        for (o, s) in out.iter_mut().zip(self.stats.iter()) {
            *o = s.layer(now_ms);
        }
        (out, self.stats.len().min(MAX_LAYERS))
    }
}

/// No layer (in [`SimReceive`]'s reported target and layer).
pub const NO_LAYER: u32 = u32::MAX;

/// A receiver of one group as one stream.
#[derive(Debug)]
pub struct SimReceive {
    /// The group's publisher.
    pub group: EndpointUid,
    /// The SSRC the receiver gets the group's video on.
    pub ssrc: u32,
    /// Its first sequence number (random below 2^15 in production).
    pub first_seq: u16,
    /// Largest frame height it wants (0: no limit).
    pub max_height: AtomicU32,
    /// Its bandwidth estimate (REMB, capped by loss).
    remb: AtomicU32,
    loss_cap: AtomicU32,
    /// The layer chosen for it, and the one it is on ([`NO_LAYER`]: none), for stats and for
    /// mapping its keyframe requests to the layer it is on.
    pub target: AtomicU32,
    /// The layer it is on.
    pub layer: AtomicU32,
}

impl SimReceive {
    /// A receiver of `group`'s video on `ssrc`, limited to `max_height` (0: none).
    pub fn new(group: EndpointUid, ssrc: u32, first_seq: u16, max_height: u32) -> Self {
        Self {
            group,
            ssrc,
            first_seq,
            max_height: AtomicU32::new(max_height),
            remb: AtomicU32::new(0),
            loss_cap: AtomicU32::new(0),
            target: AtomicU32::new(NO_LAYER),
            layer: AtomicU32::new(NO_LAYER),
        }
    }

    /// Its estimate now.
    #[inline]
    pub fn estimate(&self) -> Estimate {
        Estimate {
            remb: self.remb.load(Relaxed),
            loss_cap: self.loss_cap.load(Relaxed),
        }
    }

    /// Its REMB said `bps`.
    pub fn on_remb(&self, bps: u32) {
        self.remb.store(bps.max(1), Relaxed);
    }

    /// Its receiver report said `fraction_lost` (of 256) of its stream, sent at `sent_bps`, was
    /// lost (see [`Estimate::on_loss`]).
    pub fn on_loss(&self, fraction_lost: u8, sent_bps: u32) {
        let mut e = self.estimate();
        e.on_loss(fraction_lost, sent_bps);
        self.loss_cap.store(e.loss_cap, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_layer_is_measured_over_windows_and_goes_inactive() {
        let s = LayerStats::default();
        // 1 000-byte packets every 10 ms: 800 kbit/s.
        for t in 0..=100u32 {
            s.record(1000, 10 * t, (t == 0).then_some((640, 360)));
        }
        let l = s.layer(1_000);
        assert!(l.active);
        assert_eq!(l.height, 360);
        assert!((790_000..=810_000).contains(&l.bitrate), "{}", l.bitrate);
        assert!(!s.layer(1_000 + ACTIVE_MS).active);
        assert!(!LayerStats::default().layer(5).active, "never sent");
    }
}
