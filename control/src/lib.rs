//! ringbridge control plane.
//!
//! Sans-IO (time is an argument, every rule unit-tested):
//! - [`focus`]: placements and the plans that change them (join, leave, failover), committed or
//!   rolled back on the bridge calls' results; like Jicofo, without its I/O. Conferences (Octo
//!   full mesh) and broadcasts (a publisher's origin, edges pulling in tiers).
//! - [`bridges`]: the bridge fleet as reported and probed (up, suspect, down, draining) and the
//!   pluggable selection of a bridge.
//! - [`router`]: sticky conference -> shard routes, HAProxy stick-table style.
//! - [`store`]: what survives a restart, behind a trait; an append-only log with compaction.
//! - [`autoscaler`]: HPA arithmetic and the scaler that drains and removes bridges.
//! - [`sim`]: the cost simulation: focus and autoscaler in virtual time over a day; one
//!   broadcast to a million viewers through the focus.
//! - [`stream`]: live streams: edge choice and the pull tree with bounded origin fan-out.
//!
//! I/O at the edges:
//! - [`executor`]: runs plans against the bridges' gRPC APIs with a deadline per call.
//! - [`service`]: the run-time glue: one short-held lock, per-conference serialization, the
//!   monitor (ticks and health probes) and the store flusher.
//! - [`api`]: the gRPC services; [`metrics`]: Prometheus; [`cli`]: the client commands.
//! - [`actuator`], [`kubernetes`]: what starts and stops bridges for the autoscaler.
//! - [`etcd`], [`cluster`]: the etcd store, shared routes, shard leases and the election of the
//!   active focus.

pub mod actuator;
pub mod api;
pub mod autoscaler;
pub mod bridges;
pub mod cli;
pub mod cluster;
pub mod etcd;
pub mod executor;
pub mod focus;
pub mod kubernetes;
pub mod metrics;
pub mod router;
pub mod service;
pub mod sim;
pub mod store;
pub mod stream;
