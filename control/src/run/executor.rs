//! Runs the focus's [`Plan`]s against the bridges' gRPC APIs: calls in order, each with a
//! deadline, stopping at the first failure. Holds no lock across a call (the lane table is
//! locked only to look up or insert a lane). Bridge statuses become [`CallError`]s.
//!
//! Each bridge has a *lane*: a task that sends the calls queued for that bridge as one
//! `Bridge.Apply` batch, the next batch going out when the previous one answered. Under load
//! many joins share one RPC and one table publication on the bridge; alone, a call goes out at
//! once. Calls of one plan stay in order (each waits for its result before the next is queued),
//! and a cleanup queued after a timed-out call runs after it on the same lane.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use ringbridge_proto::v1 as pb;
use ringbridge_proto::v1::bridge_client::BridgeClient;
use tokio::sync::{mpsc, oneshot};
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::core::focus::{Applied, BridgeCall, Call, CallError, CallResult, Plan, SubTarget};
use crate::store::Participant;

/// Most calls one batch carries (the bridge's limit is higher).
const MAX_BATCH: usize = 512;

/// A call waiting on a lane: the change and where its outcome goes.
struct Queued {
    change: pb::Change,
    reply: oneshot::Sender<Result<Status, CallError>>,
}

struct Lane {
    api_addr: String,
    channel: Channel,
    tx: mpsc::UnboundedSender<Queued>,
    /// Set when the bridge is declared down: calls in flight fail at once.
    abort: tokio::sync::watch::Sender<bool>,
}

/// Runs plans.
pub struct Executor {
    lanes: Mutex<HashMap<String, Lane>>,
    deadline: Duration,
    enabled: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Executor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Executor")
            .field("deadline", &self.deadline)
            .finish()
    }
}

fn add_request(conference: &str, endpoint: &str, p: &Participant) -> pb::AddEndpointRequest {
    pb::AddEndpointRequest {
        conference_id: conference.into(),
        endpoint_id: endpoint.into(),
        ssrcs: p.ssrcs.clone(),
        remote_addr: p.remote_addr.clone(),
        srtp: p.srtp.as_ref().map(|k| pb::SrtpParams {
            profile: k.profile.clone(),
            endpoint_key: k.endpoint_key.clone(),
            bridge_key: k.bridge_key.clone(),
        }),
        webrtc: p.webrtc.as_ref().map(|w| pb::WebRtcParams {
            local_ufrag: w.local_ufrag.clone(),
            local_pwd: w.local_pwd.clone(),
            remote_ufrag: w.remote_ufrag.clone(),
            remote_fingerprint: w.remote_fingerprint.clone(),
        }),
        rewrite: p
            .rewrite
            .as_ref()
            .filter(|r| r.rewrites())
            .map(|r| pb::Rewrite {
                payload_types: r.payload_types.iter().map(id_map).collect(),
                extensions: r.extensions.iter().map(id_map).collect(),
            }),
        rtx: p.rewrite.as_ref().filter(|r| r.has_rtx()).map(|r| pb::Rtx {
            payload_types: r.rtx_payload_types.iter().map(id_map).collect(),
            streams: r
                .rtx_ssrcs
                .iter()
                .map(|s| pb::SsrcMap {
                    media: s.media,
                    rtx: s.rtx,
                })
                .collect(),
        }),
        subscription: p
            .subscription
            .as_ref()
            .map(|s| pb::Subscription { ssrcs: s.clone() }),
        audio_level_ext_id: audio_level_ext_id(p),
        simulcast: p
            .media
            .iter()
            .flat_map(|m| &m.sections)
            .find(|s| !s.rids.is_empty())
            .map(|s| pb::SimulcastSend {
                layers: Vec::new(),
                rids: s.rids.clone(),
                rid_ext_id: s.rid_ext.into(),
            }),
        simulcast_receive: p
            .rewrite
            .as_ref()
            .and_then(|r| r.simulcast.as_ref())
            .map(|v| pb::SimulcastReceive {
                publisher: v.publisher.clone(),
                ssrc: v.ssrc,
                max_height: v.max_height,
            }),
        cache_ssrcs: video_ssrcs(p),
    }
}

/// A WebRTC publisher's video SSRCs: the bridge caches them for repairs from the start.
fn video_ssrcs(p: &Participant) -> Vec<u32> {
    p.media
        .iter()
        .flat_map(|m| &m.sections)
        .filter(|s| s.kind == "video")
        .flat_map(|s| s.ssrcs.iter().copied())
        .filter(|s| p.ssrcs.contains(s))
        .collect()
}

/// The RFC 6464 audio level extension id a WebRTC participant's audio carries (0: none).
fn audio_level_ext_id(p: &Participant) -> u32 {
    p.media
        .iter()
        .flat_map(|m| &m.sections)
        .filter(|s| s.kind == "audio")
        .flat_map(|s| &s.extensions)
        .find(|e| e.uri == "urn:ietf:params:rtp-hdrext:ssrc-audio-level")
        .map_or(0, |e| u32::from(e.id))
}

fn id_map(m: &crate::store::webrtc::IdMap) -> pb::IdMap {
    pb::IdMap {
        from: m.from.into(),
        to: m.to.into(),
    }
}

/// The Bridge API change for a call.
fn change(call: &Call) -> pb::Change {
    use pb::change::Change as C;
    let c = match call {
        Call::Create { conference } => C::CreateConference(pb::CreateConferenceRequest {
            conference_id: conference.clone(),
        }),
        Call::Add {
            conference,
            endpoint,
            participant,
            ..
        } => C::AddEndpoint(add_request(conference, endpoint, participant)),
        Call::Remove {
            conference,
            endpoint,
        } => C::RemoveEndpoint(pb::RemoveEndpointRequest {
            conference_id: conference.clone(),
            endpoint_id: endpoint.clone(),
        }),
        Call::Delete { conference } => C::DeleteConference(pb::DeleteConferenceRequest {
            conference_id: conference.clone(),
        }),
        Call::AddRelay {
            conference,
            relay_id,
            remote_addr,
            link,
            tx_key,
            rx_key,
            downstream,
        } => C::AddRelay(pb::AddRelayRequest {
            downstream: *downstream,
            conference_id: conference.clone(),
            relay_id: relay_id.clone(),
            remote_addr: remote_addr.clone(),
            link_conference: *link,
            tx_key: tx_key.clone(),
            rx_key: rx_key.clone(),
        }),
        Call::RemoveRelay {
            conference,
            relay_id,
        } => C::RemoveRelay(pb::RemoveRelayRequest {
            conference_id: conference.clone(),
            relay_id: relay_id.clone(),
        }),
        Call::Subscribe {
            conference,
            target,
            ssrcs,
        } => {
            let (endpoint_id, relay_id) = match target {
                SubTarget::Endpoint(e) => (e.clone(), String::new()),
                SubTarget::Relay(r) => (String::new(), r.clone()),
            };
            C::SetSubscription(pb::SetSubscriptionRequest {
                conference_id: conference.clone(),
                endpoint_id,
                relay_id,
                all: ssrcs.is_none(),
                endpoints: Vec::new(),
                ssrcs: ssrcs.clone().unwrap_or_default(),
            })
        }
        Call::SimulcastLimit {
            conference,
            endpoint,
            max_height,
        } => C::SetSimulcastLimit(pb::SetSimulcastLimitRequest {
            conference_id: conference.clone(),
            endpoint_id: endpoint.clone(),
            max_height: *max_height,
        }),
    };
    pb::Change { change: Some(c) }
}

/// Sends what queues on one bridge's lane, one batch in flight at a time, until the lane is
/// dropped.
async fn lane(
    mut rx: mpsc::UnboundedReceiver<Queued>,
    channel: Channel,
    deadline: Duration,
    mut abort: tokio::sync::watch::Receiver<bool>,
) {
    let mut client = BridgeClient::new(channel);
    let deadline_ms = deadline.as_millis() as u64;
    while let Some(first) = rx.recv().await {
        if *abort.borrow() {
            let _ = first.reply.send(Err(CallError::Unavailable(
                "the bridge was declared down".into(),
            )));
            continue;
        }
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH
            && let Ok(q) = rx.try_recv()
        {
            batch.push(q);
        }
        let (changes, replies): (Vec<_>, Vec<_>) =
            batch.into_iter().map(|q| (q.change, q.reply)).unzip();
        let mut req = tonic::Request::new(pb::ApplyRequest { changes });
        // The deadline travels with the request too (grpc-timeout), so the bridge can give up.
        req.set_timeout(deadline);
        let outcome = tokio::select! {
            r = tokio::time::timeout(deadline, client.apply(req)) => r,
            _ = abort.wait_for(|down| *down) => {
                for reply in replies {
                    let _ = reply.send(Err(CallError::Unavailable(
                        "the bridge was declared down while the call was in flight".into(),
                    )));
                }
                continue;
            }
        };
        match outcome {
            Ok(Ok(r)) => {
                let results = r.into_inner().results;
                for (i, reply) in replies.into_iter().enumerate() {
                    let out = match results.get(i) {
                        Some(r) => Ok(Status::new(Code::from(r.code), r.message.clone())),
                        None => Err(CallError::Unavailable(
                            "the bridge answered fewer results than changes".into(),
                        )),
                    };
                    let _ = reply.send(out);
                }
            }
            Ok(Err(s)) => {
                for reply in replies {
                    let _ = reply.send(Ok(s.clone()));
                }
            }
            Err(_) => {
                for reply in replies {
                    let _ = reply.send(Err(CallError::Timeout { deadline_ms }));
                }
            }
        }
    }
}

impl Executor {
    /// An executor whose every bridge call has `deadline` (lanes are Tokio tasks started on a
    /// bridge's first call).
    pub fn new(deadline: Duration) -> Self {
        Self {
            lanes: Mutex::new(HashMap::new()),
            deadline,
            enabled: std::sync::atomic::AtomicBool::new(true),
        }
    }

    /// Allows or forbids calls to bridges: an instance that is not (or no longer) its shard's
    /// active focus makes none; its calls fail at once as unavailable.
    pub fn set_enabled(&self, on: bool) {
        self.enabled.store(on, std::sync::atomic::Ordering::SeqCst);
    }

    /// Whether calls are allowed (see [`Executor::set_enabled`]).
    pub fn enabled(&self) -> bool {
        self.enabled.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The deadline of every call.
    pub fn deadline(&self) -> Duration {
        self.deadline
    }

    /// The lane of the bridge at `api_addr` (one HTTP/2 connection per bridge, shared by its
    /// lane and health probes); a new address replaces the lane.
    fn lane(
        &self,
        bridge: &str,
        api_addr: &str,
    ) -> Result<(Channel, mpsc::UnboundedSender<Queued>), CallError> {
        let mut lanes = self.lanes.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(l) = lanes.get(bridge)
            && l.api_addr == api_addr
            && !l.tx.is_closed()
        {
            return Ok((l.channel.clone(), l.tx.clone()));
        }
        let channel = Channel::from_shared(format!("http://{api_addr}"))
            .map_err(|e| CallError::Unavailable(format!("api address {api_addr:?}: {e}")))?
            .connect_timeout(self.deadline)
            .connect_lazy();
        let (tx, rx) = mpsc::unbounded_channel();
        let (abort, aborted) = tokio::sync::watch::channel(false);
        tokio::spawn(lane(rx, channel.clone(), self.deadline, aborted));
        lanes.insert(
            bridge.into(),
            Lane {
                api_addr: api_addr.into(),
                channel: channel.clone(),
                tx: tx.clone(),
                abort,
            },
        );
        Ok((channel, tx))
    }

    /// A bridge was declared down: its calls in flight fail now instead of at their deadline
    /// (so the operations holding its conferences end and the conferences can move), and its
    /// lane is dropped (a new registration gets a new one).
    pub fn abort(&self, bridge: &str) {
        if let Some(l) = self
            .lanes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(bridge)
        {
            let _ = l.abort.send(true);
        }
    }

    /// The channel to a bridge, for health probes.
    pub fn channel(&self, bridge: &str, api_addr: &str) -> Result<Channel, CallError> {
        self.lane(bridge, api_addr).map(|(c, _)| c)
    }

    /// The conferences and endpoint ids `bridge` holds (for reconciliation), within the deadline.
    pub async fn list(
        &self,
        bridge: &str,
        api_addr: &str,
    ) -> Result<Vec<(String, Vec<String>)>, CallError> {
        let mut client = BridgeClient::new(self.channel(bridge, api_addr)?);
        let mut req = tonic::Request::new(pb::ListConferencesRequest {});
        req.set_timeout(self.deadline);
        let deadline_ms = self.deadline.as_millis() as u64;
        match tokio::time::timeout(self.deadline, client.list_conferences(req)).await {
            Err(_) => Err(CallError::Timeout { deadline_ms }),
            Ok(Err(s)) => Err(CallError::Unavailable(s.message().into())),
            Ok(Ok(r)) => Ok(r
                .into_inner()
                .conferences
                .into_iter()
                .map(|c| {
                    let eps = c.endpoints.into_iter().map(|e| e.endpoint_id).collect();
                    (c.conference_id, eps)
                })
                .collect()),
        }
    }

    /// Runs `plan`'s calls in order; returns one result per call made (stops after a failure).
    pub async fn run(&self, plan: &Plan) -> Vec<CallResult> {
        let mut results = Vec::with_capacity(plan.calls.len());
        for c in &plan.calls {
            let r = self.call(c).await;
            let failed = r.is_err();
            results.push(r);
            if failed {
                break;
            }
        }
        results
    }

    /// Makes one call within the deadline (counted from when it is queued).
    pub async fn call(&self, c: &BridgeCall) -> CallResult {
        if !self.enabled() {
            return Err(CallError::Unavailable(
                "this control instance is not its shard's active focus".into(),
            ));
        }
        let deadline_ms = self.deadline.as_millis() as u64;
        let (_, tx) = self.lane(&c.bridge, &c.api_addr)?;
        let (reply, rx) = oneshot::channel();
        tx.send(Queued {
            change: change(&c.call),
            reply,
        })
        .map_err(|_| CallError::Unavailable("the bridge's lane closed".into()))?;
        match tokio::time::timeout(self.deadline, rx).await {
            Err(_) => Err(CallError::Timeout { deadline_ms }),
            Ok(Err(_)) => Err(CallError::Unavailable("the bridge's lane closed".into())),
            Ok(Ok(Err(e))) => Err(e),
            Ok(Ok(Ok(s))) if s.code() == Code::Ok => Ok(Applied::Done),
            Ok(Ok(Ok(s))) => classify(&c.call, s, deadline_ms),
        }
    }
}

/// Maps a bridge's status for `call`: "already so" outcomes the call tolerates are success.
fn classify(call: &Call, s: Status, deadline_ms: u64) -> CallResult {
    let msg = s.message().to_string();
    match (s.code(), call) {
        (Code::AlreadyExists, Call::Create { .. }) => Ok(Applied::AlreadyThere),
        (
            Code::AlreadyExists,
            Call::Add {
                if_absent: true, ..
            },
        ) => Ok(Applied::AlreadyThere),
        (Code::AlreadyExists, Call::AddRelay { .. }) => Ok(Applied::AlreadyThere),
        (Code::NotFound, Call::Remove { .. } | Call::Delete { .. } | Call::RemoveRelay { .. }) => {
            Ok(Applied::AlreadyThere)
        }
        // Muting a relay that is not there (a drain's linger): nothing crosses it already.
        (
            Code::NotFound,
            Call::Subscribe {
                target: SubTarget::Relay(_),
                ssrcs: Some(s),
                ..
            },
        ) if s.is_empty() => Ok(Applied::AlreadyThere),
        (Code::InvalidArgument | Code::OutOfRange | Code::FailedPrecondition, _) => {
            Err(CallError::Invalid(msg))
        }
        (Code::AlreadyExists, _) => Err(CallError::Exists(msg)),
        (Code::ResourceExhausted, _) => Err(CallError::Full(msg)),
        (Code::NotFound, _) => Err(CallError::NotFound(msg)),
        (Code::DeadlineExceeded | Code::Cancelled, _) => Err(CallError::Timeout { deadline_ms }),
        _ => Err(CallError::Unavailable(msg)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_webrtc_participant_is_added_with_its_credentials_and_rewrite() {
        use crate::store::webrtc::{IdMap, Rewrite, RtxStream, WebRtc};
        let mut p = Participant::plain("eu", vec![], "", None, "b", crate::store::Role::Viewer);
        p.webrtc = Some(Box::new(WebRtc {
            local_ufrag: "lu".into(),
            local_pwd: "lp".into(),
            remote_ufrag: "ru".into(),
            remote_fingerprint: "sha-256 AB".into(),
        }));
        p.rewrite = Some(Box::new(Rewrite {
            payload_types: vec![IdMap { from: 111, to: 96 }],
            extensions: vec![IdMap { from: 4, to: 0 }],
            ..Rewrite::default()
        }));
        let r = add_request("s", "whep-1", &p);
        assert!(r.rtx.is_none(), "no RTX negotiated");
        let w = r.webrtc.unwrap();
        assert_eq!(
            (
                w.local_ufrag.as_str(),
                w.local_pwd.as_str(),
                w.remote_ufrag.as_str()
            ),
            ("lu", "lp", "ru")
        );
        assert_eq!(w.remote_fingerprint, "sha-256 AB");
        let rw = r.rewrite.unwrap();
        assert_eq!(
            (rw.payload_types[0].from, rw.payload_types[0].to),
            (111, 96)
        );
        assert_eq!((rw.extensions[0].from, rw.extensions[0].to), (4, 0));
        assert!(r.remote_addr.is_empty() && r.srtp.is_none());
        // An empty rewrite is no rewrite.
        p.rewrite = Some(Box::default());
        assert!(add_request("s", "whep-1", &p).rewrite.is_none());
        // RTX alone: no rewrite, the RTX streams.
        p.rewrite = Some(Box::new(Rewrite {
            rtx_payload_types: vec![IdMap { from: 96, to: 97 }],
            rtx_ssrcs: vec![RtxStream { media: 5, rtx: 6 }],
            ..Rewrite::default()
        }));
        let r = add_request("s", "whep-1", &p);
        assert!(r.rewrite.is_none());
        let x = r.rtx.unwrap();
        assert_eq!((x.payload_types[0].from, x.payload_types[0].to), (96, 97));
        assert_eq!((x.streams[0].media, x.streams[0].rtx), (5, 6));
    }

    #[test]
    fn statuses_map_to_call_outcomes() {
        let create = Call::Create {
            conference: "c".into(),
        };
        let delete = Call::Delete {
            conference: "c".into(),
        };
        let add = |if_absent| Call::Add {
            conference: "c".into(),
            endpoint: "e".into(),
            participant: Participant {
                region: String::new(),
                ssrcs: vec![],
                remote_addr: String::new(),
                srtp: None,
                bridge: String::new(),
                role: Default::default(),
                webrtc: None,
                rewrite: None,
                media: None,
                subscription: None,
                last_n: 0,
                owner: String::new(),
            },
            if_absent,
        };
        let exists = || Status::already_exists("x");
        assert_eq!(classify(&create, exists(), 1), Ok(Applied::AlreadyThere));
        assert_eq!(classify(&add(true), exists(), 1), Ok(Applied::AlreadyThere));
        assert_eq!(
            classify(&add(false), exists(), 1),
            Err(CallError::Exists("x".into()))
        );
        assert_eq!(
            classify(&delete, Status::not_found("gone"), 1),
            Ok(Applied::AlreadyThere)
        );
        assert_eq!(
            classify(&add(false), Status::invalid_argument("ssrcs: bad"), 1),
            Err(CallError::Invalid("ssrcs: bad".into()))
        );
        assert_eq!(
            classify(&add(false), Status::deadline_exceeded("late"), 7),
            Err(CallError::Timeout { deadline_ms: 7 })
        );
        assert_eq!(
            classify(&add(false), Status::unavailable("refused"), 7),
            Err(CallError::Unavailable("refused".into()))
        );
    }
}
