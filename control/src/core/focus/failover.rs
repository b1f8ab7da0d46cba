//! The fleet's changes as the focus sees them: registrations (a restarted bridge is re-keyed),
//! failover off dead bridges, drains (persisted), and reconciliation of what bridges hold.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use super::*;
use crate::core::fleet::{Bridge, BridgeId, Health, Registration};
use crate::store::{Change, DrainRecord, Participant, link_key};

impl Focus {
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
            // Its old copies still serve clients that have not switched: not empty yet.
            .filter(|b| !self.lingering.iter().any(|l| l.bridge == b.id))
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
                tracing::info!(bridge = %id, "bridge restarted (a new instance): re-keying its relays");
                // A new process has a new certificate and none of the DTLS sessions.
                self.strand_webrtc_on(&id);
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

    /// Strands every WebRTC participant on `bridge` (see [`Focus::take_stranded`]).
    fn strand_webrtc_on(&mut self, bridge: &str) {
        let Some(confs) = self.index.get(bridge) else {
            return;
        };
        for c in confs.keys() {
            let Some(p) = self.conferences.get(c) else {
                continue;
            };
            self.stranded.extend(
                p.on(bridge)
                    .filter(|(_, x)| x.webrtc.is_some())
                    .map(|(id, _)| (c.clone(), id.clone())),
            );
        }
    }

    /// Applies a persisted drain of `bridge` to its registration by process `instance`, or
    /// forgets it when a new process registered (a drain belongs to the process it was asked of).
    pub(super) fn restore_drain(&mut self, bridge: &str, instance: &str) {
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
    /// Conferences with an operation in flight are left alone. One plan per conference, which
    /// stays busy until it is done (so a failure stops only that conference's calls; the next
    /// reconciliation finishes them).
    pub fn reconcile(&mut self, bridge: &str, listing: Vec<(String, Vec<String>)>) -> Vec<Plan> {
        self.reconcile_skipping(bridge, listing).0
    }

    /// [`Focus::reconcile`], and whether conferences were left alone because an operation on
    /// them was in flight (the caller lists the bridge again later to finish the job).
    pub fn reconcile_skipping(
        &mut self,
        bridge: &str,
        listing: Vec<(String, Vec<String>)>,
    ) -> (Vec<Plan>, bool) {
        let skipped = listing.iter().any(|(c, _)| self.busy.contains(c));
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
        // One plan per conference, holding it busy: a join creating it again must not
        // interleave with its Delete.
        let mut by_conference: BTreeMap<String, Vec<BridgeCall>> = BTreeMap::new();
        for c in calls {
            let conference = match &c {
                Call::Remove { conference, .. } | Call::Delete { conference } => conference.clone(),
                _ => unreachable!("reconcile only removes"),
            };
            let call = self.call(bridge, c);
            by_conference.entry(conference).or_default().push(call);
        }
        let plans = by_conference
            .into_iter()
            .filter_map(|(c, calls)| self.cleanup(Some(&c), calls))
            .collect();
        (plans, skipped)
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
    /// conference on a down bridge (or, after the restart grace, on an unknown one) is moved;
    /// subscriptions whose speakers or placement changed are brought up to date.
    pub fn tick(&mut self, now_ms: u64) -> Vec<Plan> {
        self.last_tick_ms = now_ms;
        let mut plans = self.move_plans(now_ms);
        plans.extend(self.lingered(now_ms));
        plans.extend(self.sync_subscriptions());
        plans
    }

    /// Deletes the old copies of drained conferences whose linger is over (see
    /// [`super::FocusConfig::drain_linger_ms`]), and the muted relays to them: one cleanup
    /// plan for all of them, or none. A copy whose conference is busy waits; one whose
    /// conference is on that bridge again (a new process of it took the conference back, with
    /// relays of its own) or whose bridge is gone is dropped.
    fn lingered(&mut self, now_ms: u64) -> Option<Plan> {
        if self.lingering.is_empty() {
            return None;
        }
        let mut calls = Vec::new();
        let mut keep = Vec::new();
        for l in std::mem::take(&mut self.lingering) {
            if l.due > now_ms || self.busy.contains(&l.conference) {
                keep.push(l);
                continue;
            }
            let hosts = self
                .conferences
                .get(&l.conference)
                .map(|p| p.bridges())
                .unwrap_or_default();
            if hosts.contains(l.bridge.as_str()) {
                continue;
            }
            if self.fleet.get(&l.bridge).is_some() {
                calls.push(self.call(
                    &l.bridge,
                    Call::Delete {
                        conference: l.conference.clone(),
                    },
                ));
            }
            for s in l.relays_on.iter().filter(|s| hosts.contains(s.as_str())) {
                calls.push(self.call(
                    s,
                    Call::RemoveRelay {
                        conference: l.conference.clone(),
                        relay_id: l.bridge.clone(),
                    },
                ));
            }
        }
        self.lingering = keep;
        self.cleanup(None, calls)
    }

    /// The moves [`Focus::tick`] plans: off down bridges, bridges that never came back, and
    /// draining ones past their grace.
    fn move_plans(&mut self, now_ms: u64) -> Vec<Plan> {
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
            // WebRTC participants move only to bridges that take them (and then leave: see
            // `take_stranded`), so the move itself stays one move.
            let webrtc = p
                .participants
                .values()
                .any(|x| dead.contains(&x.bridge) && x.webrtc.is_some());
            let no_webrtc = self.webrtc_exclusions(webrtc).unwrap_or_default();
            let exclude: Vec<&str> = dead.iter().chain(&no_webrtc).map(String::as_str).collect();
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
    pub(super) fn move_plan(
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
        // A drain with a linger keeps the relays to the drained bridges, muted (see
        // `Lingering`); a failover drops them.
        let linger = reason == "drained" && self.drain_linger_ms > 0;
        // `to` still holding an old copy of the conference from its own drain.
        let to_lingers = self
            .lingering
            .iter()
            .any(|l| l.conference == conference && l.bridge == to);
        for s in &keep {
            for d in from {
                calls.push(self.call(
                    s,
                    // Not `to` itself: the moved receivers are there now, and what the old
                    // copy relayed to it would reach them twice (and its sender, back).
                    if linger && s != to {
                        Call::Subscribe {
                            conference: conference.into(),
                            target: SubTarget::Relay(d.clone()),
                            ssrcs: Some(Vec::new()),
                        }
                    } else {
                        Call::RemoveRelay {
                            conference: conference.into(),
                            relay_id: d.clone(),
                        }
                    },
                ));
            }
            if !to_hosts && s != to {
                if from.iter().any(|d| d == to) || to_lingers {
                    // The same bridge again (it may still hold its relay with the old keys).
                    calls.push(self.call(
                        to,
                        Call::RemoveRelay {
                            conference: conference.into(),
                            relay_id: s.clone(),
                        },
                    ));
                }
                if to_lingers {
                    // And the muted relay to its old copy.
                    calls.push(self.call(
                        s,
                        Call::RemoveRelay {
                            conference: conference.into(),
                            relay_id: to.into(),
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
            Op::Move(MoveOp {
                conference: conference.into(),
                from: from.to_vec(),
                to: to.into(),
                links,
                reason,
            }),
            calls,
        )
    }

    /// Commits or rolls back a finished move operation.
    pub(super) fn complete_move(
        &mut self,
        op: MoveOp,
        failure: Option<FocusError>,
        results: &[CallResult],
    ) -> Completion {
        let MoveOp {
            conference,
            from,
            to,
            links,
            reason,
        } = op;
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
                cleanup: self.cleanup(Some(&conference), undo),
            };
        }
        let p = self
            .conferences
            .get_mut(&conference)
            .expect("a busy conference stays placed");
        // The bridges that kept the conference, but `to` (their relays to `from` are muted on
        // a drain).
        let kept: Vec<BridgeId> = p
            .bridges_except(&from)
            .into_iter()
            .filter(|b| *b != to)
            .collect();
        let mut moved = Vec::new();
        let mut left = Vec::new();
        for (id, part) in p.participants.iter_mut() {
            if from.contains(&part.bridge) {
                left.push(std::mem::replace(&mut part.bridge, to.clone()));
                moved.push((id.clone(), part.clone()));
            }
        }
        let moved_count = moved.len() as u64;
        if !same {
            self.stranded.extend(
                moved
                    .iter()
                    .filter(|(_, x)| x.webrtc.is_some())
                    .map(|(id, _)| (conference.clone(), id.clone())),
            );
        }
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
            // A drained bridge keeps its copy a while for the clients that have not switched
            // yet (deleted by a later tick).
            let linger = reason == "drained" && self.drain_linger_ms > 0;
            for d in from.iter().filter(|_| linger) {
                self.lingering.push(Lingering {
                    due: self.last_tick_ms + self.drain_linger_ms,
                    conference: conference.clone(),
                    bridge: d.clone(),
                    relays_on: kept.clone(),
                });
            }
            // An old bridge may come back (a stopped process continued): remove what it
            // still holds. Best effort; it fails fast or times out if it is gone.
            for d in from.iter().filter(|_| !linger) {
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
            // The old bridges are no longer placed on: nothing interleaves with the tidy-up.
            cleanup: self.cleanup(None, tidy),
        }
    }
}
