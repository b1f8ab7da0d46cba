//! What watchers are told: a placement as `WatchConference` announces it, named participants
//! up to [`LISTED`] and counts beyond.

use std::collections::BTreeMap;

use super::{Focus, StreamView};
use crate::core::fleet::BridgeId;
use crate::store::Placement;

/// Announcements name the participants of conferences up to this size; a bigger one (a
/// broadcast may have millions of viewers) is announced with counts per bridge and its
/// publisher only, so announcing costs a walk over its bridges, not its viewers.
pub const LISTED: usize = 1000;

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
    /// The dominant speaker (empty until someone spoke).
    pub dominant_speaker: String,
    /// Recent speakers, most recent first.
    pub recent_speakers: Vec<String>,
}

impl Focus {
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

    pub(super) fn announcement(
        &self,
        conference: &str,
        p: &Placement,
        reason: &'static str,
    ) -> Announcement {
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
            dominant_speaker: self
                .speakers
                .get(conference)
                .and_then(|s| s.dominant())
                .unwrap_or_default()
                .to_string(),
            recent_speakers: self
                .speakers
                .get(conference)
                .map(|s| s.recent().to_vec())
                .unwrap_or_default(),
        }
    }
}
