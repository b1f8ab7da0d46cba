//! SRTP and SRTCP (RFC 3711, RFC 7714) for the packet path, sans-IO.
//!
//! - [`Profile`]: the four protection profiles and their lengths.
//! - [`Session`]: keys derived from one master key + salt (both RTP and RTCP), able to protect
//!   and unprotect. Immutable: shared read-only between workers.
//! - [`replay`]: rollover-counter estimation and the 128-packet replay window, the per-SSRC
//!   mutable state that lives on the worker handling the sender.
//!
//! Ciphers come from aws-lc-rs (AES-CTR, HMAC-SHA1, AES-GCM); this module does the framing.

mod kdf;
pub mod replay;
mod session;

pub use session::Session;

/// A protection profile (RFC 4568 crypto-suite names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// AES-128 counter mode, HMAC-SHA1 with an 80-bit tag.
    AesCm128HmacSha1_80,
    /// AES-128 counter mode, HMAC-SHA1 with a 32-bit RTP tag (80-bit for RTCP).
    AesCm128HmacSha1_32,
    /// AES-128-GCM AEAD, 128-bit tag (RFC 7714).
    AeadAes128Gcm,
    /// AES-256-GCM AEAD, 128-bit tag (RFC 7714).
    AeadAes256Gcm,
}

impl Profile {
    /// All profiles.
    pub const ALL: [Profile; 4] = [
        Self::AesCm128HmacSha1_80,
        Self::AesCm128HmacSha1_32,
        Self::AeadAes128Gcm,
        Self::AeadAes256Gcm,
    ];

    /// The SDES crypto-suite name (also accepted: the DTLS-SRTP names).
    pub fn name(self) -> &'static str {
        self.row().0
    }

    /// Parses a crypto-suite name.
    pub fn from_name(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.name() == s).or(match s {
            "SRTP_AES128_CM_SHA1_80" | "SRTP_AES128_CM_HMAC_SHA1_80" => {
                Some(Self::AesCm128HmacSha1_80)
            }
            "SRTP_AES128_CM_SHA1_32" | "SRTP_AES128_CM_HMAC_SHA1_32" => {
                Some(Self::AesCm128HmacSha1_32)
            }
            "SRTP_AEAD_AES_128_GCM" => Some(Self::AeadAes128Gcm),
            "SRTP_AEAD_AES_256_GCM" => Some(Self::AeadAes256Gcm),
            _ => None,
        })
    }

    /// This profile's row of the API's profile table (same order as [`Profile::ALL`]).
    fn row(self) -> (&'static str, usize, usize) {
        ringbridge_proto::srtp::PROFILES[self as usize]
    }

    /// Master key length in bytes.
    pub fn key_len(self) -> usize {
        self.row().1
    }

    /// Master salt length in bytes.
    pub fn salt_len(self) -> usize {
        self.row().2
    }

    /// True for the GCM profiles.
    pub fn is_aead(self) -> bool {
        matches!(self, Self::AeadAes128Gcm | Self::AeadAes256Gcm)
    }

    /// Bytes SRTP adds to an RTP packet.
    pub fn rtp_overhead(self) -> usize {
        match self {
            Self::AesCm128HmacSha1_80 => 10,
            Self::AesCm128HmacSha1_32 => 4,
            _ => 16,
        }
    }

    /// Bytes SRTCP adds to an RTCP packet (tag plus the 4-byte E flag and index).
    pub fn rtcp_overhead(self) -> usize {
        if self.is_aead() { 16 + 4 } else { 10 + 4 }
    }
}

/// Why a packet failed SRTP processing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Too short for its header and tag.
    #[error("packet too short")]
    Short,
    /// The authentication tag did not verify.
    #[error("authentication failed")]
    Auth,
    /// Already received, or too old for the replay window.
    #[error("replayed packet")]
    Replay,
    /// Output buffer too small.
    #[error("output buffer too small")]
    NoRoom,
}

/// Length of the RTP header (fixed part, CSRCs and extension) of `pkt`, if it fits (for
/// callers outside the core, which parses the header itself and passes its length).
pub fn rtp_header_len(pkt: &[u8]) -> Option<usize> {
    crate::core::rtp::Header::parse(pkt).ok().map(|h| h.len)
}

#[cfg(test)]
mod tests;

/// SRTCP indices per second of wall-clock time [`first_srtcp_index`] moves by.
pub const SRTCP_INDEX_PER_SEC: u64 = 256;

/// The first SRTCP index this process gives an RTCP stream it numbers itself (a plain sender's
/// RTCP protected for an SRTP receiver, the bridge's own RTCP): [`SRTCP_INDEX_PER_SEC`] per
/// second of wall-clock time since the Unix epoch, mod 2^31. A bridge process that replaces
/// another under the same SDES keys (a conference moved, a restart) thus starts past every
/// index the earlier one used, as long as that one sent fewer than 256 RTCP packets per second
/// on the stream: an index is never used twice under one key (AES-GCM's nonce), and the
/// receiver's replay window takes the jump forward. The 31-bit index wraps after 97 days of
/// wall-clock time, which SDES keys should not outlive (RFC 3711 9.2: rekey before it wraps).
pub fn first_srtcp_index() -> u32 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    srtcp_index_at(now.as_millis() as u64)
}

/// [`first_srtcp_index`] at `unix_ms`.
pub fn srtcp_index_at(unix_ms: u64) -> u32 {
    ((unix_ms.wrapping_mul(SRTCP_INDEX_PER_SEC) / 1000) & 0x7fff_ffff) as u32
}

#[cfg(test)]
mod index_tests {
    use super::*;

    #[test]
    fn a_later_process_starts_past_an_earlier_one() {
        // A process started at t sent 255 RTCP packets per second for an hour; its successor,
        // started right after, starts past all of them.
        let t = 1_796_000_000_000;
        let last_of_earlier = srtcp_index_at(t) + 255 * 3600;
        assert!(srtcp_index_at(t + 3_600_000) > last_of_earlier);
        assert!(srtcp_index_at(t) <= 0x7fff_ffff);
        assert_ne!(first_srtcp_index(), 0);
    }
}
