//! Actuators: what starts and stops bridges for the autoscaler. The [`Scaler`] decides; an
//! actuator carries it out.
//!
//! - [`ProcessActuator`] (the embedded default): local `ringbridge` processes on free loopback
//!   ports that register with this control plane. They are its children and stop with it
//!   (`--exit-with-parent`); their logs go to the data directory. With a standby instance
//!   (`--bridge-control` naming every instance of the shard) they are detached instead: they
//!   outlive the instance that started them, report to the one that takes over, and that
//!   one's actuator adopts them (finds them by id in `/proc`, drains and stops them). A bridge that exits soon after
//!   it starts (or never registers) earns a backoff ([`Restarts`]): exponential, capped, reset
//!   once a bridge stays up, and shown in [`Actuator::status`].
//! - [`crate::actuator::kubernetes::KubernetesActuator`]: the replica count of a bridge StatefulSet.
//!
//! [`Scaler`]: crate::core::autoscaler::Scaler

pub mod kubernetes;
pub mod process;

pub use process::{ProcessActuator, ProcessConfig, Restarts, executable, local_bridge};

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;

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
    /// What keeps it from doing as asked, for the API (e.g. "backing off 4 s after 3 quick
    /// exits"); empty when nothing does.
    fn status(&self) -> String {
        String::new()
    }
}
