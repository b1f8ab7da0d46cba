//! `floor-forwarder`: the cost of the kernel alone. epoll + `recvmmsg` batches of 64 +
//! `sendmmsg` batches of up to 1024, the same batch code as ringbridge's mio engine, and no
//! table logic beyond one hash lookup of the source's destination list (needed not to echo).
//! Reads the rig's setup (`--setup FILE`); prints `ready media=ADDR`.

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::path::PathBuf;

use clap::Parser;
use mio::{Events, Interest, Poll, Token};
use ringbridge_bench::groups::Groups;
use ringbridge_dataplane::engine::mmsg::{RecvBatch, SendBatch};
use socket2::SockAddr;

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

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let fanout: rustc_hash::FxHashMap<SocketAddr, Vec<SockAddr>> = Groups::load(&cli.setup)?
        .fanout()
        .into_iter()
        .map(|(k, v)| (k, v.into_iter().map(SockAddr::from).collect()))
        .collect();
    let sock = ringbridge_dataplane::engine::reuseport_socket(cli.listen)?;
    sock.set_nonblocking(true)?;
    let mut udp = mio::net::UdpSocket::from_std(sock.into());
    println!("ready media={}", udp.local_addr()?);
    let mut poll = Poll::new()?;
    poll.registry()
        .register(&mut udp, Token(0), Interest::READABLE)?;
    let fd = udp.as_raw_fd();
    let mut rx = RecvBatch::new(64);
    let mut tx = SendBatch::new(1024);
    let mut events = Events::with_capacity(4);
    loop {
        poll.poll(&mut events, None)?;
        loop {
            let n = rx.recv(fd)?;
            if n == 0 {
                break;
            }
            for i in 0..n {
                let Ok((pkt, src)) = rx.get(i) else { continue };
                let Some(dests) = fanout.get(&src) else {
                    continue;
                };
                for d in dests {
                    if tx.is_full() {
                        tx.flush(fd);
                    }
                    // SAFETY: `pkt` lives in `rx`, which is not written again before the
                    // flush below.
                    unsafe { tx.push(pkt, d) };
                }
            }
            tx.flush(fd);
        }
    }
}
