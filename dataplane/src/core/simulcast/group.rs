//! What the table knows of simulcast: a publisher's group of layers (their SSRCs, lowest
//! first, and what its worker measures of each), and a receiver's subscription to one group as
//! one stream. Shared by every copy of the table; measured and chosen with relaxed atomics (one
//! writer each: the publisher's worker measures, the receiver's feedback sets the estimate).

use std::sync::atomic::{
    AtomicU32, AtomicU64, Ordering::Acquire, Ordering::Relaxed, Ordering::Release, fence,
};

use super::forward::Segment;
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
    /// Its bandwidth estimate (REMB, capped by loss), and when the cap was last set (ms).
    remb: AtomicU32,
    loss_cap: AtomicU32,
    loss_at: AtomicU32,
    /// The layer chosen for it, and the one it is on ([`NO_LAYER`]: none), for stats and for
    /// mapping its keyframe requests to the layer it is on.
    pub target: AtomicU32,
    /// The layer it is on.
    pub layer: AtomicU32,
    /// Its last segments (one per switch), for mapping its NACKs back to layers' packets.
    pub segments: SegmentLog,
    /// When it last switched layers (ms; 0: never).
    switched_at: AtomicU32,
    /// The receiver report that started the current loss window: its extended highest
    /// sequence number (high 32 bits) and cumulative loss (low 32), and when (ms; 0: none).
    report_base: AtomicU64,
    report_at: AtomicU32,
}

/// Losses are read over windows of at least this long, from receiver reports' cumulative
/// counts: a browser sends a report with nearly every feedback packet (tens a second), each
/// `fraction lost` over a handful of packets.
pub const LOSS_WINDOW_MS: u32 = 1_000;

/// A loss cap no report renewed for this long is forgotten: a receiver that gets nothing (no
/// layer fits) reports nothing about its stream, and a cap from before must not keep it there.
pub const LOSS_CAP_MS: u32 = 3_000;

/// Receiver reports within this long of a switch are not read for losses: what they count was
/// lost mostly before it (the layer it left overflowing the link), not by the layer it is on.
pub const LOSS_SETTLE_MS: u32 = 2_000;

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
            loss_at: AtomicU32::new(0),
            target: AtomicU32::new(NO_LAYER),
            layer: AtomicU32::new(NO_LAYER),
            segments: SegmentLog::default(),
            switched_at: AtomicU32::new(0),
            report_base: AtomicU64::new(0),
            report_at: AtomicU32::new(0),
        }
    }

    /// Its estimate at `now_ms` (a loss cap lasts [`LOSS_CAP_MS`] unless a report renews it).
    #[inline]
    pub fn estimate(&self, now_ms: u32) -> Estimate {
        let fresh = now_ms.wrapping_sub(self.loss_at.load(Relaxed)) < LOSS_CAP_MS;
        Estimate {
            remb: self.remb.load(Relaxed),
            loss_cap: if fresh {
                self.loss_cap.load(Relaxed)
            } else {
                0
            },
        }
    }

    /// Its REMB said `bps`.
    pub fn on_remb(&self, bps: u32) {
        self.remb.store(bps.max(1), Relaxed);
    }

    /// Its receiver report at `now_ms` about its stream said `highest` (extended highest
    /// sequence number received) and `lost` (cumulative); `sent_bps` is the rate it is sent.
    /// Every [`LOSS_WINDOW_MS`] the loss over the window goes to [`SimReceive::on_loss`].
    pub fn on_report(&self, highest: u32, lost: i32, sent_bps: u32, now_ms: u32) {
        let at = self.report_at.load(Relaxed);
        let now = now_ms.max(1);
        if at != 0 && now.wrapping_sub(at) < LOSS_WINDOW_MS {
            return;
        }
        let base = self.report_base.load(Relaxed);
        self.report_base
            .store(u64::from(highest) << 32 | u64::from(lost as u32), Relaxed);
        self.report_at.store(now, Relaxed);
        if at == 0 {
            return;
        }
        let expected = highest.wrapping_sub((base >> 32) as u32);
        let lost = lost.wrapping_sub(base as u32 as i32).max(0) as u32;
        if expected == 0 || expected > 1 << 20 {
            return;
        }
        let fraction = (u64::from(lost.min(expected)) * 256 / u64::from(expected)).min(255);
        self.on_loss(fraction as u8, sent_bps, now_ms);
    }

    /// It switched layers at `now_ms` (losses are read afresh).
    pub fn switched(&self, now_ms: u32) {
        self.switched_at.store(now_ms.max(1), Relaxed);
        // A new loss window starts with the next report.
        self.report_at.store(0, Relaxed);
    }

    /// Its receiver report at `now_ms` said `fraction_lost` (of 256) of its stream, sent at
    /// `sent_bps`, was lost (see [`Estimate::on_loss`]); not read within [`LOSS_SETTLE_MS`] of
    /// a switch.
    pub fn on_loss(&self, fraction_lost: u8, sent_bps: u32, now_ms: u32) {
        let at = self.switched_at.load(Relaxed);
        if at != 0 && now_ms.wrapping_sub(at) < LOSS_SETTLE_MS {
            return;
        }
        let mut e = self.estimate(now_ms);
        e.on_loss(fraction_lost, sent_bps);
        self.loss_cap.store(e.loss_cap, Relaxed);
        self.loss_at.store(now_ms, Relaxed);
    }
}

/// Segments a [`SegmentLog`] keeps: switches within the repair cache's span are rare (a
/// policy step takes seconds), so a NACK older than the fourth last switch is not answered.
pub const SEGMENTS: usize = 4;

/// Where a receiver's output packet came from ([`SegmentLog::find`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Found {
    /// The segment it was sent in.
    pub segment: Segment,
    /// The layer's sequence number it was made from.
    pub from: u16,
    /// Its output index.
    pub index: u64,
    /// The segment is the latest (the layer the receiver is on now).
    pub latest: bool,
}

/// A receiver's last [`SEGMENTS`] segments, newest last, shared between the worker that
/// forwards its layers (the one writer: a publisher's packets arrive on one worker) and any
/// worker its NACKs arrive on. A seqlock: written once per switch, read once per NACKed number.
#[derive(Debug, Default)]
pub struct SegmentLog {
    /// Odd while a write is under way; the number of segments written is `version / 2`.
    version: AtomicU64,
    /// Per segment: `from_index` (48 bits) and `pic_off` (16), then `ts_off` (32), `from_seq`
    /// (16), `tl0_off` (8) and `layer` (8).
    words: [[AtomicU64; 2]; SEGMENTS],
}

impl SegmentLog {
    /// Appends `s` (the receiver switched).
    pub fn push(&self, s: Segment) {
        let v = self.version.load(Relaxed);
        let at = (v / 2) as usize % SEGMENTS;
        self.version.store(v + 1, Relaxed);
        fence(Release);
        self.words[at][0].store(
            (s.from_index & 0xffff_ffff_ffff) << 16 | u64::from(s.pic_off),
            Relaxed,
        );
        self.words[at][1].store(
            u64::from(s.ts_off) << 32
                | u64::from(s.from_seq) << 16
                | u64::from(s.tl0_off) << 8
                | u64::from(s.layer),
            Relaxed,
        );
        self.version.store(v + 2, Release);
    }

    /// The segment output sequence number `seq` belongs to, with the input sequence number and
    /// output index it was made from, and whether it is the latest segment (the layer the
    /// receiver is on). `None`: before the oldest segment kept, or a torn read that kept racing
    /// a writer.
    pub fn find(&self, seq: u16) -> Option<Found> {
        for _ in 0..4 {
            let v = self.version.load(Acquire);
            if v % 2 == 1 {
                std::hint::spin_loop();
                continue;
            }
            let n = ((v / 2) as usize).min(SEGMENTS);
            let mut segs = [Segment::default(); SEGMENTS];
            for (k, seg) in segs.iter_mut().enumerate().take(n) {
                // Oldest first.
                let at = ((v / 2) as usize - n + k) % SEGMENTS;
                let (a, b) = (
                    self.words[at][0].load(Relaxed),
                    self.words[at][1].load(Relaxed),
                );
                *seg = Segment {
                    layer: b as u8,
                    from_seq: (b >> 16) as u16,
                    from_index: a >> 16,
                    ts_off: (b >> 32) as u32,
                    pic_off: a as u16,
                    tl0_off: (b >> 8) as u8,
                };
            }
            fence(Acquire);
            if self.version.load(Relaxed) != v {
                continue;
            }
            return (0..n).rev().find_map(|k| {
                let next = segs.get(k + 1).filter(|_| k + 1 < n);
                let (from, index) = segs[k].source_of(seq, next.map(|x| x.from_index as u16))?;
                Some(Found {
                    segment: segs[k],
                    from,
                    index,
                    latest: k + 1 == n,
                })
            });
        }
        None
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

    #[test]
    fn a_nack_maps_to_the_segment_it_was_sent_in() {
        let log = SegmentLog::default();
        assert_eq!(log.find(5), None);
        let seg = |layer, from_seq, from_index| Segment {
            layer,
            from_seq,
            from_index,
            ts_off: 7,
            pic_off: 3,
            tl0_off: 1,
        };
        // Layer 0 from output 65 400 (its input 1 000), layer 2 from output 65 450 (input
        // 60 000), layer 1 from 65 530 (the output's sequence number wraps in its segment).
        log.push(seg(0, 1_000, 65_400));
        log.push(seg(2, 60_000, 65_450));
        assert_eq!(log.find(65_399), None, "before the first segment");
        let at = |seq| log.find(seq).map(|f| (f.segment.layer, f.from, f.index));
        assert_eq!(at(65_420), Some((0, 1_020, 65_420)));
        assert_eq!(at(65_449).unwrap().0, 0);
        assert_eq!(at(65_460), Some((2, 60_010, 65_460)));
        log.push(seg(1, 7, 65_530));
        assert_eq!(at(65_529).unwrap().0, 2);
        assert_eq!(at(3), Some((1, 16, 65_539)), "across the wrap");
        // Only the last SEGMENTS are kept.
        for k in 0..SEGMENTS as u64 {
            log.push(seg(0, 0, 70_000 + 10 * k));
        }
        assert_eq!(log.find(65_420), None, "forgotten");
        let f = log.find((70_000u64 + 35) as u16).unwrap();
        assert_eq!((f.from, f.latest), (5, true));
        assert!(!log.find((70_000u64 + 15) as u16).unwrap().latest);
    }

    #[test]
    fn losses_reported_just_after_a_switch_are_not_the_new_layers() {
        let r = SimReceive::new(1, 5, 0, 0);
        r.on_loss(128, 1_000_000, 500);
        assert_eq!(r.estimate(500).loss_cap, 1_000_000 * (512 - 128) / 512);
        r.on_loss(0, 1_000_000, 600);
        r.switched(1_000);
        let t = 1_000 + LOSS_SETTLE_MS;
        r.on_loss(128, 150_000, t - 1);
        assert_eq!(r.estimate(t - 1).loss_cap, 0, "lost before the switch");
        r.on_loss(128, 150_000, t);
        assert_eq!(r.estimate(t).loss_cap, 150_000 * (512 - 128) / 512);
        // Not renewed (no report about the stream): forgotten.
        assert_ne!(r.estimate(t + LOSS_CAP_MS - 1).loss_cap, 0);
        assert_eq!(r.estimate(t + LOSS_CAP_MS).loss_cap, 0);
    }

    #[test]
    fn losses_are_read_over_windows_of_reports() {
        let r = SimReceive::new(1, 5, 0, 0);
        r.on_report(1_000, 10, 1_000_000, 100);
        // Within the window: not read, however lossy the report.
        r.on_report(1_010, 20, 1_000_000, 300);
        assert_eq!(r.estimate(300).loss_cap, 0);
        // A window: 200 expected, 50 lost (25 %).
        r.on_report(1_200, 60, 1_000_000, 100 + LOSS_WINDOW_MS);
        assert_eq!(
            r.estimate(100 + LOSS_WINDOW_MS).loss_cap,
            1_000_000 * (512 - 64) / 512
        );
        // The next: nothing lost, the cap goes.
        r.on_report(1_400, 60, 1_000_000, 100 + 2 * LOSS_WINDOW_MS);
        assert_eq!(r.estimate(100 + 2 * LOSS_WINDOW_MS).loss_cap, 0);
    }
}
