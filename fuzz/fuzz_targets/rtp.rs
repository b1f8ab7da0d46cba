#![no_main]
//! The packet classifier and the RTP header parse on arbitrary datagrams.
use libfuzzer_sys::fuzz_target;
use ringbridge_dataplane::core::{classify::classify, rtp};

fuzz_target!(|data: &[u8]| {
    let _ = classify(data);
    let _ = rtp::ssrc(data);
});
