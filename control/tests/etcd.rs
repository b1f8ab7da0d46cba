//! The etcd store with a real etcd: placements and routes written by one control instance are
//! what another instance of the shard starts from; a hung etcd makes changes UNAVAILABLE and
//! loses nothing once it answers again.

mod common;

use std::time::{Duration, Instant};

use common::*;
use ringbridge_proto::v1::focus_client::FocusClient;
use ringbridge_proto::v1::router_client::RouterClient;

#[tokio::test]
async fn placements_and_routes_live_in_etcd_and_survive_a_hung_etcd() {
    let etcd = Etcd::start("store");
    let mut first = control_on_etcd(&etcd, "shard-0", "etcd-a");
    let url = format!("http://{}", first.field("listen"));
    wait_active(&url).await;
    let _b = bridge(&url, "eu-1", "eu");
    wait_bridges(&url, 1).await;
    let mut focus = FocusClient::new(channel(&url).await);
    let (p1, p2) = (Party::new(1), Party::new(2));
    focus.join(p1.join("x", "p1", "eu")).await.unwrap();
    focus.join(p2.join("x", "p2", "eu")).await.unwrap();
    let route = route_of(&mut RouterClient::new(channel(&url).await), "x")
        .await
        .unwrap();
    // A hung etcd (SIGSTOP: connection open, no answer): a join is acknowledged only once it is
    // in etcd, so this one is refused (done on the bridge, not durable), and from the next lease
    // renewal on changes are refused up front, saying why.
    etcd_pause(&etcd);
    let e = focus
        .join(Party::new(3).join("x", "p3", "eu"))
        .await
        .expect_err("not durable while etcd is hung");
    assert_eq!(e.code(), tonic::Code::Unavailable);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut n = 0;
    let refused = loop {
        n += 1;
        match focus
            .join(Party::new(4).join(&format!("y{n}"), "q1", "eu"))
            .await
        {
            Err(e) if e.message().contains("etcd") => break e,
            _ => {
                assert!(Instant::now() < deadline, "a hung etcd was never noticed");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    assert_eq!(refused.code(), tonic::Code::Unavailable);
    assert!(refused.message().contains("etcd"), "{}", refused.message());
    // etcd answers again: the instance recovers by itself and what was pending is written.
    etcd_resume(&etcd);
    let deadline = Instant::now() + Duration::from_secs(10);
    while focus
        .join(Party::new(5).join("z", "r1", "eu"))
        .await
        .is_err_and(|e| e.code() == tonic::Code::Unavailable)
    {
        assert!(Instant::now() < deadline, "never recovered");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_millis(600)).await; // a flush interval or two
    first.kill(); // a crash: only what reached etcd counts
    // Another instance of the shard, with an empty data directory, starts from etcd.
    let second = control_on_etcd(&etcd, "shard-0", "etcd-b");
    let url2 = format!("http://{}", second.field("listen"));
    let mut focus2 = FocusClient::new(channel(&url2).await);
    // It stands by until the first one's lease has expired, then takes over from etcd.
    let deadline = Instant::now() + Duration::from_secs(10);
    let x = loop {
        match get(&mut focus2, "x").await {
            Ok(x) => break x,
            Err(e) => {
                assert_eq!(e.code(), tonic::Code::Unavailable, "{e}");
                assert!(Instant::now() < deadline, "no takeover: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    // Every acknowledged participant; p3 was never acknowledged (it may have been written
    // after etcd came back, or dropped when the instance stepped down and took over again).
    assert!(
        x.participants == ["p1", "p2"] || x.participants == ["p1", "p2", "p3"],
        "{:?}",
        x.participants
    );
    assert_eq!(x.bridge_id, "eu-1");
    assert!(get(&mut focus2, "z").await.is_ok());
    let again = route_of(&mut RouterClient::new(channel(&url2).await), "x")
        .await
        .unwrap();
    assert_eq!(again.shard_id, route.shard_id);
}

#[test]
fn a_bad_store_url_names_the_flag() {
    let out = std::process::Command::new(bin("ringbridge-control"))
        .args(["serve", "--listen", "127.0.0.1:0", "--store", "redis://x"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--store"));
}

fn etcd_pause(e: &Etcd) {
    signal(&e.child, "STOP");
}

fn etcd_resume(e: &Etcd) {
    signal(&e.child, "CONT");
}
