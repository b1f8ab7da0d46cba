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

//!
//! The focus in files, by concern: [`plan`] (the calls, plans and completions it trades with the
//! executor), `conference` (joins and leaves, placement by region and load, Octo growth),
//! `failover` (registrations, failover, drain, reconciliation), `broadcast` (live streams),
//! `announce` (what watchers are told).

mod announce;
mod broadcast;
mod conference;
mod failover;
mod lastn;
pub mod plan;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use crate::core::fleet::{BridgeId, Fleet, Health, NoBridge, RegionThenLeastStress, Strategy};
use crate::store::{Change, DrainRecord, LinkKeys, Participant, Placement, Snapshot};

pub use announce::{Announcement, LISTED};
pub use broadcast::StreamView;
pub use lastn::{SubKey, Subscriptions};
pub use plan::*;

#[derive(Debug)]
enum Op {
    Join(Box<JoinOp>),
    Leave(LeaveOp),
    Move(MoveOp),
    /// Best-effort calls (an undo, a tidy-up); `Some(conference)` keeps that conference busy
    /// until they finish, so no join or leave interleaves with them (an undo's Delete landing
    /// after a retried join created the conference again would lose that join).
    Cleanup(Option<String>),
    /// An operation on a broadcast.
    Stream(Box<broadcast::StreamOp>),
    /// Subscriptions brought up to date.
    Sync(lastn::SyncOp),
}

/// A join in flight: what it adds if its calls succeed.
#[derive(Debug)]
struct JoinOp {
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
}

/// A leave in flight.
#[derive(Debug)]
struct LeaveOp {
    conference: String,
    participant_id: String,
    bridge: BridgeId,
}

/// A move in flight (failover, drain, or a bridge programmed again).
#[derive(Debug)]
struct MoveOp {
    conference: String,
    /// Bridges whose participants move.
    from: Vec<BridgeId>,
    to: BridgeId,
    links: Vec<(String, LinkKeys, BridgeId)>,
    /// "failover" (off a down bridge), "drained" (off a draining one) or "current" (back
    /// onto a bridge that registered again).
    reason: &'static str,
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
    /// How long the drained bridge keeps a moved conference's old copy after the move, ms:
    /// clients that have not switched to the new bridge yet still send and receive there
    /// (make before break, end to end). 0 deletes it at once.
    pub drain_linger_ms: u64,
    /// Edges one bridge (the origin, or an edge for the next tier) feeds per broadcast.
    pub stream_fanout: usize,
    /// Viewers of one broadcast an edge takes before the next viewer goes to another edge.
    pub max_viewers_per_edge: usize,
}

/// Fills a buffer with secret random bytes (SRTP keys).
pub type KeySource = Box<dyn FnMut(&mut [u8]) + Send>;

/// The old copy of a conference that a drained bridge keeps for its linger (see
/// [`FocusConfig::drain_linger_ms`]).
#[derive(Debug)]
pub(super) struct Lingering {
    /// When it is deleted, ms.
    due: u64,
    conference: String,
    /// The drained bridge that holds it.
    bridge: BridgeId,
    /// Bridges that keep their relay to it for the linger, so what clients that have not
    /// switched yet send to the old copy still reaches the receivers there: a conference's
    /// other bridges (but the one its participants moved to), their relays muted (they send
    /// nothing over them); a broadcast's edges that pull from the new origin now (a drained
    /// origin). The relays go with the copy.
    relays_on: Vec<BridgeId>,
}

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
    drain_linger_ms: u64,
    /// Old copies of conferences moved off draining bridges, deleted at their time. See
    /// [`FocusConfig::drain_linger_ms`].
    lingering: Vec<Lingering>,
    /// The time of the last [`Focus::tick`], ms.
    last_tick_ms: u64,
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
    /// WebRTC participants whose bridge changed (a move) or restarted: their DTLS session is
    /// gone, so they are to leave (see [`Focus::take_stranded`]).
    stranded: Vec<(String, String)>,
    /// Each conference's speakers (once someone's audio level was reported).
    speakers: HashMap<String, crate::core::speakers::Speakers>,
    /// What each conference's bridges hold of its subscriptions, when known.
    subs_programmed: HashMap<String, Subscriptions>,
    /// Conferences whose subscriptions are to be looked at by the next sync.
    subs_dirty: BTreeSet<String>,
    /// Conferences where some subscription differs from the default (synced even when that
    /// ends, to put the defaults back).
    subs_active: BTreeSet<String>,
    /// Conferences with a subscription sync in flight (one at a time each; syncs do not make
    /// a conference busy: joins and moves go on, and mark it for another sync).
    subs_syncing: HashSet<String>,
    /// Placement changes per conference, so a sync that crossed one does not record stale state.
    subs_epoch: HashMap<String, u64>,
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
        // After a restart or a takeover nothing is known of the bridges' subscriptions.
        let subs_dirty = conferences
            .iter()
            .filter(|(_, p)| p.broadcast.is_none())
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
            drain_linger_ms: cfg.drain_linger_ms,
            lingering: Vec::new(),
            last_tick_ms: now_ms,
            next_drain_scan_ms: 0,
            max_per_bridge: cfg.max_per_bridge.max(1),
            stress_threshold: cfg.stress_threshold,
            next_link,
            downed: Vec::new(),
            awaiting,
            index,
            drains,
            taken: 0,
            stranded: Vec::new(),
            speakers: HashMap::new(),
            subs_programmed: HashMap::new(),
            subs_dirty,
            subs_active: BTreeSet::new(),
            subs_syncing: HashSet::new(),
            subs_epoch: HashMap::new(),
        }
    }

    /// WebRTC participants (conference, participant id) stranded since the last call: moved to
    /// another bridge, or on a bridge that restarted. A WebRTC session cannot follow its
    /// participant: the client's ICE checks and DTLS session are bound to the bridge (its address
    /// and certificate) the answer named. The caller makes them leave; their clients start a new
    /// session (a WHEP player re-POSTs, as on any failure).
    pub fn take_stranded(&mut self) -> Vec<(String, String)> {
        std::mem::take(&mut self.stranded)
    }

    /// Bridges a WebRTC participant must not be placed on (they registered no DTLS
    /// fingerprint), or why none can take it. Empty for other participants.
    fn webrtc_exclusions(&self, webrtc: bool) -> Result<Vec<BridgeId>, NoBridge> {
        if !webrtc {
            return Ok(Vec::new());
        }
        let all = self.fleet.iter().count();
        let without: Vec<BridgeId> = self
            .fleet
            .iter()
            .filter(|b| !b.takes_webrtc())
            .map(|b| b.id.clone())
            .collect();
        match all {
            0 => Err(NoBridge::NoneRegistered),
            n if without.len() == n => Err(NoBridge::NoWebRtc(n)),
            _ => Ok(without),
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

    /// Starts best-effort `calls`; with `conference`, it stays busy until they finish, so
    /// then the calls to a bridge that is down are left out: its state is gone, or reconciled
    /// when it registers again, and a call to a hung one would hold the conference until its
    /// deadline (found by the chaos soak: a join's undo on a hung bridge held its conference's
    /// failover 2 s).
    fn cleanup(&mut self, conference: Option<&str>, mut calls: Vec<BridgeCall>) -> Option<Plan> {
        if conference.is_some() {
            calls.retain(|c| {
                self.fleet
                    .get(&c.bridge)
                    .is_none_or(|b| b.health != Health::Down)
            });
        }
        (!calls.is_empty()).then(|| {
            let op = Op::Cleanup(conference.map(String::from));
            self.start(conference, op, calls)
        })
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
        let conference = match &state {
            Op::Join(op) => Some(op.conference.clone()),
            Op::Leave(op) => Some(op.conference.clone()),
            Op::Move(op) => Some(op.conference.clone()),
            Op::Stream(_) | Op::Cleanup(_) | Op::Sync(_) => None,
        };
        let done = match state {
            Op::Sync(op) => return self.complete_sync(op, failure),
            Op::Stream(op) => self.complete_stream(*op, failure),
            Op::Cleanup(conference) => {
                if let Some(c) = conference {
                    self.busy.remove(&c);
                }
                Completion {
                    result: match failure {
                        None => Ok(Done::CleanedUp),
                        Some(e) => Err(e),
                    },
                    cleanup: None,
                }
            }
            Op::Join(op) => self.complete_join(*op, failure, calls, results),
            Op::Leave(op) => self.complete_leave(op, failure),
            Op::Move(op) => self.complete_move(op, failure, results),
        };
        if let Some(c) = conference {
            self.subscriptions_changed(&c);
        }
        done
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_lastn;
#[cfg(test)]
mod tests_webrtc;
