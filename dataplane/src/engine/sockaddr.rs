//! Decodes the `sockaddr` bytes the kernel writes into receive buffers, without casts.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

/// Parses a `sockaddr_in` or `sockaddr_in6` as laid out by Linux (family in native byte order,
/// port and address in network order). `None` for other families or short input.
#[inline]
pub fn parse(b: &[u8]) -> Option<SocketAddr> {
    let family = u16::from_ne_bytes([*b.first()?, *b.get(1)?]);
    match i32::from(family) {
        libc::AF_INET if b.len() >= 8 => {
            let port = u16::from_be_bytes([b[2], b[3]]);
            let ip = Ipv4Addr::new(b[4], b[5], b[6], b[7]);
            Some(SocketAddr::V4(SocketAddrV4::new(ip, port)))
        }
        libc::AF_INET6 if b.len() >= 28 => {
            let port = u16::from_be_bytes([b[2], b[3]]);
            let flow = u32::from_be_bytes([b[4], b[5], b[6], b[7]]);
            let mut ip = [0u8; 16];
            ip.copy_from_slice(&b[8..24]);
            let scope = u32::from_ne_bytes([b[24], b[25], b[26], b[27]]);
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(ip),
                port,
                flow,
                scope,
            )))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use socket2::SockAddr;

    fn bytes(a: SocketAddr) -> Vec<u8> {
        let raw = SockAddr::from(a);
        let p = raw.as_ptr().cast::<u8>();
        // SAFETY: `raw` owns at least `len()` initialised bytes at `as_ptr()`.
        unsafe { std::slice::from_raw_parts(p, raw.len() as usize) }.to_vec()
    }

    #[test]
    fn round_trips_v4_and_v6() {
        for a in ["127.0.0.1:5004", "[::1]:40000", "10.1.2.3:1"] {
            let a: SocketAddr = a.parse().unwrap();
            assert_eq!(parse(&bytes(a)), Some(a));
        }
        assert_eq!(parse(&[0, 0]), None);
        assert_eq!(parse(&[]), None);
    }
}
