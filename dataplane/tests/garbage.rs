//! A flood of garbage (random bytes, wrong version, truncated RTP, strangers, undeclared SSRCs,
//! relay packets from nobody's relay) is dropped and counted by reason while a live conference
//! keeps forwarding exactly.

mod common;

use std::time::Duration;

use common::{Bridge, Party, assert_exact, exchange};
use ringbridge_dataplane::testkit;

const EACH: u64 = 3000;

struct XorShift(u64);

impl XorShift {
    fn fill(&mut self, b: &mut [u8]) {
        for x in b {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            *x = self.0 as u8;
        }
    }
}

async fn garbage_flood(engine: &str) {
    let mut b = Bridge::start(engine).await;
    let ps: Vec<Party> = (0..3)
        .map(|i| Party::new(&format!("g{i}"), 60 + i))
        .collect();
    b.conference("live").await;
    for p in &ps {
        b.add("live", p, false).await;
    }
    // Garbage comes both from a stranger and from a participant's own address.
    let stranger = Party::new("stranger", 0xbad);
    let insider = ps[0].sock.try_clone().unwrap();
    let media = b.media;
    let flood = std::thread::spawn(move || {
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        let mut buf = [0u8; 300];
        for i in 0..EACH {
            rng.fill(&mut buf);
            // Random bytes that are not RTP version 2, nor STUN (0-3) or DTLS (20-63), which go
            // to the WebRTC transport (their flood: tests/webrtc.rs)...
            buf[0] = 4 + buf[0] % 16;
            if buf[0] == ringbridge_dataplane::core::relay::TYPE {
                buf[0] += 1; // ...nor a relay packet (a class of its own, below)
            }
            let len = 1 + (i as usize * 7) % 299;
            stranger.send(media, &buf[..len]);
            // Random bytes that look like a relay packet, from nobody's relay.
            buf[0] = ringbridge_dataplane::core::relay::TYPE;
            buf[1] = ringbridge_dataplane::core::relay::VERSION;
            stranger.send(media, &buf[..40]);
            let mut v1 = testkit::rtp(60, i as u16, 0, b"old");
            v1[0] = 0x40; // RTP version 1
            insider.send_to(&v1, media).unwrap();
            let full = testkit::rtp(61, i as u16, 0, &[0; 40]);
            insider
                .send_to(&full[..5 + (i as usize % 7)], media)
                .unwrap(); // truncated header
            stranger.send(media, &testkit::rtp(0xbad, i as u16, 0, b"who")); // unknown source
            insider
                .send_to(&testkit::rtp(0xbad, i as u16, 0, b"ssrc"), media)
                .unwrap(); // undeclared
            if i % 50 == 49 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    });
    let refs: Vec<&Party> = ps.iter().collect();
    let count = 200;
    let got = exchange(&refs, b.media, count, &[2 * count as usize; 3]);
    flood.join().unwrap();
    assert_exact(&refs, &got, count);
    let t = b.stats().await.total.unwrap();
    let d = t.drops.unwrap();
    assert_eq!(d.not_rtp, 2 * EACH, "random bytes and RTP version 1");
    assert_eq!(d.malformed, EACH, "truncated RTP");
    assert_eq!(d.unknown_source, EACH);
    assert_eq!(d.unknown_ssrc, EACH);
    assert_eq!(d.unknown_relay, EACH);
    assert_eq!(t.dropped_packets, 6 * EACH);
    assert_eq!(t.rx_packets, 6 * EACH + 3 * u64::from(count));
    assert_eq!(t.tx_packets, 6 * u64::from(count));
}

per_engine!(garbage_flood);
