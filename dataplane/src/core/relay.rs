//! The relay (Octo) wire format, sans-IO: sealing a plain RTP/RTCP packet for a link and opening
//! what arrives from one. The format is documented in `proto/ringbridge/v1/relay.md`: a 16-byte
//! header (type 0x0B, hop count and version, sender worker, link conference number, sequence)
//! as AAD, then the AES-GCM ciphertext and tag of the inner packet; one key per link direction.

use std::net::SocketAddr;

use aws_lc_rs::aead::{AES_128_GCM, AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use socket2::SockAddr;

use super::DropReason;

/// First byte of a relay packet (RFC 9443 leaves [4..15] to no protocol).
pub const TYPE: u8 = 0x0B;
/// Wire format version (the low 4 bits of the second byte; the high 4 are the hop count).
pub const VERSION: u8 = 2;
/// Relay links a packet may cross in all (the hop count a bridge seals a packet of its own
/// endpoints with). A pull tree is a few tiers deep; a loop of downstream relays programmed by
/// mistake ends after this many hops instead of circling forever.
pub const HOP_LIMIT: u8 = 8;
/// Header length.
pub const HEADER_LEN: usize = 16;
/// AES-GCM tag length.
pub const TAG_LEN: usize = 16;
/// Bytes a relay envelope adds to the inner packet.
pub const OVERHEAD: usize = HEADER_LEN + TAG_LEN;

/// A relay header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The sending bridge's worker.
    pub worker: u16,
    /// The link's conference number.
    pub link: u32,
    /// Per-worker sequence.
    pub seq: u64,
    /// Relay links the inner packet may still cross, this one included: a bridge forwards it on
    /// to further relays with one less, and not at all when this is 1 or less.
    pub hops: u8,
}

impl Header {
    /// Parses the header of a relay packet (type, version, length for a tag).
    pub fn parse(pkt: &[u8]) -> Result<Header, DropReason> {
        if pkt.len() < OVERHEAD || pkt[0] != TYPE || pkt[1] & 0x0f != VERSION {
            return Err(DropReason::Malformed);
        }
        Ok(Header {
            worker: u16::from_be_bytes([pkt[2], pkt[3]]),
            link: u32::from_be_bytes([pkt[4], pkt[5], pkt[6], pkt[7]]),
            seq: u64::from_be_bytes(pkt[8..16].try_into().expect("8 bytes")),
            hops: pkt[1] >> 4,
        })
    }

    fn write(&self, out: &mut [u8]) {
        out[0] = TYPE;
        out[1] = (self.hops.min(15) << 4) | VERSION;
        out[2..4].copy_from_slice(&self.worker.to_be_bytes());
        out[4..8].copy_from_slice(&self.link.to_be_bytes());
        out[8..16].copy_from_slice(&self.seq.to_be_bytes());
    }

    fn nonce(&self) -> Nonce {
        let mut n = [0u8; 12];
        n[2..4].copy_from_slice(&self.worker.to_be_bytes());
        n[4..12].copy_from_slice(&self.seq.to_be_bytes());
        Nonce::assume_unique_for_key(n)
    }
}

/// Why a relay key cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("must be 16 (AES-128-GCM) or 32 (AES-256-GCM) bytes, got {0}")]
pub struct BadKey(pub usize);

fn key(bytes: &[u8]) -> Result<LessSafeKey, BadKey> {
    let alg = match bytes.len() {
        16 => &AES_128_GCM,
        32 => &AES_256_GCM,
        n => return Err(BadKey(n)),
    };
    Ok(LessSafeKey::new(
        UnboundKey::new(alg, bytes).map_err(|_| BadKey(bytes.len()))?,
    ))
}

/// One relay of a conference: the remote bridge's address and the link's keys.
pub struct Relay {
    /// Bridge-wide identity (stream state on the receive side is keyed by it).
    pub uid: u64,
    /// The remote bridge's media address.
    pub addr: SocketAddr,
    /// `addr` encoded for the kernel.
    pub raw: SockAddr,
    /// The link's conference number.
    pub link: u32,
    /// The remote bridge pulls the conference's media from this one (a stream's next tier).
    pub downstream: bool,
    tx: LessSafeKey,
    rx: LessSafeKey,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("uid", &self.uid)
            .field("addr", &self.addr)
            .field("link", &self.link)
            .finish_non_exhaustive()
    }
}

impl Relay {
    /// A relay sealing with `tx_key` and opening with `rx_key` (16 or 32 bytes each).
    pub fn new(
        uid: u64,
        addr: SocketAddr,
        link: u32,
        tx_key: &[u8],
        rx_key: &[u8],
    ) -> Result<Self, (&'static str, BadKey)> {
        Ok(Self {
            uid,
            addr,
            raw: SockAddr::from(addr),
            link,
            downstream: false,
            tx: key(tx_key).map_err(|e| ("tx_key", e))?,
            rx: key(rx_key).map_err(|e| ("rx_key", e))?,
        })
    }

    /// Marks the remote bridge as pulling from this one (see [`Relay::downstream`]).
    pub fn pulling(mut self, downstream: bool) -> Self {
        self.downstream = downstream;
        self
    }

    /// Seals the plain packet `inner` of this bridge (one of its endpoints', or its own) into
    /// `out` as relay packet `seq` of `worker`, with the full [`HOP_LIMIT`]; returns its length,
    /// `None` if `out` is too small.
    pub fn seal(&self, worker: u16, seq: u64, inner: &[u8], out: &mut [u8]) -> Option<usize> {
        self.seal_hops(worker, seq, HOP_LIMIT, inner, out)
    }

    /// As [`Relay::seal`], for a packet that may cross `hops` more relay links (this one
    /// included). One copy (into `out`), then encryption in place.
    pub fn seal_hops(
        &self,
        worker: u16,
        seq: u64,
        hops: u8,
        inner: &[u8],
        out: &mut [u8],
    ) -> Option<usize> {
        let total = inner.len() + OVERHEAD;
        let out = out.get_mut(..total)?;
        let h = Header {
            worker,
            link: self.link,
            seq,
            hops,
        };
        h.write(out);
        let (head, rest) = out.split_at_mut(HEADER_LEN);
        let (body, tag_out) = rest.split_at_mut(inner.len());
        body.copy_from_slice(inner);
        let tag = self
            .tx
            .seal_in_place_separate_tag(h.nonce(), Aad::from(&*head), body)
            .ok()?;
        tag_out.copy_from_slice(tag.as_ref());
        Some(total)
    }

    /// Opens relay packet `pkt` (header `h`) in place; the inner packet is then
    /// `pkt[HEADER_LEN..HEADER_LEN + n]`, with `n` returned.
    pub fn open(&self, h: &Header, pkt: &mut [u8]) -> Result<usize, DropReason> {
        let (head, body) = pkt.split_at_mut(HEADER_LEN);
        self.rx
            .open_in_place(h.nonce(), Aad::from(&*head), body)
            .map(|p| p.len())
            .map_err(|_| DropReason::RelayAuth)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (Relay, Relay) {
        let (ka, kb) = ([1u8; 16], [2u8; 16]);
        let a = Relay::new(1, "127.0.0.1:2".parse().unwrap(), 7, &ka, &kb).unwrap();
        let b = Relay::new(2, "127.0.0.1:1".parse().unwrap(), 7, &kb, &ka).unwrap();
        (a, b)
    }

    #[test]
    fn seals_and_opens_and_refuses_tampering() {
        let (a, b) = pair();
        let inner = b"\x80\x60\x00\x01inner rtp packet";
        let mut buf = [0u8; 128];
        let n = a.seal(3, 99, inner, &mut buf).unwrap();
        assert_eq!(n, inner.len() + OVERHEAD);
        let h = Header::parse(&buf[..n]).unwrap();
        assert_eq!(
            h,
            Header {
                worker: 3,
                link: 7,
                seq: 99,
                hops: HOP_LIMIT,
            }
        );
        // The hop count is authenticated (the header is the AAD) and read back as sealed.
        let n2 = a.seal_hops(3, 100, 1, inner, &mut buf).unwrap();
        assert_eq!(Header::parse(&buf[..n2]).unwrap().hops, 1);
        let mut v1 = buf[..n2].to_vec();
        v1[1] = 1; // version 1 had no hop count
        assert_eq!(Header::parse(&v1), Err(DropReason::Malformed));
        let n = a.seal(3, 99, inner, &mut buf).unwrap();
        let mut pkt = buf[..n].to_vec();
        let m = b.open(&h, &mut pkt).unwrap();
        assert_eq!(&pkt[HEADER_LEN..HEADER_LEN + m], inner);
        // A flipped bit anywhere (header included: it is the AAD) fails authentication.
        // (0x10 at byte 1: a hop count raised on the way.)
        for (i, bit) in [
            (1usize, 1u8),
            (1, 0x10),
            (5, 1),
            (12, 1),
            (20, 1),
            (n - 1, 1),
        ] {
            let mut bad = buf[..n].to_vec();
            bad[i] ^= bit;
            let h = Header::parse(&bad).unwrap_or(h);
            assert!(matches!(
                b.open(&h, &mut bad),
                Err(DropReason::RelayAuth) | Err(DropReason::Malformed)
            ));
        }
        // The sender's own key does not open it (one key per direction).
        let mut pkt = buf[..n].to_vec();
        assert_eq!(a.open(&h, &mut pkt), Err(DropReason::RelayAuth));
        assert_eq!(Header::parse(&buf[..10]), Err(DropReason::Malformed));
        assert!(Relay::new(1, a.addr, 1, &[0; 15], &[0; 16]).is_err());
    }
}
