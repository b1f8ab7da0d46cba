//! The focus, sans-IO: it owns the conference placements and its view of the bridge fleet, and
//! decides. Time comes in as an argument, randomness (SRTP keys) through an injected source; it
//! owns no socket and spawns nothing, so every rule is unit-tested in virtual time.
//!
//! An operation ([`Focus::join`], [`Focus::leave`], a failover move from [`Focus::tick`]) returns
//! a [`Plan`]: the bridge calls to make, in order. The executor runs them (with a deadline each,
//! stopping at the first failure) and hands the results to [`Focus::complete`], which commits the
//! placement change or rolls it back, possibly with a cleanup plan that removes exactly what the
//! failed operation added. Operations on one conference are serialized (a second one gets
//! [`FocusError::Busy`] until the first completes); different conferences proceed in parallel.
//! Committed changes come out as [`Change`]s for the store and [`Announcement`]s for watchers.

mod broadcast;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use crate::bridges::{
    Bridge, BridgeId, Fleet, Health, NoBridge, RegionThenLeastStress, Registration, Strategy,
};
use crate::store::{
    Change, DrainRecord, LinkKeys, Participant, Placement, Role, Snapshot, SrtpKeys, link_key,
};

pub use broadcast::StreamView;

/// Announcements name the participants of conferences up to this size; a bigger one (a
/// broadcast may have millions of viewers) is announced with counts per bridge and its
/// publisher only, so announcing costs a walk over its bridges, not its viewers.
pub const LISTED: usize = 1000;

/// Identifies an operation in flight.
pub type OpId = u64;

/// Longest conference, participant or bridge id, in bytes.
pub const MAX_ID_LEN: usize = 256;
/// Most SSRCs one participant may declare.
pub const MAX_SSRCS: usize = 64;

/// One call to a bridge's API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    /// CreateConference; an existing conference counts as done ([`Applied::AlreadyThere`]).
    Create {
        /// Conference.
        conference: String,
    },
    /// AddEndpoint. With `if_absent`, an existing endpoint counts as done (re-programming a
    /// bridge that may still hold it); without, it is a failure.
    Add {
        /// Conference.
        conference: String,
        /// Endpoint (participant) id.
        endpoint: String,
        /// What to program.
        participant: Participant,
        /// Whether an existing endpoint counts as done.
        if_absent: bool,
    },
    /// RemoveEndpoint; a missing endpoint counts as done.
    Remove {
        /// Conference.
        conference: String,
        /// Endpoint id.
        endpoint: String,
    },
    /// DeleteConference; a missing conference counts as done.
    Delete {
        /// Conference.
        conference: String,
    },
    /// AddRelay to another bridge of the conference (Octo); an existing relay counts as done.
    AddRelay {
        /// Conference.
        conference: String,
        /// The remote bridge's id (the relay's id).
        relay_id: String,
        /// The remote bridge's media address.
        remote_addr: String,
        /// The conference's link number.
        link: u32,
        /// Key this bridge seals with.
        tx_key: Vec<u8>,
        /// Key the remote bridge seals with.
        rx_key: Vec<u8>,
        /// The remote bridge pulls a broadcast from this one (it is downstream in the pull tree).
        downstream: bool,
    },
    /// RemoveRelay; a missing relay counts as done.
    RemoveRelay {
        /// Conference.
        conference: String,
        /// The remote bridge's id.
        relay_id: String,
    },
}

/// A call addressed to one bridge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeCall {
    /// The bridge.
    pub bridge: BridgeId,
    /// Its API address when the plan was made.
    pub api_addr: String,
    /// What to do.
    pub call: Call,
}

/// Calls to make for one operation, in order; the executor stops at the first failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The operation to complete with the results.
    pub op: OpId,
    /// The calls.
    pub calls: Vec<BridgeCall>,
}

/// A call that did what was asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// Done by this call.
    Done,
    /// Already the case (see [`Call`] for which calls accept this).
    AlreadyThere,
}

/// A call that failed, as the executor saw it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// The bridge refused the request (INVALID_ARGUMENT).
    #[error("{0}")]
    Invalid(String),
    /// ALREADY_EXISTS where that is a conflict.
    #[error("{0}")]
    Exists(String),
    /// NOT_FOUND where that is a failure.
    #[error("{0}")]
    NotFound(String),
    /// A capacity limit of the bridge (RESOURCE_EXHAUSTED).
    #[error("{0}")]
    Full(String),
    /// The bridge could not be reached, or failed internally.
    #[error("unreachable: {0}")]
    Unavailable(String),
    /// No answer within the deadline.
    #[error("no answer within {deadline_ms} ms")]
    Timeout {
        /// The deadline, ms.
        deadline_ms: u64,
    },
}

impl CallError {
    /// Whether the failure says something about the bridge (rather than about the request).
    fn blames_bridge(&self) -> bool {
        matches!(self, Self::Unavailable(_) | Self::Timeout { .. })
    }
}

/// What the executor reports for a plan: one result per call it made, in order.
pub type CallResult = Result<Applied, CallError>;

/// Why an operation was refused or failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FocusError {
    /// A request field is invalid (INVALID_ARGUMENT).
    #[error("{field}: {why}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// What is wrong.
        why: String,
    },
    /// ALREADY_EXISTS.
    #[error("{0}")]
    Exists(String),
    /// NOT_FOUND.
    #[error("{0}")]
    NotFound(String),
    /// Another operation on the conference is in flight; retry when it completes.
    #[error("conference {0:?} has an operation in flight")]
    Busy(String),
    /// No bridge can take it (UNAVAILABLE).
    #[error("no bridge available: {0}")]
    NoBridge(#[from] NoBridge),
    /// The conference's bridge is not answering (UNAVAILABLE).
    #[error(
        "bridge {bridge} is {state} ({why}); conference {conference:?} will be moved, retry shortly"
    )]
    BridgeUnavailable {
        /// Conference.
        conference: String,
        /// Its bridge.
        bridge: BridgeId,
        /// "suspect" or "down".
        state: &'static str,
        /// Why.
        why: String,
    },
    /// A bridge call failed (mapped from the bridge's status; timeouts name the deadline).
    #[error("bridge {bridge}: {error}")]
    Bridge {
        /// The bridge.
        bridge: BridgeId,
        /// What happened.
        error: CallError,
    },
}

/// SRTP as a participant offers it in a Join: its profile and its own key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SrtpOffer {
    /// Profile name.
    pub profile: String,
    /// Master key + salt the participant protects with.
    pub endpoint_key: Vec<u8>,
    /// Must be empty: the focus chooses the bridge's key.
    pub bridge_key: Vec<u8>,
}

/// A Join.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinRequest {
    /// Conference.
    pub conference: String,
    /// Participant id.
    pub participant_id: String,
    /// Preferred region.
    pub region: String,
    /// SSRCs it sends.
    pub ssrcs: Vec<u32>,
    /// "ip:port" or empty to latch.
    pub remote_addr: String,
    /// SRTP offer, or plain.
    pub srtp: Option<SrtpOffer>,
    /// Participant of a conference, or publisher or viewer of a broadcast.
    pub role: Role,
}

/// What a committed operation produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Done {
    /// A participant is in.
    Joined {
        /// Its bridge.
        bridge: BridgeId,
        /// Where it sends media.
        media_addr: String,
        /// Its SRTP keys (with the bridge's key the focus generated).
        srtp: Option<SrtpKeys>,
    },
    /// A participant is out.
    Left,
    /// A conference moved.
    Moved {
        /// Old bridge.
        from: BridgeId,
        /// New bridge.
        to: BridgeId,
    },
    /// A cleanup ran (its failures are only logged).
    CleanedUp,
}

/// The result of [`Focus::complete`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completion {
    /// Committed, or why not.
    pub result: Result<Done, FocusError>,
    /// Calls that undo what a failed operation added, or tidy an old bridge after a move.
    pub cleanup: Option<Plan>,
}

/// A placement to announce on `WatchConference`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announcement {
    /// Conference.
    pub conference: String,
    /// Its bridge.
    pub bridge: BridgeId,
    /// The bridge's media address.
    pub media_addr: String,
    /// Participant ids (beyond [`LISTED`] participants, only a broadcast's publisher).
    pub participants: Vec<String>,
    /// Participants in all.
    pub participant_count: usize,
    /// Every bridge of the conference: id, media address, its participants (none named beyond
    /// [`LISTED`]) and how many it has.
    pub bridges: Vec<(BridgeId, String, Vec<String>, usize)>,
    /// "current", "placed", "joined", "left", "grown", "failover", "drained", "ended"; for a
    /// broadcast also "published", "unpublished" and "pulled" (its pull tree changed).
    pub reason: &'static str,
    /// A broadcast's publisher and pull tree (`None` for a conference).
    pub stream: Option<StreamView>,
}

#[derive(Debug)]
enum Op {
    Join {
        conference: String,
        participant_id: String,
        participant: Participant,
        bridge: BridgeId,
        /// The conference is new.
        created: bool,
        /// The conference grows onto `bridge` (created there, relays to `links`' bridges).
        grown: bool,
        link: u32,
        links: Vec<(String, LinkKeys, BridgeId)>,
    },
    Leave {
        conference: String,
        participant_id: String,
        bridge: BridgeId,
    },
    Move {
        conference: String,
        /// Bridges whose participants move.
        from: Vec<BridgeId>,
        to: BridgeId,
        links: Vec<(String, LinkKeys, BridgeId)>,
        /// "failover" (off a down bridge), "drained" (off a draining one) or "current" (back
        /// onto a bridge that registered again).
        reason: &'static str,
    },
    Cleanup,
    /// An operation on a broadcast.
    Stream(Box<broadcast::StreamOp>),
}

/// Settings of the focus.
#[derive(Debug, Clone)]
pub struct FocusConfig {
    /// Interval bridges report at, ms.
    pub report_interval_ms: u64,
    /// Reports a bridge may miss before it is down.
    pub missed_reports: u64,
    /// Failed health probes in a row before a bridge is down.
    pub probe_failures_down: u32,
    /// Packets/s one participant adds until the next report shows it.
    pub per_participant_pps: f64,
    /// Participants of one conference a bridge takes before the conference grows onto another
    /// bridge (Octo).
    pub max_per_bridge: usize,
    /// Stress at which a bridge counts as full for new participants.
    pub stress_threshold: f64,
    /// How long a draining bridge keeps its participants before they are moved, ms.
    pub drain_grace_ms: u64,
    /// Edges one bridge (the origin, or an edge for the next tier) feeds per broadcast.
    pub stream_fanout: usize,
    /// Viewers of one broadcast an edge takes before the next viewer goes to another edge.
    pub max_viewers_per_edge: usize,
}

/// Streams `group` participants add to a bridge holding `on` of their conference: each sends
/// one stream in, gets every other local one, and every local one gets theirs
/// (`(on + group)^2 - on^2`).
fn streams(on: usize, group: usize) -> u32 {
    let (a, b) = (on as u64, (on + group) as u64);
    (b * b - a * a).min(u64::from(u32::MAX)) as u32
}

/// Relay key length (AES-128-GCM).
const LINK_KEY_LEN: usize = 16;

/// Fills a buffer with secret random bytes (SRTP keys).
pub type KeySource = Box<dyn FnMut(&mut [u8]) + Send>;

/// The focus: placements, fleet, operations in flight.
pub struct Focus {
    fleet: Fleet,
    conferences: BTreeMap<String, Placement>,
    ops: HashMap<OpId, Op>,
    busy: HashSet<String>,
    next_op: OpId,
    strategy: Box<dyn Strategy>,
    keys: KeySource,
    changes: Vec<Change>,
    announcements: Vec<Announcement>,
    /// Placements on bridges the fleet does not know yet (after a restart) wait until then.
    grace_until_ms: u64,
    failovers: u64,
    /// Participants moved off draining bridges so far.
    drain_moves: u64,
    drain_grace_ms: u64,
    /// Drains are retried from this time on (see [`Focus::tick`]).
    next_drain_scan_ms: u64,
    max_per_bridge: usize,
    stress_threshold: f64,
    /// Next relay link number for a new conference.
    next_link: u32,
    /// Bridges that went down since the last [`Focus::take_downed`].
    downed: Vec<BridgeId>,
    /// Bridges the restored placements use that have not registered since the restart.
    awaiting: HashSet<BridgeId>,
    /// Bridge -> conference -> its participants there: what a failover or a drain touches,
    /// without scanning every conference.
    index: HashMap<BridgeId, HashMap<String, usize>>,
    /// Broadcasts among the conferences (their relay-only edges are in no index).
    broadcasts: BTreeSet<String>,
    stream_fanout: usize,
    max_viewers_per_edge: usize,
    /// Drains asked through [`Focus::drain`], persisted (see [`DrainRecord`]).
    drains: BTreeMap<BridgeId, DrainRecord>,
    /// Changes taken by [`Focus::take_changes`] and not put back.
    taken: u64,
}

impl std::fmt::Debug for Focus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Focus")
            .field("conferences", &self.conferences.len())
            .field("ops", &self.ops.len())
            .finish()
    }
}

fn check_id(field: &'static str, v: &str) -> Result<(), FocusError> {
    if v.is_empty() {
        return Err(FocusError::Invalid {
            field,
            why: "must not be empty".into(),
        });
    }
    if v.len() > MAX_ID_LEN {
        return Err(FocusError::Invalid {
            field,
            why: format!("{} bytes, longer than the limit of {MAX_ID_LEN}", v.len()),
        });
    }
    Ok(())
}

impl Focus {
    /// A focus over the placements of `restored` (from the store) at `now_ms`; placements on
    /// bridges that do not register within `missed_reports` intervals are moved.
    pub fn new(cfg: &FocusConfig, restored: Snapshot, keys: KeySource, now_ms: u64) -> Self {
        let mut fleet = Fleet::new(
            cfg.report_interval_ms,
            cfg.missed_reports,
            cfg.per_participant_pps,
        );
        fleet.probe_failures_down = cfg.probe_failures_down;
        let drains = restored.drains;
        let mut conferences = restored.placements;
        // State from before Octo: every participant is on the placement's bridge.
        for p in conferences.values_mut() {
            let b = p.bridge.clone();
            for part in p.participants.values_mut() {
                if part.bridge.is_empty() {
                    part.bridge = b.clone();
                }
            }
        }
        let next_link = conferences.values().map(|p| p.link).max().unwrap_or(0) + 1;
        let awaiting = conferences
            .values()
            .flat_map(|p| p.bridges().into_iter().map(String::from))
            .collect();
        let mut index: HashMap<BridgeId, HashMap<String, usize>> = HashMap::new();
        for (c, p) in &conferences {
            for x in p.participants.values() {
                *index
                    .entry(x.bridge.clone())
                    .or_default()
                    .entry(c.clone())
                    .or_default() += 1;
            }
        }
        let broadcasts = conferences
            .iter()
            .filter(|(_, p)| p.broadcast.is_some())
            .map(|(c, _)| c.clone())
            .collect();
        Self {
            fleet,
            broadcasts,
            stream_fanout: cfg.stream_fanout.max(1),
            max_viewers_per_edge: cfg.max_viewers_per_edge.max(1),
            conferences,
            ops: HashMap::new(),
            busy: HashSet::new(),
            next_op: 1,
            strategy: Box::new(RegionThenLeastStress),
            keys,
            changes: Vec::new(),
            announcements: Vec::new(),
            grace_until_ms: now_ms + cfg.report_interval_ms * cfg.missed_reports,
            failovers: 0,
            drain_moves: 0,
            drain_grace_ms: cfg.drain_grace_ms,
            next_drain_scan_ms: 0,
            max_per_bridge: cfg.max_per_bridge.max(1),
            stress_threshold: cfg.stress_threshold,
            next_link,
            downed: Vec::new(),
            awaiting,
            index,
            drains,
            taken: 0,
        }
    }

    /// Counts `delta` participants of `conference` on `bridge` in the index.
    fn index(&mut self, bridge: &str, conference: &str, delta: isize) {
        let confs = self.index.entry(bridge.to_string()).or_default();
        let n = confs.entry(conference.to_string()).or_default();
        *n = n.saturating_add_signed(delta);
        if *n == 0 {
            confs.remove(conference);
            if confs.is_empty() {
                self.index.remove(bridge);
            }
        }
    }

    /// The fleet as the focus sees it.
    pub fn fleet(&self) -> &Fleet {
        &self.fleet
    }

    /// Placed conferences.
    pub fn conferences(&self) -> &BTreeMap<String, Placement> {
        &self.conferences
    }

    /// Conferences moved off failed bridges so far.
    pub fn failovers(&self) -> u64 {
        self.failovers
    }

    /// Participants moved off draining bridges so far.
    pub fn drain_moves(&self) -> u64 {
        self.drain_moves
    }

    /// Conferences and participants the focus placed on `bridge`.
    pub fn load_of(&self, bridge: &str) -> (usize, usize) {
        self.index
            .get(bridge)
            .map_or((0, 0), |c| (c.len(), c.values().sum()))
    }

    /// Participants per bridge (bridges without any are absent).
    pub fn participants_per_bridge(&self) -> HashMap<&str, usize> {
        self.index
            .iter()
            .map(|(b, confs)| (b.as_str(), confs.values().sum()))
            .collect()
    }

    /// Starts draining `bridge` at `now_ms`: it takes no new conferences or participants, and
    /// after the drain grace the participants still on it are moved.
    pub fn drain(&mut self, bridge: &str, now_ms: u64) -> Result<(), FocusError> {
        check_id("bridge_id", bridge)?;
        if !self.fleet.drain(bridge, now_ms) {
            return Err(FocusError::NotFound(format!(
                "bridge_id: {bridge:?} is not registered"
            )));
        }
        let b = self.fleet.get(bridge).expect("just drained");
        let record = DrainRecord {
            since_ms: b.drain_since_ms,
            instance: b.instance.clone(),
        };
        if self.drains.get(bridge) != Some(&record) {
            // Kept in the store: a restarted control plane keeps draining it.
            self.drains.insert(bridge.into(), record.clone());
            self.changes.push(Change::Drained {
                bridge: bridge.into(),
                drain: record,
            });
        }
        tracing::info!(%bridge, grace_ms = self.drain_grace_ms, "bridge draining");
        Ok(())
    }

    /// Draining (or down) bridges that no participant uses any more and no operation touches:
    /// they can be stopped. The caller removes them with [`Focus::forget`].
    pub fn drained(&self) -> Vec<BridgeId> {
        let candidates: Vec<&Bridge> = self
            .fleet
            .iter()
            .filter(|b| b.draining || b.health == Health::Down)
            .collect();
        if candidates.is_empty() {
            return Vec::new();
        }
        let busy: HashSet<&str> = self
            .busy
            .iter()
            .filter_map(|c| self.conferences.get(c))
            .flat_map(|p| p.bridges())
            .collect();
        let relaying = self.tree_nodes();
        candidates
            .into_iter()
            .filter(|b| !self.index.contains_key(&b.id) && !busy.contains(b.id.as_str()))
            .filter(|b| !relaying.contains(b.id.as_str()))
            .filter(|b| !self.awaiting.contains(&b.id))
            .map(|b| b.id.clone())
            .collect()
    }

    /// Forgets a bridge that was stopped (drained, or down and empty).
    pub fn forget(&mut self, bridge: &str) -> bool {
        if self.drains.remove(bridge).is_some() {
            self.changes.push(Change::Undrained {
                bridge: bridge.into(),
            });
        }
        self.fleet.remove(bridge).is_some()
    }

    /// Bridges drained through [`Focus::drain`] (kept across restarts of the control plane).
    pub fn drains(&self) -> &BTreeMap<BridgeId, DrainRecord> {
        &self.drains
    }

    /// Operations in flight.
    pub fn in_flight(&self) -> usize {
        self.ops.len()
    }

    /// Takes the changes committed since the last call, for the store.
    pub fn take_changes(&mut self) -> Vec<Change> {
        self.taken += self.changes.len() as u64;
        std::mem::take(&mut self.changes)
    }

    /// Puts back changes the store could not persist, ahead of newer ones.
    pub fn restore_changes(&mut self, mut older: Vec<Change>) {
        self.taken -= older.len() as u64;
        older.append(&mut self.changes);
        self.changes = older;
    }

    /// Changes recorded so far, counted from the focus's start: a commit is durable once the
    /// store has persisted the first `recorded()` changes (taken in order).
    pub fn recorded(&self) -> u64 {
        self.taken + self.changes.len() as u64
    }

    /// Records a change made beside the focus (a sticky route) for the store.
    pub fn record(&mut self, c: Change) {
        self.changes.push(c);
    }

    /// Takes the placements to announce since the last call.
    pub fn take_announcements(&mut self) -> Vec<Announcement> {
        std::mem::take(&mut self.announcements)
    }

    /// The placement of `conference` as the API shows it.
    pub fn placement(&self, conference: &str, reason: &'static str) -> Option<Announcement> {
        self.conferences
            .get(conference)
            .map(|p| self.announcement(conference, p, reason))
    }

    fn announcement(&self, conference: &str, p: &Placement, reason: &'static str) -> Announcement {
        let named = p.participants.len() <= LISTED;
        let mut on: BTreeMap<&str, (Vec<String>, usize)> = BTreeMap::new();
        if named {
            for b in p.bridges() {
                on.insert(b, (Vec::new(), 0));
            }
            for (id, x) in &p.participants {
                let (who, n) = on.entry(x.bridge.as_str()).or_default();
                who.push(id.clone());
                *n += 1;
            }
        } else {
            // Counts from the index, bridges from the index and the tree.
            for (b, confs) in &self.index {
                if let Some(&n) = confs.get(conference) {
                    on.insert(b.as_str(), (Vec::new(), n));
                }
            }
            if let Some(t) = p.tree() {
                for b in std::iter::once(t.origin()).chain(t.edges().map(|(e, _)| e)) {
                    on.entry(b).or_default();
                }
            }
        }
        let publisher = p.broadcast.as_ref().and_then(|b| b.publisher.clone());
        Announcement {
            conference: conference.into(),
            bridge: p.bridge.clone(),
            media_addr: self.media_addr(&p.bridge),
            participants: if named {
                p.participants.keys().cloned().collect()
            } else {
                publisher.into_iter().collect()
            },
            participant_count: p.participants.len(),
            bridges: on
                .into_iter()
                .map(|(b, (who, n))| (b.to_string(), self.media_addr(b), who, n))
                .collect(),
            reason,
            stream: self.stream_view(conference, p),
        }
    }

    /// Fresh keys for a relay link.
    fn link_keys(&mut self) -> LinkKeys {
        let mut a = vec![0u8; LINK_KEY_LEN];
        let mut b = vec![0u8; LINK_KEY_LEN];
        (self.keys)(&mut a);
        (self.keys)(&mut b);
        LinkKeys {
            first_tx: a,
            second_tx: b,
        }
    }

    /// The two AddRelay calls that join bridges `a` and `b` of `conference` with `keys`.
    fn relay_calls(
        &self,
        conference: &str,
        link: u32,
        a: &str,
        b: &str,
        keys: &LinkKeys,
    ) -> [BridgeCall; 2] {
        let (first_tx, second_tx) = (&keys.first_tx, &keys.second_tx);
        let tx = |x: &str| if x <= a.min(b) { first_tx } else { second_tx };
        let add = |on: &str, to: &str| {
            self.call(
                on,
                Call::AddRelay {
                    conference: conference.into(),
                    relay_id: to.into(),
                    remote_addr: self.media_addr(to),
                    link,
                    tx_key: tx(on).clone(),
                    rx_key: tx(to).clone(),
                    downstream: false,
                },
            )
        };
        [add(a, b), add(b, a)]
    }

    /// The calls that take `bridge` out of `conference`: delete it there, and drop the relays to
    /// it on `others`.
    fn withdraw<'a>(
        &self,
        conference: &str,
        bridge: &str,
        others: impl IntoIterator<Item = &'a str>,
    ) -> Vec<BridgeCall> {
        let mut calls = vec![self.call(
            bridge,
            Call::Delete {
                conference: conference.into(),
            },
        )];
        for o in others {
            calls.push(self.call(
                o,
                Call::RemoveRelay {
                    conference: conference.into(),
                    relay_id: bridge.into(),
                },
            ));
        }
        calls
    }

    /// Where `group` new participants of `conference` (hosted by `hosting`) from `region` go,
    /// never to `exclude`: a bridge of the conference in its region with room; else the best
    /// bridge of its region (the conference grows); else a bridge of the conference with room;
    /// else (unless `must_fit`) the usual rules. Room means the streams the group adds keep the
    /// bridge under the stress threshold. Counts the placement against the bridge.
    fn choose(
        &mut self,
        conference: &str,
        region: &str,
        hosting: &[BridgeId],
        exclude: &[&str],
        group: usize,
        must_fit: bool,
    ) -> Result<BridgeId, NoBridge> {
        let per = self.fleet.per_participant_pps;
        // This conference's participants per bridge, counted once.
        let mut counts: Vec<(&str, usize)> = Vec::with_capacity(hosting.len());
        if let Some(p) = self.conferences.get(conference) {
            for x in p.participants.values() {
                match counts.iter_mut().find(|(b, _)| *b == x.bridge) {
                    Some((_, n)) => *n += 1,
                    None => counts.push((x.bridge.as_str(), 1)),
                }
            }
        }
        let on = |b: &str| counts.iter().find(|(x, _)| *x == b).map_or(0, |(_, n)| *n);
        let can_take = |b: &Bridge| {
            b.health == Health::Up
                && !b.draining
                && !exclude.contains(&b.id.as_str())
                && on(&b.id) + group <= self.max_per_bridge
                && crate::bridges::corrected_stress(b, per)
                    + streams(on(&b.id), group) as f64 * per / b.capacity.max(1.0)
                    < self.stress_threshold
        };
        let least = |a: &&Bridge, b: &&Bridge| {
            crate::bridges::corrected_stress(a, per)
                .total_cmp(&crate::bridges::corrected_stress(b, per))
                .then_with(|| a.id.cmp(&b.id))
        };
        // The conference's own bridges are few: look them up instead of scanning the fleet.
        let among_hosts = |f: &dyn Fn(&Bridge) -> bool| {
            hosting
                .iter()
                .filter_map(|h| self.fleet.get(h))
                .filter(|b| can_take(b) && f(b))
                .min_by(least)
                .map(|b| b.id.clone())
        };
        let chosen = among_hosts(&|b| b.region == region)
            .or_else(|| {
                self.fleet
                    .iter()
                    .filter(|b| b.region == region && !hosting.contains(&b.id) && can_take(b))
                    .min_by(least)
                    .map(|b| b.id.clone())
            })
            .or_else(|| among_hosts(&|_| true))
            .or_else(|| {
                // A drain must fit, but any region will do.
                must_fit
                    .then(|| self.fleet.iter().filter(|b| can_take(b)).min_by(least))
                    .flatten()
                    .map(|b| b.id.clone())
            });
        match chosen {
            Some(id) => {
                let n = streams(on(&id), group);
                self.fleet.placed(&id, n);
                Ok(id)
            }
            None if must_fit => Err(NoBridge::AllOverloaded(
                self.fleet.iter().filter(|b| can_take(b)).count(),
            )),
            None => self.fleet.select(self.strategy.as_ref(), region, exclude),
        }
    }

    fn media_addr(&self, bridge: &str) -> String {
        self.fleet
            .get(bridge)
            .map(|b| b.media_addr.clone())
            .unwrap_or_default()
    }

    fn call(&self, bridge: &str, call: Call) -> BridgeCall {
        BridgeCall {
            bridge: bridge.into(),
            api_addr: self
                .fleet
                .get(bridge)
                .map(|b| b.api_addr.clone())
                .unwrap_or_default(),
            call,
        }
    }

    fn start(&mut self, conference: Option<&str>, op: Op, calls: Vec<BridgeCall>) -> Plan {
        let id = self.next_op;
        self.next_op += 1;
        if let Some(c) = conference {
            self.busy.insert(c.to_string());
        }
        self.ops.insert(id, op);
        Plan { op: id, calls }
    }

    fn cleanup(&mut self, calls: Vec<BridgeCall>) -> Option<Plan> {
        (!calls.is_empty()).then(|| self.start(None, Op::Cleanup, calls))
    }

    fn srtp_keys(&mut self, offer: &SrtpOffer) -> Result<SrtpKeys, FocusError> {
        let want = ringbridge_proto::srtp::master_len(&offer.profile).ok_or_else(|| {
            FocusError::Invalid {
                field: "srtp.profile",
                why: format!(
                    "{:?} is not one of {}",
                    offer.profile,
                    ringbridge_proto::srtp::PROFILES.map(|p| p.0).join(", ")
                ),
            }
        })?;
        if offer.endpoint_key.len() != want {
            return Err(FocusError::Invalid {
                field: "srtp.endpoint_key",
                why: format!(
                    "{} needs {want} bytes of master key + salt, got {}",
                    offer.profile,
                    offer.endpoint_key.len()
                ),
            });
        }
        if !offer.bridge_key.is_empty() {
            return Err(FocusError::Invalid {
                field: "srtp.bridge_key",
                why: "must be empty: the focus generates the bridge's key".into(),
            });
        }
        let mut bridge_key = vec![0u8; want];
        (self.keys)(&mut bridge_key);
        Ok(SrtpKeys {
            profile: offer.profile.clone(),
            endpoint_key: offer.endpoint_key.clone(),
            bridge_key,
        })
    }

    /// Plans a Join at `now_ms`: onto the conference's bridge, or (first join) onto a bridge
    /// chosen by region and load, created there.
    pub fn join(&mut self, req: JoinRequest, _now_ms: u64) -> Result<Plan, FocusError> {
        check_id("conference", &req.conference)?;
        check_id("participant_id", &req.participant_id)?;
        if req.ssrcs.len() > MAX_SSRCS {
            return Err(FocusError::Invalid {
                field: "ssrcs",
                why: format!(
                    "{} SSRCs, more than the limit of {MAX_SSRCS}",
                    req.ssrcs.len()
                ),
            });
        }
        if req.region.len() > MAX_ID_LEN {
            return Err(FocusError::Invalid {
                field: "region",
                why: format!("longer than the limit of {MAX_ID_LEN} bytes"),
            });
        }
        if !req.remote_addr.is_empty() && req.remote_addr.parse::<std::net::SocketAddr>().is_err() {
            return Err(FocusError::Invalid {
                field: "remote_addr",
                why: "not an ip:port address".into(),
            });
        }
        if self.busy.contains(&req.conference) {
            return Err(FocusError::Busy(req.conference));
        }
        let placed = self.conferences.get(&req.conference);
        if placed.is_some_and(|p| p.participants.contains_key(&req.participant_id)) {
            return Err(FocusError::Exists(format!(
                "participant_id: already in conference {:?}",
                req.conference
            )));
        }
        let broadcast = placed.is_some_and(|p| p.broadcast.is_some());
        let srtp = match &req.srtp {
            Some(o) => Some(self.srtp_keys(o)?),
            None => None,
        };
        if broadcast || req.role != Role::Participant {
            let exists = self.conferences.contains_key(&req.conference);
            return self.join_broadcast(req, srtp, exists);
        }
        // A conference: its bridges (one walk over its participants).
        let existing = self.conferences.get(&req.conference).map(|p| {
            (
                p.bridges()
                    .into_iter()
                    .map(String::from)
                    .collect::<Vec<_>>(),
                p.link,
            )
        });
        let (hosting, link) = match existing {
            Some((hosting, link)) => {
                // A conference with a bridge that is not answering is being repaired first.
                for bridge in &hosting {
                    let b = self.fleet.get(bridge);
                    match b.map(|b| b.health) {
                        Some(Health::Up) => {}
                        h => {
                            return Err(FocusError::BridgeUnavailable {
                                conference: req.conference,
                                state: h.map_or("not registered", Health::name),
                                why: b.map(|b| b.why.clone()).unwrap_or_default(),
                                bridge: bridge.clone(),
                            });
                        }
                    }
                }
                (hosting, link)
            }
            None => {
                self.next_link = self.next_link.wrapping_add(1).max(1);
                (Vec::new(), self.next_link)
            }
        };
        let created = hosting.is_empty();
        let bridge = self.choose(&req.conference, &req.region, &hosting, &[], 1, false)?;
        let grown = !created && !hosting.contains(&bridge);
        let participant = Participant {
            region: req.region,
            ssrcs: req.ssrcs,
            remote_addr: req.remote_addr,
            srtp,
            bridge: bridge.clone(),
            role: Role::Participant,
        };
        let mut calls = Vec::with_capacity(2 + 2 * hosting.len());
        let mut links = Vec::new();
        if created || grown {
            calls.push(self.call(
                &bridge,
                Call::Create {
                    conference: req.conference.clone(),
                },
            ));
        }
        if grown {
            for h in &hosting {
                let keys = self.link_keys();
                calls.extend(self.relay_calls(&req.conference, link, &bridge, h, &keys));
                links.push((link_key(&bridge, h), keys, h.clone()));
            }
        }
        calls.push(self.call(
            &bridge,
            Call::Add {
                conference: req.conference.clone(),
                endpoint: req.participant_id.clone(),
                participant: participant.clone(),
                if_absent: false,
            },
        ));
        let conference = req.conference;
        Ok(self.start(
            Some(&conference.clone()),
            Op::Join {
                conference,
                participant_id: req.participant_id,
                participant,
                bridge,
                created,
                grown,
                link,
                links,
            },
            calls,
        ))
    }

    /// Plans a Leave; the conference ends with its last participant.
    pub fn leave(&mut self, conference: &str, participant_id: &str) -> Result<Plan, FocusError> {
        check_id("conference", conference)?;
        check_id("participant_id", participant_id)?;
        if self.busy.contains(conference) {
            return Err(FocusError::Busy(conference.into()));
        }
        let p = self
            .conferences
            .get(conference)
            .ok_or_else(|| FocusError::NotFound("conference: not found".into()))?;
        if !p.participants.contains_key(participant_id) {
            return Err(FocusError::NotFound(format!(
                "participant_id: not in conference {conference:?}"
            )));
        }
        if p.broadcast.is_some() {
            return Ok(self.leave_broadcast(conference, participant_id));
        }
        let bridge = p.participants[participant_id].bridge.clone();
        // The last participant of this bridge: the bridge leaves the conference (its relays go
        // on the other bridges).
        let bridge_empties = p.on(&bridge).count() == 1;
        let others = p.bridges_except(std::slice::from_ref(&bridge));
        // A bridge that is down gets no call: its state is gone or will be cleaned up.
        let up = |b: &str| self.fleet.get(b).is_some_and(|b| b.health != Health::Down);
        let mut calls = if bridge_empties {
            self.withdraw(
                conference,
                &bridge,
                others.iter().map(String::as_str).filter(|o| up(o)),
            )
        } else {
            vec![self.call(
                &bridge,
                Call::Remove {
                    conference: conference.into(),
                    endpoint: participant_id.into(),
                },
            )]
        };
        if !up(&bridge) {
            calls.retain(|c| c.bridge != bridge);
        }
        Ok(self.start(
            Some(conference),
            Op::Leave {
                conference: conference.into(),
                participant_id: participant_id.into(),
                bridge,
            },
            calls,
        ))
    }

    /// Registers (or re-registers) a bridge. A bridge id belongs to its live registration: the
    /// same id from another API address is refused until that bridge is down.
    ///
    /// What it holds depends on [`Registration`]: the same process again (same instance id)
    /// still holds its conferences and relay keys, and is left as it is unless it had been
    /// declared down. A restarted process holds nothing. Either way, a bridge programmed again
    /// gets every conference still placed on it, and every relay link it takes part in gets
    /// fresh keys on both sides (the peers' relays to it are replaced): a restarted process
    /// starts its relay sequences again, and a key must never seal one sequence twice.
    pub fn register(&mut self, b: Bridge, now_ms: u64) -> Result<Vec<Plan>, FocusError> {
        if let Some(old) = self.fleet.get(&b.id)
            && old.health != Health::Down
            && old.api_addr != b.api_addr
        {
            return Err(FocusError::Exists(format!(
                "bridge_id: already registered by a live bridge at {} (it must be down before another takes the id)",
                old.api_addr
            )));
        }
        let id = b.id.clone();
        let instance = b.instance.clone();
        let was_down = self
            .fleet
            .get(&id)
            .is_some_and(|old| old.health == Health::Down);
        self.awaiting.remove(&id);
        let kind = self.fleet.register(b, now_ms);
        self.restore_drain(&id, &instance);
        match kind {
            Registration::New => return Ok(vec![]),
            Registration::Again if !was_down => return Ok(vec![]),
            Registration::Again => {}
            Registration::Restarted => {
                tracing::info!(bridge = %id, "bridge restarted (a new instance): re-keying its relays")
            }
        }
        // Conferences with participants on it (the index), and broadcasts relaying through it.
        let mut stale: BTreeSet<String> = self
            .index
            .get(&id)
            .map(|c| c.keys().cloned().collect())
            .unwrap_or_default();
        stale.extend(
            self.broadcasts
                .iter()
                .filter(|c| self.conferences[*c].tree().is_some_and(|t| t.contains(&id)))
                .cloned(),
        );
        stale.retain(|c| !self.busy.contains(c));
        Ok(stale
            .into_iter()
            .map(|c| {
                if self.broadcasts.contains(&c) {
                    self.reprogram_broadcast(&c, &id)
                } else {
                    self.move_plan(&c, std::slice::from_ref(&id), &id, "current")
                }
            })
            .collect())
    }

    /// Applies a persisted drain of `bridge` to its registration by process `instance`, or
    /// forgets it when a new process registered (a drain belongs to the process it was asked of).
    fn restore_drain(&mut self, bridge: &str, instance: &str) {
        let Some(d) = self.drains.get(bridge) else {
            return;
        };
        if d.instance.is_empty() || d.instance == instance {
            let since = d.since_ms;
            self.fleet.drain(bridge, since);
        } else {
            self.drains.remove(bridge);
            self.changes.push(Change::Undrained {
                bridge: bridge.into(),
            });
        }
    }

    /// Plans removing from `bridge` what it holds but the focus did not place there: conferences
    /// placed elsewhere or nowhere, and endpoints no participant owns (left behind by a control
    /// crash between a bridge call and the store, or by a bridge that was declared down while it
    /// was only hung). `listing` is the bridge's `ListConferences`: conference -> endpoint ids.
    /// Conferences with an operation in flight are left alone. One plan per call, so one failure
    /// does not stop the others.
    pub fn reconcile(&mut self, bridge: &str, listing: Vec<(String, Vec<String>)>) -> Vec<Plan> {
        let mut calls = Vec::new();
        for (conference, endpoints) in listing {
            if self.busy.contains(&conference) {
                continue;
            }
            match self.conferences.get(&conference) {
                Some(p) if p.bridges().contains(bridge) => {
                    for e in endpoints {
                        if p.participants.get(&e).is_none_or(|x| x.bridge != bridge) {
                            calls.push(Call::Remove {
                                conference: conference.clone(),
                                endpoint: e,
                            });
                        }
                    }
                }
                _ => calls.push(Call::Delete { conference }),
            }
        }
        if !calls.is_empty() {
            tracing::info!(%bridge, calls = calls.len(), "reconciling: removing what the bridge holds but no placement owns");
        }
        calls
            .into_iter()
            .map(|c| {
                let call = self.call(bridge, c);
                self.start(None, Op::Cleanup, vec![call])
            })
            .collect()
    }

    /// Records a load report; `false` means the bridge must register again.
    pub fn report(&mut self, id: &str, stress: f64, draining: bool, now_ms: u64) -> bool {
        self.fleet.report(id, stress, draining, now_ms)
    }

    /// Records a health probe of a bridge; returns its new health if it changed.
    pub fn probe(&mut self, id: &str, result: Result<(), String>) -> Option<Health> {
        let h = self.fleet.probe(id, result);
        if h == Some(Health::Down) {
            self.downed.push(id.into());
        }
        h
    }

    /// Bridges that went down (missed reports or probes) since the last call, once each: their
    /// calls in flight can be abandoned.
    pub fn take_downed(&mut self) -> Vec<BridgeId> {
        std::mem::take(&mut self.downed)
    }

    /// Periodic work at `now_ms`: bridges that missed their reports go down, and every
    /// conference on a down bridge (or, after the restart grace, on an unknown one) is moved.
    pub fn tick(&mut self, now_ms: u64) -> Vec<Plan> {
        for id in self.fleet.check(now_ms) {
            tracing::warn!(bridge = %id, "bridge missed its reports: down");
            self.downed.push(id);
        }
        // Bridges whose participants must move: down ones, and after the restart grace the
        // ones restored placements use that never registered again. Usually none: no scan.
        let mut bad: HashSet<&str> = self
            .fleet
            .iter()
            .filter(|b| b.health == Health::Down)
            .map(|b| b.id.as_str())
            .collect();
        if now_ms > self.grace_until_ms {
            bad.extend(self.awaiting.iter().map(String::as_str));
        }
        // Draining bridges past their grace: their participants move too (make before break).
        // Only when new load reports may have made room: once per report interval.
        let drain_scan = now_ms >= self.next_drain_scan_ms;
        let expired: HashSet<&str> = self
            .fleet
            .iter()
            .filter(|_| drain_scan)
            .filter(|b| {
                b.draining
                    && b.health != Health::Down
                    && now_ms >= b.drain_since_ms.saturating_add(self.drain_grace_ms)
            })
            .map(|b| b.id.as_str())
            .collect();
        if !expired.is_empty() {
            self.next_drain_scan_ms = now_ms + self.fleet.report_interval_ms;
        }
        bad.extend(expired.iter().copied());
        if bad.is_empty() {
            return Vec::new();
        }
        // Conferences with participants on them (found through the index): only those
        // participants move.
        let mut touched: BTreeSet<&String> = bad
            .iter()
            .filter_map(|b| self.index.get(*b))
            .flat_map(|confs| confs.keys())
            .filter(|c| !self.busy.contains(*c))
            .collect();
        // A broadcast's relay-only edges hold no participant: found through its tree.
        touched.extend(self.broadcasts.iter().filter(|c| {
            !self.busy.contains(*c)
                && self.conferences[*c]
                    .tree()
                    .is_some_and(|t| bad.iter().any(|b| t.contains(b)))
        }));
        let stranded: Vec<(String, Vec<BridgeId>, &'static str)> = touched
            .into_iter()
            .filter_map(|c| self.conferences.get(c).map(|p| (c, p)))
            .map(|(c, p)| {
                let dead: Vec<BridgeId> = p
                    .bridges()
                    .into_iter()
                    .filter(|b| bad.contains(b))
                    .map(String::from)
                    .collect();
                let reason = if dead.iter().all(|d| expired.contains(d.as_str())) {
                    "drained"
                } else {
                    "failover"
                };
                (c.clone(), dead, reason)
            })
            .collect();
        let mut plans = Vec::new();
        for (conference, dead, reason) in stranded {
            if self.broadcasts.contains(&conference) {
                plans.extend(self.move_broadcast(&conference, &dead, reason));
                continue;
            }
            let p = &self.conferences[&conference];
            let region = p
                .participants
                .values()
                .find(|x| dead.contains(&x.bridge))
                .map(|x| x.region.clone())
                .unwrap_or_default();
            let survivors = p.bridges_except(&dead);
            let exclude: Vec<&str> = dead.iter().map(String::as_str).collect();
            // A drain can wait for room; a failover cannot.
            let group = p
                .participants
                .values()
                .filter(|x| dead.contains(&x.bridge))
                .count();
            let must_fit = reason == "drained";
            match self.choose(&conference, &region, &survivors, &exclude, group, must_fit) {
                Ok(to) => plans.push(self.move_plan(&conference, &dead, &to, reason)),
                Err(e) if must_fit => {
                    tracing::debug!(%conference, ?dead, "drain waits for room: {e}")
                }
                Err(e) => {
                    tracing::warn!(%conference, ?dead, "cannot move its participants yet: {e}")
                }
            }
        }
        plans
    }

    /// Plans moving the participants of `conference` on bridges `from` to `to` (which may be
    /// one of them: a bridge that came back is programmed again): `to` joins the conference
    /// with relays to the bridges that keep theirs, which drop their relays to `from`.
    fn move_plan(
        &mut self,
        conference: &str,
        from: &[BridgeId],
        to: &str,
        reason: &'static str,
    ) -> Plan {
        let p = &self.conferences[conference];
        let link = p.link;
        // Bridges that keep the conference (`to` among them when it already hosts it).
        let keep = p.bridges_except(from);
        let moving: Vec<(String, Participant)> = p
            .participants
            .iter()
            .filter(|(_, x)| from.contains(&x.bridge))
            .map(|(id, x)| (id.clone(), x.clone()))
            .collect();
        let to_hosts = p.bridges().contains(to) && !from.iter().any(|d| d == to);
        let mut calls = vec![self.call(
            to,
            Call::Create {
                conference: conference.into(),
            },
        )];
        let mut links = Vec::new();
        for s in &keep {
            for d in from {
                calls.push(self.call(
                    s,
                    Call::RemoveRelay {
                        conference: conference.into(),
                        relay_id: d.clone(),
                    },
                ));
            }
            if !to_hosts && s != to {
                if from.iter().any(|d| d == to) {
                    // The same bridge again (it may still hold its relay with the old keys).
                    calls.push(self.call(
                        to,
                        Call::RemoveRelay {
                            conference: conference.into(),
                            relay_id: s.clone(),
                        },
                    ));
                }
                let keys = self.link_keys();
                calls.extend(self.relay_calls(conference, link, to, s, &keys));
                links.push((link_key(to, s), keys, s.clone()));
            }
        }
        for (id, part) in &moving {
            calls.push(self.call(
                to,
                Call::Add {
                    conference: conference.into(),
                    endpoint: id.clone(),
                    participant: Participant {
                        bridge: to.into(),
                        ..part.clone()
                    },
                    if_absent: true,
                },
            ));
        }
        self.start(
            Some(conference),
            Op::Move {
                conference: conference.into(),
                from: from.to_vec(),
                to: to.into(),
                links,
                reason,
            },
            calls,
        )
    }

    /// Marks the bridges of failed calls suspect; returns the first failure.
    fn blame(&mut self, plan_calls: &[BridgeCall], results: &[CallResult]) -> Option<FocusError> {
        let (i, e) = results
            .iter()
            .enumerate()
            .find_map(|(i, r)| r.as_ref().err().map(|e| (i, e.clone())))?;
        let bridge = plan_calls
            .get(i)
            .map(|c| c.bridge.clone())
            .unwrap_or_default();
        if e.blames_bridge() && self.fleet.suspect(&bridge, &e.to_string()) {
            tracing::warn!(%bridge, "bridge suspect: {e}");
        }
        Some(FocusError::Bridge { bridge, error: e })
    }

    /// Commits or rolls back operation `op` given the results of its plan's calls (one per call
    /// made, in order; the executor stops after the first failure). `calls` is the plan's calls.
    pub fn complete(
        &mut self,
        op: OpId,
        calls: &[BridgeCall],
        results: &[CallResult],
    ) -> Completion {
        let Some(state) = self.ops.remove(&op) else {
            return Completion {
                result: Err(FocusError::NotFound(format!("operation {op} unknown"))),
                cleanup: None,
            };
        };
        let all_ok = results.len() == calls.len() && results.iter().all(Result::is_ok);
        let failure = if all_ok {
            None
        } else {
            Some(self.blame(calls, results).unwrap_or(FocusError::Bridge {
                bridge: calls.first().map(|c| c.bridge.clone()).unwrap_or_default(),
                error: CallError::Unavailable("the executor made no call".into()),
            }))
        };
        match state {
            Op::Stream(op) => self.complete_stream(*op, failure),
            Op::Cleanup => Completion {
                result: match failure {
                    None => Ok(Done::CleanedUp),
                    Some(e) => Err(e),
                },
                cleanup: None,
            },
            Op::Join {
                conference,
                participant_id,
                participant,
                bridge,
                created,
                grown,
                link,
                links,
            } => {
                self.busy.remove(&conference);
                if let Some(e) = failure {
                    // Undo only what this join added: the conference on the bridge it created
                    // it on (with the relays it set up to it), or the endpoint if its add may
                    // have landed (timed out).
                    let created_here = (created || grown)
                        && match results.first() {
                            Some(Ok(Applied::Done)) => true,
                            Some(Err(e)) => e.blames_bridge(), // may have landed
                            _ => false,
                        };
                    let add_unknown = matches!(
                        results.last(),
                        Some(Err(CallError::Timeout { .. } | CallError::Unavailable(_)))
                    ) && results.len() == calls.len();
                    let mut undo = Vec::new();
                    if created_here {
                        let others = links.iter().map(|(_, _, o)| o.as_str());
                        undo = self.withdraw(&conference, &bridge, others);
                    } else if add_unknown {
                        undo.push(self.call(
                            &bridge,
                            Call::Remove {
                                conference,
                                endpoint: participant_id,
                            },
                        ));
                    }
                    return Completion {
                        result: Err(e),
                        cleanup: self.cleanup(undo),
                    };
                }
                if created {
                    self.conferences.insert(
                        conference.clone(),
                        Placement {
                            bridge: bridge.clone(),
                            participants: BTreeMap::new(),
                            link,
                            links: BTreeMap::new(),
                            broadcast: None,
                        },
                    );
                    self.changes.push(Change::Placed {
                        conference: conference.clone(),
                        bridge: bridge.clone(),
                        link,
                    });
                }
                let srtp = participant.srtp.clone();
                let p = self
                    .conferences
                    .get_mut(&conference)
                    .expect("a joined conference is placed");
                p.participants
                    .insert(participant_id.clone(), participant.clone());
                self.index(&participant.bridge, &conference, 1);
                let p = self
                    .conferences
                    .get_mut(&conference)
                    .expect("a joined conference is placed");
                for (pair, keys, _) in links {
                    p.links.insert(pair.clone(), keys.clone());
                    self.changes.push(Change::Linked {
                        conference: conference.clone(),
                        pair,
                        keys,
                    });
                }
                self.changes.push(Change::Joined {
                    conference: conference.clone(),
                    participant_id,
                    participant,
                });
                // Every change of a conference's participants is announced (a broadcast's
                // viewers are not: they are counted, see the broadcast's operations).
                let reason = match (created, grown) {
                    (true, _) => "placed",
                    (_, true) => "grown",
                    _ => "joined",
                };
                let a = self.announcement(&conference, &self.conferences[&conference], reason);
                self.announcements.push(a);
                Completion {
                    result: Ok(Done::Joined {
                        media_addr: self.media_addr(&bridge),
                        bridge,
                        srtp,
                    }),
                    cleanup: None,
                }
            }
            Op::Leave {
                conference,
                participant_id,
                bridge,
            } => {
                self.busy.remove(&conference);
                // A bridge that does not answer cannot keep a participant in: the placement
                // forgets it either way (the bridge is suspect and its state will be moved or
                // cleaned); only a refusal of the request itself keeps it.
                if let Some(e) = failure {
                    let FocusError::Bridge { error, .. } = &e else {
                        unreachable!("blame returns bridge errors")
                    };
                    if !error.blames_bridge() {
                        return Completion {
                            result: Err(e),
                            cleanup: None,
                        };
                    }
                    tracing::warn!(%conference, %bridge, "leave committed without the bridge: {e}");
                }
                let p = self
                    .conferences
                    .get_mut(&conference)
                    .expect("a busy conference stays placed");
                p.participants.remove(&participant_id);
                let ended = p.participants.is_empty();
                self.index(&bridge, &conference, -1);
                let p = self
                    .conferences
                    .get_mut(&conference)
                    .expect("a busy conference stays placed");
                if ended {
                    let p = self.conferences.remove(&conference).expect("present");
                    let a = self.announcement(&conference, &p, "ended");
                    self.announcements.push(a);
                    self.changes.push(Change::Ended { conference });
                } else {
                    if p.on(&bridge).next().is_none() {
                        let gone: Vec<String> = p
                            .links
                            .keys()
                            .filter(|k| k.split('|').any(|b| b == bridge))
                            .cloned()
                            .collect();
                        for pair in gone {
                            p.links.remove(&pair);
                            self.changes.push(Change::Unlinked {
                                conference: conference.clone(),
                                pair,
                            });
                        }
                        if p.bridge == bridge {
                            let first: String =
                                p.bridges().into_iter().next().unwrap_or_default().into();
                            p.bridge = first;
                            self.changes.push(Change::Placed {
                                conference: conference.clone(),
                                bridge: p.bridge.clone(),
                                link: p.link,
                            });
                        }
                    }
                    let a = self.announcement(&conference, &self.conferences[&conference], "left");
                    self.announcements.push(a);
                    self.changes.push(Change::Left {
                        conference,
                        participant_id,
                    });
                }
                Completion {
                    result: Ok(Done::Left),
                    cleanup: None,
                }
            }
            Op::Move {
                conference,
                from,
                to,
                links,
                reason,
            } => {
                self.busy.remove(&conference);
                let same = from.len() == 1 && from[0] == to;
                if let Some(e) = failure {
                    tracing::warn!(%conference, ?from, %to, "move failed, will retry: {e}");
                    let undo = if matches!(results.first(), Some(Ok(Applied::Done))) && !same {
                        self.withdraw(&conference, &to, links.iter().map(|(_, _, o)| o.as_str()))
                    } else {
                        vec![]
                    };
                    return Completion {
                        result: Err(e),
                        cleanup: self.cleanup(undo),
                    };
                }
                let p = self
                    .conferences
                    .get_mut(&conference)
                    .expect("a busy conference stays placed");
                let mut moved = Vec::new();
                let mut left = Vec::new();
                for (id, part) in p.participants.iter_mut() {
                    if from.contains(&part.bridge) {
                        left.push(std::mem::replace(&mut part.bridge, to.clone()));
                        moved.push((id.clone(), part.clone()));
                    }
                }
                let moved_count = moved.len() as u64;
                for old in left {
                    self.index(&old, &conference, -1);
                    self.index(&to, &conference, 1);
                }
                let p = self
                    .conferences
                    .get_mut(&conference)
                    .expect("a busy conference stays placed");
                let stale: Vec<String> = p
                    .links
                    .keys()
                    .filter(|k| k.split('|').any(|b| from.iter().any(|d| d == b)))
                    .cloned()
                    .collect();
                if !same {
                    for pair in stale {
                        p.links.remove(&pair);
                        self.changes.push(Change::Unlinked {
                            conference: conference.clone(),
                            pair,
                        });
                    }
                }
                for (pair, keys, _) in links {
                    p.links.insert(pair.clone(), keys.clone());
                    self.changes.push(Change::Linked {
                        conference: conference.clone(),
                        pair,
                        keys,
                    });
                }
                if from.contains(&p.bridge) {
                    p.bridge = to.clone();
                }
                self.changes.push(Change::Placed {
                    conference: conference.clone(),
                    bridge: p.bridge.clone(),
                    link: p.link,
                });
                for (participant_id, participant) in moved {
                    self.changes.push(Change::Joined {
                        conference: conference.clone(),
                        participant_id,
                        participant,
                    });
                }
                let a = self.announcement(&conference, &self.conferences[&conference], reason);
                self.announcements.push(a);
                let mut tidy = vec![];
                if !same {
                    if reason == "drained" {
                        self.drain_moves += moved_count;
                    } else {
                        self.failovers += 1;
                    }
                    tracing::info!(%conference, ?from, %to, reason, "participants moved");
                    // An old bridge may come back (a stopped process continued): remove what it
                    // still holds. Best effort; it fails fast or times out if it is gone.
                    for d in &from {
                        if self.fleet.get(d).is_some() {
                            tidy.push(self.call(
                                d,
                                Call::Delete {
                                    conference: conference.clone(),
                                },
                            ));
                        }
                    }
                }
                Completion {
                    result: Ok(Done::Moved {
                        from: from.join(","),
                        to,
                    }),
                    cleanup: self.cleanup(tidy),
                }
            }
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    pub(super) const T: u64 = 1_000; // report interval in the tests, ms

    pub(super) fn cfg() -> FocusConfig {
        FocusConfig {
            report_interval_ms: T,
            missed_reports: 3,
            probe_failures_down: 2,
            per_participant_pps: 10.0,
            max_per_bridge: 80,
            stream_fanout: 2,
            max_viewers_per_edge: 1000,
            stress_threshold: 0.8,
            drain_grace_ms: 2 * T,
        }
    }

    /// Deterministic "random" keys: a counter.
    pub(super) fn keys() -> KeySource {
        let mut n = 0u8;
        Box::new(move |buf: &mut [u8]| {
            for b in buf {
                n = n.wrapping_add(1);
                *b = n;
            }
        })
    }

    pub(super) fn focus() -> Focus {
        let mut f = Focus::new(&cfg(), Snapshot::default(), keys(), 0);
        for (id, region) in [("eu-1", "eu"), ("eu-2", "eu"), ("us-1", "us")] {
            register(&mut f, id, region);
        }
        f
    }

    /// Registers bridge `id` (API `id:api`, media `id:media`, capacity 1000) at time 0; returns
    /// the plans that program it again if it was known.
    pub(super) fn register(f: &mut Focus, id: &str, region: &str) -> Vec<Plan> {
        let b = Bridge::new(
            id,
            &format!("{id}:api"),
            &format!("{id}:media"),
            region,
            1000.0,
        );
        f.register(b, 0).unwrap()
    }

    pub(super) fn join(conf: &str, who: &str, region: &str) -> JoinRequest {
        JoinRequest {
            conference: conf.into(),
            participant_id: who.into(),
            region: region.into(),
            ssrcs: vec![1],
            remote_addr: "127.0.0.1:5000".into(),
            srtp: None,
            role: Role::Participant,
        }
    }

    pub(super) fn ok(plan: &Plan) -> Vec<CallResult> {
        plan.calls.iter().map(|_| Ok(Applied::Done)).collect()
    }

    /// Joins with every call succeeding.
    pub(super) fn join_ok(f: &mut Focus, r: JoinRequest) -> Done {
        let p = f.join(r, 0).unwrap();
        run_ok(f, p)
    }

    /// Runs a plan as if every call succeeded; returns the result.
    pub(super) fn run_ok(f: &mut Focus, plan: Plan) -> Done {
        let r = ok(&plan);
        f.complete(plan.op, &plan.calls, &r).result.unwrap()
    }

    #[test]
    fn join_places_by_region_then_load_and_commits_on_success() {
        let mut f = focus();
        let plan = f.join(join("c1", "a", "us"), 0).unwrap();
        assert_eq!(
            plan.calls.iter().map(|c| &c.call).collect::<Vec<_>>()[0],
            &Call::Create {
                conference: "c1".into()
            }
        );
        assert!(
            plan.calls
                .iter()
                .all(|c| c.bridge == "us-1" && c.api_addr == "us-1:api")
        );
        // Not placed until the calls succeed.
        assert!(f.conferences().is_empty());
        let done = run_ok(&mut f, plan);
        assert_eq!(
            done,
            Done::Joined {
                bridge: "us-1".into(),
                media_addr: "us-1:media".into(),
                srtp: None
            }
        );
        let a = f.take_announcements();
        assert_eq!((a[0].conference.as_str(), a[0].reason), ("c1", "placed"));
        // A second participant of the same region goes to the conference's bridge, one call.
        let plan = f.join(join("c1", "b", "us"), 10).unwrap();
        assert_eq!(plan.calls.len(), 1);
        assert_eq!(plan.calls[0].bridge, "us-1");
        run_ok(&mut f, plan);
        assert_eq!(f.conferences()["c1"].participants.len(), 2);
        assert_eq!(f.take_changes().len(), 3); // placed, joined a, joined b
        let a = f.take_announcements();
        assert_eq!(a.len(), 1);
        assert_eq!((a[0].reason, a[0].participants.len()), ("joined", 2));
        // Load spreads inside a region: two eu conferences land on different eu bridges.
        let p1 = f.join(join("e1", "x", "eu"), 20).unwrap();
        let p2 = f.join(join("e2", "y", "eu"), 20).unwrap();
        assert_ne!(p1.calls[0].bridge, p2.calls[0].bridge);
        assert_eq!(
            f.join(join("c1", "a", "eu"), 30).unwrap_err(),
            FocusError::Exists("participant_id: already in conference \"c1\"".into())
        );
    }

    #[test]
    fn one_operation_per_conference_others_in_parallel() {
        let mut f = focus();
        let p1 = f.join(join("c1", "a", "eu"), 0).unwrap();
        assert_eq!(
            f.join(join("c1", "b", "eu"), 0).unwrap_err(),
            FocusError::Busy("c1".into())
        );
        let p2 = f.join(join("c2", "a", "eu"), 0).unwrap();
        assert_eq!(f.in_flight(), 2);
        run_ok(&mut f, p2);
        run_ok(&mut f, p1);
        assert!(f.join(join("c1", "b", "eu"), 0).is_ok());
    }

    #[test]
    fn bad_input_is_refused_before_any_call() {
        let mut f = focus();
        let mut r = join("", "a", "eu");
        assert!(matches!(
            f.join(r.clone(), 0),
            Err(FocusError::Invalid {
                field: "conference",
                ..
            })
        ));
        r.conference = "x".repeat(MAX_ID_LEN + 1);
        assert!(matches!(
            f.join(r, 0),
            Err(FocusError::Invalid {
                field: "conference",
                ..
            })
        ));
        let mut r = join("c", "a", "eu");
        r.ssrcs = (0..65).collect();
        assert!(matches!(
            f.join(r, 0),
            Err(FocusError::Invalid { field: "ssrcs", .. })
        ));
        let mut r = join("c", "a", "eu");
        r.remote_addr = "nowhere".into();
        assert!(matches!(
            f.join(r, 0),
            Err(FocusError::Invalid {
                field: "remote_addr",
                ..
            })
        ));
        let mut r = join("c", "a", "eu");
        r.srtp = Some(SrtpOffer {
            profile: "ROT13".into(),
            endpoint_key: vec![0; 30],
            bridge_key: vec![],
        });
        assert!(matches!(
            f.join(r.clone(), 0),
            Err(FocusError::Invalid {
                field: "srtp.profile",
                ..
            })
        ));
        r.srtp = Some(SrtpOffer {
            profile: "AEAD_AES_128_GCM".into(),
            endpoint_key: vec![0; 30],
            bridge_key: vec![],
        });
        let e = f.join(r.clone(), 0).unwrap_err();
        assert_eq!(
            e.to_string(),
            "srtp.endpoint_key: AEAD_AES_128_GCM needs 28 bytes of master key + salt, got 30"
        );
        r.srtp = Some(SrtpOffer {
            profile: "AEAD_AES_128_GCM".into(),
            endpoint_key: vec![0; 28],
            bridge_key: vec![1; 28],
        });
        assert!(matches!(
            f.join(r, 0),
            Err(FocusError::Invalid {
                field: "srtp.bridge_key",
                ..
            })
        ));
        // Nothing was started or placed.
        assert_eq!(f.in_flight(), 0);
        assert!(f.conferences().is_empty());
        assert!(
            f.join(join("c", "a", "eu"), 0).is_ok(),
            "and the conference is not busy"
        );
    }

    #[test]
    fn a_bridge_timing_out_mid_join_rolls_back_and_is_avoided() {
        let mut f = focus();
        let plan = f.join(join("c1", "a", "us"), 0).unwrap();
        // Create succeeded, AddEndpoint timed out.
        let results = vec![
            Ok(Applied::Done),
            Err(CallError::Timeout { deadline_ms: 2000 }),
        ];
        let c = f.complete(plan.op, &plan.calls, &results);
        let e = c.result.unwrap_err();
        assert_eq!(e.to_string(), "bridge us-1: no answer within 2000 ms");
        // Rollback deletes the conference this join created, nothing else.
        let cleanup = c.cleanup.unwrap();
        assert_eq!(
            cleanup.calls,
            vec![BridgeCall {
                bridge: "us-1".into(),
                api_addr: "us-1:api".into(),
                call: Call::Delete {
                    conference: "c1".into()
                }
            }]
        );
        assert!(f.conferences().is_empty());
        assert!(f.take_changes().is_empty());
        assert_eq!(f.fleet().get("us-1").unwrap().state(), "suspect");
        // The next us conference goes elsewhere.
        let plan = f.join(join("c2", "b", "us"), 10).unwrap();
        assert!(plan.calls[0].bridge.starts_with("eu-"));
    }

    #[test]
    fn a_failed_add_to_an_existing_conference_removes_only_that_endpoint() {
        let mut f = focus();
        let p = f.join(join("c1", "a", "eu"), 0).unwrap();
        let bridge = p.calls[0].bridge.clone();
        run_ok(&mut f, p);
        let p = f.join(join("c1", "b", "eu"), 0).unwrap();
        // The bridge says the endpoint exists (an orphan from a crash): an error, no cleanup at
        // all (in particular not a deletion of the conference and its other participants).
        let c = f.complete(
            p.op,
            &p.calls,
            &[Err(CallError::Exists("endpoint b exists".into()))],
        );
        assert!(matches!(c.result, Err(FocusError::Bridge { .. })));
        assert_eq!(c.cleanup, None);
        // A timed-out add may have landed: remove that endpoint only.
        let p = f.join(join("c1", "b", "eu"), 0).unwrap();
        let c = f.complete(
            p.op,
            &p.calls,
            &[Err(CallError::Timeout { deadline_ms: 5 })],
        );
        assert_eq!(
            c.cleanup.unwrap().calls[0].call,
            Call::Remove {
                conference: "c1".into(),
                endpoint: "b".into()
            }
        );
        // A join to a conference on a suspect bridge is refused with the reason.
        let e = f.join(join("c1", "b", "eu"), 0).unwrap_err();
        assert!(
            matches!(&e, FocusError::BridgeUnavailable { bridge: b, state: "suspect", .. } if *b == bridge),
            "{e}"
        );
        assert_eq!(f.conferences()["c1"].participants.len(), 1);
    }

    #[test]
    fn failover_moves_the_conference_with_its_srtp_keys_and_announces_it() {
        let mut f = focus();
        let mut r = join("c1", "a", "eu");
        r.srtp = Some(SrtpOffer {
            profile: "AEAD_AES_128_GCM".into(),
            endpoint_key: vec![7; 28],
            bridge_key: vec![],
        });
        let p = f.join(r, 0).unwrap();
        let from = p.calls[0].bridge.clone();
        let Done::Joined {
            srtp: Some(keys), ..
        } = run_ok(&mut f, p)
        else {
            panic!("srtp keys returned")
        };
        assert_eq!(keys.bridge_key.len(), 28);
        assert_ne!(keys.bridge_key, keys.endpoint_key);
        join_ok(&mut f, join("c1", "b", "eu"));
        f.take_announcements();
        // Reports keep the others up; `from` goes silent and probes fail twice: down.
        for t in [900, 1800, 2700] {
            for b in ["eu-1", "eu-2", "us-1"] {
                if b != from {
                    f.report(b, 0.0, false, t);
                }
            }
        }
        assert!(f.tick(2700).is_empty(), "not down yet");
        assert_eq!(
            f.probe(&from, Err("deadline".into())),
            Some(Health::Suspect)
        );
        assert_eq!(f.probe(&from, Err("deadline".into())), Some(Health::Down));
        let plans = f.tick(2800);
        assert_eq!(plans.len(), 1);
        let plan = &plans[0];
        let to = plan.calls[0].bridge.clone();
        assert_ne!(to, from);
        assert!(
            to.starts_with("eu-"),
            "moved within the region of its first participant"
        );
        // Every participant is programmed again, SRTP keys included, tolerating leftovers.
        let adds: Vec<&Participant> = plan
            .calls
            .iter()
            .filter_map(|c| match &c.call {
                Call::Add {
                    participant,
                    if_absent: true,
                    ..
                } => Some(participant),
                _ => None,
            })
            .collect();
        assert_eq!(adds.len(), 2);
        assert_eq!(adds[0].srtp.as_ref(), Some(&keys));
        // Joins wait while the move is in flight.
        assert!(matches!(
            f.join(join("c1", "c", "eu"), 2800),
            Err(FocusError::Busy(_))
        ));
        let r = ok(plan);
        let c = f.complete(plan.op, &plan.calls, &r);
        assert_eq!(
            c.result.unwrap(),
            Done::Moved {
                from: from.clone(),
                to: to.clone()
            }
        );
        // The old bridge is told to drop the conference, in case it comes back.
        assert_eq!(c.cleanup.unwrap().calls[0].bridge, from);
        let a = f.take_announcements();
        assert_eq!(
            (a[0].reason, a[0].bridge.as_str()),
            ("failover", to.as_str())
        );
        assert_eq!(a[0].participants, ["a", "b"]);
        assert_eq!(f.failovers(), 1);
        assert_eq!(f.conferences()["c1"].participants["a"].srtp, Some(keys));
        // Nothing more to move; a down bridge's report is refused until it registers again.
        assert!(f.tick(2900).is_empty());
        assert!(!f.report(&from, 0.0, false, 2900));
    }

    /// The Call kinds of a plan, e.g. ["create@eu-1", "relay to us-1@eu-1", ...]; a relay the
    /// remote bridge pulls through (a broadcast's pull, parent side) is "feed".
    pub(super) fn shape(p: &Plan) -> Vec<String> {
        p.calls
            .iter()
            .map(|c| {
                let what = match &c.call {
                    Call::Create { .. } => "create".to_string(),
                    Call::Add { endpoint, .. } => format!("add {endpoint}"),
                    Call::Remove { endpoint, .. } => format!("remove {endpoint}"),
                    Call::Delete { .. } => "delete".to_string(),
                    Call::AddRelay {
                        relay_id,
                        downstream: true,
                        ..
                    } => format!("feed {relay_id}"),
                    Call::AddRelay { relay_id, .. } => format!("relay to {relay_id}"),
                    Call::RemoveRelay { relay_id, .. } => format!("unrelay {relay_id}"),
                };
                format!("{what}@{}", c.bridge)
            })
            .collect()
    }

    #[test]
    fn a_conference_grows_by_region_with_full_mesh_relays() {
        let mut f = focus();
        register(&mut f, "ap-1", "ap");
        join_ok(&mut f, join("c", "e1", "eu"));
        let eu = f.conferences()["c"].participants["e1"].bridge.clone();
        // us joins: the conference grows onto us-1, relayed both ways with the eu bridge.
        let p = f.join(join("c", "u1", "us"), 0).unwrap();
        assert_eq!(
            shape(&p),
            [
                "create@us-1".to_string(),
                format!("relay to {eu}@us-1"),
                format!("relay to us-1@{eu}"),
                "add u1@us-1".into()
            ]
        );
        // The two ends of the link seal with each other's receive key.
        let keys: Vec<(&Vec<u8>, &Vec<u8>)> = p
            .calls
            .iter()
            .filter_map(|c| match &c.call {
                Call::AddRelay {
                    tx_key,
                    rx_key,
                    link,
                    ..
                } => {
                    assert_eq!(*link, f.conferences()["c"].link);
                    Some((tx_key, rx_key))
                }
                _ => None,
            })
            .collect();
        assert_eq!((keys[0].0, keys[0].1), (keys[1].1, keys[1].0));
        assert_ne!(keys[0].0, keys[0].1);
        run_ok(&mut f, p);
        assert_eq!(f.take_announcements().last().unwrap().reason, "grown");
        // ap joins: relays to both existing bridges (full mesh).
        let p = f.join(join("c", "a1", "ap"), 0).unwrap();
        assert_eq!(p.calls.len(), 1 + 4 + 1);
        run_ok(&mut f, p);
        let c = &f.conferences()["c"];
        assert_eq!(c.links.len(), 3);
        let a = f.placement("c", "current").unwrap();
        assert_eq!(a.bridges.len(), 3);
        assert!(a.bridges.iter().any(|(b, m, who, n)| b == "ap-1"
            && *n == 1
            && m == "ap-1:media"
            && who == &["a1".to_string()]));
        // A second us participant stays on us-1: one call.
        assert_eq!(
            f.join(join("c", "u2", "us"), 0).map(|p| shape(&p)).unwrap(),
            ["add u2@us-1"]
        );
    }

    #[test]
    fn a_full_bridge_makes_the_conference_grow_in_the_region() {
        let mut c = cfg();
        c.max_per_bridge = 2;
        let mut f = Focus::new(&c, Snapshot::default(), keys(), 0);
        for (id, region) in [("eu-1", "eu"), ("eu-2", "eu")] {
            f.register(Bridge::new(id, id, id, region, 1000.0), 0)
                .unwrap();
        }
        for who in ["a", "b", "c"] {
            join_ok(&mut f, join("conf", who, "eu"));
        }
        let c = &f.conferences()["conf"];
        assert_eq!(
            c.bridges().len(),
            2,
            "the third went to the other eu bridge"
        );
        assert_eq!(c.links.len(), 1);
    }

    #[test]
    fn leaving_the_last_participant_of_a_bridge_removes_its_relays() {
        let mut f = focus();
        join_ok(&mut f, join("c", "e1", "eu"));
        join_ok(&mut f, join("c", "u1", "us"));
        let eu = f.conferences()["c"].participants["e1"].bridge.clone();
        let p = f.leave("c", "u1").unwrap();
        assert_eq!(
            shape(&p),
            ["delete@us-1".to_string(), format!("unrelay us-1@{eu}")]
        );
        run_ok(&mut f, p);
        let c = &f.conferences()["c"];
        assert!(c.links.is_empty());
        assert_eq!(c.bridges().into_iter().collect::<Vec<_>>(), [eu.as_str()]);
    }

    #[test]
    fn failover_moves_only_the_dead_bridges_participants() {
        let mut f = focus();
        join_ok(&mut f, join("c", "e1", "eu"));
        join_ok(&mut f, join("c", "e2", "eu"));
        join_ok(&mut f, join("c", "u1", "us"));
        let eu = f.conferences()["c"].participants["e1"].bridge.clone();
        f.take_announcements();
        f.probe("us-1", Err("gone".into()));
        assert_eq!(f.probe("us-1", Err("gone".into())), Some(Health::Down));
        let plans = f.tick(10);
        assert_eq!(plans.len(), 1);
        // u1 joins the eu bridge that hosts the conference (no bridge left in us); the survivor
        // drops its relay to us-1; e1 and e2 are not touched.
        assert_eq!(
            shape(&plans[0]),
            [
                format!("create@{eu}"),
                format!("unrelay us-1@{eu}"),
                format!("add u1@{eu}")
            ]
        );
        run_ok(&mut f, plans.into_iter().next().unwrap());
        let c = &f.conferences()["c"];
        assert!(c.participants.values().all(|p| p.bridge == eu));
        assert!(c.links.is_empty());
        let a = f.take_announcements();
        assert_eq!(a[0].reason, "failover");
        assert_eq!(a[0].bridges.len(), 1);
    }

    #[test]
    fn a_draining_bridge_takes_nothing_new_then_its_participants_move_after_the_grace() {
        let mut f = focus();
        join_ok(&mut f, join("c", "e1", "eu"));
        let eu = f.conferences()["c"].participants["e1"].bridge.clone();
        let other = if eu == "eu-1" { "eu-2" } else { "eu-1" };
        join_ok(&mut f, join("d", "x1", "eu"));
        assert_eq!(
            f.drain("nope", 0),
            Err(FocusError::NotFound(
                "bridge_id: \"nope\" is not registered".into()
            ))
        );
        f.drain(&eu, 100).unwrap();
        assert_eq!(f.fleet().get(&eu).unwrap().state(), "draining");
        // A new participant of its conference goes to another bridge of the region (Octo);
        // a new conference never lands on it.
        join_ok(&mut f, join("c", "e2", "eu"));
        assert_eq!(f.conferences()["c"].participants["e2"].bridge, other);
        join_ok(&mut f, join("n", "y1", "eu"));
        assert_eq!(f.conferences()["n"].participants["y1"].bridge, other);
        // Within the grace nothing moves; after it, only the draining bridge's participants do,
        // and the old bridge's copy is deleted once the move is committed (make before break).
        assert!(f.tick(100 + 2 * T - 1).is_empty());
        assert!(f.drained().is_empty(), "still has participants");
        f.take_announcements();
        let plans = f.tick(100 + 2 * T);
        assert!(!plans.is_empty());
        for p in plans {
            let r = ok(&p);
            let c = f.complete(p.op, &p.calls, &r);
            assert!(c.result.is_ok(), "{:?}", c.result);
            let tidy = c.cleanup.expect("the drained bridge's copy is deleted");
            assert_eq!(shape(&tidy), [format!("delete@{eu}")]);
        }
        assert!(!f.participants_per_bridge().contains_key(eu.as_str()));
        assert!(
            f.take_announcements().iter().all(|a| a.reason == "drained"),
            "announced as drained"
        );
        assert_eq!(f.failovers(), 0);
        assert!(f.drain_moves() >= 1);
        assert_eq!(f.drained(), vec![eu.clone()]);
        assert!(f.forget(&eu));
        assert!(f.fleet().get(&eu).is_none());
    }

    #[test]
    fn a_failed_move_rolls_back_and_is_retried() {
        let mut f = focus();
        join_ok(&mut f, join("c1", "a", "us"));
        for t in [1000, 2000, 3000] {
            f.report("eu-1", 0.0, false, t);
            f.report("eu-2", 0.0, false, t);
        }
        let plans = f.tick(3100);
        assert_eq!(plans.len(), 1, "us-1 missed 3 reports");
        let p = &plans[0];
        let target = p.calls[0].bridge.clone();
        let c = f.complete(
            p.op,
            &p.calls,
            &[
                Ok(Applied::Done),
                Err(CallError::Timeout { deadline_ms: 9 }),
            ],
        );
        assert!(c.result.is_err());
        assert_eq!(
            c.cleanup.unwrap().calls[0].call,
            Call::Delete {
                conference: "c1".into()
            }
        );
        assert_eq!(f.conferences()["c1"].bridge, "us-1", "still where it was");
        // Retried on the next tick, on the other bridge (the first is suspect now).
        let plans = f.tick(3200);
        assert_eq!(plans.len(), 1);
        assert_ne!(plans[0].calls[0].bridge, target);
    }

    #[test]
    fn reconcile_removes_only_what_no_placement_owns() {
        let mut f = focus();
        let p = f.join(join("c1", "a", "eu"), 0).unwrap();
        let b = p.calls[0].bridge.clone();
        run_ok(&mut f, p);
        let busy = f.join(join("c2", "x", "eu"), 0).unwrap(); // in flight: left alone
        let listing = vec![
            ("c1".to_string(), vec!["a".to_string(), "ghost".to_string()]),
            ("c2".to_string(), vec!["x".to_string()]),
            ("orphan".to_string(), vec!["z".to_string()]),
        ];
        let plans = f.reconcile(&b, listing);
        let calls: Vec<&Call> = plans.iter().map(|p| &p.calls[0].call).collect();
        assert_eq!(
            calls,
            [
                &Call::Remove {
                    conference: "c1".into(),
                    endpoint: "ghost".into()
                },
                &Call::Delete {
                    conference: "orphan".into()
                }
            ]
        );
        assert!(plans.iter().all(|p| p.calls[0].bridge == b));
        run_ok(&mut f, busy);
        // A conference placed on another bridge is not this bridge's to keep.
        let other = if b == "eu-1" { "eu-2" } else { "eu-1" };
        let plans = f.reconcile(other, vec![("c1".to_string(), vec!["a".to_string()])]);
        assert_eq!(
            plans[0].calls[0].call,
            Call::Delete {
                conference: "c1".into()
            }
        );
        assert_eq!(
            f.conferences()["c1"].participants.len(),
            1,
            "placements untouched"
        );
    }

    #[test]
    fn leave_ends_the_conference_with_its_last_participant() {
        let mut f = focus();
        join_ok(&mut f, join("c1", "a", "eu"));
        join_ok(&mut f, join("c1", "b", "eu"));
        f.take_announcements();
        let p = f.leave("c1", "a").unwrap();
        assert!(matches!(p.calls[0].call, Call::Remove { .. }));
        run_ok(&mut f, p);
        assert_eq!(f.take_announcements()[0].reason, "left");
        let p = f.leave("c1", "b").unwrap();
        assert!(matches!(p.calls[0].call, Call::Delete { .. }));
        // The bridge does not answer: the participant is out of the placement anyway.
        let c = f.complete(
            p.op,
            &p.calls,
            &[Err(CallError::Timeout { deadline_ms: 1 })],
        );
        assert_eq!(c.result.unwrap(), Done::Left);
        assert!(f.conferences().is_empty());
        assert_eq!(f.take_announcements()[0].reason, "ended");
        assert!(matches!(f.leave("c1", "b"), Err(FocusError::NotFound(_))));
    }

    #[test]
    fn a_drain_survives_a_restart_of_the_focus_and_ends_with_a_new_bridge_process() {
        let mut f = focus();
        f.register(
            Bridge::new("eu-9", "a", "m", "eu", 1000.0).with_instance("p1"),
            0,
        )
        .unwrap();
        f.drain("eu-9", 5).unwrap();
        let changes = f.take_changes();
        assert!(
            changes
                .iter()
                .any(|c| matches!(c, Change::Drained { bridge, .. } if bridge == "eu-9"))
        );
        let mut snap = Snapshot::default();
        for c in &changes {
            snap.apply(c);
        }
        // A restarted control plane: the same bridge process registers and is still draining,
        // its grace counted from the original drain.
        let mut g = Focus::new(&cfg(), snap.clone(), keys(), 100);
        g.register(
            Bridge::new("eu-9", "a", "m", "eu", 1000.0).with_instance("p1"),
            100,
        )
        .unwrap();
        let b = g.fleet().get("eu-9").unwrap();
        assert!(b.draining && b.drain_since_ms == 5, "{b:?}");
        // A new process of the bridge (restarted after maintenance) is up, and the drain goes.
        let mut h = Focus::new(&cfg(), snap, keys(), 100);
        h.register(
            Bridge::new("eu-9", "a", "m", "eu", 1000.0).with_instance("p2"),
            100,
        )
        .unwrap();
        assert!(!h.fleet().get("eu-9").unwrap().draining);
        assert!(
            h.take_changes()
                .iter()
                .any(|c| matches!(c, Change::Undrained { bridge } if bridge == "eu-9"))
        );
    }

    #[test]
    fn an_octo_bridge_restarted_gets_fresh_relay_keys_on_both_sides() {
        let mut f = focus();
        let mut cfg_small = cfg();
        cfg_small.max_per_bridge = 1;
        let mut f2 = Focus::new(&cfg_small, Snapshot::default(), keys(), 0);
        std::mem::swap(&mut f, &mut f2);
        register(&mut f, "eu-1", "eu");
        register(&mut f, "eu-2", "eu");
        join_ok(&mut f, join("c", "a", "eu"));
        join_ok(&mut f, join("c", "b", "eu")); // grows onto the other bridge
        let p = &f.conferences()["c"];
        assert_eq!(p.links.len(), 1);
        let old = p.links.values().next().unwrap().clone();
        let restarted = p.participants["b"].bridge.clone();
        let other = p.participants["a"].bridge.clone();
        let plans = register(&mut f, &restarted, "eu");
        assert_eq!(plans.len(), 1);
        let calls = &plans[0].calls;
        // Both ends drop the old relay, then get new keys.
        let removes: Vec<&str> = calls
            .iter()
            .filter(|c| matches!(c.call, Call::RemoveRelay { .. }))
            .map(|c| c.bridge.as_str())
            .collect();
        assert!(removes.contains(&other.as_str()) && removes.contains(&restarted.as_str()));
        for c in calls {
            if let Call::AddRelay { tx_key, rx_key, .. } = &c.call {
                for k in [tx_key, rx_key] {
                    assert!(*k != old.first_tx && *k != old.second_tx, "old key reused");
                }
            }
        }
    }

    #[test]
    fn restored_placements_wait_for_their_bridges_then_move() {
        let mut snap = Snapshot::default();
        snap.placements.insert(
            "old".into(),
            Placement {
                bridge: "gone".into(),
                participants: [(
                    "a".to_string(),
                    Participant {
                        region: "eu".into(),
                        ssrcs: vec![1],
                        remote_addr: String::new(),
                        srtp: None,
                        bridge: String::new(),
                        role: Role::Participant,
                    },
                )]
                .into(),
                link: 1,
                links: BTreeMap::new(),
                broadcast: None,
            },
        );
        let mut f = Focus::new(&cfg(), snap, keys(), 0);
        f.register(Bridge::new("eu-1", "a", "m", "eu", 1000.0), 0)
            .unwrap();
        assert!(f.tick(2000).is_empty(), "within the grace");
        f.report("eu-1", 0.0, false, 2900);
        let plans = f.tick(3100);
        assert_eq!(plans.len(), 1);
        assert_eq!(plans[0].calls[0].bridge, "eu-1");
    }
}
