//! Relays (Octo) between real bridge processes: a conference on two bridges, relayed both ways,
//! delivers every participant's packets to every other participant exactly once, byte for byte,
//! never back to the sender, plain and SRTP mixed across bridges. With a test socket posing as
//! the remote bridge: forged, replayed and unknown-link relay packets are dropped and counted, a
//! packet from one relay never goes to another, feedback about a remote sender crosses the relay
//! (only towards the bridge that hosts the sender, in a mesh of three), bad relay requests name
//! the field and change nothing, and the largest endpoint datagram crosses a relay while one
//! byte more is dropped where it arrives.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use common::{Bridge, Party, collect, relay_req};
use ringbridge_dataplane::core::relay::{HEADER_LEN, Header, Relay};
use ringbridge_dataplane::srtp::{Profile, Session};
use ringbridge_dataplane::testkit;
use ringbridge_proto::v1 as pb;
use tonic::Code;

const KA: [u8; 16] = [0xa1; 16];
const KB: [u8; 16] = [0xb2; 16];

const PROFILE: Profile = Profile::AeadAes128Gcm;

/// A participant, its bridge's media address and, for SRTP, (protect own, unprotect received).
type Member<'a> = (&'a Party, SocketAddr, Option<(Session, Session)>);

fn session(key: &[u8]) -> Session {
    let (k, s) = key.split_at(PROFILE.key_len());
    Session::new(PROFILE, k, s).unwrap()
}

fn srtp_params(ep: &[u8], br: &[u8]) -> pb::SrtpParams {
    pb::SrtpParams {
        profile: PROFILE.name().into(),
        endpoint_key: ep.to_vec(),
        bridge_key: br.to_vec(),
    }
}

async fn relayed_conference_delivers_every_packet_once(engine: &str) {
    let mut a = Bridge::start(engine).await;
    let mut b = Bridge::start(engine).await;
    a.conference("c").await;
    b.conference("c").await;
    a.client
        .add_relay(relay_req("c", "b", b.media, 7, &KA, &KB))
        .await
        .unwrap();
    b.client
        .add_relay(relay_req("c", "a", a.media, 7, &KB, &KA))
        .await
        .unwrap();
    // a1, a2 (SRTP) on A; b1, b2 (SRTP) on B.
    let (a1, a2, b1, b2) = (
        Party::new("a1", 11),
        Party::new("a2", 12),
        Party::new("b1", 21),
        Party::new("b2", 22),
    );
    let keys = |seed: u8| -> (Vec<u8>, Vec<u8>) {
        let n = PROFILE.key_len() + PROFILE.salt_len();
        (vec![seed; n], vec![seed ^ 0x55; n])
    };
    let (a2_ep, a2_br) = keys(1);
    let (b2_ep, b2_br) = keys(2);
    a.add("c", &a1, false).await;
    a.add_with("c", &a2, false, Some(srtp_params(&a2_ep, &a2_br)))
        .await;
    b.add("c", &b1, false).await;
    b.add_with("c", &b2, false, Some(srtp_params(&b2_ep, &b2_br)))
        .await;
    let l = b.list().await;
    assert_eq!(l.conferences[0].relays[0].remote_addr, a.media.to_string());

    // (party, its bridge, its SRTP keys: protect own, unprotect what it gets)
    let parties: [Member; 4] = [
        (&a1, a.media, None),
        (&a2, a.media, Some((session(&a2_ep), session(&a2_br)))),
        (&b1, b.media, None),
        (&b2, b.media, Some((session(&b2_ep), session(&b2_br)))),
    ];
    const N: u16 = 40;
    let got: Vec<Vec<Vec<u8>>> = std::thread::scope(|s| {
        let rx: Vec<_> = parties
            .iter()
            .map(|(p, _, _)| {
                s.spawn(move || collect(&p.sock, 3 * N as usize, Duration::from_millis(300)))
            })
            .collect();
        for n in 0..N {
            for (p, media, srtp) in &parties {
                let plain = p.packet(n);
                let wire = match srtp {
                    None => plain,
                    Some((tx, _)) => {
                        let mut out = vec![0u8; plain.len() + 32];
                        let m = tx.protect_rtp(&plain, u64::from(n), &mut out).unwrap();
                        out.truncate(m);
                        out
                    }
                };
                p.send(*media, &wire);
            }
            if n % 8 == 7 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        rx.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (i, (p, _, srtp)) in parties.iter().enumerate() {
        let mut plain: Vec<Vec<u8>> = got[i]
            .iter()
            .map(|w| match srtp {
                None => w.clone(),
                Some((_, rx)) => {
                    let mut w = w.clone();
                    let n = u16::from_be_bytes([w[2], w[3]]);
                    let m = rx
                        .unprotect_rtp(&mut w, u64::from(n))
                        .expect("decrypts with its key");
                    w.truncate(m);
                    w
                }
            })
            .collect();
        plain.sort();
        let mut want: Vec<Vec<u8>> = parties
            .iter()
            .filter(|(q, _, _)| q.name != p.name)
            .flat_map(|(q, _, _)| (0..N).map(|n| q.packet(n)))
            .collect();
        want.sort();
        assert_eq!(
            plain.len(),
            want.len(),
            "{}: every other packet once",
            p.name
        );
        assert!(
            plain == want,
            "{}: exactly the others' packets, byte for byte",
            p.name
        );
    }
    let (sa, sb) = (a.stats().await, b.stats().await);
    let (ta, tb) = (sa.total.unwrap(), sb.total.unwrap());
    assert_eq!(
        ta.relay_tx,
        2 * u64::from(N),
        "each local packet once to the relay"
    );
    assert_eq!(tb.relay_rx, 2 * u64::from(N));
    assert_eq!(tb.relay_tx, 2 * u64::from(N));
    assert_eq!(ta.relay_rx, 2 * u64::from(N));
    assert_eq!(ta.dropped_packets + tb.dropped_packets, 0);

    // A PLI from b1 (on B) about a1's SSRC (on A) crosses the relay and reaches a1 only.
    for p in [&a1, &a2, &b2] {
        p.sock
            .set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
    }
    let pli = testkit::pli(b1.ssrc, a1.ssrc);
    b1.send(b.media, &pli);
    let mut buf = [0u8; 2048];
    let n = a1
        .sock
        .recv(&mut buf)
        .expect("the media owner gets the PLI");
    assert_eq!(&buf[..n], &pli[..]);
    assert!(a2.sock.recv(&mut buf).is_err(), "nobody else on A");
    assert!(b2.sock.recv(&mut buf).is_err(), "nobody else on B");
}

per_engine!(
    relayed_conference_delivers_every_packet_once,
    feedback_goes_only_to_the_bridge_of_its_sender,
    the_largest_datagram_crosses_a_relay
);

/// Relay packets built by the test, which poses as the remote bridge.
struct FakeBridge {
    sock: UdpSocket,
    relay: Relay,
    seq: u64,
}

impl FakeBridge {
    /// A fake bridge for link `link`, sealing with `KA` (the bridge under test opens with it).
    fn new(link: u32, to: SocketAddr) -> Self {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let relay = Relay::new(1, to, link, &KA, &KB).unwrap();
        FakeBridge {
            sock,
            relay,
            seq: 0,
        }
    }

    fn sealed(&mut self, inner: &[u8]) -> Vec<u8> {
        self.seq += 1;
        let mut out = vec![0u8; inner.len() + 64];
        let n = self.relay.seal(0, self.seq, inner, &mut out).unwrap();
        out.truncate(n);
        out
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_relay_packets_are_dropped_and_relays_never_loop() {
    let mut b = Bridge::start("mio").await;
    b.conference("c").await;
    let b1 = Party::new("b1", 21);
    b1.sock
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    b.add("c", &b1, false).await;
    let mut fa = FakeBridge::new(9, b.media);
    let mut fc = FakeBridge::new(9, b.media);
    let (fa_addr, fc_addr) = (fa.sock.local_addr().unwrap(), fc.sock.local_addr().unwrap());
    b.client
        .add_relay(relay_req("c", "a", fa_addr, 9, &KB, &KA))
        .await
        .unwrap();
    b.client
        .add_relay(relay_req("c", "x", fc_addr, 9, &KB, &KA))
        .await
        .unwrap();
    let mut buf = [0u8; 2048];
    let pkt = testkit::rtp(31, 1, 0, b"from a remote participant");

    // A valid relay packet reaches the local participant, and never the other relay.
    let wire = fa.sealed(&pkt);
    fa.sock.send_to(&wire, b.media).unwrap();
    let n = b1.sock.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], &pkt[..]);
    assert!(
        fc.sock.recv(&mut buf).is_err(),
        "a relayed packet never goes to another relay"
    );
    // Replayed, forged, unknown link, unknown source.
    fa.sock.send_to(&wire, b.media).unwrap();
    let mut forged = fa.sealed(&pkt);
    let last = forged.len() - 1;
    forged[last] ^= 1;
    fa.sock.send_to(&forged, b.media).unwrap();
    let mut other = FakeBridge::new(10, b.media);
    let w = other.sealed(&pkt);
    other.sock.send_to(&w, b.media).unwrap();
    assert!(
        b1.sock.recv(&mut buf).is_err(),
        "none of those is delivered"
    );
    let s = b.stats().await.total.unwrap();
    let d = s.drops.unwrap();
    assert_eq!(
        (d.relay_replay, d.relay_auth_failed, d.unknown_relay),
        (1, 1, 1)
    );
    assert_eq!(s.relay_rx, 1);

    // A local participant's packet goes once to each relay; its PLI about a sender that is not
    // local goes over the relay that sender's media arrives over (the bridge hosting it
    // delivers it to the sender only), not to the other.
    let mine = testkit::rtp(21, 1, 0, b"local");
    b1.sock.send_to(&mine, b.media).unwrap();
    b1.sock.send_to(&testkit::pli(21, 31), b.media).unwrap();
    let pli = testkit::pli(21, 31);
    for (f, wants) in [(&fa, vec![&mine, &pli]), (&fc, vec![&mine])] {
        for want in wants {
            let n = f.sock.recv(&mut buf).unwrap();
            let h = Header::parse(&buf[..n]).unwrap();
            assert_eq!(h.link, 9);
            // The fake bridge opens with the key the bridge under test seals with.
            let back = Relay::new(2, b.media, 9, &KA, &KB).unwrap();
            let m = back.open(&h, &mut buf[..n]).unwrap();
            assert_eq!(&buf[HEADER_LEN..HEADER_LEN + m], &want[..]);
        }
    }
    assert!(
        fc.sock.recv(&mut buf).is_err(),
        "the PLI is not C's business"
    );
    // Bad requests name the field and change nothing.
    for (req, code, field) in [
        (
            relay_req("c", "y", fa_addr, 11, &[0; 15], &KA),
            Code::InvalidArgument,
            "tx_key",
        ),
        (
            relay_req("c", "y", fa_addr, 11, &KB, &[0; 20]),
            Code::InvalidArgument,
            "rx_key",
        ),
        (
            relay_req("c", "y", "0.0.0.0:1".parse().unwrap(), 11, &KB, &KA),
            Code::InvalidArgument,
            "remote_addr",
        ),
        (
            relay_req("nope", "y", fa_addr, 11, &KB, &KA),
            Code::NotFound,
            "conference_id",
        ),
        // The same relay again (another address or keys under that id would replace it).
        (
            relay_req("c", "a", fa_addr, 9, &KB, &KA),
            Code::AlreadyExists,
            "relay_id",
        ),
        (
            relay_req("c", "z", fa_addr, 9, &KB, &KA),
            Code::AlreadyExists,
            "remote_addr",
        ),
    ] {
        let e = b.client.add_relay(req).await.unwrap_err();
        assert_eq!(e.code(), code, "{e:?}");
        assert!(e.message().starts_with(field), "{}", e.message());
    }
    assert_eq!(b.list().await.conferences[0].relays.len(), 2);
    // Relay changes also go through Apply (as the control plane batches them).
    let r = b
        .client
        .apply(pb::ApplyRequest {
            changes: vec![pb::Change {
                change: Some(pb::change::Change::RemoveRelay(pb::RemoveRelayRequest {
                    conference_id: "c".into(),
                    relay_id: "x".into(),
                })),
            }],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.results[0].code, 0);
    let e = b
        .client
        .remove_relay(pb::RemoveRelayRequest {
            conference_id: "c".into(),
            relay_id: "x".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    // After removal, that relay's packets are unknown.
    let w = fc.sealed(&pkt);
    fc.sock.send_to(&w, b.media).unwrap();
    assert!(b1.sock.recv(&mut buf).is_err());
    assert_eq!(
        b.stats().await.total.unwrap().drops.unwrap().unknown_relay,
        2
    );
}

/// AddRelay on both ends of a link between `x` and `y` (link number 7, keys from `seed`).
async fn link(x: &mut Bridge, y: &mut Bridge, seed: u8) {
    let (kx, ky) = ([seed; 16], [seed ^ 0xff; 16]);
    let (xm, ym) = (x.media, y.media);
    x.client
        .add_relay(relay_req("c", &ym.to_string(), ym, 7, &kx, &ky))
        .await
        .unwrap();
    y.client
        .add_relay(relay_req("c", &xm.to_string(), xm, 7, &ky, &kx))
        .await
        .unwrap();
}

/// Three bridges in a full mesh: feedback from a receiver on A about a sender on B goes to B
/// only; C, which hosts neither end, never sees it (and so drops nothing).
async fn feedback_goes_only_to_the_bridge_of_its_sender(engine: &str) {
    let (mut a, mut b, mut c) = (
        Bridge::start(engine).await,
        Bridge::start(engine).await,
        Bridge::start(engine).await,
    );
    for x in [&mut a, &mut b, &mut c] {
        x.conference("c").await;
    }
    link(&mut a, &mut b, 1).await;
    link(&mut a, &mut c, 2).await;
    link(&mut b, &mut c, 3).await;
    let (a1, b1, c1) = (
        Party::new("a1", 11),
        Party::new("b1", 21),
        Party::new("c1", 31),
    );
    a.add("c", &a1, false).await;
    b.add("c", &b1, false).await;
    c.add("c", &c1, false).await;
    // b1 sends; everyone gets it.
    const N: u16 = 5;
    let (at_a, at_c) = std::thread::scope(|s| {
        let ra = s.spawn(|| collect(&a1.sock, N.into(), Duration::from_millis(100)));
        let rc = s.spawn(|| collect(&c1.sock, N.into(), Duration::from_millis(100)));
        for n in 0..N {
            b1.send(b.media, &b1.packet(n));
        }
        (ra.join().unwrap(), rc.join().unwrap())
    });
    assert_eq!((at_a.len(), at_c.len()), (N.into(), N.into()));
    // a1 asks b1 for a retransmission and a keyframe.
    let feedback = [
        testkit::nack(a1.ssrc, b1.ssrc, 3),
        testkit::pli(a1.ssrc, b1.ssrc),
    ];
    let (at_b, at_c) = std::thread::scope(|s| {
        let rb = s.spawn(|| collect(&b1.sock, 2, Duration::from_millis(300)));
        let rc = s.spawn(|| collect(&c1.sock, 0, Duration::from_millis(400)));
        for f in &feedback {
            a1.send(a.media, f);
        }
        (rb.join().unwrap(), rc.join().unwrap())
    });
    assert_eq!(at_b, feedback.to_vec(), "the sender gets its feedback");
    assert!(at_c.is_empty());
    let (ta, tc) = (
        a.stats().await.total.unwrap(),
        c.stats().await.total.unwrap(),
    );
    assert_eq!(ta.relay_tx, 2, "a1's feedback went over one relay");
    assert_eq!(
        tc.relay_rx,
        u64::from(N),
        "C got b1's media and nothing else"
    );
    let dc = tc.drops.unwrap();
    assert_eq!((dc.no_receivers, tc.dropped_packets), (0, 0));
    let tb = b.stats().await.total.unwrap();
    assert_eq!(tb.dropped_packets, 0);
}

/// The largest endpoint datagram (2048 bytes) reaches local peers and crosses a relay; one byte
/// more is dropped and counted where it arrives, on either engine.
async fn the_largest_datagram_crosses_a_relay(engine: &str) {
    let mut a = Bridge::start(engine).await;
    let mut b = Bridge::start(engine).await;
    a.conference("c").await;
    b.conference("c").await;
    link(&mut a, &mut b, 4).await;
    let (a1, a2, b1) = (
        Party::new("a1", 11),
        Party::new("a2", 12),
        Party::new("b1", 21),
    );
    a.add("c", &a1, false).await;
    a.add("c", &a2, false).await;
    b.add("c", &b1, false).await;
    let payload = vec![0x5a; ringbridge_dataplane::core::MAX_DATAGRAM - 12];
    let largest = testkit::rtp(a1.ssrc, 1, 0, &payload);
    assert_eq!(largest.len(), 2048);
    let too_large = testkit::rtp(a1.ssrc, 2, 0, &[&payload[..], &[0]].concat());
    for (pkt, arrives) in [(&largest, true), (&too_large, false)] {
        let n = usize::from(arrives);
        let (at_a2, at_b1) = std::thread::scope(|s| {
            let r2 = s.spawn(|| collect(&a2.sock, n, Duration::from_millis(300)));
            let rb = s.spawn(|| collect(&b1.sock, n, Duration::from_millis(300)));
            a1.send(a.media, pkt);
            (r2.join().unwrap(), rb.join().unwrap())
        });
        let want = if arrives { vec![pkt.clone()] } else { vec![] };
        let lens = |v: &[Vec<u8>]| v.iter().map(Vec::len).collect::<Vec<_>>();
        for (got, whom) in [(at_a2, "to a local peer"), (at_b1, "across the relay")] {
            assert!(
                got == want,
                "{} bytes {whom}: got datagrams of {:?} bytes",
                pkt.len(),
                lens(&got)
            );
        }
    }
    let (ta, tb) = (
        a.stats().await.total.unwrap(),
        b.stats().await.total.unwrap(),
    );
    assert_eq!(ta.drops.unwrap().malformed, 1, "dropped where it arrived");
    assert_eq!((ta.dropped_packets, ta.relay_tx), (1, 1));
    assert_eq!((tb.relay_rx, tb.dropped_packets), (1, 0));
}
