//! The control plane's gRPC services (Focus, Router, Registry, Autoscaler): thin adapters that validate
//! and convert requests, submit them to the [`Control`], and map results to statuses.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use ringbridge_proto::v1 as pb;
use ringbridge_proto::v1::autoscaler_server::Autoscaler as AutoscalerApi;
use ringbridge_proto::v1::focus_server::Focus;
use ringbridge_proto::v1::registry_server::Registry;
use ringbridge_proto::v1::router_server::Router as RouterApi;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::core::fleet::Bridge;
use crate::core::focus::{Done, JoinRequest, MAX_ID_LEN, SrtpOffer};
use crate::core::router::Shard;
use crate::run::service::{Control, now_ms, placement_msg, status};
use crate::store::{Change, Role};

fn need(field: &str, v: &str) -> Result<(), Status> {
    if v.is_empty() {
        return Err(Status::invalid_argument(format!(
            "{field}: must not be empty"
        )));
    }
    if v.len() > MAX_ID_LEN {
        return Err(Status::invalid_argument(format!(
            "{field}: {} bytes, longer than the limit of {MAX_ID_LEN}",
            v.len()
        )));
    }
    Ok(())
}

/// Bytes of a refused value an error echoes at most: enough to recognise it, never the whole
/// of a long one (a status message travels in a header of limited size).
const ECHO_BYTES: usize = 32;

/// `v` as an error echoes it: quoted, cut to [`ECHO_BYTES`] on a character boundary.
fn echo(v: &str) -> String {
    if v.len() <= ECHO_BYTES {
        return format!("{v:?}");
    }
    let cut = (0..=ECHO_BYTES)
        .rev()
        .find(|&i| v.is_char_boundary(i))
        .unwrap_or(0);
    format!("{:?}... ({} bytes)", &v[..cut], v.len())
}

/// Parses a Join's `role`, bounded like the other fields (empty: participant).
fn role(v: &str) -> Result<Role, Status> {
    if v.len() > MAX_ID_LEN {
        return Err(Status::invalid_argument(format!(
            "role: {} bytes, longer than the limit of {MAX_ID_LEN}",
            v.len()
        )));
    }
    Role::parse(v).ok_or_else(|| {
        Status::invalid_argument(format!(
            "role: {} is not one of participant, publisher, viewer",
            echo(v)
        ))
    })
}

fn addr(field: &str, v: &str) -> Result<(), Status> {
    need(field, v)?;
    v.parse::<std::net::SocketAddr>()
        .map(|_| ())
        .map_err(|_| Status::invalid_argument(format!("{field}: not an ip:port address")))
}

/// The Focus service.
pub struct FocusService(pub Arc<Control>);

#[tonic::async_trait]
impl Focus for FocusService {
    async fn join(
        &self,
        req: Request<pb::JoinRequest>,
    ) -> Result<Response<pb::JoinResponse>, Status> {
        self.0.check_active().await?;
        let r = req.into_inner();
        let c = &self.0;
        c.check_store()?;
        let role = role(&r.role)?;
        let join = JoinRequest {
            role,
            webrtc: None,
            rewrite: None,
            media: None,
            subscription: None,
            last_n: r.last_n,
            owner: String::new(),
            conference: r.conference,
            participant_id: r.participant_id,
            region: r.region,
            ssrcs: r.ssrcs,
            remote_addr: r.remote_addr,
            srtp: r.srtp.map(|s| SrtpOffer {
                profile: s.profile,
                endpoint_key: s.endpoint_key,
                bridge_key: s.bridge_key,
            }),
        };
        let conference = join.conference.clone();
        // A retry of a join that is done (its answer was lost, or it was not yet durable).
        let again = c.lock().focus.joined_as(&join);
        let retried = again.is_some();
        let done = match again {
            Some(done) => done,
            None => {
                let plan = c
                    .submit(&conference, |f, now| f.join(join.clone(), now))
                    .await?;
                c.run(plan).await.result.map_err(status)?
            }
        };
        match done {
            Done::Joined {
                bridge,
                media_addr,
                srtp,
            } => {
                c.durable().await?;
                if !retried {
                    c.placements_total.fetch_add(1, Relaxed);
                }
                Ok(Response::new(pb::JoinResponse {
                    bridge_id: bridge,
                    media_addr,
                    srtp: srtp.map(|k| pb::SrtpParams {
                        profile: k.profile,
                        endpoint_key: Vec::new(),
                        bridge_key: k.bridge_key,
                    }),
                }))
            }
            other => Err(Status::internal(format!("join completed as {other:?}"))),
        }
    }

    async fn leave(
        &self,
        req: Request<pb::LeaveRequest>,
    ) -> Result<Response<pb::LeaveResponse>, Status> {
        self.0.check_active().await?;
        let r = req.into_inner();
        let c = &self.0;
        c.check_store()?;
        let plan = c
            .submit(&r.conference, |f, _| {
                f.leave(&r.conference, &r.participant_id)
            })
            .await?;
        c.run(plan).await.result.map_err(status)?;
        c.durable().await?;
        Ok(Response::new(pb::LeaveResponse {}))
    }

    async fn get_conference(
        &self,
        req: Request<pb::GetConferenceRequest>,
    ) -> Result<Response<pb::ConferencePlacement>, Status> {
        self.0.check_active().await?;
        let conf = req.into_inner().conference;
        need("conference", &conf)?;
        let p = self.0.lock().focus.placement(&conf, "current");
        p.map(|a| Response::new(placement_msg(a)))
            .ok_or_else(|| Status::not_found("conference: not found"))
    }

    async fn list_placements(
        &self,
        _req: Request<pb::ListPlacementsRequest>,
    ) -> Result<Response<pb::ListPlacementsResponse>, Status> {
        self.0.check_active().await?;
        let core = self.0.lock();
        let conferences = core
            .focus
            .conferences()
            .keys()
            .filter_map(|c| core.focus.placement(c, "current"))
            .map(placement_msg)
            .collect();
        Ok(Response::new(pb::ListPlacementsResponse { conferences }))
    }

    type WatchConferenceStream = ReceiverStream<Result<pb::ConferencePlacement, Status>>;

    async fn watch_conference(
        &self,
        req: Request<pb::WatchConferenceRequest>,
    ) -> Result<Response<Self::WatchConferenceStream>, Status> {
        let req_addr = req.remote_addr().map(|a| a.ip());
        let conf = req.into_inner().conference;
        need("conference", &conf)?;
        let client = req_addr;
        let slot = self.0.watch_slot(client)?;
        if let Some(c) = self.0.cluster().filter(|c| !c.is_active()) {
            // A standby starts from the placement in the store now and follows the active
            // focus's announcements published after it.
            let (current, rev) = self.0.stored_placement(&conf).await?;
            let mut stream = c
                .watch(&conf, rev)
                .await
                .map_err(|e| Status::unavailable(e.to_string()))?;
            let (tx, rx) = mpsc::channel(16);
            tokio::spawn(async move {
                let _slot = slot;
                if let Some(m) = current
                    && tx.send(Ok(m)).await.is_err()
                {
                    return;
                }
                loop {
                    let r = tokio::select! {
                        _ = tx.closed() => return, // the client went away
                        r = stream.message() => r,
                    };
                    let Ok(Some(r)) = r else { break };
                    for ev in r.events() {
                        let Some(kv) = ev.kv() else { continue };
                        if let Ok(m) =
                            <pb::ConferencePlacement as prost::Message>::decode(kv.value())
                            && tx.send(Ok(m)).await.is_err()
                        {
                            return;
                        }
                    }
                }
                let _ = tx
                    .send(Err(Status::unavailable(
                        "the etcd watch ended; watch again",
                    )))
                    .await;
            });
            return Ok(Response::new(ReceiverStream::new(rx)));
        }
        let mut events = self.0.subscribe();
        let current = self.0.lock().focus.placement(&conf, "current");
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(async move {
            let _slot = slot;
            if let Some(c) = current
                && tx.send(Ok(placement_msg(c))).await.is_err()
            {
                return;
            }
            loop {
                let e = tokio::select! {
                    _ = tx.closed() => return, // the client went away
                    e = events.recv() => e,
                };
                match e {
                    Ok(e) if e.conference == conf => {
                        if tx.send(Ok(e)).await.is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(conference = %conf, "watcher lagged; {n} events skipped")
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// The Router service.
pub struct RouterService(pub Arc<Control>);

#[tonic::async_trait]
impl RouterApi for RouterService {
    async fn route(
        &self,
        req: Request<pb::RouteRequest>,
    ) -> Result<Response<pb::RouteResponse>, Status> {
        let conference = req.into_inner().conference;
        need("conference", &conference)?;
        if let Some(c) = self.0.cluster() {
            // Shared sticky routes in etcd: every router agrees.
            let (shard_id, shard_addr) = c
                .route(&conference, now_ms())
                .await
                .map_err(|e| Status::unavailable(e.to_string()))?;
            return Ok(Response::new(pb::RouteResponse {
                shard_id,
                shard_addr,
            }));
        }
        self.0.check_store()?;
        let mut core = self.0.lock();
        let (s, persist) = core
            .router
            .route(&conference, now_ms())
            .map_err(|e| Status::unavailable(e.to_string()))?;
        if let Some(route) = persist {
            core.focus.record(Change::Routed { conference, route });
        }
        Ok(Response::new(pb::RouteResponse {
            shard_id: s.id,
            shard_addr: s.addr,
        }))
    }

    async fn register_shard(
        &self,
        req: Request<pb::RegisterShardRequest>,
    ) -> Result<Response<pb::RegisterShardResponse>, Status> {
        let r = req.into_inner();
        need("shard_id", &r.shard_id)?;
        need("addr", &r.addr)?;
        if self.0.cluster().is_some() {
            return Err(Status::failed_precondition(
                "shards register themselves in etcd (each instance under its lease)",
            ));
        }
        self.0.lock().router.register_shard(Shard {
            id: r.shard_id,
            addr: r.addr,
            healthy: r.healthy,
        });
        Ok(Response::new(pb::RegisterShardResponse {}))
    }

    async fn list_shards(
        &self,
        _req: Request<pb::ListShardsRequest>,
    ) -> Result<Response<pb::ListShardsResponse>, Status> {
        if let Some(c) = self.0.cluster() {
            let live = c
                .shards()
                .await
                .map_err(|e| Status::unavailable(e.to_string()))?;
            let mut shards = Vec::new();
            for (id, addrs) in live {
                let addr = match c.leader(&id).await {
                    Ok(Some(l)) => l,
                    _ => addrs.first().cloned().unwrap_or_default(),
                };
                shards.push(pb::ShardInfo {
                    shard_id: id,
                    addr,
                    healthy: true,
                });
            }
            return Ok(Response::new(pb::ListShardsResponse { shards }));
        }
        let core = self.0.lock();
        let shards = core
            .router
            .shards()
            .map(|s| pb::ShardInfo {
                shard_id: s.id.clone(),
                addr: s.addr.clone(),
                healthy: s.healthy,
            })
            .collect();
        Ok(Response::new(pb::ListShardsResponse { shards }))
    }
}

/// The Registry service.
pub struct RegistryService(pub Arc<Control>);

/// Largest capacity a bridge may announce, packets/s.
pub const MAX_CAPACITY_PPS: f64 = 1e13;

#[tonic::async_trait]
impl Registry for RegistryService {
    async fn register_bridge(
        &self,
        req: Request<pb::RegisterBridgeRequest>,
    ) -> Result<Response<pb::RegisterBridgeResponse>, Status> {
        self.0.check_active().await?;
        let r = req.into_inner();
        need("bridge_id", &r.bridge_id)?;
        addr("api_addr", &r.api_addr)?;
        addr("media_addr", &r.media_addr)?;
        if r.region.len() > MAX_ID_LEN {
            return Err(Status::invalid_argument(format!(
                "region: longer than the limit of {MAX_ID_LEN} bytes"
            )));
        }
        if !(r.capacity_pps.is_finite() && (1.0..=MAX_CAPACITY_PPS).contains(&r.capacity_pps)) {
            return Err(Status::invalid_argument(format!(
                "capacity_pps: must be a number of packets/s from 1 to {MAX_CAPACITY_PPS:e}"
            )));
        }
        let c = &self.0;
        if r.instance_id.len() > MAX_ID_LEN {
            return Err(Status::invalid_argument(format!(
                "instance_id: longer than the limit of {MAX_ID_LEN} bytes"
            )));
        }
        if !r.dtls_fingerprint.is_empty() {
            crate::signal::sdp::check_fingerprint(&r.dtls_fingerprint)
                .map_err(|e| Status::invalid_argument(format!("dtls_fingerprint: {e}")))?;
        }
        let b = Bridge::new(
            &r.bridge_id,
            &r.api_addr,
            &r.media_addr,
            &r.region,
            r.capacity_pps,
        )
        .with_instance(&r.instance_id)
        .with_fingerprint(&r.dtls_fingerprint);
        if let Some(cl) = c.cluster() {
            // Kept in etcd before it counts: a standby that takes over knows it.
            cl.save_bridge(&crate::store::cluster::BridgeRecord {
                id: r.bridge_id.clone(),
                api_addr: r.api_addr.clone(),
                media_addr: r.media_addr.clone(),
                region: r.region.clone(),
                capacity: r.capacity_pps,
                instance: r.instance_id.clone(),
                dtls_fingerprint: r.dtls_fingerprint.clone(),
            })
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        }
        let (plans, stranded) = {
            let mut core = c.lock();
            let plans = core.focus.register(b, now_ms()).map_err(status)?;
            (plans, core.focus.take_stranded())
        };
        tracing::info!(bridge = %r.bridge_id, api = %r.api_addr, "bridge registered");
        c.spawn(plans);
        c.end_stranded(stranded);
        c.reconcile(r.bridge_id, r.api_addr);
        Ok(Response::new(pb::RegisterBridgeResponse {
            report_interval_ms: c.cfg.report_interval_ms,
        }))
    }

    async fn report_audio(
        &self,
        req: Request<pb::AudioReport>,
    ) -> Result<Response<pb::AudioReportResponse>, Status> {
        self.0.check_active().await?;
        let r = req.into_inner();
        need("bridge_id", &r.bridge_id)?;
        let levels: Vec<(String, String, f64)> = r
            .levels
            .into_iter()
            .filter(|l| l.loudness.is_finite())
            .map(|l| (l.conference_id, l.endpoint_id, l.loudness))
            .collect();
        let mut core = self.0.lock();
        if core.focus.fleet().get(&r.bridge_id).is_none() {
            return Err(Status::not_found(
                "bridge_id: not registered (or declared down); register again",
            ));
        }
        core.focus.observe_audio(&r.bridge_id, &levels, now_ms());
        self.0.announce(&mut core);
        // A new speaker's video goes to last-N receivers now, not at the next tick.
        let plans = core.focus.sync_subscriptions();
        drop(core);
        self.0.spawn(plans);
        Ok(Response::new(pb::AudioReportResponse {}))
    }

    async fn report_load(
        &self,
        req: Request<pb::LoadReport>,
    ) -> Result<Response<pb::LoadReportResponse>, Status> {
        self.0.check_active().await?;
        let r = req.into_inner();
        need("bridge_id", &r.bridge_id)?;
        for (field, v) in [
            ("stress", r.stress),
            ("rx_pps", r.rx_pps),
            ("tx_pps", r.tx_pps),
            ("rx_bps", r.rx_bps),
            ("tx_bps", r.tx_bps),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(Status::invalid_argument(format!(
                    "{field}: must be a finite number >= 0"
                )));
            }
        }
        let known = self
            .0
            .lock()
            .focus
            .report(&r.bridge_id, r.stress, r.draining, now_ms());
        if !known {
            return Err(Status::not_found(
                "bridge_id: not registered (or declared down); register again",
            ));
        }
        Ok(Response::new(pb::LoadReportResponse {}))
    }

    async fn list_bridges(
        &self,
        _req: Request<pb::ListBridgesRequest>,
    ) -> Result<Response<pb::ListBridgesResponse>, Status> {
        self.0.check_active().await?;
        let core = self.0.lock();
        let bridges = core
            .focus
            .fleet()
            .iter()
            .map(|b| {
                // From the focus's bridge index: no scan of every conference.
                let (conferences, participants) = core.focus.load_of(&b.id);
                pb::BridgeInfo {
                    bridge_id: b.id.clone(),
                    region: b.region.clone(),
                    api_addr: b.api_addr.clone(),
                    media_addr: b.media_addr.clone(),
                    state: b.state().into(),
                    stress: b.stress,
                    conferences: conferences as u32,
                    participants: participants as u32,
                }
            })
            .collect();
        Ok(Response::new(pb::ListBridgesResponse { bridges }))
    }

    async fn drain_bridge(
        &self,
        req: Request<pb::DrainBridgeRequest>,
    ) -> Result<Response<pb::DrainBridgeResponse>, Status> {
        self.0.check_active().await?;
        let r = req.into_inner();
        need("bridge_id", &r.bridge_id)?;
        self.0.check_store()?;
        let (participants, since) = {
            let mut core = self.0.lock();
            core.focus.drain(&r.bridge_id, now_ms()).map_err(status)?;
            let participants = core.focus.load_of(&r.bridge_id).1 as u32;
            let since = core
                .focus
                .fleet()
                .get(&r.bridge_id)
                .map_or(0, |b| b.drain_since_ms);
            (participants, since)
        };
        // Kept in the store before it is acknowledged: a restarted control plane keeps it.
        self.0.durable().await?;
        let grace_ms = (since + self.0.cfg.drain_grace_ms).saturating_sub(now_ms());
        Ok(Response::new(pb::DrainBridgeResponse {
            participants,
            grace_ms,
        }))
    }
}

/// The Autoscaler service.
pub struct AutoscalerService(pub Arc<Control>);

/// A decision as the API shows it (wall-clock time).
pub fn decision_msg(d: &crate::core::autoscaler::Decision) -> pb::ScalingDecision {
    pb::ScalingDecision {
        at_ms: d.sample.now_ms,
        ready: d.sample.ready,
        starting: d.sample.starting,
        metric: d.sample.metric,
        current: d.current,
        raw: d.raw,
        desired: d.desired,
        reason: d.reason.clone(),
        stale: d.sample.stale,
    }
}

#[tonic::async_trait]
impl AutoscalerApi for AutoscalerService {
    async fn get_autoscaler(
        &self,
        _req: Request<pb::GetAutoscalerRequest>,
    ) -> Result<Response<pb::AutoscalerStatus>, Status> {
        let core = self.0.lock();
        let Some(scaler) = &core.scaler else {
            return Ok(Response::new(pb::AutoscalerStatus::default()));
        };
        let cfg = scaler.hpa().config();
        Ok(Response::new(pb::AutoscalerStatus {
            enabled: true,
            // The name, then what holds it back (a process actuator backing off after bridges
            // that exit at once), until the proto has a field of its own for it.
            actuator: match (self.0.actuator_name(), self.0.actuator_status()) {
                (Some(name), status) if !status.is_empty() => format!("{name}: {status}"),
                (name, _) => name.unwrap_or_default().into(),
            },
            last: scaler.last().map(decision_msg),
            target_utilization: cfg.target,
            tolerance: cfg.tolerance,
            min_bridges: cfg.min,
            max_bridges: cfg.max,
            scale_down_window_ms: cfg.down_window_ms,
            window: scaler
                .hpa()
                .window()
                .map(|(at_ms, bridges)| pb::Recommendation { at_ms, bridges })
                .collect(),
            decisions: scaler.history().map(decision_msg).collect(),
            draining: core
                .focus
                .fleet()
                .iter()
                .filter(|b| b.draining)
                .map(|b| b.id.clone())
                .collect(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_role_is_named_bounded_and_echoed_in_part() {
        assert_eq!(role("").unwrap(), Role::Participant);
        assert_eq!(role("viewer").unwrap(), Role::Viewer);
        let e = role("director").unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert_eq!(
            e.message(),
            "role: \"director\" is not one of participant, publisher, viewer"
        );
        // Over the limit: named with its size, nothing of it echoed.
        for n in [MAX_ID_LEN + 1, 300, 60_000] {
            let e = role(&"r".repeat(n)).unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument);
            assert_eq!(
                e.message(),
                format!("role: {n} bytes, longer than the limit of {MAX_ID_LEN}")
            );
        }
        // Under the limit but long: a bounded echo, cut on a character boundary.
        let long = "\u{e9}".repeat(100);
        let e = role(&long).unwrap_err();
        assert!(e.message().len() < 120, "{}", e.message());
        assert!(e.message().contains("(200 bytes)"), "{}", e.message());
    }
}
