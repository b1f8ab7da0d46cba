#![no_main]
//! SRTP and SRTCP with a valid context of every profile: unprotecting arbitrary bytes never
//! panics and never authenticates (a forged tag passes with negligible probability), and
//! protect -> unprotect of an arbitrary plain packet gives it back exactly.
use libfuzzer_sys::fuzz_target;
use ringbridge_dataplane::srtp::{Profile, Session};

fn session(p: Profile) -> Session {
    let key: Vec<u8> = (0..p.key_len() as u8).collect();
    let salt: Vec<u8> = (0..p.salt_len() as u8).map(|b| b ^ 0x5a).collect();
    Session::new(p, &key, &salt).unwrap()
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let p = Profile::ALL[usize::from(sel) % Profile::ALL.len()];
    let s = session(p);
    let index = u64::from(sel >> 2) << 16
        | u64::from(
            rest.get(2..4)
                .map_or(0, |b| u16::from_be_bytes([b[0], b[1]])),
        );
    // Arbitrary bytes as SRTP and as SRTCP.
    let mut pkt = rest.to_vec();
    let _ = s.unprotect_rtp(&mut pkt, index);
    let mut pkt = rest.to_vec();
    let _ = s.unprotect_rtcp(&mut pkt);
    // Round trip: arbitrary bytes behind a valid RTP header.
    if rest.len() >= 12 && rest.len() <= 1400 {
        let mut plain = rest.to_vec();
        plain[0] = 0x80;
        plain[1] &= 0x7f;
        let mut wire = vec![0u8; plain.len() + 64];
        if let Ok(n) = s.protect_rtp(&plain, index, &mut wire) {
            wire.truncate(n);
            let m = s
                .unprotect_rtp(&mut wire, index)
                .expect("own packet authenticates");
            assert_eq!(&wire[..m], &plain[..]);
        }
    }
});
