//! RTX (RFC 4588) towards one receiver that negotiated it: for each media payload type its RTX
//! payload type (`apt`), for each media stream the RTX stream the bridge sends it repairs on,
//! with the bridge's own sequence numbers.
//!
//! The sequence of an RTX stream is a shared counter (an atomic: whatever worker answers a
//! NACK takes the next number), so an (SSRC, index) pair never goes out twice under the
//! receiver's SRTP key. It starts at a random 15-bit value (RFC 3550's advice for a first
//! sequence number), and the SRTP index is the counter itself (rollover in the high bits).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Most RTX streams one receiver may have.
pub const MAX_STREAMS: usize = 256;

/// Why an RTX configuration cannot be used. Messages name the list (the API prefixes `rtx.`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RtxError {
    /// A payload type above 127, or one in 64-95 (RTCP on a muxed port).
    #[error("payload_types: {0} is not a usable RTP payload type (0-63, 96-127)")]
    PayloadType(u32),
    /// The same media payload type or SSRC twice.
    #[error("{list}: {from} is mapped twice")]
    Duplicate {
        /// `payload_types` or `streams`.
        list: &'static str,
        /// The repeated value.
        from: u32,
    },
    /// An RTX SSRC that is also a media SSRC of the list, or 0.
    #[error("streams: {0} cannot be an RTX SSRC (0, or a media SSRC of the list)")]
    Ssrc(u32),
    /// More streams than the limit.
    #[error("streams: {0} streams, more than the limit of {MAX_STREAMS}")]
    TooMany(usize),
}

#[derive(Debug)]
struct Stream {
    media: u32,
    ssrc: u32,
    next: AtomicU64,
}

/// One receiver's RTX; see the module docs.
#[derive(Debug)]
pub struct Rtx {
    /// `pt[media] = rtx`, in the receiver's numbering (0: no RTX for it).
    pt: [u8; 128],
    streams: Box<[Stream]>,
}

/// The next repair of one stream: where it goes and under which number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Next {
    /// The RTX SSRC.
    pub ssrc: u32,
    /// The RTX payload type.
    pub pt: u8,
    /// The packet index (48 bits): its low 16 bits are the sequence number.
    pub index: u64,
}

impl Rtx {
    /// RTX with `(media, rtx)` payload types (the receiver's numbering) and `(media, rtx)`
    /// SSRCs; each stream's numbers start at `first(...)` (random in production). `None` when
    /// either list is empty (nothing to send RTX for).
    pub fn new(
        payload_types: &[(u32, u32)],
        streams: &[(u32, u32)],
        mut first: impl FnMut() -> u16,
    ) -> Result<Option<Self>, RtxError> {
        if streams.len() > MAX_STREAMS {
            return Err(RtxError::TooMany(streams.len()));
        }
        let mut pt = [0u8; 128];
        for &(media, rtx) in payload_types {
            for v in [media, rtx] {
                if v > 127 || (64..=95).contains(&v) {
                    return Err(RtxError::PayloadType(v));
                }
            }
            if pt[media as usize] != 0 {
                return Err(RtxError::Duplicate {
                    list: "payload_types",
                    from: media,
                });
            }
            pt[media as usize] = rtx as u8;
        }
        let mut out: Vec<Stream> = Vec::with_capacity(streams.len());
        for &(media, ssrc) in streams {
            if out.iter().any(|s| s.media == media) {
                return Err(RtxError::Duplicate {
                    list: "streams",
                    from: media,
                });
            }
            if ssrc == 0 || streams.iter().any(|&(m, _)| m == ssrc) {
                return Err(RtxError::Ssrc(ssrc));
            }
            out.push(Stream {
                media,
                ssrc,
                next: AtomicU64::new(u64::from(first() & 0x7fff)),
            });
        }
        if payload_types.is_empty() || out.is_empty() {
            return Ok(None);
        }
        Ok(Some(Self {
            pt,
            streams: out.into(),
        }))
    }

    /// Takes the next RTX number for a repair of media stream `ssrc` whose copy to this
    /// receiver has payload type `pt`; `None` when either has no RTX (then a plain resend).
    #[inline]
    pub fn next(&self, ssrc: u32, pt: u8) -> Option<Next> {
        let rtx_pt = *self.pt.get(usize::from(pt))?;
        if rtx_pt == 0 {
            return None;
        }
        let s = self.streams.iter().find(|s| s.media == ssrc)?;
        Some(Next {
            ssrc: s.ssrc,
            pt: rtx_pt,
            index: s.next.fetch_add(1, Relaxed) & 0xffff_ffff_ffff,
        })
    }
}

/// Turns the plain RTP packet `buf[..len]` (header `hl` bytes, already as this receiver gets
/// it) into its RTX packet in place (RFC 4588 section 4): SSRC, payload type and sequence
/// number from `next`, the original sequence number in front of the payload, the original's
/// padding and header extensions left out. `buf` needs 2 bytes of room after `len`. Returns the
/// RTX packet's length and header length.
pub fn wrap(buf: &mut [u8], hl: usize, len: usize, next: Next) -> Option<(usize, usize)> {
    if len < hl || hl < 12 {
        return None;
    }
    let pad = if buf[0] & 0x20 != 0 {
        usize::from(buf[len - 1])
    } else {
        0
    };
    let body = len.checked_sub(hl + pad)?;
    if buf.len() < hl + 2 + body {
        return None;
    }
    let osn = [buf[2], buf[3]];
    // Header extensions stay behind: their values (abs-send-time above all) were the original's,
    // and a receiver's delay-based estimator reading an old send time at a late arrival sees a
    // queue that is not there. RFC 4588 does not need them.
    let fixed = 12 + 4 * usize::from(buf[0] & 0x0f);
    let hl_out = fixed.min(hl);
    buf.copy_within(hl..hl + body, hl_out + 2);
    buf[hl_out..hl_out + 2].copy_from_slice(&osn);
    buf[0] &= !0x30;
    buf[1] = (buf[1] & 0x80) | next.pt;
    buf[2..4].copy_from_slice(&(next.index as u16).to_be_bytes());
    buf[8..12].copy_from_slice(&next.ssrc.to_be_bytes());
    Some((hl_out + 2 + body, hl_out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::rtp;

    #[test]
    fn repairs_get_their_own_ssrc_and_consecutive_numbers() {
        let rtx = Rtx::new(&[(96, 97), (100, 101)], &[(1000, 2000)], || 0xfffe)
            .unwrap()
            .unwrap();
        // The first number is kept below 2^15.
        let a = rtx.next(1000, 96).unwrap();
        assert_eq!((a.ssrc, a.pt, a.index), (2000, 97, 0x7ffe));
        let b = rtx.next(1000, 100).unwrap();
        assert_eq!((b.pt, b.index), (101, 0x7fff));
        assert_eq!(rtx.next(1000, 111), None, "no RTX for that codec");
        assert_eq!(rtx.next(1001, 96), None, "no RTX stream for that SSRC");
    }

    #[test]
    fn the_sequence_rolls_over_into_the_index() {
        let rtx = Rtx::new(&[(96, 97)], &[(1, 2)], || 0).unwrap().unwrap();
        rtx.streams[0].next.store(0xffff, Relaxed);
        assert_eq!(rtx.next(1, 96).unwrap().index, 0xffff);
        assert_eq!(rtx.next(1, 96).unwrap().index, 0x1_0000);
    }

    #[test]
    fn bad_configurations_name_the_list() {
        let e = |pts: &[(u32, u32)], s: &[(u32, u32)]| Rtx::new(pts, s, || 0).unwrap_err();
        assert_eq!(e(&[(96, 72)], &[(1, 2)]), RtxError::PayloadType(72));
        assert_eq!(e(&[(96, 128)], &[(1, 2)]), RtxError::PayloadType(128));
        assert!(
            e(&[(96, 97), (96, 98)], &[(1, 2)])
                .to_string()
                .starts_with("payload_types")
        );
        assert!(
            e(&[(96, 97)], &[(1, 2), (1, 3)])
                .to_string()
                .starts_with("streams")
        );
        assert_eq!(e(&[(96, 97)], &[(1, 2), (2, 3)]), RtxError::Ssrc(2));
        assert_eq!(e(&[(96, 97)], &[(1, 0)]), RtxError::Ssrc(0));
        assert!(Rtx::new(&[], &[(1, 2)], || 0).unwrap().is_none());
    }

    #[test]
    fn wrap_puts_the_original_sequence_number_before_the_payload() {
        let mut pkt = rtp(1000, 0x1234, 99, b"payload");
        pkt[1] = 0x80 | 96; // marker, PT 96
        let len = pkt.len();
        // With padding: 3 bytes, the last one says so.
        pkt.extend_from_slice(&[0, 0, 3]);
        pkt[0] |= 0x20;
        let padded = pkt.len();
        pkt.extend_from_slice(&[0xee; 2]); // the room wrap needs
        let next = Next {
            ssrc: 2000,
            pt: 97,
            index: 0x3_0005,
        };
        let (n, hl) = wrap(&mut pkt, 12, padded, next).unwrap();
        assert_eq!((n, hl), (len + 2, 12));
        let mut want = rtp(2000, 5, 99, b"\x12\x34payload");
        want[1] = 0x80 | 97;
        assert_eq!(pkt[..n], want[..]);
        // With a header extension (abs-send-time, id 3): left behind.
        let mut pkt = rtp(1000, 7, 99, b"");
        pkt[0] |= 0x10;
        pkt.extend_from_slice(&[0xbe, 0xde, 0, 1, 0x32, 1, 2, 3]);
        pkt.extend_from_slice(b"data");
        let len = pkt.len();
        pkt.extend_from_slice(&[0; 2]);
        let (n, hl) = wrap(&mut pkt, 20, len, next).unwrap();
        let mut want = rtp(2000, 5, 99, b"\x00\x07data");
        want[1] = 97;
        assert_eq!((&pkt[..n], hl), (&want[..], 12));
    }
}
