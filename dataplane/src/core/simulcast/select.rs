//! The core's side of simulcast: for a packet of a group's layer, which of its receivers get it
//! and rewritten how (their worker-local [`Forwarder`] and [`Policy`]), the keyframes to ask the
//! publisher for, and the feedback of a receiver of a group (its REMB is the bridge's, its
//! keyframe requests go to the layer it is on).

use rustc_hash::FxHashMap;

use super::forward::{Forwarder, Out, Packet};
use super::group::{Group, MAX_LAYERS, NO_LAYER, SimReceive};
use super::policy::Policy;
use super::vp8;
use crate::core::rtcp::{PSFB, RTPFB};
use crate::core::table::{Conference, Table};
use crate::core::verdict::Dests;
use crate::core::{EndpointUid, KeyframeGate, keyframe};

/// What one peer gets of a packet of a simulcast layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SimCopy {
    /// Not a receiver of this group as one stream: the packet as it is.
    Normal,
    /// A receiver on another layer (or waiting for a keyframe): nothing.
    Skip,
    /// A receiver on this layer: rewritten so, on its stream `ssrc`.
    Send(Out, u32),
}

/// Per worker: the receivers' forwarding state, and what the last packet decided.
#[derive(Debug, Default)]
pub struct Receivers {
    /// By (receiver, its stream's SSRC).
    state: FxHashMap<(EndpointUid, u32), (Forwarder, Policy)>,
    /// What each peer of the conference gets of the packet being decided.
    pub copies: Vec<SimCopy>,
    /// RTCP for publishers: (publisher's peer slot in `conf`, conf, what).
    pub keyframes: Vec<(u32, u32, ToPublisher)>,
}

/// The bridge's own RTCP to a simulcast publisher.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToPublisher {
    /// A keyframe request (PLI) for the layer of this SSRC.
    Pli(u32),
    /// A REMB of [`PUBLISHER_REMB`] about these layer SSRCs (the first `n`).
    Remb([u32; MAX_LAYERS], u8),
}

/// What the bridge tells a simulcast publisher its uplink may carry (REMB, every second): the
/// receivers' estimates choose their layers and never slow the publisher down, but a browser
/// that hears no estimate at all (the bridge terminates neither transport-cc nor forwards its
/// receivers' REMBs) ramps up on losses alone, 8 % a second, and sends its top layer only after
/// half a minute; a REMB early on lets it start at that rate. Its own loss-based controller still
/// holds it back on a poor uplink.
pub const PUBLISHER_REMB: u32 = 5_000_000;

/// How often the publisher gets its REMB.
const REMB_EVERY_MS: u32 = 1_000;

/// Writes the REMB (RFC draft-alvestrand-rmcat-remb) from `sender` saying `bps` about `ssrcs`
/// into `out`; returns its length.
pub fn remb(sender: u32, bps: u32, ssrcs: &[u32], out: &mut [u8]) -> usize {
    let (mut exp, mut mantissa) = (0u8, bps);
    while mantissa >= 1 << 18 {
        mantissa >>= 1;
        exp += 1;
    }
    let len = 20 + 4 * ssrcs.len();
    out[0] = 0x8f;
    out[1] = PSFB;
    out[2..4].copy_from_slice(&((len / 4 - 1) as u16).to_be_bytes());
    out[4..8].copy_from_slice(&sender.to_be_bytes());
    out[8..12].copy_from_slice(&[0; 4]);
    out[12..16].copy_from_slice(b"REMB");
    out[16] = ssrcs.len() as u8;
    out[17] = (exp << 2) | (mantissa >> 16) as u8;
    out[18..20].copy_from_slice(&(mantissa as u16).to_be_bytes());
    for (i, s) in ssrcs.iter().enumerate() {
        out[20 + 4 * i..24 + 4 * i].copy_from_slice(&s.to_be_bytes());
    }
    len
}

impl Receivers {
    /// Forgets the state of receiver `uid` (it left).
    pub fn forget(&mut self, uid: EndpointUid) {
        if !self.state.is_empty() {
            self.state.retain(|(u, _), _| *u != uid);
        }
    }

    /// Decides RTP packet `pkt` (header `hl` bytes, sequence `seq`, timestamp `ts`) of layer
    /// `layer` of `group` in conference `conf` (slot `conf_idx`) for `dests`: fills
    /// [`Receivers::copies`], measures the layer, queues keyframe requests (through `gate`) to
    /// the publisher at peer slot `publisher` for receivers waiting for a layer. Returns the
    /// packet's VP8 descriptor (the copies rewrite it).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn decide(
        &mut self,
        table: &Table,
        conf: &Conference,
        conf_idx: u32,
        group: &Group,
        layer: u8,
        pkt: &[u8],
        hl: usize,
        dests: &Dests<'_>,
        gate: &KeyframeGate,
        publisher: Option<u32>,
        now_ms: u32,
    ) -> vp8::Descriptor {
        let d = vp8::parse(&pkt[hl..]).unwrap_or_default();
        if let Some(s) = group.stats.get(usize::from(layer)) {
            s.record(pkt.len(), now_ms, d.size);
        }
        let p = Packet {
            layer,
            seq: u16::from_be_bytes([pkt[2], pkt[3]]),
            ts: u32::from_be_bytes([pkt[4], pkt[5], pkt[6], pkt[7]]),
            keyframe: d.keyframe,
            picture_id: d.picture_id.map(|(id, _)| id),
            tl0: d.tl0,
        };
        let (layers, n) = group.layers(now_ms);
        self.copies.clear();
        self.copies.resize(conf.peers.len(), SimCopy::Normal);
        for (i, peer) in dests.iter_slots() {
            let Some(sim) = peer.sim.as_ref().filter(|s| s.group == group.owner) else {
                continue;
            };
            let uid = table.ep(conf.peer_owner[i]).uid;
            let (f, policy) = self
                .state
                .entry((uid, sim.ssrc))
                .or_insert_with(|| (Forwarder::new(sim.first_seq), Policy::default()));
            let limit = sim.max_height.load(std::sync::atomic::Ordering::Relaxed) as u16;
            let target = policy.choose_with(&layers[..n], sim.estimate(now_ms), limit, now_ms);
            report(sim, target, f.layer(), now_ms);
            let switches = f.switches;
            self.copies[i] = match f.on_packet(&p, target, now_ms) {
                Some(out) => SimCopy::Send(out, sim.ssrc),
                None => SimCopy::Skip,
            };
            if f.switches != switches
                && let Some(segment) = f.segment()
            {
                sim.segments.push(segment);
            }
            if f.needs_keyframe(target)
                && let Some(t) = target
                && let (Some(slot), Some(&ssrc)) = (publisher, group.ssrcs.get(usize::from(t)))
                && gate.allow(keyframe::stream_key(conf_idx, ssrc), now_ms)
            {
                self.keyframes
                    .push((slot, conf_idx, ToPublisher::Pli(ssrc)));
            }
        }
        if let Some(slot) = publisher
            && group.remb_due(now_ms, REMB_EVERY_MS)
        {
            let mut ssrcs = [0; MAX_LAYERS];
            let n = group.ssrcs.len().min(MAX_LAYERS);
            ssrcs[..n].copy_from_slice(&group.ssrcs[..n]);
            self.keyframes
                .push((slot, conf_idx, ToPublisher::Remb(ssrcs, n as u8)));
        }
        d
    }
}

fn report(sim: &SimReceive, target: Option<u8>, layer: Option<u8>, now_ms: u32) {
    use std::sync::atomic::Ordering::Relaxed;
    let v = |l: Option<u8>| l.map_or(NO_LAYER, u32::from);
    if sim.target.load(Relaxed) != v(target) {
        tracing::debug!(
            ssrc = sim.ssrc,
            ?target,
            ?layer,
            estimate = sim.estimate(now_ms).bps(),
            "simulcast target"
        );
        sim.target.store(v(target), Relaxed);
    }
    if sim.layer.load(Relaxed) != v(layer) {
        tracing::debug!(ssrc = sim.ssrc, ?target, ?layer, "simulcast switch");
        sim.layer.store(v(layer), Relaxed);
        sim.switched(now_ms);
    }
}

#[inline]
fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Takes the feedback of `sim`'s receiver about its stream, in compound `pkt`, in place: a
/// REMB is its estimate (kept, and taken out), a PLI or FIR about its stream goes to the layer
/// it is on (its SSRC written in), a NACK about it stays for the repair cache to answer when
/// `nacks_answered` (its numbers are the receiver's own: they map back to layers' packets
/// through its [`SimReceive::segments`]) and is taken out otherwise. Returns the compound's new
/// length.
pub fn take_feedback(
    pkt: &mut [u8],
    sim: &SimReceive,
    group: &Group,
    nacks_answered: bool,
    now_ms: u32,
) -> usize {
    use std::sync::atomic::Ordering::Relaxed;
    let layer = match sim.layer.load(Relaxed) {
        NO_LAYER => sim.target.load(Relaxed),
        l => l,
    };
    let to = group.ssrcs.get(layer as usize).copied();
    let (mut r, mut w) = (0, 0);
    while r + 4 <= pkt.len() {
        let len = (usize::from(u16::from_be_bytes([pkt[r + 2], pkt[r + 3]])) + 1) * 4;
        let Some(end) = r.checked_add(len).filter(|&e| e <= pkt.len()) else {
            break;
        };
        let (pt, fmt) = (pkt[r + 1], pkt[r] & 0x1f);
        let mut keep = true;
        // Receiver reports (in an SR or RR) about its stream: the loss of what it was sent.
        if pt == 200 || pt == 201 {
            let first = r + if pt == 200 { 28 } else { 8 };
            for at in (first..end).step_by(24).take(usize::from(fmt)) {
                if at + 24 <= end && be32(pkt, at) == sim.ssrc {
                    let sent = layer as usize;
                    let bps = group.stats.get(sent).map_or(0, |s| s.layer(now_ms).bitrate);
                    // Cumulative loss: 24 bits, signed.
                    let lost = (be32(pkt, at + 4) << 8) as i32 >> 8;
                    let highest = be32(pkt, at + 8);
                    tracing::trace!(ssrc = sim.ssrc, highest, lost, bps, "RR");
                    sim.on_report(highest, lost, bps, now_ms);
                }
            }
        }
        if (pt == RTPFB || pt == PSFB) && len >= 12 {
            let media = be32(pkt, r + 8);
            match (pt, fmt) {
                (PSFB, 15) if len >= 20 && &pkt[r + 12..r + 16] == b"REMB" => {
                    let n = usize::from(pkt[r + 16]);
                    let ssrcs = (r + 20..end).step_by(4).take(n);
                    if ssrcs
                        .clone()
                        .any(|at| at + 4 <= end && be32(pkt, at) == sim.ssrc)
                    {
                        let exp = pkt[r + 17] >> 2;
                        let mantissa = (u32::from(pkt[r + 17] & 3) << 16)
                            | (u32::from(pkt[r + 18]) << 8)
                            | u32::from(pkt[r + 19]);
                        let bps = mantissa.checked_shl(u32::from(exp)).unwrap_or(u32::MAX);
                        tracing::trace!(ssrc = sim.ssrc, bps, "REMB");
                        sim.on_remb(bps);
                        keep = false;
                    }
                }
                (PSFB, 4) => {
                    for at in (r + 12..end).step_by(8) {
                        if at + 8 <= end && be32(pkt, at) == sim.ssrc {
                            match to {
                                Some(t) => pkt[at..at + 4].copy_from_slice(&t.to_be_bytes()),
                                None => keep = false,
                            }
                        }
                    }
                }
                (RTPFB, 1) if media == sim.ssrc => keep = nacks_answered,
                _ if media == sim.ssrc => match to {
                    Some(t) => pkt[r + 8..r + 12].copy_from_slice(&t.to_be_bytes()),
                    None => keep = false,
                },
                _ => {}
            }
        }
        if keep {
            pkt.copy_within(r..end, w);
            w += len;
        }
        r = end;
    }
    w
}
