//! Generic NACKs (RFC 4585 section 6.2.1) answered in place: every sequence number a compound's
//! NACKs ask for is offered to the cache; those it holds are taken out of the FCI entries, and
//! a NACK left asking for nothing goes from the compound, so only what the bridge cannot repair
//! goes on upstream. No allocation: entries are rewritten where they are.

use super::super::rtcp::RTPFB;

/// RTPFB format of a generic NACK.
pub const FMT_NACK: u8 = 1;

/// What [`answer`] did to a compound.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Answered {
    /// The compound's new length (0: nothing left).
    pub len: usize,
    /// Sequence numbers asked for.
    pub asked: u32,
    /// Of those, the ones `hit` took (repaired by the bridge).
    pub taken: u32,
}

#[inline]
fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

#[inline]
fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Offers every sequence number the generic NACKs of compound `pkt` (one
/// [`super::super::rtcp::summarize`] accepted) ask for to `hit(media_ssrc, seq)`, in order; what
/// it takes is removed from the compound, in place: an FCI entry keeps the numbers not taken
/// (re-based on the first of them), a NACK with no entry left goes. Everything else stays as
/// it was, in order.
pub fn answer(pkt: &mut [u8], mut hit: impl FnMut(u32, u16) -> bool) -> Answered {
    let (mut r, mut w) = (0, 0);
    let mut out = Answered::default();
    while r + 4 <= pkt.len() {
        let len = (usize::from(be16(pkt, r + 2)) + 1) * 4;
        let Some(end) = r.checked_add(len).filter(|&e| e <= pkt.len()) else {
            break;
        };
        if pkt[r + 1] != RTPFB || pkt[r] & 0x1f != FMT_NACK || len < 12 {
            pkt.copy_within(r..end, w);
            w += len;
            r = end;
            continue;
        }
        let media = be32(pkt, r + 8);
        // Header first (w <= r: copies go backwards), then the entries that keep something.
        pkt.copy_within(r..r + 12, w);
        let mut at = w + 12;
        for e in 0..(len - 12) / 4 {
            let from = r + 12 + 4 * e;
            let (pid, blp) = (be16(pkt, from), be16(pkt, from + 2));
            let mut left = [0u16; 17];
            let mut n = 0;
            for bit in 0..17u16 {
                if bit > 0 && blp & (1 << (bit - 1)) == 0 {
                    continue;
                }
                let seq = pid.wrapping_add(bit);
                out.asked += 1;
                if hit(media, seq) {
                    out.taken += 1;
                } else {
                    left[n] = seq;
                    n += 1;
                }
            }
            if n == 0 {
                continue;
            }
            // Every number left is within 16 of the first one left.
            let base = left[0];
            let blp = left[1..n]
                .iter()
                .fold(0u16, |b, &s| b | 1 << (s.wrapping_sub(base) - 1));
            pkt[at..at + 2].copy_from_slice(&base.to_be_bytes());
            pkt[at + 2..at + 4].copy_from_slice(&blp.to_be_bytes());
            at += 4;
        }
        if at > w + 12 {
            let words = ((at - w) / 4 - 1) as u16;
            pkt[w + 2..w + 4].copy_from_slice(&words.to_be_bytes());
            w = at;
        }
        r = end;
    }
    out.len = w;
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::{feedback, nack, pli, sender_report};

    /// A NACK for `media` with raw `(pid, blp)` entries.
    fn nack_entries(media: u32, entries: &[(u16, u16)]) -> Vec<u8> {
        let mut fci = Vec::new();
        for (pid, blp) in entries {
            fci.extend_from_slice(&pid.to_be_bytes());
            fci.extend_from_slice(&blp.to_be_bytes());
        }
        feedback(FMT_NACK, RTPFB, 1, media, &fci)
    }

    #[test]
    fn every_number_is_offered_in_order_and_kept_unless_taken() {
        // pid 100 with 101, 103 and 116 lost too; pid 65535 with 0 (wraps).
        let mut p = nack_entries(7, &[(100, 0b1000_0000_0000_0101), (65_535, 1)]);
        let mut asked = Vec::new();
        let a = answer(&mut p, |ssrc, seq| {
            asked.push((ssrc, seq));
            false
        });
        assert_eq!(
            asked,
            [(7, 100), (7, 101), (7, 103), (7, 116), (7, 65_535), (7, 0)]
        );
        assert_eq!((a.asked, a.taken), (6, 0));
        assert_eq!(p[..a.len], nack_entries(7, &[(100, 0x8005), (65_535, 1)]));
    }

    #[test]
    fn taken_numbers_leave_and_entries_are_rebased() {
        let mut p = nack_entries(7, &[(100, 0b1000_0000_0000_0101), (200, 0), (65_535, 1)]);
        // The bridge holds 100, 101, 200 and 65535.
        let a = answer(&mut p, |_, seq| [100, 101, 200, 65_535].contains(&seq));
        assert_eq!((a.asked, a.taken), (7, 4));
        // Left: 103 and 116 (116 - 103 = 13: bit 12), and 0.
        assert_eq!(p[..a.len], nack_entries(7, &[(103, 1 << 12), (0, 0)]));
    }

    #[test]
    fn a_nack_answered_whole_leaves_the_compound_the_rest_stays() {
        let mut p = sender_report(1);
        p.extend(nack(1, 7, 5));
        p.extend(pli(1, 7));
        p.extend(nack(1, 8, 9));
        let a = answer(&mut p, |ssrc, _| ssrc == 7);
        assert_eq!((a.asked, a.taken), (2, 1));
        let mut want = sender_report(1);
        want.extend(pli(1, 7));
        want.extend(nack(1, 8, 9));
        assert_eq!(p[..a.len], want[..]);
        // Only NACKs, all answered: nothing left.
        let mut p = nack(1, 7, 5);
        assert_eq!(answer(&mut p, |_, _| true).len, 0);
    }
}
