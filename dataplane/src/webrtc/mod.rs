//! WebRTC transport for endpoints that speak it (browsers, OBS, WebRTC apps): the slow path beside
//! the packet path. Everything here is sans-IO (time and bytes in, bytes and events out) and runs
//! off the workers: the workers hand STUN (first byte 0-3) and DTLS (20-63) datagrams to a
//! transport task through a bounded queue, and its results (the nominated address, the SRTP keys a
//! DTLS handshake exported) reach the workers as table changes, like every other change.
//!
//! - [`stun`]: the STUN codec for ICE connectivity checks (RFC 8489; RFC 5769's vectors).
//! - [`ice`]: the ICE-lite agent of one endpoint (RFC 8445 lite, consent freshness RFC 7675).
//! - [`dtls`]: the DTLS-SRTP server session of one endpoint (RFC 5764) and the bridge's certificate.

pub mod dtls;
pub mod ice;
pub mod stun;
