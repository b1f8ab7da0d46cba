//! Several control instances on etcd (`--store etcd://...`): the shard registry (each instance
//! under a lease it keeps alive), shared sticky routes (created in a transaction, so two routers
//! racing on a conference's first join agree), and the election of one active focus per shard
//! (the others stand by and take over when the leader's lease expires).
//!
//! Keys under `/ringbridge/`: `members/SHARD/ADDR` -> ADDR (leased), `routes/CONFERENCE` ->
//! the route as JSON, `elections/SHARD` -> the etcd election of the shard's active focus,
//! `shards/SHARD/events/CONFERENCE` -> its last placement announcement (protobuf), which a
//! WatchConference on a standby follows with an etcd watch; `shards/SHARD/bridges/ID` -> the
//! bridge's registration (placements are under `shards/SHARD/placements/`, see [`crate::store::etcd`]).

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, PutOptions, Txn, TxnOp, WatchOptions,
};
use prost::Message;
use ringbridge_proto::v1 as pb;

use crate::core::router::Route;
use crate::store::Fence;
use crate::store::etcd::ROOT;

/// Lease time to live, s: an instance that stops answering leaves the rotation, and its
/// standby takes over, within about this.
pub const LEASE_TTL_S: i64 = 3;

/// Interval between lease renewals (each with this as its deadline).
pub const RENEW_EVERY: Duration = Duration::from_millis(500);

/// Without a renewal for this long (counted from when the last good one was sent), etcd counts
/// as unreachable: changes are refused rather than half applied. With renewals every
/// [`RENEW_EVERY`], a stalled etcd is noticed 0.5-1 s after it stops answering.
pub const UNREACHABLE_AFTER: Duration = Duration::from_millis(1000);

/// Without a renewal for this long the active instance steps down: etcd may expire the lease
/// (and elect another instance) [`LEASE_TTL_S`] after it received the last renewal, which was
/// sent no earlier than we count from; a second is left for calls in flight to end.
pub const STEP_DOWN_AFTER: Duration = Duration::from_millis(LEASE_TTL_S as u64 * 1000 - 1000);

/// A bridge registration as kept in etcd.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct BridgeRecord {
    /// Bridge id.
    pub id: String,
    /// Bridge API address.
    pub api_addr: String,
    /// Media address.
    pub media_addr: String,
    /// Region.
    pub region: String,
    /// Capacity, packets/s.
    pub capacity: f64,
    /// The bridge process's instance id (empty from older versions).
    #[serde(default)]
    pub instance: String,
    /// The bridge process's DTLS fingerprint (empty from older versions, or a bridge that takes
    /// no WebRTC participants).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub dtls_fingerprint: String,
}

impl BridgeRecord {
    /// The bridge as the fleet knows it, newly registered.
    pub fn bridge(&self) -> crate::core::fleet::Bridge {
        crate::core::fleet::Bridge::new(
            &self.id,
            &self.api_addr,
            &self.media_addr,
            &self.region,
            self.capacity,
        )
        .with_instance(&self.instance)
        .with_fingerprint(&self.dtls_fingerprint)
    }
}

/// Aborts a task when dropped (the watchdog goes with its keep-alive loop).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Why a cluster call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// etcd did not answer or refused.
    #[error("etcd unavailable: {0}")]
    Etcd(String),
    /// No shard has a live instance.
    #[error("no shard has a live control instance")]
    NoShard,
    /// The lease the campaign ran with was lost (a new one is in place: campaign again).
    #[error("the lease was lost during the campaign")]
    LeaseLost,
}

fn etcd(e: impl std::fmt::Display) -> ClusterError {
    ClusterError::Etcd(e.to_string())
}

/// This instance's view of the cluster.
pub struct Cluster {
    client: Client,
    /// A client without a request deadline, for the campaign (it blocks until elected).
    elect: Client,
    /// A connection of its own for lease renewals and grants: a burst of this instance's own
    /// requests (a thousand routes at once) must not hold its renewals back past the step-down.
    leases: Client,
    /// This instance's shard.
    pub shard: String,
    /// This instance's address.
    pub addr: String,
    lease: Mutex<i64>,
    route_ttl_ms: u64,
    next: AtomicUsize,
    active: AtomicBool,
    /// The clock of [`Cluster::now_ms`].
    epoch: std::time::Instant,
    /// When the last good lease renewal (or grant) was sent, ms on that clock.
    last_ok: AtomicU64,
    /// Signalled when this instance stops being active (it stepped down) or its lease changed.
    lost: tokio::sync::Notify,
    /// Times the lease was replaced (a campaign with an older one is abandoned).
    lease_generation: AtomicUsize,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("shard", &self.shard)
            .field("addr", &self.addr)
            .finish()
    }
}

fn member_key(shard: &str, addr: &str) -> String {
    format!("{ROOT}members/{shard}/{addr}")
}

fn election(shard: &str) -> String {
    format!("{ROOT}elections/{shard}")
}

impl Cluster {
    /// Connects (to the members that answer, see [`crate::store::etcd::connect`]), takes a lease and
    /// registers this instance of `shard` at `addr`.
    pub async fn join(
        endpoints: &[String],
        shard: &str,
        addr: &str,
        timeout: Duration,
        route_ttl_ms: u64,
    ) -> Result<Self, ClusterError> {
        let opts = ConnectOptions::new()
            .with_connect_timeout(timeout)
            .with_timeout(timeout);
        let client = crate::store::etcd::connect(endpoints, opts)
            .await
            .map_err(ClusterError::Etcd)?;
        let elect = crate::store::etcd::connect(
            endpoints,
            ConnectOptions::new().with_connect_timeout(timeout),
        )
        .await
        .map_err(ClusterError::Etcd)?;
        let leases = crate::store::etcd::connect(
            endpoints,
            ConnectOptions::new()
                .with_connect_timeout(timeout)
                .with_timeout(timeout),
        )
        .await
        .map_err(ClusterError::Etcd)?;
        let me = Self {
            client,
            elect,
            leases,
            shard: shard.into(),
            addr: addr.into(),
            lease: Mutex::new(0),
            route_ttl_ms,
            next: AtomicUsize::new(0),
            active: AtomicBool::new(false),
            epoch: std::time::Instant::now(),
            last_ok: AtomicU64::new(0),
            lost: tokio::sync::Notify::new(),
            lease_generation: AtomicUsize::new(0),
        };
        me.register().await?;
        Ok(me)
    }

    /// Grants a fresh lease and puts the member key under it.
    async fn register(&self) -> Result<i64, ClusterError> {
        let sent = self.now_ms();
        let mut c = self.leases.clone();
        let lease = c.lease_grant(LEASE_TTL_S, None).await.map_err(etcd)?.id();
        c.put(
            member_key(&self.shard, &self.addr),
            self.addr.clone(),
            Some(PutOptions::new().with_lease(lease)),
        )
        .await
        .map_err(etcd)?;
        *self.lease.lock().unwrap_or_else(|e| e.into_inner()) = lease;
        self.lease_generation.fetch_add(1, Relaxed);
        self.last_ok.fetch_max(sent, Relaxed);
        Ok(lease)
    }

    /// The lease this instance's keys live under.
    pub fn lease(&self) -> i64 {
        *self.lease.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether no lease renewal succeeded for [`UNREACHABLE_AFTER`]: changes are refused
    /// meanwhile rather than half applied.
    pub fn etcd_unreachable(&self) -> bool {
        self.silent() >= UNREACHABLE_AFTER
    }

    /// Whether this instance is its shard's active focus.
    pub fn is_active(&self) -> bool {
        self.active.load(Relaxed)
    }

    /// Stops acting as the active focus (the caller campaigns again).
    fn step_down(&self, why: &str) {
        if self.active.swap(false, Relaxed) {
            tracing::error!(shard = %self.shard, "stepping down as the active focus: {why}");
        }
        self.lost.notify_waiters();
    }

    /// Completes when this instance steps down or its lease is replaced (from when it is
    /// first polled or enabled).
    pub fn lost(&self) -> tokio::sync::futures::Notified<'_> {
        self.lost.notified()
    }

    /// Keeps the lease alive until the task is dropped, renewing every [`RENEW_EVERY`] (an
    /// attempt may take up to [`STEP_DOWN_AFTER`]: a slow answer still counts).
    ///
    /// Whether etcd is unreachable and whether to step down are judged by the time since the
    /// last good renewal was sent, by a watchdog that looks every 100 ms, not by when an
    /// attempt gives up: without a renewal for [`STEP_DOWN_AFTER`] the active instance steps
    /// down before etcd can expire its lease and elect another (no bridge calls, no writes: the
    /// store's writes are fenced by the election key besides); it campaigns again once etcd
    /// answers (and wins at once if its lease survived). A lease etcd reports expired is
    /// replaced by a new one, and the instance registers and campaigns again with it. Nothing
    /// here exits the process: it recovers by itself whenever etcd answers again.
    pub async fn keep_alive(self: std::sync::Arc<Self>) {
        let watchdog = tokio::spawn(self.clone().watchdog());
        let _stop = AbortOnDrop(watchdog);
        let mut failing = false;
        loop {
            tokio::time::sleep(RENEW_EVERY).await;
            let sent = self.now_ms();
            let lease = self.lease();
            let mut c = self.leases.clone();
            let alive = tokio::time::timeout(STEP_DOWN_AFTER, async {
                let (mut keeper, mut stream) = c.lease_keep_alive(lease).await?;
                keeper.keep_alive().await?;
                Ok::<_, etcd_client::Error>(stream.message().await?.map(|r| r.ttl()))
            })
            .await
            .map_err(|_| "no answer".to_string())
            .and_then(|r| match r {
                // etcd answers an expired lease with TTL 0, which the client reports as an
                // error: it is an answer (the lease is gone), not an unreachable etcd.
                Err(etcd_client::Error::LeaseKeepAliveError(e)) if e.contains("not found") => {
                    Ok(Some(0))
                }
                r => r.map_err(|e| e.to_string()),
            });
            match alive {
                Ok(Some(ttl)) if ttl > 0 => {
                    self.last_ok.fetch_max(sent, Relaxed);
                    if failing {
                        tracing::info!("etcd reachable again; lease kept");
                    }
                    failing = false;
                }
                Ok(_) => {
                    self.step_down("the lease expired");
                    tracing::warn!("lease expired: registering again with a new one");
                    match self.register().await {
                        Ok(_) => {
                            self.last_ok.fetch_max(sent, Relaxed);
                            failing = false;
                            // A campaign with the old lease is abandoned.
                            self.lost.notify_waiters();
                        }
                        Err(e) => tracing::warn!("registering again: {e}"),
                    }
                }
                Err(e) => {
                    if !failing {
                        tracing::warn!("keeping the etcd lease alive: {e} (retrying)");
                    }
                    failing = true;
                }
            }
        }
    }

    /// Milliseconds on this instance's monotonic clock.
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Time since the last good renewal was sent: etcd may have received it then, and expires
    /// the lease [`LEASE_TTL_S`] after it received one.
    fn silent(&self) -> Duration {
        Duration::from_millis(self.now_ms().saturating_sub(self.last_ok.load(Relaxed)))
    }

    /// Steps the active instance down once renewals have been silent for [`STEP_DOWN_AFTER`].
    async fn watchdog(self: std::sync::Arc<Self>) {
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let silent = self.silent();
            if silent >= STEP_DOWN_AFTER && self.is_active() {
                self.step_down(&format!("no lease renewal for {} ms", silent.as_millis()));
            }
        }
    }

    /// Marks this instance active: called once it has taken over every placement.
    pub fn set_active(&self) {
        self.active.store(true, Relaxed);
    }

    /// Marks this instance standing by (it stepped down, or a takeover was abandoned): set
    /// whatever the order of a step-down and a takeover that crossed it.
    pub fn set_standby(&self) {
        self.active.store(false, Relaxed);
    }

    /// Waits until this instance is elected its shard's active focus with its current lease;
    /// returns the election key it holds (the caller fences the store with it, takes over,
    /// then [`Cluster::set_active`]). [`ClusterError::LeaseLost`] if the lease was replaced
    /// meanwhile.
    pub async fn campaign(&self) -> Result<Fence, ClusterError> {
        loop {
            let generation = self.lease_generation.load(Relaxed);
            let lease = self.lease();
            let mut e = self.elect.clone();
            let lost = self.lost();
            let r = tokio::select! {
                r = e.campaign(election(&self.shard), self.addr.clone(), lease) => r,
                _ = lost => return Err(ClusterError::LeaseLost),
            };
            match r {
                Ok(r) if self.lease_generation.load(Relaxed) == generation => {
                    let Some(k) = r.leader() else {
                        return Err(ClusterError::Etcd("campaign returned no key".into()));
                    };
                    tracing::info!(shard = %self.shard, "elected the shard's active focus");
                    return Ok(Fence {
                        key: k.key().to_vec(),
                        revision: k.rev(),
                    });
                }
                Ok(_) => return Err(ClusterError::LeaseLost),
                Err(err) => {
                    tracing::warn!("campaign: {err} (retrying)");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }

    /// The active focus of `shard` (its address), if any.
    pub async fn leader(&self, shard: &str) -> Result<Option<String>, ClusterError> {
        let mut e = self.client.clone();
        match e.leader(election(shard)).await {
            Ok(r) => Ok(r
                .kv()
                .map(|kv| String::from_utf8_lossy(kv.value()).into_owned())),
            Err(etcd_client::Error::GRpcStatus(s)) if s.message().contains("no leader") => Ok(None),
            Err(err) => Err(etcd(err)),
        }
    }

    /// Shards with a live instance: (shard, addresses of its instances), by shard id.
    pub async fn shards(&self) -> Result<Vec<(String, Vec<String>)>, ClusterError> {
        let prefix = format!("{ROOT}members/");
        let mut c = self.client.clone();
        let r = c
            .get(prefix.clone(), Some(GetOptions::new().with_prefix()))
            .await
            .map_err(etcd)?;
        let mut out: Vec<(String, Vec<String>)> = Vec::new();
        for kv in r.kvs() {
            let key = String::from_utf8_lossy(kv.key());
            let Some((shard, _)) = key.strip_prefix(&prefix).and_then(|k| k.split_once('/')) else {
                continue;
            };
            let addr = String::from_utf8_lossy(kv.value()).into_owned();
            match out.iter_mut().find(|(s, _)| s == shard) {
                Some((_, a)) => a.push(addr),
                None => out.push((shard.to_string(), vec![addr])),
            }
        }
        out.sort();
        Ok(out)
    }

    /// Routes `conference` (sticky, shared by every router): its route if the shard is live and
    /// the route not idle past the TTL, else a new one, round-robin over live shards, created
    /// in a transaction that only succeeds if nobody routed it meanwhile (else theirs wins).
    /// Returns (shard, the address of its active focus or an instance).
    pub async fn route(
        &self,
        conference: &str,
        now_ms: u64,
    ) -> Result<(String, String), ClusterError> {
        let key = format!("{ROOT}routes/{conference}");
        let mut c = self.client.clone();
        for _ in 0..5 {
            let live = self.shards().await?;
            if live.is_empty() {
                return Err(ClusterError::NoShard);
            }
            let got = c.get(key.clone(), None).await.map_err(etcd)?;
            let current = got.kvs().first().map(|kv| {
                (
                    kv.mod_revision(),
                    serde_json::from_slice::<Route>(kv.value()).ok(),
                )
            });
            if let Some((rev, Some(r))) = &current {
                let alive = live.iter().any(|(s, _)| *s == r.shard);
                let fresh = now_ms.saturating_sub(r.last_used_ms) <= self.route_ttl_ms;
                if alive && fresh {
                    // Refresh an ageing route; losing that race to another router is fine.
                    if now_ms.saturating_sub(r.last_used_ms) > self.route_ttl_ms / 10 {
                        let v = serde_json::to_vec(&Route {
                            shard: r.shard.clone(),
                            last_used_ms: now_ms,
                        })
                        .map_err(etcd)?;
                        let _ = c
                            .txn(
                                Txn::new()
                                    .when([Compare::mod_revision(
                                        key.clone(),
                                        CompareOp::Equal,
                                        *rev,
                                    )])
                                    .and_then([TxnOp::put(key.clone(), v, None)]),
                            )
                            .await;
                    }
                    return Ok((r.shard.clone(), self.addr_of(&r.shard, &live).await?));
                }
            }
            let pick = &live[self.next.fetch_add(1, Relaxed) % live.len()].0;
            let v = serde_json::to_vec(&Route {
                shard: pick.clone(),
                last_used_ms: now_ms,
            })
            .map_err(etcd)?;
            // Create only if absent, or replace only the stale route we read.
            let cond = match &current {
                None => Compare::create_revision(key.clone(), CompareOp::Equal, 0),
                Some((rev, _)) => Compare::mod_revision(key.clone(), CompareOp::Equal, *rev),
            };
            let t = c
                .txn(
                    Txn::new()
                        .when([cond])
                        .and_then([TxnOp::put(key.clone(), v, None)]),
                )
                .await
                .map_err(etcd)?;
            if t.succeeded() {
                return Ok((pick.clone(), self.addr_of(pick, &live).await?));
            }
            // Another router routed it first: read theirs.
        }
        Err(ClusterError::Etcd(format!(
            "route of {conference:?} kept changing under contention"
        )))
    }

    fn bridge_key(&self, id: &str) -> String {
        format!("{ROOT}shards/{}/bridges/{id}", self.shard)
    }

    /// Records a bridge registration of this shard (so a standby that takes over knows the
    /// fleet before the bridges find it, and fails a dead one over).
    pub async fn save_bridge(&self, b: &BridgeRecord) -> Result<(), ClusterError> {
        let mut c = self.client.clone();
        c.put(
            self.bridge_key(&b.id),
            serde_json::to_vec(b).map_err(etcd)?,
            None,
        )
        .await
        .map_err(etcd)?;
        Ok(())
    }

    /// The bridge registrations of this shard.
    pub async fn bridges(&self) -> Result<Vec<BridgeRecord>, ClusterError> {
        let prefix = self.bridge_key("");
        let mut c = self.client.clone();
        let r = c
            .get(prefix, Some(GetOptions::new().with_prefix()))
            .await
            .map_err(etcd)?;
        Ok(r.kvs()
            .iter()
            .filter_map(|kv| serde_json::from_slice(kv.value()).ok())
            .collect())
    }

    fn event_key(&self, conference: &str) -> String {
        format!("{ROOT}shards/{}/events/{conference}", self.shard)
    }

    /// Publishes placement announcements of this shard (the active focus does), in order, so a
    /// watch on any instance of the shard sees them.
    pub async fn publish(&self, msgs: &[pb::ConferencePlacement]) -> Result<(), ClusterError> {
        let mut c = self.client.clone();
        // One transaction per run of distinct conferences (a key once per transaction).
        let mut ops: Vec<TxnOp> = Vec::new();
        let mut keys: std::collections::HashSet<String> = std::collections::HashSet::new();
        for m in msgs {
            let key = self.event_key(&m.conference);
            if !keys.insert(key.clone()) {
                c.txn(Txn::new().and_then(std::mem::take(&mut ops)))
                    .await
                    .map_err(etcd)?;
                keys.clear();
                keys.insert(key.clone());
            }
            ops.push(TxnOp::put(key, m.encode_to_vec(), None));
        }
        if !ops.is_empty() {
            c.txn(Txn::new().and_then(ops)).await.map_err(etcd)?;
        }
        Ok(())
    }

    /// The announcements of `conference` published after store revision `after` (for a watch
    /// on a standby, which starts from the placement read at that revision).
    pub async fn watch(
        &self,
        conference: &str,
        after: i64,
    ) -> Result<etcd_client::WatchStream, ClusterError> {
        let key = self.event_key(conference);
        let mut w = self.elect.clone(); // no request deadline: the stream lives long
        let stream = w
            .watch(
                key,
                Some(WatchOptions::new().with_start_revision(after + 1)),
            )
            .await
            .map_err(etcd)?;
        Ok(stream)
    }

    /// Where clients reach `shard`: its active focus, else one of its instances.
    async fn addr_of(
        &self,
        shard: &str,
        live: &[(String, Vec<String>)],
    ) -> Result<String, ClusterError> {
        if let Some(l) = self.leader(shard).await? {
            return Ok(l);
        }
        Ok(live
            .iter()
            .find(|(s, _)| s == shard)
            .and_then(|(_, a)| a.first().cloned())
            .unwrap_or_default())
    }
}
