//! `recvmmsg`/`sendmmsg` batches for the epoll engine (and the load rig): fixed buffers set up once, so a batch
//! costs one syscall and no allocation.

use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;

use socket2::SockAddr;

use super::RECV_SIZE;
use crate::core::Sent;

/// Room for any `sockaddr` the kernel writes (the size of `sockaddr_storage`).
const NAME_LEN: usize = 128;

/// A batch of receive buffers.
pub struct RecvBatch {
    bufs: Box<[[u8; RECV_SIZE]]>,
    names: Box<[[u8; NAME_LEN]]>,
    iovs: Box<[libc::iovec]>,
    hdrs: Box<[libc::mmsghdr]>,
}

// SAFETY: the raw pointers in `iovs`/`hdrs` point into this struct's own boxed buffers, which
// move with it; nothing else aliases them.
unsafe impl Send for RecvBatch {}

impl RecvBatch {
    /// `n` buffers of [`RECV_SIZE`] bytes.
    pub fn new(n: usize) -> Self {
        let mut bufs = vec![[0u8; RECV_SIZE]; n].into_boxed_slice();
        let mut names = vec![[0u8; NAME_LEN]; n].into_boxed_slice();
        let mut iovs: Box<[libc::iovec]> = bufs
            .iter_mut()
            .map(|b| libc::iovec {
                iov_base: b.as_mut_ptr().cast(),
                iov_len: RECV_SIZE,
            })
            .collect();
        let hdrs = iovs
            .iter_mut()
            .zip(names.iter_mut())
            .map(|(iov, name)| {
                // SAFETY: mmsghdr is plain old data; all-zero is a valid value.
                let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
                h.msg_hdr.msg_name = name.as_mut_ptr().cast();
                h.msg_hdr.msg_namelen = NAME_LEN as u32;
                h.msg_hdr.msg_iov = iov;
                h.msg_hdr.msg_iovlen = 1;
                h
            })
            .collect();
        Self {
            bufs,
            names,
            iovs,
            hdrs,
        }
    }

    /// Receives up to a batch without blocking; `Ok(0)` when nothing is pending.
    pub fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        for h in self.hdrs.iter_mut() {
            h.msg_hdr.msg_namelen = NAME_LEN as u32;
            h.msg_hdr.msg_flags = 0;
        }
        debug_assert_eq!(self.iovs.len(), self.hdrs.len());
        loop {
            // SAFETY: every header points at its own name buffer and iovec, and every iovec at
            // its own RECV_SIZE buffer, all owned by `self` and alive for the call.
            let n = unsafe {
                libc::recvmmsg(
                    fd,
                    self.hdrs.as_mut_ptr(),
                    self.hdrs.len() as u32,
                    libc::MSG_DONTWAIT,
                    std::ptr::null_mut(),
                )
            };
            if n >= 0 {
                return Ok(n as usize);
            }
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::WouldBlock => return Ok(0),
                io::ErrorKind::Interrupted => continue,
                _ => return Err(e),
            }
        }
    }

    /// Datagram `i` of the last receive: payload and source. `Err(len)` when it was truncated or
    /// its source is not an inet address.
    pub fn get(&self, i: usize) -> Result<(&[u8], SocketAddr), usize> {
        let (len, src) = self.meta(i)?;
        Ok((&self.bufs[i][..len], src))
    }

    /// Like [`get`](Self::get), with the payload writable (SRTP decrypts in place).
    pub fn get_mut(&mut self, i: usize) -> Result<(&mut [u8], SocketAddr), usize> {
        let (len, src) = self.meta(i)?;
        Ok((&mut self.bufs[i][..len], src))
    }

    fn meta(&self, i: usize) -> Result<(usize, SocketAddr), usize> {
        let h = &self.hdrs[i];
        let len = h.msg_len as usize;
        let name = &self.names[i][..(h.msg_hdr.msg_namelen as usize).min(NAME_LEN)];
        match super::sockaddr::parse(name) {
            Some(src) if h.msg_hdr.msg_flags & libc::MSG_TRUNC == 0 => Ok((len, src)),
            _ => Err(len),
        }
    }
}

/// A batch of sends, each pointing at a payload owned by someone else (zero copy).
pub struct SendBatch {
    names: Box<[SockAddr]>,
    iovs: Box<[libc::iovec]>,
    hdrs: Box<[libc::mmsghdr]>,
    len: usize,
}

// SAFETY: the pointers refer to this struct's own boxes, or to payloads that the `push`
// contract keeps alive until the next flush on the same thread.
unsafe impl Send for SendBatch {}

impl SendBatch {
    /// Room for `n` sends per syscall.
    pub fn new(n: usize) -> Self {
        let unspecified = SockAddr::from(SocketAddr::from(([0, 0, 0, 0], 0)));
        Self {
            names: vec![unspecified; n].into_boxed_slice(),
            iovs: vec![
                libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0
                };
                n
            ]
            .into_boxed_slice(),
            // SAFETY: mmsghdr is plain old data; all-zero is a valid value.
            hdrs: (0..n).map(|_| unsafe { std::mem::zeroed() }).collect(),
            len: 0,
        }
    }

    /// Sends queued.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// True when no more sends fit.
    pub fn is_full(&self) -> bool {
        self.len == self.hdrs.len()
    }

    /// Queues `payload` for `to`.
    ///
    /// # Safety
    /// `payload` must stay alive and unchanged until the next [`flush`](Self::flush) returns.
    pub unsafe fn push(&mut self, payload: &[u8], to: &SockAddr) {
        let i = self.len;
        self.names[i] = to.clone();
        self.iovs[i] = libc::iovec {
            iov_base: payload.as_ptr() as *mut _,
            iov_len: payload.len(),
        };
        let h = &mut self.hdrs[i].msg_hdr;
        h.msg_name = self.names[i].as_ptr() as *mut _;
        h.msg_namelen = self.names[i].len();
        h.msg_iov = &mut self.iovs[i];
        h.msg_iovlen = 1;
        self.len += 1;
    }

    /// Sends everything queued. A message the kernel refuses is counted as failed and skipped;
    /// a full socket buffer is waited on briefly before its messages count as failed.
    pub fn flush(&mut self, fd: RawFd) -> Sent {
        let mut out = Sent::default();
        let mut at = 0;
        let mut waits = 0;
        while at < self.len {
            // SAFETY: headers [at, len) point at names/iovecs owned by self and at payloads the
            // `push` contract keeps alive until this flush returns.
            let n = unsafe {
                libc::sendmmsg(fd, self.hdrs[at..].as_mut_ptr(), (self.len - at) as u32, 0)
            };
            if n > 0 {
                for h in &self.hdrs[at..at + n as usize] {
                    out.packets += 1;
                    out.bytes += u64::from(h.msg_len);
                }
                at += n as usize;
                continue;
            }
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::Interrupted => {}
                io::ErrorKind::WouldBlock if waits < 3 => {
                    waits += 1;
                    wait_writable(fd);
                }
                _ => {
                    out.failed += 1;
                    at += 1;
                }
            }
        }
        self.len = 0;
        out
    }
}

/// Waits up to 10 ms for the socket's send buffer to drain (only on overload).
fn wait_writable(fd: RawFd) {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: `p` is a valid pollfd for the duration of the call.
    unsafe { libc::poll(&mut p, 1, 10) };
}
