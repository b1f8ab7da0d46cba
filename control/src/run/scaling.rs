//! The autoscaler at run time: evaluates the sans-IO scaler every interval and has the actuator
//! start and stop bridges, no lock held while the actuator works.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use super::service::{Control, Core, now_ms};
use crate::actuator::Actuator;
use crate::core::autoscaler::Action;
use crate::core::fleet::Health;

impl Control {
    /// The actuator's name while the autoscaler runs.
    pub fn actuator_name(&self) -> Option<&'static str> {
        self.actuator.get().map(|a| a.name())
    }

    /// What keeps the actuator from doing as asked (e.g. a backoff); empty when nothing does.
    pub fn actuator_status(&self) -> String {
        self.actuator.get().map(|a| a.status()).unwrap_or_default()
    }

    /// Evaluates the autoscaler every interval and has `actuator` start and stop bridges,
    /// until the task is dropped. No lock is held while the actuator works.
    pub async fn autoscale(self: Arc<Self>, actuator: Arc<dyn Actuator>) {
        let _ = self.actuator.set(actuator.clone());
        let every = Duration::from_millis(self.cfg.autoscale_interval_ms.max(10));
        // Drained bridges this actuator does not run: said once, left in the fleet as draining.
        let mut not_ours: HashSet<String> = HashSet::new();
        loop {
            tokio::time::sleep(every).await;
            if !self.is_active() {
                continue;
            }
            let eval = {
                let mut core = self.lock();
                let Core { focus, scaler, .. } = &mut *core;
                let Some(scaler) = scaler.as_mut() else {
                    return;
                };
                let registered: HashSet<String> =
                    focus.fleet().iter().map(|b| b.id.clone()).collect();
                let booting = actuator.booting(&registered);
                scaler.evaluate(focus, booting, &|b| actuator.removable(b), now_ms())
            };
            let d = &eval.decision;
            if d.desired != d.current {
                if d.desired > d.current {
                    self.scale_ups.fetch_add(1, Relaxed);
                } else {
                    self.scale_downs.fetch_add(1, Relaxed);
                }
                tracing::info!(
                    ready = d.sample.ready,
                    starting = d.sample.starting,
                    metric = format!("{:.3}", d.sample.metric),
                    current = d.current,
                    raw = d.raw,
                    desired = d.desired,
                    drained = ?eval.drained,
                    "autoscaler: {}",
                    d.reason
                );
            } else {
                tracing::debug!(current = d.current, "autoscaler: {}", d.reason);
            }
            for a in eval.actions {
                match a {
                    Action::Start(n) => {
                        match tokio::time::timeout(Duration::from_secs(30), actuator.start(n)).await
                        {
                            Ok(Ok(())) => {}
                            Ok(Err(e)) => tracing::warn!("autoscaler: starting {n} bridges: {e:#}"),
                            Err(_) => tracing::warn!("autoscaler: starting {n} bridges timed out"),
                        }
                    }
                    Action::Remove(id) => {
                        if not_ours.contains(&id) {
                            continue;
                        }
                        let stopped =
                            tokio::time::timeout(Duration::from_secs(30), actuator.remove(&id))
                                .await;
                        let mut core = self.lock();
                        let down = core
                            .focus
                            .fleet()
                            .get(&id)
                            .is_some_and(|b| b.health == Health::Down);
                        match stopped {
                            Ok(Ok(true)) => {
                                core.focus.forget(&id);
                                tracing::info!(bridge = %id, "autoscaler: drained bridge removed");
                            }
                            Ok(Ok(false)) if down => {
                                core.focus.forget(&id);
                            }
                            Ok(Ok(false)) => {
                                tracing::info!(bridge = %id, "drained and empty; not started by the {} actuator: stop it yourself", actuator.name());
                                not_ours.insert(id);
                            }
                            Ok(Err(e)) => {
                                tracing::warn!(bridge = %id, "autoscaler: removing: {e:#}")
                            }
                            Err(_) => {
                                tracing::warn!(bridge = %id, "autoscaler: removing timed out")
                            }
                        }
                    }
                }
            }
        }
    }
}
