//! The edges both ringbridge binaries share, kept in one place so they cannot drift:
//!
//! - [`ready`]: the one-line `ready` announcement a process prints when it serves, and its parser
//!   (tests, scripts and the load rig read it).
//! - [`grpc`]: a tonic server router that already carries `grpc.health.v1.Health` and reflection.
//! - [`shutdown`]: Ctrl-C or SIGTERM.
//! - [`metrics`]: Prometheus exposition over HTTP through `prometheus-client` (label values are
//!   escaped by its encoder).

pub mod grpc;
pub mod metrics;
pub mod ready;
pub mod shutdown;
