//! The io_uring engine. Each worker owns a ring, a `SO_REUSEPORT` socket and a provided buffer
//! ring. One multishot `recvmsg` fills buffers from the buffer ring; for every forwarded packet
//! the worker queues one `sendmsg` SQE per destination, all pointing at the same received buffer,
//! which goes back to the buffer ring when its last send completes. Submissions are batched: one
//! `io_uring_enter` submits every send of a batch and waits for the next completions.

use std::alloc::Layout;
use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::types::{BufRingEntry, Fd, Fixed, RecvMsgOut};
use io_uring::{IoUring, Submitter, cqueue, opcode, squeue};
use socket2::{SockAddr, Socket};

use super::worker::{drain_control, end_batch, pin};
use super::{MAX_DATAGRAM, PROTECTED_SIZE, protect};
use crate::core::{Core, DropReason, Table};
use crate::publish::{Channels, Wake, WorkerLink, WorkerPort};

/// Space for the `io_uring_recvmsg_out` header and a `sockaddr_in6` in front of each payload.
const HEADROOM: usize = 64;
/// Bytes per provided buffer.
const BUF_SIZE: usize = MAX_DATAGRAM + HEADROOM;
/// Provided buffers per worker (a power of two).
const N_BUFS: u16 = 4096;
/// Default in-flight sends per worker (`--uring-send-slots`).
pub const SEND_SLOTS: usize = 8192;
/// `SendSlot::bid` of a send from the slot's own protected copy, not from a received buffer.
const NO_BUF: u16 = u16::MAX;
/// Submission queue entries.
const SQ_ENTRIES: u32 = 2048;
/// Completion queue entries.
const CQ_ENTRIES: u32 = 32768;
/// Buffer group id of the provided buffer ring.
const BGID: u16 = 0;

const TAG_RECV: u64 = 1 << 32;
const TAG_WAKE: u64 = 2 << 32;
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
            match Worker::new(&port, sock, efd, send_slots, path) {
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

/// A provided buffer ring: the ring of `io_uring_buf` entries (page aligned, shared with the
/// kernel) and the buffers they hand out.
struct BufRing {
    entries: NonNull<BufRingEntry>,
    entries_layout: Layout,
    bufs: NonNull<u8>,
    bufs_layout: Layout,
    n: u16,
    buf_size: usize,
    tail: u16,
}

impl BufRing {
    /// `n` (a power of two) buffers of `buf_size` bytes, all handed to the ring.
    fn new(n: u16, buf_size: usize) -> io::Result<Self> {
        assert!(n.is_power_of_two());
        let nomem = || io::Error::from(io::ErrorKind::OutOfMemory);
        let entries_layout =
            Layout::from_size_align(usize::from(n) * size_of::<BufRingEntry>(), 4096)
                .map_err(|_| nomem())?;
        let bufs_layout =
            Layout::from_size_align(usize::from(n) * buf_size, 64).map_err(|_| nomem())?;
        // SAFETY: both layouts have non-zero size.
        let (entries, bufs) = unsafe {
            (
                std::alloc::alloc_zeroed(entries_layout),
                std::alloc::alloc_zeroed(bufs_layout),
            )
        };
        let mut r = Self {
            entries: NonNull::new(entries.cast()).ok_or_else(nomem)?,
            entries_layout,
            bufs: NonNull::new(bufs).ok_or_else(nomem)?,
            bufs_layout,
            n,
            buf_size,
            tail: 0,
        };
        for bid in 0..n {
            r.push(bid);
        }
        r.publish();
        Ok(r)
    }

    fn register(&self, sub: &Submitter<'_>) -> io::Result<()> {
        // SAFETY: the entries stay allocated until `self` drops, which the worker arranges to
        // happen after the ring (and so the registration) is gone.
        unsafe { sub.register_buf_ring_with_flags(self.entries.as_ptr() as u64, self.n, BGID, 0) }
    }

    /// Queues buffer `bid` for the kernel (visible after [`publish`](Self::publish)).
    fn push(&mut self, bid: u16) {
        let slot = usize::from(self.tail & (self.n - 1));
        // SAFETY: `slot < n`, and the entry at the tail is not owned by the kernel: it consumes
        // only entries between its head and our published tail.
        let e = unsafe { &mut *self.entries.as_ptr().add(slot) };
        // SAFETY: `bid < n`, so the offset stays inside the buffer allocation.
        let addr = unsafe { self.bufs.as_ptr().add(usize::from(bid) * self.buf_size) };
        e.set_addr(addr as u64);
        e.set_len(self.buf_size as u32);
        e.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    /// Makes pushed buffers visible to the kernel.
    fn publish(&self) {
        // SAFETY: `tail` points at the ring's shared tail field inside our allocation; the
        // kernel reads it with acquire semantics, so a release store orders the entries first.
        unsafe {
            let tail = BufRingEntry::tail(self.entries.as_ptr()) as *mut u16;
            AtomicU16::from_ptr(tail).store(self.tail, Ordering::Release);
        }
    }

    /// The first `len` bytes of buffer `bid`, as filled by the kernel.
    fn get(&self, bid: u16, len: usize) -> &[u8] {
        assert!(bid < self.n && len <= self.buf_size);
        // SAFETY: in bounds (checked above); the kernel wrote this buffer before posting the
        // completion that named it and does not touch it again until we push it back.
        unsafe {
            std::slice::from_raw_parts(
                self.bufs.as_ptr().add(usize::from(bid) * self.buf_size),
                len,
            )
        }
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with these layouts; the ring that used them is gone.
        unsafe {
            std::alloc::dealloc(self.entries.as_ptr().cast(), self.entries_layout);
            std::alloc::dealloc(self.bufs.as_ptr(), self.bufs_layout);
        }
    }
}

/// One in-flight send: its `msghdr` points at its own iovec and address.
struct SendSlot {
    hdr: libc::msghdr,
    iov: libc::iovec,
    name: SockAddr,
    bid: u16,
}

/// Fixed pool of send slots; boxed so the self-pointers stay valid. Each slot also owns room
/// for one SRTP-protected copy (zero pages until first used).
struct SendSlots {
    slots: Box<[SendSlot]>,
    protected: Box<[u8]>,
    free: Vec<u32>,
}

impl SendSlots {
    fn new(n: usize) -> Self {
        let unspecified = SockAddr::from(std::net::SocketAddr::from(([0, 0, 0, 0], 0)));
        let slots = (0..n)
            .map(|_| SendSlot {
                // SAFETY: msghdr is plain old data; all-zero is a valid value.
                hdr: unsafe { std::mem::zeroed() },
                iov: libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0,
                },
                name: unspecified.clone(),
                bid: 0,
            })
            .collect();
        Self {
            slots,
            protected: vec![0; n * PROTECTED_SIZE].into_boxed_slice(),
            free: (0..n as u32).rev().collect(),
        }
    }

    fn in_flight(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// Fills a free slot with a send of `payload` to `to`; returns its SQE.
    fn take(
        &mut self,
        fd: SockRef,
        payload: &[u8],
        to: &SockAddr,
        bid: u16,
    ) -> Option<squeue::Entry> {
        let i = self.free.pop()?;
        Some(self.fill(i, fd, (payload.as_ptr(), payload.len()), to, bid))
    }

    /// Fills a free slot with a copy that `write` produces in the slot's own buffer (an SRTP
    /// protected copy). `None` when no slot is free or `write` fails.
    fn take_protected(
        &mut self,
        fd: SockRef,
        to: &SockAddr,
        write: impl FnOnce(&mut [u8]) -> Option<usize>,
    ) -> Option<squeue::Entry> {
        let i = *self.free.last()?;
        let at = i as usize * PROTECTED_SIZE;
        let n = write(&mut self.protected[at..at + PROTECTED_SIZE])?;
        self.free.pop();
        // The slot's region of `protected` is not written again until this send completes and
        // the slot is freed; the boxed slice never moves.
        let out = self.protected[at..].as_ptr();
        Some(self.fill(i, fd, (out, n), to, NO_BUF))
    }

    /// Points slot `i` at `len` bytes at `ptr` (kept alive by the caller until completion).
    fn fill(
        &mut self,
        i: u32,
        fd: SockRef,
        (ptr, len): (*const u8, usize),
        to: &SockAddr,
        bid: u16,
    ) -> squeue::Entry {
        let s = &mut self.slots[i as usize];
        s.name = to.clone();
        s.bid = bid;
        let entry = match fd {
            SockRef::Msg(fd) => {
                s.iov = libc::iovec {
                    iov_base: ptr as *mut _,
                    iov_len: len,
                };
                s.hdr.msg_name = s.name.as_ptr() as *mut _;
                s.hdr.msg_namelen = s.name.len();
                s.hdr.msg_iov = &mut s.iov;
                s.hdr.msg_iovlen = 1;
                opcode::SendMsg::new(Fd(fd), &s.hdr).build()
            }
            SockRef::Raw(fd) => opcode::Send::new(Fd(fd), ptr, len as u32)
                .dest_addr(s.name.as_ptr().cast())
                .dest_addr_len(s.name.len())
                .build(),
            SockRef::Fixed => opcode::Send::new(Fixed(FIXED_SOCK), ptr, len as u32)
                .dest_addr(s.name.as_ptr().cast())
                .dest_addr_len(s.name.len())
                .build(),
        };
        entry.user_data(TAG_SEND | u64::from(i))
    }

    /// Frees slot `i`; returns the buffer it used.
    fn complete(&mut self, i: u32) -> u16 {
        self.free.push(i);
        self.slots[i as usize].bid
    }
}

/// How a send names the socket, by [`SendPath`].
#[derive(Debug, Clone, Copy)]
enum SockRef {
    /// `sendmsg` on the raw descriptor.
    Msg(RawFd),
    /// `send` with a destination on the raw descriptor.
    Raw(RawFd),
    /// `send` with a destination on the registered file.
    Fixed,
}

/// Send outcomes counted outside the core (sends complete while verdicts borrow it).
#[derive(Default)]
struct Tx {
    packets: u64,
    bytes: u64,
    failed: u64,
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
    tx: Tx,
    sock_ref: SockRef,
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
        let bufs = BufRing::new(N_BUFS, BUF_SIZE)?;
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
                refs: vec![0; usize::from(N_BUFS)].into_boxed_slice(),
                recv_hdr,
                wake_buf: Box::new(0),
                efd,
                sock,
                pending: VecDeque::with_capacity(CQ_ENTRIES as usize),
                tx: Tx::default(),
                sock_ref,
                rearm_recv: true,
                rearm_wake: true,
            },
            flags,
        ))
    }

    fn run(&mut self, port: &WorkerPort) -> io::Result<()> {
        let mut core = Core::new(Table::default());
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
            while let Some(cqe) = self.pending.pop_front() {
                self.complete(&mut core, cqe)?;
            }
            self.bufs.publish();
            core.counters.tx_packets += std::mem::take(&mut self.tx.packets);
            core.counters.tx_bytes += std::mem::take(&mut self.tx.bytes);
            core.counters.drops[DropReason::SendFailed as usize] +=
                std::mem::take(&mut self.tx.failed);
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
        match cqe.user_data() & TAG_MASK {
            TAG_SEND => complete_send(
                &mut self.slots,
                &mut self.refs,
                &mut self.bufs,
                &mut self.tx,
                &cqe,
            ),
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
        let plain = &payload[..v.len];
        let fd = self.sock_ref;
        // One reference for this loop itself: sends of this buffer may complete while we wait
        // for a slot below, and the buffer must not return to the ring before the loop ends.
        self.refs[usize::from(bid)] = 1;
        for peer in v.dests.iter() {
            if self.slots.free.is_empty() {
                self.wait_for_slot()?;
            }
            let entry = match &peer.srtp {
                None => self
                    .slots
                    .take(fd, plain, &peer.raw, bid)
                    .inspect(|_| self.refs[usize::from(bid)] += 1),
                Some(s) => self.slots.take_protected(fd, &peer.raw, |out| {
                    protect(s, v.class, plain, v.index, out)
                }),
            };
            match entry {
                Some(e) => self.push(&e)?,
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

/// Accounts a finished send; the buffer returns to the ring with its last send.
fn complete_send(
    slots: &mut SendSlots,
    refs: &mut [u16],
    bufs: &mut BufRing,
    tx: &mut Tx,
    cqe: &cqueue::Entry,
) {
    let bid = slots.complete(cqe.user_data() as u32);
    match cqe.result() {
        n if n >= 0 => {
            tx.packets += 1;
            tx.bytes += n as u64;
        }
        _ => tx.failed += 1,
    }
    if bid == NO_BUF {
        return;
    }
    let r = &mut refs[usize::from(bid)];
    *r -= 1;
    if *r == 0 {
        bufs.push(bid);
    }
}
