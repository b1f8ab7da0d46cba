//! The transport's own socket on the media port, when the kernel steers STUN and DTLS to it
//! ([`crate::engine::steer`]): one thread receives there and puts each datagram in the
//! transport's queue, as a worker would have, counting it as a worker would have (`stun_rx`,
//! `dtls_rx`, `TransportQueueFull`); its counters are added to the workers' in every total.
//! Anything else that lands there (nothing should: the program sends media to the workers) is
//! dropped and counted as `NotRtp`.

use std::io;
use std::net::UdpSocket;
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use socket2::Socket;

use crate::core::handoff::{self, Handoff, Kind};
use crate::core::{Counters, DropReason};
use crate::engine::RECV_SIZE;
use crate::publish::Publisher;
use crate::stats::SharedCounters;

/// How often a receive without traffic looks whether the bridge is still there.
const ALIVE_CHECK: Duration = Duration::from_millis(250);

/// Starts the thread receiving on `socket` into `handoff`; it ends once `alive` is gone.
pub fn spawn(
    socket: Socket,
    handoff: Handoff,
    counters: Arc<SharedCounters>,
    alive: Weak<Publisher>,
) -> io::Result<JoinHandle<()>> {
    let socket = UdpSocket::from(socket);
    socket.set_read_timeout(Some(ALIVE_CHECK))?;
    std::thread::Builder::new()
        .name("webrtc-rx".into())
        .spawn(move || {
            if let Err(e) = crate::engine::pin::yield_to_workers() {
                tracing::debug!("webrtc-rx: scheduling class unchanged: {e}");
            }
            run(&socket, &handoff, &counters, &alive)
        })
}

fn run(socket: &UdpSocket, handoff: &Handoff, shared: &SharedCounters, alive: &Weak<Publisher>) {
    let mut c = Counters::default();
    let mut buf = vec![0u8; RECV_SIZE];
    while alive.strong_count() > 0 {
        let (n, from) = match socket.recv_from(&mut buf) {
            Ok(r) => r,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) =>
            {
                continue;
            }
            Err(e) => {
                tracing::error!("webrtc-rx: {e}");
                return;
            }
        };
        let pkt = &buf[..n];
        c.rx_packets += 1;
        c.rx_bytes += n as u64;
        match Kind::of(pkt) {
            Some(kind) => handoff::hand_over(handoff, kind, pkt, from, &mut c),
            None => c.drop(DropReason::NotRtp),
        }
        shared.publish(&c);
    }
}
