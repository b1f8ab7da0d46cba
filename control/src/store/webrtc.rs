//! What a WebRTC participant needs beyond RTP: its ICE-lite and DTLS-SRTP parameters, the
//! rewrites on the packets it receives, and (for a publisher) the media description its offer
//! negotiated, so a viewer joining later, or on a standby after a takeover, can be answered.
//! Plain data: [`crate::signal::sdp`] makes them from offers, the executor hands them to bridges.

use serde::{Deserialize, Serialize};

/// ICE-lite and DTLS-SRTP parameters of one WebRTC participant (the bridge's side and the
/// participant's, from its offer and our answer).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebRtc {
    /// The bridge's ICE ufrag for this participant (the answer's `a=ice-ufrag`).
    pub local_ufrag: String,
    /// The bridge's ICE password for this participant (the answer's `a=ice-pwd`).
    pub local_pwd: String,
    /// The participant's `a=ice-ufrag`.
    pub remote_ufrag: String,
    /// The participant's certificate fingerprint, `sha-256 AB:CD:...`.
    pub remote_fingerprint: String,
}

/// Whether `s` is `min` to 256 ice-chars (RFC 8839: ALPHA / DIGIT / "+" / "/"), as ICE ufrags
/// (min 4) and passwords (min 22) must be.
pub fn is_ice_chars(s: &str, min: usize) -> bool {
    (min..=256).contains(&s.len())
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'+' || c == b'/')
}

/// One id mapped to another (a payload type, a header extension id); `to` = 0 removes an
/// extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdMap {
    /// The id in the packets as they arrive (the publisher's numbering).
    pub from: u8,
    /// The id on this receiver's copy.
    pub to: u8,
}

/// How the packets one participant receives are rewritten on its copy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rewrite {
    /// Payload types.
    pub payload_types: Vec<IdMap>,
    /// Header extension ids (`to` = 0 strips the extension).
    pub extensions: Vec<IdMap>,
    /// RTX the receiver negotiated: `from` a media payload type, `to` its RTX payload type,
    /// both in the receiver's numbering (the answer's `a=fmtp:<to> apt=<from>`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rtx_payload_types: Vec<IdMap>,
    /// The RTX SSRC the bridge sends this receiver repairs of each media SSRC on (the answer's
    /// `a=ssrc-group:FID`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rtx_ssrcs: Vec<RtxStream>,
    /// A viewer of a simulcast publisher: it gets one layer at a time as one stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub simulcast: Option<SimulcastView>,
}

/// How a viewer receives a simulcast publisher's video.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimulcastView {
    /// The publisher (participant id).
    pub publisher: String,
    /// The one SSRC the viewer gets the video on.
    pub ssrc: u32,
    /// Largest frame height it wants (0: no limit).
    #[serde(default)]
    pub max_height: u32,
}

/// A media SSRC and the RTX SSRC its repairs go out on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RtxStream {
    /// The media SSRC.
    pub media: u32,
    /// Its RTX SSRC.
    pub rtx: u32,
}

impl Rewrite {
    /// Nothing to rewrite and no RTX.
    pub fn is_empty(&self) -> bool {
        !self.rewrites() && !self.has_rtx() && self.simulcast.is_none()
    }

    /// Some payload type or extension id changes.
    pub fn rewrites(&self) -> bool {
        !self.payload_types.is_empty() || !self.extensions.is_empty()
    }

    /// The receiver negotiated RTX for some stream.
    pub fn has_rtx(&self) -> bool {
        !self.rtx_payload_types.is_empty() && !self.rtx_ssrcs.is_empty()
    }
}

/// A codec of a media section: one payload type with its rtpmap, fmtp and rtcp-fb.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Codec {
    /// Payload type.
    pub pt: u8,
    /// Encoding name as the offer spells it (`opus`, `VP8`, `H264`, ...).
    pub name: String,
    /// Clock rate, Hz.
    pub clock: u32,
    /// Audio channels (1 when the rtpmap gives none).
    pub channels: u32,
    /// The fmtp parameters (`a=fmtp:PT` value), empty when none.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub fmtp: String,
    /// RTCP feedback (`a=rtcp-fb:PT` values: `nack`, `nack pli`, `ccm fir`, ...).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rtcp_fb: Vec<String>,
}

/// A header extension: its id and URI.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Extension {
    /// Id (1-255).
    pub id: u8,
    /// URI.
    pub uri: String,
}

/// One media section of a publisher as negotiated (what a viewer's answer repeats).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MediaSection {
    /// `audio` or `video`.
    pub kind: String,
    /// Its `a=mid`.
    pub mid: String,
    /// The codecs the bridge accepted, in the offer's order.
    pub codecs: Vec<Codec>,
    /// The header extensions the bridge accepted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extensions: Vec<Extension>,
    /// The SSRCs it sends media on (retransmission SSRCs left out: RTX is not negotiated).
    pub ssrcs: Vec<u32>,
    /// Its `a=msid` (`stream-id track-id`), empty when none.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub msid: String,
    /// The CNAME of its SSRCs.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cname: String,
    /// Simulcast: its layers' RIDs, lowest first (the offer's `a=simulcast:send` order), whose
    /// SSRCs the bridge learns from the packets.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rids: Vec<String>,
    /// The id of the RID header extension (`sdes:rtp-stream-id`) in its packets (0: none).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub rid_ext: u8,
}

fn is_zero(v: &u8) -> bool {
    *v == 0
}

/// A publisher's media as negotiated, one section per m-line it sends on.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MediaDescription {
    /// The sections, in the offer's order.
    pub sections: Vec<MediaSection>,
}
