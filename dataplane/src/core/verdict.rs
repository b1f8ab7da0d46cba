//! What the core decides for a forwarded packet: its [`Verdict`] (where the copies go, as
//! [`Dests`] borrowed from the table, and how to write the SRTP and relay copies), and what an
//! engine's sends came to ([`Sent`]).

use std::sync::Arc;

use super::rewrite::Rewrite;
use super::simulcast::select::SimCopy;
use super::simulcast::vp8;
use super::subscribe::Wants;
use super::table::Peer;
use super::{Class, relay, rtcp};
use crate::srtp;

/// Which of a table's peers (or relays) a packet goes to.
#[derive(Debug, Clone, Copy)]
pub(super) enum Select {
    /// Every peer except the one at this index (`usize::MAX`: none excluded).
    AllBut(usize),
    /// Only these peer indices.
    Only {
        slots: [u32; rtcp::MAX_TARGETS],
        n: u8,
    },
}

/// The destinations of one packet (peers, or relays), borrowed from the current table.
#[derive(Debug)]
pub struct Dests<'t, T = Peer> {
    pub(super) peers: &'t [T],
    pub(super) select: Select,
    /// The subscriptions of `peers` (parallel to it), or empty: no filter.
    pub(super) wants: &'t [Option<Wants>],
    /// The bit of the packet's sender in the subscriptions (`None`: nobody subscribed to it).
    pub(super) bit: Option<u32>,
}

impl<T> Clone for Dests<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for Dests<'_, T> {}

impl<'t, T> Dests<'t, T> {
    /// Every one of `all`.
    #[inline]
    pub(super) fn all(all: &'t [T]) -> Self {
        Self::new(all, Select::AllBut(usize::MAX))
    }

    /// `select` of `peers`, unfiltered.
    #[inline]
    pub(super) fn new(peers: &'t [T], select: Select) -> Self {
        Self {
            peers,
            select,
            wants: &[],
            bit: None,
        }
    }

    /// Only those that subscribed to the sender with `bit` (or to every sender), by `wants`
    /// (parallel to the peers; empty: no filter).
    #[inline]
    pub(super) fn subscribed(mut self, wants: &'t [Option<Wants>], bit: Option<u32>) -> Self {
        self.wants = wants;
        self.bit = bit;
        self
    }

    /// Whether peer `i` takes the packet by its subscription.
    #[inline]
    fn takes(&self, i: usize) -> bool {
        match self.wants.get(i) {
            Some(Some(w)) => self.bit.is_some_and(|b| w.has(b)),
            _ => true,
        }
    }

    /// Nobody.
    #[inline]
    pub(super) fn none() -> Self {
        Self::all(&[])
    }

    /// Number of copies to send (counted one by one when subscriptions filter them).
    pub fn len(&self) -> usize {
        if !self.wants.is_empty() {
            return self.iter().count();
        }
        match self.select {
            Select::AllBut(skip) => self.peers.len() - usize::from(skip < self.peers.len()),
            Select::Only { n, .. } => usize::from(n),
        }
    }

    /// True when there is nobody to send to (with subscriptions, stops at the first taker).
    pub fn is_empty(&self) -> bool {
        if self.wants.is_empty() {
            self.len() == 0
        } else {
            self.iter().next().is_none()
        }
    }

    /// The destinations, in a stable order.
    pub fn iter(&self) -> impl Iterator<Item = &'t T> + '_ {
        self.iter_slots().map(|(_, p)| p)
    }

    /// The destinations with their index among the conference's peers, in a stable order.
    pub fn iter_slots(&self) -> impl Iterator<Item = (usize, &'t T)> + '_ {
        let (all, only): (Option<(usize, &'t [T])>, &[u32]) = match &self.select {
            Select::AllBut(skip) => (Some((*skip, self.peers)), &[]),
            Select::Only { slots, n } => (None, &slots[..usize::from(*n)]),
        };
        let peers = self.peers;
        all.into_iter()
            .flat_map(move |(skip, p)| {
                p.iter()
                    .enumerate()
                    .filter(move |(i, _)| *i != skip && self.takes(*i))
            })
            .chain(only.iter().map(move |&s| (s as usize, &peers[s as usize])))
    }
}

/// What to do with a packet that is forwarded.
#[derive(Debug, Clone, Copy)]
pub struct Verdict<'t> {
    /// RTP or RTCP.
    pub class: Class,
    /// Where the copies go (with `relays`, never both empty).
    pub dests: Dests<'t>,
    /// Relays that get one sealed copy each ([`Verdict::seal`]).
    pub relays: Dests<'t, Arc<relay::Relay>>,
    /// The hop count the relay copies are sealed with: [`relay::HOP_LIMIT`] for a packet of a
    /// local endpoint, one less than it arrived with for one that came over a relay.
    pub hops: u8,
    /// Where the plain packet starts in the buffer (after the relay header for a relayed one).
    pub offset: usize,
    /// Length of the plain packet (shorter than what arrived when SRTP or a relay envelope
    /// was removed).
    pub len: usize,
    /// For peers with [`Peer::srtp`]: the RTP packet index (48 bits) or the SRTCP index.
    pub index: u64,
    /// RTP: the header length (parsed once, on arrival). RTCP: 0.
    pub rtp_header_len: usize,
    /// A simulcast layer's packet: what each peer (by index) gets of it, and its VP8
    /// descriptor (rewritten on each receiver's copy).
    pub(super) sim: Option<(&'t [SimCopy], vp8::Descriptor)>,
}

/// How the copy for one destination is made ([`Verdict::copy_kind`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyKind {
    /// The plain packet itself, shared by every such copy.
    Shared,
    /// A copy of its own, written by [`Verdict::write`] (SRTP, a rewrite, a simulcast stream).
    Written,
    /// None: this receiver does not get this packet (another simulcast layer).
    Skip,
}

impl Verdict<'_> {
    /// How the copy for `peer` (index `slot` among the conference's peers, as
    /// [`Dests::iter_slots`] gives it) is made.
    #[inline]
    pub fn copy_kind(&self, slot: usize, peer: &Peer) -> CopyKind {
        match self.sim.and_then(|(c, _)| c.get(slot).copied()) {
            Some(SimCopy::Skip) => CopyKind::Skip,
            Some(SimCopy::Send(..)) => CopyKind::Written,
            _ if peer.srtp.is_some() => CopyKind::Written,
            _ => CopyKind::Shared,
        }
    }

    /// Writes the copy for `peer` (index `slot`) whose [`Verdict::copy_kind`] is `Written` into
    /// `out`; returns its length, `None` if it cannot be written. A simulcast receiver's copy is
    /// its stream's: SSRC, sequence number, timestamp, VP8 picture id and TL0PICIDX rewritten,
    /// protected under its stream's index.
    #[inline]
    pub fn write(&self, slot: usize, peer: &Peer, plain: &[u8], out: &mut [u8]) -> Option<usize> {
        if let Some((copies, d)) = self.sim
            && let Some(SimCopy::Send(o, ssrc)) = copies.get(slot).copied()
        {
            let hl = self.rtp_header_len;
            let edit = |pkt: &mut [u8]| {
                if let Some(r) = &peer.rewrite {
                    r.apply(&mut pkt[..hl]);
                }
                pkt[2..4].copy_from_slice(&o.seq().to_be_bytes());
                pkt[4..8].copy_from_slice(&o.ts.to_be_bytes());
                pkt[8..12].copy_from_slice(&ssrc.to_be_bytes());
                vp8::rewrite(&mut pkt[hl..], &d, o.picture_id, o.tl0);
            };
            return match &peer.srtp {
                Some(s) => s.protect_rtp_whole(plain, hl, o.index, out, edit).ok(),
                None => {
                    let copy = out.get_mut(..plain.len())?;
                    copy.copy_from_slice(plain);
                    edit(copy);
                    Some(plain.len())
                }
            };
        }
        let s = peer.srtp.as_ref()?;
        self.protect(plain, s, peer.rewrite.as_deref(), out)
    }

    /// Writes the copy for a peer that receives SRTP (`session` is its [`Peer::srtp`]) from the
    /// plain packet into `out`, RTP rewritten by `rewrite` (its [`Peer::rewrite`]) on the way;
    /// returns its length, `None` if it cannot be written (no room). `plain` itself is never
    /// changed. Plain peers get `plain` itself: engines only do I/O.
    #[inline]
    pub fn protect(
        &self,
        plain: &[u8],
        session: &srtp::Session,
        rewrite: Option<&Rewrite>,
        out: &mut [u8],
    ) -> Option<usize> {
        let (hl, index) = (self.rtp_header_len, self.index);
        match (self.class, rewrite) {
            (Class::Rtcp, _) => session.protect_rtcp(plain, index as u32, out).ok(),
            (_, None) => session.protect_rtp_hl(plain, hl, index, out).ok(),
            (_, Some(r)) => session
                .protect_rtp_edited(plain, hl, index, out, |h| r.apply(h))
                .ok(),
        }
    }
}

impl Verdict<'_> {
    /// The plain packet in the receive buffer `buf` this verdict was made for.
    #[inline]
    pub fn plain<'b>(&self, buf: &'b [u8]) -> &'b [u8] {
        &buf[self.offset..self.offset + self.len]
    }

    /// Writes the copy for `relay` (sealed for its link, with [`Verdict::hops`]) from the plain
    /// packet into `out`: relay packet `seq` of the sending `worker`; `None` if `out` is too
    /// small.
    #[inline]
    pub fn seal(
        &self,
        relay: &relay::Relay,
        plain: &[u8],
        worker: u16,
        seq: u64,
        out: &mut [u8],
    ) -> Option<usize> {
        relay.seal_hops(worker, seq, self.hops, plain, out)
    }
}

/// What an engine's sends of a batch came to; handed to [`Core::count_sent`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Sent {
    /// Copies sent.
    pub packets: u64,
    /// Bytes sent.
    pub bytes: u64,
    /// Copies the kernel refused (or that could not be written).
    pub failed: u64,
    /// Of `packets`, relay copies.
    pub relays: u64,
}

impl std::ops::AddAssign for Sent {
    fn add_assign(&mut self, o: Sent) {
        self.packets += o.packets;
        self.bytes += o.bytes;
        self.failed += o.failed;
        self.relays += o.relays;
    }
}
