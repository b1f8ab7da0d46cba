//! ringbridge control plane, sans-IO parts (the gRPC services and the binary come with the
//! control-plane issue):
//!
//! - [`bridges`]: the bridge fleet as reported (health, drain, stress) and the pluggable
//!   selection of a bridge for a new conference, Jicofo style.
//! - [`router`]: sticky conference -> shard routes with round-robin for new conferences and
//!   idle expiry, HAProxy stick-table style.
//! - [`store`]: what must survive a restart, behind a trait, with an embedded file store.
//!
//! Time is an input (milliseconds), never read here, so every rule is unit-tested.

pub mod bridges;
pub mod cli;
pub mod router;
pub mod service;
pub mod store;
