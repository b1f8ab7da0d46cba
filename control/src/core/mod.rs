//! Sans-IO: everything the control plane decides, with time as an argument and randomness
//! injected. No socket, no clock, no task.
//!
//! - [`focus`]: placements and the plans that change them (join, leave, failover, drain,
//!   broadcasts), committed or rolled back on the bridge calls' results; like Jicofo without I/O.
//! - [`fleet`]: the bridges as reported and probed (up, suspect, down, draining) and the
//!   pluggable selection of a bridge.
//! - [`router`]: sticky conference -> shard routes, HAProxy stick-table style.
//! - [`autoscaler`]: HPA arithmetic and the scaler that drains and removes bridges.
//! - [`pulltree`]: a broadcast's edge choice and pull tree with bounded origin fan-out.
//! - [`speakers`]: a conference's dominant speaker and recent speakers from audio levels.

pub mod autoscaler;
pub mod fleet;
pub mod focus;
pub mod pulltree;
pub mod router;
pub mod speakers;
