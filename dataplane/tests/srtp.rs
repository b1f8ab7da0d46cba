//! SRTP end to end over loopback, once per engine: a conference mixing plain RTP with every SRTP
//! profile, rollover across 65535, replayed and tampered packets rejected and counted, and no
//! latching on a packet that fails authentication.

mod common;

use std::time::Duration;

use common::{Bridge, Party, collect};
use ringbridge_dataplane::srtp::replay::Stream;
use ringbridge_dataplane::srtp::{Profile, Session};
use ringbridge_proto::v1 as pb;

/// A participant and, for SRTP ones, its keys.
struct Member {
    party: Party,
    keys: Option<Keys>,
}

struct Keys {
    profile: Profile,
    endpoint_key: Vec<u8>,
    bridge_key: Vec<u8>,
}

impl Keys {
    fn new(profile: Profile, seed: u8) -> Self {
        let n = profile.key_len() + profile.salt_len();
        Keys {
            profile,
            endpoint_key: (0..n as u8).map(|b| b.wrapping_mul(31) ^ seed).collect(),
            bridge_key: (0..n as u8)
                .map(|b| b.wrapping_mul(17) ^ seed ^ 0x5a)
                .collect(),
        }
    }

    fn session(&self, key: &[u8]) -> Session {
        let (k, s) = key.split_at(self.profile.key_len());
        Session::new(self.profile, k, s).unwrap()
    }

    fn params(&self) -> pb::SrtpParams {
        pb::SrtpParams {
            profile: self.profile.name().into(),
            endpoint_key: self.endpoint_key.clone(),
            bridge_key: self.bridge_key.clone(),
        }
    }
}

impl Member {
    /// RTP packet `seq` as it goes on the wire from this member.
    fn wire(&self, seq: u16, roc: u32) -> (Vec<u8>, Vec<u8>) {
        let plain = self.party.packet(seq);
        let wire = match &self.keys {
            None => plain.clone(),
            Some(k) => {
                let mut out = vec![0u8; plain.len() + 32];
                let index = (u64::from(roc) << 16) | u64::from(seq);
                let n = k
                    .session(&k.endpoint_key)
                    .protect_rtp(&plain, index, &mut out)
                    .unwrap();
                out.truncate(n);
                out
            }
        };
        (plain, wire)
    }

    /// What this member makes of what it received: plain packets, decrypted when SRTP.
    fn open(&self, got: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
        let Some(k) = &self.keys else { return got };
        let s = k.session(&k.bridge_key);
        let mut streams = std::collections::HashMap::<u32, Stream>::new();
        got.into_iter()
            .map(|mut p| {
                let ssrc = u32::from_be_bytes(p[8..12].try_into().unwrap());
                let st = streams.entry(ssrc).or_default();
                let index = st.estimate(u16::from_be_bytes([p[2], p[3]]));
                let n = s
                    .unprotect_rtp(&mut p, index)
                    .unwrap_or_else(|e| panic!("{} cannot unprotect: {e}", self.party.name));
                st.accept(index);
                p.truncate(n);
                p
            })
            .collect()
    }
}

async fn setup(b: &mut Bridge) -> Vec<Member> {
    let mut members = vec![Member {
        party: Party::new("plain", 7000),
        keys: None,
    }];
    for (i, p) in Profile::ALL.into_iter().enumerate() {
        members.push(Member {
            party: Party::new(&format!("srtp{i}"), 7001 + i as u32),
            keys: Some(Keys::new(p, i as u8 + 1)),
        });
    }
    b.conference("s").await;
    for m in &members {
        b.add_with("s", &m.party, false, m.keys.as_ref().map(Keys::params))
            .await;
    }
    members
}

/// Every member sends `count` packets from `first` on (crossing 65535 when near it); every
/// member must recover every other member's plain packets exactly once.
fn exchange_and_check(b: &Bridge, members: &[Member], first: u16, count: u16) {
    let n = members.len();
    let expected = (n - 1) * usize::from(count);
    let got: Vec<Vec<Vec<u8>>> = std::thread::scope(|s| {
        let rx: Vec<_> = members
            .iter()
            .map(|m| s.spawn(move || collect(&m.party.sock, expected, Duration::from_millis(200))))
            .collect();
        for k in 0..count {
            let seq = first.wrapping_add(k);
            let roc = u32::from(seq < first);
            for m in members {
                m.party.send(b.media, &m.wire(seq, roc).1);
            }
            if k % 8 == 7 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        rx.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (i, m) in members.iter().enumerate() {
        let mut plain = m.open(got[i].clone());
        plain.sort();
        let mut want: Vec<Vec<u8>> = members
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .flat_map(|(_, o)| (0..count).map(move |k| o.party.packet(first.wrapping_add(k))))
            .collect();
        want.sort();
        assert_eq!(plain.len(), want.len(), "{} received", m.party.name);
        assert!(
            plain == want,
            "{} got other bytes than were sent",
            m.party.name
        );
    }
}

async fn mixed_profiles_and_rollover(engine: &str) {
    let mut b = Bridge::start(engine).await;
    let members = setup(&mut b).await;
    exchange_and_check(&b, &members, 65_500, 80); // wraps at 65535: ROC 0 -> 1
    let st = b.stats().await;
    let t = st.total.unwrap();
    assert_eq!(t.dropped_packets, 0, "{:?}", t.drops);
    assert_eq!(t.tx_packets, 5 * 4 * 80);
    let list = b.list().await;
    let profiles: Vec<_> = list.conferences[0]
        .endpoints
        .iter()
        .map(|e| e.srtp_profile.clone())
        .collect();
    assert!(
        profiles.contains(&"AEAD_AES_256_GCM".to_string()) && profiles.contains(&String::new())
    );
}

async fn srtcp_between_profiles(engine: &str) {
    let mut b = Bridge::start(engine).await;
    let members = setup(&mut b).await;
    // An SR from an AES-CM endpoint reaches the plain endpoint in the clear and a GCM endpoint
    // protected with that endpoint's own keys.
    let sender = &members[1];
    let k = sender.keys.as_ref().unwrap();
    let sr = ringbridge_dataplane::testkit::sender_report(sender.party.ssrc);
    let mut wire = vec![0u8; 128];
    let n = k
        .session(&k.endpoint_key)
        .protect_rtcp(&sr, 1, &mut wire)
        .unwrap();
    sender.party.send(b.media, &wire[..n]);
    let quiet = Duration::from_millis(300);
    assert_eq!(collect(&members[0].party.sock, 1, quiet), vec![sr.clone()]);
    let gcm = &members[3];
    let gk = gcm.keys.as_ref().unwrap();
    let mut got = collect(&gcm.party.sock, 1, quiet);
    assert_eq!(got.len(), 1);
    let (len, _) = gk
        .session(&gk.bridge_key)
        .unprotect_rtcp(&mut got[0])
        .unwrap();
    assert_eq!(got[0][..len], sr[..]);
    let t = b.stats().await.total.unwrap();
    assert_eq!((t.rx_rtcp, t.tx_packets, t.dropped_packets), (1, 4, 0));
}

async fn replay_and_tamper_rejected(engine: &str) {
    let mut b = Bridge::start(engine).await;
    let members = setup(&mut b).await;
    let m = &members[2];
    let (_, good) = m.wire(10, 0);
    m.party.send(b.media, &good);
    let quiet = Duration::from_millis(300);
    assert_eq!(collect(&members[0].party.sock, 1, quiet).len(), 1);
    // Replay the same packet, then a tampered one.
    m.party.send(b.media, &good);
    let (_, mut bad) = m.wire(11, 0);
    let last = bad.len() - 1;
    bad[last] ^= 0xff;
    m.party.send(b.media, &bad);
    assert!(collect(&members[0].party.sock, 0, quiet).is_empty());
    let d = b.stats().await.total.unwrap().drops.unwrap();
    assert_eq!((d.srtp_replay, d.srtp_auth_failed), (1, 1));
}

/// A packet that fails authentication must not latch: an attacker who knows the SSRC cannot
/// redirect the endpoint's traffic to itself.
async fn no_latch_without_authentication(engine: &str) {
    let mut b = Bridge::start(engine).await;
    b.conference("l").await;
    let plain = Party::new("listener", 8000);
    b.add("l", &plain, false).await;
    let victim = Member {
        party: Party::new("victim", 8001),
        keys: Some(Keys::new(Profile::AeadAes128Gcm, 9)),
    };
    b.add_with(
        "l",
        &victim.party,
        true,
        victim.keys.as_ref().map(Keys::params),
    )
    .await;
    let attacker = Party::new("attacker", 8001);
    attacker.send(b.media, &victim.party.packet(1)); // right SSRC, no valid tag
    let quiet = Duration::from_millis(300);
    assert!(collect(&plain.sock, 0, quiet).is_empty());
    let list = b.list().await;
    assert!(list.conferences[0].endpoints.iter().all(|e| !e.latched));
    // The real endpoint's authenticated packet latches and is forwarded decrypted.
    let (p, wire) = victim.wire(2, 0);
    victim.party.send(b.media, &wire);
    assert_eq!(collect(&plain.sock, 1, quiet), vec![p]);
    let d = b.stats().await.total.unwrap().drops.unwrap();
    assert_eq!(d.srtp_auth_failed, 1);
}

/// A plain sender's RTCP reaches an SRTP receiver numbered by the bridge; a bridge process that
/// replaces another (the conference moved, a restart) under the same SDES keys numbers it past
/// every index the earlier process used: no SRTCP index (an AES-GCM nonce) is used twice under
/// one key, and the receiver's replay window takes the new ones.
async fn a_replacing_bridge_never_reuses_an_srtcp_index(engine: &str) {
    let plain = Party::new("plain", 7100);
    let gcm = Keys::new(Profile::AeadAes128Gcm, 9);
    let receiver = Party::new("gcm", 7101);
    let session = gcm.session(&gcm.bridge_key);
    let mut replay = ringbridge_dataplane::srtp::replay::Window::default();
    let mut seen = Vec::new();
    for round in 0..2 {
        let mut b = Bridge::start(engine).await;
        b.conference("s").await;
        b.add("s", &plain, false).await;
        b.add_with("s", &receiver, false, Some(gcm.params())).await;
        for _ in 0..3 {
            plain.send(
                b.media,
                &ringbridge_dataplane::testkit::sender_report(plain.ssrc),
            );
        }
        let got = collect(&receiver.sock, 3, Duration::from_millis(300));
        assert_eq!(got.len(), 3, "round {round}");
        for mut pkt in got {
            let i = session.rtcp_index(&pkt).unwrap();
            // What a receiver's SRTCP replay check does: an index used before is refused.
            replay.check(u64::from(i)).unwrap_or_else(|e| {
                panic!("round {round}: index {i} reused or too old ({e:?}); earlier {seen:?}")
            });
            replay.accept(u64::from(i));
            session.unprotect_rtcp(&mut pkt).unwrap();
            seen.push(i);
        }
        drop(b); // killed: the next round is another process with the same keys
    }
    let mut distinct = seen.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(distinct.len(), seen.len(), "{seen:?}");
}

per_engine!(
    a_replacing_bridge_never_reuses_an_srtcp_index,
    mixed_profiles_and_rollover,
    srtcp_between_profiles,
    replay_and_tamper_rejected,
    no_latch_without_authentication
);
