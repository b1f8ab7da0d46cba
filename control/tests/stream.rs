//! Live streaming end to end with real processes: one publisher, an origin and three edges in
//! two regions, 30 viewers (a third of them SRTP). Viewers that join before the publisher wait;
//! every viewer gets every packet exactly once, byte for byte; edges pull on their first viewer
//! (the third edge from an edge: `--stream-fanout 2`) and stop with their last; 20 viewers
//! asking for a keyframe at once reach the publisher as one PLI; RTP from a viewer is dropped
//! and counted; an edge killed moves its viewers, the origin killed moves the publisher, an
//! edge hung (SIGSTOP) moves its viewers, and every viewer receives again.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use ringbridge_dataplane::srtp::{Profile, Session};
use ringbridge_dataplane::testkit;
use ringbridge_proto::v1 as pb;
use ringbridge_proto::v1::bridge_client::BridgeClient;
use ringbridge_proto::v1::focus_client::FocusClient;
use ringbridge_proto::v1::registry_client::RegistryClient;
use tonic::transport::Channel;

const PROFILE: Profile = Profile::AeadAes128Gcm;
const PUB_SSRC: u32 = 7000;

struct Viewer {
    name: String,
    region: &'static str,
    party: Party,
    /// Decrypts what its edge sends it, for an SRTP viewer.
    srtp: Option<Session>,
}

fn session(key: &[u8]) -> Session {
    let (k, s) = key.split_at(PROFILE.key_len());
    Session::new(PROFILE, k, s).unwrap()
}

async fn join_viewer(focus: &mut FocusClient<Channel>, i: usize, region: &'static str) -> Viewer {
    let party = Party::new(0);
    let name = format!("v{i:02}");
    let mut req = party.join("live", &name, region);
    req.ssrcs.clear();
    req.role = "viewer".into();
    let srtp = i.is_multiple_of(3);
    if srtp {
        req.srtp = Some(pb::SrtpParams {
            profile: PROFILE.name().into(),
            endpoint_key: vec![i as u8; 28],
            bridge_key: vec![],
        });
    }
    let r = focus.join(req).await.unwrap().into_inner();
    Viewer {
        name,
        region,
        party,
        srtp: r.srtp.map(|s| session(&s.bridge_key)),
    }
}

/// The publisher sends `n` packets from `base` to `media`; every viewer must get exactly
/// those, byte for byte (decrypted for SRTP viewers), once each.
fn everyone_gets_everything(
    publisher: &Party,
    media: SocketAddr,
    viewers: &[Viewer],
    base: u16,
    n: u16,
) {
    let sent: Vec<Vec<u8>> = (base..base + n)
        .map(|k| testkit::rtp(PUB_SSRC, k, 0, b"live"))
        .collect();
    let got: Vec<Vec<Vec<u8>>> = std::thread::scope(|s| {
        let rx: Vec<_> = viewers
            .iter()
            .map(|v| {
                s.spawn(move || {
                    let mut out = Vec::new();
                    let mut buf = [0u8; 2048];
                    let mut linger = false;
                    while let Ok(m) = v.party.sock.recv(&mut buf) {
                        let mut p = buf[..m].to_vec();
                        if let Some(rx) = &v.srtp {
                            let seq = u16::from_be_bytes([p[2], p[3]]);
                            let len = rx
                                .unprotect_rtp(&mut p, u64::from(seq))
                                .unwrap_or_else(|e| panic!("{}: {e}", v.name));
                            p.truncate(len);
                        }
                        out.push(p);
                        // Anything extra (a duplicate) shows up within a short linger.
                        if out.len() >= usize::from(n) && !linger {
                            linger = true;
                            v.party
                                .sock
                                .set_read_timeout(Some(Duration::from_millis(100)))
                                .unwrap();
                        }
                    }
                    v.party
                        .sock
                        .set_read_timeout(Some(Duration::from_millis(300)))
                        .unwrap();
                    out
                })
            })
            .collect();
        for p in &sent {
            publisher.sock.send_to(p, media).unwrap();
            std::thread::sleep(Duration::from_millis(1));
        }
        rx.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (v, g) in viewers.iter().zip(got) {
        assert_eq!(g.len(), sent.len(), "{}: every packet exactly once", v.name);
        assert!(
            g == sent,
            "{}: the publisher's packets byte for byte",
            v.name
        );
    }
}

/// Bridge id -> its Bridge API client.
async fn bridge_apis(url: &str) -> BTreeMap<String, BridgeClient<Channel>> {
    let l = RegistryClient::new(channel(url).await)
        .list_bridges(pb::ListBridgesRequest {})
        .await
        .unwrap()
        .into_inner();
    let mut out = BTreeMap::new();
    for b in l.bridges.into_iter().filter(|b| b.state == "up") {
        let ch = channel(&format!("http://{}", b.api_addr)).await;
        out.insert(b.bridge_id, BridgeClient::new(ch));
    }
    out
}

async fn drops(b: &mut BridgeClient<Channel>) -> pb::DropCounters {
    drops_of(b).await
}

fn pulls(c: &pb::ConferencePlacement) -> BTreeMap<String, (String, u32, u32)> {
    c.stream
        .as_ref()
        .unwrap()
        .pulls
        .iter()
        .map(|p| (p.edge.clone(), (p.from.clone(), p.tier, p.viewers)))
        .collect()
}

fn media_of(c: &pb::ConferencePlacement, bridge: &str) -> SocketAddr {
    c.bridges
        .iter()
        .find(|b| b.bridge_id == bridge)
        .unwrap_or_else(|| panic!("{bridge} in {c:?}"))
        .media_addr
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_through_an_origin_and_edges_survives_losing_both() {
    let data = data_dir("stream");
    let ctl = control_with(
        &data,
        "127.0.0.1:0",
        &[
            "--report-interval-ms",
            "200",
            "--stream-fanout",
            "2",
            "--max-viewers-per-edge",
            "10",
        ],
    );
    let url = format!("http://{}", ctl.field("listen"));
    let mut bridges: BTreeMap<&str, Proc> = [
        ("eu-1", "eu"),
        ("eu-2", "eu"),
        ("us-1", "us"),
        ("us-2", "us"),
    ]
    .into_iter()
    .map(|(id, region)| (id, bridge(&url, id, region)))
    .collect();
    wait_bridges(&url, 4).await;
    let mut focus = FocusClient::new(channel(&url).await);

    // Two viewers before the publisher: they are placed and wait, nothing is pulled.
    let mut viewers = Vec::new();
    for i in 0..2 {
        viewers.push(join_viewer(&mut focus, i, "eu").await);
    }
    let c = get(&mut focus, "live").await.unwrap();
    assert_eq!(c.kind, "broadcast");
    let s = c.stream.as_ref().unwrap();
    assert!(s.origin.is_empty() && s.pulls.is_empty(), "{c:?}");
    let waiting_edge = c.bridges[0].bridge_id.clone();

    // The publisher: an origin in eu other than the waiting edge, which now pulls from it.
    let publisher = Party::new(PUB_SSRC);
    let mut req = publisher.join("live", "pub", "eu");
    req.role = "publisher".into();
    let j = focus.join(req).await.unwrap().into_inner();
    let origin = j.bridge_id.clone();
    assert!(origin.starts_with("eu-") && origin != waiting_edge);
    let c = get(&mut focus, "live").await.unwrap();
    assert_eq!(pulls(&c)[&waiting_edge].0, origin);

    // 28 more viewers: 8 in eu, 20 in us; 10 per edge at most.
    for i in 2..30 {
        let region = if i < 10 { "eu" } else { "us" };
        viewers.push(join_viewer(&mut focus, i, region).await);
    }
    let c = get(&mut focus, "live").await.unwrap();
    let tree = pulls(&c);
    assert_eq!(tree.len(), 3, "three edges pull: {tree:?}");
    assert!(!tree.contains_key(&origin), "no viewer on the origin");
    assert!(tree.values().all(|(_, _, v)| *v == 10), "{tree:?}");
    let tier1: Vec<&String> = tree
        .iter()
        .filter(|(_, p)| p.1 == 1)
        .map(|(e, _)| e)
        .collect();
    assert_eq!(
        tier1.len(),
        2,
        "the origin feeds --stream-fanout 2 edges: {tree:?}"
    );
    let (tier2, (parent, _, _)) = tree.iter().find(|(_, p)| p.1 == 2).unwrap();
    assert_eq!(c.stream.as_ref().unwrap().deepest_tier, 2);
    assert!(
        tier2.starts_with("us-") && parent.starts_with("us-"),
        "same region first"
    );
    let m = scrape(&ctl.field("metrics"));
    assert!(m.contains("ringbridge_control_broadcasts 1.0"), "{m}");
    assert!(m.contains("ringbridge_control_stream_pulls 3.0"), "{m}");
    assert!(
        m.contains("ringbridge_control_stream_deepest_tier 2.0"),
        "{m}"
    );
    let origin_media: SocketAddr = j.media_addr.parse().unwrap();
    everyone_gets_everything(&publisher, origin_media, &viewers, 0, 20);

    // 20 viewers ask for a keyframe at once: one PLI reaches the publisher; every other one is
    // dropped once on the way (at its edge, a middle edge or the origin).
    let mut apis = bridge_apis(&url).await;
    let media: BTreeMap<String, SocketAddr> = c
        .bridges
        .iter()
        .map(|b| (b.bridge_id.clone(), b.media_addr.parse().unwrap()))
        .collect();
    let placed: BTreeMap<String, String> = c
        .bridges
        .iter()
        .flat_map(|b| {
            b.participants
                .iter()
                .map(|p| (p.clone(), b.bridge_id.clone()))
        })
        .collect();
    // The edges asked for a keyframe for their viewers when the first media arrived (one PLI
    // reached the publisher); let that interval pass and take the counters from here.
    let mut buf = [0u8; 2048];
    publisher
        .sock
        .set_read_timeout(Some(Duration::from_millis(600)))
        .unwrap();
    let mut earlier = 0;
    while publisher.sock.recv(&mut buf).is_ok() {
        earlier += 1;
    }
    assert_eq!(
        earlier, 1,
        "the edges' own keyframe requests: one reached the publisher"
    );
    let mut throttled_before = 0;
    for b in apis.values_mut() {
        throttled_before += drops(b).await.keyframe_throttled;
    }
    let askers: Vec<&Viewer> = viewers.iter().filter(|v| v.srtp.is_none()).collect();
    assert_eq!(askers.len(), 20);
    for (k, v) in askers.iter().enumerate() {
        let pli = testkit::pli(9000 + k as u32, PUB_SSRC);
        v.party.sock.send_to(&pli, media[&placed[&v.name]]).unwrap();
    }
    let mut got = Vec::new();
    publisher
        .sock
        .set_read_timeout(Some(Duration::from_millis(400)))
        .unwrap();
    while let Ok(n) = publisher.sock.recv(&mut buf) {
        got.push(buf[..n].to_vec());
    }
    assert_eq!(got.len(), 1, "one PLI per interval at the publisher");
    assert_eq!(&got[0][..2], &[0x81, 206], "a PLI");
    let mut throttled = 0;
    for b in apis.values_mut() {
        throttled += drops(b).await.keyframe_throttled;
    }
    assert_eq!(throttled - throttled_before, 19);

    // A viewer sending RTP: dropped and counted at its edge, forwarded to nobody.
    let rogue = &viewers[1];
    let edge = placed[&rogue.name].clone();
    let before = drops(apis.get_mut(&edge).unwrap()).await.unknown_ssrc;
    rogue
        .party
        .sock
        .send_to(&testkit::rtp(PUB_SSRC, 999, 0, b"not yours"), media[&edge])
        .unwrap();
    publisher
        .sock
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    assert!(
        publisher.sock.recv(&mut buf).is_err(),
        "nothing reaches the publisher"
    );
    for v in &viewers {
        assert!(
            v.party.sock.recv(&mut buf).is_err(),
            "{} gets nothing",
            v.name
        );
    }
    assert_eq!(
        drops(apis.get_mut(&edge).unwrap()).await.unknown_ssrc,
        before + 1
    );

    // The tier-1 us edge dies: its viewers move (announced), the tier-2 edge re-attaches, and
    // every viewer receives again.
    let mut watch = watch(&mut focus, "live").await;
    next_with_reason(&mut watch, "current", 2).await;
    let dead_edge = parent.clone();
    bridges.get_mut(dead_edge.as_str()).unwrap().kill();
    let moved = next_with_reason(&mut watch, "failover", 10).await;
    let tree = pulls(&moved);
    assert!(
        !tree.contains_key(&dead_edge) && tree.values().all(|p| p.0 != dead_edge),
        "{tree:?}"
    );
    assert!(moved.bridges.iter().all(|b| b.bridge_id != dead_edge));
    everyone_gets_everything(&publisher, origin_media, &viewers, 100, 20);

    // The origin dies: the publisher moves to a new origin, the edges pull from it.
    bridges.get_mut(origin.as_str()).unwrap().kill();
    let moved = loop {
        let m = next_with_reason(&mut watch, "failover", 10).await;
        if m.stream.as_ref().unwrap().origin != origin {
            break m;
        }
    };
    let new_origin = moved.stream.as_ref().unwrap().origin.clone();
    assert_ne!(new_origin, origin);
    assert!(pulls(&moved).values().all(|p| p.0 != origin));
    everyone_gets_everything(&publisher, media_of(&moved, &new_origin), &viewers, 200, 20);

    // The us viewers leave: with the last one their edge stops pulling and leaves the stream.
    let us_edge = tree_edge_of(&moved, "us");
    for v in viewers.iter().filter(|v| v.region == "us") {
        focus
            .leave(pb::LeaveRequest {
                conference: "live".into(),
                participant_id: v.name.clone(),
            })
            .await
            .unwrap();
    }
    let c = get(&mut focus, "live").await.unwrap();
    assert!(!pulls(&c).contains_key(&us_edge), "{c:?}");
    let mut apis = bridge_apis(&url).await;
    let listed = apis
        .get_mut(&us_edge)
        .unwrap()
        .list_conferences(pb::ListConferencesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(listed.conferences.is_empty(), "{listed:?}");

    // 20 viewers join at once while the publisher streams: their edge asks for a keyframe for
    // them (nobody sends a PLI by hand here), and the publisher sees at most one PLI per
    // keyframe interval (500 ms), however many join.
    let c = get(&mut focus, "live").await.unwrap();
    let origin_media = media_of(&c, &c.stream.as_ref().unwrap().origin);
    // Keyframe requests of the moves above are not this part's: drain them, let the interval
    // pass.
    publisher
        .sock
        .set_read_timeout(Some(Duration::from_millis(600)))
        .unwrap();
    while publisher.sock.recv(&mut buf).is_ok() {}
    let streaming = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sender = {
        let sock = publisher.sock.try_clone().unwrap();
        let on = streaming.clone();
        std::thread::spawn(move || {
            let mut seq = 1000u16;
            while on.load(std::sync::atomic::Ordering::Relaxed) {
                let p = testkit::rtp(PUB_SSRC, seq, 0, b"live");
                sock.send_to(&p, origin_media).unwrap();
                seq = seq.wrapping_add(1);
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    let listener = {
        let sock = publisher.sock.try_clone().unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        std::thread::spawn(move || {
            let start = std::time::Instant::now();
            let mut plis = Vec::new();
            let mut buf = [0u8; 2048];
            while start.elapsed() < Duration::from_millis(3000) {
                if let Ok(n) = sock.recv(&mut buf)
                    && n >= 12
                    && buf[..2] == [0x81, 206]
                {
                    plis.push(start.elapsed());
                }
            }
            plis
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let joins: Vec<_> = (100..120)
        .map(|i| {
            let mut f = focus.clone();
            tokio::spawn(async move { join_viewer(&mut f, i, "us").await })
        })
        .collect();
    let mut late = Vec::new();
    for j in joins {
        late.push(j.await.unwrap());
    }
    let plis = listener.join().unwrap();
    streaming.store(false, std::sync::atomic::Ordering::Relaxed);
    sender.join().unwrap();
    assert!(
        !plis.is_empty(),
        "the late joiners' edge asked for a keyframe"
    );
    for w in plis.windows(2) {
        assert!(
            w[1] - w[0] >= Duration::from_millis(400),
            "at most one PLI per interval at the publisher: {plis:?}"
        );
    }
    assert_eq!(late.len(), 20);

    // The late joiners' edge hangs (SIGSTOP: sockets open, no answers): the health probes find
    // it, its viewers move (to the origin, the only bridge left) and receive again.
    let c = get(&mut focus, "live").await.unwrap();
    let hung = placed_on(&c, &late[0].name);
    assert!(hung.starts_with("us-"), "{c:?}");
    bridges[hung.as_str()].pause();
    let moved = loop {
        let m = next_with_reason(&mut watch, "failover", 10).await;
        if m.bridges.iter().all(|b| b.bridge_id != hung) {
            break m;
        }
    };
    let origin = moved.stream.as_ref().unwrap().origin.clone();
    for v in &late {
        assert_eq!(placed_on(&moved, &v.name), origin);
    }
    let remaining: Vec<Viewer> = viewers
        .into_iter()
        .filter(|v| v.region == "eu")
        .chain(late)
        .collect();
    // What the stream above left in their sockets is not this exchange's.
    let mut buf = [0u8; 2048];
    for v in &remaining {
        v.party
            .sock
            .set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        while v.party.sock.recv(&mut buf).is_ok() {}
        v.party
            .sock
            .set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
    }
    everyone_gets_everything(&publisher, media_of(&moved, &origin), &remaining, 3000, 20);
    bridges[hung.as_str()].resume();
    let _ = std::fs::remove_dir_all(&data);
}

/// The bridge `participant` is on.
fn placed_on(c: &pb::ConferencePlacement, participant: &str) -> String {
    c.bridges
        .iter()
        .find(|b| b.participants.iter().any(|p| p == participant))
        .unwrap_or_else(|| panic!("{participant} in {c:?}"))
        .bridge_id
        .clone()
}

/// The edge of `region` in the placement's pull tree.
fn tree_edge_of(c: &pb::ConferencePlacement, region: &str) -> String {
    pulls(c)
        .into_keys()
        .find(|e| e.starts_with(region))
        .unwrap_or_else(|| panic!("no {region} edge in {c:?}"))
}
