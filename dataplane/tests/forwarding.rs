//! End-to-end forwarding over real UDP and gRPC on loopback, once per engine: fan-out in 3- and
//! 10-party conferences, RTCP routing, latching (once per endpoint, even when two addresses race
//! with its SSRC), removal, isolation, IPv6.

mod common;

use std::time::{Duration, Instant};

use common::{Bridge, Party, assert_exact, collect, exchange};
use ringbridge_dataplane::testkit;
use ringbridge_proto::v1 as pb;

const COUNT: u16 = 100;

fn parties(prefix: &str, n: usize, ssrc_base: u32) -> Vec<Party> {
    (0..n)
        .map(|i| Party::new(&format!("{prefix}{i}"), ssrc_base + i as u32))
        .collect()
}

async fn conference_of(bridge: &mut Bridge, conf: &str, ps: &[Party]) {
    bridge.conference(conf).await;
    for p in ps {
        bridge.add(conf, p, false).await;
    }
}

async fn three_party(engine: &str) {
    let mut b = Bridge::start(engine).await;
    let ps = parties("p", 3, 100);
    conference_of(&mut b, "c", &ps).await;
    let refs: Vec<&Party> = ps.iter().collect();
    let got = exchange(&refs, b.media, COUNT, &[2 * COUNT as usize; 3]);
    assert_exact(&refs, &got, COUNT);
    let st = b.stats().await;
    let t = st.total.unwrap();
    assert_eq!(t.rx_packets, 3 * u64::from(COUNT));
    assert_eq!(t.tx_packets, 6 * u64::from(COUNT));
    assert_eq!(t.dropped_packets, 0);
    assert_eq!((st.conferences, st.endpoints), (1, 3));
    assert_eq!(st.engine, engine);
    assert_eq!(st.workers.len(), 2);
}

async fn ten_party(engine: &str) {
    let mut b = Bridge::start(engine).await;
    let ps = parties("q", 10, 500);
    conference_of(&mut b, "big", &ps).await;
    let refs: Vec<&Party> = ps.iter().collect();
    let n = 40;
    let got = exchange(&refs, b.media, n, &[9 * n as usize; 10]);
    assert_exact(&refs, &got, n);
    let t = b.stats().await.total.unwrap();
    assert_eq!(t.tx_packets, 90 * u64::from(n));
}

/// Sender reports go to all others; feedback only to the sender of the media SSRC; a second
/// keyframe request for the same stream within `--keyframe-interval-ms` is dropped.
async fn rtcp_routing(engine: &str) {
    let mut b = Bridge::start(engine).await;
    let ps = parties("r", 3, 700);
    conference_of(&mut b, "c", &ps).await;
    let quiet = Duration::from_millis(300);
    let sr = testkit::sender_report(ps[0].ssrc);
    ps[0].send(b.media, &sr);
    for p in &ps[1..] {
        assert_eq!(
            collect(&p.sock, 1, quiet),
            vec![sr.clone()],
            "{} gets the SR",
            p.name
        );
    }
    let feedback = [
        testkit::pli(ps[1].ssrc, ps[0].ssrc),
        testkit::nack(ps[1].ssrc, ps[0].ssrc, 17),
        testkit::fir(ps[1].ssrc, &[ps[0].ssrc]),
    ];
    for fb in &feedback {
        ps[1].send(b.media, fb);
    }
    // The FIR asks for a keyframe right after the PLI did (default interval 500 ms).
    assert_eq!(collect(&ps[0].sock, 2, quiet), feedback[..2].to_vec());
    assert!(
        collect(&ps[2].sock, 0, quiet).is_empty(),
        "bystander gets no feedback"
    );
    assert!(
        collect(&ps[1].sock, 0, quiet).is_empty(),
        "sender gets nothing back"
    );
    let t = b.stats().await.total.unwrap();
    assert_eq!((t.rx_rtcp, t.tx_packets), (4, 4));
    assert_eq!(t.drops.unwrap().keyframe_throttled, 1);
}

async fn latching(engine: &str) {
    let mut b = Bridge::start(engine).await;
    let ps = parties("l", 3, 900);
    b.conference("c").await;
    b.add("c", &ps[0], false).await;
    b.add("c", &ps[1], false).await;
    b.add("c", &ps[2], true).await;
    // A stranger using an SSRC nobody declared latches nothing.
    let stranger = Party::new("stranger", 12345);
    stranger.send(b.media, &stranger.packet(0));
    // The latching endpoint's first packet reaches the others at once.
    let first = ps[2].packet(1000);
    ps[2].send(b.media, &first);
    for p in &ps[..2] {
        assert_eq!(
            collect(&p.sock, 1, Duration::from_millis(100)),
            vec![first.clone()]
        );
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let l = b.list().await;
        let e = &l.conferences[0]
            .endpoints
            .iter()
            .find(|e| e.endpoint_id == "l2")
            .unwrap();
        if e.latched {
            assert_eq!(e.remote_addr, ps[2].addr().to_string());
            break;
        }
        assert!(Instant::now() < deadline, "latch not recorded");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let refs: Vec<&Party> = ps.iter().collect();
    let got = exchange(&refs, b.media, COUNT, &[2 * COUNT as usize; 3]);
    assert_exact(&refs, &got, COUNT);
    // Once latched, the same SSRC from another address cannot take the endpoint over.
    let hijack = Party::new("hijack", ps[2].ssrc);
    hijack.send(b.media, &ps[2].packet(2000));
    assert!(collect(&ps[0].sock, 0, Duration::from_millis(300)).is_empty());
    assert!(collect(&hijack.sock, 0, Duration::from_millis(100)).is_empty());
    let d = b.stats().await.total.unwrap().drops.unwrap();
    assert_eq!(d.unknown_source, 2);
}

async fn removal(engine: &str) {
    let mut b = Bridge::start(engine).await;
    let ps = parties("x", 3, 1100);
    conference_of(&mut b, "c", &ps).await;
    b.client
        .remove_endpoint(pb::RemoveEndpointRequest {
            conference_id: "c".into(),
            endpoint_id: "x2".into(),
        })
        .await
        .unwrap();
    let refs: Vec<&Party> = ps.iter().collect();
    let n = 50;
    let got = exchange(&refs, b.media, n, &[n as usize, n as usize, 0]);
    assert_exact(&refs[..2], &got[..2], n);
    assert!(
        got[2].is_empty(),
        "removed endpoint received {} packets",
        got[2].len()
    );
    let d = b.stats().await.total.unwrap().drops.unwrap();
    assert_eq!(
        d.unknown_source,
        u64::from(n),
        "removed endpoint's packets dropped"
    );
    let r = b
        .client
        .delete_conference(pb::DeleteConferenceRequest {
            conference_id: "c".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.removed_endpoints, 2);
    let got = exchange(&refs[..2], b.media, 10, &[0, 0]);
    assert!(
        got.iter().all(Vec::is_empty),
        "deleted conference forwards nothing"
    );
    let st = b.stats().await;
    assert_eq!((st.conferences, st.endpoints), (0, 0));
}

/// Two addresses send a latching endpoint's SSRC back to back (ffmpeg's RTCP from its RTP
/// port + 1 just before its first RTP does): one of them latches, on whatever worker; the other
/// is dropped as `unknown_source` from its first packet on, and ListConferences names the one
/// whose packets are forwarded.
async fn latching_race(engine: &str) {
    let mut b = Bridge::start(engine).await;
    let r = Party::new("r", 1);
    b.conference("c").await;
    b.add("c", &r, false).await;
    const ROUNDS: u32 = 4;
    const MORE: u16 = 5;
    for round in 0..ROUNDS {
        let ssrc = 100 + round;
        let name = format!("l{round}");
        b.client
            .add_endpoint(pb::AddEndpointRequest {
                conference_id: "c".into(),
                endpoint_id: name.clone(),
                ssrcs: vec![ssrc],
                remote_addr: String::new(),
                srtp: None,
                ..Default::default()
            })
            .await
            .unwrap();
        let (x, y) = (Party::new("x", ssrc), Party::new("y", ssrc));
        x.send(b.media, &x.packet(0));
        y.send(b.media, &y.packet(0));
        let deadline = Instant::now() + Duration::from_secs(3);
        let winner = loop {
            let l = b.list().await;
            let e = l.conferences[0]
                .endpoints
                .iter()
                .find(|e| e.endpoint_id == name)
                .unwrap();
            if e.latched {
                break e.remote_addr.clone();
            }
            assert!(Instant::now() < deadline, "latch not recorded");
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let (won, lost) = if winner == x.addr().to_string() {
            (&x, &y)
        } else {
            assert_eq!(winner, y.addr().to_string());
            (&y, &x)
        };
        // Both go on sending, well after every worker has the latch.
        for n in 1..=MORE {
            x.send(b.media, &x.packet(n));
            y.send(b.media, &y.packet(n));
        }
        let mut got = collect(&r.sock, usize::from(MORE) + 1, Duration::from_millis(200));
        got.sort_by_key(|p| u16::from_be_bytes([p[2], p[3]]));
        let want: Vec<Vec<u8>> = (0..=MORE).map(|n| won.packet(n)).collect();
        assert!(
            got == want,
            "round {round}: only {}'s packets, all of them (got {} packets, {} of them {}'s)",
            won.name,
            got.len(),
            got.iter()
                .filter(|p| p[12..].starts_with(format!("{}:", lost.name).as_bytes()))
                .count(),
            lost.name
        );
    }
    let d = b.stats().await.total.unwrap().drops.unwrap();
    assert_eq!(
        d.unknown_source,
        u64::from(ROUNDS) * (u64::from(MORE) + 1),
        "every packet of the address that lost"
    );
}

async fn isolation(engine: &str) {
    let mut b = Bridge::start(engine).await;
    let a = parties("a", 3, 2000);
    let z = parties("z", 3, 3000);
    conference_of(&mut b, "A", &a).await;
    conference_of(&mut b, "Z", &z).await;
    let all: Vec<&Party> = a.iter().chain(z.iter()).collect();
    let got = exchange(&all, b.media, COUNT, &[2 * COUNT as usize; 6]);
    assert_exact(&all[..3], &got[..3], COUNT);
    assert_exact(&all[3..], &got[3..], COUNT);
}

async fn ipv6(engine: &str) {
    let mut b = Bridge::start_on(engine, "::1").await;
    assert!(b.media.is_ipv6());
    let ps: Vec<Party> = (0..3)
        .map(|i| Party::on(&format!("v{i}"), 4000 + i, "::1"))
        .collect();
    conference_of(&mut b, "v6", &ps).await;
    let refs: Vec<&Party> = ps.iter().collect();
    let got = exchange(&refs, b.media, 50, &[100; 3]);
    assert_exact(&refs, &got, 50);
    let e = b
        .client
        .add_endpoint(pb::AddEndpointRequest {
            conference_id: "v6".into(),
            endpoint_id: "v4".into(),
            ssrcs: vec![1],
            remote_addr: "127.0.0.1:5000".into(),
            srtp: None,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
}

per_engine!(
    three_party,
    ten_party,
    rtcp_routing,
    latching,
    latching_race,
    removal,
    isolation,
    ipv6
);

/// With only 4 send slots per io_uring worker, fanning out to 9 receivers forces the worker to
/// wait for completions mid-packet; every copy must still arrive exactly once, byte for byte,
/// and the buffer must return to the ring only after its last send.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uring_send_slot_exhaustion() {
    let mut b = Bridge::start_with("uring", "127.0.0.1", &["--uring-send-slots", "4"]).await;
    let ps = parties("s", 10, 9000);
    conference_of(&mut b, "c", &ps).await;
    let refs: Vec<&Party> = ps.iter().collect();
    // More packets than provided buffers would survive a leaked reference per packet.
    let n = 500;
    let got = exchange(&refs, b.media, n, &[9 * n as usize; 10]);
    assert_exact(&refs, &got, n);
    let t = b.stats().await.total.unwrap();
    assert_eq!((t.tx_packets, t.dropped_packets), (90 * u64::from(n), 0));
}

/// With only 8 provided buffers, a burst (80 datagrams between pauses) runs the buffer ring dry
/// mid-batch: the multishot receive ends with ENOBUFS and is re-armed, the datagrams wait in the
/// socket meanwhile, and every copy still arrives exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uring_buffer_ring_exhaustion() {
    let mut b = Bridge::start_with("uring", "127.0.0.1", &["--uring-buffers", "8"]).await;
    let ps = parties("b", 10, 9500);
    conference_of(&mut b, "c", &ps).await;
    let refs: Vec<&Party> = ps.iter().collect();
    let n = 300;
    let got = exchange(&refs, b.media, n, &[9 * n as usize; 10]);
    assert_exact(&refs, &got, n);
    let t = b.stats().await.total.unwrap();
    assert_eq!((t.tx_packets, t.dropped_packets), (90 * u64::from(n), 0));
}

/// Every io_uring send path (`--uring-send`) forwards exactly, plain and SRTP-free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_uring_send_path_forwards_exactly() {
    for path in ["sendmsg", "send", "send-fixed"] {
        let mut b = Bridge::start_with("uring", "127.0.0.1", &["--uring-send", path]).await;
        b.conference("c").await;
        let ps: Vec<Party> = (0..4)
            .map(|i| Party::new(&format!("p{i}"), 100 + i))
            .collect();
        for p in &ps {
            b.add("c", p, false).await;
        }
        let refs: Vec<&Party> = ps.iter().collect();
        let got = exchange(&refs, b.media, 50, &[150; 4]);
        assert_exact(&refs, &got, 50);
    }
}
