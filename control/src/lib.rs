//! ringbridge control plane. The tree mirrors the data plane's `core/` and `engine/`:
//!
//! - [`core`]: sans-IO decisions, time an argument, every rule unit-tested: the focus
//!   (placements and the plans that change them), the fleet view and bridge selection, the
//!   router's sticky routes, the autoscaler's HPA arithmetic, a broadcast's pull tree. The
//!   simulations run this same code in virtual time.
//! - [`store`]: what survives a restart, behind the [`store::Store`] trait: the file store, the
//!   etcd store, and the cluster of instances on etcd (leases, the election of the active focus).
//! - [`run`]: I/O at the edges: the executor that runs plans against the bridges with deadlines,
//!   the run-time glue ([`run::service::Control`]: one short-held lock, the monitor, the
//!   flusher, the elector), the gRPC adapters, metrics, and `serve` itself.
//! - [`signal`]: WebRTC signaling at the edge: SDP offers and answers, WHIP and WHEP over HTTP,
//!   the served page; every placement through the focus.
//! - [`actuator`]: what starts and stops bridges for the autoscaler (processes, Kubernetes).
//! - [`sim`]: the cost simulation and the million-viewer stream, through the real focus.
//! - [`cli`]: the client commands (`ringbridge-control join`, `drain`, ...).
//!
//! Dependencies point one way: `run` uses `core`, `store` and `actuator`; `signal` uses `run`,
//! `core` and `store` (and `run` serves `signal`'s routes); `store` uses `core`'s types; `core`
//! uses nothing of the others but the store's plain data types.

pub mod actuator;
pub mod cli;
pub mod core;
pub mod run;
pub mod signal;
pub mod sim;
pub mod store;
