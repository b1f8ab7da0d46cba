//! The workers' side of the slow path beside the packet path: STUN (first byte 0-3) and DTLS
//! (20-63) datagrams on the media port (RFC 7983 demultiplexing) are copied out of the receive
//! buffer into one bounded queue per bridge, which the WebRTC transport drains
//! ([`crate::webrtc::task`]). A full queue drops the datagram (counted as
//! [`super::DropReason::TransportQueueFull`]): a flood of STUN or DTLS cannot grow memory or
//! hold a worker up, and RTP never reaches this code (the core only comes here for what is not
//! RTP or RTCP). The copy and the queue's slot are the slow path's; nothing here blocks.

use std::net::SocketAddr;

use crossbeam_channel::{Receiver, Sender, TrySendError};

use super::{Counters, DropReason};

/// Datagrams the queue holds before it drops: a few seconds of every check and handshake
/// datagram of a thousand endpoints connecting at once.
pub const CAPACITY: usize = 4096;

/// What a slow-path datagram is, by its first byte (RFC 7983 section 7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// STUN (0-3): ICE connectivity and consent checks.
    Stun,
    /// DTLS (20-63): the DTLS-SRTP handshake.
    Dtls,
}

impl Kind {
    /// The kind of `pkt`, if it is STUN or DTLS by its first byte.
    #[inline]
    pub fn of(pkt: &[u8]) -> Option<Kind> {
        match pkt.first()? {
            0..=3 => Some(Kind::Stun),
            20..=63 => Some(Kind::Dtls),
            _ => None,
        }
    }
}

/// A STUN or DTLS datagram, copied off the media port, and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Datagram {
    /// The source address.
    pub from: SocketAddr,
    /// The datagram.
    pub data: Box<[u8]>,
}

/// A worker's end of the queue (each worker holds a clone).
#[derive(Debug, Clone)]
pub struct Handoff(Sender<Datagram>);

/// A queue of `capacity` datagrams: the workers' end and the transport's.
pub fn queue(capacity: usize) -> (Handoff, Receiver<Datagram>) {
    let (tx, rx) = crossbeam_channel::bounded(capacity);
    (Handoff(tx), rx)
}

impl Handoff {
    /// Copies `pkt` from `from` into the queue; false when the queue is full (or the transport
    /// is gone): the datagram is dropped. Never blocks; allocates only when there is room.
    pub fn offer(&self, pkt: &[u8], from: SocketAddr) -> bool {
        if self.0.is_full() {
            return false;
        }
        let d = Datagram {
            from,
            data: pkt.into(),
        };
        match self.0.try_send(d) {
            Ok(()) => true,
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => false,
        }
    }
}

/// Copies a STUN or DTLS datagram to the transport's queue, counting it in `c` as `stun_rx` or
/// `dtls_rx` (and as `TransportQueueFull` when the queue had no room). The slow path.
#[cold]
pub fn hand_over(h: &Handoff, kind: Kind, pkt: &[u8], src: SocketAddr, c: &mut Counters) {
    match kind {
        Kind::Stun => c.stun_rx += 1,
        Kind::Dtls => c.dtls_rx += 1,
    }
    if !h.offer(pkt, src) {
        c.drop(DropReason::TransportQueueFull);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_by_first_byte() {
        assert_eq!(Kind::of(&[0x00, 0x01]), Some(Kind::Stun));
        assert_eq!(Kind::of(&[3]), Some(Kind::Stun));
        assert_eq!(Kind::of(&[22, 0xfe, 0xfd]), Some(Kind::Dtls));
        assert_eq!(Kind::of(&[20]), Some(Kind::Dtls));
        assert_eq!(Kind::of(&[63]), Some(Kind::Dtls));
        for not in [4u8, 11, 19, 64, 0x80, 0xff] {
            assert_eq!(Kind::of(&[not]), None, "{not}");
        }
        assert_eq!(Kind::of(&[]), None);
    }

    #[test]
    fn a_full_queue_drops() {
        let (h, rx) = queue(2);
        let from = SocketAddr::from(([127, 0, 0, 1], 9));
        assert!(h.offer(b"\x00\x01a", from));
        assert!(h.offer(b"\x00\x01b", from));
        assert!(!h.offer(b"\x00\x01c", from));
        assert_eq!(&*rx.try_recv().unwrap().data, b"\x00\x01a");
        assert!(h.offer(b"\x00\x01d", from));
        drop(rx);
        assert!(!h.offer(b"\x00\x01e", from), "transport gone");
    }
}
