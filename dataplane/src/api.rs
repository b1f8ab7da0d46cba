//! The `ringbridge.v1.Bridge` gRPC service, plus health and reflection, over a [`Publisher`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use ringbridge_proto::v1 as pb;
use ringbridge_proto::v1::bridge_server::{Bridge, BridgeServer};
use tonic::{Request, Response, Status};

use crate::core::repair::rtx::Rtx;
use crate::core::{Counters, DropReason};
use crate::publish::{PublishError, Publisher};
use crate::state::{
    BridgeState, ErrorKind, NewEndpoint, RewriteRequest, SrtpRequest, StateError, WebRtcRequest,
};
use crate::webrtc::transport::Stats;

/// An API failure: a refused request or a change that did not reach every worker.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request was refused; nothing changed.
    #[error(transparent)]
    State(#[from] StateError),
    /// The change was recorded but a worker did not confirm it.
    #[error(transparent)]
    Publish(#[from] PublishError),
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Status {
        let msg = e.to_string();
        match e {
            ApiError::State(s) => match s.kind() {
                ErrorKind::Invalid => Status::invalid_argument(msg),
                ErrorKind::NotFound => Status::not_found(msg),
                ErrorKind::Exists => Status::already_exists(msg),
                ErrorKind::Full => Status::resource_exhausted(msg),
            },
            ApiError::Publish(_) => Status::internal(msg),
        }
    }
}

/// The gRPC face of one bridge.
pub struct BridgeService {
    publisher: Arc<Publisher>,
    media: SocketAddr,
    engine: &'static str,
    started: Instant,
}

impl BridgeService {
    /// A service programming `publisher`; `media` is the address endpoints are told to send to.
    pub fn new(publisher: Arc<Publisher>, media: SocketAddr, engine: &'static str) -> Self {
        Self {
            publisher,
            media,
            engine,
            started: Instant::now(),
        }
    }

    /// Runs a mutation off the async executor (it waits for worker acknowledgements).
    async fn apply<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut BridgeState) -> Result<R, StateError> + Send + 'static,
    ) -> Result<R, Status> {
        let p = self.publisher.clone();
        tokio::task::spawn_blocking(move || p.apply(|s| f(s).map_err(ApiError::from)))
            .await
            .map_err(|e| Status::internal(format!("apply task failed: {e}")))?
            .map_err(Status::from)
    }
}

/// Largest request the API decodes (an `Apply` of 4096 maximal changes fits).
pub const MAX_REQUEST_BYTES: usize = 4 << 20;

/// Most changes one `Apply` may carry.
pub const MAX_BATCH: usize = 4096;

/// A random first sequence number for an RTX stream.
fn random_u16() -> u16 {
    let mut b = [0u8; 2];
    // Without system randomness the stream starts at 0: still one counter per stream.
    let _ = aws_lc_rs::rand::fill(&mut b);
    u16::from_be_bytes(b)
}

/// An AddEndpoint request applied to the state (the single RPC and `Apply` alike).
fn add_endpoint(s: &mut BridgeState, r: &pb::AddEndpointRequest) -> Result<(), StateError> {
    let srtp = r.srtp.as_ref().map(|p| SrtpRequest {
        profile: p.profile.clone(),
        endpoint_key: p.endpoint_key.clone(),
        bridge_key: p.bridge_key.clone(),
    });
    let webrtc = r.webrtc.as_ref().map(|w| WebRtcRequest {
        local_ufrag: w.local_ufrag.clone(),
        local_pwd: w.local_pwd.clone(),
        remote_ufrag: w.remote_ufrag.clone(),
        remote_fingerprint: w.remote_fingerprint.clone(),
    });
    let pairs = |m: &[pb::IdMap]| m.iter().map(|m| (m.from, m.to)).collect();
    let rewrite = r.rewrite.as_ref().map(|w| RewriteRequest {
        payload_types: pairs(&w.payload_types),
        extensions: pairs(&w.extensions),
    });
    if let Some(sub) = &r.subscription
        && sub.ssrcs.len() > crate::state::MAX_SUBSCRIBED
    {
        return Err(StateError::TooLarge {
            field: "subscription.ssrcs",
            got: sub.ssrcs.len(),
            unit: "items",
            limit: crate::state::MAX_SUBSCRIBED,
        });
    }
    // Checked before anything changes: a request that fails adds nothing.
    let rtx = match &r.rtx {
        None => None,
        Some(_) if r.srtp.is_none() && r.webrtc.is_none() => {
            return Err(StateError::RtxNeedsSrtp);
        }
        Some(x) => {
            let streams: Vec<_> = x.streams.iter().map(|m| (m.media, m.rtx)).collect();
            Rtx::new(&pairs(&x.payload_types), &streams, random_u16)?.map(Arc::new)
        }
    };
    if let Some(x) = &r.simulcast {
        crate::state::check_simulcast(&x.layers, &x.rids, x.rid_ext_id, &r.ssrcs)?;
    }
    if r.cache_ssrcs.iter().any(|s| !r.ssrcs.contains(s)) {
        return Err(StateError::BadValue {
            field: "cache_ssrcs",
            why: "every SSRC must be one of the endpoint's ssrcs",
        });
    }
    if let Some(x) = &r.simulcast_receive {
        s.check_sim_receive(&r.conference_id, &x.publisher, x.ssrc, &r.ssrcs)?;
    }
    if r.audio_level_ext_id > 255 {
        return Err(StateError::BadValue {
            field: "audio_level_ext_id",
            why: "an RTP header extension id is 1-255 (0: none)",
        });
    }
    s.add(NewEndpoint {
        conference: &r.conference_id,
        endpoint: &r.endpoint_id,
        ssrcs: &r.ssrcs,
        remote_addr: &r.remote_addr,
        srtp: srtp.as_ref(),
        webrtc: webrtc.as_ref(),
        rewrite: rewrite.as_ref(),
    })?;
    if rtx.is_some() {
        // Cannot fail: the endpoint exists.
        s.set_rtx(&r.conference_id, &r.endpoint_id, rtx)?;
    }
    if !r.cache_ssrcs.is_empty() {
        // Cannot fail: checked before the endpoint was added.
        s.cache_streams(&r.conference_id, &r.endpoint_id, &r.cache_ssrcs)?;
    }
    if let Some(x) = &r.simulcast {
        // Cannot fail: checked before the endpoint was added.
        s.set_simulcast(
            &r.conference_id,
            &r.endpoint_id,
            &x.layers,
            &x.rids,
            x.rid_ext_id,
        )?;
    }
    if let Some(x) = &r.simulcast_receive {
        // Cannot fail: checked before the endpoint was added.
        s.set_sim_receive(
            &r.conference_id,
            &r.endpoint_id,
            &x.publisher,
            x.ssrc,
            x.max_height,
            random_u16(),
        )?;
    }
    if r.audio_level_ext_id != 0 {
        // Cannot fail: the endpoint exists and the id is in range.
        s.set_audio_level(&r.conference_id, &r.endpoint_id, r.audio_level_ext_id)?;
    }
    if let Some(sub) = &r.subscription {
        // Cannot fail: the endpoint exists and the list is within the limit.
        s.set_subscription(
            &r.conference_id,
            crate::state::SubscriptionRequest {
                endpoint_id: &r.endpoint_id,
                relay_id: "",
                all: false,
                endpoints: &[],
                ssrcs: &sub.ssrcs,
            },
        )?;
    }
    Ok(())
}

/// An AddRelay request applied to the state (the single RPC and `Apply` alike).
fn add_relay(s: &mut BridgeState, r: &pb::AddRelayRequest) -> Result<(), StateError> {
    s.add_relay(
        &r.conference_id,
        &r.relay_id,
        crate::state::NewRelay {
            remote_addr: &r.remote_addr,
            link: r.link_conference,
            tx_key: &r.tx_key,
            rx_key: &r.rx_key,
            downstream: r.downstream,
        },
    )
}

/// A SetSubscription request applied to the state (the single RPC and `Apply` alike).
fn set_subscription(s: &mut BridgeState, r: &pb::SetSubscriptionRequest) -> Result<(), StateError> {
    s.set_subscription(
        &r.conference_id,
        crate::state::SubscriptionRequest {
            endpoint_id: &r.endpoint_id,
            relay_id: &r.relay_id,
            all: r.all,
            endpoints: &r.endpoints,
            ssrcs: &r.ssrcs,
        },
    )
}

fn subscription(s: Option<&Arc<[u32]>>) -> Option<pb::Subscription> {
    s.map(|s| pb::Subscription { ssrcs: s.to_vec() })
}

/// Applies one change of a batch; its failure is its own.
fn apply_change(s: &mut BridgeState, c: &pb::Change) -> pb::ChangeResult {
    use pb::change::Change as C;
    let r = match &c.change {
        Some(C::CreateConference(r)) => s.create_conference(&r.conference_id),
        Some(C::AddEndpoint(r)) => add_endpoint(s, r),
        Some(C::RemoveEndpoint(r)) => s.remove_endpoint(&r.conference_id, &r.endpoint_id),
        Some(C::DeleteConference(r)) => s.delete_conference(&r.conference_id).map(|_| ()),
        Some(C::AddRelay(r)) => add_relay(s, r),
        Some(C::RemoveRelay(r)) => s.remove_relay(&r.conference_id, &r.relay_id),
        Some(C::SetSubscription(r)) => set_subscription(s, r),
        Some(C::SetSimulcastLimit(r)) => {
            s.set_simulcast_limit(&r.conference_id, &r.endpoint_id, r.max_height)
        }
        None => {
            return pb::ChangeResult {
                code: tonic::Code::InvalidArgument as i32,
                message: "change: empty".into(),
            };
        }
    };
    match r {
        Ok(()) => pb::ChangeResult::default(),
        Err(e) => {
            let st = Status::from(ApiError::State(e));
            pb::ChangeResult {
                code: st.code() as i32,
                message: st.message().into(),
            }
        }
    }
}

/// The API's counters: a worker's (`t`: `None`), or the total with the WebRTC transport's.
fn counters(c: &Counters, t: Option<&Stats>) -> pb::Counters {
    let d = |r: DropReason| c.drops[r as usize];
    let zero = Stats::default();
    let t = t.unwrap_or(&zero);
    pb::Counters {
        rx_packets: c.rx_packets,
        rx_bytes: c.rx_bytes,
        tx_packets: c.tx_packets,
        tx_bytes: c.tx_bytes,
        rx_rtp: c.rx_rtp,
        rx_rtcp: c.rx_rtcp,
        dropped_packets: c.dropped(),
        drops: Some(pb::DropCounters {
            not_rtp: d(DropReason::NotRtp),
            malformed: d(DropReason::Malformed),
            unknown_source: d(DropReason::UnknownSource),
            unknown_ssrc: d(DropReason::UnknownSsrc),
            no_receivers: d(DropReason::NoReceivers),
            send_failed: d(DropReason::SendFailed),
            srtp_auth_failed: d(DropReason::SrtpAuth),
            srtp_replay: d(DropReason::SrtpReplay),
            relay_auth_failed: d(DropReason::RelayAuth),
            relay_replay: d(DropReason::RelayReplay),
            unknown_relay: d(DropReason::UnknownRelay),
            keyframe_throttled: d(DropReason::KeyframeThrottled),
            relay_hop_limit: d(DropReason::RelayHopLimit),
            transport_queue_full: d(DropReason::TransportQueueFull),
            nack_answered: d(DropReason::NackAnswered),
            feedback_taken: d(DropReason::FeedbackTaken),
        }),
        relay_rx: c.relay_rx,
        relay_tx: c.relay_tx,
        stun_rx: c.stun_rx,
        dtls_rx: c.dtls_rx,
        stun_answered: t.stun_answered,
        stun_rejected: t.stun_rejected_total(),
        dtls_dropped: t.dtls_dropped,
        dtls_handshakes: t.dtls_handshakes,
        dtls_failed: t.dtls_failed_total(),
        ice_consent_expired: t.consent_expired,
        webrtc_send_failed: t.send_failed,
        nack_rx: c.nack_rx,
        nack_repaired: c.nack_repaired,
        nack_forwarded: c.nack_forwarded,
        nack_unsent: c.nack_unsent,
        nack_unanswered: c.nack_unanswered,
        xdp_tx: c.xdp_tx,
        xdp_kernel_tx: c.xdp_kernel_tx,
    }
}

#[tonic::async_trait]
impl Bridge for BridgeService {
    async fn create_conference(
        &self,
        req: Request<pb::CreateConferenceRequest>,
    ) -> Result<Response<pb::CreateConferenceResponse>, Status> {
        let id = req.into_inner().conference_id;
        self.apply(move |s| s.create_conference(&id)).await?;
        Ok(Response::new(pb::CreateConferenceResponse {}))
    }

    async fn delete_conference(
        &self,
        req: Request<pb::DeleteConferenceRequest>,
    ) -> Result<Response<pb::DeleteConferenceResponse>, Status> {
        let id = req.into_inner().conference_id;
        let n = self.apply(move |s| s.delete_conference(&id)).await?;
        Ok(Response::new(pb::DeleteConferenceResponse {
            removed_endpoints: n as u32,
        }))
    }

    async fn add_endpoint(
        &self,
        req: Request<pb::AddEndpointRequest>,
    ) -> Result<Response<pb::AddEndpointResponse>, Status> {
        let r = req.into_inner();
        self.apply(move |s| add_endpoint(s, &r)).await?;
        Ok(Response::new(pb::AddEndpointResponse {
            media_addr: self.media.to_string(),
        }))
    }

    async fn remove_endpoint(
        &self,
        req: Request<pb::RemoveEndpointRequest>,
    ) -> Result<Response<pb::RemoveEndpointResponse>, Status> {
        let r = req.into_inner();
        self.apply(move |s| s.remove_endpoint(&r.conference_id, &r.endpoint_id))
            .await?;
        Ok(Response::new(pb::RemoveEndpointResponse {}))
    }

    async fn apply(
        &self,
        req: Request<pb::ApplyRequest>,
    ) -> Result<Response<pb::ApplyResponse>, Status> {
        let changes = req.into_inner().changes;
        if changes.len() > MAX_BATCH {
            return Err(Status::invalid_argument(format!(
                "changes: {}, more than the limit of {MAX_BATCH}",
                changes.len()
            )));
        }
        let results = self
            .apply(move |s| Ok(changes.iter().map(|c| apply_change(s, c)).collect()))
            .await?;
        Ok(Response::new(pb::ApplyResponse { results }))
    }

    async fn add_relay(
        &self,
        req: Request<pb::AddRelayRequest>,
    ) -> Result<Response<pb::AddRelayResponse>, Status> {
        let r = req.into_inner();
        self.apply(move |s| add_relay(s, &r)).await?;
        Ok(Response::new(pb::AddRelayResponse {}))
    }

    async fn remove_relay(
        &self,
        req: Request<pb::RemoveRelayRequest>,
    ) -> Result<Response<pb::RemoveRelayResponse>, Status> {
        let r = req.into_inner();
        self.apply(move |s| s.remove_relay(&r.conference_id, &r.relay_id))
            .await?;
        Ok(Response::new(pb::RemoveRelayResponse {}))
    }

    async fn set_subscription(
        &self,
        req: Request<pb::SetSubscriptionRequest>,
    ) -> Result<Response<pb::SetSubscriptionResponse>, Status> {
        let r = req.into_inner();
        self.apply(move |s| set_subscription(s, &r)).await?;
        Ok(Response::new(pb::SetSubscriptionResponse {}))
    }

    async fn set_simulcast_limit(
        &self,
        req: Request<pb::SetSimulcastLimitRequest>,
    ) -> Result<Response<pb::SetSimulcastLimitResponse>, Status> {
        let r = req.into_inner();
        let p = self.publisher.clone();
        // Off the runtime: the state lock may be held by a change waiting for the workers.
        tokio::task::spawn_blocking(move || {
            p.read(|s| s.set_simulcast_limit(&r.conference_id, &r.endpoint_id, r.max_height))
        })
        .await
        .map_err(|e| Status::internal(format!("limit task failed: {e}")))?
        .map_err(|e| Status::from(ApiError::from(e)))?;
        Ok(Response::new(pb::SetSimulcastLimitResponse {}))
    }

    async fn list_conferences(
        &self,
        _req: Request<pb::ListConferencesRequest>,
    ) -> Result<Response<pb::ListConferencesResponse>, Status> {
        let p = self.publisher.clone();
        // Off the runtime: the state lock may be held by a change waiting for the workers.
        let conferences = tokio::task::spawn_blocking(move || {
            p.read(|s| {
                s.list()
                    .map(|(c, eps)| pb::ConferenceInfo {
                        relays: s
                            .relays(c)
                            .map(|(id, r)| pb::RelayInfo {
                                relay_id: id.into(),
                                remote_addr: r.addr.to_string(),
                                link_conference: r.link,
                                subscription: subscription(r.subscription.as_ref()),
                            })
                            .collect(),
                        conference_id: c.into(),
                        endpoints: eps
                            .map(|(e, st)| pb::EndpointInfo {
                                endpoint_id: e.into(),
                                ssrcs: st.ssrcs.clone(),
                                remote_addr: st.addr.map(|a| a.to_string()).unwrap_or_default(),
                                latched: st.latched,
                                srtp_profile: st
                                    .srtp
                                    .as_ref()
                                    .map(|s| s.profile.name().to_string())
                                    .unwrap_or_default(),
                                webrtc_state: st
                                    .webrtc
                                    .as_ref()
                                    .map(|w| w.state.name().to_string())
                                    .unwrap_or_default(),
                                subscription: subscription(st.subscription.as_ref()),
                            })
                            .collect(),
                    })
                    .collect::<Vec<_>>()
            })
        })
        .await
        .map_err(|e| Status::internal(format!("list task failed: {e}")))?;
        Ok(Response::new(pb::ListConferencesResponse { conferences }))
    }

    async fn get_stats(
        &self,
        _req: Request<pb::GetStatsRequest>,
    ) -> Result<Response<pb::GetStatsResponse>, Status> {
        let per_worker = self.publisher.worker_counters();
        let total = self.publisher.total_counters();
        let (conferences, endpoints) = self.publisher.counts();
        let (conferences, endpoints) = (conferences as u32, endpoints as u32);
        let webrtc = self.publisher.webrtc_stats();
        Ok(Response::new(pb::GetStatsResponse {
            total: Some(counters(&total, Some(&webrtc))),
            workers: per_worker
                .iter()
                .enumerate()
                .map(|(i, c)| pb::WorkerStats {
                    worker: i as u32,
                    counters: Some(counters(c, None)),
                })
                .collect(),
            conferences,
            endpoints,
            engine: self.engine.into(),
            uptime_ms: self.started.elapsed().as_millis() as u64,
            repair_cache: self.publisher.repair_cache().map(|c| {
                let (in_use, reserved) = c.memory();
                pb::RepairCacheStats {
                    rings: c.rings() as u32,
                    rings_in_use: c.rings_in_use() as u32,
                    packets: c.packets() as u32,
                    ring_bytes: c.ring_bytes() as u64,
                    bytes_in_use: in_use as u64,
                    bytes_reserved: reserved as u64,
                }
            }),
        }))
    }
}

/// Serves the Bridge service, `grpc.health.v1.Health` and reflection on `listener` until
/// `shutdown` resolves.
pub async fn serve(
    service: BridgeService,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let (health, router) = ringbridge_edge::grpc::router()?;
    health.set_serving::<BridgeServer<BridgeService>>().await;
    ringbridge_edge::grpc::serve(
        router.add_service(BridgeServer::new(service).max_decoding_message_size(MAX_REQUEST_BYTES)),
        listener,
        shutdown,
    )
    .await
}
