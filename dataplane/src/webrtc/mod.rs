//! WebRTC transport for endpoints that speak it (browsers, OBS, WebRTC apps): the slow path beside
//! the packet path. The protocol pieces are sans-IO (time and bytes in, bytes and events out) and
//! run off the workers: STUN (first byte 0-3) and DTLS (20-63) datagrams reach the bridge's
//! transport thread through a bounded queue ([`crate::core::handoff`]), put there by the thread
//! of [`inbox`] when the kernel steers them to a socket of their own ([`crate::engine::steer`]),
//! else by the workers that received them; its results
//! (the nominated address, the SRTP keys a DTLS handshake exported) reach the workers as table
//! changes, like every other change.
//!
//! - [`stun`]: the STUN codec for ICE connectivity checks (RFC 8489; RFC 5769's vectors).
//! - [`ice`]: the ICE-lite agent of one endpoint (RFC 8445 lite, consent freshness RFC 7675).
//! - [`dtls`]: the DTLS-SRTP server session of one endpoint (RFC 5764) and the bridge's certificate.
//! - [`transport`]: every WebRTC endpoint's agent and session, and what follows for the table
//!   (sans-IO).
//! - [`inbox`]: the thread receiving on the transport's own socket (kernel steering).
//! - [`task`]: the transport thread that drives it (queue, media socket, publisher).

pub mod dtls;
pub mod ice;
pub mod inbox;
pub mod stun;
pub mod task;
pub mod transport;
