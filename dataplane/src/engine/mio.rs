//! The epoll engine: one thread per worker waits on its socket and a waker with mio, receives
//! with `recvmmsg` in batches of [`BATCH`], and sends every copy of the batch with `sendmmsg`.
//! Copies point at the receive buffers (no userspace copy), so a batch's sends are flushed
//! before its buffers are reused.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use mio::{Events, Interest, Poll, Token, Waker};
use socket2::Socket;

use super::PROTECTED_SIZE;
use super::mmsg::{RecvBatch, SendBatch};
use super::worker::{drain_control, end_batch, new_core, pin};
use crate::core::Sent;
use crate::core::{CopyKind, DropReason};
use crate::publish::{Channels, Wake, WorkerLink, WorkerPort};

/// Datagrams per `recvmmsg`.
pub const BATCH: usize = 64;
/// Copies per `sendmmsg`.
pub const SEND_BATCH: usize = 1024;

const SOCKET: Token = Token(0);
const WAKER: Token = Token(1);

/// Wakes a worker waiting in `mio::Poll` (also the AF_XDP workers').
pub(crate) struct MioWake(pub(crate) Waker);

impl Wake for MioWake {
    fn wake(&self) {
        let _ = self.0.wake();
    }
}

/// Starts worker `id` on `sock`.
pub fn spawn(
    id: usize,
    sock: Socket,
    core: Option<core_affinity::CoreId>,
    channels: &Channels,
) -> anyhow::Result<WorkerLink> {
    sock.set_nonblocking(true)?;
    let poll = Poll::new()?;
    let waker = Arc::new(MioWake(Waker::new(poll.registry(), WAKER)?));
    let mut udp = mio::net::UdpSocket::from_std(sock.into());
    poll.registry()
        .register(&mut udp, SOCKET, Interest::READABLE)?;
    let (port, tx, counters) = channels.factory.port(id);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let thread = std::thread::Builder::new()
        .name(format!("mio-{id}"))
        .spawn(move || {
            pin(id, core);
            let _ = ready_tx.send(());
            if let Err(e) = run(&port, poll, &udp) {
                tracing::error!(worker = id, "mio worker stopped: {e}");
            }
        })?;
    // Started (and pinned) before the bridge says it is ready.
    ready_rx
        .recv()
        .map_err(|_| anyhow::anyhow!("worker {id}: exited during setup"))?;
    Ok(WorkerLink::new(tx, waker, counters, thread))
}

fn run(port: &WorkerPort, mut poll: Poll, udp: &mio::net::UdpSocket) -> io::Result<()> {
    let fd = udp.as_raw_fd();
    let mut core = new_core(port);
    let mut events = Events::with_capacity(8);
    let mut rx = RecvBatch::new(BATCH);
    let mut tx = SendBatch::new(SEND_BATCH);
    // Room for SRTP-protected copies: entry `j` belongs to the `j`-th queued send.
    let mut protected = vec![[0u8; PROTECTED_SIZE]; SEND_BATCH].into_boxed_slice();
    // Sequence of this worker's relay packets (never reused with a link's key).
    let mut relay_seq: u64 = 0;
    loop {
        if !drain_control(port, &mut core) {
            return Ok(());
        }
        match poll.poll(&mut events, None) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
        // Edge-triggered: read until the socket is empty, taking table changes between batches.
        loop {
            let n = match rx.recv(fd) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!(worker = port.id, "recvmmsg: {e}");
                    break;
                }
            };
            let mut sent = Sent::default();
            core.set_now(port.keyframes.now_ms());
            for i in 0..n {
                let (pkt, src) = match rx.get_mut(i) {
                    Ok(p) => p,
                    Err(len) => {
                        core.counters.rx_packets += 1;
                        core.counters.rx_bytes += len as u64;
                        core.counters.drop(DropReason::Malformed);
                        continue;
                    }
                };
                let Ok(v) = core.handle(pkt, src) else {
                    continue;
                };
                let plain = v.plain(pkt);
                for (slot, peer) in v.dests.iter_slots() {
                    let kind = v.copy_kind(slot, peer);
                    if kind == CopyKind::Skip {
                        continue;
                    }
                    if tx.is_full() {
                        sent += tx.flush(fd);
                    }
                    let out = match kind {
                        CopyKind::Shared => plain,
                        _ => {
                            let buf = &mut protected[tx.len()];
                            match v.write(slot, peer, plain, buf) {
                                Some(n) => &buf[..n],
                                None => {
                                    sent.failed += 1;
                                    continue;
                                }
                            }
                        }
                    };
                    // SAFETY: `out` lives in `rx` (not written again until the next `rx.recv`)
                    // or in `protected[tx.len()]` (not written again until this batch is
                    // flushed); every path to either flushes `tx` first.
                    unsafe { tx.push(out, &peer.raw) };
                }
                for relay in v.relays.iter() {
                    if tx.is_full() {
                        sent += tx.flush(fd);
                    }
                    let buf = &mut protected[tx.len()];
                    relay_seq += 1;
                    let Some(n) = v.seal(relay, plain, port.id as u16, relay_seq, buf) else {
                        sent.failed += 1;
                        continue;
                    };
                    sent.relays += 1;
                    // SAFETY: as above: `protected[tx.len()]` is not written again before the
                    // flush that ends this batch.
                    unsafe { tx.push(&buf[..n], &relay.raw) };
                }
            }
            // Keyframe requests the core made for viewers that joined mid-stream.
            while let Some((relay, pli)) = core.take_keyframe_request() {
                if tx.is_full() {
                    sent += tx.flush(fd);
                }
                let buf = &mut protected[tx.len()];
                relay_seq += 1;
                let Some(n) = relay.seal(port.id as u16, relay_seq, &pli, buf) else {
                    sent.failed += 1;
                    continue;
                };
                sent.relays += 1;
                // SAFETY: as above: `protected[tx.len()]` is not written again before the flush
                // that ends this batch (the destination is copied into the batch).
                unsafe { tx.push(&buf[..n], &relay.raw) };
            }
            // Repairs the batch's NACKs asked the retransmission cache for.
            while core.has_repairs() {
                if tx.is_full() {
                    sent += tx.flush(fd);
                }
                let buf = &mut protected[tx.len()];
                let Some((n, to)) = core.next_repair(buf) else {
                    break;
                };
                // SAFETY: as above: `protected[tx.len()]` is not written again before the flush
                // that ends this batch (the destination is copied into the batch).
                unsafe { tx.push(&buf[..n], &to) };
            }
            sent += tx.flush(fd);
            core.count_sent(sent);
            end_batch(port, &mut core);
            if !drain_control(port, &mut core) {
                return Ok(());
            }
        }
        end_batch(port, &mut core);
    }
}
