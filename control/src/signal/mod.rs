//! Signaling: how WebRTC clients (browsers, OBS, WebRTC apps) reach the focus. The bridge side
//! of WebRTC (ICE-lite, DTLS-SRTP, per-receiver rewrites) is the data plane's; here the control
//! plane turns SDP offers into participants and answers.
//!
//! - [`sdp`]: offers parsed and checked (`webrtc-sdp`), typed errors naming what is wrong.
//! - [`answer`]: what the bridge takes of an offer, a publisher's media kept for its viewers, a
//!   viewer's rewrite, the answer's text. Pure functions: unit-tested against golden files.
//! - [`http`]: WHIP (RFC 9725) and WHEP over HTTP (axum), CORS, and the served page
//!   (`page.html`): I/O at the edge, every decision through the focus.
//! - [`room`]: rooms (conferences) for browsers: a publish session each, a watch session per
//!   other publisher, the room's events (SSE) and its page (`room.html`).

pub mod answer;
pub mod http;
pub mod room;
pub mod sdp;
