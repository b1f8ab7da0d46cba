//! An AF_XDP socket and its UMEM (model: the kernel's `Documentation/networking/af_xdp.rst`,
//! xdp-tutorial, s2n-quic-xdp). The UMEM is one anonymous mapping of fixed-size frames; four
//! single-producer single-consumer rings shared with the kernel move frame addresses around:
//!
//! - **fill** (we produce): free frames the kernel may receive into;
//! - **rx** (the kernel produces): received frames (address, length);
//! - **tx** (we produce): frames to send;
//! - **completion** (the kernel produces): frames it has sent, free again.
//!
//! Frames not in a ring are on a free list, allocated once: nothing is allocated per packet.
//! Completions are reaped per batch, and the kernel is woken (a `sendto` or `recvfrom` of
//! nothing) only when the ring says it needs it (`XDP_USE_NEED_WAKEUP`).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU32, Ordering};

/// Bytes per UMEM frame (the kernel's default chunk size; a frame holds one Ethernet frame of
/// up to 1 500 bytes of IP and the headroom).
pub const FRAME_SIZE: u32 = 2048;

/// Sizes of one socket's UMEM and rings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// UMEM frames (a power of two). 2 048 frames = 4 MiB of locked memory, within the 8 MiB
    /// `RLIMIT_MEMLOCK` of the sandbox; a production host with more queues or deeper rings
    /// raises the limit (or runs the bridge with `CAP_IPC_LOCK`/`LimitMEMLOCK=infinity`).
    pub frames: u32,
    /// Entries of each ring (a power of two, at most `frames / 2` so fill and tx can both be
    /// full).
    pub ring: u32,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            frames: 2048,
            ring: 1024,
        }
    }
}

/// How the socket exchanges frames with the driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Copy {
    /// The kernel copies between its buffers and the UMEM (every driver; veth has nothing else).
    Copy,
    /// The driver DMAs into the UMEM itself (drivers with AF_XDP zero-copy support).
    ZeroCopy,
}

/// An anonymous or file-backed mapping, unmapped on drop.
struct Mapping {
    ptr: *mut u8,
    len: usize,
}

impl Mapping {
    fn new(len: usize, fd: Option<(RawFd, libc::off_t)>) -> io::Result<Self> {
        let (flags, fd, off) = match fd {
            None => (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, 0),
            Some((fd, off)) => (libc::MAP_SHARED | libc::MAP_POPULATE, fd, off),
        };
        // SAFETY: a fresh mapping of `len` bytes at an address the kernel picks; no existing
        // memory is touched. The result is checked before use.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                flags,
                fd,
                off,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Self {
            ptr: ptr.cast(),
            len,
        })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are exactly what mmap returned, unmapped once; nothing borrows
        // the mapping past its owner.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// One ring mapped from the socket: its producer and consumer indices (free-running u32s the
/// kernel and we update), its flags word and its entries.
struct Ring {
    _map: Mapping,
    producer: *const AtomicU32,
    consumer: *const AtomicU32,
    flags: *const AtomicU32,
    entries: *mut u8,
    mask: u32,
    /// Our side's index (producer for fill/tx, consumer for rx/completion), ahead of what we
    /// published until [`Ring::publish`].
    local: u32,
}

impl Ring {
    /// Maps ring `off` (its page offset) of `fd` with `size` entries of `entry` bytes.
    fn map(
        fd: RawFd,
        off: &libc::xdp_ring_offset,
        pgoff: u64,
        size: u32,
        entry: usize,
    ) -> io::Result<Self> {
        let len = off.desc as usize + size as usize * entry;
        let map = Mapping::new(len, Some((fd, pgoff as libc::off_t)))?;
        let at = |o: u64| map.ptr.wrapping_add(o as usize);
        Ok(Self {
            producer: at(off.producer).cast(),
            consumer: at(off.consumer).cast(),
            flags: at(off.flags).cast(),
            entries: at(off.desc),
            mask: size - 1,
            local: 0,
            _map: map,
        })
    }

    fn producer(&self) -> &AtomicU32 {
        // SAFETY: the kernel's offsets put a 4-byte aligned u32 here, inside the mapping that
        // lives as long as `self`; it is only accessed atomically.
        unsafe { &*self.producer }
    }

    fn consumer(&self) -> &AtomicU32 {
        // SAFETY: as for `producer`.
        unsafe { &*self.consumer }
    }

    /// Whether the kernel asks to be woken to process this ring.
    fn needs_wakeup(&self) -> bool {
        // SAFETY: as for `producer`.
        let flags = unsafe { &*self.flags };
        flags.load(Ordering::Relaxed) & libc::XDP_RING_NEED_WAKEUP != 0
    }

    /// Entries we produced that the kernel has not consumed yet.
    fn pending(&self) -> u32 {
        self.local
            .wrapping_sub(self.consumer().load(Ordering::Acquire))
    }

    /// Free slots for us as producer (the kernel consumes).
    fn free(&self) -> u32 {
        let consumed = self.consumer().load(Ordering::Acquire);
        (self.mask + 1) - self.local.wrapping_sub(consumed)
    }

    /// Entries ready for us as consumer (the kernel produces).
    fn ready(&self) -> u32 {
        self.producer()
            .load(Ordering::Acquire)
            .wrapping_sub(self.local)
    }

    /// Pointer to entry `i` (any index: masked) of `size` bytes each.
    fn entry(&self, i: u32, size: usize) -> *mut u8 {
        self.entries.wrapping_add((i & self.mask) as usize * size)
    }

    /// Publishes our producer index (after writing the entries).
    fn publish_produced(&self) {
        self.producer().store(self.local, Ordering::Release);
    }

    /// Publishes our consumer index (after reading the entries).
    fn publish_consumed(&self) {
        self.consumer().store(self.local, Ordering::Release);
    }
}

/// An AF_XDP socket bound to one RX queue of one interface, with its own UMEM: the first half
/// of the frames receive (fill and rx rings), the second half send (tx and completion rings),
/// so a received frame and the frames written from it are never the same memory.
pub struct Xsk {
    fd: OwnedFd,
    umem: Mapping,
    rx: RxSide,
    tx: TxSide,
}

/// The receiving rings and the receive frames in neither.
struct RxSide {
    fill: Ring,
    rx: Ring,
    free: Vec<u64>,
    /// Entries of the rx ring handed out by [`Rx::ready`] and not yet released.
    held: u32,
}

/// The sending rings and the send frames in neither.
struct TxSide {
    tx: Ring,
    completion: Ring,
    free: Vec<u64>,
}

// SAFETY: the raw pointers point into mappings the socket owns; a socket is used by one
// thread at a time (its worker), which `&mut self` on every ring operation enforces.
unsafe impl Send for Xsk {}

const DESC: usize = std::mem::size_of::<libc::xdp_desc>();
const ADDR: usize = std::mem::size_of::<u64>();

/// The UMEM as the two halves see it: its base and the byte range a half's frames live in.
#[derive(Clone, Copy)]
struct Frames {
    base: *mut u8,
    range: (u64, u64),
}

impl Frames {
    /// The bytes `addr..addr + len`, if they lie within this half.
    fn get(&mut self, addr: u64, len: u64) -> Option<&mut [u8]> {
        let end = addr.checked_add(len)?;
        if addr < self.range.0 || end > self.range.1 {
            return None;
        }
        // SAFETY: `addr..end` is inside this half of the UMEM mapping (checked above), which
        // outlives the half's borrow of the socket; the frame is ours until it goes back to a
        // ring, and the other half never hands out bytes of this one.
        Some(unsafe { std::slice::from_raw_parts_mut(self.base.add(addr as usize), len as usize) })
    }
}

/// The receiving half of a socket, from [`Xsk::split`].
pub struct Rx<'a> {
    side: &'a mut RxSide,
    frames: Frames,
    fd: RawFd,
}

/// The sending half of a socket, from [`Xsk::split`].
pub struct Tx<'a> {
    side: &'a mut TxSide,
    frames: Frames,
    fd: RawFd,
}

impl Xsk {
    /// A socket on RX queue `queue` of interface `ifindex`, exchanging frames as `copy` says.
    pub fn bind(ifindex: u32, queue: u32, cfg: Config, copy: Copy) -> io::Result<Self> {
        if !cfg.frames.is_power_of_two() || !cfg.ring.is_power_of_two() || cfg.ring > cfg.frames / 2
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "AF_XDP: frames and ring must be powers of two, ring at most frames / 2",
            ));
        }
        // SAFETY: plain socket(2); the descriptor is owned right below.
        let raw = unsafe { libc::socket(libc::AF_XDP, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let len = cfg.frames as usize * FRAME_SIZE as usize;
        let umem = Mapping::new(len, None)?;
        let reg = libc::xdp_umem_reg {
            addr: umem.ptr as u64,
            len: len as u64,
            chunk_size: FRAME_SIZE,
            headroom: 0,
            flags: 0,
            tx_metadata_len: 0,
        };
        setsockopt(&fd, libc::SOL_XDP, libc::XDP_UMEM_REG, &reg)?;
        for opt in [
            libc::XDP_UMEM_FILL_RING,
            libc::XDP_UMEM_COMPLETION_RING,
            libc::XDP_RX_RING,
            libc::XDP_TX_RING,
        ] {
            setsockopt(&fd, libc::SOL_XDP, opt, &cfg.ring)?;
        }
        // SAFETY: xdp_mmap_offsets is plain old data; all zeroes is a valid value.
        let mut off: libc::xdp_mmap_offsets = unsafe { std::mem::zeroed() };
        let mut optlen = std::mem::size_of::<libc::xdp_mmap_offsets>() as libc::socklen_t;
        // SAFETY: the kernel writes at most `optlen` bytes into `off`, which has that size.
        let r = unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                libc::SOL_XDP,
                libc::XDP_MMAP_OFFSETS,
                (&mut off as *mut libc::xdp_mmap_offsets).cast(),
                &mut optlen,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        let raw = fd.as_raw_fd();
        let fill = Ring::map(raw, &off.fr, libc::XDP_UMEM_PGOFF_FILL_RING, cfg.ring, ADDR)?;
        let completion = Ring::map(
            raw,
            &off.cr,
            libc::XDP_UMEM_PGOFF_COMPLETION_RING,
            cfg.ring,
            ADDR,
        )?;
        let rx = Ring::map(raw, &off.rx, libc::XDP_PGOFF_RX_RING as u64, cfg.ring, DESC)?;
        let tx = Ring::map(raw, &off.tx, libc::XDP_PGOFF_TX_RING as u64, cfg.ring, DESC)?;
        let mode = match copy {
            Copy::Copy => libc::XDP_COPY,
            Copy::ZeroCopy => libc::XDP_ZEROCOPY,
        };
        let sa = libc::sockaddr_xdp {
            sxdp_family: libc::AF_XDP as u16,
            sxdp_flags: mode | libc::XDP_USE_NEED_WAKEUP,
            sxdp_ifindex: ifindex,
            sxdp_queue_id: queue,
            sxdp_shared_umem_fd: 0,
        };
        // SAFETY: `sa` is a valid sockaddr_xdp of the size passed.
        let r = unsafe {
            libc::bind(
                raw,
                (&sa as *const libc::sockaddr_xdp).cast(),
                std::mem::size_of::<libc::sockaddr_xdp>() as libc::socklen_t,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        // In copy mode every frame sent is an skb charged to the socket's send buffer until
        // the receiving side frees it: the default (212 992 bytes, ~90 datagrams) would stall
        // the tx ring long before its frames run out. Room for every send frame in flight
        // (best effort: forced past `wmem_max` where the process may, capped by it otherwise).
        let sndbuf = (cfg.frames / 2 * FRAME_SIZE * 2) as libc::c_int;
        if setsockopt(&fd, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, &sndbuf).is_err() {
            let _ = setsockopt(&fd, libc::SOL_SOCKET, libc::SO_SNDBUF, &sndbuf);
        }
        let half = u64::from(cfg.frames / 2);
        let addrs = |r: std::ops::Range<u64>| -> Vec<u64> {
            r.map(|i| i * u64::from(FRAME_SIZE)).collect()
        };
        let mut x = Self {
            fd,
            umem,
            rx: RxSide {
                fill,
                rx,
                // Popped from the end: the lowest frames go out first.
                free: addrs(0..half).into_iter().rev().collect(),
                held: 0,
            },
            tx: TxSide {
                tx,
                completion,
                free: addrs(half..2 * half).into_iter().rev().collect(),
            },
        };
        x.split().0.refill();
        Ok(x)
    }

    /// The receiving and the sending half, usable together: a received frame stays borrowed
    /// from [`Rx`] while copies are written into frames of [`Tx`].
    pub fn split(&mut self) -> (Rx<'_>, Tx<'_>) {
        let base = self.umem.ptr;
        let half = self.umem.len as u64 / 2;
        let fd = self.fd.as_raw_fd();
        (
            Rx {
                side: &mut self.rx,
                frames: Frames {
                    base,
                    range: (0, half),
                },
                fd,
            },
            Tx {
                side: &mut self.tx,
                frames: Frames {
                    base,
                    range: (half, 2 * half),
                },
                fd,
            },
        )
    }

    /// Calls `f` with each received frame (an Ethernet frame), then gives the frames back to
    /// the fill ring. Returns how many.
    pub fn recv(&mut self, mut f: impl FnMut(&mut [u8])) -> usize {
        let mut rx = self.split().0;
        let n = rx.ready(u32::MAX);
        for i in 0..n {
            if let Some(frame) = rx.frame(i) {
                f(frame);
            }
        }
        rx.release();
        n as usize
    }

    /// Queues `pkt` (a whole Ethernet frame) for sending, copied into a free frame. `false`
    /// when no frame or tx slot is free (reap completions with [`Xsk::flush`]).
    pub fn send(&mut self, pkt: &[u8]) -> bool {
        let mut tx = self.split().1;
        let Some(frame) = tx.frame() else {
            return false;
        };
        let Some(to) = frame.get_mut(..pkt.len()) else {
            return false;
        };
        to.copy_from_slice(pkt);
        tx.push(pkt.len());
        true
    }

    /// [`Tx::flush`].
    pub fn flush(&mut self) -> io::Result<usize> {
        self.split().1.flush()
    }
}

impl Rx<'_> {
    /// Received frames waiting, at most `max`; they are [`Rx::frame`] `0..n` until
    /// [`Rx::release`].
    pub fn ready(&mut self, max: u32) -> u32 {
        self.side.held = self.side.rx.ready().min(max);
        self.side.held
    }

    /// Received frame `i` of those [`Rx::ready`] counted (`None` if the kernel's descriptor
    /// were outside the receive frames: the frame is skipped).
    pub fn frame(&mut self, i: u32) -> Option<&mut [u8]> {
        if i >= self.side.held {
            return None;
        }
        let rx = &self.side.rx;
        let slot = rx
            .entry(rx.local.wrapping_add(i), DESC)
            .cast::<libc::xdp_desc>();
        // SAFETY: the kernel produced this entry (below its producer index, read with Acquire
        // in `ready`), a plain xdp_desc inside the rx ring's mapping; we have not consumed it.
        let d = unsafe { slot.read() };
        self.frames.get(d.addr, u64::from(d.len))
    }

    /// Gives the frames [`Rx::ready`] counted back to the kernel's fill ring, waking it when
    /// it waits for fill entries.
    pub fn release(&mut self) {
        let n = self.side.held;
        for i in 0..n {
            let rx = &self.side.rx;
            let slot = rx
                .entry(rx.local.wrapping_add(i), DESC)
                .cast::<libc::xdp_desc>();
            // SAFETY: as in `frame`: an entry the kernel produced and we have not consumed.
            let d = unsafe { slot.read() };
            let addr = d.addr & !(u64::from(FRAME_SIZE) - 1);
            if addr >= self.frames.range.0 && addr < self.frames.range.1 {
                self.side.free.push(addr);
            }
        }
        self.side.held = 0;
        if n > 0 {
            self.side.rx.local = self.side.rx.local.wrapping_add(n);
            self.side.rx.publish_consumed();
        }
        self.refill();
        if self.side.fill.needs_wakeup() {
            // SAFETY: recvfrom with no buffer and no address is the AF_XDP "receive now" kick.
            unsafe {
                libc::recvfrom(
                    self.fd,
                    std::ptr::null_mut(),
                    0,
                    libc::MSG_DONTWAIT,
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                )
            };
        }
    }

    /// Hands free receive frames to the kernel's fill ring.
    fn refill(&mut self) {
        let side = &mut *self.side;
        let n = side.fill.free().min(side.free.len() as u32);
        for _ in 0..n {
            let addr = side.free.pop().expect("counted");
            let slot = side.fill.entry(side.fill.local, ADDR).cast::<u64>();
            // SAFETY: the slot is inside the fill ring's mapping and ours to write (between
            // the kernel's consumer index and the ring size).
            unsafe { slot.write(addr) };
            side.fill.local = side.fill.local.wrapping_add(1);
        }
        if n > 0 {
            side.fill.publish_produced();
        }
    }
}

impl Tx<'_> {
    /// The next free send frame ([`FRAME_SIZE`] bytes) to write a frame into, then
    /// [`Tx::push`]; `None` when no frame or tx slot is free (until completions are reaped by
    /// [`Tx::flush`]).
    pub fn frame(&mut self) -> Option<&mut [u8]> {
        if self.side.tx.free() == 0 {
            return None;
        }
        let addr = *self.side.free.last()?;
        self.frames.get(addr, u64::from(FRAME_SIZE))
    }

    /// Queues the first `len` bytes of the frame [`Tx::frame`] gave for sending.
    pub fn push(&mut self, len: usize) {
        let Some(addr) = self.side.free.pop() else {
            return;
        };
        let tx = &mut self.side.tx;
        let slot = tx.entry(tx.local, DESC).cast::<libc::xdp_desc>();
        let d = libc::xdp_desc {
            addr,
            len: len.min(FRAME_SIZE as usize) as u32,
            options: 0,
        };
        // SAFETY: the slot is inside the tx ring's mapping and ours to write (`frame` found a
        // free slot, and nothing was queued since).
        unsafe { slot.write(d) };
        tx.local = tx.local.wrapping_add(1);
    }

    /// Publishes what [`Tx::push`] queued, wakes the kernel if it needs it, and reaps the
    /// completion ring (frames sent are free again). Returns the frames completed.
    ///
    /// In copy mode one kick sends at most 32 frames (the kernel's `TX_BATCH_SIZE`) and says
    /// `EAGAIN` when more wait: the kick is repeated until the ring is drained (or the device
    /// pushes back), so a batch's copies leave with the batch.
    pub fn flush(&mut self) -> io::Result<usize> {
        let side = &mut *self.side;
        side.tx.publish_produced();
        // Enough kicks for a full ring at 32 frames each; none when the kernel has taken every
        // frame queued (a kick is a syscall, and copy mode always asks for one).
        let mut kicks = side.tx.mask / 32 + 2;
        while kicks > 0 && side.tx.pending() > 0 && side.tx.needs_wakeup() {
            kicks -= 1;
            // SAFETY: sendto with no data and no address is the AF_XDP "transmit now" kick.
            let r = unsafe {
                libc::sendto(
                    self.fd,
                    std::ptr::null(),
                    0,
                    libc::MSG_DONTWAIT,
                    std::ptr::null(),
                    0,
                )
            };
            if r >= 0 {
                break;
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                // More frames wait (copy mode's batch limit, or the driver's queue was busy).
                Some(libc::EAGAIN) => {}
                // The device's queue is full: what is left goes with the next kick.
                Some(libc::EBUSY | libc::ENOBUFS) => break,
                _ => return Err(e),
            }
        }
        let n = side.completion.ready();
        for _ in 0..n {
            let slot = side
                .completion
                .entry(side.completion.local, ADDR)
                .cast::<u64>();
            // SAFETY: the kernel produced this entry (below its producer index), a u64 inside
            // the completion ring's mapping.
            let addr = unsafe { slot.read() };
            side.completion.local = side.completion.local.wrapping_add(1);
            if addr >= self.frames.range.0 && addr < self.frames.range.1 {
                side.free.push(addr);
            }
        }
        if n > 0 {
            side.completion.publish_consumed();
        }
        Ok(n as usize)
    }
}

impl AsRawFd for Xsk {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// `setsockopt(fd, level, opt, v)`.
fn setsockopt<T>(fd: &OwnedFd, level: libc::c_int, opt: libc::c_int, v: &T) -> io::Result<()> {
    // SAFETY: `v` is a valid `T` of the size passed, read by the kernel only.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            opt,
            (v as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}
