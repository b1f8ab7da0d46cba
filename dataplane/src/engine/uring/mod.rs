//! The io_uring engine. Each worker owns a ring, a `SO_REUSEPORT` socket and a provided buffer
//! ring ([`buf_ring`]). One multishot `recvmsg` fills buffers from the buffer ring; for every
//! forwarded packet the worker queues one send SQE per destination from its send slots
//! ([`send_slots`]), all pointing at the same received buffer, which goes back to the buffer
//! ring when its last send completes. By default a send is `IORING_OP_SEND` with the destination
//! address, on the socket registered as a fixed file. Submissions are batched: one
//! `io_uring_enter` submits every send of a batch and waits for the next completions. This file
//! is the worker loop; the split follows aquatic's io_uring UDP worker.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;

use io_uring::types::{Fd, RecvMsgOut};
use io_uring::{IoUring, cqueue, opcode, squeue};
use socket2::Socket;

mod buf_ring;
mod send_slots;

use buf_ring::BufRing;
use send_slots::{SendSlots, SockRef, complete_send};

use super::RECV_SIZE;
use super::worker::{drain_control, end_batch, new_core, pin};
use crate::core::{CopyKind, Core, DropReason, Sent};
use crate::publish::{Channels, Wake, WorkerLink, WorkerPort};

/// Space for the `io_uring_recvmsg_out` header (16 bytes) and a `sockaddr_in6` (28) in front of
/// each payload.
const HEADROOM: usize = 64;
/// Bytes per provided buffer: at least [`RECV_SIZE`] of payload, a multiple of 64 (the buffers
/// are laid out back to back, each starting on a cache line). The few bytes of payload room
/// beyond `RECV_SIZE` do not change what is accepted: the core checks every datagram's size.
const BUF_SIZE: usize = (RECV_SIZE + HEADROOM).next_multiple_of(64);
/// Default provided buffers per worker (`--uring-buffers`, a power of two). The kernel takes
/// them in ring order, so every buffer is touched once per round: few enough that the round
/// stays in cache (512 x 2 KiB), enough for a batch (a buffer is back as soon as its sends are
/// queued; when they run out, datagrams wait in the socket until the receive is re-armed).
pub const BUFFERS: u16 = 512;
/// Default in-flight sends per worker (`--uring-send-slots`).
pub const SEND_SLOTS: usize = 8192;
/// Submission queue entries.
const SQ_ENTRIES: u32 = 2048;
/// Completion queue entries.
const CQ_ENTRIES: u32 = 32768;
/// Buffer group id of the provided buffer ring.
const BGID: u16 = 0;

const TAG_RECV: u64 = 1 << 32;
const TAG_WAKE: u64 = 2 << 32;
/// Completions of sends; the low 32 bits are the send slot.
const TAG_SEND: u64 = 3 << 32;
const TAG_MASK: u64 = !0xffff_ffff;

/// How a worker sends each copy (`--uring-send`, for A/B measurements in `make perf`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SendPath {
    /// `IORING_OP_SENDMSG` with a `msghdr` per copy.
    SendMsg,
    /// `IORING_OP_SEND` with a destination address: no `msghdr` or iovec to copy.
    Send,
    /// `IORING_OP_SEND` on the socket registered as a fixed file (no file lookup per op).
    #[default]
    SendFixed,
}

impl std::str::FromStr for SendPath {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "sendmsg" => Ok(Self::SendMsg),
            "send" => Ok(Self::Send),
            "send-fixed" => Ok(Self::SendFixed),
            _ => Err(format!("must be sendmsg, send or send-fixed, not {s:?}")),
        }
    }
}

/// Index of the socket among the ring's registered files.
const FIXED_SOCK: u32 = 0;

/// Checks that this kernel and sandbox allow io_uring with provided buffer rings.
pub fn probe() -> Result<(), String> {
    let ring = IoUring::new(8).map_err(|e| format!("io_uring_setup failed: {e}"))?;
    let bufs = BufRing::new(8, 64).map_err(|e| format!("buffer ring allocation: {e}"))?;
    bufs.register(&ring.submitter())
        .map_err(|e| format!("IORING_REGISTER_PBUF_RING failed (kernel < 5.19?): {e}"))?;
    let mut p = io_uring::Probe::new();
    ring.submitter()
        .register_probe(&mut p)
        .map_err(|e| format!("IORING_REGISTER_PROBE failed: {e}"))?;
    for (code, name) in [
        (opcode::RecvMsg::CODE, "recvmsg"),
        (opcode::SendMsg::CODE, "sendmsg"),
        (opcode::Send::CODE, "send"),
        (opcode::Read::CODE, "read"),
    ] {
        if !p.is_supported(code) {
            return Err(format!("io_uring op {name} unsupported"));
        }
    }
    let _ = ring.submitter().unregister_buf_ring(BGID);
    Ok(())
}

/// Wakes the worker through an eventfd the ring always has a read posted on.
struct EventFdWake(File);

impl Wake for EventFdWake {
    fn wake(&self) {
        let _ = (&self.0).write(&1u64.to_ne_bytes());
    }
}

fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: eventfd has no memory-safety preconditions; the result is checked.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Starts worker `id` on `sock`.
pub fn spawn(
    id: usize,
    send_slots: usize,
    buffers: u16,
    path: SendPath,
    sock: Socket,
    core: Option<core_affinity::CoreId>,
    channels: &Channels,
) -> anyhow::Result<WorkerLink> {
    let efd = eventfd()?;
    let waker = Arc::new(EventFdWake(File::from(efd.try_clone()?)));
    let (port, tx, counters) = channels.factory.port(id);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let thread = std::thread::Builder::new()
        .name(format!("uring-{id}"))
        .spawn(move || {
            pin(id, core);
            // The ring is created on the worker thread: SINGLE_ISSUER binds it to its creator.
            match Worker::new(&port, sock, efd, send_slots, buffers, path) {
                Ok((mut w, flags)) => {
                    let _ = ready_tx.send(Ok(flags));
                    if let Err(e) = w.run(&port) {
                        tracing::error!(worker = id, "uring worker stopped: {e}");
                    }
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                }
            }
        })?;
    match ready_rx.recv() {
        Ok(Ok(flags)) => tracing::debug!(worker = id, flags, "io_uring worker ready"),
        Ok(Err(e)) => anyhow::bail!("worker {id}: io_uring setup failed: {e}"),
        Err(_) => anyhow::bail!("worker {id}: exited during setup"),
    }
    Ok(WorkerLink::new(tx, waker, counters, thread))
}

struct Worker {
    // Field order is drop order: the ring goes first, then the memory it referenced.
    ring: IoUring,
    bufs: BufRing,
    slots: SendSlots,
    refs: Box<[u16]>,
    recv_hdr: Box<libc::msghdr>,
    wake_buf: Box<u64>,
    efd: OwnedFd,
    sock: Socket,
    pending: VecDeque<cqueue::Entry>,
    tx: Sent,
    sock_ref: SockRef,
    /// This worker's id, in its relay packets' headers.
    id: u16,
    /// Sequence of this worker's relay packets (never reused with a link's key).
    relay_seq: u64,
    rearm_recv: bool,
    rearm_wake: bool,
}

/// Sets optional ring flags on a builder.
type SetupFlags = fn(&mut io_uring::Builder);

fn build_ring() -> io::Result<(IoUring, &'static str)> {
    let attempts: [(&str, SetupFlags); 3] = [
        ("single_issuer+defer_taskrun+coop_taskrun", |b| {
            b.setup_single_issuer()
                .setup_defer_taskrun()
                .setup_coop_taskrun();
        }),
        ("coop_taskrun", |b| {
            b.setup_coop_taskrun();
        }),
        ("none", |_| {}),
    ];
    let mut last = None;
    for (name, f) in attempts {
        let mut b = IoUring::builder();
        b.setup_cqsize(CQ_ENTRIES).setup_submit_all();
        f(&mut b);
        match b.build(SQ_ENTRIES) {
            Ok(r) => return Ok((r, name)),
            Err(e) => last = Some(e),
        }
    }
    Err(last.expect("at least one attempt"))
}

impl Worker {
    fn new(
        port: &WorkerPort,
        sock: Socket,
        efd: OwnedFd,
        send_slots: usize,
        buffers: u16,
        path: SendPath,
    ) -> io::Result<(Self, &'static str)> {
        let (ring, flags) = build_ring()?;
        let fd = sock.as_raw_fd();
        let sock_ref = match path {
            SendPath::SendMsg => SockRef::Msg(fd),
            SendPath::Send => SockRef::Raw(fd),
            SendPath::SendFixed => match ring.submitter().register_files(&[fd]) {
                Ok(()) => SockRef::Fixed,
                Err(e) => {
                    tracing::warn!(
                        "registering the socket with the ring: {e}; using its descriptor"
                    );
                    SockRef::Raw(fd)
                }
            },
        };
        let bufs = BufRing::new(buffers, BUF_SIZE)?;
        bufs.register(&ring.submitter())?;
        // SAFETY: msghdr is plain old data; all-zero is a valid value.
        let mut recv_hdr: Box<libc::msghdr> = Box::new(unsafe { std::mem::zeroed() });
        recv_hdr.msg_namelen = size_of::<libc::sockaddr_in6>() as u32;
        tracing::info!(worker = port.id, flags, send = ?path, "io_uring worker started");
        Ok((
            Self {
                ring,
                bufs,
                slots: SendSlots::new(send_slots.max(1)),
                refs: vec![0; usize::from(buffers)].into_boxed_slice(),
                recv_hdr,
                wake_buf: Box::new(0),
                efd,
                sock,
                pending: VecDeque::with_capacity(CQ_ENTRIES as usize),
                tx: Sent::default(),
                sock_ref,
                id: port.id as u16,
                relay_seq: 0,
                rearm_recv: true,
                rearm_wake: true,
            },
            flags,
        ))
    }

    fn run(&mut self, port: &WorkerPort) -> io::Result<()> {
        let mut core = new_core(port);
        loop {
            if !drain_control(port, &mut core) {
                return self.finish();
            }
            self.arm()?;
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if matches!(e.raw_os_error(), Some(libc::EINTR | libc::EBUSY)) => {}
                Err(e) => return Err(e),
            }
            self.reap();
            core.set_now(port.keyframes.now_ms());
            while let Some(cqe) = self.pending.pop_front() {
                self.complete(&mut core, cqe)?;
            }
            self.send_keyframe_requests(&mut core)?;
            self.send_repairs(&mut core)?;
            self.bufs.publish();
            core.count_sent(std::mem::take(&mut self.tx));
            end_batch(port, &mut core);
        }
    }

    /// Posts the multishot receive and the eventfd read when they are not active.
    fn arm(&mut self) -> io::Result<()> {
        if self.rearm_recv {
            let e = opcode::RecvMsgMulti::new(Fd(self.sock.as_raw_fd()), &*self.recv_hdr, BGID)
                .build()
                .user_data(TAG_RECV);
            self.push(&e)?;
            self.rearm_recv = false;
        }
        if self.rearm_wake {
            let buf: *mut u64 = &mut *self.wake_buf;
            let e = opcode::Read::new(Fd(self.efd.as_raw_fd()), buf.cast(), 8)
                .build()
                .user_data(TAG_WAKE);
            self.push(&e)?;
            self.rearm_wake = false;
        }
        Ok(())
    }

    /// Queues an SQE, submitting first if the queue is full.
    fn push(&mut self, e: &squeue::Entry) -> io::Result<()> {
        loop {
            // SAFETY: every SQE we build points at memory owned by `self` (slots, recv header,
            // wake buffer, provided buffers) that outlives the operation: slots and buffers are
            // only reused after their completion, and `finish` waits for all sends.
            if unsafe { self.ring.submission().push(e) }.is_ok() {
                return Ok(());
            }
            self.ring.submit()?;
        }
    }

    /// Moves completions to `pending`, finishing sends at once (they free slots and buffers).
    fn reap(&mut self) {
        let Self {
            ring,
            slots,
            refs,
            bufs,
            tx,
            pending,
            ..
        } = self;
        for cqe in ring.completion() {
            if cqe.user_data() & TAG_MASK == TAG_SEND {
                complete_send(slots, refs, bufs, tx, &cqe);
            } else {
                pending.push_back(cqe);
            }
        }
    }

    fn complete(&mut self, core: &mut Core, cqe: cqueue::Entry) -> io::Result<()> {
        // Send completions never get here: `reap` finishes them at once.
        match cqe.user_data() & TAG_MASK {
            TAG_WAKE => self.rearm_wake = true,
            TAG_RECV => {
                if !cqueue::more(cqe.flags()) {
                    self.rearm_recv = true;
                }
                let res = cqe.result();
                if res < 0 {
                    if res != -libc::ENOBUFS {
                        tracing::warn!("multishot recvmsg: {}", io::Error::from_raw_os_error(-res));
                    }
                    return Ok(());
                }
                let Some(bid) = cqueue::buffer_select(cqe.flags()) else {
                    return Ok(());
                };
                self.forward(core, bid, res as usize)?;
            }
            _ => {}
        }
        Ok(())
    }

    /// Decides on the datagram in buffer `bid` and queues a send per destination.
    fn forward(&mut self, core: &mut Core, bid: u16, len: usize) -> io::Result<()> {
        let buf = self.bufs.get(bid, len);
        let parsed = RecvMsgOut::parse(buf, &self.recv_hdr).ok().and_then(|m| {
            let src = super::sockaddr::parse(m.name_data())?;
            let p = m.payload_data();
            (!m.is_payload_truncated()).then_some((p.as_ptr(), p.len(), src))
        });
        let Some((ptr, plen, src)) = parsed else {
            core.counters.rx_packets += 1;
            core.counters.drop(DropReason::Malformed);
            self.bufs.push(bid);
            return Ok(());
        };
        // SAFETY: the payload lives in the buffer ring's allocation (not borrowed from `self`);
        // the kernel is done with it, and we own it until `refs[bid]` drops to zero and the
        // buffer is pushed back. SRTP decrypts it in place.
        let payload: &mut [u8] = unsafe { std::slice::from_raw_parts_mut(ptr.cast_mut(), plen) };
        let Ok(v) = core.handle(payload, src) else {
            self.bufs.push(bid);
            return Ok(());
        };
        let plain = v.plain(payload);
        let fd = self.sock_ref;
        // One reference for this loop itself: sends of this buffer may complete while we wait
        // for a slot below, and the buffer must not return to the ring before the loop ends.
        self.refs[usize::from(bid)] = 1;
        for (slot, peer) in v.dests.iter_slots() {
            let kind = v.copy_kind(slot, peer);
            if kind == CopyKind::Skip {
                continue;
            }
            if self.slots.free.is_empty() {
                self.wait_for_slot()?;
            }
            let entry = match kind {
                CopyKind::Shared => self
                    .slots
                    .take(fd, plain, &peer.raw, bid)
                    .inspect(|_| self.refs[usize::from(bid)] += 1),
                _ => self
                    .slots
                    .take_protected(fd, &peer.raw, |out| v.write(slot, peer, plain, out)),
            };
            match entry {
                Some(e) => self.push(&e)?,
                None => self.tx.failed += 1,
            }
        }
        for relay in v.relays.iter() {
            if self.slots.free.is_empty() {
                self.wait_for_slot()?;
            }
            self.relay_seq += 1;
            let (id, seq) = (self.id, self.relay_seq);
            let entry = self
                .slots
                .take_protected(fd, &relay.raw, |out| v.seal(relay, plain, id, seq, out));
            match entry {
                Some(e) => {
                    self.tx.relays += 1;
                    self.push(&e)?
                }
                None => self.tx.failed += 1,
            }
        }
        let r = &mut self.refs[usize::from(bid)];
        *r -= 1;
        if *r == 0 {
            self.bufs.push(bid);
        }
        Ok(())
    }

    /// Queues the keyframe requests the core made (viewers that joined mid-stream), each
    /// sealed into its upstream relay.
    fn send_keyframe_requests(&mut self, core: &mut Core) -> io::Result<()> {
        while let Some((relay, pli)) = core.take_keyframe_request() {
            if self.slots.free.is_empty() {
                self.wait_for_slot()?;
            }
            self.relay_seq += 1;
            let (id, seq, fd) = (self.id, self.relay_seq, self.sock_ref);
            let entry = self
                .slots
                .take_protected(fd, &relay.raw, |out| relay.seal(id, seq, &pli, out));
            match entry {
                Some(e) => {
                    self.tx.relays += 1;
                    self.push(&e)?
                }
                None => self.tx.failed += 1,
            }
        }
        Ok(())
    }

    /// Sends the packets the batch's NACKs asked the retransmission cache for.
    fn send_repairs(&mut self, core: &mut Core) -> io::Result<()> {
        while core.has_repairs() {
            if self.slots.free.is_empty() {
                self.wait_for_slot()?;
            }
            let fd = self.sock_ref;
            match self.slots.take_written(fd, |out| core.next_repair(out)) {
                Some(e) => self.push(&e)?,
                None => break,
            }
        }
        Ok(())
    }

    /// Submits what is queued and waits until a send completes (all slots are in flight).
    fn wait_for_slot(&mut self) -> io::Result<()> {
        while self.slots.free.is_empty() {
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if matches!(e.raw_os_error(), Some(libc::EINTR | libc::EBUSY)) => {}
                Err(e) => return Err(e),
            }
            self.reap();
        }
        Ok(())
    }

    /// Waits (bounded) for in-flight sends so no operation outlives the memory it points at.
    fn finish(&mut self) -> io::Result<()> {
        for _ in 0..1000 {
            if self.slots.in_flight() == 0 {
                break;
            }
            self.ring.submit_and_wait(1)?;
            self.reap();
        }
        Ok(())
    }
}
