//! A broadcast whose edge was hung (SIGSTOP) long enough to be failed over, then continues
//! (SIGCONT): every viewer keeps the stream. A guard written for a finding of the chaos soak
//! (a 6-minute run, seed 2: the viewers of the edge that had taken the hung edge's viewers lost
//! the stream when it continued, until the pull tree changed again), which this scenario alone
//! does not reproduce (see docs/chaos.md).

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;
use ringbridge_dataplane::testkit;
use ringbridge_proto::v1::focus_client::FocusClient;

const PUB_SSRC: u32 = 7000;

/// Packets each viewer got in `window`, while the publisher streams.
fn counts(viewers: &[(String, Party)], window: Duration) -> BTreeMap<String, usize> {
    let until = Instant::now() + window;
    std::thread::scope(|s| {
        let hs: Vec<_> = viewers
            .iter()
            .map(|(name, v)| {
                s.spawn(move || {
                    v.sock
                        .set_read_timeout(Some(Duration::from_millis(20)))
                        .unwrap();
                    let mut buf = [0u8; 2048];
                    let mut n = 0;
                    while Instant::now() < until {
                        if v.sock.recv(&mut buf).is_ok() {
                            n += 1;
                        }
                    }
                    (name.clone(), n)
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewers_keep_the_stream_when_a_failed_over_edge_continues() {
    let data = data_dir("stream-resume");
    let ctl = control_with(
        &data,
        "127.0.0.1:0",
        &[
            "--report-interval-ms",
            "200",
            "--stream-fanout",
            "2",
            "--max-viewers-per-edge",
            "4",
        ],
    );
    let url = format!("http://{}", ctl.field("listen"));
    let bridges: BTreeMap<&str, Proc> = [("eu-1", "eu"), ("eu-2", "eu"), ("us-1", "us")]
        .into_iter()
        .map(|(id, region)| (id, bridge(&url, id, region)))
        .collect();
    wait_bridges(&url, 3).await;
    let mut focus = FocusClient::new(channel(&url).await);
    let publisher = Party::new(PUB_SSRC);
    let mut req = publisher.join("live", "pub", "eu");
    req.role = "publisher".into();
    let j = focus.join(req).await.unwrap().into_inner();
    let origin_media: std::net::SocketAddr = j.media_addr.parse().unwrap();
    let mut viewers = Vec::new();
    for i in 0..8 {
        let v = Party::new(0);
        let name = format!("v{i}");
        let mut req = v.join("live", &name, if i % 2 == 0 { "eu" } else { "us" });
        req.ssrcs.clear();
        req.role = "viewer".into();
        focus.join(req).await.unwrap();
        viewers.push((name, v));
    }
    let streaming = Arc::new(AtomicBool::new(true));
    let sender = {
        let sock = publisher.sock.try_clone().unwrap();
        let on = streaming.clone();
        std::thread::spawn(move || {
            let mut seq = 0u16;
            while on.load(Ordering::Relaxed) {
                let p = testkit::rtp(PUB_SSRC, seq, 0, b"live");
                let _ = sock.send_to(&p, origin_media);
                seq = seq.wrapping_add(1);
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    let all = |c: &BTreeMap<String, usize>| c.values().all(|&n| n > 20);
    let before = counts(&viewers, Duration::from_millis(500));
    assert!(all(&before), "every viewer streams: {before:?}");

    // The us edge hangs long enough to be failed over: its viewers move, and stream again.
    let c = get(&mut focus, "live").await.unwrap();
    let us_edge = c
        .bridges
        .iter()
        .find(|b| b.bridge_id == "us-1" && !b.participants.is_empty())
        .map(|b| b.bridge_id.clone())
        .expect("the us viewers are on us-1");
    bridges[us_edge.as_str()].pause();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let c = get(&mut focus, "live").await.unwrap();
        if c.bridges.iter().all(|b| b.bridge_id != us_edge) {
            break;
        }
        assert!(Instant::now() < deadline, "never failed over: {c:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let moved = counts(&viewers, Duration::from_millis(500));
    assert!(
        all(&moved),
        "every viewer streams after the failover: {moved:?}"
    );

    // It continues: nobody loses the stream.
    bridges[us_edge.as_str()].resume();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let after = counts(&viewers, Duration::from_millis(1000));
    streaming.store(false, Ordering::Relaxed);
    sender.join().unwrap();
    assert!(
        all(&after),
        "every viewer streams after the hung edge continued: {after:?}"
    );
    drop(bridges);
    let _ = std::fs::remove_dir_all(&data);
}
