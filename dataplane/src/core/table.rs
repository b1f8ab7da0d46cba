//! Forwarding table: an immutable snapshot of conferences and endpoints, indexed for the packet
//! path. The control path keeps a working copy, changes it in place (each change touches one
//! conference), and publishes a [`Table::snapshot`] per change. The bridge-wide indices are
//! copy-on-write ([`super::cow`]): a snapshot shares their shards and chunks, and a change copies
//! only the shard or chunk it touches, so publishing costs O(shards) however many endpoints the
//! bridge has. Workers swap snapshots in between batches.

use std::net::SocketAddr;
use std::sync::Arc;

use rustc_hash::FxHashMap;
use socket2::SockAddr;

use super::cow::{CowMap, CowVec};
use crate::srtp::Session;

/// Bridge-wide identity of an endpoint, stable across table generations.
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
}

impl Peer {
    fn new(addr: SocketAddr, srtp: Option<Arc<Session>>) -> Self {
        Self {
            addr,
            raw: SockAddr::from(addr),
            srtp,
        }
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
}

/// One conference: the addresses of its endpoints and who sends which SSRC.
#[derive(Debug, Clone, Default)]
pub(crate) struct Conference {
    pub peers: Vec<Peer>,
    /// Endpoint index of each peer.
    pub peer_owner: Vec<u32>,
    /// Every endpoint of the conference, with or without an address.
    pub members: Vec<u32>,
    pub ssrc_owner: FxHashMap<u32, u32>,
    /// Some peer receives SRTP: plain senders' packet indices must be tracked.
    pub srtp_out: bool,
}

/// An immutable forwarding table; see the module docs.
#[derive(Debug, Clone, Default)]
pub struct Table {
    generation: u64,
    pub(crate) by_addr: CowMap<SocketAddr, u32>,
    pub(crate) latch_by_ssrc: CowMap<u32, u32>,
    pub(crate) by_uid: CowMap<EndpointUid, u32>,
    endpoints: CowVec<Option<Arc<Endpoint>>>,
    /// Free endpoint slots (working copy only; snapshots leave them out).
    free_endpoints: Vec<u32>,
    conferences: CowVec<Option<Arc<Conference>>>,
    /// Free conference slots (working copy only).
    free_conferences: Vec<u32>,
}

/// Index of a conference in a [`Table`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConfIdx(u32);

impl Table {
    /// The generation this table was built for; workers acknowledge it once in force.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// A snapshot to publish as `generation`: shares every shard and chunk with this table, so
    /// it costs O(shards + chunks), not O(endpoints).
    pub fn snapshot(&self, generation: u64) -> Table {
        Table {
            generation,
            by_addr: self.by_addr.clone(),
            latch_by_ssrc: self.latch_by_ssrc.clone(),
            by_uid: self.by_uid.clone(),
            endpoints: self.endpoints.clone(),
            free_endpoints: Vec::new(),
            conferences: self.conferences.clone(),
            free_conferences: Vec::new(),
        }
    }

    /// Stamps the table with the generation it is published as.
    pub fn set_generation(&mut self, generation: u64) {
        self.generation = generation;
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
            .as_deref()
            .expect("live endpoint index")
    }

    /// Conference `i` (an index found on a live endpoint).
    #[inline]
    pub(crate) fn conf(&self, i: u32) -> &Conference {
        self.conferences[i as usize]
            .as_deref()
            .expect("live conference index")
    }

    fn conf_mut(&mut self, i: u32) -> &mut Conference {
        Arc::make_mut(
            self.conferences[i as usize]
                .as_mut()
                .expect("live conference"),
        )
    }

    fn ep_mut(&mut self, i: u32) -> &mut Endpoint {
        Arc::make_mut(self.endpoints[i as usize].as_mut().expect("live endpoint"))
    }

    /// Adds an empty conference.
    pub fn add_conference(&mut self) -> ConfIdx {
        let c = Some(Arc::new(Conference::default()));
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

    /// Adds an endpoint to `conf`. Without `addr` it waits to be latched by one of its `ssrcs`.
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
        let (srtp_in, srtp_out) = srtp.unzip();
        let ep = Some(Arc::new(Endpoint {
            uid,
            conf: conf.0,
            ssrcs: ssrcs.into(),
            slot: None,
            srtp_in,
            srtp_out,
        }));
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
        c.members.push(idx);
        for &s in ssrcs {
            c.ssrc_owner.insert(s, idx);
        }
        match addr {
            Some(a) => self.set_addr(idx, a),
            None => {
                for &s in ssrcs {
                    self.latch_by_ssrc.insert(s, idx);
                }
            }
        }
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
        let (conf, ssrcs, out) = (ep.conf, ep.ssrcs.clone(), ep.srtp_out.clone());
        for s in ssrcs.iter() {
            if self.latch_by_ssrc.get(s) == Some(&idx) {
                self.latch_by_ssrc.remove(s);
            }
        }
        self.by_addr.insert(addr, idx);
        let c = self.conf_mut(conf);
        c.srtp_out |= out.is_some();
        c.peers.push(Peer::new(addr, out));
        c.peer_owner.push(idx);
        let slot = c.peers.len() as u32 - 1;
        self.ep_mut(idx).slot = Some(slot);
    }

    /// Removes endpoint `uid`; false if unknown.
    pub fn remove_endpoint(&mut self, uid: EndpointUid) -> bool {
        let Some(idx) = self.by_uid.remove(&uid) else {
            return false;
        };
        let ep = self.endpoints[idx as usize].take().expect("live endpoint");
        self.free_endpoints.push(idx);
        for s in ep.ssrcs.iter() {
            if self.latch_by_ssrc.get(s) == Some(&idx) {
                self.latch_by_ssrc.remove(s);
            }
        }
        let c = self.conf_mut(ep.conf);
        c.members.retain(|&m| m != idx);
        for s in ep.ssrcs.iter() {
            if c.ssrc_owner.get(s) == Some(&idx) {
                c.ssrc_owner.remove(s);
            }
        }
        let Some(slot) = ep.slot else { return true };
        let slot = slot as usize;
        let gone = c.peers.swap_remove(slot);
        c.peer_owner.swap_remove(slot);
        c.srtp_out = c.peers.iter().any(|p| p.srtp.is_some());
        let moved = c.peer_owner.get(slot).copied();
        self.by_addr.remove(&gone.addr);
        if let Some(m) = moved {
            self.ep_mut(m).slot = Some(slot as u32);
        }
        true
    }

    /// Removes a conference and all its endpoints.
    pub fn remove_conference(&mut self, conf: ConfIdx) {
        let members = self.conf(conf.0).members.clone();
        for m in members {
            let uid = self.ep(m).uid;
            self.remove_endpoint(uid);
        }
        self.conferences[conf.0 as usize] = None;
        self.free_conferences.push(conf.0);
    }
}

/// Builds a [`Table`] from scratch (tests, benches); the control path changes one in place.
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
        for (&uid, &i) in t.by_uid.iter() {
            let e = t.ep(i);
            assert_eq!(e.uid, uid);
            let c = t.conf(e.conf);
            assert!(c.members.contains(&i));
            match e.slot {
                Some(s) => {
                    assert_eq!(c.peer_owner[s as usize], i);
                    assert_eq!(t.by_addr[&c.peers[s as usize].addr], i);
                }
                None => assert!(e.ssrcs.iter().all(|s| t.latch_by_ssrc[s] == i)),
            }
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
        t.remove_conference(c0);
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
}
