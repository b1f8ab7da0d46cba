//! What the focus trades with the executor: the calls a plan makes, the results, what an
//! operation produced, and the errors that refuse or fail one.

use crate::core::fleet::{BridgeId, NoBridge};
use crate::store::{MediaDescription, Participant, Rewrite, Role, SrtpKeys, WebRtc};

/// Longest conference, participant or bridge id, in bytes.
pub const MAX_ID_LEN: usize = 256;
/// Most SSRCs one participant may declare.
pub const MAX_SSRCS: usize = 64;

/// Identifies an operation in flight.
pub type OpId = u64;

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
    /// SetSimulcastLimit of a viewer of a simulcast publisher.
    SimulcastLimit {
        /// Conference.
        conference: String,
        /// The viewer (participant id).
        endpoint: String,
        /// Largest frame height (0: none).
        max_height: u32,
    },
    /// SetSubscription of an endpoint or a relay. Muting a relay (no SSRCs) tolerates
    /// NOT_FOUND: a relay that is not there carries nothing already.
    Subscribe {
        /// Conference.
        conference: String,
        /// The endpoint (participant) or relay (remote bridge id).
        target: SubTarget,
        /// The SSRCs it receives, or every sender (`None`).
        ssrcs: Option<Vec<u32>>,
    },
}

/// Whom a subscription call is for.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SubTarget {
    /// A participant's endpoint.
    Endpoint(String),
    /// The relay to another bridge of the conference (its id).
    Relay(String),
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

impl std::fmt::Display for BridgeCall {
    /// One short line for logs: what, on which bridge (no keys).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let b = &self.bridge;
        match &self.call {
            Call::Create { conference } => write!(f, "create {conference}@{b}"),
            Call::Add {
                conference,
                endpoint,
                ..
            } => write!(f, "add {conference}/{endpoint}@{b}"),
            Call::Remove {
                conference,
                endpoint,
            } => write!(f, "remove {conference}/{endpoint}@{b}"),
            Call::Delete { conference } => write!(f, "delete {conference}@{b}"),
            Call::AddRelay {
                conference,
                relay_id,
                downstream,
                ..
            } => {
                let kind = if *downstream { "feed" } else { "relay" };
                write!(f, "{kind} {conference}->{relay_id}@{b}")
            }
            Call::RemoveRelay {
                conference,
                relay_id,
            } => write!(f, "unrelay {conference}->{relay_id}@{b}"),
            Call::Subscribe {
                conference,
                target,
                ssrcs,
            } => write!(f, "subscribe {conference}/{target:?} {ssrcs:?}@{b}"),
            Call::SimulcastLimit {
                conference,
                endpoint,
                max_height,
            } => write!(f, "limit {conference}/{endpoint} {max_height}@{b}"),
        }
    }
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
    pub(super) fn blames_bridge(&self) -> bool {
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
    /// A WebRTC participant (ICE-lite, DTLS-SRTP): placed only on a bridge that registered a
    /// DTLS fingerprint; `remote_addr` must be empty and `srtp` absent.
    pub webrtc: Option<WebRtc>,
    /// Rewrites on the packets it receives.
    pub rewrite: Option<Rewrite>,
    /// A WebRTC publisher's negotiated media, kept with it.
    pub media: Option<MediaDescription>,
    /// The SSRCs whose media it receives (`None`: every sender).
    pub subscription: Option<Vec<u32>>,
    /// Last-N (0: no limit).
    pub last_n: u32,
    /// The participant it receives for (a room's watch session: its page's publish session),
    /// left out of its last-N; empty: none.
    pub owner: String,
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
