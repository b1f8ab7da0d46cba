//! What participants send: streams of RTP packets whose payload starts with a [`Stamp`].

use ringbridge_dataplane::testkit::{RTP_HEADER_LEN, write_rtp_header};

/// Marks payloads written by this rig.
/// Every payload starts with these bytes, which a VP8 depacketizer reads as the start of a
/// keyframe (descriptor `0x10`: start of partition 0; frame tag `0x00`: key frame), so a bridge
/// forwarding the stream as a simulcast layer switches to it at once; then "LG".
const MAGIC: u32 = 0x1000_4c47;
/// Bytes of RTP header plus stamp: the smallest packet the rig sends.
pub const MIN_PACKET: usize = RTP_HEADER_LEN + 28;
/// Largest packet the rig sends.
pub const MAX_PACKET: usize = 1400;

/// One RTP stream of a participant.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Stream {
    /// Packets per second.
    pub pps: f64,
    /// Packet size in bytes, RTP header included.
    pub size: usize,
}

/// The load every participant offers.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Load {
    /// Streams each participant sends (each with its own SSRC).
    pub streams: Vec<Stream>,
}

impl Load {
    /// `--audio`: 50 packets/s of 160 bytes (20 ms Opus frames).
    pub fn audio() -> Stream {
        Stream {
            pps: 50.0,
            size: 160,
        }
    }

    /// `--video-kbps K`: 1200-byte packets at K kbit/s.
    pub fn video(kbps: f64) -> Stream {
        Stream {
            pps: kbps * 1000.0 / 8.0 / 1200.0,
            size: 1200,
        }
    }

    /// Packets per second one participant sends over all its streams.
    pub fn pps_per_participant(&self) -> f64 {
        self.streams.iter().map(|s| s.pps).sum()
    }

    /// The same mix at `factor` times the rate.
    pub fn scaled(&self, factor: f64) -> Load {
        Load {
            streams: self
                .streams
                .iter()
                .map(|s| Stream {
                    pps: s.pps * factor,
                    size: s.size,
                })
                .collect(),
        }
    }
}

/// What every payload starts with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// Run this packet belongs to (late packets of an earlier run are ignored).
    pub run: u32,
    /// Sending participant (global index).
    pub sender: u32,
    /// Stream of that participant.
    pub stream: u32,
    /// Sequence number within the stream, from 0.
    pub seq: u64,
    /// Send time, nanoseconds since the rig's epoch (same clock as the receiver).
    pub sent_ns: u64,
}

/// Writes an RTP packet of `size` bytes (at least [`MIN_PACKET`]) carrying `stamp` into `buf`.
/// `index` is the packet's extended sequence number (its SRTP index): the header carries its
/// low 16 bits and a timestamp of `index` x 960.
pub fn write(buf: &mut [u8], ssrc: u32, index: u64, stamp: &Stamp, size: usize) -> usize {
    let size = size.clamp(MIN_PACKET, buf.len());
    write_rtp_header(buf, ssrc, index as u16, (index as u32).wrapping_mul(960));
    let p = &mut buf[RTP_HEADER_LEN..];
    p[0..4].copy_from_slice(&MAGIC.to_be_bytes());
    p[4..8].copy_from_slice(&stamp.run.to_be_bytes());
    p[8..10].copy_from_slice(&(stamp.sender as u16).to_be_bytes());
    p[10..12].copy_from_slice(&(stamp.stream as u16).to_be_bytes());
    p[12..20].copy_from_slice(&stamp.seq.to_be_bytes());
    p[20..28].copy_from_slice(&stamp.sent_ns.to_be_bytes());
    size
}

/// Reads the stamp of a packet written by [`write`]; `None` for anything else.
pub fn read(pkt: &[u8]) -> Option<Stamp> {
    let p = pkt.get(RTP_HEADER_LEN..MIN_PACKET)?;
    let u = |r: std::ops::Range<usize>| p[r].iter().fold(0u64, |a, &b| a << 8 | u64::from(b));
    (u(0..4) == u64::from(MAGIC)).then(|| Stamp {
        run: u(4..8) as u32,
        sender: u(8..10) as u32,
        stream: u(10..12) as u32,
        seq: u(12..20),
        sent_ns: u(20..28),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamp_round_trips() {
        let s = Stamp {
            run: 3,
            sender: 17,
            stream: 1,
            seq: 1 << 40,
            sent_ns: 123_456_789,
        };
        let mut buf = [0u8; MAX_PACKET];
        let n = write(&mut buf, 9, 5, &s, 160);
        assert_eq!(n, 160);
        assert_eq!(read(&buf[..n]), Some(s));
        assert_eq!(read(&buf[..20]), None);
        assert_eq!(Load::video(1200.0).pps, 125.0);
    }
}
