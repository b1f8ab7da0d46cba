//! Session keys of one direction of one endpoint and the RTP/RTCP transforms.

use aws_lc_rs::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use aws_lc_rs::cipher::{AES_128, EncryptingKey, EncryptionContext, UnboundCipherKey};
use aws_lc_rs::constant_time::verify_slices_are_equal;
use aws_lc_rs::hmac;
use aws_lc_rs::iv::FixedLength;

use super::kdf::{self, derive};
use super::{Error, Profile, rtp_header_len};

/// Bit that marks an SRTCP packet as encrypted.
const E_FLAG: u32 = 1 << 31;

// Sessions are few and never moved on the packet path; boxing would add an indirection there.
#[allow(clippy::large_enum_variant)]
enum Keys {
    Cm {
        enc: EncryptingKey,
        auth: hmac::Key,
        salt: [u8; 14],
        tag: usize,
    },
    Gcm {
        key: LessSafeKey,
        salt: [u8; 12],
    },
}

/// One direction's keys (RTP and RTCP) derived from a master key and salt.
pub struct Session {
    profile: Profile,
    rtp: Keys,
    rtcp: Keys,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("profile", &self.profile)
            .finish_non_exhaustive()
    }
}

impl Keys {
    fn new(profile: Profile, key: &[u8], salt: &[u8], labels: [u8; 3], rtp: bool) -> Self {
        let [enc_l, auth_l, salt_l] = labels;
        if profile.is_aead() {
            let mut k = [0u8; 32];
            let k = &mut k[..profile.key_len()];
            derive(key, salt, enc_l, k);
            let mut s = [0u8; 12];
            derive(key, salt, salt_l, &mut s);
            let alg = if k.len() == 32 {
                &aead::AES_256_GCM
            } else {
                &aead::AES_128_GCM
            };
            Keys::Gcm {
                key: LessSafeKey::new(UnboundKey::new(alg, k).expect("GCM key length")),
                salt: s,
            }
        } else {
            let mut k = [0u8; 16];
            derive(key, salt, enc_l, &mut k);
            let mut a = [0u8; 20];
            derive(key, salt, auth_l, &mut a);
            let mut s = [0u8; 14];
            derive(key, salt, salt_l, &mut s);
            let tag = if rtp { profile.rtp_overhead() } else { 10 };
            Keys::Cm {
                enc: EncryptingKey::ctr(UnboundCipherKey::new(&AES_128, &k).expect("AES key"))
                    .expect("AES-CTR"),
                auth: hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, &a),
                salt: s,
                tag,
            }
        }
    }
}

/// XORs `ssrc` and `index` (shifted as RFC 3711 section 4.1.1 says) into the CM IV.
pub(super) fn cm_iv(salt: &[u8; 14], ssrc: &[u8], index: u64) -> EncryptionContext {
    let mut iv = [0u8; 16];
    iv[..14].copy_from_slice(salt);
    for (b, s) in iv[4..8].iter_mut().zip(ssrc) {
        *b ^= s;
    }
    for (b, s) in iv[8..14].iter_mut().zip(&index.to_be_bytes()[2..]) {
        *b ^= s;
    }
    EncryptionContext::Iv128(FixedLength::from(iv))
}

/// The GCM nonce: salt XOR (0x0000 || SSRC || 48-bit index), RFC 7714 sections 8.1 and 9.1.
fn gcm_nonce(salt: &[u8; 12], ssrc: &[u8], index: u64) -> Nonce {
    let mut n = *salt;
    for (b, s) in n[2..6].iter_mut().zip(ssrc) {
        *b ^= s;
    }
    for (b, s) in n[6..12].iter_mut().zip(&index.to_be_bytes()[2..]) {
        *b ^= s;
    }
    Nonce::assume_unique_for_key(n)
}

/// HMAC-SHA1 over `parts` in order (the full 20-byte tag; callers truncate).
fn cm_tag(auth: &hmac::Key, parts: &[&[u8]]) -> hmac::Tag {
    let mut ctx = hmac::Context::with_key(auth);
    for p in parts {
        ctx.update(p);
    }
    ctx.sign()
}

impl Session {
    /// Derives the session keys of `profile` from a master key and salt.
    pub fn new(profile: Profile, master_key: &[u8], master_salt: &[u8]) -> Result<Self, String> {
        if master_key.len() != profile.key_len() || master_salt.len() != profile.salt_len() {
            return Err(format!(
                "{} needs a {}-byte master key and a {}-byte master salt, not {} and {}",
                profile.name(),
                profile.key_len(),
                profile.salt_len(),
                master_key.len(),
                master_salt.len()
            ));
        }
        Ok(Self {
            profile,
            rtp: Keys::new(
                profile,
                master_key,
                master_salt,
                [kdf::RTP_ENCRYPTION, kdf::RTP_AUTH, kdf::RTP_SALT],
                true,
            ),
            rtcp: Keys::new(
                profile,
                master_key,
                master_salt,
                [kdf::RTCP_ENCRYPTION, kdf::RTCP_AUTH, kdf::RTCP_SALT],
                false,
            ),
        })
    }

    /// The profile.
    pub fn profile(&self) -> Profile {
        self.profile
    }

    /// Verifies and decrypts an SRTP packet in place, given its 48-bit `index`; returns the
    /// length of the plain RTP packet at the start of `pkt`.
    pub fn unprotect_rtp(&self, pkt: &mut [u8], index: u64) -> Result<usize, Error> {
        let hl = rtp_header_len(pkt).ok_or(Error::Short)?;
        self.unprotect_rtp_hl(pkt, hl, index)
    }

    /// [`Session::unprotect_rtp`] for a packet whose RTP header length `hl` the caller parsed.
    pub fn unprotect_rtp_hl(&self, pkt: &mut [u8], hl: usize, index: u64) -> Result<usize, Error> {
        let overhead = self.profile.rtp_overhead();
        if pkt.len() < hl + overhead {
            return Err(Error::Short);
        }
        let (head, body) = pkt.split_at_mut(hl);
        match &self.rtp {
            Keys::Cm {
                enc,
                auth,
                salt,
                tag,
            } => {
                let end = body.len() - tag;
                let roc = ((index >> 16) as u32).to_be_bytes();
                let (payload, got) = body.split_at_mut(end);
                let want = cm_tag(auth, &[head, payload, &roc]);
                verify_slices_are_equal(&want.as_ref()[..*tag], got).map_err(|_| Error::Auth)?;
                enc.less_safe_encrypt(payload, cm_iv(salt, &head[8..12], index))
                    .map_err(|_| Error::Auth)?;
                Ok(hl + end)
            }
            Keys::Gcm { key, salt } => {
                let nonce = gcm_nonce(salt, &head[8..12], index);
                let plain = key
                    .open_in_place(nonce, Aad::from(&*head), body)
                    .map_err(|_| Error::Auth)?;
                Ok(hl + plain.len())
            }
        }
    }

    /// Protects the plain RTP packet `plain` with packet index `index` into `out`; returns the
    /// SRTP packet's length. One copy into `out`, then encryption in place there.
    pub fn protect_rtp(&self, plain: &[u8], index: u64, out: &mut [u8]) -> Result<usize, Error> {
        let hl = rtp_header_len(plain).ok_or(Error::Short)?;
        self.protect_rtp_hl(plain, hl, index, out)
    }

    /// [`Session::protect_rtp`] for a packet whose RTP header length `hl` the caller parsed (the
    /// core parses it once per packet, not once per protected copy).
    pub fn protect_rtp_hl(
        &self,
        plain: &[u8],
        hl: usize,
        index: u64,
        out: &mut [u8],
    ) -> Result<usize, Error> {
        self.protect_rtp_edited(plain, hl, index, out, |_| {})
    }

    /// [`Session::protect_rtp_hl`] that lets `edit` change the copy's header (`hl` bytes, in
    /// `out`) before it is protected: a receiver's own rewrite (payload type, extension ids)
    /// costs no extra copy and leaves `plain` untouched. `edit` must keep the SSRC.
    pub fn protect_rtp_edited(
        &self,
        plain: &[u8],
        hl: usize,
        index: u64,
        out: &mut [u8],
        edit: impl FnOnce(&mut [u8]),
    ) -> Result<usize, Error> {
        self.protect_rtp_whole(plain, hl, index, out, |p| edit(&mut p[..hl]))
    }

    /// [`Session::protect_rtp_edited`] whose `edit` may change the whole copy (header and
    /// payload, not its length) before it is protected under `index`, SSRC included: a
    /// simulcast receiver's stream is a rewrite of the layer it is on.
    pub fn protect_rtp_whole(
        &self,
        plain: &[u8],
        hl: usize,
        index: u64,
        out: &mut [u8],
        edit: impl FnOnce(&mut [u8]),
    ) -> Result<usize, Error> {
        if hl > plain.len() {
            return Err(Error::Short);
        }
        let total = plain.len() + self.profile.rtp_overhead();
        let out = out.get_mut(..total).ok_or(Error::NoRoom)?;
        out[..plain.len()].copy_from_slice(plain);
        edit(&mut out[..plain.len()]);
        let (head, body) = out.split_at_mut(hl);
        let plen = plain.len() - hl;
        match &self.rtp {
            Keys::Cm {
                enc,
                auth,
                salt,
                tag,
            } => {
                let (payload, tag_out) = body.split_at_mut(plen);
                enc.less_safe_encrypt(payload, cm_iv(salt, &head[8..12], index))
                    .map_err(|_| Error::NoRoom)?;
                let roc = ((index >> 16) as u32).to_be_bytes();
                let t = cm_tag(auth, &[head, payload, &roc]);
                tag_out.copy_from_slice(&t.as_ref()[..*tag]);
            }
            Keys::Gcm { key, salt } => {
                let nonce = gcm_nonce(salt, &head[8..12], index);
                let (payload, tag_out) = body.split_at_mut(plen);
                let t = key
                    .seal_in_place_separate_tag(nonce, Aad::from(&*head), payload)
                    .map_err(|_| Error::NoRoom)?;
                tag_out.copy_from_slice(t.as_ref());
            }
        }
        Ok(total)
    }

    /// The SRTCP index of a protected RTCP packet (without verifying it).
    pub fn rtcp_index(&self, pkt: &[u8]) -> Result<u32, Error> {
        let trailer = match self.profile.is_aead() {
            // header | ciphertext | tag | E+index
            true => pkt.len().checked_sub(4),
            // header | ciphertext | E+index | tag
            false => pkt.len().checked_sub(14),
        };
        let at = trailer.filter(|_| pkt.len() >= 8 + self.profile.rtcp_overhead());
        let at = at.ok_or(Error::Short)?;
        let v = u32::from_be_bytes(pkt[at..at + 4].try_into().expect("4 bytes"));
        Ok(v & !E_FLAG)
    }

    /// Verifies and decrypts an SRTCP packet in place; returns the plain RTCP length and its
    /// SRTCP index.
    pub fn unprotect_rtcp(&self, pkt: &mut [u8]) -> Result<(usize, u32), Error> {
        let index = self.rtcp_index(pkt)?;
        let len = pkt.len();
        match &self.rtcp {
            Keys::Cm {
                enc,
                auth,
                salt,
                tag,
            } => {
                let (signed, got) = pkt.split_at_mut(len - tag);
                let want = cm_tag(auth, &[signed]);
                verify_slices_are_equal(&want.as_ref()[..*tag], got).map_err(|_| Error::Auth)?;
                let e = u32::from_be_bytes(signed[signed.len() - 4..].try_into().expect("4"));
                let end = signed.len() - 4;
                if e & E_FLAG != 0 {
                    let (head, body) = signed[..end].split_at_mut(8);
                    enc.less_safe_encrypt(body, cm_iv(salt, &head[4..8], u64::from(index)))
                        .map_err(|_| Error::Auth)?;
                }
                Ok((end, index))
            }
            Keys::Gcm { key, salt } => {
                let e_index: [u8; 4] = pkt[len - 4..].try_into().expect("4");
                let (head, body) = pkt[..len - 4].split_at_mut(8);
                let mut aad = [0u8; 12];
                aad[..8].copy_from_slice(head);
                aad[8..].copy_from_slice(&e_index);
                let nonce = gcm_nonce(salt, &head[4..8], u64::from(index));
                if u32::from_be_bytes(e_index) & E_FLAG == 0 {
                    return Err(Error::Auth); // unencrypted SRTCP with GCM: not supported
                }
                let plain = key
                    .open_in_place(nonce, Aad::from(aad), body)
                    .map_err(|_| Error::Auth)?;
                Ok((8 + plain.len(), index))
            }
        }
    }

    /// Protects the plain RTCP packet `plain` with SRTCP index `index` into `out`.
    pub fn protect_rtcp(&self, plain: &[u8], index: u32, out: &mut [u8]) -> Result<usize, Error> {
        if plain.len() < 8 {
            return Err(Error::Short);
        }
        let total = plain.len() + self.profile.rtcp_overhead();
        let out = out.get_mut(..total).ok_or(Error::NoRoom)?;
        out[..plain.len()].copy_from_slice(plain);
        let e_index = (E_FLAG | (index & !E_FLAG)).to_be_bytes();
        let n = plain.len();
        match &self.rtcp {
            Keys::Cm {
                enc,
                auth,
                salt,
                tag,
            } => {
                let (head, body) = out[..n].split_at_mut(8);
                enc.less_safe_encrypt(body, cm_iv(salt, &head[4..8], u64::from(index)))
                    .map_err(|_| Error::NoRoom)?;
                out[n..n + 4].copy_from_slice(&e_index);
                let t = cm_tag(auth, &[&out[..n + 4]]);
                out[n + 4..n + 4 + tag].copy_from_slice(&t.as_ref()[..*tag]);
            }
            Keys::Gcm { key, salt } => {
                let mut aad = [0u8; 12];
                aad[..8].copy_from_slice(&out[..8]);
                aad[8..].copy_from_slice(&e_index);
                let (head, body) = out[..n].split_at_mut(8);
                let nonce = gcm_nonce(salt, &head[4..8], u64::from(index));
                let t = key
                    .seal_in_place_separate_tag(nonce, Aad::from(aad), body)
                    .map_err(|_| Error::NoRoom)?;
                out[n..n + 16].copy_from_slice(t.as_ref());
                out[n + 16..n + 20].copy_from_slice(&e_index);
            }
        }
        Ok(total)
    }
}

#[cfg(test)]
impl Session {
    /// A GCM session from raw session keys (RFC 7714's vectors give those, not master keys).
    pub(super) fn gcm_from_session_keys(profile: Profile, key: &[u8], salt: &[u8; 12]) -> Self {
        let alg = if key.len() == 32 {
            &aead::AES_256_GCM
        } else {
            &aead::AES_128_GCM
        };
        let keys = || Keys::Gcm {
            key: LessSafeKey::new(UnboundKey::new(alg, key).unwrap()),
            salt: *salt,
        };
        Self {
            profile,
            rtp: keys(),
            rtcp: keys(),
        }
    }
}
