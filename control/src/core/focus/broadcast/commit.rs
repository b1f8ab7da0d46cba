//! Committing a broadcast operation (its participants, pull tree and links) or rolling it back
//! with its undo calls.

use super::*;

impl Focus {
    /// Commits a broadcast operation, or rolls it back with its undo calls.
    pub(in crate::core::focus) fn complete_stream(
        &mut self,
        op: StreamOp,
        failure: Option<FocusError>,
    ) -> Completion {
        let conference = op.conference.clone();
        self.busy.remove(&conference);
        if let Some(e) = failure {
            let unreachable = matches!(&e, FocusError::Bridge { error, .. }
                if matches!(error, CallError::Unavailable(_) | CallError::Timeout { .. }));
            if !(op.lenient && unreachable) {
                tracing::warn!(%conference, "broadcast operation failed: {e}");
                return Completion {
                    result: Err(e),
                    cleanup: self.cleanup(Some(&conference), op.undo),
                };
            }
            tracing::warn!(%conference, "leave committed without the bridge: {e}");
        }
        if op.created {
            let first = op
                .people
                .iter()
                .find_map(|(_, x)| x.as_ref().map(|x| x.bridge.clone()))
                .unwrap_or_default();
            self.conferences.insert(
                conference.clone(),
                Placement {
                    bridge: first.clone(),
                    participants: Default::default(),
                    link: op.link,
                    links: Default::default(),
                    broadcast: Some(Broadcast::default()),
                },
            );
            self.broadcasts.insert(conference.clone());
            self.changes.push(Change::Placed {
                conference: conference.clone(),
                bridge: first,
                link: op.link,
            });
        }
        let p = self
            .conferences
            .get_mut(&conference)
            .expect("a busy broadcast stays placed");
        let mut counts: Vec<(String, isize)> = Vec::new();
        for (id, x) in op.people {
            let old = match &x {
                Some(x) => p.participants.insert(id.clone(), x.clone()),
                None => p.participants.remove(&id),
            };
            if let Some(o) = old {
                // A WebRTC session cannot follow its participant to another bridge.
                if x.as_ref()
                    .is_some_and(|x| x.bridge != o.bridge && x.webrtc.is_some())
                {
                    self.stranded.push((conference.clone(), id.clone()));
                }
                counts.push((o.bridge, -1));
            }
            match x {
                Some(x) => {
                    counts.push((x.bridge.clone(), 1));
                    self.changes.push(Change::Joined {
                        conference: conference.clone(),
                        participant_id: id,
                        participant: x,
                    });
                }
                None => self.changes.push(Change::Left {
                    conference: conference.clone(),
                    participant_id: id,
                }),
            }
        }
        for (pair, keys) in op.links {
            match keys {
                Some(k) => {
                    p.links.insert(pair.clone(), k.clone());
                    self.changes.push(Change::Linked {
                        conference: conference.clone(),
                        pair,
                        keys: k,
                    });
                }
                None => {
                    p.links.remove(&pair);
                    self.changes.push(Change::Unlinked {
                        conference: conference.clone(),
                        pair,
                    });
                }
            }
        }
        if let Some(tree) = op.tree {
            // The tree exists exactly while there is a publisher.
            let publisher = tree.as_ref().and_then(|_| {
                op.publisher
                    .clone()
                    .or_else(|| p.broadcast.as_ref().and_then(|b| b.publisher.clone()))
            });
            let broadcast = Broadcast { tree, publisher };
            p.broadcast = Some(broadcast.clone());
            self.changes.push(Change::Broadcast {
                conference: conference.clone(),
                broadcast,
            });
        } else if op.created {
            self.changes.push(Change::Broadcast {
                conference: conference.clone(),
                broadcast: Broadcast::default(),
            });
        }
        let ended = p.participants.is_empty();
        let bridge = p
            .tree()
            .map(|t| t.origin().to_string())
            .or_else(|| p.participants.values().next().map(|x| x.bridge.clone()))
            .unwrap_or_else(|| p.bridge.clone());
        let moved_bridge = p.bridge != bridge;
        p.bridge = bridge.clone();
        for (b, d) in counts {
            self.index(&b, &conference, d);
        }
        if ended {
            let p = self.conferences.remove(&conference).expect("present");
            self.broadcasts.remove(&conference);
            let a = self.announcement(&conference, &p, "ended");
            self.announcements.push(a);
            self.changes.push(Change::Ended {
                conference: conference.clone(),
            });
        } else {
            if moved_bridge {
                self.changes.push(Change::Placed {
                    conference: conference.clone(),
                    bridge,
                    link: op.link,
                });
            }
            if let Some(reason) = op.reason {
                let a = self.announcement(&conference, &self.conferences[&conference], reason);
                self.announcements.push(a);
            }
        }
        if op.moved > 0 {
            if op.reason == Some("drained") {
                self.drain_moves += op.moved;
            } else {
                self.failovers += 1;
            }
        }
        for (bridge, relays_on) in op.linger {
            self.lingering.push(crate::core::focus::Lingering {
                due: self.last_tick_ms + self.drain_linger_ms,
                conference: conference.clone(),
                bridge,
                relays_on,
            });
        }
        let tidy: Vec<BridgeCall> = op
            .tidy
            .iter()
            .filter(|b| self.fleet.get(b).is_some())
            .map(|b| {
                self.call(
                    b,
                    Call::Delete {
                        conference: conference.clone(),
                    },
                )
            })
            .collect();
        let result = match op.outcome {
            Outcome::Joined {
                bridge,
                participant_id,
            } => {
                let srtp = self.conferences[&conference].participants[&participant_id]
                    .srtp
                    .clone();
                Ok(Done::Joined {
                    media_addr: self.media_addr(&bridge),
                    bridge,
                    srtp,
                })
            }
            Outcome::Left => Ok(Done::Left),
            Outcome::Moved { from, to } => {
                if from.len() != 1 || from[0] != to {
                    tracing::info!(%conference, ?from, %to, "broadcast moved off bridges");
                }
                Ok(Done::Moved {
                    from: from.join(","),
                    to,
                })
            }
        };
        Completion {
            result,
            cleanup: self.cleanup(None, tidy),
        }
    }
}
