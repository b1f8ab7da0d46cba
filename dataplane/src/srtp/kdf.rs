//! The SRTP key derivation function (RFC 3711 section 4.3.1, key derivation rate 0), an AES
//! counter-mode PRF keyed with the master key. RFC 7714 uses it unchanged for GCM, with the
//! 96-bit master salt zero-padded to 112 bits.

use aws_lc_rs::cipher::{AES_128, AES_256, EncryptingKey, EncryptionContext, UnboundCipherKey};
use aws_lc_rs::iv::FixedLength;

/// Key derivation labels.
pub(super) const RTP_ENCRYPTION: u8 = 0;
pub(super) const RTP_AUTH: u8 = 1;
pub(super) const RTP_SALT: u8 = 2;
pub(super) const RTCP_ENCRYPTION: u8 = 3;
pub(super) const RTCP_AUTH: u8 = 4;
pub(super) const RTCP_SALT: u8 = 5;

/// Fills `out` with the key material for `label`.
pub(super) fn derive(master_key: &[u8], master_salt: &[u8], label: u8, out: &mut [u8]) {
    let alg = if master_key.len() == 32 {
        &AES_256
    } else {
        &AES_128
    };
    let key =
        EncryptingKey::ctr(UnboundCipherKey::new(alg, master_key).expect("key length checked"))
            .expect("AES-CTR");
    let mut iv = [0u8; 16];
    iv[..master_salt.len()].copy_from_slice(master_salt);
    iv[7] ^= label;
    out.fill(0);
    key.less_safe_encrypt(out, EncryptionContext::Iv128(FixedLength::from(iv)))
        .expect("AES-CTR keystream");
}
