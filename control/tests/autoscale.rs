//! The autoscaler end to end: a control plane with the process actuator starts and stops real
//! `ringbridge` processes as real RTP traffic rises and falls; a drained bridge's participants
//! are moved and announced; the others lose nothing.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use ringbridge_dataplane::testkit;
use ringbridge_proto::v1 as pb;
use ringbridge_proto::v1::autoscaler_client::AutoscalerClient;
use ringbridge_proto::v1::focus_client::FocusClient;
use ringbridge_proto::v1::registry_client::RegistryClient;

/// Compressed HPA periods so a scale-up and a scale-down fit in seconds.
fn autoscaled(data: &str) -> Proc {
    control_with(
        data,
        "127.0.0.1:0",
        &[
            "--report-interval-ms",
            "200",
            "--autoscale",
            "process",
            "--autoscale-interval-ms",
            "300",
            "--min-bridges",
            "1",
            "--max-bridges",
            "3",
            "--target-utilization",
            "0.5",
            "--scale-up-period-ms",
            "300",
            "--scale-down-window-ms",
            "3000",
            "--scale-down-period-ms",
            "1500",
            "--drain-grace-ms",
            "1500",
            "--bridge-capacity-pps",
            "2000",
            "--bridge-binary",
            bin("ringbridge").to_str().unwrap(),
            "--bridge-arg=--engine",
            "--bridge-arg=mio",
            "--bridge-arg=--workers",
            "--bridge-arg=1",
            "--bridge-arg=--no-pin",
        ],
    )
}

async fn bridges(url: &str) -> Vec<pb::BridgeInfo> {
    bridges_of(url).await
}

async fn wait_for(url: &str, what: &str, ok: impl Fn(&[pb::BridgeInfo]) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let b = bridges(url).await;
        if ok(&b) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: never happened: {b:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Sends RTP numbered from `seq` from `sock` to the address in `to` every `gap` until `stop`;
/// counts.
fn sender(
    sock: std::net::UdpSocket,
    ssrc: u32,
    mut seq: u16,
    to: Arc<Mutex<SocketAddr>>,
    gap: Duration,
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let until = Instant::now() + Duration::from_secs(60);
        while !stop.load(Relaxed) && Instant::now() < until {
            let pkt = testkit::rtp(ssrc, seq, u32::from(seq), b"autoscaled media");
            let dest = *to.lock().unwrap();
            sock.send_to(&pkt, dest).unwrap();
            sent.fetch_add(1, Relaxed);
            seq = seq.wrapping_add(1);
            std::thread::sleep(gap);
        }
    })
}

/// Records RTP from `ssrc` numbered from `first` on arriving on `sock` (when, from where, seq)
/// until `stop`.
fn receiver(
    sock: std::net::UdpSocket,
    ssrc: u32,
    first: u16,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Vec<(Instant, SocketAddr, u16)>> {
    std::thread::spawn(move || {
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 2048];
        let until = Instant::now() + Duration::from_secs(60);
        while !stop.load(Relaxed) && Instant::now() < until {
            if let Ok((n, from)) = sock.recv_from(&mut buf)
                && n >= 12
                && u32::from_be_bytes(buf[8..12].try_into().unwrap()) == ssrc
                && u16::from_be_bytes([buf[2], buf[3]]) >= first
            {
                got.push((Instant::now(), from, u16::from_be_bytes([buf[2], buf[3]])));
            }
        }
        got
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_follows_the_traffic_and_a_drained_bridge_is_moved_off_then_removed() {
    let data = data_dir("autoscale");
    let control = autoscaled(&data);
    let url = format!("http://{}", control.field("listen"));
    // The autoscaler starts the minimum fleet itself.
    wait_for(&url, "the first bridge", |b| {
        b.iter().filter(|x| x.state == "up").count() == 1
    })
    .await;
    let mut focus = FocusClient::new(channel(&url).await);
    // Conference A: a1 sends, a2 and a3 receive.
    let a: Vec<Party> = (1..=3).map(Party::new).collect();
    let (bridge_a, media_a) = join_all(&mut focus, "a", "a", "default", &a).await;

    // Load rises: ~450 pps in, twice that out, against 2000 pps of capacity at a 0.5 target.
    let heavy_stop = Arc::new(AtomicBool::new(false));
    let heavy = sender(
        a[0].sock.try_clone().unwrap(),
        a[0].ssrc,
        0,
        Arc::new(Mutex::new(media_a)),
        Duration::from_millis(2),
        heavy_stop.clone(),
        Arc::new(AtomicU64::new(0)),
    );
    wait_for(&url, "a second bridge", |b| {
        b.iter().filter(|x| x.state == "up").count() == 2
    })
    .await;
    let status = AutoscalerClient::new(channel(&url).await)
        .get_autoscaler(pb::GetAutoscalerRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.actuator, "process");
    assert!(
        status
            .decisions
            .iter()
            .any(|d| d.desired > d.current && d.reason.contains("over target")),
        "the scale-up is recorded with its reason: {status:?}"
    );
    let metrics = scrape(&control.field("metrics"));
    assert!(
        metrics.contains("ringbridge_autoscaler_desired_bridges"),
        "{metrics}"
    );
    assert!(
        metrics.contains("ringbridge_autoscaler_decisions_total{direction=\"up\"}"),
        "{metrics}"
    );
    // A new conference lands on the new bridge.
    let b: Vec<Party> = (11..=12).map(Party::new).collect();
    let (bridge_b, media_b) = join_all(&mut focus, "b", "b", "default", &b).await;
    assert_ne!(
        bridge_b, bridge_a,
        "the new conference goes to the new bridge"
    );
    let mut watch_b = watch(&mut focus, "b").await;
    assert_eq!(watch_b.message().await.unwrap().unwrap().reason, "current");

    // Load falls: A and B both send lightly, numbered apart from the heavy phase; every packet
    // of A is counted.
    const LIGHT: u16 = 40_000;
    heavy_stop.store(true, Relaxed);
    heavy.join().unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let stop = Arc::new(AtomicBool::new(false));
    let sent_a = Arc::new(AtomicU64::new(0));
    let rx_a: Vec<_> = a[1..]
        .iter()
        .map(|p| receiver(p.sock.try_clone().unwrap(), a[0].ssrc, LIGHT, stop.clone()))
        .collect();
    let tx_a = sender(
        a[0].sock.try_clone().unwrap(),
        a[0].ssrc,
        LIGHT,
        Arc::new(Mutex::new(media_a)),
        Duration::from_millis(20),
        stop.clone(),
        sent_a.clone(),
    );
    let target_b = Arc::new(Mutex::new(media_b));
    let rx_b = receiver(b[1].sock.try_clone().unwrap(), b[0].ssrc, 0, stop.clone());
    let tx_b = sender(
        b[0].sock.try_clone().unwrap(),
        b[0].ssrc,
        0,
        target_b.clone(),
        Duration::from_millis(20),
        stop.clone(),
        Arc::new(AtomicU64::new(0)),
    );
    // After the scale-down window, B's bridge (fewest participants) drains; after the grace
    // its participants are moved to A's bridge and the move is announced.
    let moved = next_with_reason(&mut watch_b, "drained", 20).await;
    let announced = Instant::now();
    assert_eq!(moved.bridges.len(), 1, "{moved:?}");
    assert_eq!(moved.bridges[0].bridge_id, bridge_a);
    let new_media: SocketAddr = moved.bridges[0].media_addr.parse().unwrap();
    *target_b.lock().unwrap() = new_media;
    // The drained bridge is stopped and forgotten; the minimum stays.
    wait_for(&url, "the drained bridge removed", |b| {
        b.len() == 1 && b[0].bridge_id == bridge_a
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Relaxed);
    tx_a.join().unwrap();
    tx_b.join().unwrap();
    let got_b = rx_b.join().unwrap();
    let again = got_b
        .iter()
        .find(|(t, from, _)| *t >= announced && *from == new_media)
        .expect("B receives media from its new bridge");
    assert!(
        again.0 - announced < Duration::from_secs(1),
        "moved participants receive media again within 1 s: {:?}",
        again.0 - announced
    );
    // A was never moved: every packet reached both receivers exactly once.
    let sent = sent_a.load(Relaxed) as usize;
    for rx in rx_a {
        let got = rx.join().unwrap();
        let mut seqs: Vec<u16> = got.iter().map(|g| g.2).collect();
        seqs.sort_unstable();
        seqs.dedup();
        assert_eq!(
            (got.len(), seqs.len()),
            (sent, sent),
            "A's receivers lost or duplicated packets during the drain"
        );
    }
    let status = AutoscalerClient::new(channel(&url).await)
        .get_autoscaler(pb::GetAutoscalerRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(
        status.decisions.iter().any(|d| d.desired < d.current),
        "{status:?}"
    );
}

#[tokio::test]
async fn bad_autoscaler_flags_name_the_flag_and_an_unknown_drain_is_not_found() {
    for (args, flag) in [
        (
            vec!["--min-bridges", "3", "--max-bridges", "2"],
            "--min-bridges",
        ),
        (vec!["--target-utilization", "0"], "--target-utilization"),
        (vec!["--target-utilization=-1"], "--target-utilization"),
    ] {
        let out = std::process::Command::new(bin("ringbridge-control"))
            .arg("serve")
            .args(["--listen", "127.0.0.1:0", "--autoscale", "process"])
            .args(&args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(flag), "{args:?}: {err}");
    }
    let data = data_dir("autoscale-bad");
    let control = control(&data, "127.0.0.1:0");
    let url = format!("http://{}", control.field("listen"));
    let e = RegistryClient::new(channel(&url).await)
        .drain_bridge(pb::DrainBridgeRequest {
            bridge_id: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
    assert!(e.message().contains("bridge_id"), "{}", e.message());
    let s = AutoscalerClient::new(channel(&url).await)
        .get_autoscaler(pb::GetAutoscalerRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(!s.enabled);
}

#[tokio::test]
async fn a_bridge_on_sigterm_drains_its_participants_move_and_it_exits_when_empty() {
    let data = data_dir("sigterm-drain");
    let control = control_with(
        &data,
        "127.0.0.1:0",
        &["--report-interval-ms", "200", "--drain-grace-ms", "500"],
    );
    let url = format!("http://{}", control.field("listen"));
    let mut x = bridge(&url, "x", "eu");
    wait_bridges(&url, 1).await;
    let mut focus = FocusClient::new(channel(&url).await);
    let p: Vec<Party> = (21..=22).map(Party::new).collect();
    for (i, q) in p.iter().enumerate() {
        let r = focus
            .join(q.join("c", &format!("p{i}"), "eu"))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.bridge_id, "x");
    }
    let _y = bridge(&url, "y", "eu");
    wait_bridges(&url, 2).await;
    let mut w = watch(&mut focus, "c").await;
    assert_eq!(w.message().await.unwrap().unwrap().reason, "current");
    signal(&x.child, "TERM");
    // It reports draining at once: nothing new goes there.
    wait_for(&url, "x draining", |b| {
        b.iter()
            .any(|b| b.bridge_id == "x" && b.state == "draining")
    })
    .await;
    let n = focus
        .join(Party::new(23).join("new", "n1", "eu"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(n.bridge_id, "y", "a draining bridge gets no new conference");
    // After the grace its participants move (announced), then it exits by itself.
    let moved = next_with_reason(&mut w, "drained", 10).await;
    assert_eq!(moved.bridges.len(), 1);
    assert_eq!(moved.bridges[0].bridge_id, "y");
    assert!(flows(&p[0], &p[1], &moved.bridges[0].media_addr, 7));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = x.child.try_wait().unwrap() {
            assert!(status.success(), "drained bridge exits cleanly: {status}");
            break;
        }
        assert!(Instant::now() < deadline, "the drained bridge never exited");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
