//! `floor-forwarder`: the cost of the kernel alone, written the way a kernel engineer would
//! write the simplest forwarder: one blocking UDP socket, `recvmmsg` (up to 64 datagrams,
//! `MSG_WAITFORONE`) into fixed buffers, one hash lookup of the source's destination list, and
//! `sendmmsg` of every copy from the received buffer (up to 1024 per call). libc straight: no
//! ringbridge code, no event loop, no table logic, so it is a floor independent of what it
//! measures. Reads the rig's setup (`--setup FILE`); prints `ready media=ADDR`.

use std::collections::HashMap;
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::PathBuf;

use clap::Parser;
use ringbridge_bench::groups::Groups;

/// Datagrams per `recvmmsg`.
const RX: usize = 64;
/// Copies per `sendmmsg`.
const TX: usize = 1024;
/// Bytes per receive buffer.
const BUF: usize = 2048;

/// Baseline forwarder: recvmmsg + sendmmsg, fixed destination lists.
#[derive(Parser)]
struct Cli {
    /// UDP address to receive on.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// The rig's setup file (JSON groups of member addresses).
    #[arg(long)]
    setup: PathBuf,
}

/// A destination as the kernel takes it.
#[derive(Clone, Copy)]
struct Dest {
    addr: libc::sockaddr_storage,
    len: libc::socklen_t,
}

fn dest(a: SocketAddr) -> Dest {
    // SAFETY: sockaddr_storage is plain data; all zeroes is a valid value.
    let mut addr: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match a {
        SocketAddr::V4(v4) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from(*v4.ip()).to_be(),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            unsafe { std::ptr::write((&raw mut addr).cast(), sin) };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(v6) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: v6.port().to_be(),
                sin6_flowinfo: v6.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: v6.ip().octets(),
                },
                sin6_scope_id: v6.scope_id(),
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
            unsafe { std::ptr::write((&raw mut addr).cast(), sin6) };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    Dest {
        addr,
        len: len as libc::socklen_t,
    }
}

/// The source address the kernel wrote into `s`.
fn source(s: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match i32::from(s.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in.
            let sin: &libc::sockaddr_in = unsafe { &*(s as *const _ as *const libc::sockaddr_in) };
            Some(SocketAddr::V4(SocketAddrV4::new(
                u32::from_be(sin.sin_addr.s_addr).into(),
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a sockaddr_in6.
            let sin6: &libc::sockaddr_in6 =
                unsafe { &*(s as *const _ as *const libc::sockaddr_in6) };
            Some(SocketAddr::V6(SocketAddrV6::new(
                sin6.sin6_addr.s6_addr.into(),
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let fanout: HashMap<SocketAddr, Vec<Dest>> = Groups::load(&cli.setup)?
        .fanout()
        .into_iter()
        .map(|(k, v)| (k, v.into_iter().map(dest).collect()))
        .collect();
    let sock = UdpSocket::bind(cli.listen)?;
    let buf_size: libc::c_int = 8 << 20;
    for opt in [libc::SO_RCVBUF, libc::SO_SNDBUF] {
        // SAFETY: a valid socket, option and int-sized value.
        unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&raw const buf_size).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
    }
    println!("ready media={}", sock.local_addr()?);
    let fd = sock.as_raw_fd();

    let mut bufs = vec![[0u8; BUF]; RX];
    // SAFETY: a plain C struct; all zeroes is valid.
    let mut names: Vec<libc::sockaddr_storage> = vec![unsafe { std::mem::zeroed() }; RX];
    let mut rx_iov: Vec<libc::iovec> = bufs
        .iter_mut()
        .map(|b| libc::iovec {
            iov_base: b.as_mut_ptr().cast(),
            iov_len: BUF,
        })
        .collect();
    // SAFETY: a plain C struct; all zeroes is valid, the pointers are set before each call.
    let mut rx: Vec<libc::mmsghdr> = vec![unsafe { std::mem::zeroed() }; RX];
    let mut tx_iov: Vec<libc::iovec> = vec![
        libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0
        };
        TX
    ];
    // SAFETY: as above.
    let mut tx: Vec<libc::mmsghdr> = vec![unsafe { std::mem::zeroed() }; TX];
    loop {
        for i in 0..RX {
            let h = &mut rx[i].msg_hdr;
            h.msg_name = (&raw mut names[i]).cast();
            h.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_iov = &raw mut rx_iov[i];
            h.msg_iovlen = 1;
        }
        // SAFETY: `rx` holds RX headers pointing at live buffers, names and iovecs.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                rx.as_mut_ptr(),
                RX as u32,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e.into());
        }
        let mut out = 0;
        for i in 0..n as usize {
            let Some(dests) = source(&names[i]).and_then(|s| fanout.get(&s)) else {
                continue;
            };
            let len = rx[i].msg_len as usize;
            for d in dests {
                if out == TX {
                    send_all(fd, &mut tx[..out]);
                    out = 0;
                }
                tx_iov[out] = libc::iovec {
                    iov_base: bufs[i].as_mut_ptr().cast(),
                    iov_len: len,
                };
                let h = &mut tx[out].msg_hdr;
                h.msg_name = (&raw const d.addr).cast_mut().cast();
                h.msg_namelen = d.len;
                h.msg_iov = &raw mut tx_iov[out];
                h.msg_iovlen = 1;
                out += 1;
            }
        }
        send_all(fd, &mut tx[..out]);
    }
}

/// `sendmmsg` until every message went (a copy the kernel refuses is skipped, as a forwarder
/// drops it).
fn send_all(fd: i32, msgs: &mut [libc::mmsghdr]) {
    let mut at = 0;
    while at < msgs.len() {
        // SAFETY: every header points at a live buffer, iovec and destination.
        let n = unsafe { libc::sendmmsg(fd, msgs[at..].as_mut_ptr(), (msgs.len() - at) as u32, 0) };
        if n <= 0 {
            at += 1;
        } else {
            at += n as usize;
        }
    }
}
