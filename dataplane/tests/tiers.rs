//! A live stream's pull tree over real bridge processes: origin O -> edge E1 -> edge E2 (E2
//! pulls through E1, a second tier). Media from the publisher on O reaches the viewers on both
//! edges exactly once, byte for byte, and never goes back up; a keyframe request from a viewer
//! on E2 climbs E2 -> E1 -> O and reaches only the publisher; RTP from a receive-only viewer is
//! dropped and counted. Downstream relays programmed into a loop carry a packet around it at
//! most `HOP_LIMIT` times, not forever.

mod common;

use std::time::Duration;

use common::{Bridge, Party, collect};
use ringbridge_dataplane::core::relay::HOP_LIMIT;
use ringbridge_dataplane::testkit;
use ringbridge_proto::v1 as pb;

const K1: [u8; 16] = [0x11; 16];
const K2: [u8; 16] = [0x22; 16];
const K3: [u8; 16] = [0x33; 16];
const K4: [u8; 16] = [0x44; 16];

fn pull(
    remote: std::net::SocketAddr,
    id: &str,
    tx: &[u8],
    rx: &[u8],
    downstream: bool,
) -> pb::AddRelayRequest {
    pb::AddRelayRequest {
        conference_id: "s".into(),
        relay_id: id.into(),
        remote_addr: remote.to_string(),
        link_conference: 5,
        tx_key: tx.to_vec(),
        rx_key: rx.to_vec(),
        downstream,
    }
}

async fn media_climbs_down_and_keyframe_requests_climb_up(engine: &str) {
    let mut o = Bridge::start(engine).await;
    let mut e1 = Bridge::start(engine).await;
    let mut e2 = Bridge::start(engine).await;
    for b in [&mut o, &mut e1, &mut e2] {
        b.conference("s").await;
    }
    // O feeds E1 (downstream); E1 pulls from O and feeds E2; E2 pulls from E1.
    o.client
        .add_relay(pull(e1.media, "e1", &K1, &K2, true))
        .await
        .unwrap();
    e1.client
        .add_relay(pull(o.media, "o", &K2, &K1, false))
        .await
        .unwrap();
    e1.client
        .add_relay(pull(e2.media, "e2", &K3, &K4, true))
        .await
        .unwrap();
    e2.client
        .add_relay(pull(e1.media, "e1", &K4, &K3, false))
        .await
        .unwrap();
    let (p, v1, v2) = (
        Party::new("pub", 1),
        Party::new("v1", 2),
        Party::new("v2", 3),
    );
    o.add("s", &p, false).await;
    e1.add("s", &v1, false).await;
    e2.add("s", &v2, false).await;

    const N: u16 = 50;
    let (got1, got2, back) = std::thread::scope(|s| {
        let r1 = s.spawn(|| collect(&v1.sock, N as usize, Duration::from_millis(300)));
        let r2 = s.spawn(|| collect(&v2.sock, N as usize, Duration::from_millis(300)));
        let rp = s.spawn(|| collect(&p.sock, 0, Duration::from_millis(800)));
        for n in 0..N {
            p.send(o.media, &p.packet(n));
            if n % 10 == 9 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        (r1.join().unwrap(), r2.join().unwrap(), rp.join().unwrap())
    });
    let want: Vec<Vec<u8>> = (0..N).map(|n| p.packet(n)).collect();
    for (name, mut got) in [("tier 1", got1), ("tier 2", got2)] {
        got.sort_by_key(|g| u16::from_be_bytes([g[2], g[3]]));
        assert_eq!(got, want, "{name}: every packet once, byte for byte");
    }
    assert!(back.is_empty(), "nothing goes back to the publisher");

    // A PLI from v2 about the publisher climbs both tiers to the publisher alone.
    let pli = testkit::pli(v2.ssrc, p.ssrc);
    let (at_pub, at_v1) = std::thread::scope(|s| {
        let rp = s.spawn(|| collect(&p.sock, 1, Duration::from_millis(300)));
        let r1 = s.spawn(|| collect(&v1.sock, 0, Duration::from_millis(500)));
        v2.send(e2.media, &pli);
        (rp.join().unwrap(), r1.join().unwrap())
    });
    assert_eq!(at_pub, [pli], "the publisher gets the keyframe request");
    assert!(at_v1.is_empty(), "no other viewer does");

    // A receive-only viewer (no SSRCs declared) that sends RTP anyway: dropped and counted,
    // never forwarded, up or down.
    let rogue = Party::new("rogue", 9);
    e1.client
        .add_endpoint(pb::AddEndpointRequest {
            conference_id: "s".into(),
            endpoint_id: "rogue".into(),
            ssrcs: vec![],
            remote_addr: rogue.addr().to_string(),
            srtp: None,
            ..Default::default()
        })
        .await
        .unwrap();
    let before = e1.stats().await.total.unwrap().drops.unwrap().unknown_ssrc;
    let (at_pub, at_v2) = std::thread::scope(|s| {
        let rp = s.spawn(|| collect(&p.sock, 0, Duration::from_millis(500)));
        let r2 = s.spawn(|| collect(&v2.sock, 0, Duration::from_millis(500)));
        for n in 0..5 {
            rogue.send(e1.media, &rogue.packet(n));
        }
        (rp.join().unwrap(), r2.join().unwrap())
    });
    assert!(
        at_pub.is_empty() && at_v2.is_empty(),
        "a viewer's RTP goes nowhere"
    );
    let after = e1.stats().await.total.unwrap().drops.unwrap().unknown_ssrc;
    assert_eq!(after - before, 5, "and is counted");
}

#[tokio::test]
async fn tiers_mio() {
    media_climbs_down_and_keyframe_requests_climb_up("mio").await;
}

#[tokio::test]
async fn tiers_uring() {
    media_climbs_down_and_keyframe_requests_climb_up("uring").await;
}

/// A -> B -> C -> A, each feeding the next as if it were the tier below (the Bridge API cannot
/// tell): one packet from a publisher on A goes round until its hop count is spent, then stops.
async fn a_loop_of_downstream_relays_ends(engine: &str) {
    let mut bs = Vec::new();
    for _ in 0..3 {
        let mut b = Bridge::start_with_metrics(engine, &[]).await;
        b.conference("s").await;
        bs.push(b);
    }
    let keys = [K1, K2, K3];
    for i in 0..3 {
        let j = (i + 1) % 3;
        let (mi, mj) = (bs[i].media, bs[j].media);
        // i feeds j (downstream), j pulls from i.
        bs[i]
            .client
            .add_relay(pull(mj, "next", &keys[i], &K4, true))
            .await
            .unwrap();
        bs[j]
            .client
            .add_relay(pull(mi, "prev", &K4, &keys[i], false))
            .await
            .unwrap();
    }
    let (p, v) = (Party::new("pub", 1), Party::new("v", 2));
    bs[0].add("s", &p, false).await;
    bs[1].add("s", &v, false).await;
    let first = p.packet(0);
    p.send(bs[0].media, &first);
    // The viewer on B gets it on every lap: at most HOP_LIMIT / 3 + 1 times.
    let got = collect(&v.sock, 0, Duration::from_millis(500));
    assert!(!got.is_empty() && got.iter().all(|g| *g == first));
    let bound = u64::from(HOP_LIMIT) / 3 + 1;
    assert!(got.len() as u64 <= bound, "{} copies", got.len());
    let mut relay_tx = 0;
    let mut hop_limit = 0.0;
    for b in &mut bs {
        relay_tx += b.stats().await.total.unwrap().relay_tx;
        hop_limit += b.metric("ringbridge_dropped_packets{reason=\"relay_hop_limit\"}");
    }
    // A's own two copies (down to B, and to C, which pulls nothing from it), then one copy per
    // further hop of the one going round.
    assert_eq!(
        relay_tx,
        2 + u64::from(HOP_LIMIT) - 1,
        "bounded by the hop count"
    );
    assert_eq!(hop_limit, 1.0, "the end of the loop is counted");
    // And it stays that way.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut again = 0;
    for b in &mut bs {
        again += b.stats().await.total.unwrap().relay_tx;
    }
    assert_eq!(again, relay_tx);
}

#[tokio::test]
async fn relay_loop_mio() {
    a_loop_of_downstream_relays_ends("mio").await;
}

#[tokio::test]
async fn relay_loop_uring() {
    a_loop_of_downstream_relays_ends("uring").await;
}
