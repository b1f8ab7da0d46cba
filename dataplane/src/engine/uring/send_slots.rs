//! The send slots of one io_uring worker: a fixed pool of in-flight sends, each with the
//! destination (and, for `sendmsg`, the `msghdr`) the kernel reads until completion, and room
//! for one SRTP-protected copy. A plain copy points at the received buffer (zero copy).

use std::os::fd::RawFd;

use io_uring::types::{Fd, Fixed};
use io_uring::{cqueue, opcode, squeue};
use socket2::SockAddr;

use super::buf_ring::BufRing;
use super::{FIXED_SOCK, TAG_SEND};
use crate::core::Sent;
use crate::engine::PROTECTED_SIZE;

/// `SendSlot::bid` of a send from the slot's own protected copy, not from a received buffer.
const NO_BUF: u16 = u16::MAX;

/// How a send names the socket, by [`super::SendPath`].
#[derive(Debug, Clone, Copy)]
pub(super) enum SockRef {
    /// `sendmsg` on the raw descriptor.
    Msg(RawFd),
    /// `send` with a destination on the raw descriptor.
    Raw(RawFd),
    /// `send` with a destination on the registered file.
    Fixed,
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
pub(super) struct SendSlots {
    slots: Box<[SendSlot]>,
    protected: Box<[u8]>,
    pub(super) free: Vec<u32>,
}

impl SendSlots {
    pub(super) fn new(n: usize) -> Self {
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

    pub(super) fn in_flight(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// Fills a free slot with a send of `payload` to `to`; returns its SQE.
    pub(super) fn take(
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
    pub(super) fn take_protected(
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

    /// As [`SendSlots::take_protected`], for a datagram whose destination `write` gives with
    /// its length (a repair the core writes).
    pub(super) fn take_written(
        &mut self,
        fd: SockRef,
        write: impl FnOnce(&mut [u8]) -> Option<(usize, SockAddr)>,
    ) -> Option<squeue::Entry> {
        let i = *self.free.last()?;
        let at = i as usize * PROTECTED_SIZE;
        let (n, to) = write(&mut self.protected[at..at + PROTECTED_SIZE])?;
        self.free.pop();
        // As in `take_protected`: the region stays untouched until the send completes.
        let out = self.protected[at..].as_ptr();
        Some(self.fill(i, fd, (out, n), &to, NO_BUF))
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

/// Accounts a finished send; the buffer returns to the ring with its last send.
pub(super) fn complete_send(
    slots: &mut SendSlots,
    refs: &mut [u16],
    bufs: &mut BufRing,
    tx: &mut Sent,
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
