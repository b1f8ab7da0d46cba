//! The control plane at run time: the sans-IO [`Focus`] and [`Router`] behind one mutex that is
//! held only to plan and to commit (never across a bridge call), the [`Executor`] that runs
//! plans, the monitor (periodic focus tick, route expiry and a health probe of every bridge with
//! a deadline), and the flusher that appends committed changes to the [`Store`].

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ringbridge_proto::v1 as pb;
use tokio::sync::{Notify, broadcast};
use tonic::Status;

use crate::actuator::Actuator;
use crate::core::autoscaler::{HpaConfig, Scaler};
use crate::core::fleet::Health;
use crate::core::focus::{
    Announcement, CallError, Completion, Focus, FocusConfig, FocusError, Plan,
};
use crate::core::router::{Router, Shard};
use crate::run::executor::Executor;
use crate::run::watches::Watches;
use crate::store::cluster::Cluster;
use crate::store::{Change, Store};

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
    /// Deadline of every call to a bridge, ms.
    pub bridge_timeout_ms: u64,
    /// Interval between health probes of each bridge, ms.
    pub probe_interval_ms: u64,
    /// Deadline of a health probe, ms.
    pub probe_timeout_ms: u64,
    /// Failed probes in a row before a bridge is down.
    pub probe_failures: u32,
    /// Interval at which committed changes are appended to the store, ms (a crash loses at
    /// most this much).
    pub flush_interval_ms: u64,
    /// Participants of one conference per bridge before the conference grows onto another.
    pub max_per_bridge: usize,
    /// Edges one bridge feeds per broadcast.
    pub stream_fanout: usize,
    /// Viewers of one broadcast per edge before the next goes to another edge.
    pub max_viewers_per_edge: usize,
    /// Stress at which a bridge takes no new participants.
    pub stress_threshold: f64,
    /// How long a draining bridge keeps its participants before they are moved, ms.
    pub drain_grace_ms: u64,
    /// How long a drained bridge keeps a moved conference's old copy, ms.
    pub drain_linger_ms: u64,
    /// The autoscaler's settings; `None`: the fleet is whatever registers.
    pub autoscale: Option<HpaConfig>,
    /// Interval between autoscaler evaluations, ms.
    pub autoscale_interval_ms: u64,
    /// Open WatchConference streams one client (IP address) may hold.
    pub max_watches_per_client: usize,
}

/// Times a reconciliation lists a bridge again while some of its conferences were busy.
const RECONCILE_ROUNDS: usize = 20;

/// Wall-clock milliseconds (routes persist their last use across restarts).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The sans-IO state: everything decisions are made from.
#[derive(Debug)]
pub struct Core {
    /// Placements and fleet.
    pub focus: Focus,
    /// Conference -> shard routes.
    pub router: Router,
    /// The autoscaler, when enabled.
    pub scaler: Option<Scaler>,
}

/// The control plane shared by the gRPC services, the monitor and the flusher.
pub struct Control {
    pub(super) core: Mutex<Core>,
    pub(super) executor: Executor,
    pub(super) events: broadcast::Sender<pb::ConferencePlacement>,
    /// Signalled whenever an operation completes (waiters on a busy conference retry).
    pub(super) idle: Notify,
    pub(super) store: Arc<dyn Store>,
    /// The last store failure, while writes fail.
    pub(super) store_error: Mutex<Option<String>>,
    pub(super) health: tonic_health::server::HealthReporter,
    /// Settings.
    pub cfg: Config,
    /// Participants placed since start.
    pub placements_total: AtomicU64,
    /// The autoscaler's actuator, once it runs.
    pub(super) actuator: OnceLock<Arc<dyn Actuator>>,
    /// Instances sharing etcd, when the store is etcd.
    pub(super) cluster: OnceLock<Arc<Cluster>>,
    /// Scaling decisions that added bridges, and that drained one.
    pub scale_ups: AtomicU64,
    /// Scaling decisions that drained bridges.
    pub scale_downs: AtomicU64,
    /// One store write at a time (the flusher's and those of callers waiting for durability).
    pub(super) flush_lock: tokio::sync::Mutex<()>,
    /// The first this-many recorded changes are in the store (see [`Focus::recorded`]), of
    /// the focus of this [`Control::epoch`].
    pub(super) durable: AtomicU64,
    /// Takeovers so far: each replaces the focus with the store's placements, dropping what
    /// the previous one had not made durable.
    pub(super) epoch: AtomicU64,
    /// Open WatchConference streams.
    pub watches: Arc<Watches>,
}

/// The gRPC status for a focus error.
pub fn status(e: FocusError) -> Status {
    let msg = e.to_string();
    match e {
        FocusError::Invalid { .. } => Status::invalid_argument(msg),
        FocusError::Exists(_) => Status::already_exists(msg),
        FocusError::NotFound(_) => Status::not_found(msg),
        FocusError::Busy(_) | FocusError::NoBridge(_) | FocusError::BridgeUnavailable { .. } => {
            Status::unavailable(msg)
        }
        FocusError::Bridge { error, .. } => match error {
            CallError::Invalid(_) => Status::invalid_argument(msg),
            CallError::Exists(_) => Status::already_exists(msg),
            CallError::NotFound(_) => Status::not_found(msg),
            CallError::Full(_) => Status::resource_exhausted(msg),
            CallError::Unavailable(_) | CallError::Timeout { .. } => Status::unavailable(msg),
        },
    }
}

/// The API form of an announcement.
pub fn placement_msg(a: Announcement) -> pb::ConferencePlacement {
    let kind = if a.stream.is_some() {
        "broadcast"
    } else {
        "conference"
    };
    pb::ConferencePlacement {
        kind: kind.into(),
        participant_count: a.participant_count as u32,
        stream: a.stream.map(|s| pb::StreamTree {
            deepest_tier: s.pulls.iter().map(|p| p.2 as u32).max().unwrap_or(0),
            origin: s.origin,
            publisher: s.publisher,
            pulls: s
                .pulls
                .into_iter()
                .map(|(edge, from, tier, viewers)| pb::StreamPull {
                    edge,
                    from,
                    tier: tier as u32,
                    viewers: viewers as u32,
                })
                .collect(),
        }),
        conference: a.conference,
        bridge_id: a.bridge,
        media_addr: a.media_addr,
        participants: a.participants,
        reason: a.reason.into(),
        dominant_speaker: a.dominant_speaker,
        recent_speakers: a.recent_speakers,
        bridges: a
            .bridges
            .into_iter()
            .map(
                |(bridge_id, media_addr, participants, n)| pb::BridgePlacement {
                    bridge_id,
                    media_addr,
                    participants,
                    participant_count: n as u32,
                },
            )
            .collect(),
    }
}

/// A focus with `cfg`'s settings over `snap`.
pub(super) fn focus_from(cfg: &Config, snap: crate::store::Snapshot) -> Focus {
    Focus::new(
        &FocusConfig {
            report_interval_ms: cfg.report_interval_ms,
            missed_reports: cfg.missed_reports,
            probe_failures_down: cfg.probe_failures,
            per_participant_pps: cfg.per_participant_pps,
            max_per_bridge: cfg.max_per_bridge,
            stream_fanout: cfg.stream_fanout,
            max_viewers_per_edge: cfg.max_viewers_per_edge,
            stress_threshold: cfg.stress_threshold,
            drain_grace_ms: cfg.drain_grace_ms,
            drain_linger_ms: cfg.drain_linger_ms,
        },
        snap,
        Box::new(|buf: &mut [u8]| {
            aws_lc_rs::rand::fill(buf).expect("system randomness for SRTP keys")
        }),
        now_ms(),
    )
}

impl Control {
    /// A control plane with state restored from `store`; `health` is the server's health
    /// reporter (the Focus goes NOT_SERVING while the store cannot be written).
    pub fn new(
        cfg: Config,
        store: Arc<dyn Store>,
        health: tonic_health::server::HealthReporter,
    ) -> anyhow::Result<Arc<Self>> {
        let mut snap = store.load()?;
        let mut router = Router::new(cfg.route_ttl_ms);
        router.register_shard(Shard {
            id: cfg.shard_id.clone(),
            addr: cfg.shard_addr.clone(),
            healthy: true,
        });
        router.restore(std::mem::take(&mut snap.routes));
        let focus = focus_from(&cfg, snap);
        let (events, _) = broadcast::channel(4096);
        Ok(Arc::new(Self {
            core: Mutex::new(Core {
                focus,
                router,
                scaler: cfg.autoscale.clone().map(Scaler::new),
            }),
            executor: Executor::new(Duration::from_millis(cfg.bridge_timeout_ms)),
            events,
            idle: Notify::new(),
            store,
            store_error: Mutex::new(None),
            health,
            cfg,
            placements_total: AtomicU64::new(0),
            actuator: OnceLock::new(),
            cluster: OnceLock::new(),
            scale_ups: AtomicU64::new(0),
            scale_downs: AtomicU64::new(0),
            flush_lock: tokio::sync::Mutex::new(()),
            durable: AtomicU64::new(0),
            epoch: AtomicU64::new(0),
            watches: Arc::default(),
        }))
    }

    /// The core, locked (briefly: never across an await).
    pub fn lock(&self) -> MutexGuard<'_, Core> {
        self.core.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Placement changes as they are committed.
    pub fn subscribe(&self) -> broadcast::Receiver<pb::ConferencePlacement> {
        self.events.subscribe()
    }

    /// Sends the focus's pending announcements to watchers.
    pub(super) fn announce(&self, core: &mut Core) {
        for a in core.focus.take_announcements() {
            let _ = self.events.send(placement_msg(a));
        }
    }

    /// `UNAVAILABLE` while the store cannot be written: nothing is acknowledged that could be
    /// lost.
    pub fn check_store(&self) -> Result<(), Status> {
        if let Some(c) = self.cluster.get()
            && c.etcd_unreachable()
        {
            return Err(Status::unavailable(
                "etcd is unreachable (the last lease renewal failed); refusing changes until it answers",
            ));
        }
        match &*self.store_error.lock().unwrap_or_else(|e| e.into_inner()) {
            None => Ok(()),
            Some(e) => Err(Status::unavailable(format!(
                "the state store cannot be written ({e}); refusing changes until it can"
            ))),
        }
    }

    /// Starts an operation on `conference`, waiting (bounded) while another one on it is in
    /// flight.
    pub async fn submit(
        &self,
        conference: &str,
        mut start: impl FnMut(&mut Focus, u64) -> Result<Plan, FocusError>,
    ) -> Result<Plan, Status> {
        let until = Instant::now() + self.executor.deadline() * 2 + Duration::from_millis(500);
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let r = start(&mut self.lock().focus, now_ms());
            match r {
                Ok(plan) => return Ok(plan),
                Err(FocusError::Busy(_)) => {
                    if tokio::time::timeout_at(until.into(), notified)
                        .await
                        .is_err()
                    {
                        return Err(Status::unavailable(format!(
                            "conference {conference:?}: an operation on it is still in flight; retry"
                        )));
                    }
                }
                Err(e) => return Err(status(e)),
            }
        }
    }

    /// Runs a plan (no lock held during the calls), commits it, announces, and starts any
    /// cleanup in the background.
    pub async fn run(self: &Arc<Self>, plan: Plan) -> Completion {
        let results = self.executor.run(&plan).await;
        if tracing::enabled!(tracing::Level::DEBUG) {
            let calls: Vec<String> = plan
                .calls
                .iter()
                .zip(results.iter().map(Some).chain(std::iter::repeat(None)))
                .map(|(c, r)| match r {
                    Some(Ok(_)) => format!("{c}"),
                    Some(Err(e)) => format!("{c} FAILED: {e}"),
                    None => format!("{c} (not made)"),
                })
                .collect();
            tracing::debug!(op = plan.op, ?calls, "plan done");
        }
        let (c, stranded) = {
            let mut core = self.lock();
            let c = core.focus.complete(plan.op, &plan.calls, &results);
            self.announce(&mut core);
            (c, core.focus.take_stranded())
        };
        self.idle.notify_waiters();
        if let Some(cleanup) = c.cleanup.clone() {
            self.spawn(vec![cleanup]);
        }
        self.end_stranded(stranded);
        c
    }

    /// Makes WebRTC participants whose session cannot follow them leave, in the background (see
    /// [`Focus::take_stranded`]): their sessions end (a DELETE then gets 404) and their clients
    /// start new ones.
    pub fn end_stranded(self: &Arc<Self>, stranded: Vec<(String, String)>) {
        if stranded.is_empty() {
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            for (conference, participant) in stranded {
                tracing::info!(%conference, %participant, "WebRTC session ended: its bridge changed (the client must start a new one)");
                match me
                    .submit(&conference, |f, _| f.leave(&conference, &participant))
                    .await
                {
                    Ok(plan) => {
                        if let Err(e) = me.run(plan).await.result {
                            tracing::warn!(%conference, %participant, "ending a stranded WebRTC session: {e}");
                        }
                    }
                    Err(e) => {
                        tracing::debug!(%conference, %participant, "stranded session already gone: {}", e.message())
                    }
                }
            }
        });
    }

    /// Runs plans in the background.
    pub fn spawn(self: &Arc<Self>, plans: Vec<Plan>) {
        for p in plans {
            let me = self.clone();
            tokio::spawn(async move {
                if let Err(e) = me.run(p).await.result {
                    tracing::debug!("background operation failed: {e}");
                }
            });
        }
    }

    /// Appends committed changes to the store. On failure the changes are kept for the next
    /// attempt, the Focus reports NOT_SERVING and changes are refused until a write succeeds.
    pub async fn flush(&self) -> Result<(), String> {
        let _one = self.flush_lock.lock().await;
        self.flush_locked().await
    }

    /// [`Control::flush`] with the flush lock held.
    async fn flush_locked(&self) -> Result<(), String> {
        let (changes, upto) = {
            let mut core = self.lock();
            let routes = core.router.expire(now_ms());
            for conference in routes {
                core.focus.record(Change::Unrouted { conference });
            }
            let upto = core.focus.recorded();
            (core.focus.take_changes(), upto)
        };
        if changes.is_empty() && self.check_store().is_ok() {
            self.durable.fetch_max(upto, Relaxed);
            return Ok(());
        }
        let store = self.store.clone();
        let (changes, r) = tokio::task::spawn_blocking(move || {
            let r = store.append(&changes);
            (changes, r)
        })
        .await
        .map_err(|e| format!("store task: {e}"))?;
        let mut err = self.store_error.lock().unwrap_or_else(|e| e.into_inner());
        match r {
            Ok(()) => {
                self.durable.fetch_max(upto, Relaxed);
                if err.take().is_some() {
                    tracing::info!("state store writable again");
                    self.set_serving(true);
                }
                Ok(())
            }
            Err(e) => {
                let msg = e.to_string();
                let fenced = matches!(e, crate::store::StoreError::Fenced(_));
                if err.is_none() && !fenced {
                    tracing::error!("state store: {msg}: refusing changes until it can be written");
                    self.set_serving(false);
                }
                if !fenced {
                    *err = Some(msg.clone());
                }
                drop(err);
                self.lock().focus.restore_changes(changes);
                Err(msg)
            }
        }
    }

    /// Waits until every change committed so far is in the store: a Join or Leave is
    /// acknowledged only once it would survive a crash. Group commit: one write at a time
    /// carries every change committed before it started, so concurrent callers share writes
    /// and nobody waits for a timer. `UNAVAILABLE` if the store cannot be written within the
    /// bridge deadline (the change stays committed and is written by a later flush).
    /// A takeover in between (the instance stood by and was elected again) dropped the change
    /// with the focus it was made in: `UNAVAILABLE`, the caller retries.
    pub async fn durable(&self) -> Result<(), Status> {
        let (upto, epoch) = {
            let core = self.lock();
            (core.focus.recorded(), self.epoch.load(Relaxed))
        };
        let until = Instant::now() + self.executor.deadline().max(Duration::from_secs(2));
        let lost = || {
            Status::unavailable(
                "not durable: this instance lost the election before the store had the change \
                 (the active focus may not have it); retry",
            )
        };
        loop {
            if self.epoch.load(Relaxed) != epoch {
                return Err(lost());
            }
            if self.durable.load(Relaxed) >= upto {
                return Ok(());
            }
            let one = match tokio::time::timeout_at(until.into(), self.flush_lock.lock()).await {
                Ok(g) => g,
                Err(_) => break,
            };
            if self.epoch.load(Relaxed) != epoch {
                return Err(lost());
            }
            if self.durable.load(Relaxed) >= upto {
                return Ok(());
            }
            let r = self.flush_locked().await;
            drop(one);
            if let Err(e) = r {
                if Instant::now() >= until {
                    return Err(Status::unavailable(format!(
                        "done on the bridge but not yet durable: the state store cannot be written ({e}); it is retried"
                    )));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Err(Status::unavailable(
            "done on the bridge but not yet durable: the state store did not answer in time; it is retried",
        ))
    }

    /// Sets the Focus service's health (by its gRPC name: the service layer does not depend on
    /// the adapters that serve it).
    fn set_serving(&self, ok: bool) {
        use ringbridge_proto::v1::focus_server::SERVICE_NAME;
        use tonic_health::ServingStatus;
        let h = self.health.clone();
        let status = if ok {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        tokio::spawn(async move { h.set_service_status(SERVICE_NAME, status).await });
    }

    /// Appends changes every flush interval until the task is dropped.
    pub async fn flusher(self: Arc<Self>) {
        let every = Duration::from_millis(self.cfg.flush_interval_ms.max(10));
        loop {
            tokio::time::sleep(every).await;
            let _ = self.flush().await;
        }
    }

    /// Ticks the focus (bridges that missed reports go down, conferences on down bridges move)
    /// and probes every bridge's health with a deadline, until the task is dropped.
    pub async fn monitor(self: Arc<Self>) {
        let every = Duration::from_millis(self.cfg.probe_interval_ms.max(10));
        let probing = Arc::new(Mutex::new(std::collections::HashSet::<String>::new()));
        loop {
            tokio::time::sleep(every).await;
            if !self.is_active() {
                continue; // a standby neither fails bridges over nor probes them
            }
            let (plans, targets, down) = {
                let mut core = self.lock();
                let plans = core.focus.tick(now_ms());
                let down = core.focus.take_downed();
                let targets: Vec<(String, String)> = core
                    .focus
                    .fleet()
                    .iter()
                    .filter(|b| b.health != Health::Down)
                    .map(|b| (b.id.clone(), b.api_addr.clone()))
                    .collect();
                (plans, targets, down)
            };
            for id in down {
                self.executor.abort(&id);
            }
            self.spawn(plans);
            for (id, api) in targets {
                if !probing
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(id.clone())
                {
                    continue; // the last probe of this bridge is still waiting
                }
                let me = self.clone();
                let probing = probing.clone();
                tokio::spawn(async move {
                    let r = me.probe(&id, &api).await;
                    let changed = me.lock().focus.probe(&id, r.clone());
                    match changed {
                        Some(Health::Down) => {
                            tracing::warn!(bridge = %id, "bridge down: {}", r.unwrap_err());
                            // Move its conferences now rather than at the next tick.
                            let (plans, down) = {
                                let mut core = me.lock();
                                let plans = core.focus.tick(now_ms());
                                (plans, core.focus.take_downed())
                            };
                            for d in down {
                                me.executor.abort(&d);
                            }
                            me.spawn(plans);
                        }
                        Some(h) => tracing::info!(bridge = %id, "bridge {}", h.name()),
                        None => {}
                    }
                    probing
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&id);
                });
            }
        }
    }

    /// One `grpc.health.v1` check of a bridge within the probe deadline.
    async fn probe(&self, id: &str, api: &str) -> Result<(), String> {
        use tonic_health::pb::HealthCheckRequest;
        use tonic_health::pb::health_check_response::ServingStatus;
        use tonic_health::pb::health_client::HealthClient;
        let deadline = Duration::from_millis(self.cfg.probe_timeout_ms);
        let ch = self.executor.channel(id, api).map_err(|e| e.to_string())?;
        let mut client = HealthClient::new(ch);
        let mut req = tonic::Request::new(HealthCheckRequest {
            service: String::new(),
        });
        req.set_timeout(deadline);
        match tokio::time::timeout(deadline, client.check(req)).await {
            Err(_) => Err(format!("no answer within {} ms", deadline.as_millis())),
            Ok(Err(s)) => Err(format!("{:?}: {}", s.code(), s.message())),
            Ok(Ok(r)) if r.get_ref().status == ServingStatus::Serving as i32 => Ok(()),
            Ok(Ok(r)) => Err(format!("not serving (status {})", r.get_ref().status)),
        }
    }

    /// Lists what a (re)registered bridge holds and removes what no placement owns.
    pub fn reconcile(self: &Arc<Self>, bridge: String, api_addr: String) {
        let me = self.clone();
        tokio::spawn(async move {
            // Conferences busy with an operation are left alone and listed again a little
            // later (bounded): an orphan in a busy conference would otherwise stay and block
            // a retried join of its id.
            for _ in 0..RECONCILE_ROUNDS {
                match me.executor.list(&bridge, &api_addr).await {
                    Ok(listing) => {
                        let (plans, skipped) = me.lock().focus.reconcile_skipping(&bridge, listing);
                        me.spawn(plans);
                        if !skipped {
                            return;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(%bridge, "cannot list its conferences to reconcile: {e}");
                        return;
                    }
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
                if !me.is_active() {
                    return;
                }
            }
        });
    }

    /// Participants placed, for metrics.
    pub fn placed(&self) -> u64 {
        self.placements_total.load(Relaxed)
    }
}
