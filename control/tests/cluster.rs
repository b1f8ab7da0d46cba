//! The control plane with real processes on loopback: a control instance and three bridges in
//! two regions. Placement by region and load, media through the placed bridge, failover when a
//! bridge process dies (announced on WatchConference, media flows again), state surviving a
//! control restart, the router, the CLI, and errors.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use ringbridge_proto::v1 as pb;
use ringbridge_proto::v1::focus_client::FocusClient;
use ringbridge_proto::v1::registry_client::RegistryClient;
use ringbridge_proto::v1::router_client::RouterClient;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn placement_failover_and_restart() {
    let data = data_dir("cluster");
    let mut ctl = control(&data, "127.0.0.1:0");
    let listen = ctl.field("listen");
    let url = format!("http://{listen}");
    let mut eu = [bridge(&url, "eu-1", "eu"), bridge(&url, "eu-2", "eu")];
    let _b3 = bridge(&url, "us-1", "us");
    wait_bridges(&url, 3).await;
    let mut focus = FocusClient::new(channel(&url).await);

    // Placement: by region, then spread by load inside the region.
    let (a1, a2, u1) = (Party::new(11), Party::new(12), Party::new(21));
    let ja = focus
        .join(a1.join("alpha", "a1", "eu"))
        .await
        .unwrap()
        .into_inner();
    assert!(ja.bridge_id.starts_with("eu-"));
    let ja2 = focus
        .join(a2.join("alpha", "a2", "eu"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        ja2.bridge_id, ja.bridge_id,
        "a conference stays on one bridge"
    );
    let ju = focus
        .join(u1.join("uno", "u1", "us"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ju.bridge_id, "us-1");
    let jb = focus
        .join(Party::new(31).join("beta", "b1", "eu"))
        .await
        .unwrap()
        .into_inner();
    assert!(
        jb.bridge_id.starts_with("eu-") && jb.bridge_id != ja.bridge_id,
        "load spreads in region"
    );

    // Media flows through the placed bridge.
    assert!(flows(&a1, &a2, &ja.media_addr, 1));

    // Metrics: the control plane's placements and bridges, the bridge's counters.
    let m = scrape(&ctl.field("metrics"));
    assert!(m.contains("ringbridge_control_participants 4.0"), "{m}");
    assert!(
        m.contains("ringbridge_control_bridges{state=\"up\"} 3.0"),
        "{m}"
    );
    assert!(
        m.contains("ringbridge_control_bridge_stress{bridge=\"us-1\"}"),
        "{m}"
    );
    let host = if ja.bridge_id == "eu-1" {
        &eu[0]
    } else {
        &eu[1]
    };
    let m = scrape(&host.field("metrics"));
    assert!(m.contains("ringbridge_endpoints 2.0"), "{m}");
    assert!(
        m.contains("ringbridge_tx_packets_total ")
            && !m.contains("ringbridge_tx_packets_total 0\n"),
        "{m}"
    );
    assert!(
        m.contains("ringbridge_dropped_packets{reason=\"unknown_source\"} 0.0"),
        "{m}"
    );

    // Kill alpha's bridge: alpha moves to the other bridge of its region, which also hosts beta.
    let (dead, alive) = if ja.bridge_id == "eu-1" {
        (0, "eu-2")
    } else {
        (1, "eu-1")
    };
    let mut watch = watch(&mut focus, "alpha").await;
    let current = watch.message().await.unwrap().unwrap();
    assert_eq!(
        (current.bridge_id.as_str(), current.reason.as_str()),
        (ja.bridge_id.as_str(), "current")
    );
    eu[dead].kill();
    let moved = tokio::time::timeout(Duration::from_secs(5), watch.message())
        .await
        .expect("failover announced")
        .unwrap()
        .unwrap();
    assert_eq!(moved.reason, "failover");
    assert_eq!(moved.bridge_id, alive, "moved within the region");
    assert_eq!(moved.participants, ["a1", "a2"]);
    assert!(
        flows(&a1, &a2, &moved.media_addr, 2),
        "media flows through the new bridge"
    );
    assert!(flows(&a2, &a1, &moved.media_addr, 3), "both ways");

    // Routes and placements survive a restart of the control plane.
    let mut router = RouterClient::new(channel(&url).await);
    let route = route_of(&mut router, "alpha").await.unwrap();
    ctl.stop();
    let ctl2 = control(&data, &listen);
    assert_eq!(ctl2.field("listen"), listen);
    let mut focus = FocusClient::new(channel(&url).await);
    let after = get(&mut focus, "alpha").await.unwrap();
    assert_eq!(after.bridge_id, alive);
    assert_eq!(after.participants, ["a1", "a2"]);
    let mut router = RouterClient::new(channel(&url).await);
    let again = route_of(&mut router, "alpha").await.unwrap();
    assert_eq!(again.shard_id, route.shard_id);
    // The surviving bridges re-register with the new instance and media still flows.
    wait_bridges(&url, 2).await;
    let after = get(&mut focus, "alpha").await.unwrap();
    assert_eq!(
        after.bridge_id, alive,
        "kept on its bridge across the restart"
    );
    assert!(flows(&a1, &a2, &after.media_addr, 4));

    // The CLI, with JSON for machines.
    let out = Command::new(bin("ringbridge-control"))
        .args(["--control", &url, "--json", "conferences"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("\"conference\":\"alpha\"")
            && text.contains(&format!("\"bridge_id\":\"{alive}\"")),
        "{text}"
    );
    let out = Command::new(bin("ringbridge-control"))
        .args([
            "--control",
            &url,
            "leave",
            "--conference",
            "uno",
            "--participant",
            "u1",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let e = get(&mut focus, "uno").await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let _ = std::fs::remove_dir_all(&data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn router_errors_and_no_bridges() {
    let data = data_dir("router");
    let ctl = control(&data, "127.0.0.1:0");
    let url = format!("http://{}", ctl.field("listen"));
    let ch = channel(&url).await;
    let mut focus = FocusClient::new(ch.clone());
    let e = focus
        .join(Party::new(1).join("c", "p", "eu"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable);
    assert!(
        e.message().contains("no bridge is registered"),
        "{}",
        e.message()
    );
    let e = focus
        .join(Party::new(1).join("", "p", "eu"))
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), e.message().starts_with("conference")),
        (Code::InvalidArgument, true)
    );
    let e = RegistryClient::new(ch.clone())
        .report_load(pb::LoadReport {
            bridge_id: "ghost".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);

    // Sticky routes, round-robin for new conferences over healthy shards.
    let mut router = RouterClient::new(ch);
    for s in ["shard-1", "shard-2"] {
        router
            .register_shard(pb::RegisterShardRequest {
                shard_id: s.into(),
                addr: format!("{s}:7000"),
                healthy: true,
            })
            .await
            .unwrap();
    }
    let mut got = Vec::new();
    for c in ["a", "b", "c", "d"] {
        got.push(route_of(&mut router, c).await.unwrap().shard_id);
    }
    assert_eq!(got, ["shard-0", "shard-1", "shard-2", "shard-0"]);
    for _ in 0..3 {
        let r = route_of(&mut router, "b").await.unwrap();
        assert_eq!(r.shard_id, "shard-1");
    }
    // A shard taken out of rotation: its conferences go elsewhere.
    router
        .register_shard(pb::RegisterShardRequest {
            shard_id: "shard-1".into(),
            addr: "x".into(),
            healthy: false,
        })
        .await
        .unwrap();
    let r = route_of(&mut router, "b").await.unwrap();
    assert_ne!(r.shard_id, "shard-1");
    let _ = std::fs::remove_dir_all(&data);
}
