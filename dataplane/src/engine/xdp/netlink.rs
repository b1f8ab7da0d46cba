//! Where a destination is on the wire: the kernel's route (output interface, gateway, source
//! address) and neighbour (link-layer address) tables, over rtnetlink. Messages are built and
//! read sans-IO ([`route_request`], [`neighbour_dump_request`], [`messages`], [`Neighbours`]);
//! [`Netlink`] is the socket that asks. The same [`Neighbours::apply`] takes the dump and the
//! kernel's change notifications (`RTM_NEWNEIGH`/`RTM_DELNEIGH` to the neighbour group), so the
//! table follows the kernel's.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use rustc_hash::FxHashMap;

const NLMSG_HDR: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const RTM_NEWROUTE: u16 = 24;
const RTM_GETROUTE: u16 = 26;
const RTM_NEWNEIGH: u16 = 28;
const RTM_DELNEIGH: u16 = 29;
const RTM_GETNEIGH: u16 = 30;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_DUMP: u16 = 0x300;
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RTA_PREFSRC: u16 = 7;
const NDA_DST: u16 = 1;
const NDA_LLADDR: u16 = 2;
/// Neighbour states whose link-layer address may be used (reachable, stale, delay, probe,
/// noarp, permanent): not incomplete or failed.
const NUD_USABLE: u16 = 0x02 | 0x04 | 0x08 | 0x10 | 0x40 | 0x80;
/// Multicast group of neighbour changes (`RTMGRP_NEIGH`).
pub const GROUP_NEIGH: u32 = 0x4;

/// The kernel's route to a destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// Output interface.
    pub oif: u32,
    /// Next hop when not on-link.
    pub gateway: Option<IpAddr>,
    /// Source address the kernel would use.
    pub source: Option<IpAddr>,
}

impl Route {
    /// The address whose link-layer address frames to `dst` go to.
    pub fn next_hop(&self, dst: IpAddr) -> IpAddr {
        self.gateway.unwrap_or(dst)
    }
}

/// A neighbour entry (from a dump or a change notification).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Neighbour {
    /// Its interface.
    pub ifindex: u32,
    /// Its network address.
    pub ip: IpAddr,
    /// Its link-layer address, when the entry has a usable one.
    pub mac: Option<[u8; 6]>,
    /// The entry was deleted (`RTM_DELNEIGH`).
    pub gone: bool,
}

/// One message read from the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Message {
    /// An answer to [`route_request`].
    Route(Route),
    /// A neighbour entry.
    Neighbour(Neighbour),
    /// The end of a dump.
    Done,
    /// An error answer (errno, positive); 0 is an acknowledgement.
    Error(i32),
    /// Anything else.
    Other,
}

/// A request for the route to `dst` (`RTM_GETROUTE`), sequence number `seq`.
pub fn route_request(seq: u32, dst: IpAddr) -> Vec<u8> {
    let (family, addr) = family_and_bytes(dst);
    // struct rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type, flags (u32).
    let mut body = vec![family, (addr.len() * 8) as u8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    attr(&mut body, RTA_DST, &addr);
    message(RTM_GETROUTE, NLM_F_REQUEST, seq, &body)
}

/// A request for every neighbour entry of `family` (`AF_INET` or `AF_INET6`).
pub fn neighbour_dump_request(seq: u32, family: u8) -> Vec<u8> {
    // struct ndmsg: family, 3 pad, ifindex (i32), state (u16), flags, type.
    let body = [family, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    message(RTM_GETNEIGH, NLM_F_REQUEST | NLM_F_DUMP, seq, &body)
}

fn family_and_bytes(ip: IpAddr) -> (u8, Vec<u8>) {
    match ip {
        IpAddr::V4(a) => (libc::AF_INET as u8, a.octets().to_vec()),
        IpAddr::V6(a) => (libc::AF_INET6 as u8, a.octets().to_vec()),
    }
}

fn message(kind: u16, flags: u16, seq: u32, body: &[u8]) -> Vec<u8> {
    let len = NLMSG_HDR + body.len();
    let mut m = Vec::with_capacity(len);
    m.extend_from_slice(&(len as u32).to_ne_bytes());
    m.extend_from_slice(&kind.to_ne_bytes());
    m.extend_from_slice(&flags.to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.extend_from_slice(body);
    m
}

fn attr(out: &mut Vec<u8>, kind: u16, value: &[u8]) {
    let len = 4 + value.len();
    out.extend_from_slice(&(len as u16).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(value);
    out.resize(out.len().next_multiple_of(4), 0);
}

/// The attributes in `b`: (kind, value).
fn attrs(mut b: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if b.len() < 4 {
            return None;
        }
        let len = usize::from(u16::from_ne_bytes([b[0], b[1]]));
        let kind = u16::from_ne_bytes([b[2], b[3]]) & 0x3fff;
        if len < 4 || len > b.len() {
            return None;
        }
        let value = &b[4..len];
        b = &b[len.next_multiple_of(4).min(b.len())..];
        Some((kind, value))
    })
}

fn ip_of(v: &[u8]) -> Option<IpAddr> {
    match v.len() {
        4 => Some(IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(v).ok()?))),
        16 => Some(IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(v).ok()?))),
        _ => None,
    }
}

fn u32_of(v: &[u8]) -> Option<u32> {
    Some(u32::from_ne_bytes(v.get(..4)?.try_into().ok()?))
}

/// The messages in datagram `b` from the kernel.
pub fn messages(mut b: &[u8]) -> impl Iterator<Item = Message> + '_ {
    std::iter::from_fn(move || {
        if b.len() < NLMSG_HDR {
            return None;
        }
        let len = u32_of(b)? as usize;
        if len < NLMSG_HDR || len > b.len() {
            return None;
        }
        let kind = u16::from_ne_bytes([b[4], b[5]]);
        let body = &b[NLMSG_HDR..len];
        b = &b[len.next_multiple_of(4).min(b.len())..];
        Some(read(kind, body))
    })
}

fn read(kind: u16, body: &[u8]) -> Message {
    match kind {
        NLMSG_DONE => Message::Done,
        NLMSG_ERROR => Message::Error(
            body.get(..4)
                .map_or(0, |e| -i32::from_ne_bytes(e.try_into().expect("4 bytes"))),
        ),
        RTM_NEWROUTE if body.len() >= 12 => {
            let mut r = Route {
                oif: 0,
                gateway: None,
                source: None,
            };
            for (k, v) in attrs(&body[12..]) {
                match k {
                    RTA_OIF => r.oif = u32_of(v).unwrap_or(0),
                    RTA_GATEWAY => r.gateway = ip_of(v),
                    RTA_PREFSRC => r.source = ip_of(v),
                    _ => {}
                }
            }
            Message::Route(r)
        }
        RTM_NEWNEIGH | RTM_DELNEIGH if body.len() >= 12 => {
            let ifindex = u32_of(&body[4..8]).unwrap_or(0);
            let state = u16::from_ne_bytes([body[8], body[9]]);
            let (mut ip, mut mac) = (None, None);
            for (k, v) in attrs(&body[12..]) {
                match k {
                    NDA_DST => ip = ip_of(v),
                    NDA_LLADDR => mac = <[u8; 6]>::try_from(v).ok(),
                    _ => {}
                }
            }
            match ip {
                Some(ip) => Message::Neighbour(Neighbour {
                    ifindex,
                    ip,
                    mac: mac.filter(|_| state & NUD_USABLE != 0 && kind == RTM_NEWNEIGH),
                    gone: kind == RTM_DELNEIGH,
                }),
                None => Message::Other,
            }
        }
        _ => Message::Other,
    }
}

/// The link-layer addresses of neighbours, as the kernel has them.
#[derive(Debug, Default, Clone)]
pub struct Neighbours {
    by_ip: FxHashMap<(u32, IpAddr), [u8; 6]>,
}

impl Neighbours {
    /// Takes one entry from a dump or a change notification.
    pub fn apply(&mut self, n: &Neighbour) {
        match n.mac {
            Some(mac) if !n.gone => {
                self.by_ip.insert((n.ifindex, n.ip), mac);
            }
            _ => {
                self.by_ip.remove(&(n.ifindex, n.ip));
            }
        }
    }

    /// The link-layer address of `ip` on interface `ifindex`, if resolved.
    pub fn get(&self, ifindex: u32, ip: IpAddr) -> Option<[u8; 6]> {
        self.by_ip.get(&(ifindex, ip)).copied()
    }
}

/// A rtnetlink socket.
#[derive(Debug)]
pub struct Netlink {
    fd: OwnedFd,
    seq: u32,
}

impl AsRawFd for Netlink {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl Netlink {
    /// A socket for requests; with `groups` (e.g. [`GROUP_NEIGH`]) it also receives those
    /// change notifications.
    pub fn open(groups: u32) -> io::Result<Self> {
        // SAFETY: plain socket(2); the descriptor is owned right below.
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: sockaddr_nl is plain old data; all zeroes is valid.
        let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        sa.nl_family = libc::AF_NETLINK as u16;
        sa.nl_groups = groups;
        // SAFETY: `sa` is a valid sockaddr_nl of the size passed.
        let r = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&sa as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        let tv = libc::timeval {
            tv_sec: 1,
            tv_usec: 0,
        };
        // SAFETY: a valid timeval of the size passed: every receive waits at most 1 s.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        Ok(Self { fd, seq: 0 })
    }

    /// How long [`Netlink::recv`] waits (1 s from [`Netlink::open`]).
    pub fn set_timeout(&self, t: std::time::Duration) -> io::Result<()> {
        let tv = libc::timeval {
            tv_sec: t.as_secs() as libc::time_t,
            tv_usec: t.subsec_micros() as libc::suseconds_t,
        };
        // SAFETY: a valid timeval of the size passed, only read.
        let r = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn send(&mut self, m: &[u8]) -> io::Result<()> {
        // SAFETY: sends `m`'s bytes, read only, to the kernel (the socket's default peer).
        let r = unsafe { libc::send(self.fd.as_raw_fd(), m.as_ptr().cast(), m.len(), 0) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Receives one datagram into `buf`; its length.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: the kernel writes at most `buf.len()` bytes into `buf`.
        let r = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(r as usize)
    }

    /// Receives one datagram into `buf` if one is waiting (`WouldBlock` otherwise).
    pub fn try_recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: the kernel writes at most `buf.len()` bytes into `buf`.
        let r = unsafe {
            libc::recv(
                self.fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(r as usize)
    }

    /// The kernel's route to `dst`.
    pub fn route(&mut self, dst: IpAddr) -> io::Result<Route> {
        self.seq += 1;
        self.send(&route_request(self.seq, dst))?;
        let mut buf = vec![0u8; 8192];
        for _ in 0..16 {
            let n = self.recv(&mut buf)?;
            for m in messages(&buf[..n]) {
                match m {
                    Message::Route(r) => return Ok(r),
                    Message::Error(e) if e != 0 => return Err(io::Error::from_raw_os_error(e)),
                    _ => {}
                }
            }
        }
        Err(io::Error::other("no route answer"))
    }

    /// Every neighbour entry of `family` (`AF_INET` or `AF_INET6`).
    pub fn neighbours(&mut self, family: u8) -> io::Result<Vec<Neighbour>> {
        self.seq += 1;
        self.send(&neighbour_dump_request(self.seq, family))?;
        let mut buf = vec![0u8; 32 * 1024];
        let mut out = Vec::new();
        loop {
            let n = self.recv(&mut buf)?;
            for m in messages(&buf[..n]) {
                match m {
                    Message::Neighbour(x) => out.push(x),
                    Message::Done => return Ok(out),
                    Message::Error(e) if e != 0 => return Err(io::Error::from_raw_os_error(e)),
                    _ => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_route_request_carries_the_destination() {
        let m = route_request(7, "10.1.2.3".parse().unwrap());
        assert_eq!(u32_of(&m).unwrap() as usize, m.len());
        assert_eq!(u16::from_ne_bytes([m[4], m[5]]), RTM_GETROUTE);
        assert_eq!(u32_of(&m[8..]).unwrap(), 7);
        assert_eq!(m[NLMSG_HDR], libc::AF_INET as u8);
        assert_eq!(m[NLMSG_HDR + 1], 32, "a host route");
        let a: Vec<_> = attrs(&m[NLMSG_HDR + 12..]).collect();
        assert_eq!(a, [(RTA_DST, &[10u8, 1, 2, 3][..])]);
    }

    /// A kernel answer as the kernel writes it: header, body, attributes.
    fn answer(kind: u16, body: &[u8], attrs_: &[(u16, &[u8])]) -> Vec<u8> {
        let mut b = body.to_vec();
        for (k, v) in attrs_ {
            attr(&mut b, *k, v);
        }
        message(kind, 0, 1, &b)
    }

    #[test]
    fn routes_and_neighbours_are_read_and_followed() {
        let mut d = answer(
            RTM_NEWROUTE,
            &[2, 32, 0, 0, 254, 0, 0, 1, 0, 0, 0, 0],
            &[
                (RTA_OIF, &5u32.to_ne_bytes()),
                (RTA_GATEWAY, &[10, 0, 0, 1]),
                (RTA_PREFSRC, &[10, 0, 0, 9]),
            ],
        );
        let mac = [2, 0, 0, 0, 0, 7];
        let mut ndmsg = vec![2, 0, 0, 0];
        ndmsg.extend_from_slice(&5u32.to_ne_bytes());
        ndmsg.extend_from_slice(&0x02u16.to_ne_bytes()); // reachable
        ndmsg.extend_from_slice(&[0, 0]);
        d.extend(answer(
            RTM_NEWNEIGH,
            &ndmsg,
            &[(NDA_DST, &[10, 0, 0, 1]), (NDA_LLADDR, &mac)],
        ));
        d.extend(message(NLMSG_DONE, 0, 1, &[0; 4]));
        let got: Vec<Message> = messages(&d).collect();
        let gw: IpAddr = "10.0.0.1".parse().unwrap();
        let route = Route {
            oif: 5,
            gateway: Some(gw),
            source: Some("10.0.0.9".parse().unwrap()),
        };
        assert_eq!(got[0], Message::Route(route));
        assert_eq!(route.next_hop("192.0.2.1".parse().unwrap()), gw);
        let Message::Neighbour(n) = got[1] else {
            panic!("{got:?}")
        };
        assert_eq!((n.ifindex, n.ip, n.mac, n.gone), (5, gw, Some(mac), false));
        assert_eq!(got[2], Message::Done);
        let mut t = Neighbours::default();
        t.apply(&n);
        assert_eq!(t.get(5, gw), Some(mac));
        // Failed (unusable), then deleted: gone either way.
        let failed = Neighbour { mac: None, ..n };
        t.apply(&failed);
        assert_eq!(t.get(5, gw), None);
        t.apply(&n);
        t.apply(&Neighbour { gone: true, ..n });
        assert_eq!(t.get(5, gw), None);
    }

    #[test]
    fn an_error_answer_reads_as_its_errno() {
        let m = message(NLMSG_ERROR, 0, 1, &(-libc::ENETUNREACH).to_ne_bytes());
        assert_eq!(
            messages(&m).collect::<Vec<_>>(),
            [Message::Error(libc::ENETUNREACH)]
        );
        assert_eq!(messages(&m[..10]).count(), 0, "truncated");
    }
}
