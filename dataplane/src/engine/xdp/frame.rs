//! Ethernet frames of UDP datagrams, sans-IO: reading a received one (who sent it, to whom, and
//! where its payload is) and writing one to a destination from a per-destination header
//! template, patched per packet (lengths, IPv4 id and header checksum, the IPv6 UDP checksum).
//! Only what the XDP program hands over is read: IPv4 without options or fragments, IPv6
//! without extension headers.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ops::Range;

/// Ethernet header bytes (no VLAN tag).
pub const ETH: usize = 14;
const IPV4: usize = 20;
const IPV6: usize = 40;
const UDP: usize = 8;
const ETHERTYPE_IPV4: [u8; 2] = [0x08, 0x00];
const ETHERTYPE_IPV6: [u8; 2] = [0x86, 0xdd];
const PROTO_UDP: u8 = 17;
/// Hop limit of the datagrams written.
const TTL: u8 = 64;

/// A received UDP datagram's addresses and where its payload is in the frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Datagram {
    /// Its source (the peer).
    pub src: SocketAddr,
    /// Its destination (this bridge).
    pub dst: SocketAddr,
    /// Its payload's bytes in the frame.
    pub payload: Range<usize>,
}

/// Reads Ethernet frame `f`: the UDP datagram it carries, if it is one the XDP program hands
/// over (IPv4 without options or fragments, IPv6 without extension headers) and its lengths are
/// consistent (trailing padding allowed).
pub fn parse(f: &[u8]) -> Option<Datagram> {
    let ethertype: [u8; 2] = f.get(12..14)?.try_into().ok()?;
    let (src, dst, udp) = match ethertype {
        ETHERTYPE_IPV4 => {
            let ip = f.get(ETH..ETH + IPV4)?;
            let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
            if ip[0] != 0x45
                || u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff != 0
                || ip[9] != PROTO_UDP
                || total < IPV4 + UDP
                || ETH + total > f.len()
            {
                return None;
            }
            let src = Ipv4Addr::from(<[u8; 4]>::try_from(&ip[12..16]).ok()?);
            let dst = Ipv4Addr::from(<[u8; 4]>::try_from(&ip[16..20]).ok()?);
            (IpAddr::V4(src), IpAddr::V4(dst), ETH + IPV4)
        }
        ETHERTYPE_IPV6 => {
            let ip = f.get(ETH..ETH + IPV6)?;
            let payload = usize::from(u16::from_be_bytes([ip[4], ip[5]]));
            if ip[0] >> 4 != 6 || ip[6] != PROTO_UDP || payload < UDP {
                return None;
            }
            let src = Ipv6Addr::from(<[u8; 16]>::try_from(&ip[8..24]).ok()?);
            let dst = Ipv6Addr::from(<[u8; 16]>::try_from(&ip[24..40]).ok()?);
            (IpAddr::V6(src), IpAddr::V6(dst), ETH + IPV6)
        }
        _ => return None,
    };
    let h = f.get(udp..udp + UDP)?;
    let len = usize::from(u16::from_be_bytes([h[4], h[5]]));
    if len < UDP || udp + len > f.len() {
        return None;
    }
    Some(Datagram {
        src: SocketAddr::new(src, u16::from_be_bytes([h[0], h[1]])),
        dst: SocketAddr::new(dst, u16::from_be_bytes([h[2], h[3]])),
        payload: udp + UDP..udp + len,
    })
}

/// The headers of every datagram to one destination, from this bridge: Ethernet (the next
/// hop's address and ours), IP and UDP, with lengths, IPv4 id and checksums left to
/// [`Template::write`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    header: [u8; ETH + IPV6 + UDP],
    len: usize,
    v6: bool,
    /// One's-complement sum of the header's fixed IPv4 words (checksum, id and length left
    /// out), or of the IPv6 pseudo-header's addresses and protocol.
    partial: u32,
}

impl Template {
    /// Datagrams from `src` to `dst` (the same family), in frames from MAC `ours` to MAC
    /// `next_hop`.
    pub fn new(ours: [u8; 6], next_hop: [u8; 6], src: SocketAddr, dst: SocketAddr) -> Option<Self> {
        let mut h = [0u8; ETH + IPV6 + UDP];
        h[0..6].copy_from_slice(&next_hop);
        h[6..12].copy_from_slice(&ours);
        let (len, v6, partial) = match (src.ip(), dst.ip()) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                h[12..14].copy_from_slice(&ETHERTYPE_IPV4);
                let ip = &mut h[ETH..ETH + IPV4];
                ip[0] = 0x45;
                ip[6] = 0x40; // don't fragment
                ip[8] = TTL;
                ip[9] = PROTO_UDP;
                ip[12..16].copy_from_slice(&s.octets());
                ip[16..20].copy_from_slice(&d.octets());
                (ETH + IPV4 + UDP, false, sum(0, ip))
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                h[12..14].copy_from_slice(&ETHERTYPE_IPV6);
                let ip = &mut h[ETH..ETH + IPV6];
                ip[0] = 0x60;
                ip[6] = PROTO_UDP;
                ip[7] = TTL;
                ip[8..24].copy_from_slice(&s.octets());
                ip[24..40].copy_from_slice(&d.octets());
                let pseudo = sum(sum(0, &s.octets()), &d.octets()) + u32::from(PROTO_UDP);
                (ETH + IPV6 + UDP, true, pseudo)
            }
            _ => return None,
        };
        let udp = &mut h[len - UDP..len];
        udp[0..2].copy_from_slice(&src.port().to_be_bytes());
        udp[2..4].copy_from_slice(&dst.port().to_be_bytes());
        let partial = if v6 {
            // The ports are in the UDP checksum too.
            sum(partial, &h[len - UDP..len - UDP + 4])
        } else {
            partial
        };
        Some(Self {
            header: h,
            len,
            v6,
            partial,
        })
    }

    /// The same headers to another port of the same destination address (what a new
    /// destination behind an already resolved address gets without asking the kernel).
    pub fn to_port(&self, port: u16) -> Self {
        let mut t = self.clone();
        let at = t.len - UDP + 2;
        let old = [t.header[at], t.header[at + 1]];
        t.header[at..at + 2].copy_from_slice(&port.to_be_bytes());
        if t.v6 {
            // Swap the old port's word for the new one in the UDP checksum's partial sum
            // (one's complement: adding the complement subtracts).
            let s = t.partial + u32::from(!u16::from_be_bytes(old)) + u32::from(port);
            t.partial = u32::from(fold(s));
        }
        t
    }

    /// The destination's address, as the headers have it.
    pub fn destination(&self) -> SocketAddr {
        let port = u16::from_be_bytes([
            self.header[self.len - UDP + 2],
            self.header[self.len - UDP + 3],
        ]);
        let ip = if self.v6 {
            IpAddr::V6(Ipv6Addr::from(
                <[u8; 16]>::try_from(&self.header[ETH + 24..ETH + 40]).expect("16 bytes"),
            ))
        } else {
            IpAddr::V4(Ipv4Addr::from(
                <[u8; 4]>::try_from(&self.header[ETH + 16..ETH + 20]).expect("4 bytes"),
            ))
        };
        SocketAddr::new(ip, port)
    }

    /// Header bytes before the payload.
    pub fn header_len(&self) -> usize {
        self.len
    }

    /// Writes the headers for a payload of `payload_len` bytes, already at
    /// `out[header_len()..]`, into `out[..header_len()]`, with IPv4 id `id`; returns the frame's
    /// length. `None` when `out` is too short or the datagram too long for IP.
    pub fn write(&self, out: &mut [u8], payload_len: usize, id: u16) -> Option<usize> {
        let total = self.len + payload_len;
        let udp_len = u16::try_from(UDP + payload_len).ok()?;
        if out.len() < total {
            return None;
        }
        out[..self.len].copy_from_slice(&self.header[..self.len]);
        out[self.len - UDP + 4..self.len - UDP + 6].copy_from_slice(&udp_len.to_be_bytes());
        if self.v6 {
            out[ETH + 4..ETH + 6].copy_from_slice(&udp_len.to_be_bytes());
            // Pseudo-header (addresses, protocol, UDP length) + UDP header + payload.
            let s = self.partial + 2 * u32::from(udp_len);
            let s = sum(s, &out[self.len..total]);
            let c = !fold(s);
            // A computed 0 goes as all ones (0 means "no checksum", not allowed over IPv6).
            let c = if c == 0 { 0xffff } else { c };
            out[self.len - 2..self.len].copy_from_slice(&c.to_be_bytes());
        } else {
            let ip_len = u16::try_from(IPV4 + UDP + payload_len).ok()?;
            out[ETH + 2..ETH + 4].copy_from_slice(&ip_len.to_be_bytes());
            out[ETH + 4..ETH + 6].copy_from_slice(&id.to_be_bytes());
            let s = self.partial + u32::from(ip_len) + u32::from(id);
            out[ETH + 10..ETH + 12].copy_from_slice(&(!fold(s)).to_be_bytes());
            // No UDP checksum (allowed over IPv4): the payload is authenticated end to end.
        }
        Some(total)
    }
}

/// Adds `bytes` (big-endian 16-bit words, an odd last byte padded) to one's-complement sum `s`.
fn sum(mut s: u32, bytes: &[u8]) -> u32 {
    let mut words = bytes.chunks_exact(2);
    for w in &mut words {
        s += u32::from(u16::from_be_bytes([w[0], w[1]]));
        // Fold now and then: never overflows, whatever the length.
        if s > 0xfff0_0000 {
            s = (s & 0xffff) + (s >> 16);
        }
    }
    if let [last] = words.remainder() {
        s += u32::from(*last) << 8;
    }
    s
}

/// Folds a one's-complement sum to 16 bits.
fn fold(mut s: u32) -> u16 {
    while s >> 16 != 0 {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: [u8; 6] = [2, 0, 0, 0, 0, 1];
    const B: [u8; 6] = [2, 0, 0, 0, 0, 2];

    fn frame(t: &Template, payload: &[u8], id: u16) -> Vec<u8> {
        let mut out = vec![0u8; t.header_len() + payload.len()];
        out[t.header_len()..].copy_from_slice(payload);
        let n = t.write(&mut out, payload.len(), id).unwrap();
        assert_eq!(n, out.len());
        out
    }

    #[test]
    fn an_ipv4_frame_reads_back_and_its_header_checksum_verifies() {
        let src: SocketAddr = "10.0.0.1:5004".parse().unwrap();
        let dst: SocketAddr = "10.0.0.2:40000".parse().unwrap();
        let t = Template::new(A, B, src, dst).unwrap();
        let f = frame(&t, b"hello rtp", 0x1234);
        assert_eq!(&f[0..6], &B);
        assert_eq!(&f[6..12], &A);
        let d = parse(&f).unwrap();
        assert_eq!((d.src, d.dst), (src, dst));
        assert_eq!(&f[d.payload], b"hello rtp");
        assert_eq!(fold(sum(0, &f[ETH..ETH + IPV4])), 0xffff, "header checksum");
        assert_eq!(&f[ETH + 4..ETH + 6], &0x1234u16.to_be_bytes());
        // This header's checksum, computed apart (45 00 00 25 12 34 40 00 40 11 .. .. 0a 00 00
        // 01 0a 00 00 02).
        assert_eq!(&f[ETH + 10..ETH + 12], &[0x14, 0x92]);
    }

    #[test]
    fn an_ipv6_frame_reads_back_and_its_udp_checksum_verifies() {
        let src: SocketAddr = "[fd00::1]:5004".parse().unwrap();
        let dst: SocketAddr = "[fd00::2]:40000".parse().unwrap();
        let t = Template::new(A, B, src, dst).unwrap();
        for payload in [&b"hello rtp"[..], b"even", b""] {
            let f = frame(&t, payload, 7);
            let d = parse(&f).unwrap();
            assert_eq!((d.src, d.dst), (src, dst));
            assert_eq!(&f[d.payload.clone()], payload);
            // Pseudo-header + UDP header + payload sums to all ones.
            let udp = &f[ETH + IPV6..];
            let mut s = sum(0, &f[ETH + 8..ETH + 40]);
            s += u32::from(PROTO_UDP) + udp.len() as u32;
            assert_eq!(fold(sum(s, udp)), 0xffff, "UDP checksum of {payload:?}");
        }
    }

    #[test]
    fn a_template_moved_to_another_port_writes_what_a_new_one_would() {
        for (src, dst) in [
            ("10.0.0.1:5004", "10.0.0.2:40000"),
            ("[fd00::1]:5004", "[fd00::2]:40000"),
        ] {
            let (src, dst): (SocketAddr, SocketAddr) = (src.parse().unwrap(), dst.parse().unwrap());
            let t = Template::new(A, B, src, dst).unwrap();
            for port in [1, 40001, 65535, 0x8000] {
                let mut other = dst;
                other.set_port(port);
                let moved = t.to_port(port);
                assert_eq!(moved.destination(), other);
                let fresh = Template::new(A, B, src, other).unwrap();
                for payload in [&b"hello rtp"[..], b"\xff\xff\xff", b""] {
                    assert_eq!(
                        frame(&moved, payload, 9),
                        frame(&fresh, payload, 9),
                        "{other}"
                    );
                }
            }
        }
    }

    #[test]
    fn frames_the_program_passes_on_are_not_read() {
        let src: SocketAddr = "10.0.0.1:5004".parse().unwrap();
        let dst: SocketAddr = "10.0.0.2:40000".parse().unwrap();
        let t = Template::new(A, B, src, dst).unwrap();
        let f = frame(&t, b"x", 1);
        let with = |at: usize, v: u8| {
            let mut g = f.clone();
            g[at] = v;
            g
        };
        assert!(parse(&with(ETH, 0x46)).is_none(), "IPv4 options");
        assert!(parse(&with(ETH + 6, 0x20)).is_none(), "more fragments");
        assert!(parse(&with(ETH + 9, 6)).is_none(), "TCP");
        assert!(parse(&with(13, 0x06)).is_none(), "ARP");
        assert!(parse(&f[..f.len() - 1]).is_none(), "truncated");
        let mut padded = f.clone();
        padded.extend_from_slice(&[0; 10]);
        assert_eq!(&padded[parse(&padded).unwrap().payload], b"x", "padding");
        assert!(Template::new(A, B, src, "[::1]:1".parse().unwrap()).is_none());
    }
}
