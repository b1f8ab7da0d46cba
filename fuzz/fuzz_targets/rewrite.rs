#![no_main]
//! A receiver's rewrite (payload type, RFC 8285 one-byte and two-byte extension walks) on
//! arbitrary RTP headers: never panics, never changes the length, the version/CSRC byte or the
//! SSRC.
use libfuzzer_sys::fuzz_target;
use ringbridge_dataplane::core::Rewrite;

fuzz_target!(|data: &[u8]| {
    thread_local!(static RW: Rewrite =
        Rewrite::new(&[(96, 100), (0, 127)], &[(1, 0), (3, 14), (5, 200), (255, 1)])
            .unwrap()
            .unwrap());
    let mut hdr = data.to_vec();
    RW.with(|r| r.apply(&mut hdr));
    assert_eq!(hdr.len(), data.len());
    if data.len() >= 12 {
        assert_eq!(hdr[0], data[0]);
        assert_eq!(hdr[8..12], data[8..12]);
    }
});
