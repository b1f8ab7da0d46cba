//! An AF_XDP worker: one thread per RX queue of the taken-over interface, driving the same
//! sans-IO [`Core`] as the socket engines. It waits on its socket and a waker with mio, takes a
//! batch of received frames from the rx ring, hands each datagram's payload (in place, in the
//! UMEM) to the core, and writes every copy as a whole frame into a tx frame: the payload (or
//! its SRTP-protected form, or its relay envelope) after the destination's header template,
//! patched per packet. A destination the [`resolver`](super::resolver) has not (yet) found
//! directly reachable goes the kernel way: a `sendmmsg` batch on the media socket. One kick of
//! the tx ring and one `sendmmsg` per batch; nothing allocated per packet.

use std::collections::hash_map::Entry;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use crossbeam_channel::Receiver;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use rustc_hash::FxHashMap;
use socket2::{SockAddr, Socket};

use super::frame::{self, ETH};
use super::resolver::{Requests, Update, Way};
use super::xsk::{Tx, Xsk};
use crate::core::{CopyKind, DropReason, Sent};
use crate::engine::mio::MioWake;
use crate::engine::mmsg::SendBatch;
use crate::engine::worker::{drain_control, end_batch, new_core, pin};
use crate::engine::{MAX_DATAGRAM, PROTECTED_SIZE};
use crate::publish::{Channels, WorkerLink, WorkerPort};

/// The most a copy grows over the received payload: SRTP/SRTCP's tag and index (up to 20
/// bytes) or a relay envelope (32 bytes).
const GROWTH: usize = PROTECTED_SIZE - MAX_DATAGRAM;

/// Frames taken from the rx ring per batch.
pub const BATCH: u32 = 64;
/// Copies per `sendmmsg` of the kernel way.
const KERNEL_BATCH: usize = 256;

const SOCKET: Token = Token(0);
const WAKER: Token = Token(1);

/// What one worker needs besides its port.
pub struct Parts {
    /// Its AF_XDP socket (one RX queue).
    pub xsk: Xsk,
    /// The media socket (a duplicate), for the kernel way.
    pub kernel: Socket,
    /// Where it asks the resolver about a destination seen for the first time.
    pub requests: Requests,
    /// The resolver's answers and changes.
    pub updates: Receiver<Update>,
    /// The interface's MTU: a copy whose IP datagram would be longer goes the kernel way (the
    /// kernel fragments it or says why not).
    pub mtu: usize,
}

/// Starts AF_XDP worker `id`.
pub fn spawn(
    id: usize,
    parts: Parts,
    core: Option<core_affinity::CoreId>,
    channels: &Channels,
) -> anyhow::Result<WorkerLink> {
    let poll = Poll::new()?;
    let waker = Arc::new(MioWake(Waker::new(poll.registry(), WAKER)?));
    poll.registry().register(
        &mut SourceFd(&parts.xsk.as_raw_fd()),
        SOCKET,
        Interest::READABLE,
    )?;
    let (port, tx, counters) = channels.factory.port(id);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let thread = std::thread::Builder::new()
        .name(format!("xdp-{id}"))
        .spawn(move || {
            pin(id, core);
            let _ = ready_tx.send(());
            if let Err(e) = run(&port, poll, parts) {
                tracing::error!(worker = id, "AF_XDP worker stopped: {e}");
            }
        })?;
    ready_rx
        .recv()
        .map_err(|_| anyhow::anyhow!("worker {id}: exited during setup"))?;
    Ok(WorkerLink::new(tx, waker, counters, thread))
}

/// Where each destination's copies go, as the resolver said.
#[derive(Default)]
struct Destinations {
    by_addr: FxHashMap<Key, Way>,
    /// A direct template per address, for a new port of an address already resolved.
    by_ip: FxHashMap<IpAddr, frame::Template>,
}

/// A destination as a map key: its address as 128 bits (IPv4 mapped) and its port, hashed as
/// two integers.
type Key = (u128, u16);

fn key(a: SocketAddr) -> Key {
    let ip = match a.ip() {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    };
    (u128::from(ip), a.port())
}

impl Destinations {
    /// The template to write `to`'s frames from, or `None` for the kernel way. A destination
    /// seen for the first time is asked about; meanwhile it goes directly when another port of
    /// its address does, else the kernel way.
    fn direct(&mut self, to: SocketAddr, requests: &Requests) -> Option<&frame::Template> {
        match self.by_addr.entry(key(to)) {
            Entry::Occupied(e) => match e.into_mut() {
                Way::Direct(t) => Some(t),
                Way::Kernel => None,
            },
            Entry::Vacant(e) => {
                requests.ask(to);
                let way = match self.by_ip.get(&to.ip()) {
                    Some(t) => Way::Direct(t.to_port(to.port())),
                    None => Way::Kernel,
                };
                match e.insert(way) {
                    Way::Direct(t) => Some(t),
                    Way::Kernel => None,
                }
            }
        }
    }

    fn apply(&mut self, u: Update) {
        match &u.way {
            Way::Direct(t) => {
                self.by_ip.insert(u.to.ip(), t.clone());
            }
            Way::Kernel => {
                // Every port of that address follows (their own updates come too).
                self.by_ip.remove(&u.to.ip());
            }
        }
        self.by_addr.insert(key(u.to), u.way);
    }
}

/// A batch's outgoing copies: tx frames for direct destinations, a `sendmmsg` batch (from
/// buffers of its own) for the kernel way.
struct Out<'a, 'x> {
    tx: &'a mut Tx<'x>,
    kernel: &'a mut SendBatch,
    bufs: &'a mut [[u8; PROTECTED_SIZE]],
    dests: &'a mut Destinations,
    requests: &'a Requests,
    fd: RawFd,
    /// Longest frame the interface takes (MTU + Ethernet header).
    max_frame: usize,
    ip_id: u16,
    sent: Sent,
    direct: u64,
    via_kernel: u64,
}

impl Out<'_, '_> {
    /// Sends one copy to `to` (`raw` for the kernel way): `write` puts the datagram's payload
    /// (at most `max_len` bytes) into the buffer it is given and returns its length.
    fn copy(
        &mut self,
        to: SocketAddr,
        raw: &SockAddr,
        max_len: usize,
        relay: bool,
        write: impl FnOnce(&mut [u8]) -> Option<usize>,
    ) {
        if let Some(t) = self.dests.direct(to, self.requests)
            && t.header_len() + max_len <= self.max_frame
        {
            let h = t.header_len();
            if self.tx.frame().is_none() {
                // Every frame in flight: reap the completions (one kick) and try once more.
                let _ = self.tx.flush();
            }
            let Some(f) = self.tx.frame() else {
                self.sent.failed += 1;
                return;
            };
            let Some(n) = write(&mut f[h..h + max_len]) else {
                self.sent.failed += 1;
                return;
            };
            self.ip_id = self.ip_id.wrapping_add(1);
            let Some(len) = t.write(f, n, self.ip_id) else {
                self.sent.failed += 1;
                return;
            };
            self.tx.push(len);
            self.sent.packets += 1;
            self.sent.bytes += n as u64;
            self.sent.relays += u64::from(relay);
            self.direct += 1;
            return;
        }
        if self.kernel.is_full() {
            self.sent += self.kernel.flush(self.fd);
        }
        let buf = &mut self.bufs[self.kernel.len()];
        let Some(n) = write(&mut buf[..max_len.min(PROTECTED_SIZE)]) else {
            self.sent.failed += 1;
            return;
        };
        self.sent.relays += u64::from(relay);
        self.via_kernel += 1;
        // SAFETY: `bufs[kernel.len()]` is not written again before the flush that ends this
        // batch (every path to it flushes `kernel` first).
        unsafe { self.kernel.push(&buf[..n], raw) };
    }

    /// Sends what is queued both ways.
    fn flush(&mut self) {
        self.sent += self.kernel.flush(self.fd);
        if let Err(e) = self.tx.flush() {
            tracing::warn!("AF_XDP tx: {e}");
        }
    }
}

fn run(port: &WorkerPort, mut poll: Poll, mut parts: Parts) -> io::Result<()> {
    let mut core = new_core(port);
    let fd = parts.kernel.as_raw_fd();
    let mut events = Events::with_capacity(8);
    let mut kernel = SendBatch::new(KERNEL_BATCH);
    let mut bufs = vec![[0u8; PROTECTED_SIZE]; KERNEL_BATCH].into_boxed_slice();
    let mut dests = Destinations::default();
    // A repair is written here before its destination is known (made once, not per batch).
    let mut scratch = vec![0u8; PROTECTED_SIZE].into_boxed_slice();
    let mut relay_seq: u64 = 0;
    let mut ip_id: u16 = 0;
    let max_frame = parts.mtu + ETH;
    loop {
        if !drain_control(port, &mut core) {
            return Ok(());
        }
        match poll.poll(&mut events, None) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
        // Edge-triggered: take batches until the rx ring is empty, table changes between.
        loop {
            while let Ok(u) = parts.updates.try_recv() {
                dests.apply(u);
            }
            let (mut rx, mut tx) = parts.xsk.split();
            let n = rx.ready(BATCH);
            if n == 0 {
                // Completions of the last batch's frames (copy mode sends within the kick).
                let _ = tx.flush();
                break;
            }
            core.set_now(port.keyframes.now_ms());
            let mut out = Out {
                tx: &mut tx,
                kernel: &mut kernel,
                bufs: &mut bufs,
                dests: &mut dests,
                requests: &parts.requests,
                fd,
                max_frame,
                ip_id,
                sent: Sent::default(),
                direct: 0,
                via_kernel: 0,
            };
            for i in 0..n {
                let Some(f) = rx.frame(i) else {
                    continue;
                };
                let Some(d) = frame::parse(f) else {
                    // The program only hands over UDP to the media port: a frame it passed
                    // that does not read as one is counted like a truncated datagram.
                    core.counters.rx_packets += 1;
                    core.counters.rx_bytes += f.len() as u64;
                    core.counters.drop(DropReason::Malformed);
                    continue;
                };
                let pkt = &mut f[d.payload];
                let Ok(v) = core.handle(pkt, d.src) else {
                    continue;
                };
                let plain = v.plain(pkt);
                for (slot, peer) in v.dests.iter_slots() {
                    let kind = v.copy_kind(slot, peer);
                    match kind {
                        CopyKind::Skip => {}
                        CopyKind::Shared => {
                            out.copy(peer.addr, &peer.raw, plain.len(), false, |b| {
                                b[..plain.len()].copy_from_slice(plain);
                                Some(plain.len())
                            })
                        }
                        _ => out.copy(peer.addr, &peer.raw, plain.len() + GROWTH, false, |b| {
                            v.write(slot, peer, plain, b)
                        }),
                    }
                }
                for relay in v.relays.iter() {
                    relay_seq += 1;
                    let seq = relay_seq;
                    out.copy(relay.addr, &relay.raw, plain.len() + GROWTH, true, |b| {
                        v.seal(relay, plain, port.id as u16, seq, b)
                    });
                }
            }
            // Keyframe requests the core made for viewers that joined mid-stream.
            while let Some((relay, pli)) = core.take_keyframe_request() {
                relay_seq += 1;
                let seq = relay_seq;
                out.copy(relay.addr, &relay.raw, pli.len() + GROWTH, true, |b| {
                    relay.seal(port.id as u16, seq, &pli, b)
                });
            }
            // Repairs the batch's NACKs asked the retransmission cache for: written into
            // `scratch` first (the core picks the destination while writing), then
            // sent whichever way that destination goes.
            while core.has_repairs() {
                let Some((len, to)) = core.next_repair(&mut scratch) else {
                    break;
                };
                let Some(addr) = to.as_socket() else {
                    continue;
                };
                out.copy(addr, &to, len, false, |b| {
                    b[..len].copy_from_slice(&scratch[..len]);
                    Some(len)
                });
            }
            out.flush();
            ip_id = out.ip_id;
            let (sent, direct, via_kernel) = (out.sent, out.direct, out.via_kernel);
            rx.release();
            core.count_sent(sent);
            core.counters.xdp_tx += direct;
            core.counters.xdp_kernel_tx += via_kernel;
            end_batch(port, &mut core);
            if !drain_control(port, &mut core) {
                return Ok(());
            }
        }
        end_batch(port, &mut core);
    }
}
