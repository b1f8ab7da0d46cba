//! Demultiplexes what arrives on the media port (RFC 7983 / RFC 5761): RTP, RTCP or neither.

/// What a datagram on the media port is, judged from its first two bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// RTP version 2 (payload type outside the RTCP range).
    Rtp,
    /// RTCP version 2: packet type 192..=223 (RFC 5761 section 4).
    Rtcp,
    /// Anything else: STUN, DTLS, random bytes, another RTP version, or too short to tell.
    Other,
}

/// Classifies a datagram. Reads at most two bytes; never fails.
#[inline]
pub fn classify(pkt: &[u8]) -> Class {
    match pkt {
        [b0, b1, ..] if b0 >> 6 == 2 => {
            if (192..=223).contains(b1) {
                Class::Rtcp
            } else {
                Class::Rtp
            }
        }
        _ => Class::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demux_by_first_bytes() {
        assert_eq!(classify(&[0x80, 96]), Class::Rtp);
        assert_eq!(classify(&[0x80, 96 | 0x80]), Class::Rtp); // marker bit set
        assert_eq!(classify(&[0x80, 200]), Class::Rtcp); // SR
        assert_eq!(classify(&[0x81, 205]), Class::Rtcp); // RTPFB
        assert_eq!(classify(&[0x00, 0x01]), Class::Other); // STUN binding request
        assert_eq!(classify(&[22, 254]), Class::Other); // DTLS handshake
        assert_eq!(classify(&[0x40, 96]), Class::Other); // RTP version 1
        assert_eq!(classify(&[0x80]), Class::Other);
        assert_eq!(classify(&[]), Class::Other);
    }
}
