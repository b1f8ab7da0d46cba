//! Loss repair: a retransmission cache shared by the bridge's workers, from which the bridge
//! answers its receivers' generic NACKs itself ([`nack`]), as RTX where the receiver negotiated
//! it ([`rtx`]) and as a plain resend otherwise, and sends upstream only what it does not hold.
//!
//! A stream's packets land on one worker (its sender's), a receiver's NACKs on another (the
//! receiver's), so the cache is shared, and lock-free: a fixed set of rings, one per stream
//! being cached, each a power-of-two ring of fixed slots indexed by sequence number. A slot is
//! a seqlock over atomic words (version, claim epoch, sequence/length/arrival, SRTP index, then
//! the plain packet): its writer copies the packet in once (the plain packet as it was
//! forwarded: decrypted, before any receiver's rewrite), a reader copies it out and keeps it only
//! if the version did not move meanwhile. A second writer of the same slot at the same moment
//! (a stream whose packets briefly land on two workers) skips its store instead of waiting.
//!
//! Which streams are cached: those a receiver NACKed. The first NACK about a stream claims it a
//! ring (within a few probes of its hash; a ring nobody asked anything of for
//! [`IDLE_MS`] may be taken over), and the stream's packets are kept from then on. So audio that
//! nobody NACKs costs nothing but a lookup per packet, and memory is bounded by the number of
//! rings, whatever the number of streams. Every claim takes a fresh epoch: slots written under
//! an earlier claim (another stream, or the same SSRC in a conference slot since reused) never
//! answer a NACK. An endpoint or conference that leaves gives its rings back.
//!
//! Memory: `rings * packets * SLOT_BYTES` (+ 32 bytes a slot) reserved, zero-filled by the
//! allocator, so pages of rings never claimed are never touched; see [`RepairCache::memory`].

pub mod nack;
pub mod recent;
pub mod rtx;

use std::sync::atomic::{
    AtomicU32, AtomicU64,
    Ordering::{AcqRel, Acquire, Relaxed, Release},
    fence,
};

use super::keyframe::stream_key;

/// Largest packet a slot holds: the UDP payload of a 1500-byte Ethernet frame over IPv4. Larger
/// packets are not cached (WebRTC senders keep video packets near 1200 bytes).
pub const SLOT_BYTES: usize = 1472;
const DATA_WORDS: usize = SLOT_BYTES / 8;
/// Words of a slot: version, epoch, meta (sequence, length, arrival ms), SRTP index, packet.
const SLOT_WORDS: usize = 4 + DATA_WORDS;
/// Rings a stream may use: the one its hash names and the next ones.
const PROBES: usize = 4;
/// A ring nobody NACKed anything of for this long may go to another stream.
pub const IDLE_MS: u32 = 10_000;
/// A cached packet older than this (ms) never answers a NACK, even if its slot was not reused
/// yet: a receiver asks within a round trip or two, and a stale slot must not answer for a
/// stream that went and came back.
pub const MAX_AGE_MS: u32 = 3_000;
/// An owner being replaced (no stream matches it).
const CLAIMING: u64 = u64::MAX;

/// Default rings (streams cached at once).
pub const DEFAULT_STREAMS: usize = 64;
/// Default slots per ring: about 2 s of a 2.5 Mbit/s video stream (~260 packets/s).
pub const DEFAULT_PACKETS: usize = 512;

/// Where a stream's ring is, and the claim its slots must carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingRef {
    /// The ring.
    pub ring: u32,
    /// The epoch of the claim.
    pub epoch: u64,
}

/// A cached packet read back: its length (in the caller's buffer) and SRTP index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cached {
    /// Length of the plain packet.
    pub len: usize,
    /// The packet index it was forwarded with (48 bits; 0 where no receiver used SRTP).
    pub index: u64,
}

/// The shared cache; see the module docs.
pub struct RepairCache {
    /// Per ring: its stream's key + 1 (0: free; [`CLAIMING`]: being taken over).
    owners: Box<[AtomicU64]>,
    /// Per ring: the epoch of its current claim.
    epochs: Box<[AtomicU64]>,
    /// Per ring: when a receiver last asked it for a packet (ms on the engines' clock).
    asked: Box<[AtomicU32]>,
    next_epoch: AtomicU64,
    /// Slots per ring (a power of two).
    packets: usize,
    slab: Box<[AtomicU64]>,
}

impl std::fmt::Debug for RepairCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RepairCache")
            .field("rings", &self.owners.len())
            .field("packets", &self.packets)
            .field("in_use", &self.rings_in_use())
            .finish()
    }
}

/// `n` zeroed atomics: pages the allocator hands out zeroed are not touched until written.
fn zeroed(n: usize) -> Box<[AtomicU64]> {
    let b = Box::<[AtomicU64]>::new_zeroed_slice(n);
    // SAFETY: an all-zero bit pattern is a valid `AtomicU64` (it has the size and bit validity
    // of `u64`), and `new_zeroed_slice` filled every element with zeros.
    unsafe { b.assume_init() }
}

impl RepairCache {
    /// A cache of `streams` rings of `packets` slots each (both rounded up to powers of two,
    /// at least 1 and 16).
    pub fn new(streams: usize, packets: usize) -> Self {
        let streams = streams.max(1).next_power_of_two();
        let packets = packets.max(16).next_power_of_two();
        Self {
            owners: (0..streams).map(|_| AtomicU64::new(0)).collect(),
            epochs: (0..streams).map(|_| AtomicU64::new(0)).collect(),
            asked: (0..streams).map(|_| AtomicU32::new(0)).collect(),
            next_epoch: AtomicU64::new(1),
            packets,
            slab: zeroed(streams * packets * SLOT_WORDS),
        }
    }

    /// Rings (streams that can be cached at once).
    pub fn rings(&self) -> usize {
        self.owners.len()
    }

    /// Slots per ring.
    pub fn packets(&self) -> usize {
        self.packets
    }

    /// Bytes one ring takes once used.
    pub fn ring_bytes(&self) -> usize {
        self.packets * SLOT_WORDS * 8
    }

    /// Rings holding a stream now.
    pub fn rings_in_use(&self) -> usize {
        self.owners
            .iter()
            .filter(|o| !matches!(o.load(Relaxed), 0 | CLAIMING))
            .count()
    }

    /// Bytes of the rings in use (what the cache costs now) and reserved (its bound).
    pub fn memory(&self) -> (usize, usize) {
        (
            self.rings_in_use() * self.ring_bytes(),
            self.rings() * self.ring_bytes(),
        )
    }

    #[inline]
    fn home(&self, key: u64) -> usize {
        let bits = self.owners.len().trailing_zeros();
        if bits == 0 {
            return 0;
        }
        (key.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - bits)) as usize
    }

    #[inline]
    fn probes(&self, key: u64) -> impl Iterator<Item = usize> {
        let (home, mask) = (self.home(key), self.owners.len() - 1);
        (0..PROBES.min(self.owners.len())).map(move |p| (home + p) & mask)
    }

    /// The ring caching stream `ssrc` of conference slot `conf`, if one does.
    #[inline]
    pub fn ring_of(&self, conf: u32, ssrc: u32) -> Option<RingRef> {
        let want = stream_key(conf, ssrc) + 1;
        for i in self.probes(want - 1) {
            if self.owners[i].load(Acquire) == want {
                return Some(RingRef {
                    ring: i as u32,
                    epoch: self.epochs[i].load(Acquire),
                });
            }
        }
        None
    }

    /// Starts caching stream `ssrc` of conference slot `conf` (a receiver NACKed it) at
    /// `now_ms`: a free ring near its hash, or one nobody asked anything of for [`IDLE_MS`].
    /// False when every ring it may use is busy (its NACKs keep going upstream).
    pub fn claim(&self, conf: u32, ssrc: u32, now_ms: u32) -> bool {
        let key = stream_key(conf, ssrc);
        let want = key + 1;
        let mut pick = None;
        for i in self.probes(key) {
            match self.owners[i].load(Acquire) {
                v if v == want => return true,
                0 => {
                    pick = Some((i, 0));
                    break;
                }
                CLAIMING => {}
                v if now_ms.wrapping_sub(self.asked[i].load(Relaxed)) >= IDLE_MS
                    && pick.is_none() =>
                {
                    pick = Some((i, v));
                }
                _ => {}
            }
        }
        let Some((i, was)) = pick else {
            return false;
        };
        if self.owners[i]
            .compare_exchange(was, CLAIMING, AcqRel, Relaxed)
            .is_err()
        {
            return false; // another worker took it first: the next NACK tries again
        }
        let epoch = self.next_epoch.fetch_add(1, Relaxed);
        self.epochs[i].store(epoch, Release);
        self.asked[i].store(now_ms, Relaxed);
        self.owners[i].store(want, Release);
        true
    }

    /// Gives back the ring of stream `ssrc` of conference slot `conf`, if it has one (its
    /// endpoint left). Idempotent: every worker may call it.
    pub fn release(&self, conf: u32, ssrc: u32) {
        if let Some(r) = self.ring_of(conf, ssrc) {
            let _ = self.owners[r.ring as usize].compare_exchange(
                stream_key(conf, ssrc) + 1,
                0,
                AcqRel,
                Relaxed,
            );
        }
    }

    /// Gives back every ring of conference slot `conf` (it was removed).
    pub fn release_conference(&self, conf: u32) {
        for o in self.owners.iter() {
            let v = o.load(Acquire);
            if !matches!(v, 0 | CLAIMING) && ((v - 1) >> 32) as u32 == conf {
                let _ = o.compare_exchange(v, 0, AcqRel, Relaxed);
            }
        }
    }

    #[inline]
    fn slot(&self, ring: u32, seq: u16) -> &[AtomicU64] {
        let at =
            (ring as usize * self.packets + (usize::from(seq) & (self.packets - 1))) * SLOT_WORDS;
        &self.slab[at..at + SLOT_WORDS]
    }

    /// Keeps packet `pkt` (sequence `seq`, SRTP index `index`) of the stream cached in `r`,
    /// arrived at `now_ms`. False when it was not kept (larger than a slot, or the slot's other
    /// writer was busy with it).
    #[inline]
    pub fn store(&self, r: RingRef, seq: u16, index: u64, now_ms: u32, pkt: &[u8]) -> bool {
        if pkt.len() > SLOT_BYTES {
            return false;
        }
        let s = self.slot(r.ring, seq);
        let v = s[0].load(Relaxed);
        if v & 1 == 1 || s[0].compare_exchange(v, v + 1, Relaxed, Relaxed).is_err() {
            return false;
        }
        // The odd version is visible before any word below changes (seqlock writer).
        fence(Release);
        s[1].store(r.epoch, Relaxed);
        s[2].store(meta(seq, pkt.len(), now_ms), Relaxed);
        s[3].store(index, Relaxed);
        let mut chunks = pkt.chunks_exact(8);
        let mut w = 4;
        for c in chunks.by_ref() {
            s[w].store(u64::from_ne_bytes(c.try_into().unwrap()), Relaxed);
            w += 1;
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut last = [0u8; 8];
            last[..rest.len()].copy_from_slice(rest);
            s[w].store(u64::from_ne_bytes(last), Relaxed);
        }
        s[0].store(v + 2, Release);
        true
    }

    /// Whether the ring holds packet `seq` of its current claim, young enough to answer a
    /// NACK at `now_ms` (a cheap check; [`RepairCache::fetch`] reads it).
    #[inline]
    pub fn holds(&self, r: RingRef, seq: u16, now_ms: u32) -> bool {
        let s = self.slot(r.ring, seq);
        let v = s[0].load(Acquire);
        let ok = v & 1 == 0
            && v != 0
            && s[1].load(Relaxed) == r.epoch
            && fits(s[2].load(Relaxed), seq, now_ms);
        fence(Acquire);
        ok && s[0].load(Relaxed) == v
    }

    /// When packet `seq` of ring `r`'s current claim arrived (ms), if the ring holds it young
    /// enough at `now_ms`.
    #[inline]
    pub fn arrived(&self, r: RingRef, seq: u16, now_ms: u32) -> Option<u32> {
        let s = self.slot(r.ring, seq);
        let v = s[0].load(Acquire);
        let m = s[2].load(Relaxed);
        let ok = v & 1 == 0 && v != 0 && s[1].load(Relaxed) == r.epoch && fits(m, seq, now_ms);
        fence(Acquire);
        (ok && s[0].load(Relaxed) == v).then_some((m >> 32) as u32)
    }

    /// Notes that a receiver asked ring `r` for a packet at `now_ms` (it stays claimed).
    #[inline]
    pub fn touch(&self, r: RingRef, now_ms: u32) {
        let a = &self.asked[r.ring as usize];
        if a.load(Relaxed) != now_ms {
            a.store(now_ms, Relaxed);
        }
    }

    /// Copies packet `seq` of ring `r`'s current claim into `out` (at least [`SLOT_BYTES`]),
    /// if the ring still holds it (young enough at `now_ms`) and no writer changed it meanwhile.
    pub fn fetch(&self, r: RingRef, seq: u16, now_ms: u32, out: &mut [u8]) -> Option<Cached> {
        let s = self.slot(r.ring, seq);
        let v = s[0].load(Acquire);
        if v & 1 == 1 || v == 0 || s[1].load(Relaxed) != r.epoch {
            return None;
        }
        let m = s[2].load(Relaxed);
        let index = s[3].load(Relaxed);
        if !fits(m, seq, now_ms) {
            return None;
        }
        let len = ((m >> 16) & 0xffff) as usize;
        if len > SLOT_BYTES || out.len() < len {
            return None;
        }
        for (i, c) in out[..len].chunks_mut(8).enumerate() {
            let word = s[4 + i].load(Relaxed).to_ne_bytes();
            c.copy_from_slice(&word[..c.len()]);
        }
        fence(Acquire);
        (s[0].load(Relaxed) == v).then_some(Cached { len, index })
    }
}

/// A slot's meta word: arrival ms (high 32 bits), length, sequence number.
#[inline]
fn meta(seq: u16, len: usize, now_ms: u32) -> u64 {
    (u64::from(now_ms) << 32) | ((len as u64) << 16) | u64::from(seq)
}

/// Whether meta word `m` is packet `seq`, young enough at `now_ms`.
#[inline]
fn fits(m: u64, seq: u16, now_ms: u32) -> bool {
    m as u16 == seq && now_ms.wrapping_sub((m >> 32) as u32) <= MAX_AGE_MS
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::rtp;

    fn get(c: &RepairCache, r: RingRef, seq: u16, now: u32) -> Option<(Vec<u8>, u64)> {
        let mut out = [0u8; SLOT_BYTES];
        c.fetch(r, seq, now, &mut out)
            .map(|got| (out[..got.len].to_vec(), got.index))
    }

    #[test]
    fn a_stream_is_cached_once_claimed_and_answers_until_overwritten() {
        let c = RepairCache::new(4, 16);
        assert_eq!(c.ring_of(1, 7), None, "nothing is cached before a NACK");
        assert!(c.claim(1, 7, 1_000));
        let r = c.ring_of(1, 7).unwrap();
        assert_eq!(c.ring_of(2, 7), None, "per conference");
        // 40 packets through a 16-slot ring, wrapping the sequence number on the way.
        for i in 0..40u16 {
            let seq = 65_520u16.wrapping_add(i);
            let pkt = rtp(7, seq, u32::from(i), &[i as u8; 33]);
            assert!(c.store(r, seq, 0x1_0000 + u64::from(i), 1_000, &pkt));
        }
        // The last 16 are there (byte for byte, with their index); older ones were evicted.
        for i in 24..40u16 {
            let seq = 65_520u16.wrapping_add(i);
            assert!(c.holds(r, seq, 1_001));
            let (pkt, index) = get(&c, r, seq, 1_001).unwrap();
            assert_eq!(pkt, rtp(7, seq, u32::from(i), &[i as u8; 33]));
            assert_eq!(index, 0x1_0000 + u64::from(i));
        }
        for i in [0u16, 15, 23] {
            let seq = 65_520u16.wrapping_add(i);
            assert!(!c.holds(r, seq, 1_001), "evicted: {seq}");
            assert_eq!(get(&c, r, seq, 1_001), None);
        }
        // Too old to answer.
        assert!(!c.holds(r, 65_520u16.wrapping_add(39), 1_000 + MAX_AGE_MS + 1));
    }

    #[test]
    fn a_new_claim_never_answers_with_an_old_claims_packets() {
        let c = RepairCache::new(1, 16);
        assert!(c.claim(1, 7, 0));
        let r = c.ring_of(1, 7).unwrap();
        assert!(c.store(r, 5, 0, 0, &rtp(7, 5, 0, b"old")));
        // The endpoint leaves; the same SSRC comes back in a reused conference slot.
        c.release(1, 7);
        assert_eq!(c.ring_of(1, 7), None);
        assert!(c.claim(1, 7, 10));
        let again = c.ring_of(1, 7).unwrap();
        assert_ne!(again.epoch, r.epoch);
        assert!(!c.holds(again, 5, 10));
        assert_eq!(get(&c, again, 5, 10), None);
    }

    #[test]
    fn rings_are_bounded_and_idle_ones_are_taken_over() {
        let c = RepairCache::new(2, 16);
        assert!(c.claim(1, 1, 0));
        assert!(c.claim(1, 2, 0));
        assert!(!c.claim(1, 3, 100), "both rings busy");
        assert_eq!(c.rings_in_use(), 2);
        // Stream 1 keeps being asked for; stream 2 is not.
        c.touch(c.ring_of(1, 1).unwrap(), IDLE_MS);
        assert!(c.claim(1, 3, IDLE_MS + 5));
        assert!(c.ring_of(1, 3).is_some());
        assert!(c.ring_of(1, 1).is_some());
        assert_eq!(c.ring_of(1, 2), None, "the idle one went");
        c.release_conference(1);
        assert_eq!(c.rings_in_use(), 0);
        assert_eq!(c.memory(), (0, 2 * 16 * SLOT_WORDS * 8));
    }

    #[test]
    fn oversized_packets_are_not_kept() {
        let c = RepairCache::new(1, 16);
        assert!(c.claim(0, 9, 0));
        let r = c.ring_of(0, 9).unwrap();
        assert!(!c.store(r, 1, 0, 0, &[0x80; SLOT_BYTES + 1]));
        assert!(c.store(r, 1, 0, 0, &[0x80; SLOT_BYTES]));
        assert_eq!(get(&c, r, 1, 0).unwrap().0.len(), SLOT_BYTES);
    }

    #[test]
    fn readers_on_other_threads_never_see_a_torn_packet() {
        use std::sync::Arc;
        let c = Arc::new(RepairCache::new(1, 16));
        assert!(c.claim(0, 1, 0));
        let r = c.ring_of(0, 1).unwrap();
        assert!(c.store(r, 3, 0, 0, &[0; 1000]));
        let writer = {
            let c = c.clone();
            std::thread::spawn(move || {
                for i in 0..20_000u32 {
                    // Every packet of slot 3 is filled with one byte value throughout.
                    let b = (i % 251) as u8;
                    c.store(r, 3, u64::from(b), 0, &[b; 1000]);
                }
            })
        };
        let mut seen = 0;
        for i in 0..1_000_000 {
            if let Some((pkt, index)) = get(&c, r, 3, 0) {
                assert!(pkt.iter().all(|&x| u64::from(x) == index), "torn read");
                seen += 1;
            }
            if i >= 1_000 && writer.is_finished() {
                break;
            }
        }
        writer.join().unwrap();
        // Reads that crossed a write give nothing (never a torn packet); with the writer done
        // one must succeed (on a loaded machine every read of the loop may have crossed one).
        let (pkt, index) = get(&c, r, 3, 0).expect("a read with no writer");
        assert!(pkt.iter().all(|&x| u64::from(x) == index), "torn read");
        eprintln!("{seen} reads while writing, none torn");
    }
}
