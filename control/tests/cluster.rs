//! The control plane with real processes on loopback: a control instance and three bridges in
//! two regions. Placement by region and load, media through the placed bridge, failover when a
//! bridge process dies (announced on WatchConference, media flows again), state surviving a
//! control restart, the router, the CLI, and errors.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ringbridge_dataplane::testkit;
use ringbridge_proto::v1 as pb;
use ringbridge_proto::v1::focus_client::FocusClient;
use ringbridge_proto::v1::registry_client::RegistryClient;
use ringbridge_proto::v1::router_client::RouterClient;
use tonic::Code;
use tonic::transport::Channel;

/// Report interval the test control plane asks for (down after 3 missed = 600 ms).
const INTERVAL_MS: u64 = 200;

fn bin(name: &str) -> PathBuf {
    if name == "ringbridge-control" {
        return env!("CARGO_BIN_EXE_ringbridge-control").into();
    }
    // Other packages' binaries live in the same target directory.
    let dir = PathBuf::from(env!("CARGO_BIN_EXE_ringbridge-control"));
    let p = dir.parent().unwrap().join(name);
    assert!(
        p.exists(),
        "{} missing: build the workspace (make test does)",
        p.display()
    );
    p
}

struct Proc {
    child: Child,
    line: String,
}

impl Proc {
    fn start(name: &str, args: &[&str]) -> Self {
        let mut child = Command::new(bin(name))
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        Proc { child, line }
    }

    fn field(&self, k: &str) -> String {
        self.line
            .split_whitespace()
            .find_map(|f| f.strip_prefix(&format!("{k}=")))
            .unwrap_or_else(|| panic!("no {k}= in {:?}", self.line))
            .to_string()
    }

    fn stop(&mut self) {
        // SIGTERM lets the control plane save its state; bridges just die.
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn control(data: &str, listen: &str) -> Proc {
    Proc::start(
        "ringbridge-control",
        &[
            "serve",
            "--metrics",
            "127.0.0.1:0",
            "--listen",
            listen,
            "--data-dir",
            data,
            "--report-interval-ms",
            &INTERVAL_MS.to_string(),
        ],
    )
}

fn bridge(url: &str, id: &str, region: &str) -> Proc {
    Proc::start(
        "ringbridge",
        &[
            "--metrics",
            "127.0.0.1:0",
            "--engine",
            "mio",
            "--workers",
            "1",
            "--no-pin",
            "--media",
            "127.0.0.1:0",
            "--api",
            "127.0.0.1:0",
            "--control",
            url,
            "--bridge-id",
            id,
            "--region",
            region,
        ],
    )
}

async fn channel(url: &str) -> Channel {
    Channel::from_shared(url.to_string())
        .unwrap()
        .connect()
        .await
        .unwrap()
}

async fn wait_bridges(url: &str, up: usize) {
    let mut reg = RegistryClient::new(channel(url).await);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let l = reg
            .list_bridges(pb::ListBridgesRequest {})
            .await
            .unwrap()
            .into_inner();
        if l.bridges.iter().filter(|b| b.state == "up").count() == up {
            return;
        }
        assert!(Instant::now() < deadline, "bridges never came up: {l:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

struct Party {
    sock: UdpSocket,
    ssrc: u32,
}

impl Party {
    fn new(ssrc: u32) -> Self {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        Party { sock, ssrc }
    }

    fn join(&self, conference: &str, id: &str, region: &str) -> pb::JoinRequest {
        pb::JoinRequest {
            conference: conference.into(),
            participant_id: id.into(),
            region: region.into(),
            ssrcs: vec![self.ssrc],
            remote_addr: self.sock.local_addr().unwrap().to_string(),
        }
    }
}

async fn get(
    focus: &mut FocusClient<Channel>,
    conference: &str,
) -> Result<pb::ConferencePlacement, tonic::Status> {
    let req = pb::GetConferenceRequest {
        conference: conference.into(),
    };
    focus
        .get_conference(req)
        .await
        .map(tonic::Response::into_inner)
}

async fn route_of(
    router: &mut RouterClient<Channel>,
    conference: &str,
) -> Result<pb::RouteResponse, tonic::Status> {
    let req = pb::RouteRequest {
        conference: conference.into(),
    };
    router.route(req).await.map(tonic::Response::into_inner)
}

/// GETs Prometheus metrics from `addr`.
fn scrape(addr: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    out
}

/// `from` sends a packet to `media`; `to` must receive it byte for byte (retrying while a new
/// bridge is being programmed).
fn flows(from: &Party, to: &Party, media: &str, seq: u16) -> bool {
    let media: SocketAddr = media.parse().unwrap();
    let pkt = testkit::rtp(from.ssrc, seq, 0, b"through the placed bridge");
    let mut buf = [0u8; 2048];
    for _ in 0..10 {
        from.sock.send_to(&pkt, media).unwrap();
        if let Ok(n) = to.sock.recv(&mut buf)
            && buf[..n] == pkt[..]
        {
            return true;
        }
    }
    false
}

fn data_dir(tag: &str) -> String {
    let d = std::env::temp_dir().join(format!("ringbridge-control-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d.to_string_lossy().into_owned()
}

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
        .join(a2.join("alpha", "a2", "us"))
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
    assert!(m.contains("ringbridge_control_participants 4"), "{m}");
    assert!(
        m.contains("ringbridge_control_bridges{state=\"up\"} 3"),
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
    assert!(m.contains("ringbridge_endpoints 2"), "{m}");
    assert!(
        m.contains("ringbridge_tx_packets_total ")
            && !m.contains("ringbridge_tx_packets_total 0\n"),
        "{m}"
    );
    assert!(
        m.contains("ringbridge_dropped_packets_total{reason=\"unknown_source\"} 0"),
        "{m}"
    );

    // Kill alpha's bridge: alpha moves to the other bridge of its region, which also hosts beta.
    let (dead, alive) = if ja.bridge_id == "eu-1" {
        (0, "eu-2")
    } else {
        (1, "eu-1")
    };
    let mut watch = focus
        .watch_conference(pb::WatchConferenceRequest {
            conference: "alpha".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let current = watch.message().await.unwrap().unwrap();
    assert_eq!(
        (current.bridge_id.as_str(), current.reason.as_str()),
        (ja.bridge_id.as_str(), "current")
    );
    eu[dead].stop();
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
