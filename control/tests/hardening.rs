//! The control plane against hostile or careless input and crashes, with real processes:
//! oversized joins never reach (or stall) a bridge, ids are bounded, a store that cannot be
//! written refuses changes instead of losing them, a bridge id cannot be taken over by a second
//! live bridge, load reports and registrations are validated, and after a control crash the
//! bridges are reconciled with what the control plane remembers; flags that would make the
//! service useless are refused at start.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use ringbridge_proto::v1 as pb;
use ringbridge_proto::v1::autoscaler_client::AutoscalerClient;
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
    // An over-long role is named with its size, not echoed: 60 000 bytes back in a status
    // header would fail in the transport (RESOURCE_EXHAUSTED) instead.
    for n in [300, 60_000] {
        let mut j = Party::new(4).join("r", "p", "eu");
        j.role = "r".repeat(n);
        let e = focus.join(j).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{n}: {e:?}");
        assert_eq!(
            e.message(),
            format!("role: {n} bytes, longer than the limit of 256")
        );
    }
    let mut j = Party::new(4).join("r", "p", "eu");
    j.role = "x".repeat(200);
    let e = focus.join(j).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message().starts_with("role: ") && e.message().len() < 120,
        "{}",
        e.message()
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
        instance_id: String::new(),
        ..Default::default()
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

#[test]
fn flags_that_would_make_the_service_useless_are_refused_at_start_naming_the_flag() {
    let data = data_dir("bad-flags");
    std::fs::create_dir_all(&data).unwrap();
    // A bridge binary that cannot be executed.
    let plain = std::path::Path::new(&data).join("ringbridge");
    std::fs::write(&plain, "#!/bin/sh\nexit 0\n").unwrap();
    let plain = plain.to_str().unwrap();
    let process = ["--autoscale", "process", "--bridge-binary", plain];
    for (args, flag) in [
        (
            &["--bridge-capacity-pps", "inf"][..],
            "--bridge-capacity-pps",
        ),
        (&["--participant-pps", "NaN"], "--participant-pps"),
        (&["--participant-pps=-100"], "--participant-pps"),
        (&["--stress-threshold", "NaN"], "--stress-threshold"),
        (&["--stress-threshold", "0"], "--stress-threshold"),
        (&["--tolerance", "inf"], "--tolerance"),
        (
            &["--drain-grace-ms", "18446744073709551615"],
            "--drain-grace-ms",
        ),
        (
            &["--route-ttl-secs", "18446744073709551615"],
            "--route-ttl-secs",
        ),
        (&process, "--bridge-binary"),
        (&["--shard-id", "a/b"], "--shard-id"),
        (&["--shard-id", "a b"], "--shard-id"),
        (&["--shard-id", ""], "--shard-id"),
        (&["--store", "etcd://127.0.0.1:1/tenant-a"], "--store"),
    ] {
        let mut child = Command::new(bin("ringbridge-control"))
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir", &data])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Accepted, it would serve forever: give it a bounded while to refuse.
        let until = Instant::now() + Duration::from_secs(10);
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > until {
                let _ = child.kill();
                panic!("{args:?} accepted: still serving");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} accepted: {err}");
        assert!(
            String::from_utf8_lossy(&out.stdout).is_empty(),
            "{args:?}: ready before refusing"
        );
        assert!(err.contains(flag), "{args:?}: {err}");
    }
    let _ = std::fs::remove_dir_all(&data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bridge_that_exits_at_once_is_restarted_with_backoff_shown_in_the_status() {
    use std::os::unix::fs::PermissionsExt;
    let data = data_dir("crashing-bridge");
    std::fs::create_dir_all(&data).unwrap();
    let script = std::path::Path::new(&data).join("crash.sh");
    std::fs::write(&script, "#!/bin/sh\nexit 1\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    // Evaluations every 20 ms asking for 2 bridges: without a backoff, ~100 starts a second.
    let ctl = control_with(
        &data,
        "127.0.0.1:0",
        &[
            "--autoscale",
            "process",
            "--autoscale-interval-ms",
            "20",
            "--min-bridges",
            "2",
            "--bridge-binary",
            script.to_str().unwrap(),
        ],
    );
    let url = format!("http://{}", ctl.field("listen"));
    let since = Instant::now();
    let mut scaler = AutoscalerClient::new(channel(&url).await);
    let mut seen = String::new();
    while since.elapsed() < Duration::from_secs(3) || !seen.contains("backing off") {
        let s = scaler
            .get_autoscaler(pb::GetAutoscalerRequest {})
            .await
            .unwrap()
            .into_inner();
        if s.actuator.contains("backing off") {
            seen = s.actuator.clone();
        }
        assert!(
            since.elapsed() < Duration::from_secs(10),
            "never said it backs off: {:?}",
            s.actuator
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(seen.starts_with("process: backing off "), "{seen}");
    assert!(seen.contains("exited (exit status: 1)"), "{seen}");
    // 2 at once, then one after each backoff (2 s, 4 s, ...): a handful, not hundreds.
    let logs = std::fs::read_dir(std::path::Path::new(&data).join("bridges"))
        .unwrap()
        .count();
    assert!((2..=6).contains(&logs), "{logs} bridges started");
    drop(ctl);
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
    // A join is acknowledged only once it is in the store: this one is done on the bridge but
    // the write fails, so it is refused (and stays pending, written once the disk recovers).
    let e = focus
        .join(Party::new(1).join("c", "a", "eu"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable);
    assert!(e.message().contains("not yet durable"), "{}", e.message());
    // From then on changes are refused up front, and health says so.
    let e = focus
        .join(Party::new(2).join("c", "b", "eu"))
        .await
        .unwrap_err();
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
    loop {
        match focus.join(Party::new(3).join("c", "d", "eu")).await {
            // A try refused as not durable may have been written by a later flush.
            Ok(_) => break,
            Err(e) if e.code() == Code::AlreadyExists => break,
            Err(_) => {}
        }
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
    // An endpoint no placement names, planted on a bridge behind the focus's back.
    let mut api0 = BridgeClient::new(channel(&format!("http://{}", b[0].field("api"))).await);
    api0.create_conference(pb::CreateConferenceRequest {
        conference_id: "ghost".into(),
    })
    .await
    .unwrap();
    ctl.kill(); // SIGKILL: every acknowledged join (a4, "lost") is in the store all the same
    let _ctl = control_with(&data, &listen, &slow);
    // The bridges register again; each is reconciled with the restored placements: what no
    // placement names goes, every acknowledged participant stays.
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let mut all = Vec::new();
        for br in &b {
            all.extend(bridge_listing(br).await);
        }
        all.sort();
        let want = [
            (
                "lost".to_string(),
                vec!["b1".into(), "b2".into(), "b3".into()],
            ),
            (
                "saved".to_string(),
                vec!["a1".into(), "a2".into(), "a3".into(), "a4".into()],
            ),
        ];
        if all == want {
            break;
        }
        assert!(
            Instant::now() < until,
            "bridges hold {all:?}, placements say {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut focus = FocusClient::new(channel(&url).await);
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
        ..Default::default()
    })
    .await
    .unwrap();
    let e = focus
        .join(Party::new(14).join("saved", "planted", "eu"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists, "{e:?}");
    let l = bridge_listing(host).await;
    let saved = l.iter().find(|(c, _)| c == "saved").unwrap();
    assert_eq!(saved.1, ["a1", "a2", "a3", "a4", "planted"]);
    let _ = std::fs::remove_dir_all(&data);
}
