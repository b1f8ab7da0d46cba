//! The RTP header (RFC 3550 section 5.1), parsed once per packet and handed on: to SRTP (which
//! needs its length, and under which the payload and padding are encrypted) and to the
//! forwarding decision. Own code rather than `rtp-rs`: its reader validates header, payload and
//! padding in one step, which cannot run before SRTP decryption, so the packet was parsed twice.

use super::DropReason;

/// The data of header extension element `id` (RFC 8285, one-byte or two-byte form) in RTP
/// header `hdr`, if it has one.
pub fn extension(hdr: &[u8], id: u8) -> Option<&[u8]> {
    if hdr.len() < 12 || hdr[0] & 0x10 == 0 || id == 0 {
        return None;
    }
    let at = 12 + 4 * usize::from(hdr[0] & 0x0f);
    let profile = u16::from_be_bytes([*hdr.get(at)?, *hdr.get(at + 1)?]);
    let words = usize::from(u16::from_be_bytes([*hdr.get(at + 2)?, *hdr.get(at + 3)?]));
    let block = hdr.get(at + 4..at + 4 + 4 * words)?;
    let mut i = 0;
    if profile == 0xbede {
        while i < block.len() {
            let b = block[i];
            if b == 0 {
                i += 1;
                continue;
            }
            let (eid, len) = (b >> 4, usize::from(b & 0x0f) + 1);
            if eid == 15 {
                return None;
            }
            if eid == id {
                return block.get(i + 1..i + 1 + len);
            }
            i += 1 + len;
        }
    } else if profile & 0xfff0 == 0x1000 {
        while i + 1 < block.len() {
            let (eid, len) = (block[i], usize::from(block[i + 1]));
            if eid == 0 {
                i += 1;
                continue;
            }
            if eid == id {
                return block.get(i + 2..i + 2 + len);
            }
            i += 2 + len;
        }
    }
    None
}

/// Length of the fixed header.
pub const FIXED_LEN: usize = 12;

/// An RTP header as it arrives (in the clear also under SRTP).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Header length: fixed part, CSRCs and extension.
    pub len: usize,
    /// Padding bit: the last payload byte counts padding bytes (checked on the plain packet).
    pub padding: bool,
    /// Marker bit.
    pub marker: bool,
    /// Payload type.
    pub pt: u8,
    /// Sequence number.
    pub seq: u16,
    /// Timestamp.
    pub ts: u32,
    /// Synchronization source.
    pub ssrc: u32,
}

impl Header {
    /// Parses the header of `pkt`: version 2, and the CSRC list and extension within the packet.
    pub fn parse(pkt: &[u8]) -> Result<Header, DropReason> {
        if pkt.len() < FIXED_LEN {
            return Err(DropReason::Malformed);
        }
        if pkt[0] >> 6 != 2 {
            return Err(DropReason::NotRtp);
        }
        let mut len = FIXED_LEN + 4 * usize::from(pkt[0] & 0x0f);
        if pkt[0] & 0x10 != 0 {
            let ext = pkt.get(len + 2..len + 4).ok_or(DropReason::Malformed)?;
            len += 4 + 4 * usize::from(u16::from_be_bytes([ext[0], ext[1]]));
        }
        if len > pkt.len() {
            return Err(DropReason::Malformed);
        }
        Ok(Header {
            len,
            padding: pkt[0] & 0x20 != 0,
            marker: pkt[1] & 0x80 != 0,
            pt: pkt[1] & 0x7f,
            seq: u16::from_be_bytes([pkt[2], pkt[3]]),
            ts: u32::from_be_bytes([pkt[4], pkt[5], pkt[6], pkt[7]]),
            ssrc: u32::from_be_bytes([pkt[8], pkt[9], pkt[10], pkt[11]]),
        })
    }

    /// Checks the padding of the plain packet this header belongs to: the count in its last
    /// byte must be at least 1 and fit in the payload.
    pub fn check_padding(&self, plain: &[u8]) -> Result<(), DropReason> {
        if !self.padding {
            return Ok(());
        }
        match plain.last() {
            Some(&n) if n > 0 && usize::from(n) <= plain.len() - self.len => Ok(()),
            _ => Err(DropReason::Malformed),
        }
    }
}

/// Validates a plain RTP packet (header and padding) and returns its SSRC.
#[inline]
pub fn ssrc(pkt: &[u8]) -> Result<u32, DropReason> {
    let h = Header::parse(pkt)?;
    h.check_padding(pkt)?;
    Ok(h.ssrc)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(ssrc: u32) -> Vec<u8> {
        let mut p = vec![0x80, 96 | 0x80, 0, 1, 0, 0, 0, 160];
        p.extend_from_slice(&ssrc.to_be_bytes());
        p
    }

    #[test]
    fn reads_every_field() {
        let mut p = header(0xdead_beef);
        p.extend_from_slice(&[1, 2, 3]);
        let h = Header::parse(&p).unwrap();
        assert_eq!(
            h,
            Header {
                len: 12,
                padding: false,
                marker: true,
                pt: 96,
                seq: 1,
                ts: 160,
                ssrc: 0xdead_beef
            }
        );
        assert_eq!(ssrc(&p), Ok(0xdead_beef));
        // CSRCs and an extension count in the header length.
        let mut q = header(7);
        q[0] |= 0x10 | 1;
        q.extend_from_slice(&[0, 0, 0, 9]); // one CSRC
        q.extend_from_slice(&[0xbe, 0xde, 0, 1, 1, 2, 3, 4]); // extension of one word
        q.push(0xaa);
        assert_eq!(Header::parse(&q).unwrap().len, 12 + 4 + 8);
    }

    #[test]
    fn rejects_truncated_inconsistent_and_other_versions() {
        let p = header(7);
        assert_eq!(ssrc(&p[..11]), Err(DropReason::Malformed));
        let mut csrc = header(7);
        csrc[0] |= 2; // claims two CSRCs that are not there
        assert_eq!(ssrc(&csrc), Err(DropReason::Malformed));
        let mut ext = header(7);
        ext[0] |= 0x10; // claims an extension header that is not there
        assert_eq!(ssrc(&ext), Err(DropReason::Malformed));
        let mut v1 = header(7);
        v1[0] = 0x40;
        assert_eq!(ssrc(&v1), Err(DropReason::NotRtp));
        let mut pad = header(7);
        pad[0] |= 0x20;
        pad.extend_from_slice(&[0, 0, 3]);
        assert_eq!(ssrc(&pad), Ok(7));
        *pad.last_mut().unwrap() = 4; // more padding than payload
        assert_eq!(ssrc(&pad), Err(DropReason::Malformed));
        *pad.last_mut().unwrap() = 0;
        assert_eq!(ssrc(&pad), Err(DropReason::Malformed));
    }
}
