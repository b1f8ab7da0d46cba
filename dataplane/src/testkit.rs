//! Packet builders for the demo, tests, benches and the load rig: the one place that writes RTP
//! and RTCP, so every client of the bridge frames packets the same way.

pub mod netns;

/// Length of the RTP header [`write_rtp_header`] writes.
pub const RTP_HEADER_LEN: usize = 12;

/// Writes an RTP header (version 2, no CSRCs or extension, payload type 96) into `buf[..12]`.
pub fn write_rtp_header(buf: &mut [u8], ssrc: u32, seq: u16, timestamp: u32) {
    buf[0] = 0x80;
    buf[1] = 96;
    buf[2..4].copy_from_slice(&seq.to_be_bytes());
    buf[4..8].copy_from_slice(&timestamp.to_be_bytes());
    buf[8..12].copy_from_slice(&ssrc.to_be_bytes());
}

/// An RTP packet with the header of [`write_rtp_header`] and `payload`.
pub fn rtp(ssrc: u32, seq: u16, timestamp: u32, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0; RTP_HEADER_LEN + payload.len()];
    write_rtp_header(&mut p, ssrc, seq, timestamp);
    p[RTP_HEADER_LEN..].copy_from_slice(payload);
    p
}

/// One RTCP packet with count/format `fmt`, packet type `pt` and `body` (zero-padded to 32 bits).
pub fn rtcp(fmt: u8, pt: u8, body: &[u8]) -> Vec<u8> {
    let mut b = body.to_vec();
    while !b.len().is_multiple_of(4) {
        b.push(0);
    }
    let words = (b.len() / 4) as u16;
    let mut p = vec![0x80 | fmt, pt];
    p.extend_from_slice(&words.to_be_bytes());
    p.extend_from_slice(&b);
    p
}

/// A sender report with no report blocks.
pub fn sender_report(ssrc: u32) -> Vec<u8> {
    let mut body = ssrc.to_be_bytes().to_vec();
    body.extend_from_slice(&[0; 20]);
    rtcp(0, 200, &body)
}

/// Feedback with the common header (`sender`, `media`) and an FCI.
pub fn feedback(fmt: u8, pt: u8, sender: u32, media: u32, fci: &[u8]) -> Vec<u8> {
    let mut body = sender.to_be_bytes().to_vec();
    body.extend_from_slice(&media.to_be_bytes());
    body.extend_from_slice(fci);
    rtcp(fmt, pt, &body)
}

/// Picture Loss Indication (PSFB, FMT 1) about `media`.
pub fn pli(sender: u32, media: u32) -> Vec<u8> {
    feedback(1, 206, sender, media, &[])
}

/// Generic NACK (RTPFB, FMT 1) for packet `pid` of `media`.
pub fn nack(sender: u32, media: u32, pid: u16) -> Vec<u8> {
    let mut fci = pid.to_be_bytes().to_vec();
    fci.extend_from_slice(&[0, 0]);
    feedback(1, 205, sender, media, &fci)
}

/// Full Intra Request (PSFB, FMT 4) for each of `media`.
pub fn fir(sender: u32, media: &[u32]) -> Vec<u8> {
    let mut fci = Vec::new();
    for m in media {
        fci.extend_from_slice(&m.to_be_bytes());
        fci.extend_from_slice(&[1, 0, 0, 0]);
    }
    feedback(4, 206, sender, 0, &fci)
}

/// REMB (PSFB, FMT 15) announcing an estimate for `media`.
pub fn remb(sender: u32, media: &[u32]) -> Vec<u8> {
    let mut fci = b"REMB".to_vec();
    fci.extend_from_slice(&[media.len() as u8, 0x10, 0, 0]);
    for m in media {
        fci.extend_from_slice(&m.to_be_bytes());
    }
    feedback(15, 206, sender, 0, &fci)
}
