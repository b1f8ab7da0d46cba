//! Issue 20's fault sweep, the control-plane items that need no etcd, with real processes: a
//! broadcast's origin restarted within a second with the same id and ports (fresh relay keys,
//! media again at once, nothing dropped as a replay), abandoned WatchConference streams freed
//! and capped per client, and a manual drain that survives a restart of the control plane.

mod common;

use std::time::{Duration, Instant};

use common::*;
use ringbridge_dataplane::testkit;
use ringbridge_proto::v1 as pb;
use ringbridge_proto::v1::bridge_client::BridgeClient;
use ringbridge_proto::v1::focus_client::FocusClient;
use ringbridge_proto::v1::registry_client::RegistryClient;
use tonic::Code;

/// A bridge on fixed media and API ports (a restart takes the same ones, once they are free).
fn bridge_at(url: &str, id: &str, region: &str, media: u16, api: u16) -> Proc {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = std::panic::catch_unwind(|| {
            bridge_with(
                url,
                id,
                region,
                &format!("127.0.0.1:{media}"),
                &format!("127.0.0.1:{api}"),
            )
        });
        match r {
            Ok(p) => return p,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => std::panic::resume_unwind(e),
        }
    }
}

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_restarted_with_the_same_id_gets_fresh_relay_keys_and_media_flows_at_once() {
    let data = data_dir("restart-keys");
    // Never declared down in the second it is away: it re-registers as a new process.
    let ctl = control_with(
        &data,
        "127.0.0.1:0",
        &[
            "--report-interval-ms",
            "200",
            "--missed-reports",
            "50",
            "--probe-failures",
            "50",
        ],
    );
    let url = format!("http://{}", ctl.field("listen"));
    let (media, api) = (free_udp_port(), free_port());
    let mut origin = bridge_at(&url, "o-1", "eu", media, api);
    let edge = bridge(&url, "e-1", "us");
    wait_bridges(&url, 2).await;
    let mut f = FocusClient::new(channel(&url).await);
    let publisher = Party::new(7000);
    let mut req = publisher.join("live", "pub", "eu");
    req.role = "publisher".into();
    let to = f.join(req).await.unwrap().into_inner();
    assert_eq!(to.bridge_id, "o-1");
    let to: std::net::SocketAddr = to.media_addr.parse().unwrap();
    let viewer = Party::new(0);
    let mut req = viewer.join("live", "v", "us");
    req.ssrcs.clear();
    req.role = "viewer".into();
    assert_eq!(f.join(req).await.unwrap().into_inner().bridge_id, "e-1");

    // Media for a while (the origin's relay sequence goes well past where a new process starts).
    let mut buf = [0u8; 2048];
    let mut got = 0;
    for seq in 1..=300u16 {
        publisher
            .sock
            .send_to(&testkit::rtp(7000, seq, 0, b"live"), to)
            .unwrap();
        if seq % 10 == 0 {
            while viewer.sock.recv(&mut buf).is_ok() {
                got += 1;
                viewer
                    .sock
                    .set_read_timeout(Some(Duration::from_millis(20)))
                    .unwrap();
            }
        }
    }
    assert!(got > 250, "the viewer got {got} of 300 before the restart");

    // The origin dies and comes back within a second, same id, same ports.
    origin.kill();
    origin = bridge_at(&url, "o-1", "eu", media, api);
    let restarted = Instant::now();
    viewer
        .sock
        .set_read_timeout(Some(Duration::from_millis(20)))
        .unwrap();
    let mut seq = 301u16;
    let back = loop {
        publisher
            .sock
            .send_to(&testkit::rtp(7000, seq, 0, b"live"), to)
            .unwrap();
        seq += 1;
        if viewer.sock.recv(&mut buf).is_ok() {
            break restarted.elapsed();
        }
        assert!(
            restarted.elapsed() < Duration::from_secs(5),
            "no media through the restarted origin for 5 s"
        );
    };
    // Nothing the new process sealed was taken for a replay of the old one's.
    let mut e = BridgeClient::new(channel(&format!("http://{}", edge.field("api"))).await);
    let drops = drops_of(&mut e).await;
    assert_eq!(drops.relay_replay, 0, "{drops:?}");
    assert_eq!(drops.relay_auth_failed, 0, "{drops:?}");
    eprintln!("media back {back:?} after the restart");
    drop(origin);
    let _ = std::fs::remove_dir_all(&data);
}

/// Opens a watch on `conference` over its own connection.
async fn open_watch(
    url: &str,
    conference: &str,
) -> Result<tonic::Streaming<pb::ConferencePlacement>, tonic::Status> {
    FocusClient::new(channel(url).await)
        .watch_conference(pb::WatchConferenceRequest {
            conference: conference.into(),
        })
        .await
        .map(tonic::Response::into_inner)
}

fn watches(metrics: &str) -> u64 {
    scrape(metrics)
        .lines()
        .find_map(|l| l.strip_prefix("ringbridge_control_watches "))
        .expect("watch gauge")
        .trim()
        .parse::<f64>()
        .unwrap() as u64
}

async fn wait_watches(metrics: &str, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while watches(metrics) != n {
        assert!(
            Instant::now() < deadline,
            "{} watches open, want {n}",
            watches(metrics)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_watches_are_freed_and_a_client_holds_at_most_its_limit() {
    let data = data_dir("watches");
    let ctl = control_with(
        &data,
        "127.0.0.1:0",
        &[
            "--report-interval-ms",
            "200",
            "--max-watches-per-client",
            "50",
        ],
    );
    let url = format!("http://{}", ctl.field("listen"));
    let metrics = ctl.field("metrics");
    // Watches of conferences that never exist, abandoned by their clients: all freed.
    for round in 0..3 {
        let mut open = Vec::new();
        for i in 0..50 {
            open.push(
                open_watch(&url, &format!("none-{round}-{i}"))
                    .await
                    .unwrap(),
            );
        }
        wait_watches(&metrics, 50).await;
        // The 51st of this client is refused, naming the limit.
        let e = open_watch(&url, "one-more").await.unwrap_err();
        assert_eq!(e.code(), Code::ResourceExhausted);
        assert!(e.message().contains("--max-watches-per-client"), "{e}");
        drop(open);
        wait_watches(&metrics, 0).await;
    }
    let _ = std::fs::remove_dir_all(&data);
}

async fn state_of(url: &str, id: &str) -> String {
    bridges_of(url)
        .await
        .into_iter()
        .find(|b| b.bridge_id == id)
        .map(|b| b.state)
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manual_drain_survives_a_restart_of_the_control_plane() {
    let data = data_dir("drain-restart");
    let mut ctl = control(&data, "127.0.0.1:0");
    let listen = ctl.field("listen");
    let url = format!("http://{listen}");
    let _b = [bridge(&url, "d-1", "eu"), bridge(&url, "d-2", "eu")];
    wait_bridges(&url, 2).await;
    RegistryClient::new(channel(&url).await)
        .drain_bridge(pb::DrainBridgeRequest {
            bridge_id: "d-1".into(),
        })
        .await
        .unwrap();
    assert_eq!(state_of(&url, "d-1").await, "draining");
    // Acknowledged, so durable: even a SIGKILL keeps it.
    ctl.kill();
    let _ctl = control(&data, &listen);
    let deadline = Instant::now() + Duration::from_secs(10);
    while state_of(&url, "d-2").await != "up" || state_of(&url, "d-1").await.is_empty() {
        assert!(Instant::now() < deadline, "bridges never registered again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(state_of(&url, "d-1").await, "draining");
    // It gets no new conferences.
    let mut f = FocusClient::new(channel(&url).await);
    for i in 0..6u32 {
        let r = f
            .join(Party::new(100 + i).join(&format!("c{i}"), "p", "eu"))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.bridge_id, "d-2");
    }
    let _ = std::fs::remove_dir_all(&data);
}
