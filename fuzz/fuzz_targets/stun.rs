#![no_main]
//! STUN on the media port: arbitrary datagrams through the codec (parse, MESSAGE-INTEGRITY and
//! FINGERPRINT checks) and through an ICE-lite agent's `handle_stun`: never panics, and nothing is
//! answered unless the check authenticated (then the answer parses and verifies).
use std::net::SocketAddr;

use libfuzzer_sys::fuzz_target;
use ringbridge_dataplane::webrtc::ice::{IceLite, RESPONSE_BUF_LEN};
use ringbridge_dataplane::webrtc::stun::{IntegrityKey, Message};

const UFRAG: &str = "fuzz";
const PWD: &str = "fuzzfuzzfuzzfuzzfuzzfuzz";

fuzz_target!(|data: &[u8]| {
    let key = IntegrityKey::short_term(PWD);
    if let Ok(m) = Message::parse(data) {
        let _ = m.verify_integrity(&key);
        let _ = m.verify_fingerprint();
        let _ = (m.username(), m.priority(), m.xor_mapped_address(), m.error_code());
    }
    let mut agent = IceLite::new(UFRAG, PWD, Some("peer")).unwrap();
    let from: SocketAddr = "127.0.0.1:4000".parse().unwrap();
    let mut out = [0u8; RESPONSE_BUF_LEN];
    if let Ok(reply) = agent.handle_stun(data, from, 0, &mut out) {
        let len = reply.response_len();
        let answer = Message::parse(&out[..len]).expect("our answer parses");
        answer.verify_integrity(&key).expect("our answer authenticates");
    }
});
