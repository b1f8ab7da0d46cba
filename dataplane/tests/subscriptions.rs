//! Subscriptions over real bridge processes, per engine: a receiver subscribed to one of three
//! senders gets exactly that sender's packets (and everything again once it subscribes to all);
//! over a relay, a sender nobody behind it subscribes to does not cross it (relay_tx counts);
//! bad subscriptions name the field and change nothing.

mod common;

use std::time::Duration;

use common::{Bridge, Party, collect};
use ringbridge_proto::v1 as pb;
use tonic::Code;

fn sub(
    conf: &str,
    endpoint: &str,
    endpoints: &[&str],
    ssrcs: &[u32],
) -> pb::SetSubscriptionRequest {
    pb::SetSubscriptionRequest {
        conference_id: conf.into(),
        endpoint_id: endpoint.into(),
        endpoints: endpoints.iter().map(|e| e.to_string()).collect(),
        ssrcs: ssrcs.to_vec(),
        ..Default::default()
    }
}

/// What each receiver got from each sender: (receiver, sender SSRC) counts.
fn from_whom(got: &[Vec<u8>]) -> Vec<u32> {
    let mut v: Vec<u32> = got
        .iter()
        .map(|p| u32::from_be_bytes([p[8], p[9], p[10], p[11]]))
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

async fn a_receiver_gets_exactly_the_senders_it_subscribed_to(engine: &str) {
    let mut b = Bridge::start(engine).await;
    b.conference("c").await;
    let ps: Vec<Party> = (0..4)
        .map(|i| Party::new(&format!("p{i}"), 100 + i))
        .collect();
    for p in &ps {
        b.add("c", p, false).await;
    }
    // p3 receives p1 only: named by endpoint id.
    b.client
        .set_subscription(sub("c", "p3", &["p1"], &[]))
        .await
        .unwrap();
    let listed = b.list().await.conferences[0]
        .endpoints
        .iter()
        .find(|e| e.endpoint_id == "p3")
        .unwrap()
        .subscription
        .clone();
    assert_eq!(listed.unwrap().ssrcs, vec![101]);
    const N: u16 = 20;
    let round = |from: u16| {
        std::thread::scope(|s| {
            let r3 = s.spawn(|| collect(&ps[3].sock, usize::from(N), Duration::from_millis(300)));
            let r0 =
                s.spawn(|| collect(&ps[0].sock, 2 * usize::from(N), Duration::from_millis(300)));
            for n in 0..N {
                for p in &ps[..3] {
                    p.send(b.media, &p.packet(from + n));
                }
            }
            (r3.join().unwrap(), r0.join().unwrap())
        })
    };
    let (at3, at0) = round(0);
    assert_eq!(at3.len(), usize::from(N), "p3 got p1's packets, no others");
    assert_eq!(from_whom(&at3), vec![101]);
    assert_eq!(at3, (0..N).map(|n| ps[1].packet(n)).collect::<Vec<_>>());
    assert_eq!(from_whom(&at0), vec![101, 102], "p0 still gets everyone");
    // By SSRC, then back to everyone.
    b.client
        .set_subscription(sub("c", "p3", &[], &[102]))
        .await
        .unwrap();
    let (at3, _) = round(100);
    assert_eq!(from_whom(&at3), vec![102]);
    b.client
        .set_subscription(pb::SetSubscriptionRequest {
            conference_id: "c".into(),
            endpoint_id: "p3".into(),
            all: true,
            ..Default::default()
        })
        .await
        .unwrap();
    let (at3, _) = round(200);
    assert_eq!(from_whom(&at3), vec![100, 101, 102]);
    assert_eq!(at3.len(), 3 * usize::from(N));
    assert_eq!(b.stats().await.total.unwrap().dropped_packets, 0);
}

async fn an_unsubscribed_sender_does_not_cross_a_relay(engine: &str) {
    let (mut a, mut b) = (Bridge::start(engine).await, Bridge::start(engine).await);
    a.conference("c").await;
    b.conference("c").await;
    let (ka, kb) = ([7u8; 16], [8u8; 16]);
    let req = |id: std::net::SocketAddr, tx: &[u8], rx: &[u8]| pb::AddRelayRequest {
        conference_id: "c".into(),
        relay_id: "peer".into(),
        remote_addr: id.to_string(),
        link_conference: 3,
        tx_key: tx.to_vec(),
        rx_key: rx.to_vec(),
        downstream: false,
    };
    a.client.add_relay(req(b.media, &ka, &kb)).await.unwrap();
    b.client.add_relay(req(a.media, &kb, &ka)).await.unwrap();
    let (a1, a2, b1) = (
        Party::new("a1", 11),
        Party::new("a2", 12),
        Party::new("b1", 21),
    );
    a.add("c", &a1, false).await;
    a.add("c", &a2, false).await;
    b.add("c", &b1, false).await;
    // B's only endpoint wants a1: the control plane tells A that the relay carries 11 only.
    a.client
        .set_subscription(pb::SetSubscriptionRequest {
            conference_id: "c".into(),
            relay_id: "peer".into(),
            ssrcs: vec![11],
            ..Default::default()
        })
        .await
        .unwrap();
    const N: u16 = 10;
    let at_b1 = std::thread::scope(|s| {
        let r = s.spawn(|| collect(&b1.sock, usize::from(N), Duration::from_millis(300)));
        for n in 0..N {
            a1.send(a.media, &a1.packet(n));
            a2.send(a.media, &a2.packet(n));
        }
        r.join().unwrap()
    });
    assert_eq!(from_whom(&at_b1), vec![11]);
    assert_eq!(at_b1.len(), usize::from(N));
    let ta = a.stats().await.total.unwrap();
    assert_eq!(ta.relay_tx, u64::from(N), "a2's media stayed on A");
    let tb = b.stats().await.total.unwrap();
    assert_eq!((tb.relay_rx, tb.dropped_packets), (u64::from(N), 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_subscriptions_name_the_field_and_change_nothing() {
    let mut b = Bridge::start("mio").await;
    b.conference("c").await;
    let p = Party::new("p", 1);
    b.add("c", &p, false).await;
    let cases = [
        (
            sub("c", "p", &["ghost"], &[]),
            Code::NotFound,
            "endpoints: endpoint \"ghost\"",
        ),
        (sub("c", "nobody", &[], &[1]), Code::NotFound, "endpoint_id"),
        (sub("nope", "p", &[], &[1]), Code::NotFound, "conference_id"),
        (
            sub("c", "", &[], &[1]),
            Code::InvalidArgument,
            "endpoint_id",
        ),
        (
            pb::SetSubscriptionRequest {
                relay_id: "r".into(),
                ..sub("c", "p", &[], &[])
            },
            Code::InvalidArgument,
            "exactly one",
        ),
        (
            pb::SetSubscriptionRequest {
                all: true,
                ..sub("c", "p", &[], &[5])
            },
            Code::InvalidArgument,
            "all",
        ),
        (
            sub("c", "p", &[], &(0..5000).collect::<Vec<u32>>()),
            Code::InvalidArgument,
            "limit of 4096",
        ),
    ];
    for (req, code, text) in cases {
        let e = b.client.set_subscription(req).await.unwrap_err();
        assert_eq!(e.code(), code, "{}", e.message());
        assert!(
            e.message().contains(text),
            "{:?} lacks {text:?}",
            e.message()
        );
    }
    let listed = b.list().await.conferences[0].endpoints[0]
        .subscription
        .clone();
    assert_eq!(listed, None, "nothing changed");
    // In a batch, a bad subscription fails alone.
    let r = b
        .client
        .apply(pb::ApplyRequest {
            changes: vec![
                pb::Change {
                    change: Some(pb::change::Change::SetSubscription(sub(
                        "c",
                        "p",
                        &["ghost"],
                        &[],
                    ))),
                },
                pb::Change {
                    change: Some(pb::change::Change::SetSubscription(sub(
                        "c",
                        "p",
                        &[],
                        &[9],
                    ))),
                },
            ],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.results[0].code, Code::NotFound as i32);
    assert_eq!(r.results[1].code, 0);
    let listed = b.list().await.conferences[0].endpoints[0]
        .subscription
        .clone();
    assert_eq!(listed.unwrap().ssrcs, vec![9]);
}

per_engine!(
    a_receiver_gets_exactly_the_senders_it_subscribed_to,
    an_unsubscribed_sender_does_not_cross_a_relay
);
