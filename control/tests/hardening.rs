//! The control plane against hostile or careless input and crashes, with real processes:
//! oversized joins never reach (or stall) a bridge, ids are bounded, a store that cannot be
//! written refuses changes instead of losing them, a bridge id cannot be taken over by a second
//! live bridge, load reports and registrations are validated, and after a control crash the
//! bridges are reconciled with what the control plane remembers.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use ringbridge_proto::v1 as pb;
use ringbridge_proto::v1::bridge_client::BridgeClient;
use ringbridge_proto::v1::focus_client::FocusClient;
use ringbridge_proto::v1::registry_client::RegistryClient;
use tonic::Code;

async fn bridge_listing(b: &Proc) -> Vec<(String, Vec<String>)> {
    let mut api = BridgeClient::new(channel(&format!("http://{}", b.field("api"))).await);
    let mut l: Vec<(String, Vec<String>)> = api
        .list_conferences(pb::ListConferencesRequest {})
        .await
        .unwrap()
        .into_inner()
        .conferences
        .into_iter()
        .map(|c| {
            let mut e: Vec<String> = c.endpoints.into_iter().map(|e| e.endpoint_id).collect();
            e.sort();
            (c.conference_id, e)
        })
        .collect();
    l.sort();
    l
}

async fn states(url: &str) -> Vec<(String, String)> {
    let mut reg = RegistryClient::new(channel(url).await);
    reg.list_bridges(pb::ListBridgesRequest {})
        .await
        .unwrap()
        .into_inner()
        .bridges
        .into_iter()
        .map(|b| (b.bridge_id, b.state))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_joins_never_reach_a_bridge_and_ids_are_bounded() {
    let data = data_dir("oversized");
    let ctl = control(&data, "127.0.0.1:0");
    let url = format!("http://{}", ctl.field("listen"));
    let _b = [bridge(&url, "eu-1", "eu"), bridge(&url, "eu-2", "eu")];
    wait_bridges(&url, 2).await;
    let mut focus = FocusClient::new(channel(&url).await);
    focus
        .join(Party::new(1).join("keep", "k", "eu"))
        .await
        .unwrap();
    let mut j = Party::new(2).join("big", "p", "eu");
    j.ssrcs = (0..100).collect();
    let e = focus.join(j.clone()).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(e.message(), "ssrcs: 100 SSRCs, more than the limit of 64");
    // 900 000 SSRCs (3.6 MB): over the control plane's request size, refused on arrival.
    j.ssrcs = (0..900_000).collect();
    let e = focus.join(j).await.unwrap_err();
    assert!(
        matches!(e.code(), Code::OutOfRange | Code::ResourceExhausted),
        "{e:?}"
    );
    let long = "c".repeat(12_000);
    let e = focus
        .join(Party::new(3).join(&long, "p", "eu"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(
        e.message(),
        "conference: 12000 bytes, longer than the limit of 256"
    );
    // Both bridges stay up, the other conference where it was.
    tokio::time::sleep(Duration::from_millis(3 * INTERVAL_MS)).await;
    assert!(states(&url).await.iter().all(|(_, s)| s == "up"));
    let c = get(&mut focus, "keep").await.unwrap();
    assert_eq!(c.participants, ["k"]);
    let _ = std::fs::remove_dir_all(&data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrations_and_reports_are_validated_and_ids_owned() {
    let data = data_dir("registry");
    let ctl = control(&data, "127.0.0.1:0");
    let url = format!("http://{}", ctl.field("listen"));
    let b = bridge(&url, "eu-1", "eu");
    wait_bridges(&url, 1).await;
    let mut reg = RegistryClient::new(channel(&url).await);
    let good = pb::RegisterBridgeRequest {
        bridge_id: "eu-1".into(),
        api_addr: "127.0.0.1:1".into(),
        media_addr: "127.0.0.1:2".into(),
        region: "eu".into(),
        capacity_pps: 1000.0,
    };
    // The id belongs to the live bridge: a second one elsewhere is refused.
    let e = reg.register_bridge(good.clone()).await.unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists);
    assert!(e.message().contains(&b.field("api")), "{}", e.message());
    for (bad, field) in [
        (
            pb::RegisterBridgeRequest {
                capacity_pps: f64::INFINITY,
                ..good.clone()
            },
            "capacity_pps",
        ),
        (
            pb::RegisterBridgeRequest {
                capacity_pps: 1e-300,
                ..good.clone()
            },
            "capacity_pps",
        ),
        (
            pb::RegisterBridgeRequest {
                api_addr: "garbage".into(),
                ..good.clone()
            },
            "api_addr",
        ),
        (
            pb::RegisterBridgeRequest {
                bridge_id: "new".into(),
                media_addr: "x:y".into(),
                ..good.clone()
            },
            "media_addr",
        ),
    ] {
        let e = reg.register_bridge(bad).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(e.message().starts_with(field), "{}", e.message());
    }
    for stress in [f64::NAN, -1.0, f64::NEG_INFINITY, f64::INFINITY] {
        let e = reg
            .report_load(pb::LoadReport {
                bridge_id: "eu-1".into(),
                stress,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{stress}");
        assert!(e.message().starts_with("stress:"));
    }
    assert_eq!(states(&url).await, [("eu-1".to_string(), "up".to_string())]);
    let mut focus = FocusClient::new(channel(&url).await);
    let j = focus
        .join(Party::new(1).join("c", "p", "eu"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        j.bridge_id, "eu-1",
        "still chosen: the bad reports changed nothing"
    );
    let _ = std::fs::remove_dir_all(&data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unwritable_store_refuses_changes_and_loses_nothing() {
    // A data dir that cannot be created: exit at start, naming the flag.
    let out = Command::new(bin("ringbridge-control"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            "/dev/null/state",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--data-dir /dev/null/state"), "{err}");

    // A store whose writes fail later (its logs are /dev/full: ENOSPC).
    let data = data_dir("full");
    std::fs::create_dir_all(&data).unwrap();
    let logs: Vec<_> = (1..200)
        .map(|g| std::path::Path::new(&data).join(format!("log.{g}")))
        .collect();
    for l in &logs {
        std::os::unix::fs::symlink("/dev/full", l).unwrap();
    }
    let mut ctl = control_with(
        &data,
        "127.0.0.1:0",
        &["--report-interval-ms", "200", "--flush-interval-ms", "100"],
    );
    let listen = ctl.field("listen");
    let url = format!("http://{listen}");
    let _b = bridge(&url, "eu-1", "eu");
    wait_bridges(&url, 1).await;
    let mut focus = FocusClient::new(channel(&url).await);
    // Accepted before the first flush; then writes fail: refused, and health says so.
    focus
        .join(Party::new(1).join("c", "a", "eu"))
        .await
        .unwrap();
    let until = Instant::now() + Duration::from_secs(5);
    let e = loop {
        match focus.join(Party::new(2).join("c", "b", "eu")).await {
            Err(e) => break e,
            Ok(_) => {
                // Landed before the failure was seen; leave so the next try is comparable (the
                // leave itself may be the first change refused).
                let left = focus
                    .leave(pb::LeaveRequest {
                        conference: "c".into(),
                        participant_id: "b".into(),
                    })
                    .await;
                if let Err(e) = left {
                    break e;
                }
            }
        }
        assert!(Instant::now() < until, "joins never refused");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(e.code(), Code::Unavailable);
    assert!(e.message().contains("store"), "{}", e.message());
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel(&url).await);
    let h = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "ringbridge.v1.Focus".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        h.status,
        tonic_health::pb::health_check_response::ServingStatus::NotServing as i32
    );
    // The disk recovers: changes are accepted again and everything acknowledged is persisted.
    for l in &logs {
        let _ = std::fs::remove_file(l);
    }
    let until = Instant::now() + Duration::from_secs(5);
    while focus
        .join(Party::new(3).join("c", "d", "eu"))
        .await
        .is_err()
    {
        assert!(Instant::now() < until, "joins never accepted again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    ctl.stop();
    let ctl = control(&data, &listen);
    let mut focus = FocusClient::new(channel(&format!("http://{}", ctl.field("listen"))).await);
    let c = get(&mut focus, "c").await.unwrap();
    assert!(c.participants.contains(&"a".to_string()), "{c:?}");
    assert!(c.participants.contains(&"d".to_string()), "{c:?}");
    let _ = std::fs::remove_dir_all(&data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_control_crash_bridges_are_reconciled_and_rejoins_delete_nobody() {
    let data = data_dir("crash");
    // Changes reach the store only on shutdown here (flush interval 10 min): what a SIGKILL
    // loses is then exact.
    let slow = [
        "--report-interval-ms",
        "200",
        "--flush-interval-ms",
        "600000",
    ];
    let mut ctl = control_with(&data, "127.0.0.1:0", &slow);
    let listen = ctl.field("listen");
    let url = format!("http://{listen}");
    let b = [bridge(&url, "eu-1", "eu"), bridge(&url, "eu-2", "eu")];
    wait_bridges(&url, 2).await;
    let mut focus = FocusClient::new(channel(&url).await);
    for (i, p) in ["a1", "a2", "a3"].into_iter().enumerate() {
        focus
            .join(Party::new(10 + i as u32).join("saved", p, "eu"))
            .await
            .unwrap();
    }
    ctl.stop(); // SIGTERM: "saved" is persisted
    let mut ctl = control_with(&data, &listen, &slow);
    wait_bridges(&url, 2).await;
    let mut focus = FocusClient::new(channel(&url).await);
    focus
        .join(Party::new(13).join("saved", "a4", "eu"))
        .await
        .unwrap();
    for (i, p) in ["b1", "b2", "b3"].into_iter().enumerate() {
        focus
            .join(Party::new(20 + i as u32).join("lost", p, "eu"))
            .await
            .unwrap();
    }
    ctl.kill(); // SIGKILL: a4 and "lost" were never persisted
    let _ctl = control_with(&data, &listen, &slow);
    // The bridges register again; each is reconciled with the restored placements.
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let mut all = Vec::new();
        for br in &b {
            all.extend(bridge_listing(br).await);
        }
        if all
            == [(
                "saved".to_string(),
                vec!["a1".into(), "a2".into(), "a3".into()],
            )]
        {
            break;
        }
        assert!(
            Instant::now() < until,
            "bridges still hold orphans: {all:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A lost participant joins again: accepted, and nobody else is removed.
    let mut focus = FocusClient::new(channel(&url).await);
    focus
        .join(Party::new(13).join("saved", "a4", "eu"))
        .await
        .unwrap();
    let c = get(&mut focus, "saved").await.unwrap();
    assert_eq!(c.participants, ["a1", "a2", "a3", "a4"]);
    // An endpoint the focus does not know, planted on the bridge: a join with that id is
    // refused (ALREADY_EXISTS) and the conference's other participants stay.
    let host = if c.bridge_id == "eu-1" { &b[0] } else { &b[1] };
    let mut api = BridgeClient::new(channel(&format!("http://{}", host.field("api"))).await);
    api.add_endpoint(pb::AddEndpointRequest {
        conference_id: "saved".into(),
        endpoint_id: "planted".into(),
        ssrcs: vec![999],
        remote_addr: String::new(),
        srtp: None,
    })
    .await
    .unwrap();
    let e = focus
        .join(Party::new(14).join("saved", "planted", "eu"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists, "{e:?}");
    let l = bridge_listing(host).await;
    assert_eq!(l[0].1, ["a1", "a2", "a3", "a4", "planted"]);
    let _ = std::fs::remove_dir_all(&data);
}
