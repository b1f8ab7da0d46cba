//! What must survive a restart of `ringbridge-control`: sticky routes, conference placements
//! (with the participants' SRTP keys) and drains. Behind [`Store`] so a shared store can back
//! several control instances.
//!
//! - this module: the persisted types, the [`Change`]s the focus emits, and the [`Store`] trait;
//! - [`file`]: the embedded default, [`FileStore`] in `--data-dir` (snapshot + append-only log);
//! - [`etcd`]: the etcd store (one key per participant, fenced writes);
//! - [`cluster`]: several instances on etcd: leases, shared sticky routes, the election;
//! - [`webrtc`]: a WebRTC participant's transport parameters, rewrites and media description.

pub mod cluster;
pub mod etcd;
pub mod file;
pub mod webrtc;

pub use file::FileStore;
pub use webrtc::{MediaDescription, Rewrite, WebRtc};

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::core::pulltree::PullTree;
use crate::core::router::Route;

/// SRTP keys of one participant (RFC 4568 style: each side sends with its own key).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SrtpKeys {
    /// Protection profile name.
    pub profile: String,
    /// Master key + salt the participant protects its packets with.
    pub endpoint_key: Vec<u8>,
    /// Master key + salt the bridge protects packets to the participant with.
    pub bridge_key: Vec<u8>,
}

/// What a participant does: takes part in a conference, or publishes or views a broadcast
/// (a live stream).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Sends and receives in a conference (the default).
    #[default]
    Participant,
    /// Sends a broadcast's media (one per broadcast).
    Publisher,
    /// Receives a broadcast; sends RTCP only.
    Viewer,
}

impl Role {
    /// The API's name for it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Participant => "participant",
            Self::Publisher => "publisher",
            Self::Viewer => "viewer",
        }
    }

    /// Parses the API's name (empty: participant).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "" | "participant" => Some(Self::Participant),
            "publisher" => Some(Self::Publisher),
            "viewer" => Some(Self::Viewer),
            _ => None,
        }
    }
}

/// A broadcast's state beside its participants: the pull tree, while it has a publisher.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Broadcast {
    /// The origin (the publisher's bridge) and which edge pulls from which bridge; `None`
    /// while there is no publisher (viewers then wait on their edges).
    pub tree: Option<PullTree>,
    /// The publisher's id, while there is one.
    #[serde(default)]
    pub publisher: Option<String>,
}

/// One participant of a placed conference, enough to program it on another bridge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Participant {
    /// Region it joined from.
    pub region: String,
    /// SSRCs it sends.
    pub ssrcs: Vec<u32>,
    /// Its address, or empty to latch.
    pub remote_addr: String,
    /// SRTP keys; `None` for plain RTP.
    #[serde(default)]
    pub srtp: Option<SrtpKeys>,
    /// The bridge it is on (a conference may span several: Octo). Empty in state written before
    /// Octo: then the placement's bridge.
    #[serde(default)]
    pub bridge: String,
    /// What it does (state from before broadcasts: a participant).
    #[serde(default)]
    pub role: Role,
    /// A WebRTC participant's ICE-lite and DTLS-SRTP parameters (`None`: plain RTP or SDES
    /// SRTP, as before WebRTC). Boxed, like the two below: most participants have none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webrtc: Option<Box<WebRtc>>,
    /// Rewrites on the packets it receives (a WebRTC viewer numbering codecs or extensions
    /// unlike its publisher).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewrite: Option<Box<Rewrite>>,
    /// A WebRTC publisher's negotiated media (codecs, extensions, SSRCs per m-line): what a
    /// viewer's answer is made from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media: Option<Box<MediaDescription>>,
    /// The SSRCs whose media it receives (`None`: every sender of its conference): a room's
    /// watch session receives one publisher.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscription: Option<Vec<u32>>,
    /// Last-N: it receives the video of only this many most recent speakers (0: no limit).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub last_n: u32,
    /// The participant this one receives for (a room's watch session: its page's publish
    /// session): last-N counts the speakers other than it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub owner: String,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl Participant {
    /// A participant with no WebRTC parts (plain RTP or SDES SRTP).
    pub fn plain(
        region: &str,
        ssrcs: Vec<u32>,
        remote_addr: &str,
        srtp: Option<SrtpKeys>,
        bridge: &str,
        role: Role,
    ) -> Self {
        Self {
            region: region.into(),
            ssrcs,
            remote_addr: remote_addr.into(),
            srtp,
            bridge: bridge.into(),
            role,
            webrtc: None,
            rewrite: None,
            media: None,
            subscription: None,
            last_n: 0,
            owner: String::new(),
        }
    }
}

/// The keys of the relay link between two bridges of a conference, one per direction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkKeys {
    /// What the first bridge of the pair (by id) seals with.
    pub first_tx: Vec<u8>,
    /// What the second bridge seals with.
    pub second_tx: Vec<u8>,
}

/// The map key of the link between bridges `a` and `b` (ordered, so both spell it alike).
pub fn link_key(a: &str, b: &str) -> String {
    if a <= b {
        format!("{a}|{b}")
    } else {
        format!("{b}|{a}")
    }
}

/// Where a conference lives and who is in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    /// The bridge it was first placed on (or moved to); participants say where each one is.
    pub bridge: String,
    /// Participants by id.
    pub participants: BTreeMap<String, Participant>,
    /// The conference number of its relay links (the same on every link of the conference).
    #[serde(default)]
    pub link: u32,
    /// Relay links between its bridges, by [`link_key`].
    #[serde(default)]
    pub links: BTreeMap<String, LinkKeys>,
    /// Set for a broadcast (a live stream) rather than a conference.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broadcast: Option<Broadcast>,
}

impl Placement {
    /// The bridges hosting participants, and a broadcast's origin and pulling edges (the
    /// placement's bridge while there are none).
    pub fn bridges(&self) -> std::collections::BTreeSet<&str> {
        let mut b: std::collections::BTreeSet<&str> = self
            .participants
            .values()
            .map(|p| p.bridge.as_str())
            .collect();
        if let Some(t) = self.tree() {
            b.insert(t.origin());
            b.extend(t.edges().map(|(e, _)| e));
        }
        if b.is_empty() {
            b.insert(&self.bridge);
        }
        b
    }

    /// A broadcast's pull tree, when it has a publisher.
    pub fn tree(&self) -> Option<&PullTree> {
        self.broadcast.as_ref().and_then(|b| b.tree.as_ref())
    }

    /// Its bridges but those in `except`.
    pub fn bridges_except(&self, except: &[String]) -> Vec<String> {
        self.bridges()
            .into_iter()
            .filter(|b| !except.iter().any(|x| x == b))
            .map(String::from)
            .collect()
    }

    /// Participants on `bridge`.
    pub fn on<'a>(
        &'a self,
        bridge: &'a str,
    ) -> impl Iterator<Item = (&'a String, &'a Participant)> {
        self.participants
            .iter()
            .filter(move |(_, p)| p.bridge == bridge)
    }
}

/// One change to the persisted state. Every change overwrites or removes one key, so replaying
/// a log onto a state that already contains it gives the same state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Change {
    /// A conference is (now) hosted by `bridge`: placed, or moved.
    Placed {
        /// Conference.
        conference: String,
        /// Its bridge.
        bridge: String,
        /// Its relay link number.
        #[serde(default)]
        link: u32,
    },
    /// A conference is a broadcast, with this pull tree now.
    Broadcast {
        /// Conference.
        conference: String,
        /// Its broadcast state.
        broadcast: Broadcast,
    },
    /// A relay link between two bridges of a conference.
    Linked {
        /// Conference.
        conference: String,
        /// [`link_key`] of the pair.
        pair: String,
        /// Its keys.
        keys: LinkKeys,
    },
    /// A relay link went.
    Unlinked {
        /// Conference.
        conference: String,
        /// [`link_key`] of the pair.
        pair: String,
    },
    /// A participant joined.
    Joined {
        /// Conference.
        conference: String,
        /// Participant id.
        participant_id: String,
        /// What it needs on a bridge.
        participant: Participant,
    },
    /// A participant left.
    Left {
        /// Conference.
        conference: String,
        /// Participant id.
        participant_id: String,
    },
    /// A conference ended.
    Ended {
        /// Conference.
        conference: String,
    },
    /// A sticky route was set or used.
    Routed {
        /// Conference.
        conference: String,
        /// Where it goes.
        route: Route,
    },
    /// A route expired.
    Unrouted {
        /// Conference.
        conference: String,
    },
    /// A bridge was drained (by the API or the autoscaler).
    Drained {
        /// Bridge id.
        bridge: String,
        /// The drain.
        drain: DrainRecord,
    },
    /// A drain ended: the bridge was removed, or a new process of it registered.
    Undrained {
        /// Bridge id.
        bridge: String,
    },
}

/// A drain asked of a bridge, kept so that a restarted control plane keeps draining it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainRecord {
    /// When it began, ms (wall clock): the grace runs from here.
    pub since_ms: u64,
    /// The bridge process it was asked of (its instance id; empty: unknown, any process).
    #[serde(default)]
    pub instance: String,
}

impl Change {
    /// The conference it is about (`None` for a bridge's drain).
    pub fn conference(&self) -> Option<&str> {
        Some(match self {
            Self::Placed { conference, .. }
            | Self::Broadcast { conference, .. }
            | Self::Linked { conference, .. }
            | Self::Unlinked { conference, .. }
            | Self::Joined { conference, .. }
            | Self::Left { conference, .. }
            | Self::Ended { conference }
            | Self::Routed { conference, .. }
            | Self::Unrouted { conference } => conference,
            Self::Drained { .. } | Self::Undrained { .. } => return None,
        })
    }
}

/// Everything the store keeps.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Conference -> shard.
    pub routes: BTreeMap<String, Route>,
    /// Conference -> placement.
    pub placements: BTreeMap<String, Placement>,
    /// Bridge -> its drain, for bridges drained through the API or by the autoscaler.
    #[serde(default)]
    pub drains: BTreeMap<String, DrainRecord>,
}

impl Snapshot {
    /// Applies one change.
    pub fn apply(&mut self, c: &Change) {
        match c {
            Change::Placed {
                conference,
                bridge,
                link,
            } => {
                let p = self
                    .placements
                    .entry(conference.clone())
                    .or_insert_with(|| Placement {
                        bridge: bridge.clone(),
                        participants: BTreeMap::new(),
                        link: *link,
                        links: BTreeMap::new(),
                        broadcast: None,
                    });
                p.bridge = bridge.clone();
                p.link = *link;
            }
            Change::Broadcast {
                conference,
                broadcast,
            } => {
                if let Some(p) = self.placements.get_mut(conference) {
                    p.broadcast = Some(broadcast.clone());
                }
            }
            Change::Linked {
                conference,
                pair,
                keys,
            } => {
                if let Some(p) = self.placements.get_mut(conference) {
                    p.links.insert(pair.clone(), keys.clone());
                }
            }
            Change::Unlinked { conference, pair } => {
                if let Some(p) = self.placements.get_mut(conference) {
                    p.links.remove(pair);
                }
            }
            Change::Joined {
                conference,
                participant_id,
                participant,
            } => {
                if let Some(p) = self.placements.get_mut(conference) {
                    p.participants
                        .insert(participant_id.clone(), participant.clone());
                }
            }
            Change::Left {
                conference,
                participant_id,
            } => {
                if let Some(p) = self.placements.get_mut(conference) {
                    p.participants.remove(participant_id);
                }
            }
            Change::Ended { conference } => {
                self.placements.remove(conference);
            }
            Change::Routed { conference, route } => {
                self.routes.insert(conference.clone(), route.clone());
            }
            Change::Unrouted { conference } => {
                self.routes.remove(conference);
            }
            Change::Drained { bridge, drain } => {
                self.drains.insert(bridge.clone(), drain.clone());
            }
            Change::Undrained { bridge } => {
                self.drains.remove(bridge);
            }
        }
    }
}

/// A store failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Reading or writing failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file does not parse.
    #[error("{path}: not a ringbridge-control state file: {why}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Why.
        why: String,
    },
    /// A remote store (etcd) failed or did not answer in time.
    #[error("{0}")]
    Remote(String),
    /// The write was refused because this instance is not (or no longer) its shard's active
    /// focus.
    #[error("fenced: {0}")]
    Fenced(String),
}

/// What fences a shared store's writes: this instance's election key and its creation
/// revision. A write succeeds only while that key exists with that revision, so an instance
/// that lost the election (its lease expired) cannot overwrite its successor's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    /// The election key this instance won with.
    pub key: Vec<u8>,
    /// Its creation revision.
    pub revision: i64,
}

/// Persistent state.
pub trait Store: Send + Sync {
    /// The saved state (empty if nothing was saved).
    fn load(&self) -> Result<Snapshot, StoreError>;
    /// Appends changes; on `Ok` they survive a crash. On `Err` nothing is acknowledged and the
    /// caller keeps the changes to try again.
    fn append(&self, changes: &[Change]) -> Result<(), StoreError>;
    /// Fences later writes with this instance's election (`None`: it stands by, and writes
    /// nothing). Stores that only one instance uses ignore it.
    fn set_fence(&self, _fence: Option<Fence>) {}
    /// One conference's placement as the store holds it now, read afresh (not from what this
    /// instance wrote), and the store's revision it was read at: how a standby answers a
    /// watch. Stores that only one instance uses do not answer it.
    fn read_placement(&self, _conference: &str) -> Result<(Option<Placement>, i64), StoreError> {
        Err(StoreError::Remote(
            "this store is not shared: ask the instance that writes it".into(),
        ))
    }
}
