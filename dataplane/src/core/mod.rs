//! The sans-IO forwarding core. It owns no socket and reads no clock: given a datagram and its
//! source address it decides where copies go (a [`Verdict`]) or why it is dropped
//! ([`DropReason`]), counts what it saw, and queues [`Event`]s for the control path (latched
//! addresses). SRTP senders are authenticated and decrypted in place here, once; engines
//! protect each copy for SRTP receivers with [`Peer::srtp`] (rewritten on the way for
//! receivers with a [`Rewrite`]). STUN and DTLS go to the WebRTC transport through a bounded
//! queue ([`handoff`]), off the packet path. Engines feed it and carry out its verdicts.

pub mod audio;
pub mod classify;
mod feedback;
pub mod handoff;
pub mod keyframe;
pub mod relay;
pub mod repair;
pub mod rewrite;
pub mod rtcp;
pub mod rtp;
pub mod senders;
pub mod simulcast;
pub mod subscribe;
pub mod table;
mod verdict;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;

use rustc_hash::FxHashMap;

use crate::srtp::{self, replay};
pub use classify::Class;
pub use handoff::Handoff;
pub use keyframe::KeyframeGate;
pub use repair::RepairCache;
pub use rewrite::Rewrite;
pub use senders::RemoteSenders;
pub use table::{ConfIdx, Delta, EndpointUid, LatchClaim, Op, Peer, Table, TableBuilder};
pub use verdict::{CopyKind, Dests, Sent, Verdict};

use feedback::feedback_targets;
use simulcast::group::{Group, SimReceive};
use verdict::Select;

/// Largest datagram an endpoint may send (RTP or RTCP, SRTP included). Larger ones are dropped
/// as [`DropReason::Malformed`] on arrival, whatever the engine: every one that is accepted
/// still fits a relay envelope ([`MAX_RELAY_DATAGRAM`]) to the conference's other bridges.
pub const MAX_DATAGRAM: usize = 2048;
/// Largest datagram from a relay: the largest endpoint datagram in its envelope. Engines
/// receive at least this much.
pub const MAX_RELAY_DATAGRAM: usize = MAX_DATAGRAM + relay::OVERHEAD;

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
    /// A relay packet that would go on to further relays but has crossed
    /// [`relay::HOP_LIMIT`] links already (downstream relays programmed into a loop): its
    /// onward copies are not sent (local endpoints still get it).
    RelayHopLimit = 12,
    /// A STUN or DTLS datagram the WebRTC transport's queue had no room for.
    TransportQueueFull = 13,
    /// RTCP whose only feedback was generic NACKs the bridge answered from its retransmission
    /// cache (nothing left to go on upstream): repaired, not lost.
    NackAnswered = 14,
    /// RTCP whose only feedback the bridge acts on itself (a simulcast receiver's REMB, a NACK
    /// about its stream): nothing to forward.
    FeedbackTaken = 15,
}

impl DropReason {
    /// Number of reasons, for counter arrays.
    pub const COUNT: usize = 16;
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
        Self::RelayHopLimit,
        Self::TransportQueueFull,
        Self::NackAnswered,
        Self::FeedbackTaken,
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
            Self::RelayHopLimit => "relay_hop_limit",
            Self::TransportQueueFull => "transport_queue_full",
            Self::NackAnswered => "nack_answered",
            Self::FeedbackTaken => "feedback_taken",
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
    /// STUN datagrams received (handed to the WebRTC transport, or dropped when its queue was
    /// full).
    pub stun_rx: u64,
    /// DTLS datagrams received (likewise).
    pub dtls_rx: u64,
    /// Sequence numbers receivers' generic NACKs asked this bridge for.
    pub nack_rx: u64,
    /// Packets resent from the retransmission cache (as RTX or plain), one per answered number.
    pub nack_repaired: u64,
    /// Sequence numbers asked for that the cache did not hold: their NACK went on upstream.
    pub nack_forwarded: u64,
    /// Sequence numbers asked for that were never sent to the receiver (they arrived before
    /// its subscription changed, e.g. a video paused by last-N): not repaired, not forwarded.
    pub nack_unsent: u64,
    /// Sequence numbers asked for and deliberately not answered: resent to that receiver within
    /// [`repair::recent::RESEND_MS`], or a simulcast receiver's from a layer it has left (or
    /// from before the switches remembered). Not forwarded either.
    pub nack_unanswered: u64,
    /// Copies an AF_XDP worker wrote straight to its interface (a frame in the tx ring).
    pub xdp_tx: u64,
    /// Copies an AF_XDP worker sent through the kernel (the media socket): the destination is
    /// not behind the interface, its neighbour is not resolved yet, or the frame would exceed
    /// the MTU.
    pub xdp_kernel_tx: u64,
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
    /// A simulcast publisher sent an authenticated packet of a new SSRC naming layer `layer`
    /// by its RID: the control path adds the SSRC to the endpoint and its group.
    Learned {
        /// The publisher.
        uid: EndpointUid,
        /// The layer's SSRC.
        ssrc: u32,
        /// The layer.
        layer: u8,
    },
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
    /// Packets to resend from the retransmission cache, answered this batch (bounded:
    /// [`MAX_REPAIRS`]); the engine takes them with [`Core::next_repair`].
    repairs: Vec<Repair>,
    /// The next of `repairs` to send.
    repairs_at: usize,
    /// Simulcast receivers' state, and what the packet being decided gives each peer.
    sim: simulcast::select::Receivers,
    /// The SRTCP index of the bridge's own RTCP (its keyframe requests) to each endpoint.
    own_rtcp: FxHashMap<EndpointUid, u32>,
    /// SSRCs this worker reported as learned (a layer's first packets all land here).
    learned: rustc_hash::FxHashSet<(EndpointUid, u32)>,
    /// When each endpoint's subscription last changed (ms): it is never sent repairs of
    /// packets that arrived before (a video paused by last-N leaves a gap the receiver NACKs;
    /// those packets were never its to get).
    subscribed_at: FxHashMap<EndpointUid, u32>,
    /// What was lately resent to each receiver that NACKed.
    resent: FxHashMap<EndpointUid, Box<repair::recent::Recent>>,
}

/// Most repairs one batch answers: later NACKed numbers go on upstream.
pub const MAX_REPAIRS: usize = 256;

/// A packet to resend: which cached packet, to which peer.
#[derive(Debug, Clone, Copy)]
struct Repair {
    ring: repair::RingRef,
    seq: u16,
    ssrc: u32,
    conf: u32,
    /// The receiver's peer slot in `conf`.
    slot: u32,
    /// For a simulcast receiver: how its copy was rewritten.
    sim: Option<SimRepair>,
}

/// A simulcast receiver's copy of a layer's packet, to be made again.
#[derive(Debug, Clone, Copy)]
struct SimRepair {
    /// The segment it was sent in.
    segment: simulcast::forward::Segment,
    /// Its output sequence number, index and stream.
    seq: u16,
    index: u64,
    ssrc: u32,
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
    /// The relay each remote sender's media arrives over (shared with the other workers).
    senders: Arc<RemoteSenders>,
    /// The engine's clock at the start of the batch, ms on the gate's clock.
    now_ms: u32,
    /// Where STUN and DTLS go (the bridge's WebRTC transport); without it they are `NotRtp`.
    handoff: Option<Handoff>,
    /// The retransmission cache (shared with the other workers); without it NACKs go upstream.
    repair: Option<Arc<RepairCache>>,
    /// Where a repair is read back and written (a slot, and the 2 bytes RTX adds).
    scratch: Box<[u8]>,
    /// The sender SSRC of this core's own RTCP to endpoints (keyframe requests for simulcast
    /// switches): random per core, so two workers' SRTCP streams to one endpoint never share
    /// a nonce whatever their indices.
    own_ssrc: u32,
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
            senders: Arc::new(RemoteSenders::default()),
            now_ms: 0,
            handoff: None,
            repair: None,
            scratch: vec![0; repair::SLOT_BYTES + 2].into_boxed_slice(),
            own_ssrc: {
                let mut b = [0u8; 4];
                let _ = aws_lc_rs::rand::fill(&mut b);
                u32::from_be_bytes(b) | 1
            },
            counters: Counters::default(),
        }
    }

    /// Hands STUN and DTLS datagrams to the WebRTC transport through `handoff`.
    pub fn with_handoff(mut self, handoff: Option<Handoff>) -> Self {
        self.handoff = handoff;
        self
    }

    /// Throttles keyframe requests with `gate` (shared by the bridge's workers).
    pub fn with_keyframe_gate(mut self, gate: Arc<KeyframeGate>) -> Self {
        self.keyframes = gate;
        self
    }

    /// Answers NACKs from `cache` (shared by the bridge's workers; `None`: NACKs go upstream).
    pub fn with_repair_cache(mut self, cache: Option<Arc<RepairCache>>) -> Self {
        self.repair = cache;
        if self.repair.is_some() {
            self.streams.repairs.reserve_exact(MAX_REPAIRS);
        }
        self
    }

    /// Learns and looks up remote senders in `senders` (shared by the bridge's workers).
    pub fn with_remote_senders(mut self, senders: Arc<RemoteSenders>) -> Self {
        self.senders = senders;
        self
    }

    /// Sets the time (ms on the keyframe gate's clock) for the packets that follow; engines
    /// call it once per batch.
    #[inline]
    pub fn set_now(&mut self, now_ms: u32) {
        self.now_ms = now_ms;
        // Repairs live for one batch: the engine sent the last batch's at its end.
        self.streams.repairs.clear();
        self.streams.repairs_at = 0;
    }

    /// The table in force.
    pub fn table(&self) -> &Table {
        &self.table
    }

    /// Applies a delta from the control path. Costs what it changes: stream state of removed
    /// endpoints goes with them; addresses latched here stay in force while their endpoint
    /// still waits for one, and none but the one the control path recorded once it has it.
    pub fn apply(&mut self, delta: &Delta) {
        for op in &delta.ops {
            match op {
                Op::RemoveEndpoint { uid } => self.forget(*uid),
                Op::RemoveConference { members, conf } => {
                    for &uid in members.iter() {
                        self.forget(uid);
                    }
                    self.streams.keyframe_wanted.remove(&conf.get());
                    if let Some(cache) = &self.repair {
                        cache.release_conference(conf.get());
                    }
                }
                Op::Latch { uid, .. } => {
                    // The recorded address is in the table now; any other this worker latched
                    // for the endpoint (it cannot have, with the claim, unless the control path
                    // gave the claim back) stops being accepted.
                    let uid = *uid;
                    self.latched.retain(|_, (u, _)| *u != uid);
                }
                Op::RemoveRelay { uid, .. } => {
                    let gone = *uid;
                    self.streams.relay_in.retain(|(u, _), _| *u != gone);
                    self.streams.rtp.retain(|(u, _), _| *u != gone);
                    self.streams.rtcp_out.retain(|(u, _), _| *u != gone);
                }
                Op::Subscribe {
                    target: subscribe::Target::Endpoint(uid),
                    ..
                } => {
                    self.streams.subscribed_at.insert(*uid, self.now_ms);
                }
                Op::AddConference
                | Op::AddEndpoint { .. }
                | Op::AddRelay { .. }
                | Op::SetAddr { .. }
                | Op::SetSrtp { .. }
                | Op::Subscribe { .. }
                | Op::SetAudioLevel { .. }
                | Op::SetRtx { .. }
                | Op::SetSimReceive { .. }
                | Op::AddSsrc { .. }
                | Op::SetSimulcast { .. } => {}
                Op::CacheStreams { conf, ssrcs } => {
                    if let Some(cache) = &self.repair {
                        for &ssrc in ssrcs.iter() {
                            cache.claim(conf.get(), ssrc, self.now_ms);
                        }
                    }
                }
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
        let ep = self.table.ep(i);
        for &ssrc in ep.ssrcs.iter() {
            self.streams.rtp.remove(&(uid, ssrc));
            self.streams.rtcp_in.remove(&(uid, ssrc));
            self.streams.rtcp_out.remove(&(uid, ssrc));
            if let Some(cache) = &self.repair {
                cache.release(ep.conf, ssrc);
            }
        }
        self.streams.sim.forget(uid);
        self.streams.own_rtcp.remove(&uid);
        self.streams.subscribed_at.remove(&uid);
        self.streams.resent.remove(&uid);
        if !self.streams.learned.is_empty() {
            self.streams.learned.retain(|(u, _)| *u != uid);
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

    /// Whether this batch's NACKs left packets to resend ([`Core::next_repair`]).
    #[inline]
    pub fn has_repairs(&self) -> bool {
        self.streams.repairs_at < self.streams.repairs.len()
            || !self.streams.sim.keyframes.is_empty()
    }

    /// Writes the next packet this batch's NACKs asked for, as the receiver gets it (RTX
    /// where it negotiated it, else the copy it was sent before, SRTP-protected the same way),
    /// into `out` (room for a protected datagram); returns its length and destination. Engines
    /// send them with the batch's other copies. A packet overwritten since its NACK was
    /// answered is skipped.
    pub fn next_repair(&mut self, out: &mut [u8]) -> Option<(usize, socket2::SockAddr)> {
        // Repairs need the cache; the keyframe requests below do not.
        while let Some(cache) = self.repair.as_deref()
            && let Some(r) = self.streams.repairs.get(self.streams.repairs_at).copied()
        {
            self.streams.repairs_at += 1;
            let Some(c) = cache.fetch(r.ring, r.seq, self.now_ms, &mut self.scratch) else {
                continue;
            };
            let Some(peer) = self.table.conf(r.conf).peers.get(r.slot as usize) else {
                continue;
            };
            if let Some(n) = resend(&mut self.scratch, c, r.ssrc, r.sim, peer, out) {
                self.counters.nack_repaired += 1;
                return Some((n, peer.raw.clone()));
            }
        }
        self.streams.repairs.clear();
        self.streams.repairs_at = 0;
        // Keyframes simulcast receivers wait for, asked of their publisher.
        while let Some((slot, conf, what)) = self.streams.sim.keyframes.pop() {
            let c = self.table.conf(conf);
            let (Some(peer), Some(&owner)) =
                (c.peers.get(slot as usize), c.peer_owner.get(slot as usize))
            else {
                continue;
            };
            let mut buf = [0u8; 40];
            let len = match what {
                simulcast::select::ToPublisher::Pli(ssrc) => {
                    buf[..keyframe::PLI_LEN].copy_from_slice(&keyframe::pli(self.own_ssrc, ssrc));
                    keyframe::PLI_LEN
                }
                simulcast::select::ToPublisher::Remb(ssrcs, n) => simulcast::select::remb(
                    self.own_ssrc,
                    simulcast::select::PUBLISHER_REMB,
                    &ssrcs[..usize::from(n)],
                    &mut buf,
                ),
            };
            let pli = &buf[..len];
            let n = match &peer.srtp {
                None => {
                    out.get_mut(..pli.len())?.copy_from_slice(pli);
                    pli.len()
                }
                Some(s) => {
                    let uid = self.table.ep(owner).uid;
                    let i = self
                        .streams
                        .own_rtcp
                        .entry(uid)
                        .or_insert_with(srtp::first_srtcp_index);
                    *i = (*i + 1) & 0x7fff_ffff;
                    match s.protect_rtcp(pli, *i, out) {
                        Ok(n) => n,
                        Err(_) => continue,
                    }
                }
            };
            return Some((n, peer.raw.clone()));
        }
        None
    }

    /// Next event for the control path.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Decides what happens to one datagram from `src`, and counts it. An SRTP sender's packet
    /// is authenticated and decrypted in place: the plain packet is `pkt[..verdict.len]` (an
    /// RTCP compound may also lose, in place, the keyframe requests the gate holds back).
    /// STUN and DTLS are not forwarded either (`Err(NotRtp)`), but with a [`Handoff`] they are
    /// copied to the WebRTC transport and counted as `stun_rx`/`dtls_rx`, not as drops (unless
    /// its queue is full: `TransportQueueFull`).
    #[inline]
    pub fn handle(&mut self, pkt: &mut [u8], src: SocketAddr) -> Result<Verdict<'_>, DropReason> {
        self.counters.rx_packets += 1;
        self.counters.rx_bytes += pkt.len() as u64;
        let shared = Shared {
            gate: &self.keyframes,
            senders: &self.senders,
            repair: self.repair.as_deref(),
            now_ms: self.now_ms,
        };
        let r = decide(
            &self.table,
            &mut self.latched,
            &mut self.events,
            &mut self.streams,
            &mut self.counters,
            shared,
            pkt,
            src,
        );
        if let Err(why) = r {
            if why == DropReason::NotRtp
                && let Some(h) = &self.handoff
                && let Some(kind) = handoff::Kind::of(pkt)
            {
                handoff::hand_over(h, kind, pkt, src, &mut self.counters);
            } else {
                self.counters.drop(why);
            }
        }
        r
    }
}

/// What the bridge's workers share (the keyframe gate, the remote senders), at the batch's time.
#[derive(Clone, Copy)]
struct Shared<'a> {
    gate: &'a KeyframeGate,
    senders: &'a RemoteSenders,
    repair: Option<&'a RepairCache>,
    now_ms: u32,
}

impl Shared<'_> {
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

    /// Keeps RTP packet `pkt` (sequence `seq`, SRTP index `index`) of stream `ssrc` in
    /// conference `conf` in the retransmission cache, if a receiver NACKed that stream.
    #[inline]
    fn keep(self, conf: u32, ssrc: u32, seq: u16, index: u64, pkt: &[u8]) {
        if let Some(cache) = self.repair
            && let Some(r) = cache.ring_of(conf, ssrc)
        {
            cache.store(r, seq, index, self.now_ms, pkt);
        }
    }

    /// Answers the generic NACKs of feedback compound `pkt` from receiver peer `slot` of
    /// conference `conf` from the retransmission cache: what it holds is queued to be resent
    /// and taken out of the compound, in place; a stream it does not cache yet starts being
    /// cached. Returns the compound's new length (0: nothing is left to go on).
    #[cold]
    fn answer_nacks(
        self,
        streams: &mut StreamState,
        counters: &mut Counters,
        receiver: &table::Endpoint,
        sim: Option<(&SimReceive, &Group)>,
        slot: u32,
        pkt: &mut [u8],
    ) -> usize {
        let Some(cache) = self.repair else {
            return pkt.len();
        };
        let (now, conf) = (self.now_ms, receiver.conf);
        let since = streams.subscribed_at.get(&receiver.uid).copied();
        let (mut unsent, mut unanswered) = (0, 0);
        let repairs = &mut streams.repairs;
        let recent = streams.resent.entry(receiver.uid).or_default();
        let a = repair::nack::answer(pkt, |ssrc, seq| {
            // A simulcast receiver's own numbers: the packet of the layer it is on that it was
            // made from is resent rewritten as it was (a packet of a layer it left is no use
            // after the keyframe it switched at). Never upstream: its numbers mean nothing there.
            if let Some((sim, group)) = sim
                && ssrc == sim.ssrc
            {
                let found = sim.segments.find(seq).filter(|f| f.latest);
                let layer = found.and_then(|f| group.ssrcs.get(usize::from(f.segment.layer)));
                let (Some(f), Some(&layer)) = (found, layer) else {
                    unanswered += 1;
                    return true;
                };
                let Some(ring) = cache.ring_of(conf, layer) else {
                    cache.claim(conf, layer, now);
                    unanswered += 1;
                    return true;
                };
                cache.touch(ring, now);
                if repairs.len() < MAX_REPAIRS
                    && cache.holds(ring, f.from, now)
                    && recent.allow(ssrc, seq, now)
                {
                    repairs.push(Repair {
                        ring,
                        seq: f.from,
                        ssrc: layer,
                        conf,
                        slot,
                        sim: Some(SimRepair {
                            segment: f.segment,
                            seq,
                            index: f.index,
                            ssrc: sim.ssrc,
                        }),
                    });
                } else {
                    unanswered += 1;
                }
                return true;
            }
            let Some(ring) = cache.ring_of(conf, ssrc) else {
                cache.claim(conf, ssrc, now);
                return false;
            };
            cache.touch(ring, now);
            if let Some(since) = since
                && cache
                    .arrived(ring, seq, now)
                    .is_some_and(|at| at.wrapping_sub(since) > u32::MAX / 2)
            {
                // Before the receiver's subscription changed: never sent to it. Nobody
                // repairs it, upstream neither.
                unsent += 1;
                return true;
            }
            if repairs.len() >= MAX_REPAIRS || !cache.holds(ring, seq, now) {
                return false;
            }
            if !recent.allow(ssrc, seq, now) {
                // Resent a moment ago (and the sender would resend it too).
                unanswered += 1;
                return true;
            }
            repairs.push(Repair {
                ring,
                seq,
                ssrc,
                conf,
                slot,
                sim: None,
            });
            true
        });
        counters.nack_rx += u64::from(a.asked);
        counters.nack_forwarded += u64::from(a.asked - a.taken);
        counters.nack_unsent += unsent;
        counters.nack_unanswered += unanswered;
        a.len
    }

    /// Gates every keyframe request of feedback compound `pkt` (summarized as `s`) in
    /// conference `conf`, each on its own media stream: those whose stream had one within the
    /// interval are taken out of the compound, in place; the rest of it goes on. Returns the
    /// compound's length and summary after that; `KeyframeThrottled` when no feedback is left.
    #[inline]
    fn gate(
        self,
        conf: u32,
        pkt: &mut [u8],
        s: rtcp::Summary,
    ) -> Result<(usize, rtcp::Summary), DropReason> {
        if !s.keyframes || self.gate.interval_ms() == 0 {
            return Ok((pkt.len(), s));
        }
        let (len, held) = rtcp::hold_back_keyframes(pkt, |ssrc| {
            self.gate
                .allow(keyframe::stream_key(conf, ssrc), self.now_ms)
        });
        if held == 0 {
            return Ok((len, s));
        }
        match rtcp::summarize(&pkt[..len]) {
            Ok(s) if s.feedback => Ok((len, s)),
            _ => Err(DropReason::KeyframeThrottled),
        }
    }
}

/// An RTP packet of `ep` with an SSRC it did not declare: if `ep` publishes a simulcast group
/// whose layers are named by RID and the packet names one (and authenticates, for an SRTP
/// sender), report the SSRC as that layer's, once per worker. The slow path: a layer's first
/// packets, dropped until the control path has added the SSRC.
#[cold]
fn learn_layer(
    conf: &table::Conference,
    ep: &table::Endpoint,
    h: &rtp::Header,
    pkt: &mut [u8],
    learned: &mut rustc_hash::FxHashSet<(EndpointUid, u32)>,
    events: &mut VecDeque<Event>,
) {
    let Some(g) = conf
        .groups
        .iter()
        .find(|g| g.owner == ep.uid && g.rid_ext != 0)
    else {
        return;
    };
    let Some(layer) = rtp::extension(&pkt[..h.len], g.rid_ext).and_then(|r| g.layer_of_rid(r))
    else {
        return;
    };
    if learned.contains(&(ep.uid, h.ssrc)) || learned.len() >= 64 {
        return;
    }
    // A new stream starts with rollover counter 0; forged packets do not authenticate.
    if let Some(s) = &ep.srtp_in
        && s.unprotect_rtp_hl(pkt, h.len, u64::from(h.seq)).is_err()
    {
        return;
    }
    learned.insert((ep.uid, h.ssrc));
    events.push_back(Event::Learned {
        uid: ep.uid,
        ssrc: h.ssrc,
        layer,
    });
}

/// Writes the resend of the cached packet `scratch[..c.len]` (of media stream `ssrc`) for
/// `peer` into `out`: for an SRTP peer its copy rewritten as before, then as RTX if the peer
/// negotiated it for this stream and codec (fresh SSRC, sequence and index), else under the
/// index the packet was first sent with (the very bytes it was sent before); a plain peer gets
/// the packet as it arrived. `None` if it cannot be written.
fn resend(
    scratch: &mut [u8],
    c: repair::Cached,
    ssrc: u32,
    sim: Option<SimRepair>,
    peer: &Peer,
    out: &mut [u8],
) -> Option<usize> {
    let len = c.len;
    let h = rtp::Header::parse(&scratch[..len]).ok()?;
    // A simulcast receiver's copy: its stream's numbering, as in the first sending.
    let (ssrc, index) = match sim {
        Some(r) => {
            let d = simulcast::vp8::parse(&scratch[h.len..len]).unwrap_or_default();
            r.segment
                .rewrite(&mut scratch[..len], h.len, &d, r.seq, r.ssrc);
            (r.ssrc, r.index)
        }
        None => (ssrc, c.index),
    };
    let Some(s) = &peer.srtp else {
        out.get_mut(..len)?.copy_from_slice(&scratch[..len]);
        return Some(len);
    };
    if let Some(r) = &peer.rewrite {
        r.apply(&mut scratch[..h.len]);
    }
    if let Some(rtx) = &peer.rtx
        && let Some(next) = rtx.next(ssrc, scratch[1] & 0x7f)
    {
        let (n, hl) = repair::rtx::wrap(scratch, h.len, len, next)?;
        return s.protect_rtp_hl(&scratch[..n], hl, next.index, out).ok();
    }
    s.protect_rtp_hl(&scratch[..len], h.len, index, out).ok()
}

/// The decision itself, over split borrows of [`Core`].
#[inline]
#[allow(clippy::too_many_arguments)]
fn decide<'t>(
    table: &'t Table,
    latched: &mut FxHashMap<SocketAddr, (EndpointUid, u32)>,
    events: &mut VecDeque<Event>,
    streams: &'t mut StreamState,
    counters: &mut Counters,
    shared: Shared<'_>,
    pkt: &mut [u8],
    src: SocketAddr,
) -> Result<Verdict<'t>, DropReason> {
    if pkt.first() == Some(&relay::TYPE) {
        if pkt.len() > MAX_RELAY_DATAGRAM {
            return Err(DropReason::Malformed);
        }
        return decide_relay(table, streams, counters, shared, pkt, src);
    }
    if pkt.len() > MAX_DATAGRAM {
        return Err(DropReason::Malformed);
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
            if !conf.groups.is_empty()
                && let Some(h) = &hdr
            {
                learn_layer(conf, ep, h, pkt, &mut streams.learned, events);
            }
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
            // A duplicate (a retransmission of what was forwarded) would go out again under an
            // index its SRTP receivers' keys already used, with whatever changed in it: a nonce
            // reused with other bytes. Dropped (and answered from the cache if asked for).
            st.check(index).map_err(srtp_drop)?;
            st.accept(index);
            (pkt.len(), index)
        }
        (None, None) if conf.srtp_out() => {
            let n = streams
                .rtcp_out
                .entry(key)
                .or_insert_with(srtp::first_srtcp_index);
            *n = (*n + 1) & 0x7fff_ffff;
            (pkt.len(), u64::from(*n))
        }
        (None, _) => (pkt.len(), 0),
    };
    let plain = &mut pkt[..len];
    let summary = match &hdr {
        Some(h) => {
            h.check_padding(plain)?;
            None
        }
        None => Some(rtcp::summarize(plain)?),
    };
    if latch {
        // Parsed and authenticated: it may latch, if no worker latched the endpoint yet (the
        // claim is shared). A second address sending the same SSRC stays unknown.
        if !ep.claim.as_ref().is_some_and(|c| c.take()) {
            return Err(DropReason::UnknownSource);
        }
        latched.insert(src, (ep.uid, idx));
        events.push_back(Event::Latched {
            uid: ep.uid,
            addr: src,
        });
    }
    // Kept for repairs, when a receiver NACKed its stream.
    if let Some(h) = &hdr {
        shared.keep(ep.conf, ssrc, h.seq, index, plain);
    }
    // Its audio level, when it sends one we read (authenticated: a forged level is dropped).
    if let (Some(h), Some((id, meter))) = (&hdr, &ep.audio)
        && let Some(level) = audio::level(&plain[..h.len], *id)
    {
        meter.record(level);
    }
    let skip = ep.slot.map_or(usize::MAX, |s| s as usize);
    // Everything goes once to each relay, but feedback only towards the bridge whose endpoint
    // sends the media it is about (that bridge delivers it to that sender only).
    // RTP goes only to the receivers subscribed to its sender (everyone, by default).
    let filter = hdr.map(|h| conf.filter(h.ssrc)).unwrap_or_default();
    // The simulcast group `ep` receives as one stream, if any.
    let sim = ep.sim.as_deref().and_then(|sim| {
        let g: &Group = conf.groups.iter().find(|g| g.owner == sim.group)?;
        Some((sim, g))
    });
    // A simulcast receiver's reports without feedback: their loss is its estimate's.
    if summary.is_some_and(|s| !s.feedback)
        && let Some((sim, g)) = sim
    {
        simulcast::select::take_feedback(plain, sim, g, false, shared.now_ms);
    }
    let (select, relays, len) = match summary {
        Some(s) if s.feedback => {
            // A simulcast receiver's feedback about its stream: the bridge's to act on (its
            // NACKs the cache's, when there is one).
            let answers = shared.repair.is_some() && ep.slot.is_some();
            let (plain, s) = match sim {
                Some((sim, g)) => {
                    let n = simulcast::select::take_feedback(plain, sim, g, answers, shared.now_ms);
                    let s = rtcp::summarize(&plain[..n]).ok().filter(|s| s.feedback);
                    match s {
                        Some(s) => (&mut plain[..n], s),
                        None => return Err(DropReason::FeedbackTaken),
                    }
                }
                None => (plain, s),
            };
            let (mut len, s) = shared.gate(ep.conf, plain, s)?;
            let f = feedback_targets(table, shared.senders, ep.conf, Some(idx), s.targets(), None);
            // NACKs the cache answers go no further (what is left goes where it went).
            if s.nacks
                && shared.repair.is_some()
                && let Some(slot) = ep.slot
            {
                len = shared.answer_nacks(streams, counters, ep, sim, slot, &mut plain[..len]);
                if len == 0 {
                    return Err(DropReason::NackAnswered);
                }
            }
            // Unknown owner: towards the media owner, never down a stream's pull tree.
            let relays = f.relays(conf, conf.upstream_relays());
            if !f.here && relays.is_empty() {
                return Err(DropReason::UnknownSsrc);
            }
            (f.select, relays, len)
        }
        _ => (
            Select::AllBut(skip),
            Dests::all(&conf.relays[..]).subscribed(filter.relays, filter.bit),
            len,
        ),
    };
    let dests = Dests::new(&conf.peers, select).subscribed(filter.peers, filter.bit);
    if dests.is_empty() && relays.is_empty() {
        return Err(DropReason::NoReceivers);
    }
    // A simulcast layer: each receiver of its group as one stream gets it or not, rewritten.
    let sim = match (&hdr, conf.layers.is_empty()) {
        (Some(h), false) => conf.layers.get(&h.ssrc).map(|(g, layer)| {
            streams.sim.decide(
                table,
                conf,
                ep.conf,
                g,
                *layer,
                &pkt[..len],
                h.len,
                &dests,
                shared.gate,
                ep.slot,
                shared.now_ms,
            )
        }),
        _ => None,
    };
    let streams: &'t StreamState = streams;
    Ok(Verdict {
        class,
        dests,
        relays,
        hops: relay::HOP_LIMIT,
        offset: 0,
        len,
        index,
        rtp_header_len: hdr.map_or(0, |h| h.len),
        sim: sim.map(|d| (&streams.sim.copies[..], d)),
    })
}

/// A packet from a relay: authenticated, replay-checked and opened in place; its inner packet
/// goes to local endpoints, and to no other relay in Octo's full mesh. In a stream's pull tree,
/// media from upstream also goes on to the downstream relays (the next tier), and feedback from
/// a downstream relay about a sender that is not local goes up towards it. Going on costs a hop:
/// a packet that has crossed [`relay::HOP_LIMIT`] links goes to local endpoints only.
fn decide_relay<'t>(
    table: &'t Table,
    streams: &mut StreamState,
    counters: &mut Counters,
    shared: Shared<'_>,
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
    let mut n = r.open(&h, pkt)?;
    w.accept(h.seq);
    streams.relay_in.insert(key, w);
    counters.relay_rx += 1;
    let conf = table.conf(*conf_idx);
    // Relays the inner packet goes on to (feedback up the pull tree; media down).
    let mut relays = Dests::none();
    let mut filter = table::Filter::default();
    let (class, select, index, rtp_header_len) =
        match classify::classify(&pkt[relay::HEADER_LEN..relay::HEADER_LEN + n]) {
            Class::Rtp => {
                let inner = &pkt[relay::HEADER_LEN..relay::HEADER_LEN + n];
                counters.rx_rtp += 1;
                let hdr = rtp::Header::parse(inner)?;
                hdr.check_padding(inner)?;
                // Feedback about this sender goes back over this relay.
                shared.senders.learn(*conf_idx, hdr.ssrc, r.uid);
                let index = if conf.srtp_out() {
                    let st = streams.rtp.entry((r.uid, hdr.ssrc)).or_default();
                    let index = st.estimate(hdr.seq);
                    // As for a local plain sender: never twice under one index.
                    st.check(index).map_err(srtp_drop)?;
                    st.accept(index);
                    index
                } else {
                    0
                };
                shared.keep(*conf_idx, hdr.ssrc, hdr.seq, index, inner);
                filter = conf.filter(hdr.ssrc);
                if !r.downstream {
                    let wants = filter.relays.get(conf.upstream..).unwrap_or_default();
                    relays = Dests::all(conf.downstream_relays()).subscribed(wants, filter.bit);
                    if !streams.keyframe_wanted.is_empty() {
                        shared.ask_upstream(streams, *conf_idx, r, hdr.ssrc);
                    }
                }
                (Class::Rtp, Select::AllBut(usize::MAX), index, hdr.len)
            }
            Class::Rtcp => {
                let inner = &mut pkt[relay::HEADER_LEN..relay::HEADER_LEN + n];
                counters.rx_rtcp += 1;
                let s = rtcp::summarize(inner)?;
                let select = if s.feedback {
                    let (len, s) = shared.gate(*conf_idx, inner, s)?;
                    n = len;
                    let f = feedback_targets(
                        table,
                        shared.senders,
                        *conf_idx,
                        None,
                        s.targets(),
                        Some(r.uid),
                    );
                    if r.downstream {
                        relays = f.relays(conf, conf.upstream_relays());
                    }
                    f.select
                } else {
                    if !r.downstream {
                        relays = Dests::all(conf.downstream_relays());
                    }
                    Select::AllBut(usize::MAX)
                };
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
    let dests = Dests::new(&conf.peers, select).subscribed(filter.peers, filter.bit);
    if !relays.is_empty() && h.hops <= 1 {
        // A loop of downstream relays (or a tree deeper than the limit): no further.
        relays = Dests::none();
        if dests.is_empty() {
            return Err(DropReason::RelayHopLimit);
        }
        counters.drop(DropReason::RelayHopLimit);
    }
    if dests.is_empty() && relays.is_empty() {
        return Err(DropReason::NoReceivers);
    }
    Ok(Verdict {
        class,
        dests,
        relays,
        hops: h.hops.saturating_sub(1),
        offset: relay::HEADER_LEN,
        len: n,
        index,
        rtp_header_len,
        sim: None,
    })
}

#[cfg(test)]
mod tests_repair;

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
    fn stun_and_dtls_go_to_the_transport_queue() {
        let (h, rx) = handoff::queue(2);
        let mut c = core().with_handoff(Some(h));
        let stun = [0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42];
        let dtls = [22, 0xfe, 0xfd, 0, 0, 0, 0, 0];
        assert_eq!(dests(&mut c, &stun, a(9)), Err(DropReason::NotRtp));
        assert_eq!(dests(&mut c, &dtls, a(1)), Err(DropReason::NotRtp));
        // Full: dropped and counted.
        assert_eq!(dests(&mut c, &stun, a(9)), Err(DropReason::NotRtp));
        // Anything else that is not RTP is still not_rtp, not the transport's.
        assert_eq!(dests(&mut c, &[0x0c, 1, 2], a(9)), Err(DropReason::NotRtp));
        assert_eq!((c.counters.stun_rx, c.counters.dtls_rx), (2, 1));
        assert_eq!(c.counters.drops[DropReason::TransportQueueFull as usize], 1);
        assert_eq!(c.counters.drops[DropReason::NotRtp as usize], 1);
        assert_eq!(c.counters.dropped(), 2);
        let got: Vec<_> = rx.try_iter().map(|d| (d.from, d.data.to_vec())).collect();
        assert_eq!(got, [(a(9), stun.to_vec()), (a(1), dtls.to_vec())]);
        // RTP is not affected.
        assert_eq!(dests(&mut c, &rtp(10, 1, 0, b"x"), a(1)), Ok(vec![2, 3]));
        // Without a transport (tests, benches) they are not_rtp.
        let mut c = core();
        assert_eq!(dests(&mut c, &stun, a(9)), Err(DropReason::NotRtp));
        assert_eq!(c.counters.stun_rx, 0);
        assert_eq!(c.counters.drops[DropReason::NotRtp as usize], 1);
    }

    #[test]
    fn a_receivers_rewrite_changes_its_own_copy_only() {
        let p = srtp::Profile::AeadAes128Gcm;
        let session = Arc::new(srtp::Session::new(p, &[1; 16], &[2; 12]).unwrap());
        let rewrite = Rewrite::new(&[(96, 100)], &[]).unwrap().map(Arc::new);
        let mut b = TableBuilder::new();
        let conf = b.conference();
        b.endpoint(conf, 1, &[10], Some(a(1)), None);
        let mut c = Core::new(b.build(1));
        let add = |uid: u64, rewrite: Option<Arc<Rewrite>>| Op::AddEndpoint {
            conf,
            uid,
            ssrcs: Box::new([]),
            addr: Some(a(uid as u16)),
            srtp: Some((session.clone(), session.clone())),
            claim: None,
            webrtc: false,
            rewrite,
        };
        c.apply(&Delta {
            generation: 2,
            ops: vec![add(2, rewrite), add(3, None)],
        });
        let mut pkt = rtp(10, 1, 0, b"payload");
        let sent = pkt.clone();
        let v = c.handle(&mut pkt, a(1)).unwrap();
        let plain = v.plain(&pkt);
        let mut got = Vec::new();
        for peer in v.dests.iter() {
            let mut out = [0u8; 128];
            let s = peer.srtp.as_ref().unwrap();
            let n = v
                .protect(plain, s, peer.rewrite.as_deref(), &mut out)
                .unwrap();
            let mut copy = out[..n].to_vec();
            let m = session.unprotect_rtp(&mut copy, 1).unwrap();
            got.push((peer.addr.port(), copy[1] & 0x7f, copy[2..m].to_vec()));
        }
        got.sort();
        assert_eq!(
            got,
            [(2, 100, sent[2..].to_vec()), (3, 96, sent[2..].to_vec())]
        );
        assert_eq!(plain, &sent[..], "the shared packet is untouched");
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
                claim: None,
                webrtc: false,
                rewrite: None,
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

    /// The copies' destination ports and the plain packet they carry.
    fn forwarded(
        core: &mut Core,
        pkt: &[u8],
        src: SocketAddr,
    ) -> Result<(Vec<u16>, Vec<u8>), DropReason> {
        let mut buf = pkt.to_vec();
        let v = core.handle(&mut buf, src)?;
        let ports = v.dests.iter().map(|p| p.addr.port()).collect();
        Ok((ports, v.plain(&buf).to_vec()))
    }

    fn compound(parts: &[Vec<u8>]) -> Vec<u8> {
        parts.concat()
    }

    #[test]
    fn every_keyframe_request_of_a_compound_is_gated() {
        let mut c = core().with_keyframe_gate(Arc::new(KeyframeGate::new(500)));
        c.set_now(1_000);
        assert_eq!(dests(&mut c, &pli(20, 11), a(2)), Ok(vec![1]));
        // A PLI about some other SSRC first does not carry a PLI about 11 past the gate, however
        // often it comes: the request about 11 is taken out, the rest has nobody to go to.
        for (n, other) in [999u32, 1000, 1001].into_iter().enumerate() {
            c.set_now(1_001 + n as u32);
            assert_eq!(
                dests(&mut c, &compound(&[pli(30, other), pli(30, 11)]), a(3)),
                Err(DropReason::UnknownSsrc)
            );
        }
        // A FIR with two entries: the throttled one is taken out, the other goes on.
        assert_eq!(
            forwarded(&mut c, &fir(30, &[11, 10]), a(3)),
            Ok((vec![1], fir(30, &[10])))
        );
        assert_eq!(
            dests(&mut c, &fir(30, &[10, 11]), a(3)),
            Err(DropReason::KeyframeThrottled)
        );
        // [PLI audio, PLI video] of two senders: each stream on its own.
        assert_eq!(
            forwarded(&mut c, &compound(&[pli(30, 11), pli(30, 20)]), a(3)),
            Ok((vec![2], pli(30, 20)))
        );
        // Other feedback in the compound goes on without the throttled request.
        let rr_nack_pli = compound(&[sender_report(30), nack(30, 11, 5), pli(30, 11)]);
        assert_eq!(
            forwarded(&mut c, &rr_nack_pli, a(3)),
            Ok((vec![1], compound(&[sender_report(30), nack(30, 11, 5)])))
        );
        assert_eq!(c.counters.drops[DropReason::KeyframeThrottled as usize], 1);
        // Past the interval, each stream gets one again.
        c.set_now(1_600);
        assert_eq!(
            forwarded(&mut c, &fir(30, &[11, 10]), a(3)),
            Ok((vec![1], fir(30, &[11, 10])))
        );
    }

    #[test]
    fn an_endpoint_latches_once_whatever_worker_sees_it_first() {
        // Two workers: copies of one table share the endpoints' latch claims.
        let t = core().table.clone();
        let (mut w1, mut w2) = (Core::new(t.clone()), Core::new(t));
        assert_eq!(
            dests(&mut w1, &rtp(40, 1, 0, b"x"), a(4000)),
            Ok(vec![1, 2, 3])
        );
        // The same SSRC from another address, on either worker, before any table change.
        assert_eq!(
            dests(&mut w2, &rtp(40, 2, 0, b"x"), a(4001)),
            Err(DropReason::UnknownSource)
        );
        assert_eq!(
            dests(&mut w2, &sender_report(40), a(4001)),
            Err(DropReason::UnknownSource)
        );
        assert_eq!(
            dests(&mut w1, &rtp(40, 3, 0, b"x"), a(4002)),
            Err(DropReason::UnknownSource)
        );
        assert_eq!(
            w1.poll_event(),
            Some(Event::Latched {
                uid: 4,
                addr: a(4000)
            })
        );
        assert_eq!((w1.poll_event(), w2.poll_event()), (None, None));
        assert_eq!(
            dests(&mut w1, &rtp(40, 4, 0, b"x"), a(4000)),
            Ok(vec![1, 2, 3])
        );

        // Should the control path give the claim back (it could not record the address), the
        // endpoint latches again, and once an address is recorded no other stays accepted.
        let i = w1.table.by_uid[&4];
        w1.table.ep(i).claim.as_ref().unwrap().release();
        assert_eq!(
            dests(&mut w2, &rtp(40, 5, 0, b"x"), a(4001)),
            Ok(vec![1, 2, 3])
        );
        let latch = Delta {
            generation: 2,
            ops: vec![Op::Latch {
                uid: 4,
                addr: a(4001),
            }],
        };
        w1.apply(&latch);
        w2.apply(&latch);
        assert_eq!(
            dests(&mut w1, &rtp(40, 6, 0, b"x"), a(4000)),
            Err(DropReason::UnknownSource)
        );
        assert_eq!(
            dests(&mut w2, &rtp(40, 7, 0, b"x"), a(4001)),
            Ok(vec![1, 2, 3])
        );
        assert!(w1.latched.is_empty() && w2.latched.is_empty());
    }

    #[test]
    fn datagrams_over_the_limit_are_malformed_and_the_largest_fits_a_relay() {
        let (ka, kb) = ([1u8; 16], [2u8; 16]);
        let mut b = TableBuilder::new();
        let conf = b.conference();
        for i in 1..=3u16 {
            b.endpoint(conf, i.into(), &[u32::from(i) * 10], Some(a(i)), None);
        }
        let mut c = Core::new(b.build(1));
        let to_b = Arc::new(relay::Relay::new(100, a(9), 7, &ka, &kb).unwrap());
        c.apply(&Delta {
            generation: 2,
            ops: vec![Op::AddRelay { conf, relay: to_b }],
        });
        let payload = vec![7u8; MAX_DATAGRAM - rtp::FIXED_LEN];
        let largest = rtp(10, 1, 0, &payload);
        let mut buf = largest.clone();
        let v = c.handle(&mut buf, a(1)).unwrap();
        assert_eq!(v.dests.len(), 2);
        let mut out = [0u8; MAX_RELAY_DATAGRAM];
        let n = v
            .seal(
                v.relays.iter().next().unwrap(),
                v.plain(&buf),
                0,
                1,
                &mut out,
            )
            .expect("the largest endpoint datagram fits a relay envelope");
        assert_eq!(n, MAX_RELAY_DATAGRAM);
        // What arrives over the relay on the other side is accepted whole.
        let from_b = relay::Relay::new(101, a(0), 7, &kb, &ka).unwrap();
        let mut sealed = vec![0u8; MAX_RELAY_DATAGRAM];
        from_b.seal(0, 1, &largest, &mut sealed).unwrap();
        let v = c.handle(&mut sealed, a(9)).unwrap();
        assert_eq!(v.plain(&sealed), &largest[..]);
        // One byte more: dropped on arrival, whatever it is.
        for big in [rtp(10, 2, 0, &[payload.clone(), vec![0]].concat()), {
            let mut r = sender_report(10);
            r.resize(MAX_DATAGRAM + 1, 0);
            r
        }] {
            assert_eq!(dests(&mut c, &big, a(1)), Err(DropReason::Malformed));
        }
        let mut sealed = vec![0u8; MAX_RELAY_DATAGRAM + 1];
        from_b
            .seal(0, 2, &[&largest[..], &[0]].concat(), &mut sealed)
            .unwrap();
        assert_eq!(dests(&mut c, &sealed, a(9)), Err(DropReason::Malformed));
    }

    #[test]
    fn a_relayed_packet_goes_on_for_a_limited_number_of_hops() {
        let (ka, kb) = ([1u8; 16], [2u8; 16]);
        // An edge: the origin above (a(9)), the next tier below (a(8)), one viewer here.
        let up = Arc::new(relay::Relay::new(100, a(9), 7, &ka, &kb).unwrap());
        let down = Arc::new(
            relay::Relay::new(101, a(8), 7, &ka, &kb)
                .unwrap()
                .pulling(true),
        );
        let mut b = TableBuilder::new();
        let conf = b.conference();
        let mut c = Core::new(b.build(1));
        c.apply(&Delta {
            generation: 2,
            ops: vec![
                Op::AddRelay { conf, relay: up },
                Op::AddRelay { conf, relay: down },
            ],
        });
        let origin = relay::Relay::new(1, a(0), 7, &kb, &ka).unwrap();
        let media = rtp(500, 1, 0, b"media");
        let arrive = |c: &mut Core, seq: u64, hops: u8| {
            let mut buf = vec![0u8; 256];
            let n = origin.seal_hops(0, seq, hops, &media, &mut buf).unwrap();
            buf.truncate(n);
            c.handle(&mut buf, a(9))
                .map(|v| (v.dests.len(), v.relays.len(), v.hops))
        };
        assert_eq!(
            arrive(&mut c, 1, relay::HOP_LIMIT),
            Ok((0, 1, relay::HOP_LIMIT - 1))
        );
        assert_eq!(arrive(&mut c, 2, 2), Ok((0, 1, 1)));
        // Its last hop: nobody here, and no further.
        assert_eq!(arrive(&mut c, 3, 1), Err(DropReason::RelayHopLimit));
        assert_eq!(arrive(&mut c, 4, 0), Err(DropReason::RelayHopLimit));
        // With a viewer here it is still delivered here; only its onward copy is counted.
        c.apply(&Delta {
            generation: 3,
            ops: vec![Op::AddEndpoint {
                conf,
                uid: 1,
                ssrcs: Box::new([]),
                addr: Some(a(1)),
                srtp: None,
                claim: None,
                webrtc: false,
                rewrite: None,
            }],
        });
        assert_eq!(arrive(&mut c, 5, 1), Ok((1, 0, 0)));
        assert_eq!(c.counters.drops[DropReason::RelayHopLimit as usize], 3);
        assert_eq!(c.counters.dropped(), 3);
    }

    #[test]
    fn feedback_about_a_remote_sender_goes_over_the_relay_its_media_arrives_over() {
        let (ka, kb) = ([1u8; 16], [2u8; 16]);
        // A full mesh: relays to B (a(9)) and C (a(8)); endpoints at 1 and 2 here.
        let to_b = Arc::new(relay::Relay::new(100, a(9), 7, &ka, &kb).unwrap());
        let to_c = Arc::new(relay::Relay::new(101, a(8), 7, &ka, &kb).unwrap());
        let mut b = TableBuilder::new();
        let conf = b.conference();
        b.endpoint(conf, 1, &[10], Some(a(1)), None);
        b.endpoint(conf, 2, &[20], Some(a(2)), None);
        let t = b.build(1);
        let senders = Arc::new(RemoteSenders::default());
        let mut w1 = Core::new(t.clone()).with_remote_senders(senders.clone());
        let mut w2 = Core::new(t).with_remote_senders(senders);
        let add = Delta {
            generation: 2,
            ops: vec![
                Op::AddRelay { conf, relay: to_b },
                Op::AddRelay { conf, relay: to_c },
            ],
        };
        w1.apply(&add);
        w2.apply(&add);
        let relays = |w: &mut Core, pkt: &[u8], src| {
            let mut buf = pkt.to_vec();
            w.handle(&mut buf, src)
                .map(|v| v.relays.iter().map(|r| r.addr.port()).collect::<Vec<_>>())
        };
        // Nothing heard from 77 yet: feedback about it goes to every relay.
        assert_eq!(relays(&mut w2, &nack(10, 77, 1), a(1)), Ok(vec![9, 8]));
        // B's endpoint sends 77; its media arrives (on worker 1).
        let at_b = relay::Relay::new(1, a(0), 7, &kb, &ka).unwrap();
        let mut buf = vec![0u8; 256];
        let n = at_b.seal(0, 1, &rtp(77, 1, 0, b"m"), &mut buf).unwrap();
        assert!(w1.handle(&mut buf[..n], a(9)).is_ok());
        // Feedback about 77, on any worker, goes to B only; about a local sender, to no relay.
        assert_eq!(relays(&mut w2, &nack(10, 77, 2), a(1)), Ok(vec![9]));
        assert_eq!(relays(&mut w1, &pli(20, 77), a(2)), Ok(vec![9]));
        assert_eq!(relays(&mut w2, &remb(10, &[77, 20]), a(1)), Ok(vec![9]));
        assert_eq!(relays(&mut w2, &remb(10, &[20]), a(1)), Ok(vec![]));
        // About 77 and a sender nobody has heard of: every relay.
        assert_eq!(relays(&mut w2, &remb(10, &[77, 88]), a(1)), Ok(vec![9, 8]));
        // Media that arrives over C from then on: feedback follows it.
        let at_c = relay::Relay::new(2, a(0), 7, &kb, &ka).unwrap();
        let n = at_c.seal(0, 1, &rtp(77, 2, 0, b"m"), &mut buf).unwrap();
        assert!(w2.handle(&mut buf[..n], a(8)).is_ok());
        assert_eq!(relays(&mut w1, &nack(10, 77, 3), a(1)), Ok(vec![8]));
    }

    fn subscribe(c: &mut Core, generation: u64, target: subscribe::Target, ssrcs: Option<&[u32]>) {
        c.apply(&Delta {
            generation,
            ops: vec![Op::Subscribe {
                conf: table::ConfIdx::first(),
                target,
                ssrcs: ssrcs.map(Into::into),
            }],
        });
    }

    #[test]
    fn a_subscribed_receiver_gets_only_the_senders_it_named() {
        use subscribe::Target::Endpoint;
        let mut c = core();
        // Endpoint 3 subscribes to endpoint 1's SSRC 10 only.
        subscribe(&mut c, 2, Endpoint(3), Some(&[10]));
        assert_eq!(dests(&mut c, &rtp(10, 1, 0, b"x"), a(1)), Ok(vec![2, 3]));
        assert_eq!(dests(&mut c, &rtp(11, 1, 0, b"x"), a(1)), Ok(vec![2]));
        assert_eq!(dests(&mut c, &rtp(20, 1, 0, b"x"), a(2)), Ok(vec![1]));
        // Feedback and other RTCP are not filtered.
        assert_eq!(dests(&mut c, &sender_report(20), a(2)), Ok(vec![1, 3]));
        // Endpoint 1 subscribes to nobody; 2 then has no one to send to.
        subscribe(&mut c, 3, Endpoint(1), Some(&[]));
        assert_eq!(
            dests(&mut c, &rtp(20, 1, 0, b"x"), a(2)),
            Err(DropReason::NoReceivers)
        );
        // Back to everyone.
        subscribe(&mut c, 4, Endpoint(3), None);
        subscribe(&mut c, 5, Endpoint(1), None);
        assert_eq!(dests(&mut c, &rtp(20, 2, 0, b"x"), a(2)), Ok(vec![1, 3]));
        assert_eq!(c.table.conf(0).filtered, 0);
        assert!(c.table.conf(0).bits.is_empty());
    }

    #[test]
    fn a_subscription_follows_its_endpoint_through_latching_and_removal() {
        use subscribe::Target::Endpoint;
        let mut c = core();
        // Endpoint 4 (waiting to latch) subscribes to 20; it latches; it gets 20 only.
        subscribe(&mut c, 2, Endpoint(4), Some(&[20]));
        assert!(dests(&mut c, &rtp(40, 1, 0, b"x"), a(4)).is_ok());
        let Some(Event::Latched { addr, .. }) = c.poll_event() else {
            panic!("latched")
        };
        c.apply(&Delta {
            generation: 3,
            ops: vec![Op::Latch { uid: 4, addr }],
        });
        assert_eq!(dests(&mut c, &rtp(20, 1, 0, b"x"), a(2)), Ok(vec![1, 3, 4]));
        assert_eq!(dests(&mut c, &rtp(30, 1, 0, b"x"), a(3)), Ok(vec![1, 2]));
        // Removing the endpoint (it moves another peer's slot) leaves the others as they were.
        c.apply(&Delta {
            generation: 4,
            ops: vec![Op::RemoveEndpoint { uid: 1 }],
        });
        assert_eq!(dests(&mut c, &rtp(30, 2, 0, b"x"), a(3)), Ok(vec![2]));
        assert_eq!(c.table.conf(0).filtered, 1);
        c.apply(&Delta {
            generation: 5,
            ops: vec![Op::RemoveEndpoint { uid: 4 }],
        });
        assert_eq!(c.table.conf(0).filtered, 0);
        assert!(c.table.conf(0).bits.is_empty());
    }

    #[test]
    fn media_crosses_a_subscribed_relay_only_for_the_senders_behind_it_wanted() {
        use subscribe::Target::{Endpoint, Relay};
        let (ka, kb) = ([1u8; 16], [2u8; 16]);
        let mut c = core();
        let conf = table::ConfIdx::first();
        let to_b = Arc::new(relay::Relay::new(100, a(9), 7, &ka, &kb).unwrap());
        let to_c = Arc::new(relay::Relay::new(101, a(8), 7, &ka, &kb).unwrap());
        c.apply(&Delta {
            generation: 2,
            ops: vec![
                Op::AddRelay { conf, relay: to_b },
                Op::AddRelay { conf, relay: to_c },
            ],
        });
        let relays = |w: &mut Core, pkt: &[u8], src| {
            let mut buf = pkt.to_vec();
            w.handle(&mut buf, src)
                .map(|v| v.relays.iter().map(|r| r.addr.port()).collect::<Vec<_>>())
        };
        // B's endpoints want 10 only; C's everything.
        subscribe(&mut c, 3, Relay(100), Some(&[10]));
        assert_eq!(relays(&mut c, &rtp(10, 1, 0, b"x"), a(1)), Ok(vec![9, 8]));
        assert_eq!(relays(&mut c, &rtp(20, 1, 0, b"x"), a(2)), Ok(vec![8]));
        // Media arriving over C goes to the local endpoints subscribed to it.
        subscribe(&mut c, 4, Endpoint(2), Some(&[77]));
        subscribe(&mut c, 5, Endpoint(3), Some(&[10]));
        let at_c = relay::Relay::new(2, a(0), 7, &kb, &ka).unwrap();
        let mut buf = vec![0u8; 256];
        let n = at_c.seal(0, 1, &rtp(77, 1, 0, b"m"), &mut buf).unwrap();
        let got = c
            .handle(&mut buf[..n], a(8))
            .map(|v| v.dests.iter().map(|p| p.addr.port()).collect::<Vec<_>>());
        assert_eq!(got, Ok(vec![1, 2]));
        // The relay gone, its subscription goes with it.
        c.apply(&Delta {
            generation: 6,
            ops: vec![Op::RemoveRelay { conf, uid: 100 }],
        });
        assert_eq!(c.table.conf(0).filtered, 2);
        assert_eq!(c.table.conf(0).bits.len(), 2);
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
