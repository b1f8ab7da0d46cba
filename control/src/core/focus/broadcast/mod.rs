//! Broadcasts (live streams) in the focus: one publisher on an *origin* bridge, viewers on
//! *edge* bridges near them, as in SRS's origin/edge clusters. A broadcast is a placement with
//! [`Broadcast`] state; its participants are its publisher and viewers, and its relays follow
//! the [`PullTree`] instead of Octo's full mesh:
//!
//! - A viewer goes to a bridge of the broadcast in its region that has room, else to an edge
//!   by [`stream::pick_edge`] (region, then load; the origin only when nothing else can take
//!   it). An edge pulls (a relay, `downstream` on the parent's side) on its first viewer and
//!   stops with its last; beyond `stream_fanout` pulls per bridge new edges pull from an edge.
//! - A viewer that joins before the publisher waits on its edge: the join succeeds, and the
//!   pulls are programmed when the publisher arrives.
//! - Failover: an edge's viewers move to another edge and the edges that pulled from it
//!   re-attach; a dead origin's publisher moves to a new origin and the first tier pulls from it.
//!
//! Every operation is one [`StreamOp`]: the participants, tree and links it sets, the calls
//! that undo it if it fails, and what to announce. Committing applies exactly that.

mod commit;
mod moves;

use std::collections::{BTreeSet, HashSet};

use super::{
    BridgeCall, Call, CallError, Completion, Done, Focus, FocusError, JoinRequest, Op, Plan,
};
use crate::core::fleet::{Bridge, BridgeId, Health, NoBridge, corrected_stress};
use crate::core::pulltree::{self, Pull, PullTree};
use crate::store::{Broadcast, Change, LinkKeys, Participant, Placement, Role, SrtpKeys, link_key};

/// A broadcast's publisher and pull tree, as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamView {
    /// The publisher's bridge; empty while there is no publisher.
    pub origin: String,
    /// The publisher's id; empty while there is none.
    pub publisher: String,
    /// Who pulls from whom: (edge, from, tier, viewers on the edge).
    pub pulls: Vec<(BridgeId, BridgeId, usize, usize)>,
}

/// What a broadcast operation produced.
#[derive(Debug)]
pub(super) enum Outcome {
    Joined {
        bridge: BridgeId,
        participant_id: String,
    },
    Left,
    Moved {
        from: Vec<BridgeId>,
        to: BridgeId,
    },
}

/// One planned operation on a broadcast; see the module docs.
#[derive(Debug)]
pub(super) struct StreamOp {
    conference: String,
    /// The broadcast is new (first join).
    created: bool,
    link: u32,
    /// Participants set (joined or moved) or removed.
    people: Vec<(String, Option<Participant>)>,
    /// The pull tree after the operation: `None` when it does not change (most viewer joins
    /// and leaves), `Some(None)` when it goes (no publisher).
    tree: Option<Option<PullTree>>,
    /// Relay links added or removed.
    links: Vec<(String, Option<LinkKeys>)>,
    /// Calls that undo what the plan added, if it fails.
    undo: Vec<BridgeCall>,
    outcome: Outcome,
    /// Announced on WatchConference.
    reason: Option<&'static str>,
    /// Commit even if a bridge did not answer (a leave: nobody stays in on a dead bridge).
    lenient: bool,
    /// Participants moved, for the failover/drain counters.
    moved: u64,
    /// The publisher's id, when it joins.
    publisher: Option<String>,
    /// Bridges to clear after the commit (best effort: they may be gone).
    tidy: Vec<BridgeId>,
    /// Drained bridges whose copy lingers after the commit instead, with the edges that keep
    /// their relay from it meanwhile (see `Lingering`).
    linger: Vec<(BridgeId, Vec<BridgeId>)>,
}

/// The calls and link changes of a set of [`Pull`]s.
#[derive(Default)]
struct PullCalls {
    adds: Vec<BridgeCall>,
    removes: Vec<BridgeCall>,
    undo: Vec<BridgeCall>,
    links: Vec<(String, Option<LinkKeys>)>,
}

/// The bridges the added pulls of `pulls` join (edge and parent each).
fn pulled(pulls: &[Pull]) -> impl Iterator<Item = &str> {
    pulls
        .iter()
        .flat_map(|p| match p {
            Pull::Add { edge, from } => Some([edge.as_str(), from.as_str()]),
            Pull::Remove { .. } => None,
        })
        .flatten()
}

impl Focus {
    /// Participants of `conference` on `bridge` (its publisher included), from the index.
    fn count_on(&self, conference: &str, bridge: &str) -> usize {
        self.index
            .get(bridge)
            .and_then(|c| c.get(conference))
            .copied()
            .unwrap_or(0)
    }

    /// Viewers of `conference` on `bridge` (the publisher is on the origin of `tree`).
    fn viewers_on(&self, conference: &str, tree: Option<&PullTree>, bridge: &str) -> usize {
        let n = self.count_on(conference, bridge);
        let publisher = tree.is_some_and(|t| t.origin() == bridge);
        n - usize::from(publisher && n > 0)
    }

    /// Whether `bridge` holds `conference`: participants there, or a place in its tree.
    fn hosts(&self, conference: &str, tree: Option<&PullTree>, bridge: &str) -> bool {
        self.count_on(conference, bridge) > 0 || tree.is_some_and(|t| t.contains(bridge))
    }

    /// Bridges with participants of `conference` (one walk over the index's bridges).
    fn with_participants(&self, conference: &str) -> Vec<BridgeId> {
        self.index
            .iter()
            .filter(|(_, c)| c.contains_key(conference))
            .map(|(b, _)| b.clone())
            .collect()
    }

    /// Refuses while `bridge` does not answer (the broadcast is being repaired first).
    fn require_up(&self, conference: &str, bridge: &str) -> Result<(), FocusError> {
        let b = self.fleet.get(bridge);
        match b.map(|b| b.health) {
            Some(Health::Up) => Ok(()),
            h => Err(FocusError::BridgeUnavailable {
                conference: conference.into(),
                state: h.map_or("not registered", Health::name),
                why: b.map(|b| b.why.clone()).unwrap_or_default(),
                bridge: bridge.into(),
            }),
        }
    }

    /// The edge for a viewer of `conference` from `region`: a bridge of the broadcast in the
    /// region with room (under the stress threshold and `max_viewers_per_edge`: its pull is
    /// shared), else [`stream::pick_edge`]; never one of `exclude`, and the origin only when
    /// no edge can take the viewer. With `must_fit` (a drain) nothing without room;
    /// otherwise, as for conferences, the least loaded when none has room. Costs a walk over
    /// the fleet, not over the viewers.
    /// `tree` is the broadcast's (or the one a failover is building). Returns the edge and the
    /// streams the viewer adds there, to count with `Fleet::placed`.
    fn viewer_edge(
        &self,
        conference: &str,
        tree: Option<&PullTree>,
        region: &str,
        exclude: &[BridgeId],
        must_fit: bool,
    ) -> Result<(BridgeId, u32), FocusError> {
        let origin = tree.map_or("", PullTree::origin);
        let per = self.fleet.per_participant_pps;
        let threshold = self.stress_threshold;
        let cap = self.max_viewers_per_edge;
        let open = |b: &&Bridge| b.health == Health::Up && !b.draining && !exclude.contains(&b.id);
        let room = |b: &&Bridge| open(b) && self.viewers_on(conference, tree, &b.id) < cap;
        let not_origin = |b: &&Bridge| b.id != origin;
        let hosting = self
            .fleet
            .iter()
            // Cheapest tests first: this runs for every viewer.
            .filter(|b| b.region == region && b.id != origin)
            .filter(|b| corrected_stress(b, per) < threshold)
            .filter(room)
            .filter(|b| self.hosts(conference, tree, &b.id))
            .min_by(|a, b| {
                corrected_stress(a, per)
                    .total_cmp(&corrected_stress(b, per))
                    .then_with(|| a.id.cmp(&b.id))
            })
            .map(|b| b.id.clone());
        let pick = |f: &dyn Fn(&&Bridge) -> bool, limit: f64| {
            pulltree::pick_edge(self.fleet.iter().filter(f), origin, region, per, limit)
        };
        let chosen = hosting
            .or_else(|| pick(&|b| room(b) && not_origin(b), threshold))
            .or_else(|| {
                (!must_fit)
                    .then(|| pick(&|b| open(b) && not_origin(b), f64::INFINITY))
                    .flatten()
            })
            .or_else(|| pick(&room, threshold))
            .or_else(|| (!must_fit).then(|| pick(&open, f64::INFINITY)).flatten());
        let hosted = chosen
            .as_ref()
            .is_some_and(|id| self.hosts(conference, tree, id));
        let up = self.fleet.iter().filter(open).count();
        match chosen {
            // A viewer adds one stream out; a new pull one in.
            Some(id) => Ok((id, if hosted { 1 } else { 2 })),
            None if self.fleet.iter().next().is_none() => Err(NoBridge::NoneRegistered.into()),
            None => Err(NoBridge::AllOverloaded(up).into()),
        }
    }

    /// The origin for a publisher from `region`, by the usual rules, never one of `exclude`.
    /// The publisher's region comes first, as Jicofo and SRS place a stream's source near its
    /// sender: a bridge of the region without viewers (`busy`) if possible, else one of the
    /// region that serves viewers (it is then their edge and the origin), and another region
    /// (one without viewers first) only when the region has no bridge that can take it. An
    /// origin abroad would send the stream across and back for the region's own viewers.
    fn origin_for(
        &mut self,
        region: &str,
        exclude: &[BridgeId],
        busy: &[BridgeId],
    ) -> Result<BridgeId, FocusError> {
        let abroad: Vec<BridgeId> = self
            .fleet
            .iter()
            .filter(|b| b.region != region)
            .map(|b| b.id.clone())
            .collect();
        let abroad = &abroad[..];
        for t in [
            [exclude, abroad, busy].concat(),
            [exclude, abroad].concat(),
            [exclude, busy].concat(),
        ] {
            let t: Vec<&str> = t.iter().map(String::as_str).collect();
            if let Ok(b) = self.fleet.select(self.strategy.as_ref(), region, &t) {
                return Ok(b);
            }
        }
        let ex: Vec<&str> = exclude.iter().map(String::as_str).collect();
        Ok(self.fleet.select(self.strategy.as_ref(), region, &ex)?)
    }

    /// Creates `conference` on those of `bridges` that do not hold it yet.
    fn creates<'a>(
        &self,
        conference: &str,
        tree: Option<&PullTree>,
        bridges: impl IntoIterator<Item = &'a str>,
    ) -> Vec<BridgeCall> {
        let new: BTreeSet<&str> = bridges
            .into_iter()
            .filter(|b| !self.hosts(conference, tree, b))
            .collect();
        new.into_iter()
            .map(|b| {
                self.call(
                    b,
                    Call::Create {
                        conference: conference.into(),
                    },
                )
            })
            .collect()
    }

    /// Plans a Join of a broadcast's publisher or viewer (`exists`: the broadcast is placed).
    pub(super) fn join_broadcast(
        &mut self,
        req: JoinRequest,
        srtp: Option<SrtpKeys>,
        exists: bool,
    ) -> Result<Plan, FocusError> {
        let conf = req.conference.clone();
        let placed = self.conferences.get(&conf);
        if placed.is_some_and(|p| p.broadcast.is_none()) {
            return Err(FocusError::Invalid {
                field: "role",
                why: format!("{conf:?} is a conference, not a broadcast: join it as a participant"),
            });
        }
        let published = placed.and_then(Placement::tree).is_some();
        match req.role {
            Role::Participant => {
                return Err(FocusError::Invalid {
                    field: "role",
                    why: format!("{conf:?} is a broadcast: join it as a publisher or a viewer"),
                });
            }
            Role::Viewer if !req.ssrcs.is_empty() => {
                return Err(FocusError::Invalid {
                    field: "ssrcs",
                    why: "a viewer sends no media: declare none (its RTCP needs none)".into(),
                });
            }
            Role::Viewer if req.remote_addr.is_empty() && req.webrtc.is_none() => {
                return Err(FocusError::Invalid {
                    field: "remote_addr",
                    why: "a viewer needs its address: it sends no RTP to be latched by".into(),
                });
            }
            Role::Publisher if req.ssrcs.is_empty() => {
                return Err(FocusError::Invalid {
                    field: "ssrcs",
                    why: "a publisher declares the SSRCs it sends".into(),
                });
            }
            Role::Publisher if published => {
                let id = self
                    .publisher_of(&conf)
                    .map(|(id, _)| id)
                    .unwrap_or_default();
                return Err(FocusError::Exists(format!(
                    "role: broadcast {conf:?} already has publisher {id:?}"
                )));
            }
            Role::Publisher | Role::Viewer => {}
        }
        let link = match placed {
            Some(p) => p.link,
            None => {
                self.next_link = self.next_link.wrapping_add(1).max(1);
                self.next_link
            }
        };
        // A WebRTC participant goes only to a bridge with a DTLS fingerprint.
        let no_webrtc = self.webrtc_exclusions(req.webrtc.is_some())?;
        // The tree after the join, when it changes.
        let mut new_tree: Option<PullTree> = None;
        let (bridge, pulls) = if req.role == Role::Publisher {
            let busy = self.with_participants(&conf);
            for b in &busy {
                self.require_up(&conf, b)?; // every waiting edge gets a pull
            }
            let origin = self.origin_for(&req.region, &no_webrtc, &busy)?;
            let mut t = PullTree::new(&origin, self.stream_fanout);
            // Viewers waiting on their edges: each edge pulls (one walk over the viewers, once
            // per publisher).
            let mut waiting: Vec<(&str, &str)> = self
                .conferences
                .get(&conf)
                .into_iter()
                .flat_map(|p| p.participants.values())
                .map(|x| (x.bridge.as_str(), x.region.as_str()))
                .collect();
            waiting.sort_unstable();
            waiting.dedup_by_key(|(b, _)| *b);
            let mut pulls = Vec::new();
            for (edge, region) in waiting {
                pulls.extend(t.viewer_joined(edge, region));
            }
            new_tree = Some(t);
            (origin, pulls)
        } else {
            let tree = placed.and_then(Placement::tree);
            if let Some(t) = tree {
                self.require_up(&conf, t.origin())?;
            }
            let (edge, streams) = self.viewer_edge(&conf, tree, &req.region, &no_webrtc, false)?;
            self.fleet.placed(&edge, streams);
            let tree = self.conferences.get(&conf).and_then(Placement::tree);
            let mut pulls = Vec::new();
            if let Some(t) = tree.filter(|t| !t.contains(&edge)) {
                let mut t = t.clone();
                pulls = t.viewer_joined(&edge, &req.region);
                for p in &pulls {
                    if let Pull::Add { from, .. } = p {
                        self.require_up(&conf, from)?;
                    }
                }
                new_tree = Some(t);
            }
            (edge, pulls)
        };
        let old_tree = self.conferences.get(&conf).and_then(Placement::tree);
        let nodes = std::iter::once(bridge.as_str()).chain(pulled(&pulls));
        let mut calls = self.creates(&conf, old_tree, nodes);
        let created_on: Vec<BridgeId> = calls.iter().map(|c| c.bridge.clone()).collect();
        let pc = self.pull_calls(&conf, link, &pulls, &[]);
        calls.extend(pc.adds);
        let participant = Participant {
            region: req.region,
            ssrcs: req.ssrcs,
            remote_addr: req.remote_addr,
            srtp,
            bridge: bridge.clone(),
            role: req.role,
            webrtc: req.webrtc.map(Box::new),
            rewrite: req.rewrite.map(Box::new),
            media: req.media.map(Box::new),
            subscription: req.subscription,
            last_n: req.last_n,
            owner: req.owner,
        };
        calls.push(self.call(
            &bridge,
            Call::Add {
                conference: conf.clone(),
                endpoint: req.participant_id.clone(),
                participant: participant.clone(),
                if_absent: false,
            },
        ));
        let mut undo = pc.undo;
        if !created_on.contains(&bridge) {
            undo.push(self.call(
                &bridge,
                Call::Remove {
                    conference: conf.clone(),
                    endpoint: req.participant_id.clone(),
                },
            ));
        }
        for b in &created_on {
            undo.push(self.call(
                b,
                Call::Delete {
                    conference: conf.clone(),
                },
            ));
        }
        let reason = if !exists {
            Some("placed")
        } else if req.role == Role::Publisher {
            Some("published")
        } else if !pulls.is_empty() || !created_on.is_empty() {
            Some("pulled")
        } else {
            None
        };
        let op = StreamOp {
            conference: conf.clone(),
            created: !exists,
            link,
            people: vec![(req.participant_id.clone(), Some(participant))],
            tree: new_tree.map(Some),
            links: pc.links,
            undo,
            outcome: Outcome::Joined {
                bridge,
                participant_id: req.participant_id.clone(),
            },
            reason,
            lenient: false,
            moved: 0,
            tidy: Vec::new(),
            linger: Vec::new(),
            publisher: (req.role == Role::Publisher).then(|| req.participant_id.clone()),
        };
        Ok(self.start(Some(&conf), Op::Stream(Box::new(op)), calls))
    }

    /// Plans a Leave from a broadcast: a viewer's edge stops pulling with its last viewer; the
    /// publisher's leaving takes the whole tree down (its viewers wait for the next one).
    pub(super) fn leave_broadcast(&mut self, conference: &str, participant_id: &str) -> Plan {
        let p = &self.conferences[conference];
        let part = p.participants[participant_id].clone();
        let link = p.link;
        let old = p.tree();
        // Participants on `b` once this one has left.
        let after = |f: &Self, b: &str| f.count_on(conference, b) - usize::from(b == part.bridge);
        let mut new_tree: Option<Option<PullTree>> = None;
        let mut pulls = Vec::new();
        let mut touched: Vec<String> = vec![part.bridge.clone()];
        if part.role == Role::Publisher {
            if let Some(t) = old {
                pulls = t
                    .edges()
                    .map(|(e, f)| Pull::Remove {
                        edge: e.into(),
                        from: f.into(),
                    })
                    .collect();
                new_tree = Some(None);
            }
        } else if let Some(t) =
            old.filter(|t| t.contains(&part.bridge) && after(self, &part.bridge) == 0)
        {
            // Only edges are asked about (never the origin, where the publisher is).
            let mut t = t.clone();
            pulls = t.viewer_left(&part.bridge, |b| after(self, b));
            new_tree = Some(Some(t));
        }
        for p in &pulls {
            if let Pull::Remove { edge, from } = p {
                touched.extend([edge.clone(), from.clone()]);
            }
        }
        let tree_after = match &new_tree {
            Some(t) => t.as_ref(),
            None => old,
        };
        // Bridges left with neither participants nor a place in the tree leave the broadcast.
        let mut gone: Vec<BridgeId> = touched
            .into_iter()
            .filter(|b| after(self, b) == 0 && !tree_after.is_some_and(|t| t.contains(b)))
            .collect();
        gone.sort();
        gone.dedup();
        let up = |f: &Self, b: &str| f.fleet.get(b).is_some_and(|b| b.health != Health::Down);
        let mut calls = Vec::new();
        if !gone.contains(&part.bridge) && up(self, &part.bridge) {
            calls.push(self.call(
                &part.bridge,
                Call::Remove {
                    conference: conference.into(),
                    endpoint: participant_id.into(),
                },
            ));
        }
        let pc = self.pull_calls(conference, link, &pulls, &gone);
        calls.extend(pc.removes);
        for b in &gone {
            if up(self, b) {
                calls.push(self.call(
                    b,
                    Call::Delete {
                        conference: conference.into(),
                    },
                ));
            }
        }
        let reason = if part.role == Role::Publisher {
            Some("unpublished")
        } else if !pulls.is_empty() {
            Some("pulled")
        } else {
            None
        };
        let op = StreamOp {
            conference: conference.into(),
            created: false,
            link,
            people: vec![(participant_id.into(), None)],
            tree: new_tree,
            links: pc.links,
            undo: Vec::new(),
            outcome: Outcome::Left,
            reason,
            lenient: true,
            moved: 0,
            tidy: Vec::new(),
            linger: Vec::new(),
            publisher: None,
        };
        self.start(Some(conference), Op::Stream(Box::new(op)), calls)
    }

    /// A broadcast's publisher.
    fn publisher_of(&self, conference: &str) -> Option<(String, Participant)> {
        let p = &self.conferences[conference];
        let id = p.broadcast.as_ref()?.publisher.as_ref()?;
        Some((id.clone(), p.participants.get(id)?.clone()))
    }

    /// Broadcasts, pulls over all of them, and the deepest tier of any (for metrics).
    pub fn broadcast_totals(&self) -> (usize, usize, usize) {
        let trees = || {
            self.broadcasts
                .iter()
                .filter_map(|c| self.conferences.get(c)?.tree())
        };
        (
            self.broadcasts.len(),
            trees().map(|t| t.edges().count()).sum(),
            trees().map(PullTree::deepest).max().unwrap_or(0),
        )
    }

    /// Bridges that are the origin or an edge of some broadcast's pull tree.
    pub(super) fn tree_nodes(&self) -> HashSet<&str> {
        self.broadcasts
            .iter()
            .filter_map(|c| self.conferences.get(c)?.tree())
            .flat_map(|t| std::iter::once(t.origin()).chain(t.edges().map(|(e, _)| e)))
            .collect()
    }

    /// The stream part of an announcement.
    pub(super) fn stream_view(&self, conference: &str, p: &Placement) -> Option<StreamView> {
        p.broadcast.as_ref()?;
        let publisher = p.broadcast.as_ref().and_then(|b| b.publisher.clone());
        Some(StreamView {
            origin: p.tree().map(|t| t.origin().to_string()).unwrap_or_default(),
            publisher: publisher.unwrap_or_default(),
            pulls: p
                .tree()
                .map(|t| {
                    t.edges()
                        .map(|(e, f)| {
                            let viewers = self
                                .index
                                .get(e)
                                .and_then(|c| c.get(conference))
                                .copied()
                                .unwrap_or(0);
                            (e.into(), f.into(), t.tier(e).unwrap_or(0), viewers)
                        })
                        .collect()
                })
                .unwrap_or_default(),
        })
    }

    /// The calls of `pulls` for `conference`: a pull is a relay whose parent side is
    /// `downstream`. Calls to `skip` bridges (dead ones) and to down bridges are left out.
    fn pull_calls(
        &mut self,
        conference: &str,
        link: u32,
        pulls: &[Pull],
        skip: &[BridgeId],
    ) -> PullCalls {
        let mut out = PullCalls::default();
        let reachable = |f: &Self, b: &str| {
            !skip.iter().any(|s| s == b) && f.fleet.get(b).is_some_and(|b| b.health != Health::Down)
        };
        for pull in pulls {
            match pull {
                Pull::Add { edge, from } => {
                    let keys = self.link_keys();
                    let [mut on_parent, on_edge] =
                        self.relay_calls(conference, link, from, edge, &keys);
                    if let Call::AddRelay { downstream, .. } = &mut on_parent.call {
                        *downstream = true;
                    }
                    out.adds.extend([on_parent, on_edge]);
                    for (on, other) in [(from, edge), (edge, from)] {
                        out.undo.push(self.call(
                            on,
                            Call::RemoveRelay {
                                conference: conference.into(),
                                relay_id: other.clone(),
                            },
                        ));
                    }
                    out.links.push((link_key(edge, from), Some(keys)));
                }
                Pull::Remove { edge, from } => {
                    for (on, other) in [(from, edge), (edge, from)] {
                        if reachable(self, on) {
                            out.removes.push(self.call(
                                on,
                                Call::RemoveRelay {
                                    conference: conference.into(),
                                    relay_id: other.clone(),
                                },
                            ));
                        }
                    }
                    out.links.push((link_key(edge, from), None));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{T, focus, ok, register, run_ok, shape};
    use super::super::{CallResult, JoinRequest};
    use super::*;

    fn viewer(s: &str, who: &str, region: &str) -> JoinRequest {
        JoinRequest {
            conference: s.into(),
            participant_id: who.into(),
            region: region.into(),
            ssrcs: vec![],
            remote_addr: "127.0.0.1:6000".into(),
            srtp: None,
            role: Role::Viewer,
            webrtc: None,
            rewrite: None,
            media: None,
            subscription: None,
            last_n: 0,
            owner: String::new(),
        }
    }

    fn publisher(s: &str, who: &str, region: &str) -> JoinRequest {
        JoinRequest {
            ssrcs: vec![100, 101],
            role: Role::Publisher,
            webrtc: None,
            rewrite: None,
            media: None,
            subscription: None,
            last_n: 0,
            owner: String::new(),
            ..viewer(s, who, region)
        }
    }

    fn tree(f: &Focus, s: &str) -> Vec<(String, String, usize)> {
        let v = f.stream_view(s, &f.conferences()[s]).unwrap();
        v.pulls.into_iter().map(|(e, p, t, _)| (e, p, t)).collect()
    }

    fn pull(e: &str, p: &str, tier: usize) -> (String, String, usize) {
        (e.into(), p.into(), tier)
    }

    fn with_ap(mut f: Focus) -> Focus {
        register(&mut f, "ap-1", "ap");
        register(&mut f, "ap-2", "ap");
        f
    }

    /// Three viewers (eu, us, ap) wait, then the publisher (eu) joins; fan-out 2.
    fn published_to_three_regions() -> Focus {
        let mut f = with_ap(focus());
        for (who, region) in [("v1", "eu"), ("v2", "us"), ("v3", "ap")] {
            let p = f.join(viewer("s", who, region), 0).unwrap();
            run_ok(&mut f, p);
        }
        let p = f.join(publisher("s", "pub", "eu"), 0).unwrap();
        run_ok(&mut f, p);
        f
    }

    #[test]
    fn viewers_wait_for_the_publisher_then_edges_pull_on_demand_in_tiers() {
        let mut f = with_ap(focus()); // stream_fanout 2
        // A viewer before any publisher: placed on an edge, and waits.
        let p = f.join(viewer("s", "v1", "eu"), 0).unwrap();
        assert_eq!(shape(&p), ["create@eu-1", "add v1@eu-1"]);
        run_ok(&mut f, p);
        assert_eq!(f.take_announcements()[0].reason, "placed");
        assert!(
            f.stream_view("s", &f.conferences()["s"])
                .unwrap()
                .origin
                .is_empty()
        );
        // The publisher: an origin in its region without viewers; the waiting edge pulls.
        let p = f.join(publisher("s", "pub", "eu"), 10).unwrap();
        assert_eq!(
            shape(&p),
            [
                "create@eu-2",
                "feed eu-1@eu-2",
                "relay to eu-2@eu-1",
                "add pub@eu-2"
            ]
        );
        run_ok(&mut f, p);
        let a = f.take_announcements();
        assert_eq!(a[0].reason, "published");
        assert_eq!(a[0].stream.as_ref().unwrap().origin, "eu-2");
        // A second eu viewer shares eu-1's pull: one call, nothing announced.
        let p = f.join(viewer("s", "v2", "eu"), 20).unwrap();
        assert_eq!(shape(&p), ["add v2@eu-1"]);
        run_ok(&mut f, p);
        assert!(f.take_announcements().is_empty());
        // A us viewer: us-1 pulls from the origin (its second and last pull).
        let p = f.join(viewer("s", "v3", "us"), 30).unwrap();
        assert_eq!(
            shape(&p),
            [
                "create@us-1",
                "feed us-1@eu-2",
                "relay to eu-2@us-1",
                "add v3@us-1"
            ]
        );
        run_ok(&mut f, p);
        // The origin feeds 2 edges: an ap edge pulls from an edge (tier 2).
        let p = f.join(viewer("s", "v4", "ap"), 40).unwrap();
        assert_eq!(
            shape(&p),
            [
                "create@ap-1",
                "feed ap-1@eu-1",
                "relay to eu-1@ap-1",
                "add v4@ap-1"
            ]
        );
        run_ok(&mut f, p);
        assert_eq!(
            tree(&f, "s"),
            [
                pull("ap-1", "eu-1", 2),
                pull("eu-1", "eu-2", 1),
                pull("us-1", "eu-2", 1)
            ]
        );
        assert_eq!(f.take_announcements()[0].reason, "pulled");
        // Its last viewer leaves: the pull goes, and the broadcast leaves the bridge.
        let p = f.leave("s", "v4").unwrap();
        assert_eq!(shape(&p), ["unrelay ap-1@eu-1", "delete@ap-1"]);
        run_ok(&mut f, p);
        assert_eq!(tree(&f, "s").len(), 2);
        assert!(!f.conferences()["s"].links.contains_key("ap-1|eu-1"));
        // The publisher leaves: the tree goes; viewers stay and wait; relay-free edges keep
        // their viewers.
        let p = f.leave("s", "pub").unwrap();
        let s = shape(&p);
        assert!(s.contains(&"delete@eu-2".to_string()), "{s:?}");
        assert!(s.contains(&"unrelay eu-2@eu-1".to_string()), "{s:?}");
        run_ok(&mut f, p);
        assert_eq!(f.take_announcements().last().unwrap().reason, "unpublished");
        assert!(f.conferences()["s"].links.is_empty());
        assert!(f.conferences()["s"].tree().is_none());
        for who in ["v1", "v2", "v3"] {
            let p = f.leave("s", who).unwrap();
            run_ok(&mut f, p);
        }
        assert!(f.conferences().is_empty());
        assert_eq!(f.take_announcements().last().unwrap().reason, "ended");
    }

    #[test]
    fn the_origin_is_in_the_publishers_region_even_on_a_bridge_with_viewers() {
        // eu-1, eu-2, us-1: viewers in us and eu first, so us-1 and eu-1 are edges and eu-2
        // is the only bridge without viewers.
        let mut f = focus();
        for (who, region) in [("v1", "us"), ("v2", "eu")] {
            let p = f.join(viewer("s", who, region), 0).unwrap();
            run_ok(&mut f, p);
        }
        assert_eq!(f.conferences()["s"].participants["v1"].bridge, "us-1");
        assert_eq!(f.conferences()["s"].participants["v2"].bridge, "eu-1");
        // A publisher from us: the origin is us-1 (its viewers get the stream there), not the
        // idle eu-2 across the ocean; only the eu edge pulls.
        let p = f.join(publisher("s", "pub", "us"), 10).unwrap();
        run_ok(&mut f, p);
        let s = &f.conferences()["s"];
        assert_eq!(s.participants["pub"].bridge, "us-1");
        assert_eq!(s.tree().unwrap().origin(), "us-1");
        assert_eq!(tree(&f, "s"), [pull("eu-1", "us-1", 1)]);
        // A publisher from a region without bridges still gets an idle bridge first.
        let mut f = focus();
        let p = f.join(viewer("t", "v1", "eu"), 0).unwrap();
        run_ok(&mut f, p);
        let p = f.join(publisher("t", "pub", "ap"), 10).unwrap();
        run_ok(&mut f, p);
        let origin = f.conferences()["t"].tree().unwrap().origin().to_string();
        assert_ne!(origin, "eu-1", "a bridge without viewers first");
    }

    #[test]
    fn a_dead_edge_moves_its_viewers_and_a_dead_origin_its_publisher() {
        let mut f = published_to_three_regions();
        let origin = f.conferences()["s"].bridge.clone();
        assert_eq!(origin, "eu-2");
        // Fan-out 2: the waiting edges pull in id order, the third from an edge.
        assert_eq!(
            tree(&f, "s"),
            [
                pull("ap-1", "eu-2", 1),
                pull("eu-1", "eu-2", 1),
                pull("us-1", "ap-1", 2)
            ]
        );
        f.take_announcements();
        // ap-1 dies: its viewer moves to an edge (not the origin), and us-1 re-attaches.
        f.probe("ap-1", Err("gone".into()));
        assert_eq!(f.probe("ap-1", Err("gone".into())), Some(Health::Down));
        let plans = f.tick(5);
        assert_eq!(plans.len(), 1);
        run_ok(&mut f, plans.into_iter().next().unwrap());
        // v3 stays in its region (ap-2), which pulls from an edge since the origin is full.
        assert_eq!(f.conferences()["s"].participants["v3"].bridge, "ap-2");
        assert_eq!(
            tree(&f, "s"),
            [
                pull("ap-2", "eu-1", 2),
                pull("eu-1", "eu-2", 1),
                pull("us-1", "eu-2", 1)
            ]
        );
        // eu-1 dies too.
        f.probe("eu-1", Err("gone".into()));
        assert_eq!(f.probe("eu-1", Err("gone".into())), Some(Health::Down));
        let plans = f.tick(10);
        assert_eq!(plans.len(), 1);
        let s = shape(&plans[0]);
        assert!(
            s.iter().all(|c| !c.ends_with("@eu-1")),
            "no call to the dead bridge: {s:?}"
        );
        run_ok(&mut f, plans.into_iter().next().unwrap());
        let p = &f.conferences()["s"];
        let v1 = &p.participants["v1"].bridge;
        assert!(v1 != "eu-1" && v1 != "eu-2", "{v1}");
        assert!(
            tree(&f, "s")
                .iter()
                .all(|(e, from, _)| e != "eu-1" && from != "eu-1")
        );
        assert!(
            f.conferences()["s"]
                .links
                .keys()
                .all(|k| !k.contains("eu-1"))
        );
        let a = f.take_announcements();
        assert_eq!(a[0].reason, "failover");
        // The origin dies: the publisher moves to a new origin, the first tier pulls from it.
        f.probe("eu-2", Err("gone".into()));
        f.probe("eu-2", Err("gone".into()));
        let plans = f.tick(20);
        assert_eq!(plans.len(), 1);
        run_ok(&mut f, plans.into_iter().next().unwrap());
        let p = &f.conferences()["s"];
        let new_origin = p.participants["pub"].bridge.clone();
        assert!(!["eu-1", "eu-2"].contains(&new_origin.as_str()));
        assert_eq!(p.tree().unwrap().origin(), new_origin);
        assert_eq!(p.bridge, new_origin);
        for (e, from, tier) in tree(&f, "s") {
            assert!(from != "eu-2" && e != "eu-2");
            assert!(tier >= 1);
        }
        // Every viewer is on a live bridge, on the tree or on the origin.
        let t = p.tree().unwrap();
        for v in ["v1", "v2", "v3"] {
            let b = &p.participants[v].bridge;
            assert!(t.contains(b), "{v} on {b}");
        }
        // The pulls' links match the tree exactly.
        let pairs: BTreeSet<String> = t.edges().map(|(e, p)| link_key(e, p)).collect();
        assert_eq!(p.links.keys().cloned().collect::<BTreeSet<_>>(), pairs);
    }

    #[test]
    fn a_draining_edge_gets_no_new_viewers_and_hands_its_own_over_after_the_grace() {
        let mut f = focus();
        let p = f.join(publisher("s", "pub", "eu"), 0).unwrap();
        run_ok(&mut f, p);
        let p = f.join(viewer("s", "v1", "eu"), 0).unwrap();
        assert_eq!(p.calls[0].bridge, "eu-2");
        run_ok(&mut f, p);
        f.drain("eu-2", 10).unwrap();
        // The next eu viewer goes to another edge (us-1), never to the draining one.
        let p = f.join(viewer("s", "v2", "eu"), 20).unwrap();
        run_ok(&mut f, p);
        assert_eq!(f.conferences()["s"].participants["v2"].bridge, "us-1");
        assert!(f.tick(10 + 2 * T - 1).is_empty(), "within the grace");
        let plans = f.tick(10 + 2 * T);
        assert_eq!(plans.len(), 1);
        // Break before make (found by the chaos soak: viewers got packets twice during a
        // drain): the draining edge's pull goes, and v1 leaves it, before v1 is added to its
        // new edge; nothing is added while the old path still streams.
        let s = shape(&plans[0]);
        let pos = |c: &str| {
            s.iter()
                .position(|x| x == c)
                .unwrap_or_else(|| panic!("{c} in {s:?}"))
        };
        assert!(pos("remove v1@eu-2") < pos("add v1@us-1"), "{s:?}");
        let first_add = s.iter().position(|x| x.starts_with("add ")).unwrap();
        let last_unrelay = s.iter().rposition(|x| x.starts_with("unrelay")).unwrap();
        assert!(last_unrelay < first_add, "old pulls first: {s:?}");
        run_ok(&mut f, plans.into_iter().next().unwrap());
        assert_eq!(f.conferences()["s"].participants["v1"].bridge, "us-1");
        assert_eq!(f.take_announcements().last().unwrap().reason, "drained");
        assert_eq!(tree(&f, "s"), [pull("us-1", "eu-1", 1)]);
        assert_eq!(f.drained(), ["eu-2"]);
    }

    #[test]
    fn a_drained_origin_lingers_and_its_edges_keep_pulling_from_it_until_then() {
        // Found by the chaos soak: the old origin's pulls went first, so what the publisher
        // sent before it switched to the new origin was lost (a 100-150 ms gap at every
        // viewer on each origin drain).
        let mut f = super::super::tests::lingering_focus_with(&[
            ("eu-1", "eu"),
            ("eu-2", "eu"),
            ("us-1", "us"),
        ]);
        for r in [publisher("s", "pub", "eu"), viewer("s", "v1", "us")] {
            let p = f.join(r, 0).unwrap();
            run_ok(&mut f, p);
        }
        let origin = f.conferences()["s"].participants["pub"].bridge.clone();
        let other = if origin == "eu-1" { "eu-2" } else { "eu-1" };
        assert_eq!(tree(&f, "s"), [pull("us-1", &origin, 1)]);
        f.drain(&origin, 10).unwrap();
        let plans = f.tick(10 + 2 * T);
        assert_eq!(plans.len(), 1);
        let s = shape(&plans[0]);
        assert!(!s.contains(&format!("unrelay {origin}@us-1")), "{s:?}");
        assert!(s.contains(&format!("relay to {other}@us-1")), "{s:?}");
        let p = plans.into_iter().next().unwrap();
        let c = f.complete(p.op, &p.calls, &ok(&p));
        assert!(c.result.is_ok(), "{:?}", c.result);
        assert_eq!(
            c.cleanup, None,
            "the old origin's copy stays for the linger"
        );
        assert_eq!(tree(&f, "s"), [pull("us-1", other, 1)]);
        assert!(f.drained().is_empty(), "its copy still serves");
        let plans = f.tick(10 + 2 * T + 1_000);
        assert_eq!(plans.len(), 1);
        assert_eq!(
            shape(&plans[0]),
            [format!("delete@{origin}"), format!("unrelay {origin}@us-1")]
        );
        run_ok(&mut f, plans.into_iter().next().unwrap());
        assert_eq!(f.drained(), [origin]);
    }

    #[test]
    fn a_broadcast_survives_a_restart_from_its_changes() {
        let mut f = published_to_three_regions();
        let mut snap = crate::store::Snapshot::default();
        for c in f.take_changes() {
            snap.apply(&c);
        }
        assert_eq!(snap.placements["s"], f.conferences()["s"]);
        let mut g = Focus::new(
            &super::super::tests::cfg(),
            snap,
            super::super::tests::keys(),
            0,
        );
        for (id, region) in [
            ("eu-1", "eu"),
            ("eu-2", "eu"),
            ("us-1", "us"),
            ("ap-1", "ap"),
            ("ap-2", "ap"),
        ] {
            let plans = register(&mut g, id, region);
            for p in plans {
                run_ok(&mut g, p);
            }
        }
        assert_eq!(tree(&g, "s"), tree(&f, "s"));
        assert_eq!(
            g.stream_view("s", &g.conferences()["s"]).unwrap().publisher,
            "pub"
        );
        assert_eq!(g.broadcast_totals(), (1, 3, 2));
        // And it goes on: the publisher leaves, the tree goes.
        let p = g.leave("s", "pub").unwrap();
        run_ok(&mut g, p);
        assert!(g.conferences()["s"].tree().is_none());
        assert!(g.conferences()["s"].links.is_empty());
    }

    #[test]
    fn bad_broadcast_joins_name_the_field() {
        let mut f = focus();
        let mut r = viewer("s", "v", "eu");
        r.ssrcs = vec![5];
        assert!(matches!(
            f.join(r, 0),
            Err(FocusError::Invalid { field: "ssrcs", .. })
        ));
        let mut r = viewer("s", "v", "eu");
        r.remote_addr.clear();
        assert!(matches!(
            f.join(r, 0),
            Err(FocusError::Invalid {
                field: "remote_addr",
                ..
            })
        ));
        let mut r = publisher("s", "p", "eu");
        r.ssrcs.clear();
        assert!(matches!(
            f.join(r, 0),
            Err(FocusError::Invalid { field: "ssrcs", .. })
        ));
        let p = f.join(publisher("s", "p", "eu"), 0).unwrap();
        run_ok(&mut f, p);
        let e = f.join(publisher("s", "q", "eu"), 0).unwrap_err();
        assert!(
            matches!(&e, FocusError::Exists(m) if m.starts_with("role:")),
            "{e:?}"
        );
        let mut r = viewer("s", "x", "eu");
        r.role = Role::Participant;
        r.ssrcs = vec![9];
        assert!(matches!(
            f.join(r, 0),
            Err(FocusError::Invalid { field: "role", .. })
        ));
        let p = f
            .join(super::super::tests::join("c", "a", "eu"), 0)
            .unwrap();
        run_ok(&mut f, p);
        assert!(matches!(
            f.join(viewer("c", "v", "eu"), 0),
            Err(FocusError::Invalid { field: "role", .. })
        ));
    }

    #[test]
    fn a_failed_pull_is_undone_and_nothing_is_committed() {
        let mut f = focus();
        let p = f.join(publisher("s", "p", "eu"), 0).unwrap();
        run_ok(&mut f, p);
        let p = f.join(viewer("s", "v", "us"), T).unwrap();
        let mut r: Vec<CallResult> = ok(&p);
        let n = r.len();
        r[n - 1] = Err(CallError::Invalid("no".into()));
        let c = f.complete(p.op, &p.calls, &r);
        assert!(c.result.is_err());
        let undo = shape(&c.cleanup.unwrap());
        assert!(undo.contains(&"delete@us-1".to_string()), "{undo:?}");
        assert!(undo.contains(&"unrelay us-1@eu-1".to_string()), "{undo:?}");
        assert!(
            f.conferences()["s"]
                .tree()
                .unwrap()
                .edges()
                .next()
                .is_none()
        );
        assert_eq!(f.conferences()["s"].participants.len(), 1);
    }

    #[test]
    fn a_restarted_bridge_gets_its_pulls_and_viewers_back_with_fresh_keys_on_both_sides() {
        let mut f = focus();
        let p = f.join(publisher("s", "p", "eu"), 0).unwrap();
        run_ok(&mut f, p);
        let p = f.join(viewer("s", "v", "us"), 0).unwrap();
        run_ok(&mut f, p);
        let old = f.conferences()["s"].links["eu-1|us-1"].clone();
        // us-1 comes back as a new process (no instance id: every registration is one).
        let plans = register(&mut f, "us-1", "us");
        assert_eq!(plans.len(), 1);
        assert_eq!(
            shape(&plans[0]),
            [
                "create@us-1",
                "unrelay us-1@eu-1",
                "unrelay eu-1@us-1",
                "feed us-1@eu-1",
                "relay to eu-1@us-1",
                "add v@us-1"
            ]
        );
        // Fresh keys on both sides, never the old process's; committed with the move.
        let sealing: Vec<Vec<u8>> = plans[0]
            .calls
            .iter()
            .filter_map(|c| match &c.call {
                Call::AddRelay { tx_key, .. } => Some(tx_key.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(sealing.len(), 2);
        for k in &sealing {
            assert!(
                *k != old.first_tx && *k != old.second_tx,
                "an old key reused"
            );
        }
        run_ok(&mut f, plans.into_iter().next().unwrap());
        let new = &f.conferences()["s"].links["eu-1|us-1"];
        assert_ne!(new, &old);
        assert!(sealing.contains(&new.first_tx) && sealing.contains(&new.second_tx));
    }

    #[test]
    fn the_same_bridge_process_registering_again_is_left_alone() {
        let mut f = focus();
        f.register(
            Bridge::new("x-1", "a", "m", "eu", 1000.0).with_instance("i1"),
            0,
        )
        .unwrap();
        assert!(
            f.register(
                Bridge::new("x-1", "a", "m", "eu", 1000.0).with_instance("i1"),
                1
            )
            .unwrap()
            .is_empty()
        );
    }
}
