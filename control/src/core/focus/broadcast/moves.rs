//! A broadcast when its bridges change: moving a publisher or viewers off a dead or draining
//! bridge, and programming a broadcast again on a bridge that came back (fresh keys on every
//! pull it takes part in).

use super::*;

impl Focus {
    /// Plans moving a broadcast off `dead` bridges (down, or drained past the grace): edges'
    /// viewers go to another edge and the edges that pulled from a dead one re-attach; a dead
    /// origin's publisher goes to a new origin, which the first tier pulls from. `None` when
    /// there is nowhere to go yet (a drain waits for room; a failover retries on the next tick).
    pub(in crate::core::focus) fn move_broadcast(
        &mut self,
        conference: &str,
        dead: &[BridgeId],
        reason: &'static str,
    ) -> Option<Plan> {
        let must_fit = reason == "drained";
        let p = &self.conferences[conference];
        let link = p.link;
        let old = p.tree().cloned();
        let moving: Vec<(String, Participant)> = p
            .participants
            .iter()
            .filter(|(_, x)| dead.contains(&x.bridge) && x.role == Role::Viewer)
            .map(|(id, x)| (id.clone(), x.clone()))
            .collect();
        let publisher = self.publisher_of(conference);
        let mut tree = old.clone();
        let mut pulls = Vec::new();
        // Dead edges first: their children re-attach.
        if let Some(t) = tree.as_mut() {
            for d in dead {
                if d != t.origin() {
                    pulls.extend(t.edge_lost(d));
                }
            }
        }
        let mut people = Vec::new();
        let mut targets: Vec<BridgeId> = Vec::new();
        // A drained origin and the one taking its publisher over.
        let mut origin_move: Option<(BridgeId, BridgeId)> = None;
        if let (Some(t), Some((pub_id, publisher))) = (tree.as_mut(), &publisher)
            && dead.iter().any(|d| d == t.origin())
        {
            let busy = self.with_participants(conference);
            let mut exclude = dead.to_vec();
            exclude.extend(
                self.webrtc_exclusions(publisher.webrtc.is_some())
                    .unwrap_or_default(),
            );
            let origin = match self.origin_for(&publisher.region, &exclude, &busy) {
                Ok(o) => o,
                Err(e) => {
                    tracing::warn!(%conference, ?dead, "cannot move the publisher yet: {e}");
                    return None;
                }
            };
            origin_move = Some((t.origin().to_string(), origin.clone()));
            pulls.extend(t.origin_moved(&origin));
            people.push((
                pub_id.clone(),
                Some(Participant {
                    bridge: origin.clone(),
                    ..publisher.clone()
                }),
            ));
            targets.push(origin);
        }
        if let Some((_, first)) = moving.first() {
            // Chosen against the tree being built (a new origin takes viewers last); WebRTC
            // viewers only to bridges that take them (they then leave: `take_stranded`).
            let mut exclude = dead.to_vec();
            let webrtc = moving.iter().any(|(_, v)| v.webrtc.is_some());
            exclude.extend(self.webrtc_exclusions(webrtc).unwrap_or_default());
            let to = match self.viewer_edge(
                conference,
                tree.as_ref(),
                &first.region,
                &exclude,
                must_fit,
            ) {
                Ok((to, streams)) => {
                    self.fleet.placed(&to, streams);
                    to
                }
                Err(e) if must_fit => {
                    tracing::debug!(%conference, ?dead, "drain waits for room: {e}");
                    return None;
                }
                Err(e) => {
                    tracing::warn!(%conference, ?dead, "cannot move its viewers yet: {e}");
                    return None;
                }
            };
            for (id, v) in &moving {
                if let Some(t) = tree.as_mut() {
                    pulls.extend(t.viewer_joined(&to, &v.region));
                }
                people.push((
                    id.clone(),
                    Some(Participant {
                        bridge: to.clone(),
                        ..v.clone()
                    }),
                ));
            }
            targets.push(to);
        }
        let nodes = targets.iter().map(String::as_str).chain(pulled(&pulls));
        let mut calls = self.creates(conference, old.as_ref(), nodes);
        let created_on: Vec<BridgeId> = calls.iter().map(|c| c.bridge.clone()).collect();
        let pc = self.pull_calls(conference, link, &pulls, dead);
        let mut undo = pc.undo;
        let mut removes = pc.removes;
        // A drained origin lingers (see `Lingering`): the edges that now pull from the new
        // origin keep their relay from the old one for the linger, so what the publisher sends
        // there before it switches still reaches every viewer, once: the old origin gets
        // only what was sent before the switch, the new one only what was sent after, and no
        // other path carries what the old one sends (not the new origin: it would pass it
        // on to the same edges).
        let mut linger = Vec::new();
        if let Some((old_origin, new_origin)) = origin_move.filter(|_| must_fit)
            && self.drain_linger_ms > 0
        {
            let kept: Vec<BridgeId> = pulls
                .iter()
                .filter_map(|x| match x {
                    Pull::Remove { edge, from } if *from == old_origin && *edge != new_origin => {
                        Some(edge.clone())
                    }
                    _ => None,
                })
                .filter(|e| {
                    pulls.iter().any(|x| {
                        matches!(x, Pull::Add { edge, from } if edge == e && *from == new_origin)
                    })
                })
                .collect();
            removes.retain(|c| {
                !(kept.contains(&c.bridge)
                    && matches!(&c.call, Call::RemoveRelay { relay_id, .. } if *relay_id == old_origin))
            });
            linger.push((old_origin, kept));
        }
        if must_fit {
            // A drain: the old bridges are alive and streaming. An edge fed by its old and its
            // new parent at once, or a viewer on its old and its new edge at once, would get
            // packets twice (found by the chaos soak): break before make, each path for the
            // time of a call. Old pulls go first, and each viewer leaves its old edge before
            // it is added to the new one (put back there if the move fails).
            calls.append(&mut removes);
            for (id, v) in &moving {
                calls.push(self.call(
                    &v.bridge,
                    Call::Remove {
                        conference: conference.into(),
                        endpoint: id.clone(),
                    },
                ));
                undo.push(self.call(
                    &v.bridge,
                    Call::Add {
                        conference: conference.into(),
                        endpoint: id.clone(),
                        participant: v.clone(),
                        if_absent: true,
                    },
                ));
            }
        }
        calls.extend(pc.adds);
        for (id, x) in people.iter().filter_map(|(id, x)| Some((id, x.as_ref()?))) {
            calls.push(self.call(
                &x.bridge,
                Call::Add {
                    conference: conference.into(),
                    endpoint: id.clone(),
                    participant: x.clone(),
                    if_absent: true,
                },
            ));
        }
        // A failover: make before break, the old pulls (on the bridges still alive) go last.
        calls.extend(removes);
        for b in &created_on {
            undo.push(self.call(
                b,
                Call::Delete {
                    conference: conference.into(),
                },
            ));
        }
        let moved = people.len() as u64;
        let op = StreamOp {
            conference: conference.into(),
            created: false,
            link,
            people,
            tree: Some(tree),
            links: pc.links,
            undo,
            outcome: Outcome::Moved {
                from: dead.to_vec(),
                to: targets.join(","),
            },
            reason: Some(reason),
            lenient: false,
            moved,
            tidy: dead
                .iter()
                .filter(|d| !linger.iter().any(|(l, _)| l == *d))
                .cloned()
                .collect(),
            linger,
            publisher: None,
        };
        Some(self.start(Some(conference), Op::Stream(Box::new(op)), calls))
    }

    /// Plans programming a broadcast again on `bridge`, which registered again after a restart
    /// or after being declared down: the broadcast, its pulls to and from the bridge, its
    /// participants there. Every pull it takes part in gets fresh keys, and the bridge at the
    /// other end drops its relay with the old keys first: a restarted process starts its relay
    /// sequences again, and a key must never seal one sequence twice.
    pub(in crate::core::focus) fn reprogram_broadcast(
        &mut self,
        conference: &str,
        bridge: &str,
    ) -> Plan {
        let link = self.conferences[conference].link;
        let mut calls = vec![self.call(
            bridge,
            Call::Create {
                conference: conference.into(),
            },
        )];
        let mut links = Vec::new();
        let pulls: Vec<(String, String)> = self.conferences[conference]
            .tree()
            .map(|t| {
                t.edges()
                    .filter(|(e, f)| *e == bridge || *f == bridge)
                    .map(|(e, f)| (e.to_string(), f.to_string()))
                    .collect()
            })
            .unwrap_or_default();
        for (edge, from) in pulls {
            let other = if edge == bridge { &from } else { &edge };
            // Both ends drop the relay with the old keys (a bridge that was only declared down
            // still holds its own).
            calls.push(self.call(
                other,
                Call::RemoveRelay {
                    conference: conference.into(),
                    relay_id: bridge.into(),
                },
            ));
            calls.push(self.call(
                bridge,
                Call::RemoveRelay {
                    conference: conference.into(),
                    relay_id: other.clone(),
                },
            ));
            let keys = self.link_keys();
            links.push((link_key(&edge, &from), Some(keys.clone())));
            let [mut on_parent, on_edge] = self.relay_calls(conference, link, &from, &edge, &keys);
            if let Call::AddRelay { downstream, .. } = &mut on_parent.call {
                *downstream = true;
            }
            calls.extend([on_parent, on_edge]);
        }
        let p = &self.conferences[conference];
        for (id, x) in p.on(bridge) {
            calls.push(self.call(
                bridge,
                Call::Add {
                    conference: conference.into(),
                    endpoint: id.clone(),
                    participant: x.clone(),
                    if_absent: true,
                },
            ));
        }
        let op = StreamOp {
            conference: conference.into(),
            created: false,
            link,
            people: Vec::new(),
            tree: None,
            links,
            undo: Vec::new(),
            outcome: Outcome::Moved {
                from: vec![bridge.into()],
                to: bridge.into(),
            },
            reason: Some("current"),
            lenient: false,
            moved: 0,
            tidy: Vec::new(),
            linger: Vec::new(),
            publisher: None,
        };
        self.start(Some(conference), Op::Stream(Box::new(op)), calls)
    }
}
