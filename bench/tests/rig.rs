//! The rig against real forwarders on loopback: a loss-free run reports exact counts.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use ringbridge_bench::report::Report;
use ringbridge_bench::rig::{Live, Rig, RunOpts, RunResult, Topology};
use ringbridge_bench::target::{Kind, Target};
use ringbridge_bench::traffic::{Load, Stream};
use ringbridge_dataplane::bridge::{self, Config};
use ringbridge_dataplane::engine::Choice;
use ringbridge_dataplane::srtp::Profile;

fn topo() -> Topology {
    topo_with(None)
}

fn topo_with(srtp: Option<Profile>) -> Topology {
    Topology {
        conferences: 2,
        participants: 3,
        senders: 3,
        bind_ip: IpAddr::from([127, 0, 0, 1]),
        srtp,
    }
}

fn load() -> Load {
    Load {
        streams: vec![
            Stream {
                pps: 200.0,
                size: 300,
            },
            Load::audio(),
        ],
    }
}

fn opts() -> RunOpts {
    RunOpts {
        duration: Duration::from_secs(1),
        warmup: Duration::from_millis(300),
        drain: Duration::from_millis(300),
        stop: Arc::new(AtomicBool::new(false)),
    }
}

/// An in-process bridge (2 workers) on loopback: its API address, the sender that stops it,
/// and its server task.
async fn start_bridge() -> (
    std::net::SocketAddr,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    let running = bridge::start(Config {
        media: "127.0.0.1:0".parse().unwrap(),
        api: "127.0.0.1:0".parse().unwrap(),
        workers: 2,
        engine: Choice::Auto,
        xdp_iface: None,
        advertise: None,
        tuning: Default::default(),
        limits: Default::default(),
        keyframe_interval_ms: 500,
        nack_cache: (512, 64),
        ice_consent_ms: ringbridge_dataplane::webrtc::ice::CONSENT_TIMEOUT_MS,
    })
    .await
    .unwrap();
    let api = running.api;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(running.serve(async {
        let _ = stop_rx.await;
    }));
    (api, stop_tx, server)
}

fn assert_exact(r: &RunResult) {
    // 6 participants x 250 pps x 1 s, give or take a timer tick at each end.
    assert!(
        (1400..=1600).contains(&r.sent_packets),
        "sent {}",
        r.sent_packets
    );
    assert_eq!(r.expected_packets, 2 * r.sent_packets, "fan-out 2");
    assert_eq!(r.received_packets, r.expected_packets);
    assert_eq!(r.lost_packets, 0);
    assert_eq!(r.duplicate_packets, 0);
    assert_eq!(r.misrouted_packets, 0);
    assert_eq!(r.latency_ns.len(), r.received_packets);
    let rep = Report::new("t", &topo(), &load(), 0.3, r);
    let json = serde_json::to_value(&rep).unwrap();
    for key in [
        "sent_packets",
        "expected_packets",
        "received_packets",
        "lost_packets",
        "duplicate_packets",
        "forwarded_pps",
        "bridge_cpu_ns_per_forwarded_packet",
        "params",
    ] {
        assert!(json.get(key).is_some(), "{key} missing from {json}");
    }
    for q in ["p50", "p99", "p999", "max"] {
        assert!(json["latency_us"][q].as_f64().unwrap() > 0.0, "latency {q}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_counts_through_ringbridge() {
    through_ringbridge(None).await
}

/// With `--srtp`, every copy must also unprotect with the receiver's own keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_counts_through_ringbridge_with_srtp() {
    through_ringbridge(Some(Profile::AesCm128HmacSha1_80)).await
}

async fn through_ringbridge(srtp: Option<Profile>) {
    let (api, stop_tx, server) = start_bridge().await;
    let mut rig = Rig::new(topo_with(srtp), 2).unwrap();
    let members = rig.members().unwrap();
    assert_eq!(members[0][0].srtp.is_some(), srtp.is_some());
    let target = Target::remote(&api.to_string(), &members, None)
        .await
        .unwrap();
    let media = target.media;
    let r = tokio::task::block_in_place(|| rig.run(media, &[], &load(), &opts(), &Live::default()))
        .unwrap();
    assert_exact(&r);
    target.close().await;
    let _ = stop_tx.send(());
    server.await.unwrap().unwrap();
}

/// With `--subscribe 1` each of 3 participants receives only the sender after it: one copy
/// per packet is expected, and every one arrives from the right sender.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_counts_through_ringbridge_with_subscriptions() {
    let (api, stop_tx, server) = start_bridge().await;
    let mut rig = Rig::new(topo(), 2).unwrap();
    assert!(
        rig.subscribe(3).is_err(),
        "3 participants: at most 2 others"
    );
    rig.subscribe(1).unwrap();
    let members = rig.members().unwrap();
    assert_eq!(members[0][0].subscribe, Some(vec!["p1".to_string()]));
    assert_eq!(members[1][2].subscribe, Some(vec!["p3".to_string()]));
    let target = Target::remote(&api.to_string(), &members, None)
        .await
        .unwrap();
    let media = target.media;
    let r = tokio::task::block_in_place(|| rig.run(media, &[], &load(), &opts(), &Live::default()))
        .unwrap();
    assert_eq!(r.subscribe, Some(1));
    assert_eq!(
        r.expected_packets, r.sent_packets,
        "one subscribed sender each"
    );
    assert_eq!(r.received_packets, r.expected_packets);
    assert_eq!(r.lost_packets, 0);
    assert_eq!(r.misrouted_packets, 0);
    target.close().await;
    let _ = stop_tx.send(());
    server.await.unwrap().unwrap();
}

/// Simulcast windows: one sender per conference publishes a one-layer group, every receiver
/// gets it as one stream rewritten onto an SSRC of its own; every copy arrives, rewritten. Then
/// the conferences are programmed back to plain forwarding: the same copies, as sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_counts_through_ringbridge_with_simulcast_rewriting() {
    let (api, stop_tx, server) = start_bridge().await;
    assert!(
        Rig::new(topo(), 1).unwrap().simulcast(true).is_err(),
        "3 senders"
    );
    let topo = Topology {
        senders: 1,
        ..topo()
    };
    let mut rig = Rig::new(topo, 1).unwrap();
    rig.simulcast(true).unwrap();
    let members = rig.members().unwrap();
    let mut target = Target::remote(&api.to_string(), &members, None)
        .await
        .unwrap();
    let media = target.media;
    let load = Load {
        streams: vec![Stream {
            pps: 200.0,
            size: 300,
        }],
    };
    for simulcast in [true, false] {
        if !simulcast {
            rig.simulcast(false).unwrap();
            target.reprogram(&rig.members().unwrap()).await.unwrap();
        }
        let r =
            tokio::task::block_in_place(|| rig.run(media, &[], &load, &opts(), &Live::default()))
                .unwrap();
        assert_eq!(r.expected_packets, 2 * r.sent_packets, "2 receivers each");
        assert_eq!(
            r.received_packets, r.expected_packets,
            "simulcast {simulcast}"
        );
        assert_eq!(r.misrouted_packets, 0);
        let rewritten = if simulcast { r.received_packets } else { 0 };
        assert_eq!(r.rewritten_packets, rewritten, "simulcast {simulcast}");
    }
    target.close().await;
    let _ = stop_tx.send(());
    server.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_counts_and_cpu_through_a_spawned_baseline() {
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_floor-forwarder"));
    // SAFETY: set before any other thread of this test reads the environment.
    unsafe { std::env::set_var("RINGBRIDGE_BIN_DIR", bin.parent().unwrap()) };
    let mut rig = Rig::new(topo(), 2).unwrap();
    let members = rig.members().unwrap();
    let target = Target::spawn(Kind::Floor, &members, 1, true).await.unwrap();
    let r = tokio::task::block_in_place(|| {
        rig.run(
            target.media,
            &target.pids(),
            &load(),
            &opts(),
            &Live::default(),
        )
    })
    .unwrap();
    assert_exact(&r);
    assert!(
        r.target_cpu_ns.is_some_and(|c| c > 0),
        "forwarder CPU measured"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_sender_to_receive_only_participants_through_the_floor() {
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_floor-forwarder"));
    // SAFETY: set before any other thread of this test reads the environment.
    unsafe { std::env::set_var("RINGBRIDGE_BIN_DIR", bin.parent().unwrap()) };
    let topo = Topology {
        conferences: 1,
        participants: 5,
        senders: 1,
        bind_ip: IpAddr::from([127, 0, 0, 1]),
        srtp: None,
    };
    let mut rig = Rig::new(topo, 1).unwrap();
    // Receivers 3 and 4 apart, as the relay row splits the receivers behind a relay.
    rig.split_latency_from(3);
    let members = rig.members().unwrap();
    let target = Target::spawn(Kind::Floor, &members, 1, true).await.unwrap();
    let load = Load {
        streams: vec![Stream {
            pps: 500.0,
            size: 1200,
        }],
    };
    let r = tokio::task::block_in_place(|| {
        rig.run(
            target.media,
            &target.pids(),
            &load,
            &opts(),
            &Live::default(),
        )
    })
    .unwrap();
    // One sender, 500 pps for 1 s, give or take a tick; every copy to each of 4 receivers.
    assert!(
        (450..=550).contains(&r.sent_packets),
        "sent {}",
        r.sent_packets
    );
    assert_eq!(r.expected_packets, 4 * r.sent_packets);
    assert_eq!(r.received_packets, r.expected_packets);
    assert_eq!(r.misrouted_packets, 0);
    assert!((r.offered_pps - 500.0).abs() < 1e-9, "{}", r.offered_pps);
    // Every copy in the overall latency; the far histogram holds exactly receivers 3 and 4's.
    assert_eq!(r.latency_ns.len(), r.received_packets);
    let far = r.far_latency_ns.expect("split latency");
    assert_eq!(far.len(), 2 * r.sent_packets);
}
