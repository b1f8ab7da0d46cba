//! What a request to the bridge's state can get wrong, and the limits it is held to.

use std::net::SocketAddr;

use crate::core::repair::rtx::RtxError;
use crate::core::rewrite::RewriteError;

/// What kind of mistake a request made; the API maps it to a gRPC code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request is malformed (`INVALID_ARGUMENT`).
    Invalid,
    /// It names something that does not exist (`NOT_FOUND`).
    NotFound,
    /// It would create something that already exists (`ALREADY_EXISTS`).
    Exists,
    /// It would go over a configured capacity (`RESOURCE_EXHAUSTED`).
    Full,
}

/// Longest conference or endpoint id, in bytes.
pub const MAX_ID_LEN: usize = 256;
/// Longest `webrtc.remote_fingerprint`, in bytes (a SHA-512 one is 200).
pub const MAX_FINGERPRINT_LEN: usize = 512;
/// Most SSRCs one endpoint may declare.
pub const MAX_SSRCS: usize = 64;
/// Most senders (endpoints plus SSRCs) one subscription may name.
pub const MAX_SUBSCRIBED: usize = 4096;

/// Capacity limits of one bridge (`--max-endpoints`, `--max-endpoints-per-conference`,
/// `--max-relays`, `--max-relays-per-conference`). Relays have limits of their own: they cost
/// more per packet than an endpoint (one AEAD seal per relay per packet of every local sender)
/// and the control plane sizes endpoints per bridge without them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Endpoints over all conferences.
    pub endpoints: usize,
    /// Endpoints in one conference.
    pub endpoints_per_conference: usize,
    /// Relays over all conferences.
    pub relays: usize,
    /// Relays of one conference.
    pub relays_per_conference: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            endpoints: 1_000_000,
            endpoints_per_conference: 100_000,
            relays: 100_000,
            relays_per_conference: 1_000,
        }
    }
}

/// Why a request was refused. Messages name the field to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    /// A required id is empty.
    #[error("{0} must not be empty")]
    Empty(&'static str),
    /// A field is longer or has more items than its limit (the value is not echoed).
    #[error("{field}: {got} {unit}, more than the limit of {limit}")]
    TooLarge {
        /// The request field.
        field: &'static str,
        /// Its size.
        got: usize,
        /// "bytes" or "items".
        unit: &'static str,
        /// The limit.
        limit: usize,
    },
    /// A capacity limit of the bridge is reached.
    #[error("{what}: the limit of {limit} is reached (--{flag})")]
    Full {
        /// What is full.
        what: &'static str,
        /// The limit.
        limit: usize,
        /// The flag that sets it.
        flag: &'static str,
    },
    /// An address does not parse or cannot be used.
    #[error("{field}: {value:?} {why}")]
    BadAddr {
        /// The request field.
        field: &'static str,
        /// What was given.
        value: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// WebRTC parameters that cannot be used (or fields a WebRTC endpoint must leave empty).
    #[error("{field}: {why}")]
    BadWebRtc {
        /// The request field.
        field: &'static str,
        /// What is wrong.
        why: String,
    },
    /// The local ufrag routes another WebRTC endpoint's checks.
    #[error(
        "webrtc.local_ufrag: {ufrag:?} is already used by endpoint {endpoint:?} of conference {conference:?}"
    )]
    UfragTaken {
        /// The ufrag.
        ufrag: String,
        /// Its conference.
        conference: String,
        /// Its endpoint.
        endpoint: String,
    },
    /// A rewrite that cannot be used.
    #[error("rewrite.{0}")]
    BadRewrite(#[from] RewriteError),
    /// An RTX configuration that cannot be used.
    #[error("rtx.{0}")]
    BadRtx(#[from] RtxError),
    /// RTX for an endpoint that receives plain RTP.
    #[error("rtx: only an SRTP or WebRTC endpoint negotiates RTX")]
    RtxNeedsSrtp,
    /// A rewrite for an endpoint that receives plain RTP.
    #[error(
        "rewrite: only an SRTP or WebRTC endpoint's copies can be rewritten (a plain receiver gets the shared received packet)"
    )]
    RewriteNeedsSrtp,
    /// SRTP parameters that cannot be used.
    #[error("{field}: {why}")]
    BadSrtp {
        /// The request field.
        field: &'static str,
        /// What is wrong.
        why: String,
    },
    /// An endpoint that must latch declared no SSRC to latch on.
    #[error(
        "ssrcs: an endpoint without remote_addr needs at least one SSRC so the bridge can latch its address"
    )]
    NothingToLatch,
    /// The relay id is taken in that conference, or the address and link number by a relay.
    #[error("{field}: relay {value:?} already exists")]
    RelayExists {
        /// The request field.
        field: &'static str,
        /// What is taken.
        value: String,
    },
    /// No such relay in that conference.
    #[error("relay_id: relay {relay:?} not found in conference {conference:?}")]
    RelayNotFound {
        /// Conference id.
        conference: String,
        /// Relay id.
        relay: String,
    },
    /// The conference id is taken.
    #[error("conference_id: conference {0:?} already exists")]
    ConferenceExists(String),
    /// No such conference.
    #[error("conference_id: conference {0:?} not found")]
    ConferenceNotFound(String),
    /// The endpoint id is taken in that conference.
    #[error("endpoint_id: endpoint {endpoint:?} already exists in conference {conference:?}")]
    EndpointExists {
        /// Conference id.
        conference: String,
        /// Endpoint id.
        endpoint: String,
    },
    /// No such endpoint in that conference.
    #[error("endpoint_id: endpoint {endpoint:?} not found in conference {conference:?}")]
    EndpointNotFound {
        /// Conference id.
        conference: String,
        /// Endpoint id.
        endpoint: String,
    },
    /// Another endpoint of the conference sends this SSRC.
    #[error("ssrcs: SSRC {ssrc} is already sent by endpoint {owner:?} of this conference")]
    SsrcTaken {
        /// The SSRC.
        ssrc: u32,
        /// Endpoint that declared it.
        owner: String,
    },
    /// An endpoint of another conference waits to latch on this SSRC, so latching would be ambiguous.
    #[error(
        "ssrcs: SSRC {ssrc} already waits to be latched in conference {conference:?}; give remote_addr or another SSRC"
    )]
    SsrcAmbiguous {
        /// The SSRC.
        ssrc: u32,
        /// The other conference.
        conference: String,
    },
    /// A value that cannot be used (a subscription, an extension id).
    #[error("{field}: {why}")]
    BadValue {
        /// The request field.
        field: &'static str,
        /// What is wrong.
        why: &'static str,
    },
    /// A subscription names an endpoint the conference does not have.
    #[error("endpoints: endpoint {endpoint:?} not found in conference {conference:?}")]
    UnknownSender {
        /// Conference id.
        conference: String,
        /// The endpoint named.
        endpoint: String,
    },
    /// Another endpoint has this address.
    #[error(
        "remote_addr: {addr} already belongs to endpoint {endpoint:?} of conference {conference:?}"
    )]
    AddrTaken {
        /// The address.
        addr: SocketAddr,
        /// Its conference.
        conference: String,
        /// Its endpoint.
        endpoint: String,
    },
}

impl StateError {
    /// The class of error, for status codes.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Empty(_)
            | Self::TooLarge { .. }
            | Self::BadAddr { .. }
            | Self::BadSrtp { .. }
            | Self::BadWebRtc { .. }
            | Self::BadRewrite(_)
            | Self::RewriteNeedsSrtp
            | Self::BadRtx(_)
            | Self::RtxNeedsSrtp
            | Self::BadValue { .. }
            | Self::NothingToLatch => ErrorKind::Invalid,
            Self::Full { .. } => ErrorKind::Full,
            Self::ConferenceNotFound(_)
            | Self::EndpointNotFound { .. }
            | Self::UnknownSender { .. }
            | Self::RelayNotFound { .. } => ErrorKind::NotFound,
            Self::ConferenceExists(_)
            | Self::EndpointExists { .. }
            | Self::SsrcTaken { .. }
            | Self::SsrcAmbiguous { .. }
            | Self::RelayExists { .. }
            | Self::UfragTaken { .. }
            | Self::AddrTaken { .. } => ErrorKind::Exists,
        }
    }
}
