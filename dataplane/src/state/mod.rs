//! The bridge's conferences and endpoints as the API sees them (string ids, configured and
//! latched addresses). Every mutation validates fully before it changes anything, so a failed
//! request leaves the state as it was. A working [`Table`] is kept in step with every change
//! (lookups by address and SSRC in O(1)); each change to it is recorded as an [`Op`], and
//! [`BridgeState::delta`] hands the recorded ops to the workers, whose copies apply the same ops.
//! WebRTC endpoints are also recorded as [`Command`]s for the bridge's transport thread
//! ([`BridgeState::take_commands`]), and what their transport learns comes back through
//! [`BridgeState::webrtc_update`].

mod error;
mod request;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use rustc_hash::FxHashMap;

use crate::core::audio::AudioMeter;
use crate::core::repair::rtx::Rtx;
use crate::core::rewrite::Rewrite;
use crate::core::simulcast::group::{Group, MAX_LAYERS, SimReceive};
use crate::core::subscribe::Target;
use crate::core::table::ConfIdx;
use crate::core::{Delta, EndpointUid, Op, Table};

use crate::webrtc::dtls::parse_fingerprint;
use crate::webrtc::ice;
use crate::webrtc::transport::{self, Command, Update, WebRtcState};

pub use error::{
    ErrorKind, Limits, MAX_FINGERPRINT_LEN, MAX_ID_LEN, MAX_SSRCS, MAX_SUBSCRIBED, StateError,
};
pub use request::{
    EndpointSrtp, NewEndpoint, NewRelay, RewriteRequest, SrtpRequest, SubscriptionRequest,
    WebRtcRequest,
};

/// A WebRTC endpoint's transport as the API knows it.
#[derive(Debug, Clone)]
pub struct WebRtcInfo {
    /// The bridge's ufrag for it (unique on the bridge).
    pub local_ufrag: String,
    /// Where its transport is.
    pub state: WebRtcState,
}

/// One endpoint as the API knows it.
#[derive(Debug, Clone)]
pub struct EndpointState {
    /// Bridge-wide identity, stable for the endpoint's lifetime.
    pub uid: EndpointUid,
    /// Declared SSRCs, in request order, without duplicates.
    pub ssrcs: Vec<u32>,
    /// Configured or latched address.
    pub addr: Option<SocketAddr>,
    /// Whether `addr` was latched.
    pub latched: bool,
    /// SRTP sessions, when the endpoint uses SRTP (a WebRTC endpoint: once its handshake is done).
    pub srtp: Option<EndpointSrtp>,
    /// A WebRTC endpoint's transport.
    pub webrtc: Option<WebRtcInfo>,
    /// The SSRCs it is subscribed to, sorted (`None`: every sender).
    pub subscription: Option<Arc<[u32]>>,
    /// Its audio levels (when its audio carries the RFC 6464 extension the bridge reads).
    pub audio: Option<Arc<AudioMeter>>,
    /// The simulcast group it receives as one stream.
    pub sim: Option<Arc<SimReceive>>,
    /// The simulcast group it publishes: layers' SSRCs (0: not learned yet), their RIDs and
    /// the RID extension id.
    pub simulcast: Option<(Vec<u32>, Vec<String>, u8)>,
    /// SRTCP index of the last RTCP the control path sent it itself.
    pub rtcp_index: u32,
}

/// All conferences of the bridge, keyed by id.
#[derive(Debug, Clone)]
pub struct BridgeState {
    media: SocketAddr,
    conferences: BTreeMap<String, Conf>,
    /// Conference and endpoint id of every endpoint.
    names: FxHashMap<EndpointUid, (String, String)>,
    table: Table,
    /// Ops applied to `table` since the last delta.
    pending: Vec<Op>,
    next_uid: EndpointUid,
    generation: u64,
    limits: Limits,
    /// Relays over all conferences.
    relay_count: usize,
    /// WebRTC endpoints by local ufrag.
    ufrags: FxHashMap<String, EndpointUid>,
    /// Commands for the transport thread since the last [`BridgeState::take_commands`].
    commands: Vec<Command>,
    /// Endpoints whose audio levels are read, by uid.
    metered: FxHashMap<EndpointUid, Arc<AudioMeter>>,
    /// The sender SSRC of the RTCP this state makes itself (keyframe requests when a receiver
    /// subscribes to a sender): random per process.
    rtcp_ssrc: u32,
}

/// A relay as the API knows it.
#[derive(Debug, Clone)]
pub struct RelayState {
    /// Bridge-wide identity.
    pub uid: u64,
    /// The remote bridge's media address.
    pub addr: SocketAddr,
    /// The link's conference number.
    pub link: u32,
    /// The SSRCs whose media crosses it, sorted (`None`: every sender's).
    pub subscription: Option<Arc<[u32]>>,
    /// Its keys (tx then rx) and direction, to tell a repeated add (the same relay: refused
    /// as existing) from a new link under the same id (replaces it).
    keys: Box<[u8]>,
    downstream: bool,
}

/// A conference: its endpoints and its place in the working table.
#[derive(Debug, Clone)]
struct Conf {
    idx: ConfIdx,
    /// Relays by id.
    relays: BTreeMap<String, RelayState>,
    /// By id; hashed, as a conference may hold 100 000 endpoints (listing sorts).
    endpoints: FxHashMap<String, EndpointState>,
}

/// Checks a simulcast group of an endpoint sending `ssrcs`: 1 to [`MAX_LAYERS`] distinct
/// `layers` it sends, or none and 1 to [`MAX_LAYERS`] distinct `rids` (1-16 alphanumerics)
/// carried in extension `rid_ext` (1-255).
pub fn check_simulcast(
    layers: &[u32],
    rids: &[String],
    rid_ext: u32,
    ssrcs: &[u32],
) -> Result<(), StateError> {
    if !rids.is_empty() {
        let good = |r: &String| {
            (1..=16).contains(&r.len())
                && r.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        let distinct = rids.iter().enumerate().all(|(i, r)| !rids[..i].contains(r));
        if !layers.is_empty() || rids.len() > MAX_LAYERS || !distinct || !rids.iter().all(good) {
            return Err(StateError::BadValue {
                field: "simulcast.rids",
                why: "1 to 4 distinct RIDs (1-16 alphanumerics), lowest layer first, and no layers",
            });
        }
        if !(1..=255).contains(&rid_ext) {
            return Err(StateError::BadValue {
                field: "simulcast.rid_ext_id",
                why: "the RID header extension id is 1-255",
            });
        }
        return Ok(());
    }
    let distinct = layers
        .iter()
        .enumerate()
        .all(|(i, s)| !layers[..i].contains(s));
    if layers.is_empty() || layers.len() > MAX_LAYERS || !distinct {
        return Err(StateError::BadValue {
            field: "simulcast.layers",
            why: "1 to 4 distinct SSRCs, lowest layer first",
        });
    }
    if layers.iter().any(|s| !ssrcs.contains(s)) {
        return Err(StateError::BadValue {
            field: "simulcast.layers",
            why: "every layer must be one of the endpoint's ssrcs",
        });
    }
    Ok(())
}

fn need(field: &'static str, v: &str) -> Result<(), StateError> {
    if v.is_empty() {
        Err(StateError::Empty(field))
    } else if v.len() > MAX_ID_LEN {
        Err(StateError::TooLarge {
            field,
            got: v.len(),
            unit: "bytes",
            limit: MAX_ID_LEN,
        })
    } else {
        Ok(())
    }
}

impl BridgeState {
    /// Empty state for a bridge whose media socket is bound to `media` (its family is the one
    /// endpoints must use).
    pub fn new(media: SocketAddr) -> Self {
        Self {
            media,
            conferences: BTreeMap::new(),
            names: FxHashMap::default(),
            table: Table::default(),
            pending: Vec::new(),
            next_uid: 1,
            generation: 0,
            limits: Limits::default(),
            relay_count: 0,
            ufrags: FxHashMap::default(),
            commands: Vec::new(),
            metered: FxHashMap::default(),
            rtcp_ssrc: {
                let mut b = [0u8; 4];
                let _ = aws_lc_rs::rand::fill(&mut b);
                u32::from_be_bytes(b) | 1
            },
        }
    }

    /// The same, with capacity limits.
    pub fn with_limits(media: SocketAddr, limits: Limits) -> Self {
        Self {
            limits,
            ..Self::new(media)
        }
    }

    /// Number of conferences.
    pub fn conferences(&self) -> usize {
        self.conferences.len()
    }

    /// Number of endpoints over all conferences.
    pub fn endpoints(&self) -> usize {
        self.names.len()
    }

    /// Number of relays over all conferences.
    pub fn relays_total(&self) -> usize {
        self.relay_count
    }

    /// Conferences and their endpoints, sorted by id.
    pub fn list(
        &self,
    ) -> impl Iterator<Item = (&str, impl Iterator<Item = (&str, &EndpointState)>)> {
        self.conferences.iter().map(|(c, conf)| {
            let mut eps: Vec<(&str, &EndpointState)> = conf
                .endpoints
                .iter()
                .map(|(e, s)| (e.as_str(), s))
                .collect();
            eps.sort_unstable_by_key(|(e, _)| *e);
            (c.as_str(), eps.into_iter())
        })
    }

    /// Creates an empty conference.
    pub fn create_conference(&mut self, id: &str) -> Result<(), StateError> {
        need("conference_id", id)?;
        if self.conferences.contains_key(id) {
            return Err(StateError::ConferenceExists(id.into()));
        }
        let idx = self.table.add_conference();
        self.pending.push(Op::AddConference);
        self.conferences.insert(
            id.into(),
            Conf {
                idx,
                endpoints: FxHashMap::default(),
                relays: BTreeMap::new(),
            },
        );
        Ok(())
    }

    /// Deletes a conference; returns how many endpoints it had.
    pub fn delete_conference(&mut self, id: &str) -> Result<usize, StateError> {
        need("conference_id", id)?;
        let conf = self
            .conferences
            .remove(id)
            .ok_or_else(|| StateError::ConferenceNotFound(id.into()))?;
        for e in conf.endpoints.values() {
            self.names.remove(&e.uid);
            self.metered.remove(&e.uid);
            if let Some(w) = &e.webrtc {
                self.ufrags.remove(&w.local_ufrag);
                self.commands.push(Command::Remove(e.uid));
            }
        }
        self.relay_count -= conf.relays.len();
        self.record(Op::RemoveConference {
            conf: conf.idx,
            members: conf.endpoints.values().map(|e| e.uid).collect(),
        });
        Ok(conf.endpoints.len())
    }

    /// Parses an endpoint address: "ip:port", same family as the media socket, not unspecified,
    /// port not 0. Empty means "latch".
    pub fn parse_addr(
        &self,
        field: &'static str,
        v: &str,
    ) -> Result<Option<SocketAddr>, StateError> {
        if v.is_empty() {
            return Ok(None);
        }
        let bad = |why| StateError::BadAddr {
            field,
            value: v.into(),
            why,
        };
        let a: SocketAddr = v
            .parse()
            .map_err(|_| bad("is not an \"ip:port\" address (IPv6 as \"[::1]:5000\")"))?;
        if a.is_ipv4() != self.media.is_ipv4() {
            return Err(bad(if self.media.is_ipv4() {
                "is IPv6 but this bridge's media socket is IPv4"
            } else {
                "is IPv4 but this bridge's media socket is IPv6"
            }));
        }
        let broadcast = match a.ip() {
            std::net::IpAddr::V4(ip) => {
                ip.is_broadcast() || ip == std::net::Ipv4Addr::new(127, 255, 255, 255)
            }
            std::net::IpAddr::V6(_) => false,
        };
        if a.ip().is_unspecified() || a.ip().is_multicast() || broadcast {
            return Err(bad(
                "must be a unicast address, not unspecified, multicast or broadcast",
            ));
        }
        if a.port() == 0 {
            return Err(bad("must have a non-zero port"));
        }
        // The bridge's own media socket: its copies would come back to it as input.
        let own = a.port() == self.media.port()
            && (a.ip() == self.media.ip()
                || (self.media.ip().is_unspecified() && a.ip().is_loopback()));
        if own {
            return Err(bad("is this bridge's own media address"));
        }
        Ok(Some(a))
    }

    /// Conference and endpoint id of the endpoint at table index `i`.
    fn name_of(&self, i: u32) -> (&str, &str) {
        let (c, e) = &self.names[&self.table.ep(i).uid];
        (c, e)
    }

    fn owner_of_addr(&self, addr: SocketAddr) -> Option<(&str, &str)> {
        self.table.by_addr.get(&addr).map(|&i| self.name_of(i))
    }

    /// Adds a plain or SDES-SRTP endpoint; returns its uid. See [`BridgeState::add`].
    pub fn add_endpoint(
        &mut self,
        conference: &str,
        endpoint: &str,
        ssrcs: &[u32],
        remote_addr: &str,
        srtp: Option<&SrtpRequest>,
    ) -> Result<EndpointUid, StateError> {
        self.add(NewEndpoint {
            conference,
            endpoint,
            ssrcs,
            remote_addr,
            srtp,
            ..NewEndpoint::default()
        })
    }

    /// Validates a WebRTC endpoint's parameters (and that it leaves `remote_addr` and `srtp`
    /// empty); returns what its transport needs, less its uid.
    fn webrtc_params(
        w: &WebRtcRequest,
        remote_addr: &str,
        srtp: bool,
    ) -> Result<transport::NewEndpoint, StateError> {
        let bad = |field, why: String| StateError::BadWebRtc { field, why };
        if !remote_addr.is_empty() {
            return Err(bad(
                "remote_addr",
                "must be empty for a WebRTC endpoint (its address is the one its ICE checks nominate)"
                    .into(),
            ));
        }
        if srtp {
            return Err(bad(
                "srtp",
                "must be absent for a WebRTC endpoint (its DTLS handshake exports the keys)".into(),
            ));
        }
        let credential = |field, v: &str, check: fn(&str) -> Result<(), ice::CredentialsError>| {
            if v.is_empty() {
                return Err(StateError::Empty(field));
            }
            check(v).map_err(|e| bad(field, e.to_string()))
        };
        credential("webrtc.local_ufrag", &w.local_ufrag, ice::check_ufrag)?;
        credential("webrtc.local_pwd", &w.local_pwd, ice::check_pwd)?;
        credential("webrtc.remote_ufrag", &w.remote_ufrag, ice::check_ufrag)?;
        let fp = &w.remote_fingerprint;
        if fp.is_empty() {
            return Err(StateError::Empty("webrtc.remote_fingerprint"));
        }
        if fp.len() > MAX_FINGERPRINT_LEN {
            return Err(StateError::TooLarge {
                field: "webrtc.remote_fingerprint",
                got: fp.len(),
                unit: "bytes",
                limit: MAX_FINGERPRINT_LEN,
            });
        }
        let fingerprint =
            parse_fingerprint(fp).map_err(|e| bad("webrtc.remote_fingerprint", e.to_string()))?;
        Ok(transport::NewEndpoint {
            uid: 0,
            local_ufrag: w.local_ufrag.clone(),
            local_pwd: w.local_pwd.clone(),
            remote_ufrag: w.remote_ufrag.clone(),
            fingerprint,
        })
    }

    /// Adds an endpoint; returns its uid. A WebRTC endpoint (`webrtc`) has no address and no
    /// SRTP until its transport gives them ([`BridgeState::webrtc_update`]); its local ufrag is
    /// unique on the bridge. A `rewrite` needs SRTP or WebRTC (a plain receiver's copy is the
    /// shared received packet).
    pub fn add(&mut self, e: NewEndpoint<'_>) -> Result<EndpointUid, StateError> {
        let NewEndpoint {
            conference,
            endpoint,
            ssrcs,
            remote_addr,
            srtp,
            webrtc,
            rewrite,
        } = e;
        // Sizes first: validation is linear in a request that passes them.
        need("conference_id", conference)?;
        need("endpoint_id", endpoint)?;
        if ssrcs.len() > MAX_SSRCS {
            return Err(StateError::TooLarge {
                field: "ssrcs",
                got: ssrcs.len(),
                unit: "items",
                limit: MAX_SSRCS,
            });
        }
        let webrtc = webrtc
            .map(|w| Self::webrtc_params(w, remote_addr, srtp.is_some()))
            .transpose()?;
        let rewrite = match rewrite.filter(|r| !r.is_empty()) {
            Some(r) => {
                if srtp.is_none() && webrtc.is_none() {
                    return Err(StateError::RewriteNeedsSrtp);
                }
                Rewrite::new(&r.payload_types, &r.extensions)?.map(Arc::new)
            }
            None => None,
        };
        let addr = self.parse_addr("remote_addr", remote_addr)?;
        let mut declared = Vec::with_capacity(ssrcs.len());
        for &s in ssrcs {
            if !declared.contains(&s) {
                declared.push(s);
            }
        }
        // A WebRTC endpoint never latches: a viewer declares no SSRC.
        let latches = addr.is_none() && webrtc.is_none();
        if latches && declared.is_empty() {
            return Err(StateError::NothingToLatch);
        }
        let conf = self
            .conferences
            .get(conference)
            .ok_or_else(|| StateError::ConferenceNotFound(conference.into()))?;
        let eps = &conf.endpoints;
        if eps.contains_key(endpoint) {
            return Err(StateError::EndpointExists {
                conference: conference.into(),
                endpoint: endpoint.into(),
            });
        }
        if self.names.len() >= self.limits.endpoints {
            return Err(StateError::Full {
                what: "endpoints on this bridge",
                limit: self.limits.endpoints,
                flag: "max-endpoints",
            });
        }
        if eps.len() >= self.limits.endpoints_per_conference {
            return Err(StateError::Full {
                what: "endpoints in this conference",
                limit: self.limits.endpoints_per_conference,
                flag: "max-endpoints-per-conference",
            });
        }
        if let Some((ssrc, owner)) = declared
            .iter()
            .find_map(|&s| self.table.ssrc_owner(conf.idx, s).map(|u| (s, u)))
        {
            return Err(StateError::SsrcTaken {
                ssrc,
                owner: self.names[&owner].1.clone(),
            });
        }
        let srtp = srtp.map(SrtpRequest::derive).transpose()?;
        if let Some(w) = &webrtc
            && let Some(other) = self.ufrags.get(&w.local_ufrag)
        {
            let (c, e) = &self.names[other];
            return Err(StateError::UfragTaken {
                ufrag: w.local_ufrag.clone(),
                conference: c.clone(),
                endpoint: e.clone(),
            });
        }
        if latches
            && let Some((&ssrc, &i)) = declared
                .iter()
                .find_map(|s| self.table.latch_by_ssrc.get_key_value(s))
        {
            return Err(StateError::SsrcAmbiguous {
                ssrc,
                conference: self.name_of(i).0.into(),
            });
        }
        if let Some(a) = addr
            && let Some((c, e)) = self.owner_of_addr(a)
        {
            return Err(StateError::AddrTaken {
                addr: a,
                conference: c.into(),
                endpoint: e.into(),
            });
        }
        let uid = self.next_uid;
        self.next_uid += 1;
        let idx = self.conferences[conference].idx;
        let keys = srtp.as_ref().map(|s| (s.rx.clone(), s.tx.clone()));
        let op = Op::AddEndpoint {
            conf: idx,
            uid,
            ssrcs: declared.as_slice().into(),
            addr,
            srtp: keys,
            claim: latches.then(Arc::default),
            webrtc: webrtc.is_some(),
            rewrite,
        };
        self.record(op);
        self.names.insert(uid, (conference.into(), endpoint.into()));
        let webrtc = webrtc.map(|w| {
            self.ufrags.insert(w.local_ufrag.clone(), uid);
            let info = WebRtcInfo {
                local_ufrag: w.local_ufrag.clone(),
                state: WebRtcState::Checking,
            };
            self.commands
                .push(Command::Add(transport::NewEndpoint { uid, ..w }));
            info
        });
        let conf = self.conferences.get_mut(conference).expect("checked above");
        conf.endpoints.insert(
            endpoint.into(),
            EndpointState {
                uid,
                ssrcs: declared,
                addr,
                latched: false,
                srtp,
                webrtc,
                subscription: None,
                audio: None,
                sim: None,
                simulcast: None,
                rtcp_index: crate::srtp::first_srtcp_index(),
            },
        );
        Ok(uid)
    }

    /// Reads endpoint `endpoint`'s audio levels from RTP header extension element `ext_id`
    /// (RFC 6464; 1-14 one-byte or 1-255 two-byte form). Its levels are then in
    /// [`BridgeState::take_audio_levels`].
    pub fn set_audio_level(
        &mut self,
        conference: &str,
        endpoint: &str,
        ext_id: u32,
    ) -> Result<(), StateError> {
        let ext_id = u8::try_from(ext_id)
            .ok()
            .filter(|&i| i != 0)
            .ok_or(StateError::BadValue {
                field: "audio_level_ext_id",
                why: "an RTP header extension id is 1-255 (0: none)",
            })?;
        let (_, e) = self.endpoint_of(conference, endpoint)?;
        let (uid, meter) = (e.uid, Arc::new(AudioMeter::default()));
        self.record(Op::SetAudioLevel {
            uid,
            ext_id,
            meter: meter.clone(),
        });
        self.metered.insert(uid, meter.clone());
        self.conferences
            .get_mut(conference)
            .and_then(|c| c.endpoints.get_mut(endpoint))
            .expect("checked above")
            .audio = Some(meter);
        Ok(())
    }

    /// Sends endpoint `endpoint` the repairs of what it NACKs as `rtx` says (checked by
    /// [`Rtx::new`]; `None`: plain resends).
    pub fn set_rtx(
        &mut self,
        conference: &str,
        endpoint: &str,
        rtx: Option<Arc<Rtx>>,
    ) -> Result<(), StateError> {
        let uid = self.endpoint_of(conference, endpoint)?.1.uid;
        self.record(Op::SetRtx { uid, rtx });
        Ok(())
    }

    /// Keeps endpoint `endpoint`'s streams `ssrcs` (of those it declared) in the
    /// retransmission cache from now on, not only from their first NACK.
    pub fn cache_streams(
        &mut self,
        conference: &str,
        endpoint: &str,
        ssrcs: &[u32],
    ) -> Result<(), StateError> {
        let (conf, e) = self.endpoint_of(conference, endpoint)?;
        if ssrcs.iter().any(|s| !e.ssrcs.contains(s)) {
            return Err(StateError::BadValue {
                field: "cache_ssrcs",
                why: "every SSRC must be one of the endpoint's ssrcs",
            });
        }
        self.record(Op::CacheStreams {
            conf,
            ssrcs: ssrcs.into(),
        });
        Ok(())
    }

    /// Declares that endpoint `endpoint` sends one video as simulcast `layers` (SSRCs it
    /// declared, lowest first, 1 to [`MAX_LAYERS`]).
    pub fn set_simulcast(
        &mut self,
        conference: &str,
        endpoint: &str,
        layers: &[u32],
        rids: &[String],
        rid_ext: u32,
    ) -> Result<(), StateError> {
        let (conf, e) = self.endpoint_of(conference, endpoint)?;
        check_simulcast(layers, rids, rid_ext, &e.ssrcs)?;
        let owner = e.uid;
        let ssrcs = if rids.is_empty() {
            layers.to_vec()
        } else {
            vec![0; rids.len()]
        };
        let rid_ext = rid_ext as u8;
        self.record(Op::SetSimulcast {
            conf,
            owner,
            group: Some(Arc::new(Group::with_rids(owner, &ssrcs, rids, rid_ext))),
        });
        self.conferences
            .get_mut(conference)
            .and_then(|c| c.endpoints.get_mut(endpoint))
            .expect("checked above")
            .simulcast = Some((ssrcs, rids.to_vec(), rid_ext));
        Ok(())
    }

    /// A simulcast publisher's packets named layer `layer` on `ssrc` (reported by a worker):
    /// the SSRC becomes one of the endpoint's and its group's (and cached for repairs). False
    /// when nothing changes (known already, taken by another endpoint, not a simulcast
    /// publisher).
    pub fn learn_layer(&mut self, uid: EndpointUid, ssrc: u32, layer: u8) -> bool {
        let Some((c, e)) = self.names.get(&uid).cloned() else {
            return false;
        };
        let Some(conf) = self.conferences.get_mut(&c) else {
            return false;
        };
        if ssrc == 0 || conf.endpoints.values().any(|x| x.ssrcs.contains(&ssrc)) {
            return false;
        }
        let idx = conf.idx;
        let Some(ep) = conf.endpoints.get_mut(&e) else {
            return false;
        };
        let Some((ssrcs, rids, rid_ext)) = ep.simulcast.as_mut() else {
            return false;
        };
        let Some(slot) = ssrcs.get_mut(usize::from(layer)) else {
            return false;
        };
        *slot = ssrc;
        let group = Group::with_rids(uid, ssrcs, rids, *rid_ext);
        ep.ssrcs.push(ssrc);
        self.record(Op::AddSsrc { uid, ssrc });
        self.record(Op::SetSimulcast {
            conf: idx,
            owner: uid,
            group: Some(Arc::new(group)),
        });
        self.record(Op::CacheStreams {
            conf: idx,
            ssrcs: Box::new([ssrc]),
        });
        true
    }

    /// Makes endpoint `endpoint` receive the simulcast video of `publisher` (same conference)
    /// as one stream on `ssrc`, at most `max_height` pixels high (0: no limit).
    pub fn set_sim_receive(
        &mut self,
        conference: &str,
        endpoint: &str,
        publisher: &str,
        ssrc: u32,
        max_height: u32,
        first_seq: u16,
    ) -> Result<(), StateError> {
        let (_, e) = self.endpoint_of(conference, endpoint)?;
        let own = e.ssrcs.clone();
        let group = self.check_sim_receive(conference, publisher, ssrc, &own)?;
        let uid = e.uid;
        let sim = Arc::new(SimReceive::new(group, ssrc, first_seq, max_height));
        self.record(Op::SetSimReceive {
            uid,
            sim: Some(sim.clone()),
        });
        self.conferences
            .get_mut(conference)
            .and_then(|c| c.endpoints.get_mut(endpoint))
            .expect("checked above")
            .sim = Some(sim);
        Ok(())
    }

    /// Sets the largest frame height receiver `endpoint` wants of its simulcast stream (0: no
    /// limit); it moves to the layer that fits at the layer's next keyframe.
    pub fn set_simulcast_limit(
        &self,
        conference: &str,
        endpoint: &str,
        max_height: u32,
    ) -> Result<(), StateError> {
        let (_, e) = self.endpoint_of(conference, endpoint)?;
        let sim = e.sim.as_ref().ok_or(StateError::BadValue {
            field: "endpoint_id",
            why: "the endpoint receives no simulcast stream",
        })?;
        sim.max_height
            .store(max_height, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// Checks that endpoint `publisher` of `conference` may be received as one simulcast
    /// stream on `ssrc` by an endpoint sending `own` SSRCs; returns the publisher's uid.
    pub fn check_sim_receive(
        &self,
        conference: &str,
        publisher: &str,
        ssrc: u32,
        own: &[u32],
    ) -> Result<EndpointUid, StateError> {
        let (_, p) = self
            .endpoint_of(conference, publisher)
            .map_err(|_| StateError::BadValue {
                field: "simulcast_receive.publisher",
                why: "no such endpoint in the conference",
            })?;
        let taken = own.contains(&ssrc)
            || self.conferences[conference]
                .endpoints
                .values()
                .any(|x| x.ssrcs.contains(&ssrc));
        if ssrc == 0 || taken {
            return Err(StateError::BadValue {
                field: "simulcast_receive.ssrc",
                why: "must be non-zero and no sender's SSRC in the conference",
            });
        }
        Ok(p.uid)
    }

    /// A conference's table slot and one of its endpoints.
    fn endpoint_of(
        &self,
        conference: &str,
        endpoint: &str,
    ) -> Result<(ConfIdx, &EndpointState), StateError> {
        let c = self
            .conferences
            .get(conference)
            .ok_or_else(|| StateError::ConferenceNotFound(conference.into()))?;
        let e = c
            .endpoints
            .get(endpoint)
            .ok_or_else(|| StateError::EndpointNotFound {
                conference: conference.into(),
                endpoint: endpoint.into(),
            })?;
        Ok((c.idx, e))
    }

    /// Every metered endpoint's audio since the last call: (conference, endpoint, mean
    /// loudness 0-127, packets), for endpoints that sent audio levels meanwhile.
    pub fn take_audio_levels(&self) -> Vec<(String, String, f64, u64)> {
        let mut out = Vec::new();
        for (uid, m) in &self.metered {
            let (loudness, packets) = m.take();
            if packets > 0
                && let Some((c, e)) = self.names.get(uid)
            {
                out.push((c.clone(), e.clone(), loudness, packets));
            }
        }
        out
    }

    /// Sets what an endpoint or a relay of `conference` receives RTP of: every sender, or those
    /// `r` names (endpoints by id, resolved to the SSRCs they declare now; SSRCs as given).
    pub fn set_subscription(
        &mut self,
        conference: &str,
        r: SubscriptionRequest<'_>,
    ) -> Result<(), StateError> {
        need("conference_id", conference)?;
        let conf = self
            .conferences
            .get(conference)
            .ok_or_else(|| StateError::ConferenceNotFound(conference.into()))?;
        let named = r.endpoints.len() + r.ssrcs.len();
        if r.all && named > 0 {
            return Err(StateError::BadValue {
                field: "all",
                why: "all = true names no endpoints and no ssrcs",
            });
        }
        if named > MAX_SUBSCRIBED {
            return Err(StateError::TooLarge {
                field: "endpoints",
                got: named,
                unit: "items (endpoints + ssrcs)",
                limit: MAX_SUBSCRIBED,
            });
        }
        let target = match (r.endpoint_id.is_empty(), r.relay_id.is_empty()) {
            (false, true) => {
                need("endpoint_id", r.endpoint_id)?;
                let e = conf.endpoints.get(r.endpoint_id).ok_or_else(|| {
                    StateError::EndpointNotFound {
                        conference: conference.into(),
                        endpoint: r.endpoint_id.into(),
                    }
                })?;
                Target::Endpoint(e.uid)
            }
            (true, false) => {
                need("relay_id", r.relay_id)?;
                let rs = conf
                    .relays
                    .get(r.relay_id)
                    .ok_or_else(|| StateError::RelayNotFound {
                        conference: conference.into(),
                        relay: r.relay_id.into(),
                    })?;
                Target::Relay(rs.uid)
            }
            _ => {
                return Err(StateError::BadValue {
                    field: "endpoint_id",
                    why: "give exactly one of endpoint_id and relay_id",
                });
            }
        };
        let ssrcs: Option<Arc<[u32]>> = if r.all {
            None
        } else {
            let mut v = r.ssrcs.to_vec();
            for e in r.endpoints {
                let s = conf
                    .endpoints
                    .get(e)
                    .ok_or_else(|| StateError::UnknownSender {
                        conference: conference.into(),
                        endpoint: e.clone(),
                    })?;
                v.extend_from_slice(&s.ssrcs);
            }
            v.sort_unstable();
            v.dedup();
            Some(v.into())
        };
        let idx = conf.idx;
        self.record(Op::Subscribe {
            conf: idx,
            target,
            ssrcs: ssrcs.clone(),
        });
        let conf = self.conferences.get_mut(conference).expect("checked above");
        let old = if r.endpoint_id.is_empty() {
            let r = conf.relays.get_mut(r.relay_id).expect("checked above");
            std::mem::replace(&mut r.subscription, ssrcs.clone())
        } else {
            let e = conf
                .endpoints
                .get_mut(r.endpoint_id)
                .expect("checked above");
            std::mem::replace(&mut e.subscription, ssrcs.clone())
        };
        // Senders newly subscribed to: their receiver (or the far side of the relay) needs a
        // keyframe to start decoding, so ask the local ones for one now.
        if let (Some(old), Some(new)) = (old, &ssrcs) {
            let added: Vec<u32> = new.iter().filter(|s| !old.contains(s)).copied().collect();
            self.ask_keyframes(conference, idx, &added);
        }
        Ok(())
    }

    /// Most keyframe requests one subscription change sends.
    const MAX_KEYFRAME_ASKS: usize = 32;

    /// Sends a PLI (from this state's own SSRC) to the local sender of each of `ssrcs` that
    /// has an address, SRTCP-protected for an SRTP sender, through the transport thread.
    fn ask_keyframes(&mut self, conference: &str, idx: ConfIdx, ssrcs: &[u32]) {
        for &ssrc in ssrcs.iter().take(Self::MAX_KEYFRAME_ASKS) {
            let Some(uid) = self.table.ssrc_owner(idx, ssrc) else {
                continue; // behind a relay: the far bridge asks when its relay subscribes
            };
            let Some((_, e)) = self.names.get(&uid) else {
                continue;
            };
            let Some(ep) = self
                .conferences
                .get_mut(conference)
                .and_then(|c| c.endpoints.get_mut(e.as_str()))
            else {
                continue;
            };
            let Some(to) = ep.addr else { continue };
            let pli = crate::core::keyframe::pli(self.rtcp_ssrc, ssrc);
            let data = match &ep.srtp {
                None => pli.to_vec(),
                Some(s) => {
                    ep.rtcp_index = (ep.rtcp_index + 1) & 0x7fff_ffff;
                    let mut out = vec![0u8; pli.len() + 32];
                    match s.tx.protect_rtcp(&pli, ep.rtcp_index, &mut out) {
                        Ok(n) => {
                            out.truncate(n);
                            out
                        }
                        Err(_) => continue,
                    }
                }
            };
            tracing::debug!(%conference, ssrc, %to, "keyframe asked for a new subscriber");
            self.commands
                .push(Command::Send(transport::Transmit { to, data }));
        }
    }

    /// Removes an endpoint.
    pub fn remove_endpoint(&mut self, conference: &str, endpoint: &str) -> Result<(), StateError> {
        need("conference_id", conference)?;
        need("endpoint_id", endpoint)?;
        let conf = self
            .conferences
            .get_mut(conference)
            .ok_or_else(|| StateError::ConferenceNotFound(conference.into()))?;
        let e = conf
            .endpoints
            .remove(endpoint)
            .ok_or_else(|| StateError::EndpointNotFound {
                conference: conference.into(),
                endpoint: endpoint.into(),
            })?;
        self.names.remove(&e.uid);
        self.metered.remove(&e.uid);
        if let Some(w) = &e.webrtc {
            self.ufrags.remove(&w.local_ufrag);
            self.commands.push(Command::Remove(e.uid));
        }
        self.record(Op::RemoveEndpoint { uid: e.uid });
        Ok(())
    }

    /// Commands for the transport thread recorded since the last call (WebRTC endpoints added
    /// and removed), in order.
    pub fn take_commands(&mut self) -> Vec<Command> {
        std::mem::take(&mut self.commands)
    }

    /// Applies what a WebRTC endpoint's transport learned: its state, its SRTP sessions (the
    /// first time it is connected) and its address in the table (the nominated one while
    /// connected, none otherwise). False (nothing changes) when the endpoint is gone. An address
    /// that belongs to another endpoint is not taken (logged; the endpoint stays without one).
    pub fn webrtc_update(&mut self, u: Update) -> bool {
        let uid = u.uid;
        let Some((c, e)) = self.names.get(&uid) else {
            return false;
        };
        let mut addr = u.addr;
        if let Some(a) = addr
            && let Some(&i) = self.table.by_addr.get(&a)
            && self.table.ep(i).uid != uid
        {
            let (oc, oe) = self.name_of(i);
            tracing::warn!(
                %a, conference = %c, endpoint = %e,
                "WebRTC endpoint nominated the address of endpoint {oe:?} of conference {oc:?}: not taken"
            );
            addr = None;
        }
        let ep = self
            .conferences
            .get_mut(c)
            .and_then(|conf| conf.endpoints.get_mut(e))
            .expect("names and conferences agree");
        let Some(w) = ep.webrtc.as_mut() else {
            return false;
        };
        w.state = u.state;
        let mut ops = Vec::new();
        if let Some(keys) = u.keys {
            match (keys.remote_session(), keys.local_session()) {
                (Ok(rx), Ok(tx)) => {
                    let (rx, tx) = (Arc::new(rx), Arc::new(tx));
                    ep.srtp = Some(EndpointSrtp {
                        profile: keys.profile,
                        rx: rx.clone(),
                        tx: tx.clone(),
                    });
                    ops.push(Op::SetSrtp {
                        uid,
                        srtp: Some((rx, tx)),
                    });
                }
                (Err(why), _) | (_, Err(why)) => {
                    // Exported by the session for its own profile: cannot happen.
                    tracing::error!(uid, "WebRTC endpoint's exported keys unusable: {why}");
                    w.state = WebRtcState::Failed;
                    addr = None;
                }
            }
        }
        if ep.addr != addr && (ep.srtp.is_some() || addr.is_none()) {
            ep.addr = addr;
            ops.push(Op::SetAddr { uid, addr });
        }
        for op in ops {
            self.record(op);
        }
        true
    }

    /// Records that endpoint `uid` latched `addr`. Returns false (and changes nothing) when the
    /// endpoint is gone, already has an address, or the address belongs to another endpoint;
    /// in that last case an endpoint still waiting gets its latch claim back, so its next packet
    /// (from an address of its own) latches it.
    pub fn latch(&mut self, uid: EndpointUid, addr: SocketAddr) -> bool {
        if self.owner_of_addr(addr).is_some() {
            if let Some(&i) = self.table.by_uid.get(&uid)
                && let Some(claim) = &self.table.ep(i).claim
            {
                claim.release();
            }
            return false;
        }
        let Some((c, e)) = self.names.get(&uid) else {
            return false;
        };
        let e = self
            .conferences
            .get_mut(c)
            .and_then(|c| c.endpoints.get_mut(e))
            .expect("names and conferences agree");
        if e.addr.is_some() || !self.table.latch(uid, addr) {
            return false;
        }
        e.addr = Some(addr);
        e.latched = true;
        self.pending.push(Op::Latch { uid, addr });
        true
    }

    /// Adds relay `relay_id` of `conference` as `r` describes.
    pub fn add_relay(
        &mut self,
        conference: &str,
        relay_id: &str,
        r: NewRelay<'_>,
    ) -> Result<(), StateError> {
        let NewRelay {
            remote_addr,
            link,
            tx_key,
            rx_key,
            downstream,
        } = r;
        need("conference_id", conference)?;
        need("relay_id", relay_id)?;
        if remote_addr.is_empty() {
            return Err(StateError::Empty("remote_addr"));
        }
        let addr = self
            .parse_addr("remote_addr", remote_addr)?
            .expect("non-empty");
        let keys: Box<[u8]> = [tx_key, rx_key].concat().into();
        let conf = self
            .conferences
            .get(conference)
            .ok_or_else(|| StateError::ConferenceNotFound(conference.into()))?;
        if let Some(old) = conf.relays.get(relay_id) {
            if old.addr == addr
                && old.link == link
                && old.keys == keys
                && old.downstream == downstream
            {
                return Err(StateError::RelayExists {
                    field: "relay_id",
                    value: relay_id.into(),
                });
            }
            // The same id with other keys or another address: a new link to that bridge (a
            // control instance that took over may not know the one left from before), so the
            // old one goes (found by the chaos soak: an edge kept a relay sealed with keys its
            // parent no longer used, and dropped the live stream for 40 s).
            self.remove_relay(conference, relay_id)?;
        }
        let conf = self
            .conferences
            .get(conference)
            .ok_or_else(|| StateError::ConferenceNotFound(conference.into()))?;
        if self.relay_count >= self.limits.relays {
            return Err(StateError::Full {
                what: "relays on this bridge",
                limit: self.limits.relays,
                flag: "max-relays",
            });
        }
        if conf.relays.len() >= self.limits.relays_per_conference {
            return Err(StateError::Full {
                what: "relays of this conference",
                limit: self.limits.relays_per_conference,
                flag: "max-relays-per-conference",
            });
        }
        if self.table.relay_by.contains_key(&(addr, link)) {
            return Err(StateError::RelayExists {
                field: "remote_addr",
                value: format!("{addr} with link_conference {link}"),
            });
        }
        let uid = self.next_uid;
        let relay = crate::core::relay::Relay::new(uid, addr, link, tx_key, rx_key)
            .map_err(|(field, e)| StateError::BadSrtp {
                field,
                why: e.to_string(),
            })?
            .pulling(downstream);
        self.next_uid += 1;
        let idx = conf.idx;
        self.record(Op::AddRelay {
            conf: idx,
            relay: Arc::new(relay),
        });
        self.conferences
            .get_mut(conference)
            .expect("checked above")
            .relays
            .insert(
                relay_id.into(),
                RelayState {
                    uid,
                    addr,
                    link,
                    subscription: None,
                    keys,
                    downstream,
                },
            );
        self.relay_count += 1;
        Ok(())
    }

    /// Removes a relay.
    pub fn remove_relay(&mut self, conference: &str, relay_id: &str) -> Result<(), StateError> {
        need("conference_id", conference)?;
        need("relay_id", relay_id)?;
        let conf = self
            .conferences
            .get_mut(conference)
            .ok_or_else(|| StateError::ConferenceNotFound(conference.into()))?;
        let r = conf
            .relays
            .remove(relay_id)
            .ok_or_else(|| StateError::RelayNotFound {
                conference: conference.into(),
                relay: relay_id.into(),
            })?;
        let idx = conf.idx;
        self.relay_count -= 1;
        self.record(Op::RemoveRelay {
            conf: idx,
            uid: r.uid,
        });
        Ok(())
    }

    /// The relays of `conference`, by id.
    pub fn relays(&self, conference: &str) -> impl Iterator<Item = (&str, &RelayState)> {
        self.conferences
            .get(conference)
            .into_iter()
            .flat_map(|c| c.relays.iter().map(|(k, v)| (k.as_str(), v)))
    }

    /// Applies `op` to the working table and records it for the workers.
    fn record(&mut self, op: Op) {
        self.table.apply(&op);
        self.pending.push(op);
    }

    /// The working table (what the workers' copies will be once the pending delta is applied).
    pub fn table(&self) -> &Table {
        &self.table
    }

    /// Whether ops were recorded since the last delta.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// The ops recorded since the last delta, stamped with the next generation.
    pub fn delta(&mut self) -> Delta {
        self.generation += 1;
        Delta {
            generation: self.generation,
            ops: std::mem::take(&mut self.pending),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::srtp::Profile;

    fn state() -> BridgeState {
        let mut s = BridgeState::new("127.0.0.1:10000".parse().unwrap());
        s.create_conference("c").unwrap();
        s
    }

    #[test]
    fn rejects_bad_input_naming_the_field() {
        let mut s = state();
        let e = s.add_endpoint("c", "", &[1], "", None).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Invalid);
        assert!(e.to_string().starts_with("endpoint_id"));
        for bad in ["nope", "127.0.0.1", "[::1]:5", "0.0.0.0:5", "127.0.0.1:0"] {
            let e = s.add_endpoint("c", "a", &[1], bad, None).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Invalid, "{bad}");
            assert!(e.to_string().starts_with("remote_addr"), "{e}");
        }
        assert_eq!(
            s.add_endpoint("c", "a", &[], "", None).unwrap_err(),
            StateError::NothingToLatch
        );
        assert_eq!(
            s.add_endpoint("x", "a", &[1], "", None).unwrap_err().kind(),
            ErrorKind::NotFound
        );
        assert_eq!(s.endpoints(), 0);
    }

    #[test]
    fn duplicates_are_refused_and_change_nothing() {
        let mut s = state();
        s.add_endpoint("c", "a", &[1, 2], "127.0.0.1:5000", None)
            .unwrap();
        let before = s.clone();
        let dup = [
            s.clone()
                .add_endpoint("c", "a", &[9], "", None)
                .unwrap_err(),
            s.clone()
                .add_endpoint("c", "b", &[2], "", None)
                .unwrap_err(),
            s.clone()
                .add_endpoint("c", "b", &[3], "127.0.0.1:5000", None)
                .unwrap_err(),
            s.clone().create_conference("c").unwrap_err(),
        ];
        for e in dup {
            assert_eq!(e.kind(), ErrorKind::Exists, "{e}");
        }
        assert_eq!(s.endpoints(), before.endpoints());
        s.create_conference("d").unwrap();
        s.add_endpoint("d", "x", &[7], "", None).unwrap();
        let e = s.add_endpoint("c", "y", &[7], "", None).unwrap_err();
        assert!(matches!(e, StateError::SsrcAmbiguous { .. }));
    }

    fn relay<'a>(addr: &'a str, link: u32) -> NewRelay<'a> {
        NewRelay {
            remote_addr: addr,
            link,
            tx_key: &[1; 16],
            rx_key: &[2; 16],
            downstream: false,
        }
    }

    #[test]
    fn a_relay_added_again_is_refused_and_one_with_new_keys_replaces_it() {
        let mut s = BridgeState::with_limits("127.0.0.1:10000".parse().unwrap(), Limits::default());
        s.create_conference("c").unwrap();
        s.add_relay("c", "eu-1", relay("127.0.0.1:1", 1)).unwrap();
        let uid = s.relays("c").next().unwrap().1.uid;
        let e = s
            .add_relay("c", "eu-1", relay("127.0.0.1:1", 1))
            .unwrap_err();
        assert!(matches!(e, StateError::RelayExists { .. }), "{e}");
        // A new link under the same id (fresh keys): the old relay goes, the new one is there.
        let fresh = NewRelay {
            tx_key: &[3; 16],
            rx_key: &[4; 16],
            ..relay("127.0.0.1:1", 1)
        };
        s.add_relay("c", "eu-1", fresh).unwrap();
        let r: Vec<_> = s.relays("c").collect();
        assert_eq!(r.len(), 1);
        assert_ne!(r[0].1.uid, uid, "a new relay (fresh replay state)");
        assert_eq!(s.relay_count, 1);
        let e = s.add_relay("c", "eu-1", fresh).unwrap_err();
        assert!(matches!(e, StateError::RelayExists { .. }), "{e}");
    }

    #[test]
    fn relays_have_limits_of_their_own() {
        let mut s = BridgeState::with_limits(
            "127.0.0.1:10000".parse().unwrap(),
            Limits {
                endpoints: 1,
                relays: 3,
                relays_per_conference: 2,
                ..Limits::default()
            },
        );
        s.create_conference("c").unwrap();
        s.create_conference("d").unwrap();
        s.add_endpoint("c", "e", &[1], "", None).unwrap();
        s.add_relay("c", "r1", relay("127.0.0.1:1", 1)).unwrap();
        s.add_relay("c", "r2", relay("127.0.0.1:2", 1)).unwrap();
        let e = s.add_relay("c", "r3", relay("127.0.0.1:3", 1)).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Full);
        assert!(e.to_string().contains("--max-relays-per-conference"), "{e}");
        s.add_relay("d", "r1", relay("127.0.0.1:1", 2)).unwrap();
        let e = s.add_relay("d", "r2", relay("127.0.0.1:2", 2)).unwrap_err();
        assert!(e.to_string().ends_with("(--max-relays)"), "{e}");
        assert_eq!((s.relays_total(), s.relays("c").count()), (3, 2));
        // Removing frees room, deleting a conference frees its relays'.
        s.remove_relay("c", "r1").unwrap();
        s.add_relay("d", "r2", relay("127.0.0.1:2", 2)).unwrap();
        s.delete_conference("d").unwrap();
        assert_eq!(s.relays_total(), 1);
        s.add_relay("c", "r3", relay("127.0.0.1:3", 1)).unwrap();
    }

    #[test]
    fn a_latch_that_cannot_be_recorded_gives_the_claim_back() {
        let mut s = state();
        let uid = s.add_endpoint("c", "a", &[1], "", None).unwrap();
        let i = s.table().by_uid[&uid];
        let claim = s.table().ep(i).claim.clone().expect("waits to latch");
        assert!(claim.take(), "a worker latched it");
        // Meanwhile that address was given to another endpoint.
        s.add_endpoint("c", "b", &[2], "127.0.0.1:4000", None)
            .unwrap();
        assert!(!s.latch(uid, "127.0.0.1:4000".parse().unwrap()));
        assert!(claim.take(), "the next packet may latch it");
        assert!(s.latch(uid, "127.0.0.1:4001".parse().unwrap()));
        assert!(s.table().ep(i).claim.is_none());
    }

    const FP: &str = "sha-256 AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89";

    fn webrtc(ufrag: &str) -> WebRtcRequest {
        WebRtcRequest {
            local_ufrag: ufrag.into(),
            local_pwd: "asd88fgpdd777uzjYhagZg".into(),
            remote_ufrag: "evtj".into(),
            remote_fingerprint: FP.into(),
        }
    }

    fn add_webrtc(
        s: &mut BridgeState,
        id: &str,
        ssrcs: &[u32],
        w: &WebRtcRequest,
        rewrite: Option<&RewriteRequest>,
    ) -> Result<EndpointUid, StateError> {
        s.add(NewEndpoint {
            conference: "c",
            endpoint: id,
            ssrcs,
            webrtc: Some(w),
            rewrite,
            ..NewEndpoint::default()
        })
    }

    #[test]
    fn webrtc_endpoints_are_validated_naming_the_field() {
        let mut s = state();
        let cases: [(WebRtcRequest, &str, &str); 7] = [
            (webrtc("abc"), "", "webrtc.local_ufrag"),
            (webrtc("ab:cd"), "", "webrtc.local_ufrag"),
            (
                WebRtcRequest {
                    local_pwd: "short".into(),
                    ..webrtc("bRdg")
                },
                "",
                "webrtc.local_pwd",
            ),
            (
                WebRtcRequest {
                    remote_ufrag: String::new(),
                    ..webrtc("bRdg")
                },
                "",
                "webrtc.remote_ufrag",
            ),
            (
                WebRtcRequest {
                    remote_fingerprint: "sha-1 AB:CD".into(),
                    ..webrtc("bRdg")
                },
                "",
                "webrtc.remote_fingerprint",
            ),
            (
                WebRtcRequest {
                    remote_fingerprint: "x".repeat(600),
                    ..webrtc("bRdg")
                },
                "",
                "webrtc.remote_fingerprint",
            ),
            (webrtc("bRdg"), "127.0.0.1:4000", "remote_addr"),
        ];
        for (w, addr, field) in cases {
            let e = s
                .add(NewEndpoint {
                    conference: "c",
                    endpoint: "w",
                    remote_addr: addr,
                    webrtc: Some(&w),
                    ..NewEndpoint::default()
                })
                .unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Invalid, "{e}");
            assert!(e.to_string().starts_with(field), "{field}: {e}");
        }
        let srtp = SrtpRequest {
            profile: "AEAD_AES_128_GCM".into(),
            endpoint_key: vec![1; 28],
            bridge_key: vec![],
        };
        let e = s
            .add(NewEndpoint {
                conference: "c",
                endpoint: "w",
                srtp: Some(&srtp),
                webrtc: Some(&webrtc("bRdg")),
                ..NewEndpoint::default()
            })
            .unwrap_err();
        assert!(e.to_string().starts_with("srtp: must be absent"), "{e}");
        assert_eq!(s.endpoints(), 0);
        assert!(s.take_commands().is_empty());
    }

    #[test]
    fn webrtc_endpoints_wait_for_their_transport() {
        let mut s = state();
        // A receive-only viewer declares no SSRC, and needs nothing to latch on.
        let viewer = add_webrtc(&mut s, "viewer", &[], &webrtc("vIew"), None).unwrap();
        let publisher = add_webrtc(&mut s, "pub", &[5], &webrtc("pUbl"), None).unwrap();
        // Its SSRC does not wait to latch: a plain endpoint elsewhere may latch on it.
        assert!(!s.table().latch_by_ssrc.contains_key(&5));
        // The local ufrag is unique on the bridge.
        s.create_conference("d").unwrap();
        let e = s
            .add(NewEndpoint {
                conference: "d",
                endpoint: "x",
                webrtc: Some(&webrtc("vIew")),
                ..NewEndpoint::default()
            })
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Exists);
        assert!(e.to_string().starts_with("webrtc.local_ufrag"), "{e}");
        let cmds = s.take_commands();
        assert!(
            matches!(&cmds[..], [Command::Add(v), Command::Add(p)] if v.uid == viewer && p.uid == publisher && v.local_ufrag == "vIew")
        );
        let info = |s: &BridgeState, id: &str| {
            let (_, eps) = s.list().next().unwrap();
            eps.into_iter()
                .find(|(e, _)| *e == id)
                .map(|(_, e)| (e.addr, e.webrtc.as_ref().unwrap().state, e.srtp.is_some()))
                .unwrap()
        };
        assert_eq!(info(&s, "viewer"), (None, WebRtcState::Checking, false));

        // Nominated, not keyed: the state changes, nothing for the workers.
        s.delta();
        let addr: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let update = |state, addr, keys| Update {
            uid: viewer,
            state,
            addr,
            keys,
        };
        assert!(s.webrtc_update(update(WebRtcState::Handshaking, None, None)));
        assert!(!s.has_pending());
        assert_eq!(info(&s, "viewer"), (None, WebRtcState::Handshaking, false));
        // An address without keys is never given.
        s.webrtc_update(update(WebRtcState::Connected, Some(addr), None));
        assert!(!s.has_pending());
        // Connected: sessions, then the address.
        let keys = crate::webrtc::dtls::SrtpKeys {
            profile: Profile::AeadAes128Gcm,
            remote: (vec![1; 16], vec![2; 12]),
            local: (vec![3; 16], vec![4; 12]),
        };
        assert!(s.webrtc_update(update(WebRtcState::Connected, Some(addr), Some(keys))));
        let d = s.delta();
        assert!(matches!(
            &d.ops[..],
            [Op::SetSrtp { srtp: Some(_), .. }, Op::SetAddr { addr: Some(a), .. }] if *a == addr
        ));
        assert_eq!(
            info(&s, "viewer"),
            (Some(addr), WebRtcState::Connected, true)
        );
        // Another endpoint cannot take the address.
        s.webrtc_update(Update {
            uid: publisher,
            state: WebRtcState::Connected,
            addr: Some(addr),
            keys: Some(crate::webrtc::dtls::SrtpKeys {
                profile: Profile::AeadAes128Gcm,
                remote: (vec![1; 16], vec![2; 12]),
                local: (vec![3; 16], vec![4; 12]),
            }),
        });
        assert_eq!(info(&s, "pub").0, None);
        // Consent expired: the address goes.
        s.delta();
        s.webrtc_update(update(WebRtcState::Expired, None, None));
        assert!(matches!(
            &s.delta().ops[..],
            [Op::SetAddr { addr: None, .. }]
        ));
        assert_eq!(info(&s, "viewer"), (None, WebRtcState::Expired, true));

        // Removal tells the transport and frees the ufrag; updates for it change nothing.
        s.remove_endpoint("c", "viewer").unwrap();
        assert_eq!(s.take_commands(), [Command::Remove(viewer)]);
        assert!(!s.webrtc_update(update(WebRtcState::Connected, None, None)));
        add_webrtc(&mut s, "again", &[], &webrtc("vIew"), None).unwrap();
        s.take_commands();
        s.delete_conference("c").unwrap();
        let cmds = s.take_commands();
        assert_eq!(cmds.len(), 2);
        assert!(cmds.iter().all(|c| matches!(c, Command::Remove(_))));
        s.create_conference("c").unwrap();
        add_webrtc(&mut s, "pub", &[5], &webrtc("pUbl"), None).unwrap();
    }

    #[test]
    fn rewrite_needs_srtp_or_webrtc() {
        let mut s = state();
        let rw = RewriteRequest {
            payload_types: vec![(96, 100)],
            extensions: vec![(3, 0)],
        };
        let plain = NewEndpoint {
            conference: "c",
            endpoint: "p",
            ssrcs: &[1],
            remote_addr: "127.0.0.1:4000",
            rewrite: Some(&rw),
            ..NewEndpoint::default()
        };
        let e = s.add(plain).unwrap_err();
        assert_eq!(e, StateError::RewriteNeedsSrtp);
        assert!(e.to_string().starts_with("rewrite: "), "{e}");
        // An empty rewrite is no rewrite.
        let empty = RewriteRequest::default();
        s.add(NewEndpoint {
            rewrite: Some(&empty),
            ..plain
        })
        .unwrap();
        let bad = RewriteRequest {
            payload_types: vec![(96, 300)],
            extensions: vec![],
        };
        let e = add_webrtc(&mut s, "w", &[], &webrtc("wWww"), Some(&bad)).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Invalid);
        assert!(e.to_string().starts_with("rewrite.payload_types"), "{e}");
        let uid = add_webrtc(&mut s, "w", &[], &webrtc("wWww"), Some(&rw)).unwrap();
        let i = s.table().by_uid[&uid];
        assert!(s.table().ep(i).rewrite.is_some());
        let srtp = SrtpRequest {
            profile: "AEAD_AES_128_GCM".into(),
            endpoint_key: vec![1; 28],
            bridge_key: vec![],
        };
        s.add(NewEndpoint {
            endpoint: "s",
            remote_addr: "127.0.0.1:4001",
            ssrcs: &[2],
            srtp: Some(&srtp),
            ..plain
        })
        .unwrap();
    }

    #[test]
    fn latching_and_removal() {
        let mut s = state();
        let uid = s.add_endpoint("c", "a", &[1], "", None).unwrap();
        let addr = "127.0.0.1:4000".parse().unwrap();
        assert!(s.latch(uid, addr));
        assert!(!s.latch(uid, "127.0.0.1:4001".parse().unwrap()));
        {
            let (_, mut eps) = s.list().next().unwrap();
            let (_, e) = eps.next().unwrap();
            assert_eq!((e.addr, e.latched), (Some(addr), true));
        }
        s.remove_endpoint("c", "a").unwrap();
        assert!(!s.latch(uid, addr));
        assert_eq!(s.delete_conference("c"), Ok(0));
        assert_eq!(s.table().endpoints(), 0);
        // A worker's copy, fed the deltas, agrees.
        let mut copy = Table::default();
        copy.apply_delta(&s.delta());
        assert_eq!(copy.endpoints(), 0);
    }
}
