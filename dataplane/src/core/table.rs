//! Forwarding table: an immutable snapshot of conferences and endpoints, indexed for the packet
//! path. The control path builds a new one per change; workers swap it in between batches.

use std::net::SocketAddr;
use std::sync::Arc;

use rustc_hash::FxHashMap;
use socket2::SockAddr;

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
}

/// One conference: the addresses of its endpoints and who sends which SSRC.
#[derive(Debug, Clone, Default)]
pub(crate) struct Conference {
    pub peers: Vec<Peer>,
    pub ssrc_owner: FxHashMap<u32, u32>,
    /// Some peer receives SRTP: plain senders' packet indices must be tracked.
    pub srtp_out: bool,
}

/// An immutable forwarding table; see the module docs.
#[derive(Debug, Clone, Default)]
pub struct Table {
    generation: u64,
    pub(crate) by_addr: FxHashMap<SocketAddr, u32>,
    pub(crate) latch_by_ssrc: FxHashMap<u32, u32>,
    pub(crate) by_uid: FxHashMap<EndpointUid, u32>,
    pub(crate) endpoints: Vec<Endpoint>,
    pub(crate) conferences: Vec<Conference>,
}

impl Table {
    /// The generation this table was built for; workers acknowledge it once in force.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Number of endpoints in the table.
    pub fn endpoints(&self) -> usize {
        self.endpoints.len()
    }
}

/// Index of a conference inside a [`TableBuilder`].
#[derive(Debug, Clone, Copy)]
pub struct ConfIdx(u32);

/// Builds a [`Table`]. The caller (the control path) has already validated uniqueness of
/// addresses and SSRCs; the builder only indexes.
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
        self.table.conferences.push(Conference::default());
        ConfIdx(self.table.conferences.len() as u32 - 1)
    }

    /// Adds an endpoint to `conf`. Without `addr` it waits to be latched by one of its `ssrcs`.
    /// `srtp` holds its (inbound, outbound) sessions when it uses SRTP.
    pub fn endpoint(
        &mut self,
        conf: ConfIdx,
        uid: EndpointUid,
        ssrcs: &[u32],
        addr: Option<SocketAddr>,
        srtp: Option<(Arc<Session>, Arc<Session>)>,
    ) {
        let t = &mut self.table;
        let idx = t.endpoints.len() as u32;
        let c = &mut t.conferences[conf.0 as usize];
        let (srtp_in, srtp_out) = srtp.unzip();
        c.srtp_out |= srtp_out.is_some();
        let slot = addr.map(|a| {
            c.peers.push(Peer::new(a, srtp_out));
            t.by_addr.insert(a, idx);
            c.peers.len() as u32 - 1
        });
        for &s in ssrcs {
            c.ssrc_owner.insert(s, idx);
            if addr.is_none() {
                t.latch_by_ssrc.insert(s, idx);
            }
        }
        t.by_uid.insert(uid, idx);
        t.endpoints.push(Endpoint {
            uid,
            conf: conf.0,
            ssrcs: ssrcs.into(),
            slot,
            srtp_in,
        });
    }

    /// Finishes the table, stamped with `generation`.
    pub fn build(mut self, generation: u64) -> Table {
        self.table.generation = generation;
        self.table
    }
}
