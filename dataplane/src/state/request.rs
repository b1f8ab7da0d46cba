//! What the API asks the state to add: endpoints (plain, SRTP, WebRTC, with a rewrite) and relays,
//! parsed from the requests and checked before anything changes.

use std::sync::Arc;

use super::StateError;
use crate::srtp::{Profile, Session};

/// SRTP parameters as a request gives them.
#[derive(Debug, Clone, Default)]
pub struct SrtpRequest {
    /// Profile name.
    pub profile: String,
    /// Master key + salt the endpoint sends with.
    pub endpoint_key: Vec<u8>,
    /// Master key + salt the bridge sends with (empty: `endpoint_key`).
    pub bridge_key: Vec<u8>,
}

/// An endpoint's SRTP sessions, derived once when it is added.
#[derive(Debug, Clone)]
pub struct EndpointSrtp {
    /// The profile.
    pub profile: Profile,
    /// Unprotects what the endpoint sends.
    pub rx: Arc<Session>,
    /// Protects what the bridge sends to it.
    pub tx: Arc<Session>,
}

impl SrtpRequest {
    /// Validates and derives the sessions.
    pub fn derive(&self) -> Result<EndpointSrtp, StateError> {
        let profile = Profile::from_name(&self.profile).ok_or_else(|| StateError::BadSrtp {
            field: "srtp.profile",
            why: format!(
                "{:?} is not one of AES_CM_128_HMAC_SHA1_80, AES_CM_128_HMAC_SHA1_32, AEAD_AES_128_GCM, AEAD_AES_256_GCM",
                self.profile
            ),
        })?;
        let want = profile.key_len() + profile.salt_len();
        let session = |field: &'static str, k: &[u8]| {
            if k.len() != want {
                return Err(StateError::BadSrtp {
                    field,
                    why: format!(
                        "{} needs {want} bytes (master key {} + salt {}), got {}",
                        profile.name(),
                        profile.key_len(),
                        profile.salt_len(),
                        k.len()
                    ),
                });
            }
            let (key, salt) = k.split_at(profile.key_len());
            Session::new(profile, key, salt)
                .map(Arc::new)
                .map_err(|why| StateError::BadSrtp { field, why })
        };
        let rx = session("srtp.endpoint_key", &self.endpoint_key)?;
        let tx = if self.bridge_key.is_empty() {
            // One key for both directions: a separate session object so both sides' state
            // stays apart (the keys are the same).
            session("srtp.endpoint_key", &self.endpoint_key)?
        } else {
            session("srtp.bridge_key", &self.bridge_key)?
        };
        Ok(EndpointSrtp { profile, rx, tx })
    }
}

/// A WebRTC endpoint's parameters as a request gives them (`AddEndpointRequest.webrtc`).
#[derive(Debug, Clone, Default)]
pub struct WebRtcRequest {
    /// The bridge's ufrag for the endpoint.
    pub local_ufrag: String,
    /// The bridge's ice-pwd for the endpoint.
    pub local_pwd: String,
    /// The endpoint's ufrag.
    pub remote_ufrag: String,
    /// The endpoint's certificate fingerprint, `sha-256 AB:CD:...`.
    pub remote_fingerprint: String,
}

/// A receiver's rewrite as a request gives it (`AddEndpointRequest.rewrite`): `(from, to)` pairs.
#[derive(Debug, Clone, Default)]
pub struct RewriteRequest {
    /// Payload types.
    pub payload_types: Vec<(u32, u32)>,
    /// Header extension ids (`to` 0 removes the element).
    pub extensions: Vec<(u32, u32)>,
}

impl RewriteRequest {
    pub(super) fn is_empty(&self) -> bool {
        self.payload_types.is_empty() && self.extensions.is_empty()
    }
}

/// An endpoint to add (`AddEndpointRequest`).
#[derive(Debug, Clone, Copy, Default)]
pub struct NewEndpoint<'a> {
    /// Its conference.
    pub conference: &'a str,
    /// Its id.
    pub endpoint: &'a str,
    /// SSRCs it sends.
    pub ssrcs: &'a [u32],
    /// "ip:port", or empty (latch; and always for WebRTC).
    pub remote_addr: &'a str,
    /// SDES-style SRTP keys.
    pub srtp: Option<&'a SrtpRequest>,
    /// WebRTC (ICE-lite, DTLS-SRTP) instead of a configured or latched address and keys.
    pub webrtc: Option<&'a WebRtcRequest>,
    /// How its copies are rewritten.
    pub rewrite: Option<&'a RewriteRequest>,
}

/// A relay to add: the bridge at `remote_addr`, link conference number `link`, sealing with
/// `tx_key` and opening with `rx_key`; `downstream` when the remote bridge pulls from this one
/// (a stream's next tier).
#[derive(Debug, Clone, Copy)]
pub struct NewRelay<'a> {
    /// "ip:port" of the remote bridge's media socket.
    pub remote_addr: &'a str,
    /// The link's conference number.
    pub link: u32,
    /// Key this bridge seals with.
    pub tx_key: &'a [u8],
    /// Key the remote bridge seals with.
    pub rx_key: &'a [u8],
    /// The remote bridge pulls this conference's media from this one.
    pub downstream: bool,
}

/// A subscription as a request gives it: for an endpoint or a relay of a conference, every
/// sender (`all`) or the senders named by endpoint id and by SSRC.
#[derive(Debug, Clone, Copy)]
pub struct SubscriptionRequest<'a> {
    /// The endpoint it is for (or empty, with `relay_id`).
    pub endpoint_id: &'a str,
    /// The relay it is for (or empty, with `endpoint_id`).
    pub relay_id: &'a str,
    /// Every sender.
    pub all: bool,
    /// Senders by endpoint id (endpoints of the conference on this bridge).
    pub endpoints: &'a [String],
    /// Senders by SSRC.
    pub ssrcs: &'a [u32],
}
