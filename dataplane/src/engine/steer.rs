//! Kernel steering of the media port's slow path: a classic BPF program on the port's
//! `SO_REUSEPORT` group (`SO_ATTACH_REUSEPORT_CBPF`) sends STUN (first byte 0-3) and DTLS (20-63)
//! datagrams (RFC 7983 section 7) to a socket of their own, the last of the group, which the
//! WebRTC transport reads; everything else goes to a worker, picked by a hash of the source
//! address and port (so a flow always lands on the same worker, as with the kernel's own
//! hash). A worker is then never woken for a handshake or a consent check: the slow path costs
//! the packet path nothing, not even the wakeup that would hand it over.
//!
//! Where the program cannot be attached (an old kernel, a seccomp filter) nothing of this is
//! set up and the workers hand STUN and DTLS over through [`crate::core::handoff`] instead.
//!
//! The program sees the datagram with its UDP header pulled (offset 0 is the payload's first
//! byte) and reads the source address and port through `SKF_NET_OFF` (relative to the IP
//! header). It runs in the kernel for every datagram of the port: 10-17 instructions.

use std::io;
use std::net::SocketAddr;

use socket2::Socket;

// Classic BPF opcodes (linux/filter.h, linux/bpf_common.h).
const LD: u16 = 0x00;
const LDX: u16 = 0x01;
const ST: u16 = 0x02;
const ALU: u16 = 0x04;
const JMP: u16 = 0x05;
const RET: u16 = 0x06;
const MISC: u16 = 0x07;
const W: u16 = 0x00;
const H: u16 = 0x08;
const B: u16 = 0x10;
const ABS: u16 = 0x20;
const IND: u16 = 0x40;
const MEM: u16 = 0x60;
const K: u16 = 0x00;
const X: u16 = 0x08;
const A: u16 = 0x10;
const MUL: u16 = 0x20;
const AND: u16 = 0x50;
const LSH: u16 = 0x60;
const RSH: u16 = 0x70;
const MOD: u16 = 0x90;
const XOR: u16 = 0xa0;
const JGE: u16 = 0x30;
const TAX: u16 = 0x00;
/// Loads at `SKF_NET_OFF + k` read `k` bytes into the network (IP) header.
const NET: u32 = (-0x100000i32) as u32;
/// `SO_ATTACH_REUSEPORT_CBPF` (asm-generic/socket.h).
const SO_ATTACH_REUSEPORT_CBPF: libc::c_int = 51;

const fn op(code: u16, jt: u8, jf: u8, k: u32) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

/// The steering program for a group of `workers` worker sockets (indices `0..workers`) and the
/// transport's socket (index `workers`), for IPv4 or IPv6 datagrams.
pub fn program(ipv6: bool, workers: u16) -> Vec<libc::sock_filter> {
    let workers = u32::from(workers.max(1));
    let mut p = vec![
        op(LD | B | ABS, 0, 0, 0),   // A = first byte of the payload
        op(JMP | JGE | K, 3, 0, 64), // RTP, RTCP and the rest: a worker
        op(JMP | JGE | K, 1, 0, 20), // DTLS (20-63): the transport
        op(JMP | JGE | K, 1, 0, 4),  // 4-19: a worker (which drops it, counted)
        op(RET | K, 0, 0, workers),  // STUN (0-3) and DTLS: the transport's socket
    ];
    if ipv6 {
        p.extend([
            op(LD | H | ABS, 0, 0, NET.wrapping_add(40)), // source port (no extension header)
            op(ST, 0, 0, 0),
            op(LD | W | ABS, 0, 0, NET.wrapping_add(20)), // low word of the source address
        ]);
    } else {
        p.extend([
            op(LD | B | ABS, 0, 0, NET), // version and header length
            op(ALU | AND | K, 0, 0, 0x0f),
            op(ALU | LSH | K, 0, 0, 2),
            op(MISC | TAX, 0, 0, 0),     // X = IP header length
            op(LD | H | IND, 0, 0, NET), // source port
            op(ST, 0, 0, 0),
            op(LD | W | ABS, 0, 0, NET.wrapping_add(12)), // source address
        ]);
    }
    p.extend([
        op(LDX | W | MEM, 0, 0, 0),
        op(ALU | XOR | X, 0, 0, 0),
        op(ALU | MUL | K, 0, 0, 0x9e37_79b1),
        op(ALU | RSH | K, 0, 0, 16),
        op(ALU | MOD | K, 0, 0, workers),
        op(RET | A, 0, 0, 0),
    ]);
    p
}

/// Attaches the steering program to the reuseport group `sock` is in (its `workers` worker
/// sockets must be bound already, and the transport's socket next).
pub fn attach(sock: &Socket, addr: SocketAddr, workers: u16) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let mut prog = program(addr.is_ipv6(), workers);
    let fprog = libc::sock_fprog {
        len: prog.len() as u16,
        filter: prog.as_mut_ptr(),
    };
    // SAFETY: `fprog` points at `prog`, which outlives the call (the kernel copies the
    // program), and the length passed is the size of `fprog`.
    let r = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_ATTACH_REUSEPORT_CBPF,
            (&raw const fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use std::net::UdpSocket;
    use std::time::Duration;

    use super::*;
    use crate::engine::reuseport_socket;

    /// Which socket of the group each datagram lands on, for `workers` workers.
    fn landing(local: SocketAddr, workers: u16, datagrams: &[(usize, &[u8])]) -> Vec<usize> {
        let mut group = vec![reuseport_socket(local).unwrap()];
        let bound = group[0].local_addr().unwrap().as_socket().unwrap();
        for _ in 1..workers {
            group.push(reuseport_socket(bound).unwrap());
        }
        attach(&group[0], bound, workers).unwrap();
        group.push(reuseport_socket(bound).unwrap()); // the transport's, index `workers`
        for s in &group {
            s.set_read_timeout(Some(Duration::from_millis(300)))
                .unwrap();
        }
        let any = if local.is_ipv6() {
            "[::1]:0"
        } else {
            "127.0.0.1:0"
        };
        let clients: Vec<UdpSocket> = (0..32).map(|_| UdpSocket::bind(any).unwrap()).collect();
        let mut out = Vec::new();
        for (c, d) in datagrams {
            clients[*c].send_to(d, bound).unwrap();
            let got = group.iter().position(|s| {
                let mut b = [std::mem::MaybeUninit::new(0u8); 64];
                s.set_nonblocking(true).unwrap();
                let mut tries = 0;
                loop {
                    match s.recv(&mut b) {
                        Ok(_) => return true,
                        Err(_) if tries < 3 => {
                            tries += 1;
                            std::thread::sleep(Duration::from_millis(5));
                        }
                        Err(_) => return false,
                    }
                }
            });
            out.push(got.expect("the datagram arrived somewhere"));
        }
        out
    }

    fn check(local: SocketAddr) {
        let stun: &[u8] = &[0x00, 0x01, 0, 0];
        let dtls: &[u8] = &[22, 0xfe, 0xfd];
        let rtp: &[u8] = &[0x80, 96, 0, 1];
        let rtcp: &[u8] = &[0x81, 200, 0, 1];
        let odd: &[u8] = &[7, 7];
        // Every STUN and DTLS datagram, from any client, lands on the transport's socket (2).
        let slow = landing(
            local,
            2,
            &[(0, stun), (1, dtls), (2, stun), (3, &[63]), (4, &[3])],
        );
        assert_eq!(slow, vec![2; 5], "{local}");
        // Media lands on a worker, the same one for every datagram of a flow.
        for c in 0..8 {
            let w = landing(local, 2, &[(c, rtp), (c, rtcp), (c, odd), (c, rtp)]);
            assert!(w.iter().all(|&i| i == w[0] && i < 2), "{local}: {w:?}");
        }
    }

    #[test]
    fn stun_and_dtls_land_on_the_transport_socket_media_on_a_worker_per_flow_v4() {
        check("127.0.0.1:0".parse().unwrap());
    }

    #[test]
    fn stun_and_dtls_land_on_the_transport_socket_media_on_a_worker_per_flow_v6() {
        check("[::1]:0".parse().unwrap());
    }

    #[test]
    fn flows_spread_over_the_workers() {
        let local: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let rtp: &[u8] = &[0x80, 96, 0, 1];
        // 32 flows (one per client port) all on one worker: a chance of 2^-31 with a fair hash.
        let w = landing(local, 2, &(0..32).map(|c| (c, rtp)).collect::<Vec<_>>());
        assert!(
            w.contains(&0) && w.contains(&1),
            "32 flows on one worker: {w:?}"
        );
    }
}
