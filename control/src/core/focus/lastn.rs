//! Speakers, last-N and the subscriptions that follow from them, sans-IO.
//!
//! Bridges report their endpoints' audio loudness ([`Focus::observe_audio`]); each conference's
//! [`Speakers`] decides the dominant speaker, announced on `WatchConference` (reason
//! "speaker") and in a room's events. What every receiver should get is then a function of the
//! placement ([`Focus::desired_subscriptions`]): a participant's own subscription (a room's watch
//! session: its publisher's SSRCs), narrowed by its last-N to the audio of everyone and the
//! video of the N most recent speakers; and each relay carries the union of what the receivers
//! behind it want (every sender's media when one of them wants everything), so a sender nobody
//! on the far bridge wants does not cross. [`Focus::sync_subscriptions`] (from
//! [`Focus::tick`]) plans the `SetSubscription` calls that bring the bridges there.
//!
//! What the bridges hold is tracked per conference between placement changes; a join, leave or
//! move makes it unknown (endpoints and relays were re-added with their defaults), and the next
//! sync sends every subscription of the conference again. Conferences where nobody has a
//! subscription or a last-N cost nothing here.

use std::collections::{BTreeMap, BTreeSet};

use super::{Focus, Op};
use crate::core::fleet::BridgeId;
use crate::core::speakers::Speakers;
use crate::store::{Participant, Placement};

use super::plan::{BridgeCall, Call, Completion, Done, FocusError, Plan, SubTarget};

/// Where a subscription is held: on a bridge, for an endpoint or a relay.
pub type SubKey = (BridgeId, SubTarget);

/// Subscriptions of one conference, as wanted or as programmed (`None`: every sender).
pub type Subscriptions = BTreeMap<SubKey, Option<Vec<u32>>>;

/// A subscription sync in flight.
#[derive(Debug)]
pub(super) struct SyncOp {
    conference: String,
    want: Subscriptions,
    /// The conference's placement epoch when planned.
    epoch: u64,
}

/// The SSRCs of a participant's audio, by its negotiated media. A participant without one (plain
/// RTP, SDES SRTP) has all its SSRCs counted as audio: last-N never holds them back.
fn audio_ssrcs(x: &Participant) -> Vec<u32> {
    match &x.media {
        Some(m) => m
            .sections
            .iter()
            .filter(|s| s.kind == "audio")
            .flat_map(|s| s.ssrcs.iter().copied())
            .collect(),
        None => x.ssrcs.clone(),
    }
}

impl Focus {
    /// Audio loudness reported by `bridge` at `now_ms`: (conference, participant, mean
    /// loudness 0-127). A conference whose dominant speaker changes is announced and its
    /// subscriptions brought up to date at the next tick. Reports about participants the focus
    /// does not place on that bridge are ignored.
    pub fn observe_audio(&mut self, bridge: &str, levels: &[(String, String, f64)], now_ms: u64) {
        let mut touched: BTreeSet<&str> = BTreeSet::new();
        for (c, p, loudness) in levels {
            let Some(placement) = self.conferences.get(c) else {
                continue;
            };
            if placement.broadcast.is_some()
                || placement
                    .participants
                    .get(p)
                    .is_none_or(|x| x.bridge != bridge)
            {
                continue;
            }
            self.speakers
                .entry(c.clone())
                .or_default()
                .observe(p, *loudness, now_ms);
            touched.insert(c);
        }
        for c in touched {
            let changed = self
                .speakers
                .get_mut(c)
                .and_then(|s| s.decide(now_ms))
                .is_some();
            if changed {
                tracing::info!(conference = %c, speaker = ?self.speakers[c].dominant(), "dominant speaker");
                if let Some(a) = self.placement(c, "speaker") {
                    self.announcements.push(a);
                }
                self.subs_dirty.insert(c.to_string());
            }
        }
    }

    /// The conference's speakers (dominant, recent), if anyone spoke.
    pub fn speakers(&self, conference: &str) -> Option<&Speakers> {
        self.speakers.get(conference)
    }

    /// A placement changed in `conference`: what its bridges hold is unknown until the next
    /// sync sends it all again; a participant gone is no longer a speaker.
    pub(super) fn subscriptions_changed(&mut self, conference: &str) {
        self.subs_programmed.remove(conference);
        *self.subs_epoch.entry(conference.to_string()).or_default() += 1;
        self.subs_dirty.insert(conference.to_string());
        if let (Some(s), Some(p)) = (
            self.speakers.get_mut(conference),
            self.conferences.get(conference),
        ) {
            let gone: Vec<String> = s
                .recent()
                .iter()
                .filter(|x| !p.participants.contains_key(*x))
                .cloned()
                .collect();
            for x in gone {
                s.forget(&x);
            }
        }
        if !self.conferences.contains_key(conference) {
            self.speakers.remove(conference);
            self.subs_epoch.remove(conference);
        }
    }

    /// Whose video last-N lets through in `conference`: the `n` most recent speakers, then
    /// (when fewer have spoken) the other senders with media by id.
    fn last_n<'p>(&self, conference: &str, p: &'p Placement, n: usize) -> Vec<&'p str> {
        let mut out: Vec<&'p str> = Vec::with_capacity(n);
        if let Some(s) = self.speakers.get(conference) {
            for x in s.recent() {
                if out.len() < n
                    && let Some((id, y)) = p.participants.get_key_value(x)
                    && y.media.is_some()
                {
                    out.push(id);
                }
            }
        }
        for (id, y) in &p.participants {
            if out.len() >= n {
                break;
            }
            if y.media.is_some() && !y.ssrcs.is_empty() && !out.contains(&id.as_str()) {
                out.push(id);
            }
        }
        out
    }

    /// What every endpoint and relay of `conference` should receive now (see the module docs).
    pub fn desired_subscriptions(&self, conference: &str) -> Subscriptions {
        let mut want = Subscriptions::new();
        let Some(p) = self.conferences.get(conference) else {
            return want;
        };
        if p.broadcast.is_some() {
            return want;
        }
        // Last-N: the audio of everyone, the video of the most recent speakers.
        let needs_n = p.participants.values().map(|x| x.last_n).max().unwrap_or(0);
        let (audio, video_of): (Vec<u32>, Vec<&str>) = if needs_n > 0 {
            let audio = p.participants.values().flat_map(audio_ssrcs).collect();
            // One more than asked: a receiver's own publisher is left out of its last-N.
            (audio, self.last_n(conference, p, needs_n as usize + 1))
        } else {
            (Vec::new(), Vec::new())
        };
        let mut per_bridge: BTreeMap<&str, Option<BTreeSet<u32>>> = BTreeMap::new();
        for (id, x) in &p.participants {
            let eff = if x.last_n == 0 {
                x.subscription.clone()
            } else {
                let mut allowed: BTreeSet<u32> = audio.iter().copied().collect();
                let others = video_of.iter().filter(|v| **v != x.owner && **v != id);
                for v in others.take(x.last_n as usize) {
                    allowed.extend(p.participants[*v].ssrcs.iter().copied());
                }
                Some(match &x.subscription {
                    None => allowed.into_iter().collect(),
                    Some(s) => s.iter().copied().filter(|v| allowed.contains(v)).collect(),
                })
            };
            let slot = per_bridge
                .entry(x.bridge.as_str())
                .or_insert_with(|| Some(BTreeSet::new()));
            match (&eff, slot.as_mut()) {
                (None, _) => *slot = None,
                (Some(s), Some(u)) => u.extend(s.iter().copied()),
                (Some(_), None) => {}
            }
            want.insert(
                (x.bridge.clone(), SubTarget::Endpoint(id.clone())),
                eff.map(|mut v| {
                    v.sort_unstable();
                    v.dedup();
                    v
                }),
            );
        }
        // Each relay carries what the receivers on its far side want.
        let bridges: Vec<&str> = per_bridge.keys().copied().collect();
        for a in &bridges {
            for b in &bridges {
                if a != b {
                    want.insert(
                        (a.to_string(), SubTarget::Relay(b.to_string())),
                        per_bridge[b].as_ref().map(|s| s.iter().copied().collect()),
                    );
                }
            }
        }
        want
    }

    /// Whether `want` holds for `k` what the bridge has without being told (an endpoint's own
    /// subscription, given when it was added; every sender for a relay).
    fn is_default(&self, conference: &str, k: &SubKey, want: &Option<Vec<u32>>) -> bool {
        match &k.1 {
            SubTarget::Relay(_) => want.is_none(),
            SubTarget::Endpoint(id) => self
                .conferences
                .get(conference)
                .and_then(|p| p.participants.get(id))
                .is_some_and(|x| x.subscription == *want),
        }
    }

    /// Plans the subscription calls of every conference that needs some (its speakers
    /// changed, or its placement did) and has no operation in flight.
    pub fn sync_subscriptions(&mut self) -> Vec<Plan> {
        let mut plans = Vec::new();
        let dirty = std::mem::take(&mut self.subs_dirty);
        for c in dirty {
            if self.busy.contains(&c) || self.subs_syncing.contains(&c) {
                self.subs_dirty.insert(c);
                continue;
            }
            let Some(p) = self.conferences.get(&c) else {
                self.subs_programmed.remove(&c);
                self.subs_active.remove(&c);
                continue;
            };
            // Most conferences: nobody has a subscription or a last-N (a cheap look, before
            // anything is computed or allocated).
            let users = p
                .participants
                .values()
                .any(|x| x.subscription.is_some() || x.last_n > 0);
            if !users && !self.subs_active.contains(&c) {
                continue;
            }
            let want = self.desired_subscriptions(&c);
            let special = want.iter().any(|(k, v)| !self.is_default(&c, k, v));
            if !special && !self.subs_active.contains(&c) {
                continue;
            }
            let have = self.subs_programmed.get(&c);
            let mut calls = Vec::new();
            for (k, v) in &want {
                if have.is_some_and(|h| h.get(k) == Some(v)) {
                    continue;
                }
                let Some(b) = self.fleet.get(&k.0) else {
                    continue;
                };
                calls.push(BridgeCall {
                    bridge: k.0.clone(),
                    api_addr: b.api_addr.clone(),
                    call: Call::Subscribe {
                        conference: c.clone(),
                        target: k.1.clone(),
                        ssrcs: v.clone(),
                    },
                });
            }
            if special {
                self.subs_active.insert(c.clone());
            }
            if calls.is_empty() {
                self.subs_programmed.insert(c.clone(), want);
                continue;
            }
            tracing::debug!(conference = %c, calls = calls.len(), "syncing subscriptions");
            self.subs_syncing.insert(c.clone());
            let epoch = self.subs_epoch.get(&c).copied().unwrap_or(0);
            plans.push(self.start(
                None,
                Op::Sync(SyncOp {
                    conference: c,
                    want,
                    epoch,
                }),
                calls,
            ));
        }
        plans
    }

    /// Completes a sync: what the bridges hold is known on success; on failure unknown, and
    /// tried again at the next tick.
    pub(super) fn complete_sync(&mut self, op: SyncOp, failure: Option<FocusError>) -> Completion {
        self.subs_syncing.remove(&op.conference);
        let special = op
            .want
            .iter()
            .any(|(k, v)| !self.is_default(&op.conference, k, v));
        let current = self.subs_epoch.get(&op.conference).copied().unwrap_or(0) == op.epoch;
        match failure {
            // The placement changed meanwhile: what the bridges hold is not `want` for sure
            // (the change marked the conference for another sync).
            None if !current => Completion {
                result: Ok(Done::CleanedUp),
                cleanup: None,
            },
            None => {
                if !special {
                    self.subs_active.remove(&op.conference);
                }
                self.subs_programmed.insert(op.conference, op.want);
                Completion {
                    result: Ok(Done::CleanedUp),
                    cleanup: None,
                }
            }
            Some(e) => {
                tracing::warn!(conference = %op.conference, "subscriptions not applied: {e}");
                self.subs_programmed.remove(&op.conference);
                self.subs_dirty.insert(op.conference);
                Completion {
                    result: Err(e),
                    cleanup: None,
                }
            }
        }
    }
}
