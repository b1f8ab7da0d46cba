//! The control plane among several instances on etcd: standing by, the election of the active
//! focus (fenced store writes, stepping down when the lease is in doubt, taking over with every
//! placement and a reconciliation of every bridge), and a standby's view of placements.

use std::sync::Arc;
use std::time::Duration;

use ringbridge_proto::v1 as pb;
use tokio::sync::broadcast;
use tonic::Status;

use super::service::{Control, focus_from, now_ms, placement_msg};
use crate::core::fleet::Health;
use crate::store::cluster::Cluster;

impl Control {
    /// Joins a cluster of instances on etcd: this instance stands by (makes no bridge call and
    /// writes nothing) until elected (see [`Control::elect`]).
    pub fn set_cluster(&self, c: Arc<Cluster>) {
        self.executor.set_enabled(false);
        self.store.set_fence(None);
        let _ = self.cluster.set(c);
    }

    /// Campaigns for this shard's active focus, takes over when elected and stands by again
    /// when the cluster steps it down (lease lost, or etcd silent for too long), then campaigns
    /// again: an instance recovers by itself once etcd answers. While it is active its store
    /// writes are fenced by its election key, so two instances can never both write.
    pub async fn elect(self: Arc<Self>) {
        let Some(c) = self.cluster.get().cloned() else {
            return;
        };
        loop {
            while c.etcd_unreachable() {
                tokio::time::sleep(crate::store::cluster::RENEW_EVERY).await;
            }
            // Listening for a step-down from before the campaign: one between the win and the
            // takeover must not be missed (found by the chaos soak: an instance whose lease was
            // replaced just after it won took over anyway and stayed marked active, taking the
            // bridges' reports while the other instance, really elected, declared them all
            // down).
            let lost = c.lost();
            tokio::pin!(lost);
            lost.as_mut().enable();
            let fence = match c.campaign().await {
                Ok(f) => f,
                Err(crate::store::cluster::ClusterError::LeaseLost) => continue,
                Err(e) => {
                    tracing::warn!("campaign: {e}");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            self.store.set_fence(Some(fence));
            self.executor.set_enabled(true);
            if let Err(e) = self.take_over().await {
                tracing::error!("taking over: {e:#}; campaigning again");
                self.stand_by();
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            c.set_active();
            self.reconcile_all();
            lost.await;
            self.stand_by();
            tracing::warn!(shard = %c.shard, "standing by; campaigning again once etcd answers");
        }
    }

    /// Stops acting as the active focus: no bridge calls, no store writes, no answers as the
    /// active focus.
    fn stand_by(&self) {
        if let Some(c) = self.cluster.get() {
            c.set_standby();
        }
        self.executor.set_enabled(false);
        self.store.set_fence(None);
    }

    /// Reconciles every bridge of the fleet (after a takeover: what the bridges hold and no
    /// placement names, left by joins the previous instance never made durable, is removed).
    pub fn reconcile_all(self: &Arc<Self>) {
        let bridges: Vec<(String, String)> = self
            .lock()
            .focus
            .fleet()
            .iter()
            .filter(|b| b.health != Health::Down)
            .map(|b| (b.id.clone(), b.api_addr.clone()))
            .collect();
        for (id, api) in bridges {
            self.reconcile(id, api);
        }
    }

    /// The cluster, when the store is etcd.
    pub fn cluster(&self) -> Option<&Arc<Cluster>> {
        self.cluster.get()
    }

    /// Whether this instance is its shard's active focus (always, without a cluster).
    pub fn is_active(&self) -> bool {
        self.cluster.get().is_none_or(|c| c.is_active())
    }

    /// `UNAVAILABLE` naming the active focus while this instance stands by.
    pub async fn check_active(&self) -> Result<(), Status> {
        let Some(c) = self.cluster.get() else {
            return Ok(());
        };
        if c.is_active() {
            return Ok(());
        }
        let leader = match c.leader(&c.shard).await {
            Ok(Some(l)) => format!("the active focus is at {l}"),
            Ok(None) => "no active focus yet (election in progress)".into(),
            Err(e) => format!("the active focus is unknown ({e})"),
        };
        Err(Status::unavailable(format!(
            "standby instance of shard {}: {leader}",
            c.shard
        )))
    }

    /// Publishes this shard's placement announcements to etcd while active, so watches on
    /// standbys see them; until the task is dropped.
    pub async fn publish_events(self: Arc<Self>) {
        let Some(c) = self.cluster.get().cloned() else {
            return;
        };
        let mut events = self.subscribe();
        loop {
            let first = match events.recv().await {
                Ok(e) => e,
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!("{n} placement announcements not published (lagged)");
                    continue;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            };
            // Everything announced meanwhile goes in one write: a burst of joins costs etcd one
            // transaction, not one per join.
            let mut batch = vec![first];
            while batch.len() < crate::store::etcd::MAX_TXN_OPS {
                match events.try_recv() {
                    Ok(e) => batch.push(e),
                    Err(_) => break,
                }
            }
            if !c.is_active() {
                continue;
            }
            if let Err(err) = c.publish(&coalesce(batch)).await {
                tracing::warn!("publishing placement announcements: {err}");
            }
        }
    }

    /// On a standby: `conference`'s placement as the store holds it now (reason "current"),
    /// announced as the active focus would, and the store revision it was read at.
    pub async fn stored_placement(
        &self,
        conference: &str,
    ) -> Result<(Option<pb::ConferencePlacement>, i64), Status> {
        let store = self.store.clone();
        let c = conference.to_string();
        let (p, rev) = tokio::task::spawn_blocking(move || store.read_placement(&c))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let Some(p) = p else {
            return Ok((None, rev));
        };
        let bridges = match self.cluster.get() {
            Some(c) => c
                .bridges()
                .await
                .map_err(|e| Status::unavailable(e.to_string()))?,
            None => Vec::new(),
        };
        // The focus's own announcement, over a focus holding just this placement.
        let mut snap = crate::store::Snapshot::default();
        snap.placements.insert(conference.into(), p);
        let mut f = focus_from(&self.cfg, snap);
        for b in &bridges {
            let _ = f.register(b.bridge(), 0);
        }
        Ok((f.placement(conference, "current").map(placement_msg), rev))
    }

    /// Becomes the active focus: starts from every placement in the store.
    /// No flush runs meanwhile, and what the previous focus had not made durable is dropped
    /// with it: callers waiting for it are told (see [`Control::durable`]).
    pub async fn take_over(self: &Arc<Self>) -> anyhow::Result<()> {
        let _no_flush = self.flush_lock.lock().await;
        let store = self.store.clone();
        let snap = tokio::task::spawn_blocking(move || store.load()).await??;
        let n = snap.placements.len();
        let mut focus = focus_from(&self.cfg, snap);
        // The shard's bridges as registered with the previous active focus: known at once, so
        // one that died meanwhile misses its reports here and is failed over.
        let bridges = match self.cluster.get() {
            Some(c) => c.bridges().await?,
            None => Vec::new(),
        };
        let now = now_ms();
        for b in &bridges {
            let _ = focus.register(b.bridge(), now);
        }
        {
            let mut core = self.lock();
            core.focus = focus;
            self.epoch
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.durable.store(0, std::sync::atomic::Ordering::Relaxed);
        }
        tracing::info!(
            placements = n,
            bridges = bridges.len(),
            "took over as the active focus"
        );
        Ok(())
    }
}

/// A batch of announcements to publish: a "joined" or "left" followed by a later announcement
/// of the same conference is dropped (the later one carries the placement now); every other
/// reason (placed, failover, drained, ...) is kept, in order.
pub fn coalesce(batch: Vec<pb::ConferencePlacement>) -> Vec<pb::ConferencePlacement> {
    let mut out: Vec<pb::ConferencePlacement> = Vec::with_capacity(batch.len());
    for e in batch {
        if let Some(last) = out.iter().rposition(|x| x.conference == e.conference)
            && matches!(out[last].reason.as_str(), "joined" | "left")
        {
            out.remove(last);
        }
        out.push(e);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(conference: &str, reason: &str) -> pb::ConferencePlacement {
        pb::ConferencePlacement {
            conference: conference.into(),
            reason: reason.into(),
            ..Default::default()
        }
    }

    #[test]
    fn joins_and_leaves_coalesce_other_reasons_stay_in_order() {
        let got = coalesce(vec![
            a("x", "placed"),
            a("x", "joined"),
            a("y", "joined"),
            a("x", "joined"),
            a("x", "failover"),
            a("x", "left"),
        ]);
        let shape: Vec<(&str, &str)> = got
            .iter()
            .map(|m| (m.conference.as_str(), m.reason.as_str()))
            .collect();
        assert_eq!(
            shape,
            [
                ("x", "placed"),
                ("y", "joined"),
                ("x", "failover"),
                ("x", "left")
            ]
        );
    }
}
