//! One SRTP stream through a bridge to WebRTC viewers, counted by measuring window: a sender
//! thread (the publisher: paced SRTP, each packet stamped with the current window id and its send
//! time; a consent check from every endpoint each second) and a receiver thread (epoll over the
//! viewers' sockets; every copy decrypted with its viewer's keys and counted in the window its
//! stamp names, with its one-way latency). Window 0 is "between windows" and not counted.

use std::collections::BTreeMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use ringbridge_dataplane::webrtc::stun::TransactionId;

use super::{Credentials, Keys};

/// Marks the rig's payloads.
const MAGIC: u32 = 0x7762_7463;

/// A connected endpoint of the stream: its socket, its SRTP keys, its ICE credentials.
pub type Endpoint = (UdpSocket, Keys, Credentials);

/// What the viewers received of the packets sent in one window.
#[derive(Debug)]
pub struct WindowRx {
    /// Copies received and decrypted.
    pub copies: u64,
    /// Datagrams that looked like RTP but did not decrypt (counted in window 0).
    pub undecryptable: u64,
    /// One-way latency of the copies, µs.
    pub latency_us: Histogram<u64>,
}

impl Default for WindowRx {
    fn default() -> Self {
        Self {
            copies: 0,
            undecryptable: 0,
            latency_us: Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds"),
        }
    }
}

/// The stream: the publisher's sender and the viewers' receiver threads, and what they count
/// per window id (0: between windows, not counted).
pub struct Stream {
    /// The window id the sender stamps on what it sends now.
    pub window: Arc<AtomicU32>,
    sent: Arc<Mutex<BTreeMap<u32, u64>>>,
    received: Arc<Mutex<BTreeMap<u32, WindowRx>>>,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

/// The packet index a receiver makes of `seq`: the one nearest the highest seen so far.
fn estimate_index(highest: u64, seq: u16) -> u64 {
    let base = highest & !0xffff;
    [base.wrapping_sub(0x1_0000), base, base + 0x1_0000]
        .into_iter()
        .map(|b| b | u64::from(seq))
        .min_by_key(|&i| i.abs_diff(highest))
        .expect("three candidates")
}

impl Stream {
    /// Starts sending from `publisher` (SSRC `ssrc`, `pps` packets of `size` bytes before SRTP,
    /// at least 32) to the bridge at `media`, and receiving on `viewers`; every endpoint sends a
    /// consent check each second.
    pub fn start(
        media: SocketAddr,
        publisher: Endpoint,
        viewers: Vec<Endpoint>,
        ssrc: u32,
        pps: u32,
        size: usize,
    ) -> anyhow::Result<Self> {
        let s = Self {
            window: Arc::new(AtomicU32::new(0)),
            sent: Arc::default(),
            received: Arc::default(),
            stop: Arc::new(AtomicBool::new(false)),
            threads: Vec::new(),
        };
        let epoch = Instant::now();
        let mut consent: Vec<(UdpSocket, Credentials)> = vec![];
        for (sock, _, c) in std::iter::once(&publisher).chain(&viewers) {
            consent.push((sock.try_clone()?, c.clone()));
        }
        let (window, sent, stop) = (s.window.clone(), s.sent.clone(), s.stop.clone());
        let sender = std::thread::Builder::new()
            .name("sender".into())
            .spawn(move || {
                let (sock, keys, _) = publisher;
                let interval = Duration::from_secs_f64(1.0 / f64::from(pps));
                let (mut plain, mut wire) = (vec![0u8; size.max(32)], vec![0u8; size.max(32) + 64]);
                let (mut index, mut next, mut next_consent) =
                    (0u64, Instant::now(), Instant::now());
                while !stop.load(Relaxed) {
                    let now = Instant::now();
                    if now >= next_consent {
                        for (sock, c) in &consent {
                            let _ = sock
                                .send_to(&c.binding_request(false, TransactionId::random()), media);
                        }
                        next_consent += Duration::from_secs(1);
                    }
                    if now < next {
                        std::thread::sleep((next - now).min(Duration::from_millis(5)));
                        continue;
                    }
                    let w = window.load(Relaxed);
                    plain[..2].copy_from_slice(&[0x80, 96]);
                    plain[2..4].copy_from_slice(&(index as u16).to_be_bytes());
                    plain[4..8].copy_from_slice(&((index as u32).wrapping_mul(3000)).to_be_bytes());
                    plain[8..12].copy_from_slice(&ssrc.to_be_bytes());
                    plain[12..16].copy_from_slice(&MAGIC.to_be_bytes());
                    plain[16..20].copy_from_slice(&w.to_be_bytes());
                    let stamp = epoch.elapsed().as_nanos() as u64;
                    plain[20..28].copy_from_slice(&stamp.to_be_bytes());
                    let n = keys
                        .tx
                        .protect_rtp(&plain, index, &mut wire)
                        .expect("the buffer has room for the tag");
                    if sock.send_to(&wire[..n], media).is_ok() {
                        *sent.lock().unwrap().entry(w).or_default() += 1;
                    }
                    index += 1;
                    next += interval;
                }
            })?;
        let (received, stop) = (s.received.clone(), s.stop.clone());
        let receiver = std::thread::Builder::new()
            .name("receiver".into())
            .spawn(move || receive(viewers, epoch, &received, &stop))?;
        Ok(Self {
            threads: vec![sender, receiver],
            ..s
        })
    }

    /// Packets sent stamped with window `w`.
    pub fn sent(&self, w: u32) -> u64 {
        self.sent.lock().unwrap().get(&w).copied().unwrap_or(0)
    }

    /// What the viewers received of window `w` (taken: a second call gets nothing).
    pub fn take_received(&self, w: u32) -> WindowRx {
        self.received.lock().unwrap().remove(&w).unwrap_or_default()
    }

    /// Stops both threads.
    pub fn stop(self) {
        self.stop.store(true, Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// The viewers' receive loop: epoll over their sockets, every copy decrypted with its viewer's
/// keys and counted in the window its stamp names.
fn receive(
    viewers: Vec<Endpoint>,
    epoch: Instant,
    received: &Mutex<BTreeMap<u32, WindowRx>>,
    stop: &AtomicBool,
) {
    let mut poll = mio::Poll::new().expect("epoll");
    let mut socks = Vec::new();
    for (i, (sock, keys, _)) in viewers.into_iter().enumerate() {
        sock.set_nonblocking(true).expect("nonblocking");
        let mut s = mio::net::UdpSocket::from_std(sock);
        poll.registry()
            .register(&mut s, mio::Token(i), mio::Interest::READABLE)
            .expect("register");
        socks.push((s, keys, 0u64));
    }
    let mut events = mio::Events::with_capacity(64);
    let mut buf = [0u8; 2048];
    while !stop.load(Relaxed) {
        let _ = poll.poll(&mut events, Some(Duration::from_millis(50)));
        for ev in &events {
            let (sock, keys, highest) = &mut socks[ev.token().0];
            while let Ok(n) = sock.recv(&mut buf) {
                // STUN answers (0-3) and anything but RTP are not copies.
                if n < 12 || buf[0] >> 6 != 2 || (192..=223).contains(&buf[1]) {
                    continue;
                }
                let at = Instant::now();
                let index = estimate_index(*highest, u16::from_be_bytes([buf[2], buf[3]]));
                let mut got = received.lock().unwrap();
                let Ok(m) = keys.rx.unprotect_rtp(&mut buf[..n], index) else {
                    got.entry(0).or_default().undecryptable += 1;
                    continue;
                };
                *highest = (*highest).max(index);
                if m < 28 || buf[12..16] != MAGIC.to_be_bytes() {
                    got.entry(0).or_default().undecryptable += 1;
                    continue;
                }
                let w = u32::from_be_bytes(buf[16..20].try_into().expect("4 bytes"));
                let stamp = u64::from_be_bytes(buf[20..28].try_into().expect("8 bytes"));
                let now = at.duration_since(epoch).as_nanos() as u64;
                let rx = got.entry(w).or_default();
                rx.copies += 1;
                rx.latency_us
                    .saturating_record(now.saturating_sub(stamp) / 1000);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::estimate_index;

    #[test]
    fn index_follows_the_highest_seen() {
        assert_eq!(estimate_index(0, 5), 5);
        assert_eq!(estimate_index(65_530, 3), 65_539);
        assert_eq!(estimate_index(65_539, 65_534), 65_534);
        assert_eq!(estimate_index(200_000, (200_001 % 65_536) as u16), 200_001);
    }
}
