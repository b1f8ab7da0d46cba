//! The AF_XDP engine end to end: a real `ringbridge --engine xdp` takes over the host side of a
//! veth pair, its peers live in the namespace on the other side, and what they receive is
//! checked byte for byte: fan-out 1 -> N and a mesh, RTCP both ways, SRTP receivers, a relay to
//! a second bridge on the socket engine (across the link); ARP and ping keep working. A
//! SIGKILLed bridge leaves nothing on the interface and a socket-engine bridge serves its port;
//! an interface that cannot be taken over leaves the io_uring engine serving, saying why; a
//! destination whose neighbour is not resolved is served through the kernel, then directly.
//!
//! Needs root and iproute2 (a namespace and veth pair per test, named per process, removed on
//! drop, one RX queue); every wait is bounded.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use common::{Bridge, Launch, Party, assert_exact, collect, exchange, exchange_via, relay_req};
use ringbridge_dataplane::srtp::replay::Stream;
use ringbridge_dataplane::srtp::{Profile, Session};
use ringbridge_dataplane::testkit::{self, netns::Link};
use ringbridge_proto::v1 as pb;

const COUNT: u16 = 100;

/// A party in `link`'s namespace.
fn party(link: &Link, name: &str, ssrc: u32) -> Party {
    let sock = link
        .udp(SocketAddr::new(IpAddr::V4(link.inner), 0))
        .expect("a socket in the namespace");
    Party::with_socket(name, ssrc, sock)
}

/// An xdp bridge on `link`'s host side.
async fn xdp_bridge(link: &Link) -> Bridge {
    let host = link.host.to_string();
    let b = Bridge::start_with("xdp", &host, &["--xdp-iface", &link.host_if]).await;
    resolve(link);
    b
}

/// Makes the namespace resolve the host's address: a burst sent before that would overflow
/// the kernel's queue of packets waiting for the neighbour (and be lost before any bridge).
fn resolve(link: &Link) {
    assert!(link.inside(&format!("ping -q -c 1 -W 2 {} > /dev/null", link.host)));
}

async fn conference_of(b: &mut Bridge, conf: &str, ps: &[&Party]) {
    b.conference(conf).await;
    for p in ps {
        b.add(conf, p, false).await;
    }
}

/// Packets received by the AF_XDP workers (ids from the socket workers' count on).
fn xdp_rx(st: &pb::GetStatsResponse) -> u64 {
    st.workers
        .iter()
        .filter(|w| w.worker >= 2)
        .map(|w| w.counters.as_ref().unwrap().rx_packets)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_mesh_and_feedback_go_through_the_interface_exactly() {
    let link = Link::new(0);
    let mut b = xdp_bridge(&link).await;
    assert!(link.xdp().is_some(), "the program is attached");
    assert_eq!(b.ready.get("engine"), Some("xdp"));

    // 1 -> 4: one sender, four receivers.
    let ps: Vec<Party> = (0..5)
        .map(|i| party(&link, &format!("f{i}"), 100 + i))
        .collect();
    let refs: Vec<&Party> = ps.iter().collect();
    conference_of(&mut b, "fan", &refs).await;
    let got: Vec<Vec<Vec<u8>>> = std::thread::scope(|s| {
        let rx: Vec<_> = ps[1..]
            .iter()
            .map(|p| s.spawn(move || collect(&p.sock, COUNT as usize, Duration::from_millis(200))))
            .collect();
        for n in 0..COUNT {
            ps[0].send(b.media, &ps[0].packet(n));
            if n % 8 == 7 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        rx.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let want: Vec<Vec<u8>> = (0..COUNT).map(|n| ps[0].packet(n)).collect();
    for (p, g) in ps[1..].iter().zip(&got) {
        let mut g = g.clone();
        g.sort();
        let mut w = want.clone();
        w.sort();
        assert!(
            g == w,
            "{} got {} packets, want {}",
            p.name,
            g.len(),
            w.len()
        );
    }

    // The first copies to the namespace's address went through the kernel until the resolver
    // answered (a millisecond or so); every later one goes directly, new ports of that address
    // included.
    let warm = b.stats().await.total.unwrap();
    assert!(warm.xdp_tx > 0, "{warm:?}");

    // A mesh of three.
    let ms: Vec<Party> = (0..3)
        .map(|i| party(&link, &format!("m{i}"), 200 + i))
        .collect();
    let mrefs: Vec<&Party> = ms.iter().collect();
    conference_of(&mut b, "mesh", &mrefs).await;
    let got = exchange(&mrefs, b.media, COUNT, &[2 * COUNT as usize; 3]);
    assert_exact(&mrefs, &got, COUNT);

    // RTCP: the sender's report reaches every receiver; a receiver's PLI and NACK reach the
    // sender only.
    let quiet = Duration::from_millis(300);
    let sr = testkit::sender_report(ps[0].ssrc);
    ps[0].send(b.media, &sr);
    for p in &ps[1..] {
        assert_eq!(collect(&p.sock, 1, quiet), vec![sr.clone()], "{}", p.name);
    }
    let feedback = [
        testkit::pli(ps[1].ssrc, ps[0].ssrc),
        // A number never sent: not in the retransmission cache, so it goes on upstream.
        testkit::nack(ps[1].ssrc, ps[0].ssrc, 5000),
    ];
    for fb in &feedback {
        ps[1].send(b.media, fb);
    }
    assert_eq!(collect(&ps[0].sock, 2, quiet), feedback.to_vec());
    for p in &ps[2..] {
        assert!(collect(&p.sock, 0, quiet).is_empty(), "{}", p.name);
    }

    // ARP and ping still work while the interface is taken over.
    assert!(link.inside("ip neigh flush all"));
    assert!(link.inside(&format!("ping -q -c 1 -W 2 {} > /dev/null", link.host)));

    let st = b.stats().await;
    let t = st.total.unwrap();
    assert_eq!(t.dropped_packets, 0, "{:?}", t.drops);
    let rx = u64::from(COUNT) + 3 * u64::from(COUNT) + 1 + 2;
    assert_eq!(t.rx_packets, rx);
    assert_eq!(
        xdp_rx(&st),
        rx,
        "every datagram came through the AF_XDP socket"
    );
    let tx = 4 * u64::from(COUNT) + 6 * u64::from(COUNT) + 4 + 2;
    assert_eq!(t.tx_packets, tx);
    assert_eq!(t.xdp_tx + t.xdp_kernel_tx, tx);
    assert_eq!(
        t.xdp_kernel_tx, warm.xdp_kernel_tx,
        "after the first answer, every copy was written to the interface directly"
    );
}

const PROFILES: [Profile; 2] = [Profile::AeadAes128Gcm, Profile::AesCm128HmacSha1_80];

fn keys(profile: Profile, seed: u8) -> (Vec<u8>, Vec<u8>) {
    let n = profile.key_len() + profile.salt_len();
    (vec![seed; n], vec![seed ^ 0x5a; n])
}

fn session(profile: Profile, key: &[u8]) -> Session {
    let (k, s) = key.split_at(profile.key_len());
    Session::new(profile, k, s).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn srtp_receivers_get_every_packet_protected_with_their_keys() {
    let link = Link::new(1);
    let mut b = xdp_bridge(&link).await;
    let sender = party(&link, "plain", 300);
    let receivers: Vec<Party> = (0..2)
        .map(|i| party(&link, &format!("srtp{i}"), 301 + i))
        .collect();
    b.conference("s").await;
    b.add("s", &sender, false).await;
    for (i, (r, profile)) in receivers.iter().zip(PROFILES).enumerate() {
        let (ep, br) = keys(profile, i as u8 + 1);
        let params = pb::SrtpParams {
            profile: profile.name().into(),
            endpoint_key: ep,
            bridge_key: br,
        };
        b.add_with("s", r, false, Some(params)).await;
    }
    let got: Vec<Vec<Vec<u8>>> = std::thread::scope(|s| {
        let rx: Vec<_> = receivers
            .iter()
            .map(|r| s.spawn(move || collect(&r.sock, COUNT as usize, Duration::from_millis(200))))
            .collect();
        for n in 0..COUNT {
            sender.send(b.media, &sender.packet(n));
            if n % 8 == 7 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        rx.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut want: Vec<Vec<u8>> = (0..COUNT).map(|n| sender.packet(n)).collect();
    want.sort();
    for (i, (g, profile)) in got.into_iter().zip(PROFILES).enumerate() {
        let (_, br) = keys(profile, i as u8 + 1);
        let s = session(profile, &br);
        let mut stream = Stream::default();
        let mut plain: Vec<Vec<u8>> = g
            .into_iter()
            .map(|mut p| {
                let index = stream.estimate(u16::from_be_bytes([p[2], p[3]]));
                let n = s
                    .unprotect_rtp(&mut p, index)
                    .unwrap_or_else(|e| panic!("srtp{i} cannot unprotect: {e}"));
                stream.accept(index);
                p.truncate(n);
                p
            })
            .collect();
        plain.sort();
        assert!(plain == want, "srtp{i} got {} packets", plain.len());
    }
    let t = b.stats().await.total.unwrap();
    assert_eq!(t.dropped_packets, 0, "{:?}", t.drops);
    assert_eq!(t.xdp_tx + t.xdp_kernel_tx, 2 * u64::from(COUNT));
    assert!(t.xdp_tx > 0, "protected copies written to the interface");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_to_a_socket_engine_bridge_across_the_link_delivers_every_packet_once() {
    let link = Link::new(2);
    let mut a = xdp_bridge(&link).await;
    // B runs in the namespace, on io_uring: relay packets cross the veth both ways.
    let ns = link.ns.clone();
    let mut b = Bridge::launch(Launch {
        media: SocketAddr::new(IpAddr::V4(link.inner), 0),
        netns: Some(&ns),
        ..Launch::new("uring")
    })
    .await;
    let (ka, kb) = ([0xa1u8; 16], [0xb2u8; 16]);
    a.conference("c").await;
    b.conference("c").await;
    a.client
        .add_relay(relay_req("c", "b", b.media, 7, &ka, &kb))
        .await
        .unwrap();
    b.client
        .add_relay(relay_req("c", "a", a.media, 7, &kb, &ka))
        .await
        .unwrap();
    let (a1, a2, b1) = (
        party(&link, "a1", 11),
        party(&link, "a2", 12),
        party(&link, "b1", 21),
    );
    a.add("c", &a1, false).await;
    a.add("c", &a2, false).await;
    b.add("c", &b1, false).await;
    let members = [(&a1, a.media), (&a2, a.media), (&b1, b.media)];
    const N: u16 = 60;
    let got = exchange_via(
        &members,
        N,
        &[2 * N as usize; 3],
        Duration::from_millis(300),
    );
    let parties: Vec<&Party> = members.iter().map(|(p, _)| *p).collect();
    assert_exact(&parties, &got, N);
    let ta = a.stats().await.total.unwrap();
    let tb = b.stats().await.total.unwrap();
    // A relays a1's and a2's packets to B (one copy each) and receives b1's.
    assert_eq!((ta.relay_tx, ta.relay_rx), (2 * u64::from(N), u64::from(N)));
    assert_eq!((tb.relay_rx, tb.relay_tx), (2 * u64::from(N), u64::from(N)));
    assert_eq!(ta.dropped_packets + tb.dropped_packets, 0);
    assert!(
        ta.xdp_tx > 0,
        "relay and endpoint copies written to the interface"
    );
}

/// Waits (bounded) until `f` holds.
fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let until = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < until, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_bridge_leaves_nothing_attached_and_a_socket_bridge_takes_its_port() {
    let link = Link::new(3);
    let mut b = xdp_bridge(&link).await;
    let media = b.media;
    assert!(link.xdp().is_some());
    b.kill();
    wait_for("the program gone", Duration::from_secs(5), || {
        link.xdp().is_none()
    });
    let mut s = Bridge::launch(Launch {
        media,
        ..Launch::new("uring")
    })
    .await;
    assert_eq!(s.media, media);
    resolve(&link);
    let ps: Vec<Party> = (0..3)
        .map(|i| party(&link, &format!("k{i}"), 400 + i))
        .collect();
    let refs: Vec<&Party> = ps.iter().collect();
    conference_of(&mut s, "after", &refs).await;
    let got = exchange(&refs, s.media, COUNT, &[2 * COUNT as usize; 3]);
    assert_exact(&refs, &got, COUNT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interface_without_native_xdp_leaves_io_uring_serving_and_says_why() {
    // A Linux bridge device has no native XDP.
    let dev = format!("rbx{}", std::process::id() % 100_000);
    let _ = std::process::Command::new("ip")
        .args(["link", "del", &dev])
        .output();
    testkit::netns::run("ip", &["link", "add", &dev, "type", "bridge"]);
    struct Del(String);
    impl Drop for Del {
        fn drop(&mut self) {
            let _ = std::process::Command::new("ip")
                .args(["link", "del", &self.0])
                .output();
        }
    }
    let _del = Del(dev.clone());
    let log = std::env::temp_dir().join(format!("rb-xdp-fallback-{}.log", std::process::id()));
    let mut b = Bridge::launch(Launch {
        expect: Some("uring"),
        extra: &["--xdp-iface", &dev],
        stderr: Some(std::fs::File::create(&log).unwrap()),
        ..Launch::new("xdp")
    })
    .await;
    let ps: Vec<Party> = (0..3)
        .map(|i| Party::new(&format!("u{i}"), 500 + i))
        .collect();
    let refs: Vec<&Party> = ps.iter().collect();
    conference_of(&mut b, "c", &refs).await;
    let got = exchange(&refs, b.media, COUNT, &[2 * COUNT as usize; 3]);
    assert_exact(&refs, &got, COUNT);
    let st = b.stats().await;
    assert_eq!(st.engine, "uring");
    let text = std::fs::read_to_string(&log).unwrap();
    let _ = std::fs::remove_file(&log);
    assert!(
        text.contains("native XDP on") && text.contains("falling back to uring"),
        "the log says why: {text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unresolved_neighbour_is_served_through_the_kernel_then_directly() {
    let link = Link::new(4);
    let mut b = xdp_bridge(&link).await;
    // The namespace knows the host's address for good (it never asks), and the host forgets
    // the namespace's: only the bridge's own sending can make the kernel resolve it.
    let mac = std::fs::read_to_string(format!("/sys/class/net/{}/address", link.host_if)).unwrap();
    assert!(link.inside(&format!(
        "ip neigh replace {} lladdr {} dev {} nud permanent",
        link.host,
        mac.trim(),
        link.inner_if
    )));
    testkit::netns::run("ip", &["neigh", "flush", "dev", &link.host_if]);
    let (tx, rx) = (party(&link, "tx", 600), party(&link, "rx", 601));
    conference_of(&mut b, "n", &[&tx, &rx]).await;
    // One packet at a time until copies go directly (bounded), then a burst.
    let mut sent: u16 = 0;
    let until = Instant::now() + Duration::from_secs(10);
    let mut got = Vec::new();
    loop {
        tx.send(b.media, &tx.packet(sent));
        sent += 1;
        got.extend(collect(&rx.sock, 1, Duration::from_millis(0)));
        let t = b.stats().await.total.unwrap();
        if t.xdp_tx > 0 {
            assert!(
                t.xdp_kernel_tx >= 1,
                "the first copy went through the kernel"
            );
            break;
        }
        assert!(Instant::now() < until, "never switched over: {t:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let before = b.stats().await.total.unwrap();
    for _ in 0..50 {
        tx.send(b.media, &tx.packet(sent));
        sent += 1;
    }
    let missing = usize::from(sent) - got.len();
    got.extend(collect(&rx.sock, missing, Duration::from_millis(200)));
    got.sort();
    let mut want: Vec<Vec<u8>> = (0..sent).map(|n| tx.packet(n)).collect();
    want.sort();
    assert!(got == want, "rx got {} of {sent}", got.len());
    let after = b.stats().await.total.unwrap();
    assert_eq!(after.xdp_tx - before.xdp_tx, 50, "the rest went directly");
    assert_eq!(after.xdp_kernel_tx, before.xdp_kernel_tx);
}
