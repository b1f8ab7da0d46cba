//! Conferences: joins and leaves, placement by region and load with a per-bridge cap and the
//! stress threshold, Octo growth onto more bridges with a full mesh of relays.

use std::collections::BTreeMap;

use super::*;
use crate::core::fleet::{Bridge, BridgeId, Health, NoBridge};
use crate::store::webrtc::is_ice_chars;
use crate::store::{Change, LinkKeys, Participant, Placement, Role, SrtpKeys, WebRtc, link_key};

/// Streams `group` participants add to a bridge holding `on` of their conference: each sends
/// one stream in, gets every other local one, and every local one gets theirs
/// (`(on + group)^2 - on^2`).
pub(super) fn streams(on: usize, group: usize) -> u32 {
    let (a, b) = (on as u64, (on + group) as u64);
    (b * b - a * a).min(u64::from(u32::MAX)) as u32
}

/// Relay key length (AES-128-GCM).
pub(super) const LINK_KEY_LEN: usize = 16;

/// Refuses WebRTC parameters a bridge would refuse, naming the field, before any bridge call.
fn check_webrtc(w: &WebRtc, req: &JoinRequest) -> Result<(), FocusError> {
    let bad = |field, why: &str| {
        Err(FocusError::Invalid {
            field,
            why: why.into(),
        })
    };
    if !is_ice_chars(&w.local_ufrag, 4) {
        return bad("webrtc.local_ufrag", "must be 4 to 256 ice-chars");
    }
    if !is_ice_chars(&w.local_pwd, 22) {
        return bad("webrtc.local_pwd", "must be 22 to 256 ice-chars");
    }
    if !is_ice_chars(&w.remote_ufrag, 4) {
        return bad("webrtc.remote_ufrag", "must be 4 to 256 ice-chars");
    }
    if w.remote_fingerprint.is_empty() || w.remote_fingerprint.len() > 256 {
        return bad("webrtc.remote_fingerprint", "must be 'sha-256 AB:CD:...'");
    }
    if !req.remote_addr.is_empty() {
        return bad(
            "remote_addr",
            "must be empty for a WebRTC participant: its ICE checks give its address",
        );
    }
    if req.srtp.is_some() {
        return bad(
            "srtp",
            "must be absent for a WebRTC participant: its DTLS handshake keys SRTP",
        );
    }
    Ok(())
}

impl Focus {
    /// Fresh keys for a relay link.
    pub(super) fn link_keys(&mut self) -> LinkKeys {
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
    pub(super) fn relay_calls(
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
    pub(super) fn withdraw<'a>(
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
    pub(super) fn choose(
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
                && crate::core::fleet::corrected_stress(b, per)
                    + streams(on(&b.id), group) as f64 * per / b.capacity.max(1.0)
                    < self.stress_threshold
        };
        // Participants the focus places on a bridge: between equally stressed bridges (idle
        // participants add no measured load, and a report resets the correction) the one
        // with fewer goes first, so idle conferences still spread.
        let placed = |b: &Bridge| {
            self.index
                .get(&b.id)
                .map_or(0, |m| m.values().sum::<usize>())
        };
        let least = |a: &&Bridge, b: &&Bridge| {
            crate::core::fleet::corrected_stress(a, per)
                .total_cmp(&crate::core::fleet::corrected_stress(b, per))
                .then_with(|| placed(a).cmp(&placed(b)))
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

    pub(super) fn srtp_keys(&mut self, offer: &SrtpOffer) -> Result<SrtpKeys, FocusError> {
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

    /// A Join that is already done: `req`'s participant is placed with exactly what `req` asks
    /// (SSRCs, address, region, role, SRTP profile and key). Its answer again, so a client may
    /// retry a Join whose answer it did not get (or that was refused as not yet durable).
    pub fn joined_as(&self, req: &JoinRequest) -> Option<Done> {
        let p = self.conferences.get(&req.conference)?;
        let x = p.participants.get(&req.participant_id)?;
        let same_srtp = match (&x.srtp, &req.srtp) {
            (None, None) => true,
            (Some(k), Some(o)) => k.profile == o.profile && k.endpoint_key == o.endpoint_key,
            _ => false,
        };
        (x.ssrcs == req.ssrcs
            && x.webrtc.as_deref() == req.webrtc.as_ref()
            && x.remote_addr == req.remote_addr
            && x.region == req.region
            && x.role == req.role
            && x.subscription == req.subscription
            && x.last_n == req.last_n
            && x.owner == req.owner
            && same_srtp)
            .then(|| Done::Joined {
                bridge: x.bridge.clone(),
                media_addr: self.media_addr(&x.bridge),
                srtp: x.srtp.clone(),
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
        if let Some(w) = &req.webrtc {
            check_webrtc(w, &req)?;
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
        let no_webrtc = self.webrtc_exclusions(req.webrtc.is_some())?;
        let exclude: Vec<&str> = no_webrtc.iter().map(String::as_str).collect();
        let bridge = self.choose(&req.conference, &req.region, &hosting, &exclude, 1, false)?;
        let grown = !created && !hosting.contains(&bridge);
        let participant = Participant {
            region: req.region,
            ssrcs: req.ssrcs,
            remote_addr: req.remote_addr,
            srtp,
            bridge: bridge.clone(),
            role: Role::Participant,
            webrtc: req.webrtc.map(Box::new),
            rewrite: req.rewrite.map(Box::new),
            media: req.media.map(Box::new),
            subscription: req.subscription,
            last_n: req.last_n,
            owner: req.owner,
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
            Op::Join(Box::new(JoinOp {
                conference,
                participant_id: req.participant_id,
                participant,
                bridge,
                created,
                grown,
                link,
                links,
            })),
            calls,
        ))
    }

    /// Plans telling the bridge of viewer `participant_id` of `conference` (a viewer of a
    /// simulcast publisher) the largest frame height it now wants (0: none). Its record keeps
    /// the height it joined with: after a move it starts from that again.
    pub fn set_max_height(
        &mut self,
        conference: &str,
        participant_id: &str,
        max_height: u32,
    ) -> Result<Plan, FocusError> {
        let p = self
            .conferences
            .get(conference)
            .ok_or_else(|| FocusError::NotFound("conference: not found".into()))?;
        let x = p.participants.get(participant_id).ok_or_else(|| {
            FocusError::NotFound(format!("participant_id: not in conference {conference:?}"))
        })?;
        if x.rewrite
            .as_ref()
            .and_then(|r| r.simulcast.as_ref())
            .is_none()
        {
            return Err(FocusError::Invalid {
                field: "max_height",
                why: "the session does not play a simulcast publisher".into(),
            });
        }
        let bridge = x.bridge.clone();
        let b = self.fleet.get(&bridge).ok_or_else(|| {
            FocusError::NotFound(format!("bridge {bridge:?} of the session is gone"))
        })?;
        let call = BridgeCall {
            bridge: bridge.clone(),
            api_addr: b.api_addr.clone(),
            call: Call::SimulcastLimit {
                conference: conference.into(),
                endpoint: participant_id.into(),
                max_height,
            },
        };
        Ok(self.start(None, Op::Cleanup(None), vec![call]))
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
            Op::Leave(LeaveOp {
                conference: conference.into(),
                participant_id: participant_id.into(),
                bridge,
            }),
            calls,
        ))
    }

    /// Commits or rolls back a finished join operation.
    pub(super) fn complete_join(
        &mut self,
        op: JoinOp,
        failure: Option<FocusError>,
        calls: &[BridgeCall],
        results: &[CallResult],
    ) -> Completion {
        let JoinOp {
            conference,
            participant_id,
            participant,
            bridge,
            created,
            grown,
            link,
            links,
        } = op;
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
                        conference: conference.clone(),
                        endpoint: participant_id,
                    },
                ));
            }
            return Completion {
                result: Err(e),
                cleanup: self.cleanup(Some(&conference), undo),
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

    /// Commits or rolls back a finished leave operation.
    pub(super) fn complete_leave(
        &mut self,
        op: LeaveOp,
        failure: Option<FocusError>,
    ) -> Completion {
        let LeaveOp {
            conference,
            participant_id,
            bridge,
        } = op;
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
                    let first: String = p.bridges().into_iter().next().unwrap_or_default().into();
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
}
