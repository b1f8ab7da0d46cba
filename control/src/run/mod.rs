//! I/O at the edges: how the sans-IO [`crate::core`] meets bridges, clients and the clock.
//!
//! - [`executor`]: runs plans against the bridges' gRPC APIs, a deadline per call, one lane per
//!   bridge.
//! - [`service`]: the run-time glue ([`service::Control`]): one short-held lock, per-conference
//!   serialization, durable acknowledgements, the monitor, the flusher and the elector.
//! - [`election`]: standing by, the election of the active focus, takeover; [`scaling`]: the
//!   autoscaler loop; [`watches`]: WatchConference streams per client.
//! - [`api`]: the gRPC services (thin adapters); [`metrics`]: Prometheus.
//! - [`serve`]: `ringbridge-control serve`: its flags, and the process that wires it all.

pub mod api;
pub mod election;
pub mod executor;
pub mod metrics;
pub mod scaling;
pub mod serve;
pub mod service;
pub mod watches;
