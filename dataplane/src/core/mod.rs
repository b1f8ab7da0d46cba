//! The sans-IO forwarding core. It owns no socket and reads no clock: given a datagram and its
//! source address it decides where copies go (a [`Verdict`]) or why it is dropped
//! ([`DropReason`]), counts what it saw, and queues [`Event`]s for the control path (latched
//! addresses). SRTP senders are authenticated and decrypted in place here, once; engines
//! protect each copy for SRTP receivers with [`Peer::srtp`]. Engines feed it and carry out its
//! verdicts.

pub mod classify;
pub mod keyframe;
pub mod relay;
pub mod rtcp;
pub mod rtp;
pub mod table;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;

use rustc_hash::FxHashMap;

use crate::srtp::{self, replay};
pub use classify::Class;
pub use keyframe::KeyframeGate;
pub use table::{ConfIdx, Delta, EndpointUid, Op, Peer, Table, TableBuilder};

/// Why a packet was not forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Not RTP/RTCP version 2.
    NotRtp = 0,
    /// RTP/RTCP whose header or lengths do not parse.
    Malformed = 1,
    /// From an address of no endpoint, and not carrying an SSRC waiting to be latched.
    UnknownSource = 2,
    /// RTP with an SSRC its endpoint did not declare, or feedback about an SSRC nobody sends.
    UnknownSsrc = 3,
    /// Nobody to forward to.
    NoReceivers = 4,
    /// The kernel refused a send, or a copy could not be protected (counted per copy).
    SendFailed = 5,
    /// SRTP/SRTCP authentication failed.
    SrtpAuth = 6,
    /// SRTP/SRTCP replay.
    SrtpReplay = 7,
    /// A relay packet that does not authenticate with its link's key.
    RelayAuth = 8,
    /// A relay packet already received or older than its link's window.
    RelayReplay = 9,
    /// A relay packet no relay matches (source address and link conference number).
    UnknownRelay = 10,
    /// A keyframe request (PLI/FIR) for a stream that had one go through within the interval.
    KeyframeThrottled = 11,
}

impl DropReason {
    /// Number of reasons, for counter arrays.
    pub const COUNT: usize = 12;
    /// All reasons, in counter order.
    pub const ALL: [DropReason; Self::COUNT] = [
        Self::NotRtp,
        Self::Malformed,
        Self::UnknownSource,
        Self::UnknownSsrc,
        Self::NoReceivers,
        Self::SendFailed,
        Self::SrtpAuth,
        Self::SrtpReplay,
        Self::RelayAuth,
        Self::RelayReplay,
        Self::UnknownRelay,
        Self::KeyframeThrottled,
    ];

    /// Stable snake_case name, as used in stats and logs.
    pub fn name(self) -> &'static str {
        match self {
            Self::NotRtp => "not_rtp",
            Self::Malformed => "malformed",
            Self::UnknownSource => "unknown_source",
            Self::UnknownSsrc => "unknown_ssrc",
            Self::NoReceivers => "no_receivers",
            Self::SendFailed => "send_failed",
            Self::SrtpAuth => "srtp_auth_failed",
            Self::SrtpReplay => "srtp_replay",
            Self::RelayAuth => "relay_auth_failed",
            Self::RelayReplay => "relay_replay",
            Self::UnknownRelay => "unknown_relay",
            Self::KeyframeThrottled => "keyframe_throttled",
        }
    }
}

/// Packet and byte counters of one worker. Plain integers: only the owning worker writes them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Datagrams received.
    pub rx_packets: u64,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Copies sent, one per destination.
    pub tx_packets: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
    /// Received packets that parsed as RTP.
    pub rx_rtp: u64,
    /// Received packets that parsed as RTCP.
    pub rx_rtcp: u64,
    /// Relay packets received and authenticated.
    pub relay_rx: u64,
    /// Relay packets sent.
    pub relay_tx: u64,
    /// Drops, indexed by `DropReason as usize`.
    pub drops: [u64; DropReason::COUNT],
}

impl Counters {
    /// Counts one drop.
    #[inline]
    pub fn drop(&mut self, why: DropReason) {
        self.drops[why as usize] += 1;
    }

    /// Sum of all drops.
    pub fn dropped(&self) -> u64 {
        self.drops.iter().sum()
    }
}

/// Something the control path must learn about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// An endpoint without a configured address sent its first valid packet from `addr`.
    Latched {
        /// The endpoint.
        uid: EndpointUid,
        /// The source address it now has.
        addr: SocketAddr,
    },
}

#[derive(Debug, Clone, Copy)]
enum Select {
    /// Every peer except the one at this index (`usize::MAX`: none excluded).
    AllBut(usize),
    /// Only these peer indices.
    Only {
        slots: [u32; rtcp::MAX_TARGETS],
        n: u8,
    },
}

/// The destinations of one packet, borrowed from the current table.
#[derive(Debug, Clone, Copy)]
pub struct Dests<'t> {
    peers: &'t [Peer],
    select: Select,
}

impl<'t> Dests<'t> {
    /// Number of copies to send.
    pub fn len(&self) -> usize {
        match self.select {
            Select::AllBut(skip) => self.peers.len() - usize::from(skip < self.peers.len()),
            Select::Only { n, .. } => usize::from(n),
        }
    }

    /// True when there is nobody to send to.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The destinations, in a stable order.
    pub fn iter(&self) -> impl Iterator<Item = &'t Peer> + '_ {
        let (all, only): (Option<(usize, &'t [Peer])>, &[u32]) = match &self.select {
            Select::AllBut(skip) => (Some((*skip, self.peers)), &[]),
            Select::Only { slots, n } => (None, &slots[..usize::from(*n)]),
        };
        let peers = self.peers;
        all.into_iter()
            .flat_map(|(skip, p)| {
                p.iter()
                    .enumerate()
                    .filter(move |(i, _)| *i != skip)
                    .map(|(_, p)| p)
            })
            .chain(only.iter().map(move |&s| &peers[s as usize]))
    }
}

/// What to do with a packet that is forwarded.
#[derive(Debug, Clone, Copy)]
pub struct Verdict<'t> {
    /// RTP or RTCP.
    pub class: Class,
    /// Where the copies go (with `relays`, never both empty).
    pub dests: Dests<'t>,
    /// Relays that get one sealed copy each ([`Verdict::seal`]); empty for a packet that came
    /// from a relay.
    pub relays: &'t [Arc<relay::Relay>],
    /// Where the plain packet starts in the buffer (after the relay header for a relayed one).
    pub offset: usize,
    /// Length of the plain packet (shorter than what arrived when SRTP or a relay envelope
    /// was removed).
    pub len: usize,
    /// For peers with [`Peer::srtp`]: the RTP packet index (48 bits) or the SRTCP index.
    pub index: u64,
    /// RTP: the header length (parsed once, on arrival). RTCP: 0.
    pub rtp_header_len: usize,
}

impl Verdict<'_> {
    /// Writes the copy for a peer that receives SRTP (`session` is its [`Peer::srtp`]) from the
    /// plain packet into `out`; returns its length, `None` if it cannot be written (no room).
    /// Plain peers get `plain` itself: engines only do I/O.
    #[inline]
    pub fn protect(&self, plain: &[u8], session: &srtp::Session, out: &mut [u8]) -> Option<usize> {
        match self.class {
            Class::Rtcp => session.protect_rtcp(plain, self.index as u32, out).ok(),
            _ => session
                .protect_rtp_hl(plain, self.rtp_header_len, self.index, out)
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

    /// Writes the copy for `relay` (sealed for its link) from the plain packet into `out`:
    /// relay packet `seq` of the sending `worker`; `None` if `out` is too small.
    #[inline]
    pub fn seal(
        &self,
        relay: &relay::Relay,
        plain: &[u8],
        worker: u16,
        seq: u64,
        out: &mut [u8],
    ) -> Option<usize> {
        relay.seal(worker, seq, plain, out)
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

/// Per-stream SRTP state of the senders this worker handles (their packets all land here).
#[derive(Debug, Default)]
struct StreamState {
    /// RTP: rollover and replay state (SRTP senders), or index tracking (plain senders whose
    /// packets go to SRTP receivers).
    rtp: FxHashMap<(EndpointUid, u32), replay::Stream>,
    /// SRTCP replay windows of SRTP senders.
    rtcp_in: FxHashMap<(EndpointUid, u32), replay::Window>,
    /// SRTCP index counters for plain RTCP senders whose packets go to SRTP receivers.
    rtcp_out: FxHashMap<(EndpointUid, u32), u32>,
    /// Replay windows of relay links, per (relay uid, sending worker).
    relay_in: FxHashMap<(u64, u16), replay::Window>,
    /// Conferences fed through an upstream relay where a viewer joined: the streams arriving
    /// from upstream soon after get a keyframe request (a late joiner needs a keyframe).
    keyframe_wanted: FxHashMap<u32, keyframe::Wanted>,
    /// Keyframe requests this core made, for the engine to seal into their relay and send.
    keyframe_out: Vec<(Arc<relay::Relay>, [u8; keyframe::PLI_LEN])>,
}

fn srtp_drop(e: srtp::Error) -> DropReason {
    match e {
        srtp::Error::Replay => DropReason::SrtpReplay,
        _ => DropReason::SrtpAuth,
    }
}

#[inline]
fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Per-worker forwarding state; see the module docs.
#[derive(Debug)]
pub struct Core {
    table: Table,
    /// Addresses this worker latched that its table does not know yet.
    latched: FxHashMap<SocketAddr, (EndpointUid, u32)>,
    events: VecDeque<Event>,
    streams: StreamState,
    /// Keyframe requests, throttled per stream (shared with the bridge's other workers).
    keyframes: Arc<KeyframeGate>,
    /// The engine's clock at the start of the batch, ms on the gate's clock.
    now_ms: u32,
    /// What this core has counted.
    pub counters: Counters,
}

impl Core {
    /// A core forwarding by `table`.
    pub fn new(table: Table) -> Self {
        Self {
            table,
            latched: FxHashMap::default(),
            events: VecDeque::with_capacity(16),
            streams: StreamState::default(),
            keyframes: Arc::new(KeyframeGate::default()),
            now_ms: 0,
            counters: Counters::default(),
        }
    }

    /// Throttles keyframe requests with `gate` (shared by the bridge's workers).
    pub fn with_keyframe_gate(mut self, gate: Arc<KeyframeGate>) -> Self {
        self.keyframes = gate;
        self
    }

    /// Sets the time (ms on the keyframe gate's clock) for the packets that follow; engines
    /// call it once per batch.
    #[inline]
    pub fn set_now(&mut self, now_ms: u32) {
        self.now_ms = now_ms;
    }

    /// The table in force.
    pub fn table(&self) -> &Table {
        &self.table
    }

    /// Applies a delta from the control path. Costs what it changes: stream state of removed
    /// endpoints goes with them; addresses latched here stay in force while their endpoint
    /// still waits for one.
    pub fn apply(&mut self, delta: &Delta) {
        for op in &delta.ops {
            match op {
                Op::RemoveEndpoint { uid } => self.forget(*uid),
                Op::RemoveConference { members, conf } => {
                    for &uid in members.iter() {
                        self.forget(uid);
                    }
                    self.streams.keyframe_wanted.remove(&conf.get());
                }
                Op::Latch { addr, .. } => {
                    self.latched.remove(addr);
                }
                Op::RemoveRelay { uid, .. } => {
                    let gone = *uid;
                    self.streams.relay_in.retain(|(u, _), _| *u != gone);
                    self.streams.rtp.retain(|(u, _), _| *u != gone);
                    self.streams.rtcp_out.retain(|(u, _), _| *u != gone);
                }
                Op::AddConference | Op::AddEndpoint { .. } | Op::AddRelay { .. } => {}
            }
            self.table.apply(op);
            // A receive-only endpoint (a viewer) joined a conference fed from upstream: it
            // needs a keyframe of each stream; ask for one as they arrive.
            if let Op::AddEndpoint { conf, ssrcs, .. } = op
                && ssrcs.is_empty()
                && self.table.conf(conf.get()).upstream > 0
            {
                let until = self.now_ms.wrapping_add(keyframe::JOIN_WINDOW_MS);
                self.streams
                    .keyframe_wanted
                    .insert(conf.get(), keyframe::Wanted::until(until));
            }
        }
        self.table.set_generation(delta.generation);
    }

    /// Drops the per-stream state and pending latch of an endpoint that is being removed.
    fn forget(&mut self, uid: EndpointUid) {
        let Some(&i) = self.table.by_uid.get(&uid) else {
            return;
        };
        for &ssrc in self.table.ep(i).ssrcs.iter() {
            self.streams.rtp.remove(&(uid, ssrc));
            self.streams.rtcp_in.remove(&(uid, ssrc));
            self.streams.rtcp_out.remove(&(uid, ssrc));
        }
        if !self.latched.is_empty() {
            self.latched.retain(|_, (u, _)| *u != uid);
        }
    }

    /// Replaces the whole table (tests and benches; bridges apply deltas). Latched addresses
    /// and stream state are kept only for endpoints the new table still has.
    pub fn set_table(&mut self, table: Table) -> Table {
        self.latched.retain(|addr, (uid, idx)| {
            if table.by_addr.contains_key(addr) {
                return false;
            }
            match table.by_uid.get(uid) {
                Some(&i) if table.ep(i).slot.is_none() => {
                    *idx = i;
                    true
                }
                _ => false,
            }
        });
        let live = |uid: &EndpointUid| table.by_uid.contains_key(uid);
        self.streams.rtp.retain(|(uid, _), _| live(uid));
        self.streams.rtcp_in.retain(|(uid, _), _| live(uid));
        self.streams.rtcp_out.retain(|(uid, _), _| live(uid));
        std::mem::replace(&mut self.table, table)
    }

    /// Counts what the engine sent for this core's verdicts.
    pub fn count_sent(&mut self, s: Sent) {
        self.counters.tx_packets += s.packets;
        self.counters.tx_bytes += s.bytes;
        self.counters.drops[DropReason::SendFailed as usize] += s.failed;
        self.counters.relay_tx += s.relays;
    }

    /// The next keyframe request this core made (a viewer joined mid-stream): the upstream
    /// relay and the PLI to seal into it. Engines send them with the batch's other copies.
    #[inline]
    pub fn take_keyframe_request(
        &mut self,
    ) -> Option<(Arc<relay::Relay>, [u8; keyframe::PLI_LEN])> {
        self.streams.keyframe_out.pop()
    }

    /// Next event for the control path.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Decides what happens to one datagram from `src`, and counts it. An SRTP sender's packet
    /// is authenticated and decrypted in place: the plain packet is `pkt[..verdict.len]`.
    #[inline]
    pub fn handle(&mut self, pkt: &mut [u8], src: SocketAddr) -> Result<Verdict<'_>, DropReason> {
        self.counters.rx_packets += 1;
        self.counters.rx_bytes += pkt.len() as u64;
        let keyframes = Throttle {
            gate: &self.keyframes,
            now_ms: self.now_ms,
        };
        let r = decide(
            &self.table,
            &mut self.latched,
            &mut self.events,
            &mut self.streams,
            &mut self.counters,
            keyframes,
            pkt,
            src,
        );
        if let Err(why) = r {
            self.counters.drop(why);
        }
        r
    }
}

/// The keyframe gate at the batch's time.
#[derive(Clone, Copy)]
struct Throttle<'a> {
    gate: &'a KeyframeGate,
    now_ms: u32,
}

impl Throttle<'_> {
    /// A viewer joined conference `conf` lately: if `ssrc` (arriving from upstream relay `r`)
    /// has not been asked for, queue a PLI for it up that relay, throttled like any other.
    #[cold]
    fn ask_upstream(self, streams: &mut StreamState, conf: u32, r: &Arc<relay::Relay>, ssrc: u32) {
        let Some(w) = streams.keyframe_wanted.get_mut(&conf) else {
            return;
        };
        if self.now_ms.wrapping_sub(w.until_ms) < u32::MAX / 2 {
            streams.keyframe_wanted.remove(&conf); // the window has passed
            return;
        }
        if w.first(ssrc)
            && self
                .gate
                .allow(keyframe::stream_key(conf, ssrc), self.now_ms)
        {
            let pli = keyframe::pli(self.gate.ssrc(), ssrc);
            streams.keyframe_out.push((r.clone(), pli));
        }
    }

    /// Whether feedback `s` in conference `conf` goes on: anything but a keyframe request does;
    /// a keyframe request does when its (first) media stream had none within the interval.
    #[inline]
    fn pass(self, conf: u32, s: &rtcp::Summary) -> Result<(), DropReason> {
        match s.targets().first() {
            Some(&ssrc) if s.keyframe_only => self
                .gate
                .allow(keyframe::stream_key(conf, ssrc), self.now_ms)
                .then_some(())
                .ok_or(DropReason::KeyframeThrottled),
            _ => Ok(()),
        }
    }
}

/// The decision itself, over split borrows of [`Core`].
#[inline]
#[allow(clippy::too_many_arguments)]
fn decide<'t>(
    table: &'t Table,
    latched: &mut FxHashMap<SocketAddr, (EndpointUid, u32)>,
    events: &mut VecDeque<Event>,
    streams: &mut StreamState,
    counters: &mut Counters,
    keyframes: Throttle<'_>,
    pkt: &mut [u8],
    src: SocketAddr,
) -> Result<Verdict<'t>, DropReason> {
    if pkt.first() == Some(&relay::TYPE) {
        return decide_relay(table, streams, counters, keyframes, pkt, src);
    }
    let class = classify::classify(pkt);
    // The SSRC is in the clear even under SRTP: RTP header (parsed once, here, and handed to
    // SRTP and to every protected copy), or the first RTCP packet's sender.
    let (ssrc, hdr) = match class {
        Class::Other => return Err(DropReason::NotRtp),
        Class::Rtp => {
            let h = rtp::Header::parse(pkt)?;
            (h.ssrc, Some(h))
        }
        Class::Rtcp if pkt.len() >= 8 => (be32(pkt, 4), None),
        Class::Rtcp => return Err(DropReason::Malformed),
    };
    let known = table
        .by_addr
        .get(&src)
        .or_else(|| latched.get(&src).map(|(_, i)| i));
    let (idx, latch) = match known {
        Some(&i) => (i, false),
        None => match table.latch_by_ssrc.get(&ssrc) {
            // Latched only once the packet has proven itself (parsed, authenticated).
            Some(&i) => (i, true),
            None => return Err(DropReason::UnknownSource),
        },
    };
    let ep = table.ep(idx);
    let conf = table.conf(ep.conf);
    let is_rtp = class == Class::Rtp;
    if is_rtp {
        counters.rx_rtp += 1;
        if !ep.ssrcs.contains(&ssrc) {
            return Err(DropReason::UnknownSsrc);
        }
    } else {
        counters.rx_rtcp += 1;
    }
    let key = (ep.uid, ssrc);
    let (len, index) = match (&ep.srtp_in, hdr) {
        (Some(s), Some(h)) => {
            let mut st = streams.rtp.get(&key).copied().unwrap_or_default();
            let index = st.estimate(h.seq);
            st.check(index).map_err(srtp_drop)?;
            let len = s.unprotect_rtp_hl(pkt, h.len, index).map_err(srtp_drop)?;
            st.accept(index);
            streams.rtp.insert(key, st);
            (len, index)
        }
        (Some(s), None) => {
            let i = s.rtcp_index(pkt).map_err(srtp_drop)?;
            let mut w = streams.rtcp_in.get(&key).copied().unwrap_or_default();
            w.check(u64::from(i)).map_err(srtp_drop)?;
            let (len, i) = s.unprotect_rtcp(pkt).map_err(srtp_drop)?;
            w.accept(u64::from(i));
            streams.rtcp_in.insert(key, w);
            (len, u64::from(i))
        }
        // Plain senders: SRTP receivers need an index, tracked like a receiver would.
        (None, Some(h)) if conf.srtp_out() => {
            let st = streams.rtp.entry(key).or_default();
            let index = st.estimate(h.seq);
            st.accept(index);
            (pkt.len(), index)
        }
        (None, None) if conf.srtp_out() => {
            let n = streams.rtcp_out.entry(key).or_insert(0);
            *n = (*n + 1) & 0x7fff_ffff;
            (pkt.len(), u64::from(*n))
        }
        (None, _) => (pkt.len(), 0),
    };
    let plain = &pkt[..len];
    let skip = ep.slot.map_or(usize::MAX, |s| s as usize);
    // Everything goes once to each relay, but feedback only when it is about a sender that is
    // not local (the bridge that hosts it delivers it to that sender only).
    let (select, relays) = if let Some(h) = &hdr {
        h.check_padding(plain)?;
        (Select::AllBut(skip), &conf.relays[..])
    } else {
        let s = rtcp::summarize(plain)?;
        if s.feedback {
            let f = feedback_targets(table, ep.conf, Some(idx), s.targets());
            // Towards the media owner: never down a stream's pull tree.
            let relays = if f.elsewhere {
                conf.upstream_relays()
            } else {
                &[]
            };
            if !f.here && relays.is_empty() {
                return Err(DropReason::UnknownSsrc);
            }
            keyframes.pass(ep.conf, &s)?;
            (f.select, relays)
        } else {
            (Select::AllBut(skip), &conf.relays[..])
        }
    };
    if latch {
        latched.insert(src, (ep.uid, idx));
        events.push_back(Event::Latched {
            uid: ep.uid,
            addr: src,
        });
    }
    let dests = Dests {
        peers: &conf.peers,
        select,
    };
    if dests.is_empty() && relays.is_empty() {
        return Err(DropReason::NoReceivers);
    }
    Ok(Verdict {
        class,
        dests,
        relays,
        offset: 0,
        len,
        index,
        rtp_header_len: hdr.map_or(0, |h| h.len),
    })
}

/// What feedback is about, seen from one bridge.
struct Feedback {
    /// The local peers that send its media SSRCs (never the feedback's own sender).
    select: Select,
    /// Some target SSRC has a local sender (the feedback's own sender included).
    here: bool,
    /// Some target SSRC has no local sender (it may be behind a relay).
    elsewhere: bool,
}

/// Where feedback about `targets` goes in conference `conf`.
fn feedback_targets(table: &Table, conf: u32, sender: Option<u32>, targets: &[u32]) -> Feedback {
    let conf = table.conf(conf);
    let mut slots = [0u32; rtcp::MAX_TARGETS];
    let mut n = 0u8;
    let (mut here, mut elsewhere) = (false, false);
    for ssrc in targets {
        let Some(&owner) = conf.ssrc_owner.get(ssrc) else {
            elsewhere = true;
            continue;
        };
        here = true;
        if Some(owner) == sender {
            continue;
        }
        if let Some(slot) = table.ep(owner).slot
            && !slots[..usize::from(n)].contains(&slot)
        {
            slots[usize::from(n)] = slot;
            n += 1;
        }
    }
    Feedback {
        select: Select::Only { slots, n },
        here,
        elsewhere,
    }
}

/// A packet from a relay: authenticated, replay-checked and opened in place; its inner packet
/// goes to local endpoints, and to no other relay in Octo's full mesh. In a stream's pull tree,
/// media from upstream also goes on to the downstream relays (the next tier), and feedback from
/// a downstream relay about a sender that is not local goes up towards it.
fn decide_relay<'t>(
    table: &'t Table,
    streams: &mut StreamState,
    counters: &mut Counters,
    keyframes: Throttle<'_>,
    pkt: &mut [u8],
    src: SocketAddr,
) -> Result<Verdict<'t>, DropReason> {
    let h = relay::Header::parse(pkt)?;
    let (conf_idx, r) = table
        .relay_by
        .get(&(src, h.link))
        .ok_or(DropReason::UnknownRelay)?;
    let key = (r.uid, h.worker);
    let mut w = streams.relay_in.get(&key).copied().unwrap_or_default();
    w.check(h.seq).map_err(|_| DropReason::RelayReplay)?;
    let n = r.open(&h, pkt)?;
    w.accept(h.seq);
    streams.relay_in.insert(key, w);
    counters.relay_rx += 1;
    let inner = &pkt[relay::HEADER_LEN..relay::HEADER_LEN + n];
    let conf = table.conf(*conf_idx);
    // Feedback that must go up the pull tree; whether the packet is feedback at all.
    let (mut up, mut feedback) = (false, false);
    let (class, select, index, rtp_header_len) = match classify::classify(inner) {
        Class::Rtp => {
            counters.rx_rtp += 1;
            let hdr = rtp::Header::parse(inner)?;
            hdr.check_padding(inner)?;
            let index = if conf.srtp_out() {
                let st = streams.rtp.entry((r.uid, hdr.ssrc)).or_default();
                let index = st.estimate(hdr.seq);
                st.accept(index);
                index
            } else {
                0
            };
            if !r.downstream && !streams.keyframe_wanted.is_empty() {
                keyframes.ask_upstream(streams, *conf_idx, r, hdr.ssrc);
            }
            (Class::Rtp, Select::AllBut(usize::MAX), index, hdr.len)
        }
        Class::Rtcp => {
            counters.rx_rtcp += 1;
            let s = rtcp::summarize(inner)?;
            let select = if s.feedback {
                let f = feedback_targets(table, *conf_idx, None, s.targets());
                if f.elsewhere && r.downstream {
                    up = true;
                }
                keyframes.pass(*conf_idx, &s)?;
                f.select
            } else {
                Select::AllBut(usize::MAX)
            };
            feedback = s.feedback;
            let index = if conf.srtp_out() {
                let n = streams.rtcp_out.entry((r.uid, s.sender_ssrc)).or_insert(0);
                *n = (*n + 1) & 0x7fff_ffff;
                u64::from(*n)
            } else {
                0
            };
            (Class::Rtcp, select, index, 0)
        }
        Class::Other => return Err(DropReason::NotRtp),
    };
    let dests = Dests {
        peers: &conf.peers,
        select,
    };
    let relays = if up {
        conf.upstream_relays()
    } else if !feedback && !r.downstream {
        conf.downstream_relays()
    } else {
        &[]
    };
    if dests.is_empty() && relays.is_empty() {
        return Err(DropReason::NoReceivers);
    }
    Ok(Verdict {
        class,
        dests,
        relays,
        offset: relay::HEADER_LEN,
        len: n,
        index,
        rtp_header_len,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::{fir, nack, pli, remb, rtp, sender_report};

    fn a(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    /// Conference 0: endpoints at ports 1, 2, 3 sending SSRCs 10/11, 20, 30; endpoint 4
    /// (SSRC 40) waits to latch. Conference 1: ports 5 and 6 with SSRCs 50, 60.
    fn core() -> Core {
        let mut b = TableBuilder::new();
        let c0 = b.conference();
        b.endpoint(c0, 1, &[10, 11], Some(a(1)), None);
        b.endpoint(c0, 2, &[20], Some(a(2)), None);
        b.endpoint(c0, 3, &[30], Some(a(3)), None);
        b.endpoint(c0, 4, &[40], None, None);
        let c1 = b.conference();
        b.endpoint(c1, 5, &[50], Some(a(5)), None);
        b.endpoint(c1, 6, &[60], Some(a(6)), None);
        Core::new(b.build(1))
    }

    fn dests(core: &mut Core, pkt: &[u8], src: SocketAddr) -> Result<Vec<u16>, DropReason> {
        core.handle(&mut pkt.to_vec(), src)
            .map(|v| v.dests.iter().map(|p| p.addr.port()).collect())
    }

    #[test]
    fn rtp_goes_to_every_other_endpoint_of_its_conference_only() {
        let mut c = core();
        assert_eq!(dests(&mut c, &rtp(10, 1, 0, b"x"), a(1)), Ok(vec![2, 3]));
        assert_eq!(dests(&mut c, &rtp(11, 1, 0, b"x"), a(1)), Ok(vec![2, 3]));
        assert_eq!(dests(&mut c, &rtp(20, 1, 0, b"x"), a(2)), Ok(vec![1, 3]));
        assert_eq!(dests(&mut c, &rtp(50, 1, 0, b"x"), a(5)), Ok(vec![6]));
        assert_eq!(c.counters.rx_rtp, 4);
        assert_eq!(c.counters.dropped(), 0);
    }

    #[test]
    fn drops_are_counted_by_reason() {
        let mut c = core();
        let cases: [(&[u8], SocketAddr, DropReason); 5] = [
            (&[0xde, 0xad, 0xbe, 0xef], a(1), DropReason::NotRtp),
            (&rtp(10, 1, 0, b"")[..9], a(1), DropReason::Malformed),
            (&rtp(10, 1, 0, b"x"), a(9), DropReason::UnknownSource),
            (&rtp(20, 1, 0, b"x"), a(1), DropReason::UnknownSsrc),
            (&pli(10, 999), a(1), DropReason::UnknownSsrc),
        ];
        for (pkt, src, why) in cases {
            let before = c.counters.drops[why as usize];
            assert_eq!(dests(&mut c, pkt, src), Err(why), "{why:?}");
            assert_eq!(c.counters.drops[why as usize], before + 1, "{why:?}");
        }
        // Alone in a conference: nobody to forward to.
        let mut b = TableBuilder::new();
        let conf = b.conference();
        b.endpoint(conf, 1, &[50], Some(a(5)), None);
        c.set_table(b.build(2));
        assert_eq!(
            dests(&mut c, &sender_report(50), a(5)),
            Err(DropReason::NoReceivers)
        );
        assert_eq!(c.counters.dropped(), 6);
        assert_eq!(c.counters.rx_packets, 6);
    }

    #[test]
    fn keyframe_requests_are_throttled_per_stream_other_feedback_never() {
        let mut c = core().with_keyframe_gate(Arc::new(KeyframeGate::new(500)));
        c.set_now(1_000);
        assert_eq!(dests(&mut c, &pli(20, 11), a(2)), Ok(vec![1]));
        // Another receiver asks for the same stream's keyframe: held back, counted.
        assert_eq!(
            dests(&mut c, &fir(30, &[11]), a(3)),
            Err(DropReason::KeyframeThrottled)
        );
        // Another stream of the same sender, and NACKs, go on.
        assert_eq!(dests(&mut c, &pli(20, 10), a(2)), Ok(vec![1]));
        assert_eq!(dests(&mut c, &nack(30, 11, 3), a(3)), Ok(vec![1]));
        c.set_now(1_499);
        assert_eq!(
            dests(&mut c, &pli(30, 11), a(3)),
            Err(DropReason::KeyframeThrottled)
        );
        c.set_now(1_500);
        assert_eq!(dests(&mut c, &pli(30, 11), a(3)), Ok(vec![1]));
        assert_eq!(c.counters.drops[DropReason::KeyframeThrottled as usize], 2);
    }

    #[test]
    fn a_viewer_joining_below_an_upstream_relay_gets_a_keyframe_asked_for_once_per_stream() {
        let (ka, kb) = ([1u8; 16], [2u8; 16]);
        let origin = a(9);
        // This bridge is an edge: its relay to the origin is upstream.
        let up = Arc::new(relay::Relay::new(1, origin, 7, &ka, &kb).unwrap());
        let mut b = TableBuilder::new();
        let conf = b.conference();
        b.endpoint(conf, 1, &[], Some(a(1)), None); // a first viewer
        let mut c =
            Core::new(b.build(1)).with_keyframe_gate(Arc::new(KeyframeGate::with_ssrc(500, 77)));
        c.apply(&Delta {
            generation: 2,
            ops: vec![Op::AddRelay {
                conf,
                relay: up.clone(),
            }],
        });
        // What the origin sends down: media of two streams.
        let at_origin = relay::Relay::new(2, a(0), 7, &kb, &ka).unwrap();
        let mut seq = 0;
        let mut from_origin = |ssrc: u32, c: &mut Core| {
            seq += 1;
            let mut out = [0u8; 2048];
            let n = at_origin
                .seal(0, seq, &rtp(ssrc, seq as u16, 0, b"media"), &mut out)
                .unwrap();
            c.handle(&mut out[..n], origin).map(|v| v.dests.len())
        };
        c.set_now(1_000);
        assert_eq!(from_origin(500, &mut c), Ok(1));
        assert!(c.take_keyframe_request().is_none(), "nobody joined lately");
        // A second viewer joins: the next packet of each stream brings a PLI up the relay.
        c.apply(&Delta {
            generation: 3,
            ops: vec![Op::AddEndpoint {
                conf,
                uid: 2,
                ssrcs: Box::new([]),
                addr: Some(a(2)),
                srtp: None,
            }],
        });
        assert_eq!(from_origin(500, &mut c), Ok(2));
        let (r, pli) = c.take_keyframe_request().expect("asked for a keyframe");
        assert!(Arc::ptr_eq(&r, &up));
        assert_eq!(pli.to_vec(), crate::testkit::pli(77, 500));
        assert_eq!(from_origin(500, &mut c), Ok(2));
        assert_eq!(from_origin(501, &mut c), Ok(2));
        let (_, pli) = c.take_keyframe_request().expect("the other stream too");
        assert_eq!(pli.to_vec(), crate::testkit::pli(77, 501));
        assert!(c.take_keyframe_request().is_none(), "once per stream");
        // Past the window: nothing more.
        c.set_now(2_600);
        assert_eq!(from_origin(502, &mut c), Ok(2));
        assert!(c.take_keyframe_request().is_none());
    }

    #[test]
    fn sender_reports_fan_out_and_feedback_goes_to_the_media_sender() {
        let mut c = core();
        assert_eq!(dests(&mut c, &sender_report(20), a(2)), Ok(vec![1, 3]));
        assert_eq!(dests(&mut c, &pli(20, 11), a(2)), Ok(vec![1]));
        assert_eq!(dests(&mut c, &nack(30, 20, 7), a(3)), Ok(vec![2]));
        assert_eq!(dests(&mut c, &fir(10, &[20, 30]), a(1)), Ok(vec![2, 3]));
        assert_eq!(dests(&mut c, &remb(10, &[30]), a(1)), Ok(vec![3]));
        let mut compound = sender_report(30);
        compound.extend(pli(30, 10));
        assert_eq!(dests(&mut c, &compound, a(3)), Ok(vec![1]));
        // Feedback about one's own SSRC, or another conference's, goes nowhere.
        assert_eq!(
            dests(&mut c, &pli(10, 11), a(1)),
            Err(DropReason::NoReceivers)
        );
        assert_eq!(
            dests(&mut c, &pli(10, 50), a(1)),
            Err(DropReason::UnknownSsrc)
        );
    }

    #[test]
    fn latching_by_declared_ssrc() {
        let mut c = core();
        let src = a(4000);
        assert_eq!(
            dests(&mut c, &rtp(41, 1, 0, b"x"), src),
            Err(DropReason::UnknownSource)
        );
        assert_eq!(c.poll_event(), None);
        assert_eq!(dests(&mut c, &rtp(40, 1, 0, b"x"), src), Ok(vec![1, 2, 3]));
        assert_eq!(c.poll_event(), Some(Event::Latched { uid: 4, addr: src }));
        // Further packets from the latched address forward without a new event.
        assert_eq!(dests(&mut c, &rtp(40, 2, 0, b"x"), src), Ok(vec![1, 2, 3]));
        assert_eq!(c.poll_event(), None);
        // Once the control path publishes the address, others reach the endpoint.
        let mut b = TableBuilder::new();
        let c0 = b.conference();
        b.endpoint(c0, 1, &[10, 11], Some(a(1)), None);
        b.endpoint(c0, 4, &[40], Some(src), None);
        c.set_table(b.build(2));
        assert_eq!(dests(&mut c, &rtp(10, 1, 0, b"x"), a(1)), Ok(vec![4000]));
        assert_eq!(dests(&mut c, &rtp(40, 3, 0, b"x"), src), Ok(vec![1]));
        assert!(c.latched.is_empty());
    }

    #[test]
    fn latched_address_survives_a_table_without_it_until_the_endpoint_is_gone() {
        let mut c = core();
        let src = a(4000);
        dests(&mut c, &rtp(40, 1, 0, b"x"), src).unwrap();
        // An unrelated change published before the latch was recorded.
        let mut b = TableBuilder::new();
        let c0 = b.conference();
        b.endpoint(c0, 1, &[10], Some(a(1)), None);
        b.endpoint(c0, 4, &[40], None, None);
        c.set_table(b.build(2));
        assert_eq!(dests(&mut c, &rtp(40, 2, 0, b"x"), src), Ok(vec![1]));
        // The endpoint is removed: its address is unknown again.
        c.set_table(TableBuilder::new().build(3));
        assert_eq!(
            dests(&mut c, &rtp(40, 3, 0, b"x"), src),
            Err(DropReason::UnknownSource)
        );
    }
}
