//! Helpers for the control plane's end-to-end tests: real `ringbridge-control` and `ringbridge`
//! processes on loopback, read through their ready lines.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ringbridge_dataplane::testkit;
use ringbridge_edge::ready::Ready;
use ringbridge_proto::v1 as pb;
use ringbridge_proto::v1::focus_client::FocusClient;
use ringbridge_proto::v1::registry_client::RegistryClient;
use ringbridge_proto::v1::router_client::RouterClient;
use tonic::transport::Channel;

/// Report interval the test control plane asks for (down after 3 missed = 600 ms).
pub const INTERVAL_MS: u64 = 200;

pub fn bin(name: &str) -> PathBuf {
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

pub struct Proc {
    pub child: Child,
    pub ready: Ready,
}

impl Proc {
    pub fn start(name: &str, args: &[&str]) -> Self {
        let mut child = Command::new(bin(name))
            .args(args)
            .env(
                "RUST_LOG",
                std::env::var("TEST_RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let ready = Ready::parse(&line).unwrap_or_else(|| panic!("{name}: not ready: {line:?}"));
        Proc { child, ready }
    }

    pub fn field(&self, k: &str) -> String {
        self.ready
            .get(k)
            .unwrap_or_else(|| panic!("no {k}= in {}", self.ready))
            .to_string()
    }

    /// SIGSTOP: the process keeps its sockets open and answers nothing.
    pub fn pause(&self) {
        signal(&self.child, "STOP");
    }

    /// SIGCONT.
    pub fn resume(&self) {
        signal(&self.child, "CONT");
    }

    /// SIGKILL, and reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn stop(&mut self) {
        // SIGTERM lets the control plane save its state (a bridge with --control would drain).
        signal(&self.child, "TERM");
        let _ = self.child.wait();
    }
}

pub fn signal(c: &Child, sig: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{sig}"), &c.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{sig}");
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn control(data: &str, listen: &str) -> Proc {
    control_with(
        data,
        listen,
        &["--report-interval-ms", &INTERVAL_MS.to_string()],
    )
}

/// A control plane with `extra` flags (none: every default, but WHIP/WHEP on a free port
/// unless `extra` gives `--http`: tests run side by side).
pub fn control_with(data: &str, listen: &str, extra: &[&str]) -> Proc {
    let mut args = vec![
        "serve",
        "--metrics",
        "127.0.0.1:0",
        "--listen",
        listen,
        "--data-dir",
        data,
    ];
    if !extra
        .iter()
        .any(|a| *a == "--http" || a.starts_with("--http="))
    {
        args.extend_from_slice(&["--http", "127.0.0.1:0"]);
    }
    args.extend_from_slice(extra);
    Proc::start("ringbridge-control", &args)
}

pub fn bridge(url: &str, id: &str, region: &str) -> Proc {
    bridge_on(url, id, region, "127.0.0.1:0")
}

/// A bridge whose media socket binds `media`.
pub fn bridge_on(url: &str, id: &str, region: &str, media: &str) -> Proc {
    bridge_with(url, id, region, media, "127.0.0.1:0")
}

/// A bridge on the given media and API addresses (mio engine, one unpinned worker).
pub fn bridge_with(url: &str, id: &str, region: &str, media: &str, api: &str) -> Proc {
    bridge_args(url, id, region, media, api, &[])
}

/// [`bridge_with`] with `extra` flags after the usual ones.
/// A control plane (gRPC on loopback, WHIP/WHEP on `host`) and one bridge `eu-1` with
/// `bridge_flags`, its media on `host` too (a test's veth link), registered.
pub async fn control_and_bridge_on(
    host: std::net::Ipv4Addr,
    data: &str,
    bridge_flags: &[&str],
) -> (Proc, Proc) {
    let ctl = control_with(
        data,
        "127.0.0.1:0",
        &[
            "--report-interval-ms",
            "200",
            "--http",
            &format!("{host}:0"),
        ],
    );
    let url = format!("http://{}", ctl.field("listen"));
    let media = format!("{host}:0");
    let bridge = bridge_args(&url, "eu-1", "eu", &media, "127.0.0.1:0", bridge_flags);
    wait_bridges(&url, 1).await;
    (ctl, bridge)
}

pub fn bridge_args(
    url: &str,
    id: &str,
    region: &str,
    media: &str,
    api: &str,
    extra: &[&str],
) -> Proc {
    let mut args = vec![
        "--metrics",
        "127.0.0.1:0",
        "--engine",
        "mio",
        "--workers",
        "1",
        "--no-pin",
        "--media",
        media,
        "--api",
        api,
        "--control",
        url,
        "--bridge-id",
        id,
        "--region",
        region,
    ];
    args.extend_from_slice(extra);
    Proc::start("ringbridge", &args)
}

/// Every bridge the control plane at `url` knows.
pub async fn bridges_of(url: &str) -> Vec<pb::BridgeInfo> {
    RegistryClient::new(channel(url).await)
        .list_bridges(pb::ListBridgesRequest {})
        .await
        .unwrap()
        .into_inner()
        .bridges
}

/// Every endpoint every bridge of the control plane at `url` holds.
pub async fn endpoints(url: &str) -> Vec<(String, pb::EndpointInfo)> {
    let mut out = Vec::new();
    for b in bridges_of(url).await {
        let mut c = ringbridge_proto::v1::bridge_client::BridgeClient::new(
            channel(&format!("http://{}", b.api_addr)).await,
        );
        let confs = c
            .list_conferences(pb::ListConferencesRequest {})
            .await
            .unwrap()
            .into_inner()
            .conferences;
        for conf in confs {
            for e in conf.endpoints {
                out.push((b.bridge_id.clone(), e));
            }
        }
    }
    out
}

/// The test venv's Python (`make test` sets `RINGBRIDGE_PYTHON`), else `python3`.
pub fn python() -> String {
    std::env::var("RINGBRIDGE_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// Runs `cmd` to its end, at most `limit`: its output, or a panic with what it printed after
/// killing it (its whole process group: it runs in a new one, with everything it started).
pub fn output_within(cmd: &mut Command, limit: Duration) -> std::process::Output {
    use std::io::Read;
    use std::os::unix::process::CommandExt;
    let mut child = cmd
        .process_group(0)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = r.read_to_end(&mut v);
            v
        })
    };
    let stdout = drain(Box::new(child.stdout.take().unwrap()));
    let stderr = drain(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", child.id())])
                .status();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let (stdout, stderr) = (stdout.join().unwrap(), stderr.join().unwrap());
    let Some(status) = status else {
        panic!(
            "{cmd:?} still running after {limit:?}, killed: {}\n--- stderr ---\n{}",
            String::from_utf8_lossy(&stdout),
            tail(&String::from_utf8_lossy(&stderr), 4000)
        );
    };
    std::process::Output {
        status,
        stdout,
        stderr,
    }
}

/// The last `max` bytes of `s` or a few more (whole characters).
/// Runs the test script `script` (`tests/webrtc/`) with `args` under the test's Python, within
/// `limit`, and returns its report: the JSON object on its last line of output, which must say
/// `"ok": true` (else the test fails with the report's `error`). Its stderr (progress) is
/// printed, the end of it.
pub async fn run_script(script: &str, args: &[String], limit: Duration) -> serde_json::Value {
    let path = format!("{}/tests/webrtc/{script}", env!("CARGO_MANIFEST_DIR"));
    let mut cmd = Command::new(python());
    cmd.arg(&path).args(args);
    let out = tokio::task::spawn_blocking(move || output_within(&mut cmd, limit))
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("--- {script} ---\n{}", tail(&stderr, 6000));
    let report: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("{script}: no JSON report ({e}): {stdout}"));
    eprintln!("{script}: {report}");
    assert!(
        out.status.success() && report["ok"] == true,
        "{script} failed: {}",
        report["error"]
    );
    report
}

pub fn tail(s: &str, max: usize) -> &str {
    let mut start = s.len().saturating_sub(max);
    while !s.is_char_boundary(start) {
        start -= 1;
    }
    &s[start..]
}

/// A bridge's drop counters (its `GetStats` totals).
pub async fn drops_of(
    b: &mut ringbridge_proto::v1::bridge_client::BridgeClient<Channel>,
) -> pb::DropCounters {
    b.get_stats(pb::GetStatsRequest {})
        .await
        .unwrap()
        .into_inner()
        .total
        .unwrap()
        .drops
        .unwrap()
}

pub async fn channel(url: &str) -> Channel {
    Channel::from_shared(url.to_string())
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// Waits until the control plane at `url` is its shard's active focus (on etcd, an instance
/// answers UNAVAILABLE while it stands by or takes over).
pub async fn wait_active(url: &str) {
    let mut f = FocusClient::new(channel(url).await);
    let deadline = Instant::now() + Duration::from_secs(10);
    while let Err(e) = f.list_placements(pb::ListPlacementsRequest {}).await {
        assert!(Instant::now() < deadline, "never active: {e}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn wait_bridges(url: &str, up: usize) {
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

pub struct Party {
    pub sock: UdpSocket,
    pub ssrc: u32,
}

impl Party {
    pub fn new(ssrc: u32) -> Self {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        Party { sock, ssrc }
    }

    pub fn join(&self, conference: &str, id: &str, region: &str) -> pb::JoinRequest {
        pb::JoinRequest {
            conference: conference.into(),
            participant_id: id.into(),
            region: region.into(),
            ssrcs: vec![self.ssrc],
            remote_addr: self.sock.local_addr().unwrap().to_string(),
            srtp: None,
            role: String::new(),
            last_n: 0,
        }
    }
}

pub async fn get(
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

pub async fn route_of(
    router: &mut RouterClient<Channel>,
    conference: &str,
) -> Result<pb::RouteResponse, tonic::Status> {
    let req = pb::RouteRequest {
        conference: conference.into(),
    };
    router.route(req).await.map(tonic::Response::into_inner)
}

/// GETs Prometheus metrics from `addr`.
pub fn scrape(addr: &str) -> String {
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
pub fn flows(from: &Party, to: &Party, media: &str, seq: u16) -> bool {
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

pub fn data_dir(tag: &str) -> String {
    let d = std::env::temp_dir().join(format!("ringbridge-control-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d.to_string_lossy().into_owned()
}

/// Joins every party of `parties` to `conference` as `PREFIX1`, `PREFIX2`, ...; returns the
/// last answer's bridge and media address.
pub async fn join_all(
    focus: &mut FocusClient<Channel>,
    conference: &str,
    prefix: &str,
    region: &str,
    parties: &[Party],
) -> (String, SocketAddr) {
    let mut last = None;
    for (i, p) in parties.iter().enumerate() {
        let r = focus
            .join(p.join(conference, &format!("{prefix}{}", i + 1), region))
            .await
            .unwrap()
            .into_inner();
        last = Some((r.bridge_id, r.media_addr.parse().unwrap()));
    }
    last.expect("at least one party")
}

/// The next placement on `watch` announced with `reason` (others are skipped), within `secs`.
pub async fn next_with_reason(
    watch: &mut tonic::Streaming<pb::ConferencePlacement>,
    reason: &str,
    secs: u64,
) -> pb::ConferencePlacement {
    tokio::time::timeout(Duration::from_secs(secs), async {
        loop {
            let m = watch.message().await.unwrap().unwrap();
            if m.reason == reason {
                return m;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {reason:?} announcement within {secs} s"))
}

/// A control plane on `etcd` for shard `shard`, its own data directory named after `tag`.
pub fn control_on_etcd(etcd: &Etcd, shard: &str, tag: &str) -> Proc {
    control_on_etcd_with(etcd, shard, tag, "127.0.0.1:0", &[])
}

/// [`control_on_etcd`] listening on `listen`, with `extra` arguments.
pub fn control_on_etcd_with(
    etcd: &Etcd,
    shard: &str,
    tag: &str,
    listen: &str,
    extra: &[&str],
) -> Proc {
    let store = etcd.store();
    let mut args = vec![
        "--report-interval-ms",
        "200",
        "--store",
        &store,
        // 1 000 concurrent first routes need more than 500 ms of etcd on this VM.
        "--etcd-timeout-ms",
        "1000",
        "--shard-id",
        shard,
    ];
    args.extend_from_slice(extra);
    control_with(&data_dir(tag), listen, &args)
}

/// Opens a WatchConference stream on `conference`.
pub async fn watch(
    focus: &mut FocusClient<Channel>,
    conference: &str,
) -> tonic::Streaming<pb::ConferencePlacement> {
    focus
        .watch_conference(pb::WatchConferenceRequest {
            conference: conference.into(),
        })
        .await
        .unwrap()
        .into_inner()
}

/// A real etcd server on free loopback ports with a temporary data directory (`make test`
/// installs Debian's etcd-server when it is missing).
pub struct Etcd {
    pub child: Child,
    pub endpoint: String,
    dir: PathBuf,
    args: Vec<String>,
}

/// The flags of etcd member `name` on loopback ports `client` and `peer` of a new cluster.
fn member_args(
    name: &str,
    dir: &std::path::Path,
    client: u16,
    peer: u16,
    initial: &str,
) -> Vec<String> {
    let c = format!("http://127.0.0.1:{client}");
    let p = format!("http://127.0.0.1:{peer}");
    [
        "--name",
        name,
        "--data-dir",
        dir.to_str().unwrap(),
        "--listen-client-urls",
        &c,
        "--advertise-client-urls",
        &c,
        "--listen-peer-urls",
        &p,
        "--initial-advertise-peer-urls",
        &p,
        "--initial-cluster",
        initial,
        "--initial-cluster-state",
        "new",
        "--log-level",
        "error",
    ]
    .map(String::from)
    .to_vec()
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Etcd {
    pub fn start(tag: &str) -> Self {
        Self::start_with(tag, &[])
    }

    /// SIGSTOP: etcd keeps its connections open and answers nothing.
    pub fn pause(&self) {
        signal(&self.child, "STOP");
    }

    /// SIGCONT.
    pub fn resume(&self) {
        signal(&self.child, "CONT");
    }

    /// A three-member etcd cluster (members `m0`..`m2`) on free loopback ports.
    pub fn cluster3(tag: &str) -> Vec<Self> {
        let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
        let initial = ports
            .iter()
            .enumerate()
            .map(|(i, (_, p))| format!("m{i}=http://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",");
        let members: Vec<Etcd> = ports
            .iter()
            .enumerate()
            .map(|(i, (client, peer))| {
                let dir = std::env::temp_dir()
                    .join(format!("ringbridge-etcd-{tag}-m{i}-{}", std::process::id()));
                let _ = std::fs::remove_dir_all(&dir);
                let args = member_args(&format!("m{i}"), &dir, *client, *peer, &initial);
                Etcd {
                    child: Self::spawn(&args),
                    endpoint: format!("127.0.0.1:{client}"),
                    dir,
                    args,
                }
            })
            .collect();
        for m in &members {
            m.wait_healthy();
        }
        members
    }

    /// An etcd with `extra` flags (e.g. a small `--max-request-bytes`).
    pub fn start_with(tag: &str, extra: &[&str]) -> Self {
        let dir =
            std::env::temp_dir().join(format!("ringbridge-etcd-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (client, peer) = (free_port(), free_port());
        let initial = format!("t=http://127.0.0.1:{peer}");
        let args = member_args("t", &dir, client, peer, &initial);
        let mut args = args;
        args.extend(extra.iter().map(|a| a.to_string()));
        let e = Etcd {
            child: Self::spawn(&args),
            endpoint: format!("127.0.0.1:{client}"),
            dir,
            args,
        };
        e.wait_healthy();
        e
    }

    fn spawn(args: &[String]) -> Child {
        Command::new("etcd")
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("etcd not found: `make test` installs etcd-server (apt-get) when missing")
    }

    /// Stops etcd (SIGKILL), waits `down`, starts it again on the same data and ports.
    pub fn restart(&mut self, down: Duration) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::thread::sleep(down);
        self.child = Self::spawn(&self.args);
        self.wait_healthy();
    }

    /// Up means its /health says so (it has elected itself leader), not just a listening port.
    fn wait_healthy(&self) {
        let healthy = |ep: &str| {
            use std::io::{Read, Write};
            let Ok(mut s) = std::net::TcpStream::connect(ep) else {
                return false;
            };
            let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
            let _ = s.write_all(b"GET /health HTTP/1.0\r\n\r\n");
            let mut out = String::new();
            let _ = s.read_to_string(&mut out);
            out.contains("\"health\":\"true\"")
        };
        // A member of a three-member cluster is healthy once the cluster has a leader, which
        // took over 20 s once in CI under load.
        let deadline = Instant::now() + Duration::from_secs(45);
        while !healthy(&self.endpoint) {
            assert!(Instant::now() < deadline, "etcd did not become healthy");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `--store` value for the control plane.
    pub fn store(&self) -> String {
        format!("etcd://{}", self.endpoint)
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
