//! Subscriptions: which senders a receiver (an endpoint, or a relay standing for the endpoints
//! behind it) gets media from. The default is every sender of the conference; a subscription
//! narrows it to a set of SSRCs.
//!
//! For the packet path a subscription is a bitset ([`Wants`]): each SSRC that some subscription
//! of the conference names has a bit number there ([`SenderBits`], reference-counted, so bits are
//! reused once no subscription names their SSRC). A packet costs one lookup of its SSRC's bit,
//! and only in a conference where some receiver has a subscription; each copy then costs one bit
//! test. Changing a subscription costs the SSRCs it names, whatever the conference's size.
//! Bit numbers follow from the order of the ops, so every copy of the table agrees.

use rustc_hash::FxHashMap;

/// One receiver's subscription, as bits of its conference's [`SenderBits`]. A bit past the end
/// is not set.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Wants(Box<[u64]>);

impl Wants {
    /// Whether the sender with bit `bit` is subscribed to.
    #[inline]
    pub fn has(&self, bit: u32) -> bool {
        self.0
            .get((bit / 64) as usize)
            .is_some_and(|w| (w >> (bit % 64)) & 1 == 1)
    }
}

/// The bit numbers of the SSRCs the subscriptions of one conference name.
#[derive(Debug, Clone, Default)]
pub struct SenderBits {
    /// SSRC -> (bit, subscriptions naming it).
    by_ssrc: FxHashMap<u32, (u32, u32)>,
    /// Bits no SSRC holds, reused smallest last-freed first.
    free: Vec<u32>,
    /// Bits handed out so far (the next new one).
    next: u32,
}

impl SenderBits {
    /// The bit of `ssrc`, if some subscription names it.
    #[inline]
    pub fn bit(&self, ssrc: u32) -> Option<u32> {
        self.by_ssrc.get(&ssrc).map(|&(b, _)| b)
    }

    /// Takes a reference on each of `ssrcs` (distinct), giving new ones a bit, and returns the
    /// subscription's bitset.
    pub fn acquire(&mut self, ssrcs: &[u32]) -> Wants {
        for &s in ssrcs {
            let e = self.by_ssrc.entry(s).or_insert_with(|| {
                let b = self.free.pop().unwrap_or_else(|| {
                    self.next += 1;
                    self.next - 1
                });
                (b, 0)
            });
            e.1 += 1;
        }
        self.wants(ssrcs)
    }

    /// The bitset of `ssrcs`, all acquired already.
    pub fn wants(&self, ssrcs: &[u32]) -> Wants {
        let bits: Vec<u32> = ssrcs.iter().filter_map(|&s| self.bit(s)).collect();
        let words = bits.iter().max().map_or(0, |&m| m as usize / 64 + 1);
        let mut w = vec![0u64; words];
        for b in bits {
            w[b as usize / 64] |= 1 << (b % 64);
        }
        Wants(w.into())
    }

    /// Gives back the references [`SenderBits::acquire`] took for `ssrcs`.
    pub fn release(&mut self, ssrcs: &[u32]) {
        for s in ssrcs {
            if let Some(e) = self.by_ssrc.get_mut(s) {
                e.1 -= 1;
                if e.1 == 0 {
                    self.free.push(e.0);
                    self.by_ssrc.remove(s);
                }
            }
        }
    }

    /// SSRCs with a bit (for tests and checks).
    pub fn len(&self) -> usize {
        self.by_ssrc.len()
    }

    /// True when no subscription names any SSRC.
    pub fn is_empty(&self) -> bool {
        self.by_ssrc.is_empty()
    }
}

/// Whom a subscription is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// An endpoint of the conference (by uid).
    Endpoint(u64),
    /// A relay of the conference (by uid): the senders whose media crosses it.
    Relay(u64),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits_are_shared_counted_and_reused() {
        let mut b = SenderBits::default();
        let w1 = b.acquire(&[10, 20]);
        let w2 = b.acquire(&[20, 30]);
        let (b10, b20, b30) = (b.bit(10).unwrap(), b.bit(20).unwrap(), b.bit(30).unwrap());
        assert!(w1.has(b10) && w1.has(b20) && !w1.has(b30));
        assert!(!w2.has(b10) && w2.has(b20) && w2.has(b30));
        assert!(!w1.has(1000), "a bit past the end is not set");
        b.release(&[10, 20]);
        assert_eq!(b.bit(10), None);
        assert_eq!(b.bit(20), Some(b20), "still named by the second");
        // 10's bit is reused, and the second subscription's bitset is still right.
        b.acquire(&[40]);
        assert_eq!(b.bit(40), Some(b10));
        assert!(!w2.has(b10));
        b.release(&[20, 30]);
        b.release(&[40]);
        assert!(b.is_empty());
    }

    #[test]
    fn many_ssrcs_spread_over_words() {
        let mut b = SenderBits::default();
        let ssrcs: Vec<u32> = (0..200).collect();
        let w = b.acquire(&ssrcs);
        assert!(ssrcs.iter().all(|&s| w.has(b.bit(s).unwrap())));
        let odd = b.acquire(&[7, 199]);
        assert!(odd.has(b.bit(199).unwrap()) && !odd.has(b.bit(198).unwrap()));
    }
}
