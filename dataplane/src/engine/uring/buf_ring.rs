//! The provided buffer ring of one io_uring worker: buffers the kernel fills with received
//! datagrams (multishot `recvmsg`), handed back when the last send of each is done.

use std::alloc::Layout;
use std::io;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::Submitter;
use io_uring::types::BufRingEntry;

use super::BGID;

/// A provided buffer ring: the ring of `io_uring_buf` entries (page aligned, shared with the
/// kernel) and the buffers they hand out.
pub(super) struct BufRing {
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
    pub(super) fn new(n: u16, buf_size: usize) -> io::Result<Self> {
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

    pub(super) fn register(&self, sub: &Submitter<'_>) -> io::Result<()> {
        // SAFETY: the entries stay allocated until `self` drops, which the worker arranges to
        // happen after the ring (and so the registration) is gone.
        unsafe { sub.register_buf_ring_with_flags(self.entries.as_ptr() as u64, self.n, BGID, 0) }
    }

    /// Queues buffer `bid` for the kernel (visible after [`publish`](Self::publish)).
    pub(super) fn push(&mut self, bid: u16) {
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
    pub(super) fn publish(&self) {
        // SAFETY: `tail` points at the ring's shared tail field inside our allocation; the
        // kernel reads it with acquire semantics, so a release store orders the entries first.
        unsafe {
            let tail = BufRingEntry::tail(self.entries.as_ptr()) as *mut u16;
            AtomicU16::from_ptr(tail).store(self.tail, Ordering::Release);
        }
    }

    /// The first `len` bytes of buffer `bid`, as filled by the kernel.
    pub(super) fn get(&self, bid: u16, len: usize) -> &[u8] {
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
