//! Seed corpora for the fuzz targets (`make fuzz`), built from the packets the tests use. The
//! test checks that each seed is what it claims (RTP parses, RTCP walks, SRTP authenticates);
//! with `RINGBRIDGE_FUZZ_SEEDS=DIR` it also writes them to `DIR/<target>/`.

use ringbridge_dataplane::core::classify::{Class, classify};
use ringbridge_dataplane::core::rtcp;
use ringbridge_dataplane::srtp::{Profile, Session};
use ringbridge_dataplane::testkit;

/// The fuzz `srtp` target's session for profile `p` (same key derivation).
fn fuzz_session(p: Profile) -> Session {
    let key: Vec<u8> = (0..p.key_len() as u8).collect();
    let salt: Vec<u8> = (0..p.salt_len() as u8).map(|b| b ^ 0x5a).collect();
    Session::new(p, &key, &salt).unwrap()
}

fn rtcp_seeds() -> Vec<Vec<u8>> {
    let mut compound = testkit::sender_report(1);
    compound.extend(testkit::pli(1, 2));
    vec![
        testkit::sender_report(1),
        testkit::pli(1, 2),
        testkit::nack(1, 2, 77),
        testkit::fir(1, &[2, 3]),
        testkit::remb(1, &[2, 3, 4]),
        compound,
    ]
}

fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let mut out = Vec::new();
    for (i, len) in [0usize, 1, 160, 1188].into_iter().enumerate() {
        out.push((
            "rtp",
            testkit::rtp(10 + i as u32, i as u16, 90 * i as u32, &vec![7u8; len]),
        ));
    }
    for r in rtcp_seeds() {
        out.push(("rtp", r.clone()));
        out.push(("rtcp", r));
    }
    for (sel, p) in Profile::ALL.into_iter().enumerate() {
        let s = fuzz_session(p);
        let plain = testkit::rtp(99, 4660, 1, &[1u8; 100]);
        let mut wire = vec![0u8; plain.len() + 64];
        let n = s.protect_rtp(&plain, 4660, &mut wire).unwrap();
        out.push(("srtp", [&[sel as u8], &wire[..n]].concat()));
        let sr = testkit::sender_report(99);
        let n = s.protect_rtcp(&sr, 1, &mut wire).unwrap();
        out.push(("srtp", [&[sel as u8], &wire[..n]].concat()));
    }
    // The `core` target: a source byte (endpoint k sends from port 5000 + k), then a packet.
    let e2 = Session::new(Profile::AeadAes128Gcm, &[1; 16], &[2; 12]).unwrap();
    let plain = testkit::rtp(20, 1, 0, &[3u8; 200]);
    let mut wire = vec![0u8; plain.len() + 64];
    let n = e2.protect_rtp(&plain, 1, &mut wire).unwrap();
    for (src, pkt) in [
        (1u8, testkit::rtp(10, 1, 0, &[5u8; 200])),
        (1, testkit::pli(10, 20)),
        (1, testkit::nack(10, 40, 3)),
        (4, testkit::sender_report(40)),
        (6, testkit::rtp(30, 1, 0, &[1u8; 20])), // latches endpoint 3
        (5, testkit::fir(50, &[10])),
        (2, wire[..n].to_vec()),
    ] {
        out.push(("core", [&[src], &pkt[..]].concat()));
    }
    // The `rewrite` target: RTP headers with one-byte and two-byte header extensions.
    for (profile, elements) in [
        (0xbedeu16, &[0x12u8, 1, 2, 3, 0x31, 7, 8, 0][..]),
        (0x1000, &[1, 3, 1, 2, 3, 3, 2, 7, 8, 0, 0, 0][..]),
    ] {
        let mut p = testkit::rtp(10, 1, 0, b"");
        p[0] |= 0x10;
        p.extend_from_slice(&profile.to_be_bytes());
        p.extend_from_slice(&((elements.len() / 4) as u16).to_be_bytes());
        p.extend_from_slice(elements);
        out.push(("rewrite", p));
    }
    // The `stun` target: connectivity checks for its agent (ufrag "fuzz", remote "peer"), with
    // and without USE-CANDIDATE.
    for nominate in [false, true] {
        out.push(("stun", stun_check(nominate)));
    }
    out
}

/// A Binding request as a browser sends it to the fuzz `stun` target's agent.
fn stun_check(nominate: bool) -> Vec<u8> {
    use ringbridge_dataplane::webrtc::stun::{
        BINDING, Class, IntegrityKey, MessageWriter, TransactionId,
    };
    let mut buf = [0u8; 200];
    let mut w =
        MessageWriter::new(&mut buf, Class::Request, BINDING, TransactionId([7; 12])).unwrap();
    w.username("fuzz:peer").unwrap();
    w.priority(0x6e7f_1eff).unwrap();
    w.ice_controlling(42).unwrap();
    if nominate {
        w.use_candidate().unwrap();
    }
    w.message_integrity(&IntegrityKey::short_term("fuzzfuzzfuzzfuzzfuzzfuzz"))
        .unwrap();
    w.fingerprint().unwrap();
    let n = w.finish();
    buf[..n].to_vec()
}

#[test]
fn seeds_are_what_they_claim_and_are_written_on_request() {
    let seeds = seeds();
    for (target, s) in &seeds {
        match *target {
            "rtp" => assert_ne!(classify(s), Class::Other),
            "rewrite" => assert_eq!(
                ringbridge_dataplane::core::rtp::Header::parse(s).map(|h| h.len),
                Ok(s.len()),
                "a whole header with its extension"
            ),
            "rtcp" => assert!(rtcp::summarize(s).is_ok()),
            "stun" => {
                use ringbridge_dataplane::webrtc::ice::{IceLite, RESPONSE_BUF_LEN};
                let mut agent =
                    IceLite::new("fuzz", "fuzzfuzzfuzzfuzzfuzzfuzz", Some("peer")).unwrap();
                let mut out = [0u8; RESPONSE_BUF_LEN];
                let from = "127.0.0.1:4000".parse().unwrap();
                assert!(
                    agent.handle_stun(s, from, 0, &mut out).is_ok(),
                    "a check it answers"
                );
            }
            "srtp" => {
                let p = Profile::ALL[usize::from(s[0]) % 4];
                let mut pkt = s[1..].to_vec();
                let sess = fuzz_session(p);
                let ok = sess.unprotect_rtp(&mut pkt.clone(), 4660).is_ok()
                    || sess.unprotect_rtcp(&mut pkt).is_ok();
                assert!(ok, "an SRTP seed authenticates");
            }
            _ => {}
        }
    }
    if let Some(dir) = std::env::var_os("RINGBRIDGE_FUZZ_SEEDS") {
        let dir = std::path::PathBuf::from(dir);
        for (i, (target, s)) in seeds.iter().enumerate() {
            let d = dir.join(target);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join(format!("seed-{i}")), s).unwrap();
        }
        std::fs::create_dir_all(dir.join("table")).unwrap();
    }
}
