//! Answers to checked [`Offer`]s: which m-lines, codecs and header extensions the bridge takes,
//! the publisher's media description kept for later viewers, a viewer's [`Rewrite`], and the
//! answer's text.
//!
//! The bridge is ICE-lite with one host candidate (its advertised media address), the DTLS server
//! (`a=setup:passive`), muxes RTP and RTCP on one port and BUNDLEs every m-line it takes. It
//! forwards opus, VP8, VP9 and H264, in the offerer's numbering. A viewer that offers RTX gets
//! it: the bridge answers its NACKs from its retransmission cache on an RTX stream of its own
//! per video SSRC (`a=ssrc-group:FID`). Publishers are not offered RTX, RED nor FEC: the NACKs
//! the bridge cannot answer reach them and they retransmit on the media SSRC. Header
//! extensions kept: [`KEPT_EXTENSIONS`]; transport-cc is not (the bridge does not terminate
//! congestion control), nor is its rtcp-fb. A publisher's MID and RID extensions are accepted
//! but never reach a viewer: its copy has them stripped ([`STRIPPED_EXTENSIONS`]), and its answer
//! names the publisher's SSRCs (`a=ssrc`, `a=msid`), by which clients then demux.

use std::net::SocketAddr;

use super::sdp::{Kind, Offer, OfferedMedia, SdpError, fmtp_param};
use crate::store::webrtc::{
    Codec, Extension, IdMap, MediaDescription, MediaSection, Rewrite, RtxStream, SimulcastView,
};

/// Header extensions the bridge keeps (forwarded to viewers that offered them too).
pub const KEPT_EXTENSIONS: [&str; 5] = [
    "urn:ietf:params:rtp-hdrext:ssrc-audio-level",
    "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time",
    "urn:ietf:params:rtp-hdrext:toffset",
    "urn:3gpp:video-orientation",
    "http://www.webrtc.org/experiments/rtp-hdrext/playout-delay",
];

/// Header extensions a publisher may send that a viewer never gets as they are (its mids and
/// rids are not the viewer's): stripped from every viewer's copy.
pub const STRIPPED_EXTENSIONS: [&str; 3] = [
    "urn:ietf:params:rtp-hdrext:sdes:mid",
    "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id",
    "urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id",
];

/// RTCP feedback the bridge passes on (the rest, e.g. transport-cc, is not negotiated).
pub const KEPT_FEEDBACK: [&str; 4] = ["nack", "nack pli", "ccm fir", "goog-remb"];

/// Priority of the one host candidate (type preference 126, local preference 65535, component 1).
pub const CANDIDATE_PRIORITY: u32 = 2_130_706_431;

/// The bridge's side of a session: its ICE credentials for it, its certificate fingerprint and
/// its media address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Local {
    /// `a=ice-ufrag`.
    pub ufrag: String,
    /// `a=ice-pwd`.
    pub pwd: String,
    /// `a=fingerprint` value (`sha-256 AB:...`).
    pub fingerprint: String,
    /// The bridge's media address: the only candidate.
    pub media_addr: SocketAddr,
    /// The `o=` line's session id.
    pub session_id: u64,
}

/// What the answer says for one offered m-line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    /// Taken (else rejected: port 0).
    pub accepted: bool,
    /// The answer's direction when taken.
    pub direction: &'static str,
    /// Codecs taken, in the offerer's numbering.
    pub codecs: Vec<Codec>,
    /// Header extensions taken, with the offerer's ids.
    pub extensions: Vec<Extension>,
    /// The streams the bridge sends on it (a viewer's): SSRCs, their msid and cname.
    pub ssrcs: Vec<u32>,
    /// `a=msid` of those streams (empty: none).
    pub msid: String,
    /// Their CNAME.
    pub cname: String,
    /// The RTX SSRC of each of `ssrcs` that has one (`a=ssrc-group:FID`).
    pub rtx_ssrcs: Vec<RtxStream>,
    /// A simulcast publisher's layers the bridge receives (`a=rid:<id> recv`, `a=simulcast:recv`).
    pub rids: Vec<String>,
}

impl Section {
    fn rejected() -> Self {
        Self {
            accepted: false,
            direction: "inactive",
            codecs: Vec::new(),
            extensions: Vec::new(),
            ssrcs: Vec::new(),
            msid: String::new(),
            cname: String::new(),
            rtx_ssrcs: Vec::new(),
            rids: Vec::new(),
        }
    }
}

/// The URI of the RID header extension (RFC 8852).
pub const RID_URI: &str = "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id";

/// The SSRC a viewer of a simulcast publisher gets its video on (one layer at a time): the same
/// for every viewer (each one's SRTP keys are its own), never a publisher's SSRC in practice
/// (those are random; a collision would only confuse that one viewer).
pub const SIMULCAST_SSRC: u32 = 0x5242_5631; // "RBV1"

/// The layers (RIDs, in the order the offer's `a=simulcast:send` lists them, which the bridge
/// takes as lowest first) of a video m-line that sends simulcast with the RID extension; empty
/// for anything else. Of each layer's alternatives the first; paused ones (`~`) are skipped.
pub fn simulcast_rids(m: &OfferedMedia) -> Vec<String> {
    if m.kind != Kind::Video || !m.extensions.iter().any(|e| e.uri == RID_URI) {
        return Vec::new();
    }
    let mut words = m.simulcast.split_whitespace();
    let mut rids = Vec::new();
    while let Some(w) = words.next() {
        let list = words.next().unwrap_or("");
        if w != "send" {
            continue;
        }
        for layer in list.split(';') {
            let first = layer.split(',').next().unwrap_or("");
            if !first.is_empty() && !first.starts_with('~') && m.rids.iter().any(|r| r == first) {
                rids.push(first.to_string());
            }
        }
    }
    rids.truncate(4);
    rids
}

/// A publisher's negotiation: the answer's sections, its media as kept with it, the SSRCs it
/// sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    /// One per offered m-line.
    pub sections: Vec<Section>,
    /// What later viewers are answered from.
    pub media: MediaDescription,
    /// Every SSRC of its taken m-lines (the bridge forwards by SSRC).
    pub ssrcs: Vec<u32>,
}

/// A viewer's negotiation: the answer's sections and the rewrite of its copies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Play {
    /// One per offered m-line.
    pub sections: Vec<Section>,
    /// Payload types and extension ids from the publisher's numbering to the viewer's.
    pub rewrite: Rewrite,
}

/// Whether the bridge forwards `c` on an m-line of `kind`.
pub fn forwarded(kind: &Kind, c: &Codec) -> bool {
    let is = |n: &str| c.name.eq_ignore_ascii_case(n);
    match kind {
        Kind::Audio => is("opus") && c.clock == 48_000,
        Kind::Video => (is("VP8") || is("VP9") || is("H264")) && c.clock == 90_000,
        Kind::Other(_) => false,
    }
}

/// Whether a decoder of `b` decodes what `a` encodes: the same name, clock and channels, and
/// for H264 the same profile (profile_idc and constraint flags; the level may differ) and
/// packetization mode, for VP9 the same profile.
pub fn same_codec(a: &Codec, b: &Codec) -> bool {
    if !a.name.eq_ignore_ascii_case(&b.name) || a.clock != b.clock || a.channels != b.channels {
        return false;
    }
    let param = |c: &Codec, k: &str, default: &'static str| -> String {
        fmtp_param(&c.fmtp, k)
            .unwrap_or(default)
            .to_ascii_lowercase()
    };
    if a.name.eq_ignore_ascii_case("H264") {
        let profile = |c: &Codec| {
            let p = param(c, "profile-level-id", "42000a");
            p.get(..4).unwrap_or("").to_string()
        };
        return profile(a) == profile(b)
            && param(a, "packetization-mode", "0") == param(b, "packetization-mode", "0");
    }
    if a.name.eq_ignore_ascii_case("VP9") {
        return param(a, "profile-id", "0") == param(b, "profile-id", "0");
    }
    true
}

/// The codecs of `m` the bridge forwards, with the feedback it passes on.
fn kept_codecs(m: &OfferedMedia) -> Vec<Codec> {
    m.codecs
        .iter()
        .filter(|c| forwarded(&m.kind, c))
        .map(|c| Codec {
            rtcp_fb: c
                .rtcp_fb
                .iter()
                .filter(|f| KEPT_FEEDBACK.contains(&f.as_str()))
                .cloned()
                .collect(),
            ..c.clone()
        })
        .collect()
}

/// The m-lines to take for an endpoint that `sends` (a publisher) or receives (a viewer):
/// live audio/video in that direction with a codec the bridge forwards. Refuses, naming why,
/// when there are none, or when the taken ones cannot share the bridge's one transport.
fn usable(offer: &Offer, sends: bool) -> Result<Vec<usize>, SdpError> {
    let way = |m: &OfferedMedia| {
        if sends {
            m.direction.sends()
        } else {
            m.direction.receives()
        }
    };
    let live: Vec<usize> = (0..offer.media.len())
        .filter(|&i| offer.media[i].is_rtp() && way(&offer.media[i]))
        .collect();
    if live.is_empty() {
        return Err(if sends {
            SdpError::Direction("publish", "sendonly or sendrecv")
        } else {
            SdpError::Direction("play", "recvonly or sendrecv")
        });
    }
    let taken: Vec<usize> = live
        .into_iter()
        .filter(|&i| !kept_codecs(&offer.media[i]).is_empty())
        .collect();
    if taken.is_empty() {
        return Err(SdpError::NoCodec);
    }
    for (n, &i) in taken.iter().enumerate() {
        let m = &offer.media[i];
        if !m.rtcp_mux {
            return Err(SdpError::NoRtcpMux(i, m.mid.clone()));
        }
        if (taken.len() > 1 || n > 0) && !offer.bundle.contains(&m.mid) {
            return Err(SdpError::NotBundled(m.mid.clone()));
        }
    }
    Ok(taken)
}

/// Checks that `offer` can play a stream (before looking for its publisher): some m-line
/// receives a codec the bridge forwards.
pub fn check_play(offer: &Offer) -> Result<(), SdpError> {
    usable(offer, false).map(|_| ())
}

/// Negotiates a publisher's offer (WHIP): its sending m-lines with a forwarded codec are taken
/// (`recvonly`), each must declare its SSRCs.
pub fn publish(offer: &Offer) -> Result<Publish, SdpError> {
    let taken = usable(offer, true)?;
    let mut sections = vec![Section::rejected(); offer.media.len()];
    let mut kept = Vec::new();
    let mut ssrcs = Vec::new();
    for i in taken {
        let m = &offer.media[i];
        let rids = simulcast_rids(m);
        if m.ssrcs.is_empty() && rids.is_empty() {
            return Err(SdpError::NoSsrc(i, m.mid.clone()));
        }
        let mut codecs = kept_codecs(m);
        if !rids.is_empty() {
            // The bridge reads VP8's payload descriptor to switch layers at keyframes: a
            // simulcast publisher is answered VP8 only.
            codecs.retain(|c| c.name.eq_ignore_ascii_case("VP8"));
            if codecs.is_empty() {
                return Err(SdpError::NoCodec);
            }
        }
        let extensions: Vec<Extension> = m
            .extensions
            .iter()
            .filter(|e| {
                KEPT_EXTENSIONS.contains(&e.uri.as_str())
                    || STRIPPED_EXTENSIONS.contains(&e.uri.as_str())
            })
            .cloned()
            .collect();
        let repair = m.repair_ssrcs();
        let primary: Vec<u32> = m
            .ssrcs
            .iter()
            .map(|s| s.ssrc)
            .filter(|s| !repair.contains(s))
            .collect();
        for s in &m.ssrcs {
            if !ssrcs.contains(&s.ssrc) {
                ssrcs.push(s.ssrc);
            }
        }
        let first = m.ssrcs.iter().find(|s| primary.contains(&s.ssrc));
        let msid = if m.msid.is_empty() {
            first.map(|s| s.msid.clone()).unwrap_or_default()
        } else {
            m.msid.clone()
        };
        kept.push(MediaSection {
            kind: m.kind.name().to_string(),
            mid: m.mid.clone(),
            codecs: codecs.clone(),
            extensions: extensions.clone(),
            ssrcs: primary,
            msid,
            cname: first.map(|s| s.cname.clone()).unwrap_or_default(),
            rid_ext: extensions
                .iter()
                .find(|e| e.uri == RID_URI && !rids.is_empty())
                .map_or(0, |e| e.id),
            rids: rids.clone(),
        });
        sections[i] = Section {
            accepted: true,
            direction: "recvonly",
            codecs,
            extensions,
            rids,
            ..Section::rejected()
        };
    }
    Ok(Publish {
        sections,
        media: MediaDescription { sections: kept },
        ssrcs,
    })
}

/// Negotiates a viewer's offer (WHEP) against its stream's publisher: the k-th receiving m-line
/// of a kind gets the publisher's k-th section of that kind (`sendonly`), with the codecs both
/// have in the viewer's numbering, the kept extensions both have, and the publisher's streams.
/// The rewrite maps the publisher's payload types and extension ids to the viewer's, and strips
/// the extensions the viewer does not take (always MID and RID).
pub fn play(offer: &Offer, publisher: &MediaDescription) -> Result<Play, SdpError> {
    let taken = usable(offer, false)?;
    let mut sections = vec![Section::rejected(); offer.media.len()];
    let mut rewrite = Rewrite::default();
    let mut used = vec![false; publisher.sections.len()];
    for i in taken {
        let m = &offer.media[i];
        let Some(k) = (0..publisher.sections.len())
            .find(|&k| !used[k] && publisher.sections[k].kind == m.kind.name())
        else {
            continue;
        };
        let p = &publisher.sections[k];
        let viewer = kept_codecs(m);
        let codecs: Vec<Codec> = viewer
            .iter()
            .filter(|v| p.codecs.iter().any(|c| same_codec(c, v)))
            .cloned()
            .collect();
        if codecs.is_empty() {
            continue;
        }
        used[k] = true;
        for c in &p.codecs {
            if let Some(v) = codecs.iter().find(|v| same_codec(c, v))
                && v.pt != c.pt
                && !rewrite.payload_types.iter().any(|x| x.from == c.pt)
            {
                rewrite.payload_types.push(IdMap {
                    from: c.pt,
                    to: v.pt,
                });
            }
        }
        let extensions: Vec<Extension> = m
            .extensions
            .iter()
            .filter(|e| {
                KEPT_EXTENSIONS.contains(&e.uri.as_str())
                    && p.extensions.iter().any(|x| x.uri == e.uri)
            })
            .cloned()
            .collect();
        // RTX: the viewer's rtx payload type of each video codec taken; the bridge answers the
        // viewer's NACKs from its cache on an RTX stream per media SSRC.
        let mut codecs = codecs;
        let mut rtx_ssrcs = Vec::new();
        // A simulcast publisher's video reaches the viewer as one stream on the bridge's SSRC.
        let ssrcs = if p.rids.is_empty() {
            p.ssrcs.clone()
        } else {
            rewrite.simulcast = Some(SimulcastView {
                publisher: String::new(),
                ssrc: SIMULCAST_SSRC,
                max_height: 0,
            });
            vec![SIMULCAST_SSRC]
        };
        if m.kind == Kind::Video {
            let rtx: Vec<(u8, Codec)> = m
                .codecs
                .iter()
                .filter(|c| c.name.eq_ignore_ascii_case("rtx"))
                .filter_map(|c| {
                    let apt = fmtp_param(&c.fmtp, "apt")?.parse::<u8>().ok()?;
                    codecs.iter().any(|v| v.pt == apt).then(|| (apt, c.clone()))
                })
                .collect();
            for (apt, c) in rtx {
                rewrite.rtx_payload_types.push(IdMap {
                    from: apt,
                    to: c.pt,
                });
                codecs.push(Codec {
                    rtcp_fb: Vec::new(),
                    ..c
                });
            }
            if rewrite
                .rtx_payload_types
                .iter()
                .any(|x| codecs.iter().any(|c| c.pt == x.from))
            {
                for &media in &ssrcs {
                    let rtx = rtx_ssrc(media, &ssrcs);
                    rtx_ssrcs.push(RtxStream { media, rtx });
                    rewrite.rtx_ssrcs.push(RtxStream { media, rtx });
                }
            }
        }
        sections[i] = Section {
            accepted: true,
            direction: "sendonly",
            codecs,
            extensions,
            ssrcs,
            msid: p.msid.clone(),
            cname: p.cname.clone(),
            rtx_ssrcs,
            rids: Vec::new(),
        };
    }
    if sections.iter().all(|s| !s.accepted) {
        let mut sends: Vec<String> = Vec::new();
        for c in publisher.sections.iter().flat_map(|s| &s.codecs) {
            if !sends.iter().any(|n| n.eq_ignore_ascii_case(&c.name)) {
                sends.push(c.name.clone());
            }
        }
        return Err(SdpError::NoCommonCodec(sends.join(", ")));
    }
    // Every extension the publisher negotiated: to the viewer's id for the same URI when the
    // viewer takes it, else stripped.
    for e in publisher.sections.iter().flat_map(|s| &s.extensions) {
        if rewrite.extensions.iter().any(|x| x.from == e.id) {
            continue;
        }
        let to = sections
            .iter()
            .flat_map(|s| &s.extensions)
            .find(|x| x.uri == e.uri && !STRIPPED_EXTENSIONS.contains(&e.uri.as_str()))
            .map_or(0, |x| x.id);
        if to != e.id {
            rewrite.extensions.push(IdMap { from: e.id, to });
        }
    }
    Ok(Play { sections, rewrite })
}

/// The RTX SSRC the bridge repairs `media` on for a viewer: derived from it (a viewer's RTX
/// streams have their own SRTP keys, so two viewers may share one), never one of `taken`.
fn rtx_ssrc(media: u32, taken: &[u32]) -> u32 {
    let mut s = media.wrapping_mul(0x9E37_79B1) ^ 0x5254_5821;
    while s == 0 || taken.contains(&s) {
        s = s.wrapping_add(1);
    }
    s
}

/// The answer's text (CRLF line ends).
pub fn write(offer: &Offer, sections: &[Section], local: &Local) -> String {
    use std::fmt::Write as _;
    let (net, ip, port) = match local.media_addr {
        SocketAddr::V4(a) => ("IP4", a.ip().to_string(), a.port()),
        SocketAddr::V6(a) => ("IP6", a.ip().to_string(), a.port()),
    };
    let mut s = String::with_capacity(2048);
    let mut line = |l: &str| {
        s.push_str(l);
        s.push_str("\r\n");
    };
    line("v=0");
    line(&format!("o=- {} 1 IN IP4 0.0.0.0", local.session_id));
    line("s=-");
    line("t=0 0");
    let bundle: Vec<&str> = offer
        .media
        .iter()
        .zip(sections)
        .filter(|(_, a)| a.accepted)
        .map(|(m, _)| m.mid.as_str())
        .collect();
    line(&format!("a=group:BUNDLE {}", bundle.join(" ")));
    line("a=ice-lite");
    if sections.iter().any(|a| !a.msid.is_empty()) {
        line("a=msid-semantic: WMS *");
    }
    for (m, a) in offer.media.iter().zip(sections) {
        if !a.accepted {
            line(&format!(
                "m={} 0 {} {}",
                m.kind.name(),
                m.proto,
                m.formats.join(" ")
            ));
            line("c=IN IP4 0.0.0.0");
            line(&format!("a=mid:{}", m.mid));
            continue;
        }
        let pts: Vec<String> = a.codecs.iter().map(|c| c.pt.to_string()).collect();
        line(&format!(
            "m={} {port} {} {}",
            m.kind.name(),
            m.proto,
            pts.join(" ")
        ));
        line(&format!("c=IN {net} {ip}"));
        line(&format!("a=mid:{}", m.mid));
        line(&format!("a={}", a.direction));
        line(&format!("a=ice-ufrag:{}", local.ufrag));
        line(&format!("a=ice-pwd:{}", local.pwd));
        line(&format!("a=fingerprint:{}", local.fingerprint));
        line("a=setup:passive");
        line("a=rtcp-mux");
        if m.rtcp_rsize {
            line("a=rtcp-rsize");
        }
        for e in &a.extensions {
            line(&format!("a=extmap:{} {}", e.id, e.uri));
        }
        for c in &a.codecs {
            let mut map = format!("a=rtpmap:{} {}/{}", c.pt, c.name, c.clock);
            if m.kind == Kind::Audio && c.channels > 1 {
                let _ = write!(map, "/{}", c.channels);
            }
            line(&map);
            for f in &c.rtcp_fb {
                line(&format!("a=rtcp-fb:{} {f}", c.pt));
            }
            if !c.fmtp.is_empty() {
                line(&format!("a=fmtp:{} {}", c.pt, c.fmtp));
            }
        }
        if !a.rids.is_empty() {
            for r in &a.rids {
                line(&format!("a=rid:{r} recv"));
            }
            line(&format!("a=simulcast:recv {}", a.rids.join(";")));
        }
        if !a.msid.is_empty() {
            line(&format!("a=msid:{}", a.msid));
        }
        let cname = if a.cname.is_empty() {
            "ringbridge"
        } else {
            &a.cname
        };
        for r in &a.rtx_ssrcs {
            line(&format!("a=ssrc-group:FID {} {}", r.media, r.rtx));
        }
        let rtx = a.rtx_ssrcs.iter().map(|r| &r.rtx);
        for ssrc in a.ssrcs.iter().chain(rtx) {
            line(&format!("a=ssrc:{ssrc} cname:{cname}"));
            if !a.msid.is_empty() {
                line(&format!("a=ssrc:{ssrc} msid:{}", a.msid));
            }
        }
        line(&format!(
            "a=candidate:1 1 udp {CANDIDATE_PRIORITY} {ip} {port} typ host"
        ));
        line("a=end-of-candidates");
    }
    s
}

#[cfg(test)]
#[path = "answer_tests.rs"]
mod tests;
