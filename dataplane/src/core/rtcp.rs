//! RTCP compound-packet walk (RFC 3550 section 6, RFC 4585, RFC 5104): validates every packet's
//! header and length and finds whom feedback is about, without allocating; and holds back, in
//! place, the keyframe requests (PLI, FIR entries) a throttle refuses, item by item.

use super::DropReason;

/// Packet type of transport-layer feedback (RFC 4585): generic NACK and others.
pub const RTPFB: u8 = 205;
/// Packet type of payload-specific feedback (RFC 4585): PLI, SLI, FIR, REMB and others.
pub const PSFB: u8 = 206;
/// PSFB format of a Picture Loss Indication (RFC 4585).
const FMT_PLI: u8 = 1;
/// PSFB format of a Full Intra Request (RFC 5104), whose media SSRCs are in the FCI entries.
const FMT_FIR: u8 = 4;
/// PSFB format of application-layer feedback; REMB lists its media SSRCs in the FCI.
const FMT_AFB: u8 = 15;

/// Most media SSRCs one compound packet's feedback may address; later ones are ignored.
pub const MAX_TARGETS: usize = 4;

/// What the forwarding decision needs from an RTCP compound packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    /// SSRC of the sender of the first packet of the compound.
    pub sender_ssrc: u32,
    /// True when the compound holds at least one RTPFB or PSFB packet.
    pub feedback: bool,
    /// True when it holds a keyframe request (PLI, FIR): each is gated on its own
    /// ([`hold_back_keyframes`]).
    pub keyframes: bool,
    /// True when it holds a generic NACK (the retransmission cache may answer it).
    pub nacks: bool,
    targets: [u32; MAX_TARGETS],
    n_targets: u8,
}

impl Summary {
    /// Distinct media SSRCs addressed by the compound's feedback, in order of appearance.
    pub fn targets(&self) -> &[u32] {
        &self.targets[..self.n_targets as usize]
    }

    fn add_target(&mut self, ssrc: u32) {
        if ssrc == 0 || self.targets().contains(&ssrc) {
            return;
        }
        if (self.n_targets as usize) < MAX_TARGETS {
            self.targets[self.n_targets as usize] = ssrc;
            self.n_targets += 1;
        }
    }
}

#[inline]
fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Walks a compound RTCP packet. Every sub-packet must be version 2 and fit its length field
/// exactly; the first must carry a sender SSRC.
pub fn summarize(pkt: &[u8]) -> Result<Summary, DropReason> {
    if pkt.len() < 8 {
        return Err(DropReason::Malformed);
    }
    let mut s = Summary {
        sender_ssrc: be32(pkt, 4),
        feedback: false,
        keyframes: false,
        nacks: false,
        targets: [0; MAX_TARGETS],
        n_targets: 0,
    };
    let mut rest = pkt;
    while !rest.is_empty() {
        if rest.len() < 4 || rest[0] >> 6 != 2 {
            return Err(DropReason::Malformed);
        }
        let len = (usize::from(u16::from_be_bytes([rest[2], rest[3]])) + 1) * 4;
        if len > rest.len() {
            return Err(DropReason::Malformed);
        }
        let (one, tail) = rest.split_at(len);
        let fmt = one[0] & 0x1f;
        match one[1] {
            RTPFB | PSFB => {
                // Common feedback header: sender SSRC, media SSRC.
                if one.len() < 12 {
                    return Err(DropReason::Malformed);
                }
                s.feedback = true;
                s.keyframes |= one[1] == PSFB && (fmt == FMT_PLI || fmt == FMT_FIR);
                s.nacks |= one[1] == RTPFB && fmt == super::repair::nack::FMT_NACK;
                let fci = &one[12..];
                match (one[1], fmt) {
                    (PSFB, FMT_FIR) => {
                        for entry in fci.chunks_exact(8) {
                            s.add_target(be32(entry, 0));
                        }
                    }
                    (PSFB, FMT_AFB) if fci.len() >= 8 && &fci[..4] == b"REMB" => {
                        let n = usize::from(fci[4]);
                        for ssrc in fci[8..].chunks_exact(4).take(n) {
                            s.add_target(be32(ssrc, 0));
                        }
                    }
                    _ => s.add_target(be32(one, 8)),
                }
            }
            _ => {}
        }
        rest = tail;
    }
    Ok(s)
}

/// Removes from compound `pkt` (one [`summarize`] accepted) the keyframe requests `allow`
/// refuses, in place and item by item: a PLI whose media SSRC is refused goes, a FIR keeps only
/// the entries whose SSRC is allowed (and goes with its last). Everything else stays as it was,
/// in order. `allow` is asked once per request, in order of appearance. Returns the compound's
/// new length (0 when nothing is left) and how many requests were held back.
pub fn hold_back_keyframes(pkt: &mut [u8], mut allow: impl FnMut(u32) -> bool) -> (usize, u32) {
    let (mut r, mut w, mut held) = (0, 0, 0);
    while r + 4 <= pkt.len() {
        let len = (usize::from(u16::from_be_bytes([pkt[r + 2], pkt[r + 3]])) + 1) * 4;
        let Some(end) = r.checked_add(len).filter(|&e| e <= pkt.len()) else {
            break;
        };
        let (pt, fmt) = (pkt[r + 1], pkt[r] & 0x1f);
        let keep = match (pt, fmt) {
            (PSFB, FMT_PLI) if len >= 12 => allow(be32(pkt, r + 8)),
            (PSFB, FMT_FIR) if len >= 12 => {
                // Compact the allowed entries behind the header (w <= r: copies go backwards).
                pkt.copy_within(r..r + 12, w);
                let mut at = w + 12;
                let entries = (len - 12) / 8;
                for e in 0..entries {
                    let from = r + 12 + 8 * e;
                    if allow(be32(pkt, from)) {
                        pkt.copy_within(from..from + 8, at);
                        at += 8;
                    } else {
                        held += 1;
                    }
                }
                if at > w + 12 {
                    let words = ((at - w) / 4 - 1) as u16;
                    pkt[w + 2..w + 4].copy_from_slice(&words.to_be_bytes());
                    w = at;
                }
                r = end;
                continue;
            }
            _ => true,
        };
        if keep {
            pkt.copy_within(r..end, w);
            w += len;
        } else {
            held += 1;
        }
        r = end;
    }
    (w, held)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::{fir, nack, pli, remb, rtcp as packet, sender_report as sr};

    #[test]
    fn sender_report_is_not_feedback() {
        let s = summarize(&sr(42)).unwrap();
        assert_eq!(s.sender_ssrc, 42);
        assert!(!s.feedback);
        assert!(s.targets().is_empty());
    }

    #[test]
    fn feedback_targets_media_ssrc() {
        let s = summarize(&pli(1, 77)).unwrap();
        assert!(s.feedback);
        assert_eq!(s.targets(), &[77]);
        let s = summarize(&nack(1, 78, 10)).unwrap();
        assert_eq!(s.targets(), &[78]);
    }

    #[test]
    fn fir_targets_fci_entries_and_compound_is_walked() {
        let mut p = sr(1);
        p.extend(fir(1, &[5, 6, 5]));
        let s = summarize(&p).unwrap();
        assert!(s.feedback);
        assert_eq!(s.targets(), &[5, 6]);
    }

    #[test]
    fn keyframe_requests_are_told_apart() {
        let mut p = sr(1);
        p.extend(pli(1, 5));
        assert!(summarize(&p).unwrap().keyframes);
        assert!(summarize(&fir(1, &[5])).unwrap().keyframes);
        p.extend(nack(1, 5, 3));
        assert!(summarize(&p).unwrap().keyframes, "one among other feedback");
        assert!(!summarize(&sr(1)).unwrap().keyframes);
        assert!(!summarize(&nack(1, 5, 3)).unwrap().keyframes);
        assert!(!summarize(&remb(1, &[5])).unwrap().keyframes);
    }

    #[test]
    fn refused_keyframe_requests_are_taken_out_item_by_item() {
        // [SR, PLI 5, NACK 5, PLI 6, FIR 5 6 7]: refuse 5 and 7.
        let mut p = sr(1);
        for q in [pli(1, 5), nack(1, 5, 3), pli(1, 6), fir(1, &[5, 6, 7])] {
            p.extend(q);
        }
        let mut asked = Vec::new();
        let (n, held) = hold_back_keyframes(&mut p, |ssrc| {
            asked.push(ssrc);
            ssrc == 6
        });
        assert_eq!(
            asked,
            [5, 6, 5, 6, 7],
            "every request asked about, in order"
        );
        assert_eq!(held, 3);
        let mut want = sr(1);
        for q in [nack(1, 5, 3), pli(1, 6), fir(1, &[6])] {
            want.extend(q);
        }
        assert_eq!(&p[..n], &want[..]);
        let s = summarize(&p[..n]).unwrap();
        assert_eq!(s.targets(), &[5, 6]);
        // All refused: nothing of a keyframe-only compound is left.
        let mut p = pli(1, 5);
        p.extend(fir(1, &[5, 9]));
        assert_eq!(hold_back_keyframes(&mut p, |_| false), (0, 3));
        // All allowed: unchanged.
        let mut p = fir(1, &[5, 9]);
        let orig = p.clone();
        assert_eq!(hold_back_keyframes(&mut p, |_| true), (orig.len(), 0));
        assert_eq!(p, orig);
    }

    #[test]
    fn remb_targets_listed_ssrcs() {
        let s = summarize(&remb(9, &[11, 12])).unwrap();
        assert_eq!(s.targets(), &[11, 12]);
    }

    #[test]
    fn rejects_bad_lengths() {
        let p = sr(1);
        assert_eq!(summarize(&p[..6]), Err(DropReason::Malformed));
        assert_eq!(summarize(&p[..p.len() - 4]), Err(DropReason::Malformed));
        let mut trailing = p.clone();
        trailing.extend_from_slice(&[0x80, 200]);
        assert_eq!(summarize(&trailing), Err(DropReason::Malformed));
        let mut short_fb = packet(1, PSFB, &[0; 4]);
        short_fb[3] = 1;
        assert_eq!(summarize(&short_fb), Err(DropReason::Malformed));
        let mut v1 = sr(1);
        v1.extend(pli(1, 2));
        let n = v1.len() - 12;
        v1[n] = 0x41; // second packet claims version 1
        assert_eq!(summarize(&v1), Err(DropReason::Malformed));
    }
}
