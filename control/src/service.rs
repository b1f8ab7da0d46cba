//! The control plane's gRPC services (Focus, Router, Registry) over the sans-IO [`Fleet`],
//! [`Router`] and [`Store`], plus the monitor that declares silent bridges down, moves their
//! conferences and flushes the store.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ringbridge_proto::v1 as pb;
use ringbridge_proto::v1::bridge_client::BridgeClient;
use ringbridge_proto::v1::focus_server::Focus;
use ringbridge_proto::v1::registry_server::Registry;
use ringbridge_proto::v1::router_server::Router as RouterApi;
use tokio::sync::{Mutex, broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status};

use crate::bridges::{Bridge, Fleet, Health, RegionThenLeastStress, Strategy};
use crate::router::{Router, Shard};
use crate::store::{Participant, Placement, Snapshot, Store};

/// Settings of one control instance (one shard).
#[derive(Debug, Clone)]
pub struct Config {
    /// This shard's id in the router.
    pub shard_id: String,
    /// Address clients reach this shard at.
    pub shard_addr: String,
    /// Interval bridges report at, ms.
    pub report_interval_ms: u64,
    /// Reports a bridge may miss before it is down.
    pub missed_reports: u64,
    /// Idle time after which a route is forgotten, ms.
    pub route_ttl_ms: u64,
    /// Packets/s one participant adds until the next report shows it.
    pub per_participant_pps: f64,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

struct Inner {
    fleet: Fleet,
    router: Router,
    placements: BTreeMap<String, Placement>,
    clients: HashMap<String, (String, BridgeClient<Channel>)>,
    dirty: bool,
    /// Placements on bridges the fleet does not know yet (after a restart) wait until then.
    grace_until_ms: u64,
}

/// The control plane state shared by all services.
pub struct Control {
    inner: Mutex<Inner>,
    events: broadcast::Sender<pb::ConferencePlacement>,
    store: Box<dyn Store>,
    strategy: Box<dyn Strategy>,
    cfg: Config,
    /// Participants placed since start.
    pub placements_total: AtomicU64,
    /// Conferences moved off failed bridges since start.
    pub failovers_total: AtomicU64,
}

fn status_from_bridge(bridge: &str, s: Status) -> Status {
    let msg = format!("bridge {bridge}: {}", s.message());
    match s.code() {
        Code::InvalidArgument | Code::AlreadyExists | Code::NotFound => Status::new(s.code(), msg),
        _ => Status::unavailable(msg),
    }
}

fn need(field: &str, v: &str) -> Result<(), Status> {
    if v.is_empty() {
        return Err(Status::invalid_argument(format!(
            "{field}: must not be empty"
        )));
    }
    Ok(())
}

impl Inner {
    fn client(&mut self, id: &str) -> Option<BridgeClient<Channel>> {
        let api = self.fleet.get(id)?.api_addr.clone();
        if let Some((a, c)) = self.clients.get(id)
            && *a == api
        {
            return Some(c.clone());
        }
        let ch = Channel::from_shared(format!("http://{api}"))
            .ok()?
            .connect_lazy();
        let c = BridgeClient::new(ch);
        self.clients.insert(id.into(), (api, c.clone()));
        Some(c)
    }

    fn placement_msg(&self, conf: &str, p: &Placement, reason: &str) -> pb::ConferencePlacement {
        pb::ConferencePlacement {
            conference: conf.into(),
            bridge_id: p.bridge.clone(),
            media_addr: self
                .fleet
                .get(&p.bridge)
                .map(|b| b.media_addr.clone())
                .unwrap_or_default(),
            participants: p.participants.keys().cloned().collect(),
            reason: reason.into(),
        }
    }

    fn snapshot(&self) -> Snapshot {
        Snapshot {
            routes: self.router.routes().clone(),
            placements: self.placements.clone(),
        }
    }
}

impl Control {
    /// A control plane with state restored from `store`.
    pub fn new(cfg: Config, store: Box<dyn Store>) -> anyhow::Result<Arc<Self>> {
        let snap = store.load()?;
        let mut router = Router::new(cfg.route_ttl_ms);
        router.register_shard(Shard {
            id: cfg.shard_id.clone(),
            addr: cfg.shard_addr.clone(),
            healthy: true,
        });
        router.restore(snap.routes);
        let (events, _) = broadcast::channel(1024);
        let grace = now_ms() + cfg.report_interval_ms * cfg.missed_reports;
        Ok(Arc::new(Self {
            inner: Mutex::new(Inner {
                fleet: Fleet::new(
                    cfg.report_interval_ms,
                    cfg.missed_reports,
                    cfg.per_participant_pps,
                ),
                router,
                placements: snap.placements,
                clients: HashMap::new(),
                dirty: false,
                grace_until_ms: grace,
            }),
            events,
            store,
            strategy: Box::new(RegionThenLeastStress),
            cfg,
            placements_total: AtomicU64::new(0),
            failovers_total: AtomicU64::new(0),
        }))
    }

    /// Writes the state to the store if it changed (serialized outside the lock).
    pub async fn flush(&self) {
        let snap = {
            let mut inner = self.inner.lock().await;
            if !inner.dirty {
                return;
            }
            inner.dirty = false;
            inner.snapshot()
        };
        if let Err(e) = self.store.save(&snap) {
            tracing::error!("saving state: {e}");
            self.inner.lock().await.dirty = true;
        }
    }

    /// Every half report interval: mark silent bridges down, move conferences off bridges that
    /// are down (or unknown after the restart grace), expire routes, flush the store.
    pub async fn monitor(self: Arc<Self>) {
        let tick = Duration::from_millis((self.cfg.report_interval_ms / 2).max(10));
        loop {
            tokio::time::sleep(tick).await;
            {
                let mut inner = self.inner.lock().await;
                let now = now_ms();
                for id in inner.fleet.check(now) {
                    tracing::warn!(bridge = %id, "bridge missed its reports: down");
                }
                let stranded: Vec<String> = inner
                    .placements
                    .iter()
                    .filter(|(_, p)| match inner.fleet.get(&p.bridge) {
                        Some(b) => b.health == Health::Down,
                        None => now > inner.grace_until_ms,
                    })
                    .map(|(c, _)| c.clone())
                    .collect();
                for conf in stranded {
                    self.migrate(&mut inner, &conf).await;
                }
                if inner.router.expire(now) > 0 {
                    inner.dirty = true;
                }
            }
            self.flush().await;
        }
    }

    /// Places `conf` on a bridge again and programs every participant there.
    async fn migrate(&self, inner: &mut Inner, conf: &str) {
        let Some(p) = inner.placements.get(conf).cloned() else {
            return;
        };
        let old = p.bridge.clone();
        let region = p
            .participants
            .values()
            .next()
            .map(|x| x.region.clone())
            .unwrap_or_default();
        let exclude: Vec<&str> = match inner.fleet.get(&old) {
            Some(b) if b.health == Health::Up => vec![],
            _ => vec![old.as_str()],
        };
        let id = match inner
            .fleet
            .select(self.strategy.as_ref(), &region, &exclude)
        {
            Ok(id) => id,
            Err(e) => {
                tracing::warn!(conference = conf, "cannot move off {old}: {e}");
                return;
            }
        };
        let Some(mut client) = inner.client(&id) else {
            return;
        };
        let _ = client
            .create_conference(pb::CreateConferenceRequest {
                conference_id: conf.into(),
            })
            .await;
        for (pid, part) in &p.participants {
            let r = client
                .add_endpoint(pb::AddEndpointRequest {
                    conference_id: conf.into(),
                    endpoint_id: pid.clone(),
                    ssrcs: part.ssrcs.clone(),
                    remote_addr: part.remote_addr.clone(),
                    srtp: None,
                })
                .await;
            match r {
                Ok(_) => inner.fleet.placed(&id),
                Err(e) if e.code() == Code::AlreadyExists => {}
                Err(e) => {
                    tracing::warn!(conference = conf, participant = %pid, "reprogramming on {id}: {}", e.message())
                }
            }
        }
        let placement = inner.placements.get_mut(conf).expect("present");
        placement.bridge = id.clone();
        let msg = inner.placement_msg(conf, &inner.placements[conf], "failover");
        inner.dirty = true;
        self.failovers_total.fetch_add(1, Relaxed);
        tracing::info!(conference = conf, from = %old, to = %id, "conference moved");
        let _ = self.events.send(msg);
    }

    /// Prometheus metrics of the control plane.
    pub async fn metrics(&self) -> String {
        use ringbridge_dataplane::metrics::metric;
        let inner = self.inner.lock().await;
        let mut s = String::new();
        let participants: usize = inner
            .placements
            .values()
            .map(|p| p.participants.len())
            .sum();
        metric(
            &mut s,
            "ringbridge_control_conferences",
            "gauge",
            "Placed conferences.",
            &[("", inner.placements.len() as f64)],
        );
        metric(
            &mut s,
            "ringbridge_control_participants",
            "gauge",
            "Placed participants.",
            &[("", participants as f64)],
        );
        metric(
            &mut s,
            "ringbridge_control_placements_total",
            "counter",
            "Participants placed.",
            &[("", self.placements_total.load(Relaxed) as f64)],
        );
        metric(
            &mut s,
            "ringbridge_control_failovers_total",
            "counter",
            "Conferences moved off failed bridges.",
            &[("", self.failovers_total.load(Relaxed) as f64)],
        );
        let state = |b: &Bridge| match (b.health, b.draining) {
            (Health::Down, _) => "down",
            (_, true) => "draining",
            _ => "up",
        };
        let states: Vec<(String, f64)> = ["up", "down", "draining"]
            .iter()
            .map(|st| {
                (
                    format!("state=\"{st}\""),
                    inner.fleet.iter().filter(|b| state(b) == *st).count() as f64,
                )
            })
            .collect();
        let states: Vec<(&str, f64)> = states.iter().map(|(l, v)| (l.as_str(), *v)).collect();
        metric(
            &mut s,
            "ringbridge_control_bridges",
            "gauge",
            "Bridges by state.",
            &states,
        );
        let stress: Vec<(String, f64)> = inner
            .fleet
            .iter()
            .map(|b| (format!("bridge=\"{}\"", b.id), b.stress))
            .collect();
        let stress: Vec<(&str, f64)> = stress.iter().map(|(l, v)| (l.as_str(), *v)).collect();
        metric(
            &mut s,
            "ringbridge_control_bridge_stress",
            "gauge",
            "Last reported stress per bridge.",
            &stress,
        );
        s
    }
}

/// The Focus service.
pub struct FocusService(pub Arc<Control>);

#[tonic::async_trait]
impl Focus for FocusService {
    async fn join(
        &self,
        req: Request<pb::JoinRequest>,
    ) -> Result<Response<pb::JoinResponse>, Status> {
        let r = req.into_inner();
        need("conference", &r.conference)?;
        need("participant_id", &r.participant_id)?;
        let c = &self.0;
        let mut inner = c.inner.lock().await;
        let existing = inner.placements.get(&r.conference).map(|p| {
            (
                p.bridge.clone(),
                p.participants.contains_key(&r.participant_id),
            )
        });
        let (bridge, created) = match existing {
            Some((_, true)) => {
                return Err(Status::already_exists(format!(
                    "participant_id: {:?} is already in conference {:?}",
                    r.participant_id, r.conference
                )));
            }
            Some((b, false)) => match inner.fleet.get(&b) {
                Some(x) if x.health == Health::Up => {
                    inner.fleet.placed(&b);
                    (b, false)
                }
                _ => {
                    return Err(Status::unavailable(format!(
                        "conference {:?} is being moved off bridge {b}, which is down; retry shortly",
                        r.conference
                    )));
                }
            },
            None => {
                let id = inner
                    .fleet
                    .select(c.strategy.as_ref(), &r.region, &[])
                    .map_err(|e| Status::unavailable(format!("no bridge available: {e}")))?;
                (id, true)
            }
        };
        let mut client = inner.client(&bridge).ok_or_else(|| {
            Status::internal(format!("bridge {bridge} has no usable API address"))
        })?;
        if created {
            match client
                .create_conference(pb::CreateConferenceRequest {
                    conference_id: r.conference.clone(),
                })
                .await
            {
                Ok(_) => {}
                Err(e) if e.code() == Code::AlreadyExists => {}
                Err(e) => return Err(status_from_bridge(&bridge, e)),
            }
        }
        let added = client
            .add_endpoint(pb::AddEndpointRequest {
                conference_id: r.conference.clone(),
                endpoint_id: r.participant_id.clone(),
                ssrcs: r.ssrcs.clone(),
                remote_addr: r.remote_addr.clone(),
                srtp: None,
            })
            .await;
        let media_addr = match added {
            Ok(a) => a.into_inner().media_addr,
            Err(e) => {
                if created {
                    // Nothing half-applied: the conference we just created goes again.
                    let _ = client
                        .delete_conference(pb::DeleteConferenceRequest {
                            conference_id: r.conference.clone(),
                        })
                        .await;
                }
                return Err(status_from_bridge(&bridge, e));
            }
        };
        let p = inner
            .placements
            .entry(r.conference.clone())
            .or_insert_with(|| Placement {
                bridge: bridge.clone(),
                participants: BTreeMap::new(),
            });
        p.participants.insert(
            r.participant_id,
            Participant {
                region: r.region,
                ssrcs: r.ssrcs,
                remote_addr: r.remote_addr,
            },
        );
        inner.dirty = true;
        c.placements_total.fetch_add(1, Relaxed);
        if created {
            let msg =
                inner.placement_msg(&r.conference, &inner.placements[&r.conference], "placed");
            let _ = c.events.send(msg);
        }
        Ok(Response::new(pb::JoinResponse {
            bridge_id: bridge,
            media_addr,
        }))
    }

    async fn leave(
        &self,
        req: Request<pb::LeaveRequest>,
    ) -> Result<Response<pb::LeaveResponse>, Status> {
        let r = req.into_inner();
        need("conference", &r.conference)?;
        need("participant_id", &r.participant_id)?;
        let c = &self.0;
        let mut inner = c.inner.lock().await;
        let p = inner.placements.get(&r.conference).ok_or_else(|| {
            Status::not_found(format!("conference: {:?} not found", r.conference))
        })?;
        if !p.participants.contains_key(&r.participant_id) {
            return Err(Status::not_found(format!(
                "participant_id: {:?} is not in conference {:?}",
                r.participant_id, r.conference
            )));
        }
        let bridge = p.bridge.clone();
        let last = p.participants.len() == 1;
        if let Some(mut client) = inner.client(&bridge) {
            let res = if last {
                client
                    .delete_conference(pb::DeleteConferenceRequest {
                        conference_id: r.conference.clone(),
                    })
                    .await
                    .map(|_| ())
            } else {
                client
                    .remove_endpoint(pb::RemoveEndpointRequest {
                        conference_id: r.conference.clone(),
                        endpoint_id: r.participant_id.clone(),
                    })
                    .await
                    .map(|_| ())
            };
            if let Err(e) = res
                && e.code() != Code::NotFound
            {
                return Err(status_from_bridge(&bridge, e));
            }
        }
        if last {
            let p = inner.placements.remove(&r.conference).expect("present");
            let msg = inner.placement_msg(&r.conference, &p, "ended");
            let _ = c.events.send(msg);
        } else if let Some(p) = inner.placements.get_mut(&r.conference) {
            p.participants.remove(&r.participant_id);
        }
        inner.dirty = true;
        Ok(Response::new(pb::LeaveResponse {}))
    }

    async fn get_conference(
        &self,
        req: Request<pb::GetConferenceRequest>,
    ) -> Result<Response<pb::ConferencePlacement>, Status> {
        let conf = req.into_inner().conference;
        need("conference", &conf)?;
        let inner = self.0.inner.lock().await;
        let p = inner
            .placements
            .get(&conf)
            .ok_or_else(|| Status::not_found(format!("conference: {conf:?} not found")))?;
        Ok(Response::new(inner.placement_msg(&conf, p, "current")))
    }

    async fn list_placements(
        &self,
        _req: Request<pb::ListPlacementsRequest>,
    ) -> Result<Response<pb::ListPlacementsResponse>, Status> {
        let inner = self.0.inner.lock().await;
        let conferences = inner
            .placements
            .iter()
            .map(|(c, p)| inner.placement_msg(c, p, "current"))
            .collect();
        Ok(Response::new(pb::ListPlacementsResponse { conferences }))
    }

    type WatchConferenceStream = ReceiverStream<Result<pb::ConferencePlacement, Status>>;

    async fn watch_conference(
        &self,
        req: Request<pb::WatchConferenceRequest>,
    ) -> Result<Response<Self::WatchConferenceStream>, Status> {
        let conf = req.into_inner().conference;
        need("conference", &conf)?;
        let mut events = self.0.events.subscribe();
        let current = {
            let inner = self.0.inner.lock().await;
            inner
                .placements
                .get(&conf)
                .map(|p| inner.placement_msg(&conf, p, "current"))
        };
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(async move {
            if let Some(c) = current
                && tx.send(Ok(c)).await.is_err()
            {
                return;
            }
            loop {
                match events.recv().await {
                    Ok(e) if e.conference == conf => {
                        if tx.send(Ok(e)).await.is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
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
        let conf = req.into_inner().conference;
        need("conference", &conf)?;
        let mut inner = self.0.inner.lock().await;
        let s = inner
            .router
            .route(&conf, now_ms())
            .map_err(|e| Status::unavailable(e.to_string()))?;
        inner.dirty = true;
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
        let mut inner = self.0.inner.lock().await;
        inner.router.register_shard(Shard {
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
        let inner = self.0.inner.lock().await;
        let shards = inner
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

#[tonic::async_trait]
impl Registry for RegistryService {
    async fn register_bridge(
        &self,
        req: Request<pb::RegisterBridgeRequest>,
    ) -> Result<Response<pb::RegisterBridgeResponse>, Status> {
        let r = req.into_inner();
        need("bridge_id", &r.bridge_id)?;
        need("api_addr", &r.api_addr)?;
        need("media_addr", &r.media_addr)?;
        if r.capacity_pps.is_nan() || r.capacity_pps <= 0.0 {
            return Err(Status::invalid_argument("capacity_pps: must be positive"));
        }
        let c = &self.0;
        let mut inner = c.inner.lock().await;
        let known = inner.fleet.register(
            Bridge {
                id: r.bridge_id.clone(),
                api_addr: r.api_addr,
                media_addr: r.media_addr,
                region: r.region,
                capacity: r.capacity_pps,
                stress: 0.0,
                draining: false,
                shutting_down: false,
                health: Health::Up,
                last_report_ms: 0,
                placed_since_report: 0,
            },
            now_ms(),
        );
        tracing::info!(bridge = %r.bridge_id, known, "bridge registered");
        if known {
            // A bridge that comes back starts empty: program its conferences again.
            let stale: Vec<String> = inner
                .placements
                .iter()
                .filter(|(_, p)| p.bridge == r.bridge_id)
                .map(|(c, _)| c.clone())
                .collect();
            for conf in stale {
                c.migrate(&mut inner, &conf).await;
            }
        }
        Ok(Response::new(pb::RegisterBridgeResponse {
            report_interval_ms: c.cfg.report_interval_ms,
        }))
    }

    async fn report_load(
        &self,
        req: Request<pb::LoadReport>,
    ) -> Result<Response<pb::LoadReportResponse>, Status> {
        let r = req.into_inner();
        let mut inner = self.0.inner.lock().await;
        if !inner
            .fleet
            .report(&r.bridge_id, r.stress, r.draining, now_ms())
        {
            return Err(Status::not_found(format!(
                "bridge_id: {:?} is not registered; register again",
                r.bridge_id
            )));
        }
        Ok(Response::new(pb::LoadReportResponse {}))
    }

    async fn list_bridges(
        &self,
        _req: Request<pb::ListBridgesRequest>,
    ) -> Result<Response<pb::ListBridgesResponse>, Status> {
        let inner = self.0.inner.lock().await;
        let bridges = inner
            .fleet
            .iter()
            .map(|b| pb::BridgeInfo {
                bridge_id: b.id.clone(),
                region: b.region.clone(),
                api_addr: b.api_addr.clone(),
                media_addr: b.media_addr.clone(),
                state: match (b.health, b.draining) {
                    (Health::Down, _) => "down",
                    (_, true) => "draining",
                    _ => "up",
                }
                .into(),
                stress: b.stress,
                conferences: inner
                    .placements
                    .values()
                    .filter(|p| p.bridge == b.id)
                    .count() as u32,
            })
            .collect();
        Ok(Response::new(pb::ListBridgesResponse { bridges }))
    }
}
