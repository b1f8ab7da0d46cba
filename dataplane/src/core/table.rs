//! Forwarding table: conferences and endpoints, indexed for the packet path. The control path
//! and every worker each own a copy and change it with the same [`Op`]s in the same order, so
//! the copies stay identical (slots are allocated deterministically). A change costs what it
//! touches, whatever the size of the bridge or the conference: the control path records the ops
//! of a change and sends them to the workers as one [`Delta`]; a worker applies it in between
//! batches. Lookups by address, SSRC and uid are O(1).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use rustc_hash::FxHashMap;
use socket2::SockAddr;

use super::audio::AudioMeter;
use super::relay::Relay;
use super::repair::rtx::Rtx;
use super::rewrite::Rewrite;
use super::simulcast::group::{Group, SimReceive};
use super::subscribe::{SenderBits, Target, Wants};
use crate::srtp::Session;

/// Bridge-wide identity of an endpoint, stable for its lifetime.
pub type EndpointUid = u64;

/// A destination: the endpoint's address, and the same address as a ready-made `sockaddr`.
#[derive(Debug, Clone)]
pub struct Peer {
    /// Where packets for this endpoint go.
    pub addr: SocketAddr,
    /// `addr` encoded for the kernel, so no conversion happens per packet.
    pub raw: SockAddr,
    /// When set, every copy to this peer is protected with this session.
    pub srtp: Option<Arc<Session>>,
    /// When set, every RTP copy to this peer is rewritten so on its way into `srtp` (only
    /// peers with `srtp` have one: a plain peer's copy is the shared received buffer).
    pub rewrite: Option<Arc<Rewrite>>,
    /// When set, repairs of the streams it lists go to this peer as RTX (else plain resends).
    pub rtx: Option<Arc<Rtx>>,
    /// When set, this peer gets one simulcast group's video as one stream (one layer at a
    /// time, rewritten), not the group's layers as they are.
    pub sim: Option<Arc<SimReceive>>,
}

impl Peer {
    fn new(addr: SocketAddr, ep: &Endpoint) -> Self {
        Self {
            addr,
            raw: SockAddr::from(addr),
            srtp: ep.srtp_out.clone(),
            rewrite: ep.rewrite.clone(),
            rtx: ep.rtx.clone(),
            sim: ep.sim.clone(),
        }
    }
}

/// The right to latch one endpoint's address, shared by every copy of the table (the op that
/// adds the endpoint carries it): the first worker to take it latches the endpoint, whatever the
/// other workers see meanwhile, so an endpoint latches one address, once.
#[derive(Debug, Default)]
pub struct LatchClaim(AtomicBool);

impl LatchClaim {
    /// Takes the claim; false if some worker took it already.
    #[inline]
    pub fn take(&self) -> bool {
        !self.0.load(Ordering::Acquire)
            && self
                .0
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
    }

    /// Gives the claim back (the control path could not record the address taken with it), so
    /// the endpoint can latch again.
    pub fn release(&self) {
        self.0.store(false, Ordering::Release);
    }
}

/// One endpoint as the packet path sees it.
#[derive(Debug, Clone)]
pub(crate) struct Endpoint {
    pub uid: EndpointUid,
    pub conf: u32,
    pub ssrcs: Box<[u32]>,
    /// Index in its conference's `peers`, when the endpoint has an address.
    pub slot: Option<u32>,
    /// Unprotects what the endpoint sends, when it uses SRTP.
    pub srtp_in: Option<Arc<Session>>,
    /// Protects what is sent to it, when it uses SRTP.
    pub srtp_out: Option<Arc<Session>>,
    /// While it waits to latch: the claim every worker's copy shares.
    pub claim: Option<Arc<LatchClaim>>,
    /// How its copies are rewritten (its peer entry carries it while it has an address).
    pub rewrite: Option<Arc<Rewrite>>,
    /// The SSRCs it is subscribed to (`None`: every sender).
    pub subscription: Option<Arc<[u32]>>,
    /// The audio level extension id its audio carries, and the meter its levels go to.
    pub audio: Option<(u8, Arc<AudioMeter>)>,
    /// Its RTX as a receiver (its peer entry carries it while it has an address).
    pub rtx: Option<Arc<Rtx>>,
    /// The simulcast group it receives as one stream (likewise).
    pub sim: Option<Arc<SimReceive>>,
}

/// One conference: the addresses of its endpoints and who sends which SSRC.
#[derive(Debug, Clone, Default)]
pub(crate) struct Conference {
    pub peers: Vec<Peer>,
    /// Endpoint index of each peer.
    pub peer_owner: Vec<u32>,
    pub ssrc_owner: FxHashMap<u32, u32>,
    /// Peers that receive SRTP (plain senders' packet indices must then be tracked).
    pub srtp_peers: u32,
    /// Relays to the other bridges of the conference (Octo), those that do not pull from
    /// this bridge first (`relays[..upstream]`), then the downstream ones (a stream's tiers).
    pub relays: Vec<Arc<Relay>>,
    /// How many of `relays` come first as not downstream.
    pub upstream: usize,
    /// Bits of the SSRCs this conference's subscriptions name.
    pub bits: SenderBits,
    /// Each peer's subscription (`None`: every sender), parallel to `peers`.
    pub peer_wants: Vec<Option<Wants>>,
    /// Each relay's subscription, parallel to `relays`.
    pub relay_wants: Vec<Option<Wants>>,
    /// The SSRC lists of the relays' subscriptions, by relay uid.
    pub relay_subs: FxHashMap<u64, Arc<[u32]>>,
    /// Receivers (peers and relays) with a subscription: 0 means every RTP packet goes to
    /// everyone, without looking its SSRC up.
    pub filtered: u32,
    /// Simulcast groups of its publishers.
    pub groups: Vec<Arc<Group>>,
    /// The group and layer of every SSRC of `groups` (empty: no simulcast, no lookup).
    pub layers: FxHashMap<u32, (Arc<Group>, u8)>,
}

impl Conference {
    /// Some peer receives SRTP.
    #[inline]
    pub fn srtp_out(&self) -> bool {
        self.srtp_peers > 0
    }

    /// Relays that do not pull from this bridge (all of them in Octo's full mesh).
    #[inline]
    pub fn upstream_relays(&self) -> &[Arc<Relay>] {
        &self.relays[..self.upstream]
    }

    /// Relays that pull this conference's media from this bridge.
    #[inline]
    pub fn downstream_relays(&self) -> &[Arc<Relay>] {
        &self.relays[self.upstream..]
    }

    /// For an RTP packet of `ssrc`: the peers' and the relays' subscriptions and the SSRC's
    /// bit, or nothing to filter when no receiver has a subscription.
    #[inline]
    pub fn filter(&self, ssrc: u32) -> Filter<'_> {
        if self.filtered == 0 {
            return Filter::default();
        }
        Filter {
            peers: &self.peer_wants,
            relays: &self.relay_wants,
            bit: self.bits.bit(ssrc),
        }
    }
}

/// What one RTP packet's receivers subscribed to (see [`Conference::filter`]); empty slices:
/// everyone gets it.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Filter<'t> {
    pub peers: &'t [Option<Wants>],
    pub relays: &'t [Option<Wants>],
    pub bit: Option<u32>,
}

/// One change to a table. Every copy applies the same ops in the same order.
#[derive(Debug, Clone)]
pub enum Op {
    /// Adds an empty conference (at the slot [`Table::add_conference`] returned).
    AddConference,
    /// Removes a conference and its endpoints (their uids).
    RemoveConference {
        /// The conference.
        conf: ConfIdx,
        /// Its endpoints.
        members: Box<[EndpointUid]>,
    },
    /// Adds an endpoint; without `addr` it waits to be latched by one of its `ssrcs`.
    AddEndpoint {
        /// Its conference.
        conf: ConfIdx,
        /// Its uid (not in the table yet).
        uid: EndpointUid,
        /// Declared SSRCs.
        ssrcs: Box<[u32]>,
        /// Configured address.
        addr: Option<SocketAddr>,
        /// (inbound, outbound) SRTP sessions.
        srtp: Option<(Arc<Session>, Arc<Session>)>,
        /// Without `addr`: the latch claim every copy of the table shares (the control path
        /// makes one per endpoint; a copy given none makes its own, not shared).
        claim: Option<Arc<LatchClaim>>,
        /// A WebRTC endpoint: it never latches (its address and SRTP sessions come from its
        /// transport, with [`Op::SetAddr`] and [`Op::SetSrtp`]).
        webrtc: bool,
        /// How the copies it receives are rewritten.
        rewrite: Option<Arc<Rewrite>>,
    },
    /// Removes an endpoint.
    RemoveEndpoint {
        /// The endpoint.
        uid: EndpointUid,
    },
    /// Adds a relay to a conference.
    AddRelay {
        /// The conference.
        conf: ConfIdx,
        /// The relay (its uid is not in the table yet).
        relay: Arc<Relay>,
    },
    /// Removes a relay.
    RemoveRelay {
        /// The conference.
        conf: ConfIdx,
        /// The relay's uid.
        uid: u64,
    },
    /// Gives an endpoint waiting to latch its address.
    Latch {
        /// The endpoint.
        uid: EndpointUid,
        /// Its address.
        addr: SocketAddr,
    },
    /// Gives a WebRTC endpoint the address its ICE checks nominated (replacing any it had), or
    /// takes its address away (`None`: consent expired, its transport failed).
    SetAddr {
        /// The endpoint.
        uid: EndpointUid,
        /// Its address, if any.
        addr: Option<SocketAddr>,
    },
    /// Gives a WebRTC endpoint the (inbound, outbound) SRTP sessions its DTLS handshake
    /// exported.
    SetSrtp {
        /// The endpoint.
        uid: EndpointUid,
        /// (inbound, outbound) sessions.
        srtp: Option<(Arc<Session>, Arc<Session>)>,
    },
    /// Reads the audio level (RFC 6464) in extension element `ext_id` of an endpoint's RTP
    /// into `meter`.
    SetAudioLevel {
        /// The endpoint.
        uid: EndpointUid,
        /// The extension id (1-255).
        ext_id: u8,
        /// Where its levels go (shared by every copy of the table).
        meter: Arc<AudioMeter>,
    },
    /// Adds an SSRC to those an endpoint sends (learned from its packets: a simulcast layer
    /// named by its RID).
    AddSsrc {
        /// The endpoint.
        uid: EndpointUid,
        /// The SSRC.
        ssrc: u32,
    },
    /// Starts keeping streams of `conf` in the retransmission cache (an endpoint's video):
    /// no change to the table, each worker's core asks the shared cache (idempotent).
    CacheStreams {
        /// The conference.
        conf: ConfIdx,
        /// The streams' SSRCs.
        ssrcs: Box<[u32]>,
    },
    /// Declares (or with `None` removes) the simulcast group endpoint `owner` of `conf`
    /// publishes.
    SetSimulcast {
        /// The conference.
        conf: ConfIdx,
        /// The publisher.
        owner: EndpointUid,
        /// Its layers.
        group: Option<Arc<Group>>,
    },
    /// Makes an endpoint receive a simulcast group as one stream (`None`: as the layers are).
    SetSimReceive {
        /// The receiver.
        uid: EndpointUid,
        /// What it receives.
        sim: Option<Arc<SimReceive>>,
    },
    /// Sets how an endpoint gets repairs of what it NACKs: RTX on the streams `rtx` lists
    /// (`None`: plain resends).
    SetRtx {
        /// The endpoint.
        uid: EndpointUid,
        /// Its RTX.
        rtx: Option<Arc<Rtx>>,
    },
    /// Sets what an endpoint or a relay of a conference receives RTP of: the senders of
    /// `ssrcs` (distinct), or every sender (`None`).
    Subscribe {
        /// The conference.
        conf: ConfIdx,
        /// The endpoint or relay.
        target: Target,
        /// The SSRCs, or `None` for all.
        ssrcs: Option<Arc<[u32]>>,
    },
}

/// The ops of one publication, stamped with the generation workers acknowledge.
#[derive(Debug, Clone, Default)]
pub struct Delta {
    /// Generation this delta brings a table to.
    pub generation: u64,
    /// The ops, in order.
    pub ops: Vec<Op>,
}

/// A forwarding table; see the module docs.
#[derive(Debug, Clone, Default)]
pub struct Table {
    generation: u64,
    pub(crate) by_addr: FxHashMap<SocketAddr, u32>,
    pub(crate) latch_by_ssrc: FxHashMap<u32, u32>,
    pub(crate) by_uid: FxHashMap<EndpointUid, u32>,
    /// Relays by (remote address, link conference number): their conference and link.
    pub(crate) relay_by: FxHashMap<(SocketAddr, u32), (u32, Arc<Relay>)>,
    endpoints: Vec<Option<Endpoint>>,
    free_endpoints: Vec<u32>,
    conferences: Vec<Option<Conference>>,
    free_conferences: Vec<u32>,
}

/// Index of a conference in a [`Table`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConfIdx(u32);

impl ConfIdx {
    /// The conference's slot (the same in every worker's table).
    pub fn get(self) -> u32 {
        self.0
    }

    /// The slot of a table's first conference (tests).
    #[cfg(test)]
    pub(crate) fn first() -> Self {
        Self(0)
    }
}

impl Table {
    /// The generation of the last delta applied (or the one a built table was stamped with).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The endpoint of conference `conf` that sends `ssrc`.
    pub fn ssrc_owner(&self, conf: ConfIdx, ssrc: u32) -> Option<EndpointUid> {
        self.conf(conf.0)
            .ssrc_owner
            .get(&ssrc)
            .map(|&i| self.ep(i).uid)
    }

    /// Number of endpoints in the table.
    pub fn endpoints(&self) -> usize {
        self.by_uid.len()
    }

    /// Endpoint `i` (an index found in the table's maps).
    #[inline]
    pub(crate) fn ep(&self, i: u32) -> &Endpoint {
        self.endpoints[i as usize]
            .as_ref()
            .expect("live endpoint index")
    }

    /// Conference `i` (an index found on a live endpoint).
    #[inline]
    pub(crate) fn conf(&self, i: u32) -> &Conference {
        self.conferences[i as usize]
            .as_ref()
            .expect("live conference index")
    }

    fn conf_mut(&mut self, i: u32) -> &mut Conference {
        self.conferences[i as usize]
            .as_mut()
            .expect("live conference")
    }

    fn ep_mut(&mut self, i: u32) -> &mut Endpoint {
        self.endpoints[i as usize].as_mut().expect("live endpoint")
    }

    /// Applies one op; the control path has validated it (ids free, SSRCs and address unused).
    pub fn apply(&mut self, op: &Op) {
        match op {
            Op::AddConference => {
                self.add_conference();
            }
            Op::RemoveConference { conf, members } => self.remove_conference(*conf, members),
            Op::AddEndpoint {
                conf,
                uid,
                ssrcs,
                addr,
                srtp,
                claim,
                webrtc,
                rewrite,
            } => self.insert_endpoint(
                *conf,
                *uid,
                ssrcs,
                *addr,
                srtp.clone(),
                (!*webrtc).then(|| claim.clone().unwrap_or_default()),
                rewrite.clone(),
            ),
            Op::RemoveEndpoint { uid } => {
                self.remove_endpoint(*uid);
            }
            Op::Latch { uid, addr } => {
                self.latch(*uid, *addr);
            }
            Op::SetAddr { uid, addr } => self.set_transport_addr(*uid, *addr),
            Op::SetSrtp { uid, srtp } => self.set_srtp(*uid, srtp.clone()),
            Op::Subscribe {
                conf,
                target,
                ssrcs,
            } => self.subscribe(*conf, *target, ssrcs.clone()),
            Op::SetAudioLevel { uid, ext_id, meter } => {
                if let Some(&i) = self.by_uid.get(uid) {
                    self.ep_mut(i).audio = Some((*ext_id, meter.clone()));
                }
            }
            Op::SetSimulcast { conf, owner, group } => self.set_group(*conf, *owner, group),
            Op::CacheStreams { .. } => {}
            Op::AddSsrc { uid, ssrc } => {
                if let Some(&i) = self.by_uid.get(uid) {
                    let ep = self.ep_mut(i);
                    if !ep.ssrcs.contains(ssrc) {
                        let mut v = ep.ssrcs.to_vec();
                        v.push(*ssrc);
                        ep.ssrcs = v.into();
                    }
                    let conf = ep.conf;
                    self.conf_mut(conf).ssrc_owner.insert(*ssrc, i);
                }
            }
            Op::SetSimReceive { uid, sim } => {
                if let Some(&i) = self.by_uid.get(uid) {
                    let ep = self.ep_mut(i);
                    ep.sim = sim.clone();
                    if let Some(slot) = ep.slot {
                        let conf = ep.conf;
                        self.conf_mut(conf).peers[slot as usize].sim = sim.clone();
                    }
                }
            }
            Op::SetRtx { uid, rtx } => {
                if let Some(&i) = self.by_uid.get(uid) {
                    let ep = self.ep_mut(i);
                    ep.rtx = rtx.clone();
                    if let Some(slot) = ep.slot {
                        let conf = ep.conf;
                        self.conf_mut(conf).peers[slot as usize].rtx = rtx.clone();
                    }
                }
            }
            Op::AddRelay { conf, relay } => {
                self.relay_by
                    .insert((relay.addr, relay.link), (conf.0, relay.clone()));
                let c = self.conf_mut(conf.0);
                if relay.downstream {
                    c.relays.push(relay.clone());
                    c.relay_wants.push(None);
                } else {
                    c.relays.insert(c.upstream, relay.clone());
                    c.relay_wants.insert(c.upstream, None);
                    c.upstream += 1;
                }
            }
            Op::RemoveRelay { conf, uid } => {
                let c = self.conf_mut(conf.0);
                if let Some(i) = c.relays.iter().position(|r| r.uid == *uid) {
                    // Order-preserving: upstream relays stay first.
                    let r = c.relays.remove(i);
                    if c.relay_wants.remove(i).is_some() {
                        c.filtered -= 1;
                    }
                    if let Some(old) = c.relay_subs.remove(uid) {
                        c.bits.release(&old);
                    }
                    if i < c.upstream {
                        c.upstream -= 1;
                    }
                    self.relay_by.remove(&(r.addr, r.link));
                }
            }
        }
    }

    /// Applies a delta and takes its generation.
    pub fn apply_delta(&mut self, d: &Delta) {
        for op in &d.ops {
            self.apply(op);
        }
        self.set_generation(d.generation);
    }

    /// Takes `generation` as the one in force (after applying its ops one by one).
    pub fn set_generation(&mut self, generation: u64) {
        self.generation = generation;
    }

    /// Adds an empty conference.
    pub fn add_conference(&mut self) -> ConfIdx {
        let c = Some(Conference::default());
        match self.free_conferences.pop() {
            Some(i) => {
                self.conferences[i as usize] = c;
                ConfIdx(i)
            }
            None => {
                self.conferences.push(c);
                ConfIdx(self.conferences.len() as u32 - 1)
            }
        }
    }

    /// Adds an endpoint to `conf`. Without `addr` it waits to be latched by one of its `ssrcs`
    /// (with a latch claim of its own: copies of this table made by `clone` share it).
    /// `srtp` holds its (inbound, outbound) sessions when it uses SRTP. The caller (the control
    /// path) has already checked that the uid, address and SSRCs are free.
    pub fn add_endpoint(
        &mut self,
        conf: ConfIdx,
        uid: EndpointUid,
        ssrcs: &[u32],
        addr: Option<SocketAddr>,
        srtp: Option<(Arc<Session>, Arc<Session>)>,
    ) {
        self.insert_endpoint(conf, uid, ssrcs, addr, srtp, Some(Arc::default()), None);
    }

    /// Adds a WebRTC endpoint to `conf`: it never latches; [`Op::SetAddr`] and
    /// [`Op::SetSrtp`] give it an address and sessions. `rewrite` applies to its copies.
    pub fn add_webrtc_endpoint(
        &mut self,
        conf: ConfIdx,
        uid: EndpointUid,
        ssrcs: &[u32],
        rewrite: Option<Arc<Rewrite>>,
    ) {
        self.insert_endpoint(conf, uid, ssrcs, None, None, None, rewrite);
    }

    /// Adds an endpoint; without `addr`, it waits to latch when given a `claim` (a WebRTC
    /// endpoint, given none, never latches).
    #[allow(clippy::too_many_arguments)]
    fn insert_endpoint(
        &mut self,
        conf: ConfIdx,
        uid: EndpointUid,
        ssrcs: &[u32],
        addr: Option<SocketAddr>,
        srtp: Option<(Arc<Session>, Arc<Session>)>,
        claim: Option<Arc<LatchClaim>>,
        rewrite: Option<Arc<Rewrite>>,
    ) {
        let (srtp_in, srtp_out) = srtp.unzip();
        let claim = claim.filter(|_| addr.is_none());
        let latches = claim.is_some();
        let ep = Some(Endpoint {
            uid,
            conf: conf.0,
            ssrcs: ssrcs.into(),
            slot: None,
            srtp_in,
            srtp_out,
            claim,
            rewrite,
            subscription: None,
            audio: None,
            rtx: None,
            sim: None,
        });
        let idx = match self.free_endpoints.pop() {
            Some(i) => {
                self.endpoints[i as usize] = ep;
                i
            }
            None => {
                self.endpoints.push(ep);
                self.endpoints.len() as u32 - 1
            }
        };
        self.by_uid.insert(uid, idx);
        let c = self.conf_mut(conf.0);
        for &s in ssrcs {
            c.ssrc_owner.insert(s, idx);
        }
        match addr {
            Some(a) => self.set_addr(idx, a),
            None if latches => {
                for &s in ssrcs {
                    self.latch_by_ssrc.insert(s, idx);
                }
            }
            None => {}
        }
    }

    /// Gives WebRTC endpoint `uid` the address `addr` (moving it from any it had), or takes its
    /// address away.
    fn set_transport_addr(&mut self, uid: EndpointUid, addr: Option<SocketAddr>) {
        let Some(&i) = self.by_uid.get(&uid) else {
            return;
        };
        self.clear_addr(i);
        if let Some(a) = addr {
            self.set_addr(i, a);
        }
    }

    /// Gives endpoint `uid` new SRTP sessions (its peer entry too, when it has an address).
    fn set_srtp(&mut self, uid: EndpointUid, srtp: Option<(Arc<Session>, Arc<Session>)>) {
        let Some(&i) = self.by_uid.get(&uid) else {
            return;
        };
        let (srtp_in, srtp_out) = srtp.unzip();
        let ep = self.ep_mut(i);
        ep.srtp_in = srtp_in;
        ep.srtp_out = srtp_out.clone();
        let (conf, slot) = (ep.conf, ep.slot);
        if let Some(slot) = slot {
            let c = self.conf_mut(conf);
            let p = &mut c.peers[slot as usize];
            c.srtp_peers -= u32::from(p.srtp.is_some());
            c.srtp_peers += u32::from(srtp_out.is_some());
            p.srtp = srtp_out;
        }
    }

    /// Takes endpoint `idx`'s address away: out of its conference's peers and the address index.
    fn clear_addr(&mut self, idx: u32) {
        let ep = self.ep(idx);
        let (conf, Some(slot)) = (ep.conf, ep.slot) else {
            return;
        };
        let slot = slot as usize;
        let c = self.conf_mut(conf);
        let gone = c.peers.swap_remove(slot);
        c.peer_owner.swap_remove(slot);
        if c.peer_wants.swap_remove(slot).is_some() {
            c.filtered -= 1;
        }
        c.srtp_peers -= u32::from(gone.srtp.is_some());
        let moved = c.peer_owner.get(slot).copied();
        if let Some(m) = moved {
            self.ep_mut(m).slot = Some(slot as u32);
        }
        self.by_addr.remove(&gone.addr);
        self.ep_mut(idx).slot = None;
    }

    /// Gives endpoint `uid` (waiting to latch) the address `addr`. False if it is unknown or
    /// already has one.
    pub fn latch(&mut self, uid: EndpointUid, addr: SocketAddr) -> bool {
        match self.by_uid.get(&uid) {
            Some(&i) if self.ep(i).slot.is_none() => {
                self.set_addr(i, addr);
                true
            }
            _ => false,
        }
    }

    fn set_addr(&mut self, idx: u32, addr: SocketAddr) {
        let ep = self.ep(idx);
        let (conf, srtp) = (ep.conf, ep.srtp_out.is_some());
        let peer = Peer::new(addr, ep);
        let sub = ep.subscription.clone();
        for i in 0..ep.ssrcs.len() {
            let s = self.ep(idx).ssrcs[i];
            if self.latch_by_ssrc.get(&s) == Some(&idx) {
                self.latch_by_ssrc.remove(&s);
            }
        }
        self.by_addr.insert(addr, idx);
        self.ep_mut(idx).claim = None;
        let c = self.conf_mut(conf);
        c.srtp_peers += u32::from(srtp);
        c.peers.push(peer);
        c.peer_owner.push(idx);
        let wants = sub.map(|s| c.bits.wants(&s));
        c.filtered += u32::from(wants.is_some());
        c.peer_wants.push(wants);
        let slot = c.peers.len() as u32 - 1;
        self.ep_mut(idx).slot = Some(slot);
    }

    /// Takes endpoint `uid` out of the bridge-wide indices (not out of its conference).
    fn unindex(&mut self, uid: EndpointUid) -> Option<(u32, Endpoint)> {
        let idx = self.by_uid.remove(&uid)?;
        let ep = self.endpoints[idx as usize].take().expect("live endpoint");
        self.free_endpoints.push(idx);
        for s in ep.ssrcs.iter() {
            if self.latch_by_ssrc.get(s) == Some(&idx) {
                self.latch_by_ssrc.remove(s);
            }
        }
        if let Some(slot) = ep.slot {
            let addr = self.conf(ep.conf).peers[slot as usize].addr;
            self.by_addr.remove(&addr);
        }
        Some((idx, ep))
    }

    /// Removes endpoint `uid`; false if unknown. O(its SSRCs), whatever the conference's size.
    pub fn remove_endpoint(&mut self, uid: EndpointUid) -> bool {
        let Some(&i) = self.by_uid.get(&uid) else {
            return false;
        };
        self.clear_addr(i);
        let Some((idx, ep)) = self.unindex(uid) else {
            return false;
        };
        let c = self.conf_mut(ep.conf);
        for s in ep.ssrcs.iter() {
            if c.ssrc_owner.get(s) == Some(&idx) {
                c.ssrc_owner.remove(s);
            }
        }
        if let Some(old) = &ep.subscription {
            c.bits.release(old);
        }
        if !c.groups.is_empty() {
            c.groups.retain(|g| g.owner != uid);
            c.layers.retain(|_, (g, _)| g.owner != uid);
        }
        true
    }

    /// Replaces publisher `owner`'s simulcast group in `conf` by `group` (`None`: removes it).
    fn set_group(&mut self, conf: ConfIdx, owner: EndpointUid, group: &Option<Arc<Group>>) {
        let c = self.conf_mut(conf.0);
        c.groups.retain(|g| g.owner != owner);
        c.layers.retain(|_, (g, _)| g.owner != owner);
        if let Some(g) = group {
            for (i, &ssrc) in g.ssrcs.iter().enumerate().filter(|(_, s)| **s != 0) {
                c.layers.insert(ssrc, (g.clone(), i as u8));
            }
            c.groups.push(g.clone());
        }
    }

    /// Sets what endpoint or relay `target` of `conf` receives RTP of (see [`Op::Subscribe`]).
    /// Costs the SSRCs of the old and new subscriptions. An unknown target changes nothing.
    fn subscribe(&mut self, conf: ConfIdx, target: Target, ssrcs: Option<Arc<[u32]>>) {
        match target {
            Target::Endpoint(uid) => {
                let Some(&i) = self.by_uid.get(&uid) else {
                    return;
                };
                let ep = self.ep_mut(i);
                let old = std::mem::replace(&mut ep.subscription, ssrcs.clone());
                let slot = ep.slot;
                let c = self.conf_mut(conf.0);
                let wants = ssrcs.map(|s| c.bits.acquire(&s));
                if let Some(old) = old {
                    c.bits.release(&old);
                }
                if let Some(slot) = slot {
                    let w = &mut c.peer_wants[slot as usize];
                    c.filtered -= u32::from(w.is_some());
                    c.filtered += u32::from(wants.is_some());
                    *w = wants;
                }
            }
            Target::Relay(uid) => {
                let c = self.conf_mut(conf.0);
                let Some(i) = c.relays.iter().position(|r| r.uid == uid) else {
                    return;
                };
                let wants = ssrcs.as_ref().map(|s| c.bits.acquire(s));
                let old = match ssrcs {
                    Some(s) => c.relay_subs.insert(uid, s),
                    None => c.relay_subs.remove(&uid),
                };
                if let Some(old) = old {
                    c.bits.release(&old);
                }
                let w = &mut c.relay_wants[i];
                c.filtered -= u32::from(w.is_some());
                c.filtered += u32::from(wants.is_some());
                *w = wants;
            }
        }
    }

    /// Removes a conference and all its endpoints (`members`, their uids): the endpoints leave
    /// the bridge-wide indices, the conference goes at once.
    pub fn remove_conference(&mut self, conf: ConfIdx, members: &[EndpointUid]) {
        for &uid in members {
            self.unindex(uid);
        }
        self.conf_mut(conf.0).upstream = 0;
        for r in std::mem::take(&mut self.conf_mut(conf.0).relays) {
            self.relay_by.remove(&(r.addr, r.link));
        }
        self.conferences[conf.0 as usize] = None;
        self.free_conferences.push(conf.0);
    }
}

/// Builds a [`Table`] from scratch (tests, benches); bridges change theirs with [`Op`]s.
#[derive(Debug, Default)]
pub struct TableBuilder {
    table: Table,
}

impl TableBuilder {
    /// Starts an empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a conference.
    pub fn conference(&mut self) -> ConfIdx {
        self.table.add_conference()
    }

    /// See [`Table::add_endpoint`].
    pub fn endpoint(
        &mut self,
        conf: ConfIdx,
        uid: EndpointUid,
        ssrcs: &[u32],
        addr: Option<SocketAddr>,
        srtp: Option<(Arc<Session>, Arc<Session>)>,
    ) {
        self.table.add_endpoint(conf, uid, ssrcs, addr, srtp);
    }

    /// Finishes the table, stamped with `generation`.
    pub fn build(mut self, generation: u64) -> Table {
        self.table.generation = generation;
        self.table
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    /// Every index agrees with every other after arbitrary changes.
    fn consistent(t: &Table) {
        for (&uid, &i) in &t.by_uid {
            let e = t.ep(i);
            assert_eq!(e.uid, uid);
            let c = t.conf(e.conf);
            match e.slot {
                Some(s) => {
                    assert_eq!(c.peer_owner[s as usize], i);
                    assert_eq!(t.by_addr[&c.peers[s as usize].addr], i);
                }
                None if e.claim.is_some() => {
                    assert!(e.ssrcs.iter().all(|s| t.latch_by_ssrc[s] == i))
                }
                // A WebRTC endpoint without an address never latches.
                None => assert!(e.ssrcs.iter().all(|s| !t.latch_by_ssrc.contains_key(s))),
            }
            let srtp_peers = c.peers.iter().filter(|p| p.srtp.is_some()).count();
            assert_eq!(c.srtp_peers as usize, srtp_peers);
            assert!(e.ssrcs.iter().all(|s| c.ssrc_owner[s] == i));
        }
        assert_eq!(
            t.by_addr.len(),
            t.by_uid
                .values()
                .filter(|&&i| t.ep(i).slot.is_some())
                .count()
        );
    }

    #[test]
    fn incremental_changes_keep_indices_consistent() {
        let mut t = Table::default();
        let c0 = t.add_conference();
        let c1 = t.add_conference();
        for uid in 1..=4 {
            t.add_endpoint(c0, uid, &[uid as u32 * 10], Some(a(uid as u16)), None);
        }
        t.add_endpoint(c0, 5, &[50], None, None);
        t.add_endpoint(c1, 6, &[60], Some(a(6)), None);
        consistent(&t);
        let before = t.clone();
        assert!(t.remove_endpoint(1)); // swap-removes: endpoint 4 takes slot 0
        consistent(&t);
        assert_eq!(t.conf(0).peers.len(), 3);
        assert!(t.latch(5, a(55)));
        assert!(!t.latch(5, a(56)));
        consistent(&t);
        t.remove_conference(c0, &[2, 3, 4, 5]);
        consistent(&t);
        assert_eq!(t.endpoints(), 1);
        assert!(t.by_addr.contains_key(&a(6)) && !t.by_addr.contains_key(&a(2)));
        // Slots are reused; the earlier snapshot is untouched.
        let c2 = t.add_conference();
        assert_eq!(c2, c0);
        t.add_endpoint(c2, 7, &[70], Some(a(7)), None);
        consistent(&t);
        consistent(&before);
        assert_eq!(before.endpoints(), 6);
    }

    #[test]
    fn copies_applying_the_same_ops_stay_identical() {
        let mut a = Table::default();
        let mut ops = vec![Op::AddConference, Op::AddConference];
        let (c0, c1) = (ConfIdx(0), ConfIdx(1));
        for uid in 1..=6u64 {
            ops.push(Op::AddEndpoint {
                conf: if uid % 2 == 0 { c0 } else { c1 },
                uid,
                ssrcs: [uid as u32].into(),
                addr: (uid != 5).then(|| a_(uid as u16)),
                srtp: None,
                claim: None,
                webrtc: false,
                rewrite: None,
            });
        }
        ops.push(Op::RemoveEndpoint { uid: 2 });
        ops.push(Op::Latch {
            uid: 5,
            addr: a_(55),
        });
        ops.push(Op::RemoveConference {
            conf: c1,
            members: [1, 3, 5].into(),
        });
        ops.push(Op::AddConference); // reuses slot 1
        ops.push(Op::AddEndpoint {
            conf: c1,
            uid: 7,
            ssrcs: [7].into(),
            addr: Some(a_(7)),
            srtp: None,
            claim: None,
            webrtc: false,
            rewrite: None,
        });
        for op in &ops {
            a.apply(op);
        }
        let mut b = Table::default();
        b.apply_delta(&Delta { generation: 9, ops });
        consistent(&a);
        consistent(&b);
        assert_eq!(b.generation(), 9);
        assert_eq!(a.endpoints(), 3);
        let peers = |t: &Table, c: u32| -> Vec<SocketAddr> {
            t.conf(c).peers.iter().map(|p| p.addr).collect()
        };
        assert_eq!(peers(&a, 0), peers(&b, 0));
        assert_eq!(peers(&a, 1), [a_(7)]);
        assert_eq!(a.by_addr, b.by_addr);
        assert_eq!(a.by_uid, b.by_uid);
    }

    #[test]
    fn webrtc_endpoints_get_and_lose_their_transport() {
        let session = || {
            let p = crate::srtp::Profile::AeadAes128Gcm;
            Arc::new(Session::new(p, &[1; 16], &[2; 12]).unwrap())
        };
        let rewrite = Rewrite::new(&[(96, 100)], &[]).unwrap().map(Arc::new);
        let mut t = Table::default();
        let c = t.add_conference();
        t.add_endpoint(c, 1, &[10], Some(a(1)), None);
        t.add_webrtc_endpoint(c, 2, &[20], rewrite.clone());
        t.add_webrtc_endpoint(c, 3, &[], None);
        consistent(&t);
        // Waiting for its transport: no address, and its SSRC latches nothing.
        assert!(!t.latch_by_ssrc.contains_key(&20));
        assert!(t.ep(t.by_uid[&2]).claim.is_none());
        assert_eq!(t.conf(0).peers.len(), 1);

        // DTLS done and ICE nominated: sessions, then the address.
        t.apply(&Op::SetSrtp {
            uid: 2,
            srtp: Some((session(), session())),
        });
        t.apply(&Op::SetAddr {
            uid: 2,
            addr: Some(a(2)),
        });
        t.apply(&Op::SetSrtp {
            uid: 3,
            srtp: Some((session(), session())),
        });
        t.apply(&Op::SetAddr {
            uid: 3,
            addr: Some(a(3)),
        });
        consistent(&t);
        let peer =
            |t: &Table, port: u16| t.conf(0).peers.iter().find(|p| p.addr == a(port)).cloned();
        let p2 = peer(&t, 2).unwrap();
        assert!(p2.srtp.is_some() && p2.rewrite == rewrite);
        assert_eq!(t.conf(0).srtp_peers, 2);

        // A higher-priority pair: the address moves; consent expiry takes it away.
        t.apply(&Op::SetAddr {
            uid: 2,
            addr: Some(a(22)),
        });
        consistent(&t);
        assert!(peer(&t, 2).is_none() && peer(&t, 22).is_some());
        assert!(!t.by_addr.contains_key(&a(2)));
        t.apply(&Op::SetAddr { uid: 2, addr: None });
        consistent(&t);
        assert_eq!(t.conf(0).peers.len(), 2);
        assert_eq!(t.conf(0).srtp_peers, 1);
        // Consent restored: back, with its sessions and rewrite.
        t.apply(&Op::SetAddr {
            uid: 2,
            addr: Some(a(22)),
        });
        consistent(&t);
        assert_eq!(peer(&t, 22).unwrap().rewrite, rewrite);
        assert!(t.remove_endpoint(2));
        assert!(t.remove_endpoint(1));
        consistent(&t);
        assert_eq!(t.conf(0).peers.len(), 1);
        // Ops for endpoints that are gone change nothing.
        t.apply(&Op::SetAddr {
            uid: 2,
            addr: Some(a(2)),
        });
        t.apply(&Op::SetSrtp { uid: 2, srtp: None });
        consistent(&t);
        assert_eq!(t.endpoints(), 1);
    }

    fn a_(port: u16) -> SocketAddr {
        a(port)
    }
}
