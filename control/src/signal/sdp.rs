//! SDP offers as WHIP and WHEP clients send them: parsed and checked into an [`Offer`], with
//! typed errors that name what is wrong.
//!
//! **Parser: `webrtc-sdp`**, Firefox's SDP parser (Mozilla's `rsdparsa`), which builds here and
//! parses the offers of Chrome, Firefox and aiortc we keep as golden files. It knows WebRTC's
//! attributes (ICE, DTLS, extmap, rtcp-fb, ssrc, ssrc-group, msid, rid, simulcast) and turns
//! what it does not know into warnings rather than failures, as a browser must; a line it cannot
//! parse fails the offer, and its message names the line. Before it runs, the body is bounded
//! here ([`MAX_SDP_BYTES`], [`MAX_MEDIA`] m-lines), so a huge offer costs one scan of its bytes.
//! Its `log` warnings (one per unknown line: an offer could carry thousands) are not logged
//! unless `RUST_LOG` names `webrtc_sdp` (see `main.rs`).
//!
//! What is kept of an offer is what an answer and the bridge need: the ICE credentials, the
//! certificate fingerprint, the DTLS role, the BUNDLE group, and per m-line its kind, mid,
//! direction, codecs (rtpmap, fmtp as `webrtc-sdp` writes it, rtcp-fb), header extensions,
//! SSRCs with their groups, msid and cname, and rid/simulcast (parsed only: forwarding
//! simulcast is a later issue). [`super::answer`] makes answers from it.

use webrtc_sdp::attribute_type::{
    SdpAttribute, SdpAttributeGroupSemantic, SdpAttributePayloadType, SdpAttributeRtcpFbType,
    SdpAttributeSetup,
};
use webrtc_sdp::media_type::{SdpFormatList, SdpMediaValue};

use crate::store::webrtc::{Codec, Extension, is_ice_chars};

/// Largest offer accepted, bytes (the HTTP layer refuses larger bodies before reading them).
pub const MAX_SDP_BYTES: usize = 64 << 10;
/// Most m-lines an offer may have (a browser's offers have a handful).
pub const MAX_MEDIA: usize = 16;
/// Hash functions the bridge checks a peer's certificate with (RFC 8122 names).
pub const HASHES: [(&str, usize); 3] = [("sha-256", 32), ("sha-384", 48), ("sha-512", 64)];

/// Why an offer is refused. Each names what is wrong (an HTTP 400 carries it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SdpError {
    /// Over [`MAX_SDP_BYTES`].
    #[error("the offer is {0} bytes, over the limit of {MAX_SDP_BYTES}")]
    TooLarge(usize),
    /// Over [`MAX_MEDIA`] m-lines.
    #[error("the offer has {0} m-lines, over the limit of {MAX_MEDIA}")]
    TooManyMedia(usize),
    /// Not SDP at all (not UTF-8, or not starting with `v=0`).
    #[error("not an SDP offer: {0}")]
    NotAnOffer(String),
    /// A line or the order of lines does not parse.
    #[error("malformed SDP: {0}")]
    Malformed(String),
    /// No m-line.
    #[error("the offer has no m-line")]
    NoMedia,
    /// An m-line has no mid.
    #[error("m-line {0} has no a=mid (one per m-line, for BUNDLE)")]
    NoMid(usize),
    /// No ICE ufrag or password for an m-line, at media or session level.
    #[error(
        "no ICE credentials: m-line {0} has no a=ice-ufrag and a=ice-pwd (media or session level)"
    )]
    NoIceCredentials(usize),
    /// ICE credentials outside RFC 8839's ice-chars and lengths.
    #[error("bad ICE credentials: {0}")]
    BadIceCredentials(String),
    /// The offerer is ICE-lite too: nobody would send connectivity checks.
    #[error("the offer is ice-lite: the bridge is ice-lite too, so nobody would send checks")]
    IceLite,
    /// No `a=fingerprint` with a hash function the bridge checks with.
    #[error("no fingerprint: the offer needs a=fingerprint with sha-256, sha-384 or sha-512")]
    NoFingerprint,
    /// An `a=fingerprint` that does not parse.
    #[error("bad fingerprint: {0}")]
    BadFingerprint(String),
    /// A DTLS role the bridge cannot answer: it is the DTLS server (`a=setup:passive`).
    #[error(
        "a=setup:{0}: the offerer must be actpass or active (the bridge answers setup:passive)"
    )]
    Setup(String),
    /// No m-line in the direction the endpoint needs.
    #[error("nothing to {0}: no audio or video m-line is {1}")]
    Direction(&'static str, &'static str),
    /// No m-line offers a codec the bridge forwards.
    #[error(
        "no codec we forward: the offer's audio and video m-lines have none of opus, VP8, VP9 and H264"
    )]
    NoCodec,
    /// A publisher's m-line without SSRCs (the bridge forwards by SSRC).
    #[error(
        "m-line {0} (mid {1}) declares no a=ssrc: the bridge forwards by SSRC (simulcast by rid without SSRCs is not supported yet)"
    )]
    NoSsrc(usize, String),
    /// An accepted m-line without `a=rtcp-mux`.
    #[error("m-line {0} (mid {1}) has no a=rtcp-mux: the bridge takes RTP and RTCP on one port")]
    NoRtcpMux(usize, String),
    /// Several m-lines to accept and no BUNDLE group holding them.
    #[error(
        "mid {0} is not in the offer's a=group:BUNDLE: the bridge takes all media on one transport"
    )]
    NotBundled(String),
    /// A viewer offers no codec the stream's publisher sends.
    #[error("no codec in common with the stream's publisher: it sends {0}")]
    NoCommonCodec(String),
}

/// A media kind of an m-line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// `m=audio`.
    Audio,
    /// `m=video`.
    Video,
    /// `m=application` (data channels, which the bridge does not do) or anything else.
    Other(String),
}

impl Kind {
    /// As SDP spells it.
    pub fn name(&self) -> &str {
        match self {
            Self::Audio => "audio",
            Self::Video => "video",
            Self::Other(s) => s,
        }
    }
}

/// An m-line's direction (`a=sendrecv` when none is given).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// `a=sendrecv`.
    SendRecv,
    /// `a=sendonly`.
    SendOnly,
    /// `a=recvonly`.
    RecvOnly,
    /// `a=inactive`.
    Inactive,
}

impl Direction {
    /// Whether the offerer sends on it.
    pub fn sends(self) -> bool {
        matches!(self, Self::SendRecv | Self::SendOnly)
    }

    /// Whether the offerer receives on it.
    pub fn receives(self) -> bool {
        matches!(self, Self::SendRecv | Self::RecvOnly)
    }
}

/// An SSRC of an m-line with its `a=ssrc` attributes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ssrc {
    /// The SSRC.
    pub ssrc: u32,
    /// `cname:` (empty when none).
    pub cname: String,
    /// `msid:` (empty when none).
    pub msid: String,
}

/// One m-line of an offer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfferedMedia {
    /// Its kind.
    pub kind: Kind,
    /// Its port (0: rejected by the offerer, unless `bundle_only`).
    pub port: u32,
    /// Whether it has `a=bundle-only` (port 0, yet part of the BUNDLE transport).
    pub bundle_only: bool,
    /// Its transport protocol (`UDP/TLS/RTP/SAVPF`).
    pub proto: String,
    /// Its format list as written (payload types, or `webrtc-datachannel`).
    pub formats: Vec<String>,
    /// Its `a=mid`.
    pub mid: String,
    /// Its direction.
    pub direction: Direction,
    /// Its codecs, in the m-line's order (payload types with an rtpmap; the static ones 0 and
    /// 8 without one are named PCMU and PCMA).
    pub codecs: Vec<Codec>,
    /// Its header extensions.
    pub extensions: Vec<Extension>,
    /// Its SSRCs.
    pub ssrcs: Vec<Ssrc>,
    /// Its SSRC groups: semantics (`FID`, `FEC-FR`, `SIM`, ...) and SSRCs.
    pub ssrc_groups: Vec<(String, Vec<u32>)>,
    /// Its `a=msid` (empty when none).
    pub msid: String,
    /// Its `a=rid` ids (parsed only: simulcast is not forwarded yet).
    pub rids: Vec<String>,
    /// Its `a=simulcast` value (parsed only).
    pub simulcast: String,
    /// Whether it has `a=rtcp-mux`.
    pub rtcp_mux: bool,
    /// Whether it has `a=rtcp-rsize`.
    pub rtcp_rsize: bool,
}

impl OfferedMedia {
    /// Whether it is live audio or video over DTLS-SRTP (an m-line the bridge can take, in
    /// some direction).
    pub fn is_rtp(&self) -> bool {
        matches!(self.kind, Kind::Audio | Kind::Video)
            && self.proto.contains("SAVP")
            && (self.port != 0 || self.bundle_only)
            && self.direction != Direction::Inactive
    }

    /// SSRCs that only repair others (the second of FID and FEC-FR groups).
    pub fn repair_ssrcs(&self) -> Vec<u32> {
        self.ssrc_groups
            .iter()
            .filter(|(s, _)| s == "FID" || s == "FEC-FR")
            .flat_map(|(_, g)| g.iter().skip(1).copied())
            .collect()
    }
}

/// The DTLS role the offerer asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setup {
    /// `actpass` (the offerer may be either; JSEP's default).
    ActPass,
    /// `active` (the offerer is the client).
    Active,
}

/// An offer, checked: ICE credentials, fingerprint and role are there and usable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offer {
    /// The offerer's `a=ice-ufrag` (of its first m-line).
    pub ice_ufrag: String,
    /// The offerer's `a=ice-pwd`.
    pub ice_pwd: String,
    /// The offerer's certificate fingerprint, normalized: `sha-256 AB:CD:...`.
    pub fingerprint: String,
    /// Its DTLS role.
    pub setup: Setup,
    /// The mids of its BUNDLE group (empty: none).
    pub bundle: Vec<String>,
    /// Its m-lines, in order.
    pub media: Vec<OfferedMedia>,
}

/// Checks a fingerprint (`sha-256 AB:CD:...`, hex in either case) and returns it normalized
/// (lowercase hash name, uppercase hex).
pub fn check_fingerprint(s: &str) -> Result<String, SdpError> {
    let bad = |why: &str| SdpError::BadFingerprint(why.into());
    let (hash, hex) = s
        .trim()
        .split_once(' ')
        .ok_or_else(|| bad("not '<hash> <XX:XX:...>'"))?;
    let hash = hash.to_ascii_lowercase();
    let (name, len) = HASHES
        .iter()
        .find(|(h, _)| *h == hash)
        .ok_or_else(|| bad("the hash function must be sha-256, sha-384 or sha-512"))?;
    let bytes: Vec<&str> = hex.trim().split(':').collect();
    if bytes.len() != *len
        || !bytes
            .iter()
            .all(|b| b.len() == 2 && b.bytes().all(|c| c.is_ascii_hexdigit()))
    {
        return Err(bad(&format!(
            "{name} needs {len} hex bytes separated by ':'"
        )));
    }
    Ok(format!("{name} {}", hex.trim().to_ascii_uppercase()))
}

/// `s` cut to a few dozen bytes on a character boundary, for an error message.
fn cut(s: &str) -> String {
    const MAX: usize = 80;
    if s.len() <= MAX {
        return s.to_string();
    }
    let end = (0..=MAX)
        .rev()
        .find(|&i| s.is_char_boundary(i))
        .unwrap_or(0);
    format!("{}...", &s[..end])
}

/// Parses and checks an offer's body.
pub fn parse_offer(body: &[u8]) -> Result<Offer, SdpError> {
    if body.len() > MAX_SDP_BYTES {
        return Err(SdpError::TooLarge(body.len()));
    }
    let text = std::str::from_utf8(body)
        .map_err(|_| SdpError::NotAnOffer("the body is not UTF-8 text".into()))?;
    let m_lines = text
        .lines()
        .filter(|l| l.trim_start().starts_with("m="))
        .count();
    if m_lines > MAX_MEDIA {
        return Err(SdpError::TooManyMedia(m_lines));
    }
    if !text.trim_start().starts_with("v=0") {
        return Err(SdpError::NotAnOffer("SDP starts with v=0".into()));
    }
    let session = webrtc_sdp::parse_sdp(text, false).map_err(|e| {
        let msg = cut(&e.to_string());
        if msg.contains("fingerprint") {
            SdpError::BadFingerprint(msg)
        } else {
            SdpError::Malformed(msg)
        }
    })?;
    if session.media.is_empty() {
        return Err(SdpError::NoMedia);
    }
    let raw_fmtps = fmtp_lines(text);
    let mut s_ufrag = None;
    let mut s_pwd = None;
    let mut s_fingerprints = Vec::new();
    let mut s_setup = None;
    let mut s_direction = None;
    let mut bundle = Vec::new();
    for a in &session.attribute {
        match a {
            SdpAttribute::IceUfrag(u) => s_ufrag = Some(u.clone()),
            SdpAttribute::IcePwd(p) => s_pwd = Some(p.clone()),
            SdpAttribute::Fingerprint(f) => s_fingerprints.push(f.to_string()),
            SdpAttribute::Setup(s) => s_setup = Some(s.clone()),
            SdpAttribute::IceLite => return Err(SdpError::IceLite),
            SdpAttribute::Group(g) if matches!(g.semantics, SdpAttributeGroupSemantic::Bundle) => {
                bundle = g.tags.clone();
            }
            SdpAttribute::Sendonly => s_direction = Some(Direction::SendOnly),
            SdpAttribute::Recvonly => s_direction = Some(Direction::RecvOnly),
            SdpAttribute::Sendrecv => s_direction = Some(Direction::SendRecv),
            SdpAttribute::Inactive => s_direction = Some(Direction::Inactive),
            _ => {}
        }
    }
    let mut media = Vec::with_capacity(session.media.len());
    let mut creds: Option<(String, String, Vec<String>, Option<SdpAttributeSetup>)> = None;
    for (i, m) in session.media.iter().enumerate() {
        let kind = match m.get_type() {
            SdpMediaValue::Audio => Kind::Audio,
            SdpMediaValue::Video => Kind::Video,
            other => Kind::Other(other.to_string()),
        };
        let formats: Vec<String> = match m.get_formats() {
            SdpFormatList::Integers(v) => v.iter().map(u32::to_string).collect(),
            SdpFormatList::Strings(v) => v.clone(),
            SdpFormatList::Unknown(v) => v.split_whitespace().map(String::from).collect(),
        };
        let mut ufrag = s_ufrag.clone();
        let mut pwd = s_pwd.clone();
        let mut fingerprints = Vec::new();
        let mut setup = s_setup.clone();
        let mut om = OfferedMedia {
            kind,
            port: m.get_port(),
            bundle_only: false,
            proto: m.get_proto().to_string(),
            formats,
            mid: String::new(),
            direction: s_direction.unwrap_or(Direction::SendRecv),
            codecs: Vec::new(),
            extensions: Vec::new(),
            ssrcs: Vec::new(),
            ssrc_groups: Vec::new(),
            msid: String::new(),
            rids: Vec::new(),
            simulcast: String::new(),
            rtcp_mux: false,
            rtcp_rsize: false,
        };
        let fmtps = raw_fmtps.get(i).map(Vec::as_slice).unwrap_or_default();
        let mut fbs: Vec<(Option<u8>, String)> = Vec::new();
        for a in m.get_attributes() {
            match a {
                SdpAttribute::IceUfrag(u) => ufrag = Some(u.clone()),
                SdpAttribute::IcePwd(p) => pwd = Some(p.clone()),
                SdpAttribute::Fingerprint(f) => fingerprints.push(f.to_string()),
                SdpAttribute::Setup(s) => setup = Some(s.clone()),
                SdpAttribute::Mid(x) => om.mid = x.clone(),
                SdpAttribute::Sendonly => om.direction = Direction::SendOnly,
                SdpAttribute::Recvonly => om.direction = Direction::RecvOnly,
                SdpAttribute::Sendrecv => om.direction = Direction::SendRecv,
                SdpAttribute::Inactive => om.direction = Direction::Inactive,
                SdpAttribute::RtcpMux => om.rtcp_mux = true,
                SdpAttribute::RtcpRsize => om.rtcp_rsize = true,
                SdpAttribute::BundleOnly => om.bundle_only = true,
                SdpAttribute::Rtpmap(r) => om.codecs.push(Codec {
                    pt: r.payload_type,
                    name: r.codec_name.clone(),
                    clock: r.frequency,
                    channels: r.channels.unwrap_or(1),
                    fmtp: String::new(),
                    rtcp_fb: Vec::new(),
                }),
                SdpAttribute::Rtcpfb(fb) => {
                    let pt = match fb.payload_type {
                        SdpAttributePayloadType::PayloadType(pt) => Some(pt),
                        SdpAttributePayloadType::Wildcard => None,
                    };
                    fbs.push((pt, feedback(&fb.feedback_type, &fb.parameter)));
                }
                SdpAttribute::Extmap(e) => {
                    if let Ok(id) = u8::try_from(e.id) {
                        om.extensions.push(Extension {
                            id,
                            uri: e.url.clone(),
                        });
                    }
                }
                SdpAttribute::Ssrc(x) => {
                    let i = match om.ssrcs.iter().position(|s| s.ssrc == x.id) {
                        Some(i) => i,
                        None => {
                            om.ssrcs.push(Ssrc {
                                ssrc: x.id,
                                cname: String::new(),
                                msid: String::new(),
                            });
                            om.ssrcs.len() - 1
                        }
                    };
                    let value = x.value.clone().unwrap_or_default();
                    match x.attribute.as_deref() {
                        Some("cname") => om.ssrcs[i].cname = value,
                        Some("msid") => om.ssrcs[i].msid = value,
                        _ => {}
                    }
                }
                SdpAttribute::SsrcGroup(sem, ssrcs) => om
                    .ssrc_groups
                    .push((sem.to_string(), ssrcs.iter().map(|s| s.id).collect())),
                SdpAttribute::Msid(x) => {
                    om.msid = match &x.appdata {
                        Some(t) => format!("{} {t}", x.id),
                        None => x.id.clone(),
                    }
                }
                SdpAttribute::Rid(r) => om.rids.push(r.id.clone()),
                SdpAttribute::Simulcast(s) => om.simulcast = s.to_string(),
                SdpAttribute::IceLite => return Err(SdpError::IceLite),
                _ => {}
            }
        }
        // Static payload types need no rtpmap.
        for f in &om.formats {
            let Ok(pt) = f.parse::<u8>() else { continue };
            if om.codecs.iter().all(|c| c.pt != pt)
                && let Some(name) = match pt {
                    0 => Some("PCMU"),
                    8 => Some("PCMA"),
                    _ => None,
                }
            {
                om.codecs.push(Codec {
                    pt,
                    name: name.into(),
                    clock: 8000,
                    channels: 1,
                    fmtp: String::new(),
                    rtcp_fb: Vec::new(),
                });
            }
        }
        // Only payload types the m-line lists, in its order.
        om.codecs
            .retain(|c| om.formats.iter().any(|f| f == &c.pt.to_string()));
        let order = |c: &Codec| om.formats.iter().position(|f| f == &c.pt.to_string());
        om.codecs.sort_by_key(order);
        for c in &mut om.codecs {
            if let Some((_, f)) = fmtps.iter().find(|(pt, _)| *pt == c.pt) {
                c.fmtp = f.clone();
            }
            c.rtcp_fb = fbs
                .iter()
                .filter(|(pt, _)| pt.is_none_or(|p| p == c.pt))
                .map(|(_, f)| f.clone())
                .collect();
        }
        if om.mid.is_empty() {
            return Err(SdpError::NoMid(i));
        }
        if om.is_rtp() {
            let (Some(u), Some(p)) = (ufrag, pwd) else {
                return Err(SdpError::NoIceCredentials(i));
            };
            if creds.is_none() {
                creds = Some((u, p, fingerprints.clone(), setup));
            }
        }
        media.push(om);
    }
    // The first live m-line's transport is the session's (BUNDLE: one for all).
    let Some((ice_ufrag, ice_pwd, mut fingerprints, setup)) = creds else {
        return Err(no_usable(&media));
    };
    if fingerprints.is_empty() {
        fingerprints = s_fingerprints;
    }
    if !is_ice_chars(&ice_ufrag, 4) {
        return Err(SdpError::BadIceCredentials(format!(
            "a=ice-ufrag {:?} must be 4 to 256 ice-chars",
            cut(&ice_ufrag)
        )));
    }
    if !is_ice_chars(&ice_pwd, 22) {
        return Err(SdpError::BadIceCredentials(
            "a=ice-pwd must be 22 to 256 ice-chars".into(),
        ));
    }
    let fingerprint = fingerprints
        .iter()
        .find_map(|f| check_fingerprint(f).ok())
        .ok_or(SdpError::NoFingerprint)?;
    let setup = match setup {
        None | Some(SdpAttributeSetup::Actpass) => Setup::ActPass,
        Some(SdpAttributeSetup::Active) => Setup::Active,
        Some(other) => return Err(SdpError::Setup(other.to_string())),
    };
    Ok(Offer {
        ice_ufrag,
        ice_pwd,
        fingerprint,
        setup,
        bundle,
        media,
    })
}

/// The error for an offer none of whose m-lines is live audio or video.
fn no_usable(media: &[OfferedMedia]) -> SdpError {
    if media
        .iter()
        .any(|m| matches!(m.kind, Kind::Audio | Kind::Video))
    {
        SdpError::Direction(
            "send or receive",
            "active (all are inactive, rejected or not DTLS-SRTP)",
        )
    } else {
        SdpError::NoCodec
    }
}

/// An rtcp-fb value as SDP writes it (`nack`, `nack pli`, `ccm fir`, `goog-remb`, ...).
fn feedback(t: &SdpAttributeRtcpFbType, parameter: &str) -> String {
    if parameter.is_empty() {
        t.to_string()
    } else {
        format!("{t} {parameter}")
    }
}

/// The `a=fmtp` values of each m-section as written (`webrtc-sdp` keeps them parsed, and writes
/// some back differently): an answer echoes the offer's parameters.
fn fmtp_lines(text: &str) -> Vec<Vec<(u8, String)>> {
    let mut out: Vec<Vec<(u8, String)>> = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with("m=") {
            out.push(Vec::new());
        } else if let (Some(section), Some(rest)) = (out.last_mut(), line.strip_prefix("a=fmtp:"))
            && let Some((pt, value)) = rest.split_once(' ')
            && let Ok(pt) = pt.parse::<u8>()
        {
            section.push((pt, value.trim().to_string()));
        }
    }
    out
}

/// The value of fmtp parameter `key` in `fmtp` (`k=v;k=v`), if given.
pub fn fmtp_param<'a>(fmtp: &'a str, key: &str) -> Option<&'a str> {
    fmtp.split(';')
        .filter_map(|p| p.trim().split_once('='))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case(key))
        .map(|(_, v)| v.trim())
}
