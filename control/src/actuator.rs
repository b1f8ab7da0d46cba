//! Actuators: what starts and stops bridges for the autoscaler. The [`Scaler`] decides; an
//! actuator carries it out.
//!
//! - [`ProcessActuator`] (the embedded default): local `ringbridge` processes on free loopback
//!   ports that register with this control plane. They are its children and stop with it
//!   (`--exit-with-parent`); their logs go to the data directory.
//! - [`crate::kubernetes::KubernetesActuator`]: the replica count of a bridge StatefulSet.
//!
//! [`Scaler`]: crate::autoscaler::Scaler

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::process::Stdio;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A boxed future (the trait is used as `dyn`).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Starts and stops bridges.
pub trait Actuator: Send + Sync {
    /// "process" or "kubernetes".
    fn name(&self) -> &'static str;
    /// Bridges asked for that have not registered yet (`registered`: ids the fleet knows).
    fn booting(&self, registered: &HashSet<String>) -> u32;
    /// Whether a scale-down may pick `bridge` (it can stop that one).
    fn removable(&self, bridge: &str) -> bool;
    /// Starts `n` more bridges.
    fn start(&self, n: u32) -> BoxFuture<'_, anyhow::Result<()>>;
    /// Stops a drained (empty) bridge; `Ok(false)` when it is not one this actuator runs.
    fn remove<'a>(&'a self, bridge: &'a str) -> BoxFuture<'a, anyhow::Result<bool>>;
}

/// Settings of the [`ProcessActuator`].
#[derive(Debug, Clone)]
pub struct ProcessConfig {
    /// The `ringbridge` binary.
    pub binary: PathBuf,
    /// Control plane URL the bridges register with.
    pub control_url: String,
    /// Region of the bridges it starts.
    pub region: String,
    /// Capacity they report stress against, packets/s.
    pub capacity_pps: f64,
    /// Bridge ids are this prefix, a dash and a counter.
    pub id_prefix: String,
    /// More arguments for each bridge (e.g. `--engine mio --workers 1`).
    pub extra_args: Vec<String>,
    /// A bridge that has not registered by then is killed and no longer counted as booting.
    pub boot_timeout: Duration,
    /// How long a stopped bridge gets to exit on SIGTERM before SIGKILL.
    pub stop_timeout: Duration,
    /// Each bridge's log goes to `ID.log` here (none: discarded).
    pub log_dir: Option<PathBuf>,
}

struct Running {
    child: tokio::process::Child,
    started: Instant,
}

/// Runs bridges as local child processes.
pub struct ProcessActuator {
    cfg: ProcessConfig,
    children: Mutex<BTreeMap<String, Running>>,
    next: Mutex<u64>,
}

impl std::fmt::Debug for ProcessActuator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessActuator")
            .field("cfg", &self.cfg)
            .finish()
    }
}

impl ProcessActuator {
    /// An actuator with `cfg`; the binary must exist.
    pub fn new(cfg: ProcessConfig) -> anyhow::Result<Self> {
        if !cfg.binary.is_file() {
            anyhow::bail!(
                "--bridge-binary {}: no such file (build the workspace, or point it at ringbridge)",
                cfg.binary.display()
            );
        }
        Ok(Self {
            cfg,
            children: Mutex::new(BTreeMap::new()),
            next: Mutex::new(0),
        })
    }

    fn children(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Running>> {
        self.children.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn spawn_one(&self) -> anyhow::Result<String> {
        let id = {
            let mut n = self.next.lock().unwrap_or_else(|e| e.into_inner());
            *n += 1;
            format!("{}-{}", self.cfg.id_prefix, *n)
        };
        let mut cmd = tokio::process::Command::new(&self.cfg.binary);
        cmd.args([
            "--control",
            &self.cfg.control_url,
            "--bridge-id",
            &id,
            "--region",
            &self.cfg.region,
            "--capacity-pps",
            &self.cfg.capacity_pps.to_string(),
            "--media",
            "127.0.0.1:0",
            "--api",
            "127.0.0.1:0",
            "--exit-with-parent",
        ])
        .args(&self.cfg.extra_args)
        .env(
            "RUST_LOG",
            std::env::var("RINGBRIDGE_BRIDGE_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(match &self.cfg.log_dir {
            Some(dir) => std::fs::File::create(dir.join(format!("{id}.log")))
                .map(Stdio::from)
                .unwrap_or_else(|_| Stdio::null()),
            None => Stdio::null(),
        })
        .kill_on_drop(true);
        let child = cmd
            .spawn()
            .map_err(|e| anyhow::anyhow!("starting {}: {e}", self.cfg.binary.display()))?;
        tracing::info!(bridge = %id, pid = child.id(), "bridge process started");
        self.children().insert(
            id.clone(),
            Running {
                child,
                started: Instant::now(),
            },
        );
        Ok(id)
    }
}

impl Actuator for ProcessActuator {
    fn name(&self) -> &'static str {
        "process"
    }

    fn booting(&self, registered: &HashSet<String>) -> u32 {
        let mut children = self.children();
        let mut failed = Vec::new();
        let mut n = 0;
        for (id, r) in children.iter_mut() {
            if registered.contains(id) {
                continue;
            }
            let exited = !matches!(r.child.try_wait(), Ok(None));
            if exited || r.started.elapsed() > self.cfg.boot_timeout {
                failed.push(id.clone());
            } else {
                n += 1;
            }
        }
        for id in failed {
            tracing::warn!(bridge = %id, "bridge process exited or did not register in time");
            if let Some(mut r) = children.remove(&id) {
                let _ = r.child.start_kill();
            }
        }
        n
    }

    fn removable(&self, bridge: &str) -> bool {
        self.children().contains_key(bridge)
    }

    fn start(&self, n: u32) -> BoxFuture<'_, anyhow::Result<()>> {
        Box::pin(async move {
            for _ in 0..n {
                self.spawn_one()?;
            }
            Ok(())
        })
    }

    fn remove<'a>(&'a self, bridge: &'a str) -> BoxFuture<'a, anyhow::Result<bool>> {
        Box::pin(async move {
            let Some(mut r) = self.children().remove(bridge) else {
                return Ok(false);
            };
            // SIGTERM: the bridge drains (it is already empty) and exits.
            if let Some(pid) = r
                .child
                .id()
                .and_then(|p| rustix::process::Pid::from_raw(p as i32))
            {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            }
            match tokio::time::timeout(self.cfg.stop_timeout, r.child.wait()).await {
                Ok(status) => tracing::info!(%bridge, ?status, "bridge process stopped"),
                Err(_) => {
                    tracing::warn!(%bridge, "bridge did not exit on SIGTERM: killing it");
                    let _ = r.child.kill().await;
                }
            }
            Ok(true)
        })
    }
}
