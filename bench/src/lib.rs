//! ringbridge's load-test rig and baselines.
//!
//! - [`traffic`]: streams, and the stamp (send time, sequence) every payload carries.
//! - [`rig`]: participant sockets, paced senders, the receiver and its exact accounting.
//! - [`target`]: what traffic flows through: a running bridge, or one the rig starts (ringbridge
//!   with either engine, or a baseline forwarder).
//! - [`groups`]: the conference setup file the baseline forwarders read.
//! - [`cpu`]: a process's CPU time from `/proc`; [`drive`]: `--find-max`.
//! - [`report`]: the JSON report and the human table.
//! - [`chaos`]: the soak of the whole fleet under seeded faults (`ringbridge-perf chaos`).
//! - [`webrtc`]: the client side of a WebRTC endpoint (ICE check, dimpl's DTLS client, SRTP
//!   keys), for `ringbridge-dtlsbench` and `ringbridge-webrtcload`.

pub mod chaos;
pub mod cpu;
pub mod drive;
pub mod groups;
pub mod report;
pub mod rig;
pub mod target;
pub mod traffic;
pub mod webrtc;
