//! The Bridge API against hostile or careless requests, over a real process: oversized requests
//! are refused before any work (and do not delay other calls), ids are bounded and never echoed
//! when too long, addresses that make no sense are refused, undecodable requests are
//! INVALID_ARGUMENT, and capacity limits (endpoints, and relays apart) answer RESOURCE_EXHAUSTED.
//! Nothing programmed changes.

mod common;

use std::time::{Duration, Instant};

use common::Bridge;
use ringbridge_proto::v1 as pb;
use tonic::Code;

fn add(conf: &str, ep: &str, ssrcs: Vec<u32>, addr: &str) -> pb::AddEndpointRequest {
    pb::AddEndpointRequest {
        conference_id: conf.into(),
        endpoint_id: ep.into(),
        ssrcs,
        remote_addr: addr.into(),
        srtp: None,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_requests_are_refused_before_any_work() {
    let mut b = Bridge::start("mio").await;
    b.conference("c").await;
    b.client
        .add_endpoint(add("c", "keep", vec![1], "127.0.0.1:4000"))
        .await
        .unwrap();
    // 300 000 SSRCs to an unknown conference: refused on the count, at once; a GetStats sent
    // meanwhile is answered (bounded wait only to fail instead of hanging).
    let mut c2 = b.client.clone();
    let t = Instant::now();
    let big = tokio::spawn(async move {
        c2.add_endpoint(add("nope", "e", (0..300_000).collect(), ""))
            .await
    });
    let mut c3 = b.client.clone();
    tokio::time::timeout(Duration::from_secs(5), c3.get_stats(pb::GetStatsRequest {}))
        .await
        .expect("GetStats answers while a big request is handled")
        .unwrap();
    let e = big.await.unwrap().unwrap_err();
    eprintln!(
        "AddEndpoint with 300 000 SSRCs answered in {:?}",
        t.elapsed()
    );
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(
        e.message(),
        "ssrcs: 300000 items, more than the limit of 64"
    );
    // Ids: bounded, and a long one is not echoed back.
    let long = "x".repeat(12_000);
    for r in [add(&long, "e", vec![5], ""), add("c", &long, vec![5], "")] {
        let e = b.client.add_endpoint(r).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(
            e.message()
                .ends_with("12000 bytes, more than the limit of 256"),
            "{}",
            e.message()
        );
        assert!(e.message().len() < 100);
    }
    let e = b
        .client
        .create_conference(pb::CreateConferenceRequest {
            conference_id: long.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message().starts_with("conference_id: 12000 bytes"),
        "{}",
        e.message()
    );
    let l = b.list().await;
    assert_eq!(l.conferences.len(), 1);
    assert_eq!(l.conferences[0].endpoints.len(), 1, "nothing changed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn addresses_that_make_no_sense_are_refused() {
    let mut b = Bridge::start("mio").await;
    b.conference("c").await;
    let own = b.media.to_string();
    for bad in [own.as_str(), "255.255.255.255:5000", "127.255.255.255:5000"] {
        let e = b
            .client
            .add_endpoint(add("c", "e", vec![1], bad))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{bad}");
        assert!(e.message().starts_with("remote_addr:"), "{}", e.message());
    }
    let l = b.list().await;
    assert!(l.conferences[0].endpoints.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capacity_limits_answer_resource_exhausted() {
    let mut b = Bridge::start_with(
        "mio",
        "127.0.0.1",
        &[
            "--max-endpoints",
            "3",
            "--max-endpoints-per-conference",
            "2",
        ],
    )
    .await;
    b.conference("c").await;
    b.conference("d").await;
    for (c, e, s) in [("c", "a", 1), ("c", "b", 2)] {
        b.client.add_endpoint(add(c, e, vec![s], "")).await.unwrap();
    }
    let e = b
        .client
        .add_endpoint(add("c", "x", vec![3], ""))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted);
    assert!(
        e.message().contains("--max-endpoints-per-conference"),
        "{}",
        e.message()
    );
    b.client
        .add_endpoint(add("d", "a", vec![4], ""))
        .await
        .unwrap();
    let e = b
        .client
        .add_endpoint(add("d", "b", vec![5], ""))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted);
    assert!(e.message().contains("--max-endpoints)"), "{}", e.message());
}

fn relay(conf: &str, id: &str, remote: std::net::SocketAddr) -> pb::AddRelayRequest {
    pb::AddRelayRequest {
        conference_id: conf.into(),
        relay_id: id.into(),
        remote_addr: remote.to_string(),
        link_conference: 1,
        tx_key: vec![1; 16],
        rx_key: vec![2; 16],
        downstream: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_have_limits_of_their_own() {
    use common::{Party, collect};
    let mut b = Bridge::start_with(
        "mio",
        "127.0.0.1",
        &[
            "--max-endpoints",
            "1",
            "--max-relays",
            "3",
            "--max-relays-per-conference",
            "2",
        ],
    )
    .await;
    b.conference("c").await;
    b.conference("d").await;
    let p = Party::new("p", 1);
    b.add("c", &p, false).await;
    // Remote bridges: sockets that count what reaches them.
    let remotes: Vec<Party> = (0..4).map(|i| Party::new(&format!("r{i}"), 0)).collect();
    // Relays are not endpoints: the endpoint limit (1, taken) does not stop them.
    for r in &remotes[..2] {
        b.client
            .add_relay(relay("c", &r.name, r.addr()))
            .await
            .unwrap();
    }
    let e = b
        .client
        .add_relay(relay("c", "r2", remotes[2].addr()))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted);
    assert!(
        e.message().contains("(--max-relays-per-conference)"),
        "{}",
        e.message()
    );
    b.client
        .add_relay(relay("d", "r2", remotes[2].addr()))
        .await
        .unwrap();
    // The bridge-wide limit, also through Apply (as the control plane sends relays).
    let r = b
        .client
        .apply(pb::ApplyRequest {
            changes: vec![pb::Change {
                change: Some(pb::change::Change::AddRelay(relay(
                    "d",
                    "r3",
                    remotes[3].addr(),
                ))),
            }],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.results[0].code, Code::ResourceExhausted as i32);
    assert!(
        r.results[0].message.contains("(--max-relays)"),
        "{}",
        r.results[0].message
    );
    // Nothing programmed is lost: the relays are listed, and p's packets reach both of c's.
    let l = b.list().await;
    let relays: Vec<usize> = l.conferences.iter().map(|c| c.relays.len()).collect();
    assert_eq!(relays, [2, 1]);
    p.send(b.media, &p.packet(0));
    for r in &remotes[..2] {
        assert_eq!(collect(&r.sock, 1, Duration::from_millis(100)).len(), 1);
    }
    // A relay removed makes room for another.
    b.client
        .remove_relay(pb::RemoveRelayRequest {
            conference_id: "c".into(),
            relay_id: "r0".into(),
        })
        .await
        .unwrap();
    b.client
        .add_relay(relay("d", "r3", remotes[3].addr()))
        .await
        .unwrap();
}

/// Sends raw bytes as a request message.
#[derive(Debug, Clone, Default)]
struct Raw;

struct RawEncoder;
struct NoDecoder;

impl tonic::codec::Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: Vec<u8>,
        buf: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        use bytes::BufMut;
        buf.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for NoDecoder {
    type Item = ();
    type Error = tonic::Status;
    fn decode(
        &mut self,
        _buf: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<()>, tonic::Status> {
        Ok(Some(()))
    }
}

impl tonic::codec::Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = ();
    type Encoder = RawEncoder;
    type Decoder = NoDecoder;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> NoDecoder {
        NoDecoder
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_requests_are_invalid_argument() {
    let b = Bridge::start("mio").await;
    let ch = tonic::transport::Channel::from_shared(format!("http://{}", b.api))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(ch);
    // Field 1 (conference_id), length 2, bytes that are not UTF-8; then plain garbage.
    for body in [vec![0x0a, 0x02, 0xff, 0xfe], vec![0xff; 7]] {
        grpc.ready().await.unwrap();
        let e = grpc
            .unary::<Vec<u8>, (), Raw>(
                tonic::Request::new(body),
                "/ringbridge.v1.Bridge/CreateConference".parse().unwrap(),
                Raw,
            )
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        assert!(
            e.message().contains("CreateConferenceRequest"),
            "{}",
            e.message()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_conference_changes_beside_a_small_one_that_keeps_forwarding() {
    use common::{Party, assert_exact, exchange};
    let mut b = Bridge::start("mio").await;
    b.conference("big").await;
    b.conference("small").await;
    let (p1, p2) = (Party::new("p1", 1), Party::new("p2", 2));
    b.add("small", &p1, false).await;
    b.add("small", &p2, false).await;
    // 20 000 endpoints in one conference, 4 096 changes per Apply.
    let n = 20_000u32;
    for chunk in (0..n).collect::<Vec<_>>().chunks(4096) {
        let changes = chunk
            .iter()
            .map(|&i| pb::Change {
                change: Some(pb::change::Change::AddEndpoint(add(
                    "big",
                    &format!("e{i}"),
                    vec![1000 + i],
                    &format!("10.{}.{}.{}:5000", i >> 16, (i >> 8) & 255, i & 255),
                ))),
            })
            .collect();
        let r = b
            .client
            .apply(pb::ApplyRequest { changes })
            .await
            .unwrap()
            .into_inner();
        assert!(
            r.results.iter().all(|r| r.code == 0),
            "{:?}",
            &r.results[..3]
        );
    }
    // One change per RPC into the big conference, then the small one still forwards exactly.
    // (Latencies are printed for the record, not asserted.)
    let per_rpc = |conf: &'static str, base: u32| {
        let mut c = b.client.clone();
        async move {
            let t = Instant::now();
            for i in 0..100u32 {
                let ip = format!("10.200.{}.{}:5000", base, i);
                c.add_endpoint(add(
                    conf,
                    &format!("x{base}-{i}"),
                    vec![900_000 + base * 1000 + i],
                    &ip,
                ))
                .await
                .unwrap();
            }
            t.elapsed() / 100
        }
    };
    let in_big = per_rpc("big", 1).await;
    let in_small = per_rpc("small", 2).await;
    eprintln!(
        "AddEndpoint RPC: {in_big:?} into the 20 000-endpoint conference, {in_small:?} into a small one beside it"
    );
    b.client
        .add_endpoint(add("big", "late", vec![7], "10.99.0.1:5000"))
        .await
        .unwrap();
    b.client
        .remove_endpoint(pb::RemoveEndpointRequest {
            conference_id: "big".into(),
            endpoint_id: "e5".into(),
        })
        .await
        .unwrap();
    assert_eq!(b.stats().await.endpoints, n + 202);
    let got = exchange(&[&p1, &p2], b.media, 20, &[20, 20]);
    assert_exact(&[&p1, &p2], &got, 20);
    let t = Instant::now();
    let r = b
        .client
        .delete_conference(pb::DeleteConferenceRequest {
            conference_id: "big".into(),
        })
        .await
        .unwrap()
        .into_inner();
    eprintln!(
        "DeleteConference of {} endpoints: {:?}",
        r.removed_endpoints,
        t.elapsed()
    );
    assert_eq!(r.removed_endpoints, n + 100);
    assert_eq!(b.stats().await.endpoints, 102);
    let got = exchange(&[&p1, &p2], b.media, 20, &[20, 20]);
    assert_exact(&[&p1, &p2], &got, 20);
}
