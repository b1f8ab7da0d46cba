//! RTP header validation (RFC 3550 section 5.1), by way of `rtp-rs`.

use super::DropReason;

/// Validates an RTP packet's header (version, CSRC list, extension and padding lengths) and returns
/// its SSRC.
#[inline]
pub fn ssrc(pkt: &[u8]) -> Result<u32, DropReason> {
    match rtp_rs::RtpReader::new(pkt) {
        Ok(r) => Ok(r.ssrc()),
        Err(rtp_rs::RtpReaderError::UnsupportedVersion(_)) => Err(DropReason::NotRtp),
        Err(_) => Err(DropReason::Malformed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(ssrc: u32) -> Vec<u8> {
        let mut p = vec![0x80, 96, 0, 1, 0, 0, 0, 160];
        p.extend_from_slice(&ssrc.to_be_bytes());
        p
    }

    #[test]
    fn reads_ssrc() {
        let mut p = header(0xdead_beef);
        p.extend_from_slice(&[1, 2, 3]);
        assert_eq!(ssrc(&p), Ok(0xdead_beef));
    }

    #[test]
    fn rejects_truncated_and_inconsistent() {
        let p = header(7);
        assert_eq!(ssrc(&p[..11]), Err(DropReason::Malformed));
        let mut csrc = header(7);
        csrc[0] |= 2; // claims two CSRCs that are not there
        assert_eq!(ssrc(&csrc), Err(DropReason::Malformed));
        let mut ext = header(7);
        ext[0] |= 0x10; // claims an extension header that is not there
        assert_eq!(ssrc(&ext), Err(DropReason::Malformed));
    }
}
