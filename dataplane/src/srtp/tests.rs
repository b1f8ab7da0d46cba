//! RFC 3711 Appendix B and RFC 7714 section 16 test vectors, and round trips per profile.

use aws_lc_rs::cipher::{AES_128, EncryptingKey, UnboundCipherKey};

use super::session::cm_iv;
use super::*;

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn rfc3711_b3_key_derivation() {
    let key = hex("E1F97A0D3E018BE0D64FA32C06DE4139");
    let salt = hex("0EC675AD498AFEEBB6960B3AABE6");
    let mut k = [0u8; 16];
    kdf::derive(&key, &salt, 0, &mut k);
    assert_eq!(k.to_vec(), hex("C61E7A93744F39EE10734AFE3FF7A087"));
    let mut a = [0u8; 20];
    kdf::derive(&key, &salt, 1, &mut a);
    assert_eq!(a.to_vec(), hex("CEBE321F6FF7716B6FD4AB49AF256A156D38BAA4"));
    let mut s = [0u8; 14];
    kdf::derive(&key, &salt, 2, &mut s);
    assert_eq!(s.to_vec(), hex("30CBBC08863D8C85D49DB34A9AE1"));
}

#[test]
fn rfc3711_b2_aes_cm_keystream() {
    let key = EncryptingKey::ctr(
        UnboundCipherKey::new(&AES_128, &hex("2B7E151628AED2A6ABF7158809CF4F3C")).unwrap(),
    )
    .unwrap();
    let salt: [u8; 14] = hex("F0F1F2F3F4F5F6F7F8F9FAFBFCFD").try_into().unwrap();
    let mut ks = [0u8; 48];
    key.less_safe_encrypt(&mut ks, cm_iv(&salt, &[0; 4], 0))
        .unwrap();
    assert_eq!(
        ks.to_vec(),
        hex(
            "E03EAD0935C95E80E166B16DD92B4EB4 D23513162B02D0F72A43A2FE4A5F97AB \
             41E95B3BB0A2E8DD477901E4FCA894C0"
        )
    );
}

const GCM_PLAIN: &str = "8040f17b8041f8d35501a0b2 47616c6c696120657374206f6d6e69732064697669736120 \
                         696e207061727465732074726573";

#[test]
fn rfc7714_16_aead_aes_gcm_rtp() {
    let salt: [u8; 12] = hex("517569642070726f2071756f").try_into().unwrap();
    let cases = [
        (
            Profile::AeadAes128Gcm,
            hex("000102030405060708090a0b0c0d0e0f"),
            "8040f17b8041f8d35501a0b2 f24de3a3fb34de6cacba861c9d7e4bcabe633bd50d294e6f \
             42a5f47a51c7d19b36de3adf8833899d7f27beb16a9152cf765ee4390cce",
        ),
        (
            Profile::AeadAes256Gcm,
            (0u8..32).collect(),
            "8040f17b8041f8d35501a0b2 32b1de78a822fe12ef9f78fa332e33aab18012389a58e2f3 \
             b50b2a0276ffae0f1ba63799b87b7aa3db36dfffd6b0f9bb7878d7a76c13",
        ),
    ];
    for (profile, key, want) in cases {
        let s = Session::gcm_from_session_keys(profile, &key, &salt);
        let plain = hex(GCM_PLAIN);
        let mut out = [0u8; 128];
        let n = s.protect_rtp(&plain, 0xf17b, &mut out).unwrap();
        assert_eq!(out[..n].to_vec(), hex(want), "{profile:?}");
        let mut back = out[..n].to_vec();
        let m = s.unprotect_rtp(&mut back, 0xf17b).unwrap();
        assert_eq!(back[..m].to_vec(), plain);
        back[20] ^= 1;
        assert_eq!(
            s.unprotect_rtp(&mut out[..n].to_vec(), 0xf17c),
            Err(Error::Auth)
        );
    }
}

fn session(p: Profile, seed: u8) -> Session {
    let key: Vec<u8> = (0..p.key_len() as u8).map(|b| b ^ seed).collect();
    let salt: Vec<u8> = (0..p.salt_len() as u8)
        .map(|b| b.wrapping_mul(7) ^ seed)
        .collect();
    Session::new(p, &key, &salt).unwrap()
}

#[test]
fn every_profile_round_trips_and_rejects_tampering() {
    let rtp = crate::testkit::rtp(0x1234, 65_535, 99, &[7; 160]);
    let rtcp = crate::testkit::sender_report(0x1234);
    for p in Profile::ALL {
        let s = session(p, 1);
        let mut out = [0u8; 512];
        let index = (3 << 16) | 65_535;
        let n = s.protect_rtp(&rtp, index, &mut out).unwrap();
        assert_eq!(n, rtp.len() + p.rtp_overhead());
        assert_ne!(out[12..rtp.len()], rtp[12..], "{p:?} encrypts");
        let mut pkt = out[..n].to_vec();
        assert_eq!(s.unprotect_rtp(&mut pkt, index), Ok(rtp.len()));
        assert_eq!(pkt[..rtp.len()], rtp[..]);
        // Wrong ROC, flipped bit, other key: all fail authentication.
        assert_eq!(
            s.unprotect_rtp(&mut out[..n].to_vec(), 65_535),
            Err(Error::Auth)
        );
        let mut bad = out[..n].to_vec();
        bad[13] ^= 0x80;
        assert_eq!(s.unprotect_rtp(&mut bad, index), Err(Error::Auth));
        assert_eq!(
            session(p, 2).unprotect_rtp(&mut out[..n].to_vec(), index),
            Err(Error::Auth)
        );
        assert_eq!(
            s.unprotect_rtp(&mut out[..14].to_vec(), index),
            Err(Error::Short)
        );

        let n = s.protect_rtcp(&rtcp, 77, &mut out).unwrap();
        assert_eq!(n, rtcp.len() + p.rtcp_overhead());
        assert_eq!(s.rtcp_index(&out[..n]), Ok(77));
        let mut pkt = out[..n].to_vec();
        assert_eq!(s.unprotect_rtcp(&mut pkt), Ok((rtcp.len(), 77)));
        assert_eq!(pkt[..rtcp.len()], rtcp[..]);
        let mut bad = out[..n].to_vec();
        bad[9] ^= 1;
        assert_eq!(s.unprotect_rtcp(&mut bad), Err(Error::Auth));
    }
}

#[test]
fn names_and_lengths() {
    for p in Profile::ALL {
        assert_eq!(Profile::from_name(p.name()), Some(p));
    }
    assert_eq!(
        Profile::from_name("SRTP_AES128_CM_SHA1_80"),
        Some(Profile::AesCm128HmacSha1_80)
    );
    assert!(Session::new(Profile::AeadAes256Gcm, &[0; 16], &[0; 12]).is_err());
    assert_eq!(
        rtp_header_len(&[
            0x90, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xbe, 0xde, 0, 1, 0, 0, 0, 0
        ]),
        Some(20)
    );
    assert_eq!(
        rtp_header_len(&[0x90, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xbe, 0xde, 0, 2]),
        None
    );
}
