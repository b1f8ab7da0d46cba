//! Several control instances on etcd (`--store etcd://...`): the shard registry (each instance
//! under a lease it keeps alive), shared sticky routes (created in a transaction, so two routers
//! racing on a conference's first join agree), and the election of one active focus per shard
//! (the others stand by and take over when the leader's lease expires).
//!
//! Keys under `/ringbridge/`: `members/SHARD/ADDR` -> ADDR (leased), `routes/CONFERENCE` ->
//! the route as JSON, `elections/SHARD` -> the etcd election of the shard's active focus,
//! `shards/SHARD/events/CONFERENCE` -> its last placement announcement (protobuf), which a
//! WatchConference on a standby follows with an etcd watch; `shards/SHARD/bridges/ID` -> the
//! bridge's registration (placements are under `shards/SHARD/placements/`, see [`crate::etcd`]).

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, PutOptions, Txn, TxnOp, WatchOptions,
};
use prost::Message;
use ringbridge_proto::v1 as pb;

use crate::etcd::ROOT;
use crate::router::Route;

/// Lease time to live, s: an instance that stops answering leaves the rotation, and its
/// standby takes over, within about this.
pub const LEASE_TTL_S: i64 = 3;

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
}

fn etcd(e: impl std::fmt::Display) -> ClusterError {
    ClusterError::Etcd(e.to_string())
}

/// This instance's view of the cluster.
pub struct Cluster {
    client: Client,
    /// A client without a request deadline, for the campaign (it blocks until elected).
    elect: Client,
    /// This instance's shard.
    pub shard: String,
    /// This instance's address.
    pub addr: String,
    lease: Mutex<i64>,
    route_ttl_ms: u64,
    next: AtomicUsize,
    active: AtomicBool,
    /// The last lease renewal failed: etcd is unreachable (or hung) right now.
    unreachable: AtomicBool,
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
    /// Connects, takes a lease and registers this instance of `shard` at `addr`.
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
        let client = Client::connect(endpoints, Some(opts)).await.map_err(etcd)?;
        let elect = Client::connect(
            endpoints,
            Some(ConnectOptions::new().with_connect_timeout(timeout)),
        )
        .await
        .map_err(etcd)?;
        let me = Self {
            client,
            elect,
            shard: shard.into(),
            addr: addr.into(),
            lease: Mutex::new(0),
            route_ttl_ms,
            next: AtomicUsize::new(0),
            active: AtomicBool::new(false),
            unreachable: AtomicBool::new(false),
        };
        me.register().await?;
        Ok(me)
    }

    /// Grants a fresh lease and puts the member key under it.
    async fn register(&self) -> Result<i64, ClusterError> {
        let mut c = self.client.clone();
        let lease = c.lease_grant(LEASE_TTL_S, None).await.map_err(etcd)?.id();
        c.put(
            member_key(&self.shard, &self.addr),
            self.addr.clone(),
            Some(PutOptions::new().with_lease(lease)),
        )
        .await
        .map_err(etcd)?;
        *self.lease.lock().unwrap_or_else(|e| e.into_inner()) = lease;
        Ok(lease)
    }

    /// The lease this instance's keys live under.
    pub fn lease(&self) -> i64 {
        *self.lease.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether etcd failed to renew the lease at the last attempt (checked every
    /// `LEASE_TTL_S / 3`): changes are refused meanwhile rather than half applied.
    pub fn etcd_unreachable(&self) -> bool {
        self.unreachable.load(Relaxed)
    }

    /// Whether this instance is its shard's active focus.
    pub fn is_active(&self) -> bool {
        self.active.load(Relaxed)
    }

    /// Keeps the lease alive until the task is dropped. If the lease is lost (etcd was away for
    /// longer than its TTL) while this instance is the active focus, the process exits: another
    /// instance may have taken over, and two active focuses must never program the same bridges.
    /// A standby takes a new lease and registers again.
    pub async fn keep_alive(self: std::sync::Arc<Self>) {
        let every = Duration::from_millis((LEASE_TTL_S as u64 * 1000) / 3);
        let mut failing = false;
        loop {
            tokio::time::sleep(every).await;
            let lease = self.lease();
            let mut c = self.client.clone();
            let alive = tokio::time::timeout(every * 2, async {
                let (mut keeper, mut stream) = c.lease_keep_alive(lease).await?;
                keeper.keep_alive().await?;
                Ok::<_, etcd_client::Error>(stream.message().await?.map(|r| r.ttl()))
            })
            .await
            .map_err(|_| "no answer".to_string())
            .and_then(|r| r.map_err(|e| e.to_string()));
            match alive {
                Ok(Some(ttl)) if ttl > 0 => {
                    self.unreachable.store(false, Relaxed);
                    if failing {
                        tracing::info!("etcd reachable again; lease kept");
                    }
                    failing = false;
                }
                Ok(_) => {
                    if self.is_active() {
                        tracing::error!(
                            "lease expired while active: another instance may lead; exiting"
                        );
                        std::process::exit(3);
                    }
                    tracing::warn!("lease expired: registering again");
                    if let Err(e) = self.register().await {
                        tracing::warn!("registering again: {e}");
                    }
                }
                Err(e) => {
                    self.unreachable.store(true, Relaxed);
                    if !failing {
                        tracing::warn!("keeping the etcd lease alive: {e} (retrying)");
                    }
                    failing = true;
                }
            }
        }
    }

    /// Marks this instance active: called once it has taken over every placement.
    pub fn set_active(&self) {
        self.active.store(true, Relaxed);
    }

    /// Waits until this instance is elected its shard's active focus (the caller takes over,
    /// then [`Cluster::set_active`]).
    pub async fn campaign(&self) -> Result<(), ClusterError> {
        loop {
            let lease = self.lease();
            let mut e = self.elect.clone();
            match e
                .campaign(election(&self.shard), self.addr.clone(), lease)
                .await
            {
                Ok(_) => {
                    tracing::info!(shard = %self.shard, "elected the shard's active focus");
                    return Ok(());
                }
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

    /// Publishes a placement announcement of this shard (the active focus does), so a watch on
    /// any instance of the shard sees it.
    pub async fn publish(&self, msg: &pb::ConferencePlacement) -> Result<(), ClusterError> {
        let mut c = self.client.clone();
        c.put(self.event_key(&msg.conference), msg.encode_to_vec(), None)
            .await
            .map_err(etcd)?;
        Ok(())
    }

    /// The last announcement of `conference` and a stream of the next ones (for a watch on a
    /// standby).
    pub async fn watch(
        &self,
        conference: &str,
    ) -> Result<(Option<pb::ConferencePlacement>, etcd_client::WatchStream), ClusterError> {
        let key = self.event_key(conference);
        let mut c = self.client.clone();
        let got = c.get(key.clone(), None).await.map_err(etcd)?;
        let current = got
            .kvs()
            .first()
            .and_then(|kv| pb::ConferencePlacement::decode(kv.value()).ok());
        let rev = got.header().map_or(0, |h| h.revision());
        let mut w = self.elect.clone(); // no request deadline: the stream lives long
        let stream = w
            .watch(key, Some(WatchOptions::new().with_start_revision(rev + 1)))
            .await
            .map_err(etcd)?;
        Ok((current, stream))
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
