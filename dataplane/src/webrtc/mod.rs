//! WebRTC transport for endpoints that speak it (browsers, OBS, WebRTC apps): the slow path beside
//! the packet path. The protocol pieces are sans-IO (time and bytes in, bytes and events out) and
//! run off the workers: the workers hand STUN (first byte 0-3) and DTLS (20-63) datagrams to the
//! bridge's transport thread through a bounded queue ([`crate::core::handoff`]), and its results
//! (the nominated address, the SRTP keys a DTLS handshake exported) reach the workers as table
//! changes, like every other change.
//!
//! - [`stun`]: the STUN codec for ICE connectivity checks (RFC 8489; RFC 5769's vectors).
//! - [`ice`]: the ICE-lite agent of one endpoint (RFC 8445 lite, consent freshness RFC 7675).
//! - [`dtls`]: the DTLS-SRTP server session of one endpoint (RFC 5764) and the bridge's certificate.
//! - [`transport`]: every WebRTC endpoint's agent and session, and what follows for the table
//!   (sans-IO).
//! - [`task`]: the transport thread that drives it (queue, media socket, publisher).

pub mod dtls;
pub mod ice;
pub mod stun;
pub mod task;
pub mod transport;
