//! `ringbridge-perf chaos` (`make chaos`): a soak of the whole fleet under seeded faults.
//!
//! A real fleet on this machine: etcd, two control instances of one shard (active + standby,
//! each with the autoscaler and its process actuator), four bridges in two regions (io_uring in
//! `eu`, epoll in `us`); conferences of 3-10 participants (a third spanning both regions, a
//! third on SRTP), one broadcast with 50+ viewers over edges, joins and leaves all the time;
//! every packet numbered and checked at its receivers ([`check`]). Faults come from a seeded
//! schedule ([`schedule`]), one every 10-30 s. The report ([`report`]) says, per fault and
//! overall, what must never happen (and whether it did), the media gaps and refused joins each
//! fault caused, and whether every long-lived process stayed flat in memory and descriptors.

pub mod check;
pub mod fleet;
pub mod load;
pub mod report;
pub mod schedule;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use ringbridge_proto::v1 as pb;
use ringbridge_proto::v1::bridge_client::BridgeClient;
use ringbridge_proto::v1::focus_client::FocusClient;
use ringbridge_proto::v1::registry_client::RegistryClient;
use tonic::transport::{Channel, Endpoint};

use fleet::{Etcd, Proc, free_port, free_udp_port, sibling};
use load::{Pending, Rig, Role};
use report::{FaultRecord, JoinRecord, Sample};
use schedule::{Kind, Planned, Rng};

/// The soak's settings (`ringbridge-perf chaos --help`).
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// Minutes to run (faults stop 40 s before the end: the fleet settles and is checked).
    #[arg(long, default_value_t = 30.0)]
    pub minutes: f64,
    /// Seed of the fault schedule, the conference sizes and the churn.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Conferences (3-10 participants each).
    #[arg(long, default_value_t = 20)]
    pub conferences: usize,
    /// Viewers of the broadcast.
    #[arg(long, default_value_t = 50)]
    pub viewers: usize,
    /// Packets per second each talker (and the publisher) sends.
    #[arg(long, default_value_t = 20)]
    pub pps: u32,
    /// Packets/s (in + out) at which a bridge reports stress 1 (the autoscaler's capacity).
    #[arg(long, default_value_t = 12_000.0)]
    pub capacity_pps: f64,
    /// Seconds before the first fault.
    #[arg(long, default_value_t = 60)]
    pub warmup_secs: u64,
    /// Directory of the report.
    #[arg(long, default_value = "perf/results")]
    pub out: PathBuf,
}

/// Deadline of every call to the control plane or a bridge.
const CALL: Duration = Duration::from_secs(3);
/// How often the run reads the placements (clients move to their new bridge from them).
const POLL: Duration = Duration::from_millis(100);
/// How long a participant keeps its socket after its leave was acknowledged.
const LINGER: Duration = Duration::from_secs(3);
/// Packets may still arrive this long after a leave was acknowledged.
const LEAVE_GRACE_MS: u64 = 500;
/// A fault's window for gaps and joins lasts this long after the fault ends.
const SETTLE_MS: u64 = 6_000;

/// A lazily connected channel with deadlines.
fn channel(url: &str) -> anyhow::Result<Channel> {
    Ok(Endpoint::from_shared(url.to_string())?
        .connect_timeout(Duration::from_secs(1))
        .timeout(CALL)
        .connect_lazy())
}

/// The shard's two control instances, the active one first.
#[derive(Clone)]
struct Control {
    ch: [Channel; 2],
    active: Arc<AtomicUsize>,
}

impl Control {
    /// Runs `f` on the instance believed active, then on the other one if that fails;
    /// remembers which answered.
    async fn call<T, F, Fut>(&self, f: F) -> Result<T, tonic::Status>
    where
        F: Fn(Channel) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let first = self.active.load(Ordering::Relaxed);
        let mut last = None;
        for i in [first, 1 - first] {
            match tokio::time::timeout(CALL, f(self.ch[i].clone())).await {
                Ok(Ok(r)) => {
                    self.active.store(i, Ordering::Relaxed);
                    return Ok(r.into_inner());
                }
                Ok(Err(e)) => last = Some(e),
                Err(_) => last = Some(tonic::Status::deadline_exceeded("no answer within 3 s")),
            }
        }
        Err(last.unwrap_or_else(|| tonic::Status::unknown("no instance")))
    }

    async fn join(&self, req: pb::JoinRequest) -> Result<pb::JoinResponse, tonic::Status> {
        self.call(|ch| {
            let req = req.clone();
            async move { FocusClient::new(ch).join(req).await }
        })
        .await
    }

    async fn leave(&self, conference: &str, id: &str) -> Result<(), tonic::Status> {
        let req = pb::LeaveRequest {
            conference: conference.into(),
            participant_id: id.into(),
        };
        self.call(|ch| {
            let req = req.clone();
            async move { FocusClient::new(ch).leave(req).await }
        })
        .await
        .map(|_| ())
    }

    async fn placements(&self) -> Result<Vec<pb::ConferencePlacement>, tonic::Status> {
        self.call(|ch| async move {
            FocusClient::new(ch)
                .list_placements(pb::ListPlacementsRequest {})
                .await
        })
        .await
        .map(|r| r.conferences)
    }

    async fn bridges(&self) -> Result<Vec<pb::BridgeInfo>, tonic::Status> {
        self.call(|ch| async move {
            RegistryClient::new(ch)
                .list_bridges(pb::ListBridgesRequest {})
                .await
        })
        .await
        .map(|r| r.bridges)
    }
}

/// One of the run's own bridges: fixed id, region and ports (a restart takes the same).
struct Slot {
    id: String,
    region: &'static str,
    engine: &'static str,
    media: u16,
    api: u16,
    proc: Option<Proc>,
    /// Busy with a fault (not picked for another until it is back).
    busy: bool,
}

/// One conference of the load.
#[derive(Debug, Clone)]
struct Conf {
    name: String,
    index: u32,
    srtp: bool,
    /// Regions its participants ask for, in turn.
    regions: Vec<&'static str>,
    broadcast: bool,
    /// Participants joining now: churn keeps the size within `min..=max`.
    min: usize,
    max: usize,
    pps: u32,
    /// A surge's conference (removed when the surge ends).
    surge: bool,
}

/// What the main loop does later.
enum Later {
    ResumeBridge(usize, usize),
    StartBridge(usize, usize),
    StartControl(usize, usize),
    ResumeEtcd(usize),
    StartEtcd(usize),
    EndSurge(usize),
    EndLoss(usize),
}

/// Each conference's bridges over time: (ms, bridges) by conference index.
pub type BridgeHistory = BTreeMap<u32, Vec<(u64, BTreeSet<String>)>>;

/// State shared by the run's tasks.
struct Shared {
    rig: Rig,
    control: Control,
    confs: std::sync::Mutex<Vec<Conf>>,
    joins: std::sync::Mutex<Vec<JoinRecord>>,
    /// Each conference's bridges over time (ms, bridges), for attributing gaps.
    conf_bridges: std::sync::Mutex<BridgeHistory>,
    next_id: AtomicUsize,
    stop_churn: AtomicBool,
    /// Leaves not acknowledged yet: (conference, id).
    leaving: std::sync::Mutex<Vec<(String, u32)>>,
}

impl Shared {
    fn now_ms(&self) -> u64 {
        self.rig.lock().now_ms()
    }

    /// Joins one new participant to `conf`; whether the join was acknowledged.
    async fn join_one(&self, conf: &Conf, region: &str) -> bool {
        let id = 10_000 + self.next_id.fetch_add(1, Ordering::Relaxed) as u32;
        let Ok(p) = Pending::new(id, conf.srtp) else {
            return false;
        };
        let role = match (conf.broadcast, conf.pps) {
            (false, _) => Role::Talker,
            (true, 0) => Role::Viewer,
            (true, _) => Role::Publisher,
        };
        let req = pb::JoinRequest {
            conference: conf.name.clone(),
            participant_id: format!("p{id}"),
            region: region.into(),
            ssrcs: if role == Role::Viewer {
                vec![]
            } else {
                vec![id]
            },
            remote_addr: p.addr.to_string(),
            srtp: p.key.as_ref().map(|k| pb::SrtpParams {
                profile: load::PROFILE.name().into(),
                endpoint_key: k.clone(),
                bridge_key: vec![],
            }),
            role: match role {
                Role::Talker => "participant",
                Role::Publisher => "publisher",
                Role::Viewer => "viewer",
            }
            .into(),
            last_n: 0,
        };
        let t = Instant::now();
        let at_ms = self.now_ms();
        let r = self.control.join(req).await;
        let record = |ok: bool, error: Option<String>| JoinRecord {
            participant: format!("p{id}"),
            at_ms,
            ms: t.elapsed().as_millis() as u64,
            ok,
            error,
        };
        match r {
            Ok(r) => {
                self.joins.lock().unwrap().push(record(true, None));
                let media = r.media_addr.parse::<SocketAddr>().ok();
                let key = r.srtp.as_ref().map(|s| s.bridge_key.clone());
                self.rig.lock().add(
                    p,
                    conf.index,
                    role,
                    if role == Role::Viewer { 0 } else { conf.pps },
                    r.bridge_id,
                    media,
                    key.as_deref(),
                );
                true
            }
            Err(e) => {
                self.joins.lock().unwrap().push(record(
                    false,
                    Some(format!("{:?}: {}", e.code(), e.message())),
                ));
                // It may have been placed all the same: take it out again.
                self.leaving.lock().unwrap().push((conf.name.clone(), id));
                false
            }
        }
    }

    /// Leaves `id` of `conference`; on failure it is retried until acknowledged.
    async fn leave_one(&self, conference: &str, id: u32) {
        self.rig.lock().stop_sending(id);
        match self.control.leave(conference, &format!("p{id}")).await {
            Ok(()) => self.rig.lock().left(id),
            Err(_) => self
                .leaving
                .lock()
                .unwrap()
                .push((conference.to_string(), id)),
        }
    }

    /// Retries the leaves not acknowledged yet.
    async fn retry_leaves(&self) {
        let todo = std::mem::take(&mut *self.leaving.lock().unwrap());
        for (c, id) in todo {
            self.leave_one(&c, id).await;
        }
    }

    /// Members of conference `index` still in (not leaving, not left).
    fn members_of(&self, index: u32) -> Vec<u32> {
        let leaving: BTreeSet<u32> = self.leaving.lock().unwrap().iter().map(|l| l.1).collect();
        self.rig
            .lock()
            .members
            .values()
            .filter(|m| {
                m.conf == index
                    && m.left_ms.is_none()
                    && !leaving.contains(&m.id)
                    && (m.pps > 0 || m.role == Role::Viewer)
            })
            .map(|m| m.id)
            .collect()
    }

    /// Applies the control plane's placements: every participant sends to its bridge.
    fn apply(&self, placements: &[pb::ConferencePlacement]) {
        let confs = self.confs.lock().unwrap().clone();
        let now = self.now_ms();
        let mut hist = self.conf_bridges.lock().unwrap();
        let mut load = self.rig.lock();
        for p in placements {
            let Some(c) = confs.iter().find(|c| c.name == p.conference) else {
                continue;
            };
            let set: BTreeSet<String> = p.bridges.iter().map(|b| b.bridge_id.clone()).collect();
            let h = hist.entry(c.index).or_default();
            if h.last().map(|(_, s)| s) != Some(&set) {
                h.push((now, set));
            }
            for b in &p.bridges {
                let Ok(media) = b.media_addr.parse::<SocketAddr>() else {
                    continue;
                };
                for pid in &b.participants {
                    if let Some(id) = pid.strip_prefix('p').and_then(|s| s.parse().ok()) {
                        load.placed(id, &b.bridge_id, media);
                    }
                }
            }
        }
    }
}

/// Runs the soak; returns whether no *Never* was violated.
pub fn run(o: Options) -> anyhow::Result<bool> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(soak(o))
}

fn control_args(
    name: &str,
    port: u16,
    metrics: u16,
    etcd: &str,
    dir: &std::path::Path,
    o: &Options,
) -> Vec<String> {
    let mut v: Vec<String> = [
        "serve",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--metrics",
        &format!("127.0.0.1:{metrics}"),
        "--http",
        "off",
        "--store",
        &format!("etcd://{etcd}"),
        "--etcd-timeout-ms",
        "1000",
        "--shard-id",
        "chaos",
        "--data-dir",
        dir.join(format!("control-{name}")).to_str().unwrap_or("."),
        "--report-interval-ms",
        "500",
        "--missed-reports",
        "4",
        "--drain-grace-ms",
        "2000",
        "--max-viewers-per-edge",
        "15",
        "--autoscale",
        "process",
        "--autoscale-interval-ms",
        "2000",
        "--min-bridges",
        "1",
        "--max-bridges",
        "6",
        "--scale-down-window-ms",
        "15000",
        "--scale-down-period-ms",
        "15000",
        "--scale-up-period-ms",
        "15000",
        "--bridge-region",
        "eu",
        "--bridge-id-prefix",
        &format!("auto-{name}"),
        "--bridge-capacity-pps",
        &o.capacity_pps.to_string(),
    ]
    .map(String::from)
    .to_vec();
    for a in ["--engine", "uring", "--workers", "1", "--no-pin"] {
        v.push(format!("--bridge-arg={a}"));
    }
    v
}

fn bridge_args(s: &Slot, control: &str, o: &Options) -> Vec<String> {
    [
        "--engine",
        s.engine,
        "--workers",
        "1",
        "--no-pin",
        "--media",
        &format!("127.0.0.1:{}", s.media),
        "--api",
        &format!("127.0.0.1:{}", s.api),
        "--control",
        control,
        "--bridge-id",
        &s.id,
        "--region",
        s.region,
        "--capacity-pps",
        &o.capacity_pps.to_string(),
        "--drain-timeout-secs",
        "60",
    ]
    .map(String::from)
    .to_vec()
}

/// Starts slot `i`'s bridge (a new process, same id and ports).
fn start_bridge(
    slots: &mut [Slot],
    i: usize,
    bin: &std::path::Path,
    control: &str,
    dir: &std::path::Path,
    o: &Options,
) -> anyhow::Result<()> {
    let s = &slots[i];
    let args = bridge_args(s, control, o);
    let log = dir.join(format!("bridge-{}.log", s.id));
    let name = format!("bridge {}", s.id);
    // Its port may still be held by the process before it for a moment.
    let mut tries = 0;
    let p = loop {
        match Proc::start(&name, bin, &args, &log, true) {
            Ok(p) => break p,
            Err(e) if tries < 5 => {
                tries += 1;
                eprintln!("chaos: {name}: {e:#}; again");
                std::thread::sleep(Duration::from_millis(500));
            }
            Err(e) => return Err(e),
        }
    };
    slots[i].proc = Some(p);
    slots[i].busy = false;
    Ok(())
}

/// The nftables table of the lossy-link fault.
const NFT_TABLE: &str = "ringbridge_chaos";

/// Drops `percent` % of the UDP packets to and from `port` on loopback (an nftables rule).
fn lose(port: u16, percent: u32) -> anyhow::Result<()> {
    let rules = format!(
        "add table inet {NFT_TABLE}; \
         add chain inet {NFT_TABLE} input {{ type filter hook input priority 0; policy accept; }}; \
         add rule inet {NFT_TABLE} input udp dport {port} numgen random mod 100 < {percent} counter drop; \
         add rule inet {NFT_TABLE} input udp sport {port} numgen random mod 100 < {percent} counter drop"
    );
    let out = std::process::Command::new("nft").arg(&rules).output()?;
    anyhow::ensure!(
        out.status.success(),
        "nft: {} (needs root and Debian's nftables)",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

fn unlose() {
    let _ = std::process::Command::new("nft")
        .args(["delete", "table", "inet", NFT_TABLE])
        .output();
}

async fn soak(o: Options) -> anyhow::Result<bool> {
    let total = Duration::from_secs_f64(o.minutes * 60.0);
    let warmup = Duration::from_secs(o.warmup_secs.min(total.as_secs() / 3));
    let quiet = Duration::from_secs(40);
    let plan = schedule::plan(o.seed, total, warmup, quiet);
    let dir = std::env::temp_dir().join(format!("ringbridge-chaos-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    unlose();
    let bridge_bin = sibling("ringbridge")?;
    let control_bin = sibling("ringbridge-control")?;
    eprintln!(
        "chaos: {:.0} min, seed {}, {} faults planned; logs in {}",
        o.minutes,
        o.seed,
        plan.len(),
        dir.display()
    );

    // The fleet.
    let mut etcd = Etcd::start(&dir)?;
    let ports = [(free_port(), free_port()), (free_port(), free_port())];
    let names = ["a", "b"];
    let urls = ports.map(|(p, _)| format!("http://127.0.0.1:{p}"));
    let control_list = urls.join(",");
    // The autoscaled bridges outlive the instance that started them: stopped at the end.
    let _detached = fleet::Detached::new(&control_list);
    let start_control = |i: usize, etcd: &str| -> anyhow::Result<Proc> {
        let mut args = control_args(names[i], ports[i].0, ports[i].1, etcd, &dir, &o);
        args.extend(["--bridge-control".to_string(), control_list.clone()]);
        let log = dir.join(format!("control-{}.log", names[i]));
        Proc::start(
            &format!("control {}", names[i]),
            &control_bin,
            &args,
            &log,
            true,
        )
    };
    let mut controls = [Some(start_control(0, &etcd.endpoint)?), None];
    tokio::time::sleep(Duration::from_millis(500)).await; // a campaigns first
    controls[1] = Some(start_control(1, &etcd.endpoint)?);
    let control = Control {
        ch: [channel(&urls[0])?, channel(&urls[1])?],
        active: Arc::new(AtomicUsize::new(0)),
    };
    let mut slots: Vec<Slot> = [
        ("eu-1", "eu", "uring"),
        ("eu-2", "eu", "uring"),
        ("us-1", "us", "mio"),
        ("us-2", "us", "mio"),
    ]
    .into_iter()
    .map(|(id, region, engine)| Slot {
        id: id.into(),
        region,
        engine,
        media: free_udp_port(),
        api: free_port(),
        proc: None,
        busy: false,
    })
    .collect();
    for i in 0..slots.len() {
        start_bridge(&mut slots, i, &bridge_bin, &control_list, &dir, &o)?;
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let up = control
            .bridges()
            .await
            .map(|b| b.iter().filter(|b| b.state == "up").count())
            .unwrap_or(0);
        if up >= slots.len() {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "only {up} bridges up after 20 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The load.
    let t0 = Instant::now();
    let mut confs = Vec::new();
    for i in 0..o.conferences {
        let regions = match i % 3 {
            0 => vec!["eu", "us"],
            1 => vec!["eu"],
            _ => vec!["us"],
        };
        confs.push(Conf {
            name: format!("conf-{i}"),
            index: i as u32,
            srtp: i % 3 == 1,
            regions,
            broadcast: false,
            min: 3,
            max: 10,
            pps: o.pps,
            surge: false,
        });
    }
    let bcast = o.conferences as u32;
    let viewers = Conf {
        name: "live".into(),
        index: bcast,
        srtp: false,
        regions: vec!["eu", "us"],
        broadcast: true,
        min: o.viewers,
        max: o.viewers + 10,
        pps: 0,
        surge: false,
    };
    let shared = Arc::new(Shared {
        rig: Rig::start(t0, LEAVE_GRACE_MS),
        control: control.clone(),
        confs: std::sync::Mutex::new(confs.clone()),
        joins: std::sync::Mutex::new(Vec::new()),
        conf_bridges: std::sync::Mutex::new(BTreeMap::new()),
        next_id: AtomicUsize::new(0),
        stop_churn: AtomicBool::new(false),
        leaving: std::sync::Mutex::new(Vec::new()),
    });
    shared.confs.lock().unwrap().push(viewers.clone());
    // Placements are followed from the start.
    let poller = {
        let s = shared.clone();
        tokio::spawn(async move {
            loop {
                if let Ok(p) = s.control.placements().await {
                    s.apply(&p);
                }
                tokio::time::sleep(POLL).await;
            }
        })
    };
    // Everybody joins: the publisher first, then the conferences, then the viewers.
    let publisher = Conf {
        pps: o.pps,
        ..viewers.clone()
    };
    let mut rng_sizes = Rng::new(o.seed ^ 0x517e);
    join_until(&shared, &publisher, "eu").await?;
    for c in &confs {
        let n = rng_sizes.range(3, 11) as usize;
        for k in 0..n {
            join_until(&shared, c, c.regions[k % c.regions.len()]).await?;
        }
    }
    for k in 0..o.viewers {
        join_until(&shared, &viewers, viewers.regions[k % 2]).await?;
    }
    let members = shared.rig.lock().members.len();
    eprintln!(
        "chaos: {members} participants joined in {:.1} s; load on",
        t0.elapsed().as_secs_f64()
    );

    // Churn: joins and leaves all the time.
    let churn = {
        let s = shared.clone();
        let seed = o.seed;
        tokio::spawn(async move {
            let mut rng = Rng::new(seed ^ 0xc4a2);
            while !s.stop_churn.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(rng.range(700, 2_000))).await;
                s.retry_leaves().await;
                let confs = s.confs.lock().unwrap().clone();
                let live: Vec<&Conf> = confs.iter().filter(|c| !c.surge).collect();
                let c = live[rng.range(0, live.len() as u64) as usize];
                let members = s.members_of(c.index);
                // The broadcast's publisher stays (a broadcast has one).
                let leavers: Vec<u32> = {
                    let load = s.rig.lock();
                    members
                        .iter()
                        .copied()
                        .filter(|id| {
                            load.members
                                .get(id)
                                .is_some_and(|m| m.role != Role::Publisher)
                        })
                        .collect()
                };
                let n = leavers.len();
                if (n > c.min && rng.chance(0.5)) || n >= c.max {
                    let id = leavers[rng.range(0, n as u64) as usize];
                    s.leave_one(&c.name, id).await;
                } else {
                    let region = c.regions[rng.range(0, c.regions.len() as u64) as usize];
                    s.join_one(c, region).await;
                }
                s.rig.lock().close_left(LINGER);
            }
        })
    };

    // Samples: fleet size, memory and descriptors.
    let mut samples: Vec<Sample> = Vec::new();
    let mut fleet_size: Vec<(u64, usize, usize)> = Vec::new();
    let mut faults: Vec<FaultRecord> = Vec::new();
    let mut later: Vec<(Instant, Later)> = Vec::new();
    let mut next_fault = plan.iter().peekable();
    let mut last_sample = Instant::now() - Duration::from_secs(10);
    let end = t0 + total;
    let mut crashes: Vec<(u64, String)> = Vec::new();
    let mut last_progress = Instant::now();
    while Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = Instant::now();
        let now_ms = shared.now_ms();
        // Crashes: an exit the run did not cause.
        let mut procs: Vec<&mut Proc> = Vec::new();
        procs.push(&mut etcd.proc);
        for p in controls.iter_mut().flatten() {
            procs.push(p);
        }
        for s in slots.iter_mut() {
            if let Some(p) = s.proc.as_mut() {
                procs.push(p);
            }
        }
        for p in procs {
            if !p.expected_exit
                && let Some(how) = p.exited()
            {
                p.expected_exit = true;
                eprintln!("chaos: CRASH {} ({how})", p.name);
                crashes.push((now_ms, format!("{} exited: {how}", p.name)));
            }
        }
        // Drained bridges that exited start again.
        for (i, slot) in slots.iter_mut().enumerate() {
            let drained = slot
                .proc
                .as_mut()
                .is_some_and(|p| p.expected_exit && p.exited().is_some());
            let queued = later
                .iter()
                .any(|(_, l)| matches!(l, Later::StartBridge(j, _) if *j == i));
            if drained && !queued {
                slot.proc = None;
                let f = faults
                    .iter()
                    .rposition(|f| f.target.as_deref() == Some(slot.id.as_str()))
                    .unwrap_or(0);
                if let Some(f) = faults.get_mut(f) {
                    f.end_ms = f.end_ms.max(now_ms);
                }
                later.push((now, Later::StartBridge(i, f)));
            }
        }
        // Things due.
        let due: Vec<Later> = {
            let (d, keep): (Vec<_>, Vec<_>) = later.drain(..).partition(|(t, _)| *t <= now);
            later = keep;
            d.into_iter().map(|(_, l)| l).collect()
        };
        for l in due {
            match l {
                Later::ResumeBridge(i, f) => {
                    if let Some(p) = &slots[i].proc {
                        p.resume();
                    }
                    slots[i].busy = false;
                    ended(&mut faults, f, shared.now_ms());
                }
                Later::StartBridge(i, f) => {
                    if let Err(e) =
                        start_bridge(&mut slots, i, &bridge_bin, &control_list, &dir, &o)
                    {
                        crashes.push((
                            now_ms,
                            format!("bridge {} could not start again: {e:#}", slots[i].id),
                        ));
                    }
                    ended(&mut faults, f, shared.now_ms());
                }
                Later::StartControl(i, f) => {
                    match start_control(i, &etcd.endpoint) {
                        Ok(p) => controls[i] = Some(p),
                        Err(e) => crashes.push((
                            now_ms,
                            format!("control {} could not start again: {e:#}", names[i]),
                        )),
                    }
                    ended(&mut faults, f, shared.now_ms());
                }
                Later::ResumeEtcd(f) => {
                    etcd.proc.resume();
                    ended(&mut faults, f, shared.now_ms());
                }
                Later::StartEtcd(f) => {
                    if let Err(e) = etcd.start_again() {
                        crashes.push((now_ms, format!("etcd could not start again: {e:#}")));
                    }
                    ended(&mut faults, f, shared.now_ms());
                }
                Later::EndSurge(f) => {
                    let surge: Vec<Conf> = {
                        let mut c = shared.confs.lock().unwrap();
                        let s = c.iter().filter(|c| c.surge).cloned().collect();
                        c.retain(|c| !c.surge);
                        s
                    };
                    for c in surge {
                        for id in shared.members_of(c.index) {
                            shared.leave_one(&c.name, id).await;
                        }
                    }
                    ended(&mut faults, f, shared.now_ms());
                }
                Later::EndLoss(f) => {
                    unlose();
                    if let Some(i) = slots
                        .iter()
                        .position(|s| faults.get(f).and_then(|x| x.target.as_ref()) == Some(&s.id))
                    {
                        slots[i].busy = false;
                    }
                    ended(&mut faults, f, shared.now_ms());
                }
            }
        }
        // Samples every 2 s.
        if now.duration_since(last_sample) >= Duration::from_secs(2) {
            last_sample = now;
            if let Ok(b) = control.bridges().await {
                let up = b.iter().filter(|b| b.state == "up").count();
                fleet_size.push((now_ms, up, b.len()));
                // The autoscaler's own moves, recorded as events: a bridge it started (until
                // it is up), one it drains (until it is gone).
                for x in b.iter().filter(|x| x.bridge_id.starts_with("auto-")) {
                    let kind = match x.state.as_str() {
                        "draining" => Kind::ScaleDown,
                        "down" => continue,
                        _ => Kind::ScaleUp,
                    };
                    let seen = faults
                        .iter()
                        .any(|f| f.kind == kind && f.target.as_deref() == Some(&x.bridge_id));
                    if !seen {
                        eprintln!(
                            "chaos: [{:>5.1} min] autoscaler: {} {}",
                            now_ms as f64 / 60_000.0,
                            kind.name(),
                            x.bridge_id
                        );
                        faults.push(FaultRecord {
                            kind,
                            target: Some(x.bridge_id.clone()),
                            at_ms: now_ms.saturating_sub(2_000),
                            end_ms: now_ms,
                            note: "observed (the autoscaler's own decision)".into(),
                        });
                    }
                }
                // A drain lasts until the bridge is gone.
                for f in faults.iter_mut().filter(|f| f.kind == Kind::ScaleDown) {
                    if b.iter()
                        .any(|x| Some(&x.bridge_id) == f.target.as_ref() && x.state == "draining")
                    {
                        f.end_ms = now_ms;
                    }
                }
            }
            let mut procs: Vec<&Proc> = vec![&etcd.proc];
            procs.extend(controls.iter().flatten());
            procs.extend(slots.iter().filter_map(|s| s.proc.as_ref()));
            for p in procs {
                if let Some((rss, fds)) = fleet::rss_and_fds(p.pid()) {
                    samples.push(Sample {
                        name: p.name.clone(),
                        pid: p.pid(),
                        at_ms: now_ms,
                        age_ms: p.started.elapsed().as_millis() as u64,
                        rss_kib: rss,
                        fds,
                    });
                }
            }
        }
        if now.duration_since(last_progress) >= Duration::from_secs(30) {
            last_progress = now;
            let l = shared.rig.lock();
            eprintln!(
                "chaos: [{:>5.1} min] {} faults so far, {} participants, {} packets checked, {} never, {} gaps",
                now_ms as f64 / 60_000.0,
                faults.len(),
                l.members.values().filter(|m| m.left_ms.is_none()).count(),
                l.checker.packets,
                l.checker.violations.len() + crashes.len(),
                l.checker.gaps.len()
            );
        }
        // The next fault.
        let Some(p) = next_fault.peek() else { continue };
        if now < t0 + p.at || later.iter().any(|(_, l)| !matches!(l, Later::EndSurge(_))) {
            continue;
        }
        let p: Planned = *next_fault.next().unwrap();
        let fi = faults.len();
        let hold_until = now + p.hold;
        let mut rec = FaultRecord {
            kind: p.kind,
            target: None,
            at_ms: now_ms,
            end_ms: now_ms,
            note: String::new(),
        };
        if p.kind.on_bridge() {
            let free: Vec<usize> = (0..slots.len())
                .filter(|&i| {
                    !slots[i].busy && slots[i].proc.as_ref().is_some_and(|p| !p.expected_exit)
                })
                .collect();
            if free.len() < 2 {
                rec.note = "skipped: no bridge free".into();
                faults.push(rec);
                continue;
            }
            let i = free[(p.pick % free.len() as u64) as usize];
            rec.target = Some(slots[i].id.clone());
            slots[i].busy = true;
            let proc = slots[i].proc.as_mut().unwrap();
            match p.kind {
                Kind::KillBridge => {
                    proc.kill();
                    slots[i].proc = None;
                    later.push((hold_until, Later::StartBridge(i, fi)));
                }
                Kind::HangBridge => {
                    proc.pause();
                    later.push((hold_until, Later::ResumeBridge(i, fi)));
                }
                Kind::DrainBridge => proc.term(),
                Kind::RestartBridge => {
                    proc.kill();
                    slots[i].proc = None;
                    later.push((now, Later::StartBridge(i, fi)));
                }
                Kind::LossyLink => match lose(slots[i].media, 5) {
                    Ok(()) => {
                        rec.note = "5 % of the bridge's UDP packets dropped both ways (nftables; no delay: this kernel has no netem)".into();
                        later.push((hold_until, Later::EndLoss(fi)));
                    }
                    Err(e) => {
                        rec.note = format!("skipped: {e:#}");
                        slots[i].busy = false;
                    }
                },
                _ => {}
            }
        } else {
            match p.kind {
                Kind::KillControl => {
                    // The active one: whoever answers as the focus.
                    let a = control.active.load(Ordering::Relaxed);
                    let _ = control.placements().await;
                    let a2 = control.active.load(Ordering::Relaxed);
                    let i = if controls[a2].is_some() { a2 } else { a };
                    // Its process actuator's bridges stay (detached: --bridge-control names
                    // both instances) and report to the one that takes over.
                    if let Some(mut c) = controls[i].take() {
                        c.kill();
                    }
                    rec.target = Some(format!("control-{}", names[i]));
                    later.push((hold_until, Later::StartControl(i, fi)));
                }
                Kind::HangEtcd => {
                    etcd.proc.pause();
                    later.push((hold_until, Later::ResumeEtcd(fi)));
                }
                Kind::RestartEtcd => {
                    etcd.kill();
                    later.push((hold_until, Later::StartEtcd(fi)));
                }
                Kind::Surge => {
                    let mut added = Vec::new();
                    {
                        let mut c = shared.confs.lock().unwrap();
                        for k in 0..6 {
                            let index = 1000 + (fi * 10 + k) as u32;
                            let conf = Conf {
                                name: format!("surge-{fi}-{k}"),
                                index,
                                srtp: false,
                                regions: vec!["eu"],
                                broadcast: false,
                                min: 6,
                                max: 6,
                                pps: 50,
                                surge: true,
                            };
                            c.push(conf.clone());
                            added.push(conf);
                        }
                    }
                    for c in &added {
                        for _ in 0..6 {
                            shared.join_one(c, "eu").await;
                        }
                    }
                    rec.note = "6 conferences of 6 at 50 pps".into();
                    later.push((hold_until, Later::EndSurge(fi)));
                }
                _ => {}
            }
        }
        eprintln!(
            "chaos: [{:>5.1} min] fault {}: {} {}{}",
            now_ms as f64 / 60_000.0,
            fi + 1,
            p.kind.name(),
            rec.target.as_deref().unwrap_or(""),
            if rec.note.is_empty() {
                String::new()
            } else {
                format!(" ({})", rec.note)
            }
        );
        faults.push(rec);
    }

    // Settle: no more churn; everything that left is out, then the checks.
    shared.stop_churn.store(true, Ordering::Relaxed);
    let _ = churn.await;
    for _ in 0..10 {
        shared.retry_leaves().await;
        if shared.leaving.lock().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let placements = control
        .placements()
        .await
        .context("the placements at the end")?;
    shared.apply(&placements);
    let bridges = control.bridges().await.context("the bridges at the end")?;
    let mut endpoints: BTreeSet<(String, String)> = BTreeSet::new();
    for b in &bridges {
        if b.state == "down" {
            continue;
        }
        let ch = channel(&format!("http://{}", b.api_addr))?;
        if let Ok(Ok(r)) = tokio::time::timeout(
            CALL,
            BridgeClient::new(ch).list_conferences(pb::ListConferencesRequest {}),
        )
        .await
        {
            for c in r.into_inner().conferences {
                for e in c.endpoints {
                    endpoints.insert((b.bridge_id.clone(), e.endpoint_id));
                }
            }
        }
    }
    poller.abort();
    let now_ms = shared.now_ms();
    let leaving = shared.leaving.lock().unwrap().clone();
    let mut load = shared.rig.lock();
    for (at, what) in &crashes {
        load.checker.violation(*at, "crash", what.clone());
    }
    // Every acknowledged participant is placed; nobody who left is.
    let placed: BTreeMap<String, (String, String)> = placements
        .iter()
        .flat_map(|p| {
            p.bridges.iter().flat_map(move |b| {
                b.participants
                    .iter()
                    .map(move |pid| (pid.clone(), (p.conference.clone(), b.bridge_id.clone())))
            })
        })
        .collect();
    let confs = shared.confs.lock().unwrap().clone();
    let in_now: Vec<(u32, String, u32)> = load
        .members
        .values()
        .filter(|m| m.left_ms.is_none() && !leaving.iter().any(|l| l.1 == m.id))
        .map(|m| (m.id, m.pid(), m.conf))
        .collect();
    for (id, pid, conf) in &in_now {
        let name = confs
            .iter()
            .find(|c| c.index == *conf)
            .map(|c| c.name.clone())
            .unwrap_or_default();
        match placed.get(pid) {
            Some((c, _)) if *c == name => {}
            other => load.checker.violation(
                now_ms,
                "lost-placement",
                format!("{pid} (ssrc {id}) joined {name} and never left, but is placed {other:?}"),
            ),
        }
    }
    // Endpoints on bridges the control plane does not place there (after the settle).
    for (bridge, ep) in &endpoints {
        let ok = placed.get(ep).is_some_and(|(_, b)| b == bridge);
        if !ok {
            load.checker.violation(
                now_ms,
                "orphan-endpoint",
                format!(
                    "bridge {bridge} still has endpoint {ep}, placed {:?}",
                    placed.get(ep)
                ),
            );
        }
    }
    // Media of every sender in reaches every receiver in (nothing cut off for good).
    let in_ids: BTreeSet<u32> = in_now.iter().map(|m| m.0).collect();
    let mut lost = Vec::new();
    for r in load.members.values().filter(|m| in_ids.contains(&m.id)) {
        let heard: BTreeMap<u32, u64> = load.checker.last_heard(r.id).collect();
        for s in load.members.values() {
            if s.id == r.id || s.conf != r.conf || !in_ids.contains(&s.id) || s.pps == 0 {
                continue;
            }
            if r.role != Role::Viewer && s.role == Role::Publisher {
                continue;
            }
            let since = s.joined_ms.max(r.joined_ms);
            if now_ms < since + 10_000 {
                continue;
            }
            let last = heard.get(&s.id).copied();
            if last.is_none_or(|t| now_ms > t + 3_000) {
                lost.push(format!(
                    "{} hears nothing of {} (last {:?} ms, now {now_ms})",
                    r.pid(),
                    s.pid(),
                    last
                ));
            }
        }
    }
    for l in lost {
        load.checker.violation(now_ms, "lost-media", l);
    }
    let joins = shared.joins.lock().unwrap().clone();
    let hist = shared.conf_bridges.lock().unwrap().clone();
    let rep = report::build(report::Inputs {
        seed: o.seed,
        minutes: o.minutes,
        load: &load,
        faults: &faults,
        joins: &joins,
        samples: &samples,
        fleet_size: &fleet_size,
        conf_bridges: &hist,
        settle_ms: SETTLE_MS,
        end_ms: now_ms,
    });
    drop(load);
    let paths = report::write(&o.out, &rep)?;
    println!("{}", report::table(&rep));
    println!("report: {}", paths.join(", "));
    drop(shared);
    drop(controls);
    drop(slots);
    unlose();
    Ok(rep.never_total == 0)
}

/// Fault `f` ended at `ms` (or later, when it already had an end).
fn ended(faults: &mut [FaultRecord], f: usize, ms: u64) {
    if let Some(x) = faults.get_mut(f) {
        x.end_ms = x.end_ms.max(ms);
    }
}

/// Joins one participant of `c` in `region`, retrying for up to 20 s.
async fn join_until(s: &Shared, c: &Conf, region: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !s.join_one(c, region).await {
        anyhow::ensure!(
            Instant::now() < deadline,
            "joins to {} refused for 20 s",
            c.name
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}
