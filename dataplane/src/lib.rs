//! ringbridge data plane: a thread-per-core RTP/RTCP forwarder.
//!
//! - [`core`]: the sans-IO decision (classify, look up, choose destinations).
//! - [`state`]: the bridge's conferences and endpoints as the API sees them; builds tables.
//! - [`publish`]: hands new tables to every worker and waits until all have them in force.
//! - [`engine`]: the I/O drivers (`uring`, `mio`) that run the workers.
//! - [`srtp`]: SRTP/SRTCP transforms (decrypt once per packet, encrypt per SRTP receiver).
//! - [`webrtc`]: STUN/ICE-lite and DTLS-SRTP for WebRTC endpoints (sans-IO, off the hot path).
//! - [`api`]: the gRPC service; [`bridge`] assembles it all; [`demo`] is `make run`.

pub mod agent;
pub mod api;
pub mod bridge;
pub mod core;
pub mod demo;
pub mod engine;
pub mod metrics;
pub mod publish;
pub mod srtp;
pub mod state;
pub mod stats;
pub mod testkit;
pub mod webrtc;
