//! The etcd store and the election under faults, with a real etcd (issue 20's sweep): etcd hung
//! longer than the lease (the active steps down, recovers alone, never two active), fenced
//! writes, a broadcast bigger than one etcd value, the active killed during concurrent joins
//! (no acknowledged join lost, no orphan left on a bridge), a dead member in the endpoint list,
//! and a standby's watch starting from what etcd holds now.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use ringbridge_control::store::cluster::Cluster;
use ringbridge_control::store::etcd::EtcdStore;
use ringbridge_control::store::{Change, Store, StoreError};
use ringbridge_proto::v1 as pb;
use ringbridge_proto::v1::bridge_client::BridgeClient;
use ringbridge_proto::v1::focus_client::FocusClient;
use ringbridge_proto::v1::registry_client::RegistryClient;
use tonic::Code;

fn url(p: &Proc) -> String {
    format!("http://{}", p.field("listen"))
}

/// A join of a participant that latches (no socket needed), in `region`.
fn latching(conference: &str, id: &str, ssrc: u32) -> pb::JoinRequest {
    pb::JoinRequest {
        conference: conference.into(),
        participant_id: id.into(),
        region: "eu".into(),
        ssrcs: vec![ssrc],
        remote_addr: String::new(),
        srtp: None,
        role: String::new(),
        last_n: 0,
    }
}

/// Whether the instance at `u` answers as the active focus.
async fn is_active(u: &str) -> bool {
    FocusClient::new(channel(u).await)
        .list_placements(pb::ListPlacementsRequest {})
        .await
        .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_hung_past_the_lease_steps_the_active_down_then_it_recovers_and_is_never_doubled() {
    let etcd = Etcd::start("hung-lease");
    let a = control_on_etcd(&etcd, "s1", "hl-a");
    let ua = url(&a);
    wait_active(&ua).await;
    let _b1 = bridge(&ua, "hl-b1", "eu");
    wait_bridges(&ua, 1).await;
    let mut f = FocusClient::new(channel(&ua).await);
    f.join(latching("c", "p1", 1)).await.unwrap();

    // etcd hung (SIGSTOP) for 5 s, longer than the 3 s lease.
    etcd.pause();
    tokio::time::sleep(Duration::from_millis(3500)).await;
    // The active instance stepped down: it answers as a standby, not as an active focus whose
    // writes fail.
    let e = f.join(latching("c", "p2", 2)).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable);
    assert!(e.message().contains("standby"), "{}", e.message());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    etcd.resume();

    // It recovers by itself: joins succeed again.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match f.join(latching("c", "p3", 3)).await {
            Ok(_) => break,
            Err(e) => {
                assert!(Instant::now() < deadline, "never recovered: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    let placed = get(&mut f, "c").await.unwrap();
    assert_eq!(placed.participants, ["p1", "p3"]);

    // A second instance started now stands by: one active focus, and the healthy bridge is
    // neither declared down nor its conference moved.
    let b = control_on_etcd(&etcd, "s1", "hl-b");
    let ub = url(&b);
    for _ in 0..15 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (x, y) = (is_active(&ua).await, is_active(&ub).await);
        assert!(x && !y, "active: a={x} b={y}");
    }
    let l = bridges_of(&ua).await;
    assert_eq!(l.len(), 1);
    assert_eq!(l[0].state, "up");
    assert_eq!(get(&mut f, "c").await.unwrap().bridge_id, placed.bridge_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_are_fenced_by_the_election_an_instance_that_lost_it_writes_nothing() {
    let etcd = Etcd::start("fence");
    let eps = vec![format!("http://{}", etcd.endpoint)];
    let t = Duration::from_secs(1);
    let store = |eps: Vec<String>| {
        tokio::task::block_in_place(|| EtcdStore::connect(&eps, "s", t, true).unwrap())
    };
    let placed = |c: &str| Change::Placed {
        conference: c.into(),
        bridge: "b".into(),
        link: 1,
    };
    let sa = store(eps.clone());
    // Not elected: nothing is written.
    let r = tokio::task::block_in_place(|| sa.append(&[placed("c0")]));
    assert!(matches!(r, Err(StoreError::Fenced(_))), "{r:?}");
    let ca = Cluster::join(&eps, "s", "a:1", t, 3_600_000).await.unwrap();
    let fa = ca.campaign().await.unwrap();
    sa.set_fence(Some(fa));
    tokio::task::block_in_place(|| sa.append(&[placed("c1")])).unwrap();

    // a's lease goes (as when etcd expires it); b is elected.
    let mut admin = etcd_client::Client::connect(&eps, None).await.unwrap();
    admin.lease_revoke(ca.lease()).await.unwrap();
    let cb = Cluster::join(&eps, "s", "b:1", t, 3_600_000).await.unwrap();
    let fb = tokio::time::timeout(Duration::from_secs(5), cb.campaign())
        .await
        .unwrap()
        .unwrap();
    let sb = store(eps.clone());
    sb.set_fence(Some(fb));
    tokio::task::block_in_place(|| sb.load()).unwrap();
    tokio::task::block_in_place(|| sb.append(&[placed("c2")])).unwrap();
    // a still believes it leads: its write is refused by etcd itself.
    let r = tokio::task::block_in_place(|| sa.append(&[placed("c3")]));
    assert!(matches!(r, Err(StoreError::Fenced(_))), "{r:?}");
    let seen = tokio::task::block_in_place(|| store(eps.clone()).load()).unwrap();
    assert_eq!(
        seen.placements.keys().collect::<Vec<_>>(),
        ["c1", "c2"],
        "c3 must not be written"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broadcast_bigger_than_one_etcd_value_keeps_the_shard_working_and_survives_a_takeover() {
    // A 64 KiB request limit: the old one-value-per-conference layout failed past ~600 viewers.
    let etcd = Etcd::start_with("big", &["--max-request-bytes", "65536"]);
    let a = control_on_etcd(&etcd, "s1", "big-a");
    let ua = url(&a);
    wait_active(&ua).await;
    let _bridges = [bridge(&ua, "big-1", "eu"), bridge(&ua, "big-2", "eu")];
    wait_bridges(&ua, 2).await;
    let mut f = FocusClient::new(channel(&ua).await);
    let mut publisher = latching("big", "pub", 1);
    publisher.role = "publisher".into();
    f.join(publisher).await.unwrap();
    const VIEWERS: u32 = 900;
    let mut tasks = Vec::new();
    for t in 0..4u32 {
        let ua = ua.clone();
        tasks.push(tokio::spawn(async move {
            let mut f = FocusClient::new(channel(&ua).await);
            for i in (t..VIEWERS).step_by(4) {
                let req = pb::JoinRequest {
                    conference: "big".into(),
                    participant_id: format!("viewer-{i:04}"),
                    region: "eu".into(),
                    ssrcs: vec![],
                    remote_addr: format!("127.0.0.1:{}", 20_000 + i),
                    srtp: None,
                    role: "viewer".into(),
                    last_n: 0,
                };
                f.join(req)
                    .await
                    .unwrap_or_else(|e| panic!("viewer {i}: {e}"));
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // It can still shrink, and other conferences still work.
    f.leave(pb::LeaveRequest {
        conference: "big".into(),
        participant_id: "viewer-0000".into(),
    })
    .await
    .unwrap();
    f.join(latching("other", "x", 5)).await.unwrap();
    // Every acknowledged viewer is in etcd: a new instance takes over with all of them.
    drop(a);
    let b = control_on_etcd(&etcd, "s1", "big-b");
    let ub = url(&b);
    let deadline = Instant::now() + Duration::from_secs(15);
    while !is_active(&ub).await {
        assert!(
            Instant::now() < deadline,
            "the new instance never took over"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut g = FocusClient::new(channel(&ub).await);
    let p = get(&mut g, "big").await.unwrap();
    assert_eq!(p.participant_count, VIEWERS); // 899 viewers and the publisher
    assert_eq!(get(&mut g, "other").await.unwrap().participants, ["x"]);
}

/// Conference -> endpoints every bridge holds, by bridge id.
async fn held(url: &str) -> BTreeMap<String, BTreeMap<String, BTreeSet<String>>> {
    let mut out = BTreeMap::new();
    for b in bridges_of(url).await {
        let mut c = BridgeClient::new(channel(&format!("http://{}", b.api_addr)).await);
        let confs = c
            .list_conferences(pb::ListConferencesRequest {})
            .await
            .unwrap()
            .into_inner()
            .conferences;
        out.insert(
            b.bridge_id,
            confs
                .into_iter()
                .map(|c| {
                    (
                        c.conference_id,
                        c.endpoints.into_iter().map(|e| e.endpoint_id).collect(),
                    )
                })
                .collect(),
        );
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_active_killed_during_joins_loses_no_acknowledged_join_and_leaves_no_orphan() {
    let etcd = Etcd::start("killjoin");
    let mut a = control_on_etcd(&etcd, "s1", "kj-a");
    let ua = url(&a);
    wait_active(&ua).await;
    let b = control_on_etcd(&etcd, "s1", "kj-b");
    let ub = url(&b);
    let both = format!("{ua},{ub}");
    let _bridges = [bridge(&both, "kj-1", "eu"), bridge(&both, "kj-2", "eu")];
    wait_bridges(&ua, 2).await;

    // Joins, paced, from four clients; the active instance is killed in the middle.
    let acked: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let mut tasks = Vec::new();
    for t in 0..4u32 {
        let (ua, acked) = (ua.clone(), acked.clone());
        tasks.push(tokio::spawn(async move {
            let mut f = FocusClient::new(channel(&ua).await);
            for i in 0..25u32 {
                let conf = format!("k{}", (t + i) % 5);
                let id = format!("p{t}-{i}");
                match f.join(latching(&conf, &id, 1000 + t * 100 + i)).await {
                    Ok(_) => acked.lock().unwrap().push((conf, id)),
                    Err(_) => return,
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while acked.lock().unwrap().len() < 40 {
        assert!(Instant::now() < deadline, "joins too slow");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    a.kill();
    for t in tasks {
        t.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 40 && acked.len() < 100, "{}", acked.len());

    // The standby takes over with every acknowledged join.
    let deadline = Instant::now() + Duration::from_secs(15);
    while !is_active(&ub).await {
        assert!(Instant::now() < deadline, "the standby never took over");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut f = FocusClient::new(channel(&ub).await);
    let mut placed: BTreeMap<String, pb::ConferencePlacement> = BTreeMap::new();
    for (conf, id) in &acked {
        if !placed.contains_key(conf) {
            placed.insert(conf.clone(), get(&mut f, conf).await.unwrap());
        }
        assert!(
            placed[conf].participants.contains(id),
            "acknowledged {id} of {conf} lost"
        );
    }
    // Once the takeover's reconciliation ran, every endpoint a bridge holds is placed there.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut orphans = Vec::new();
        let now: BTreeMap<String, pb::ConferencePlacement> = {
            let mut m = BTreeMap::new();
            for c in (0..5).map(|k| format!("k{k}")) {
                if let Ok(p) = get(&mut f, &c).await {
                    m.insert(c, p);
                }
            }
            m
        };
        for (bridge, confs) in held(&ub).await {
            for (conf, endpoints) in confs {
                for e in endpoints {
                    let ok = now.get(&conf).is_some_and(|p| {
                        p.bridges
                            .iter()
                            .any(|b| b.bridge_id == bridge && b.participants.contains(&e))
                    });
                    if !ok {
                        orphans.push(format!("{e} of {conf} on {bridge}"));
                    }
                }
            }
        }
        if orphans.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "orphans left: {orphans:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Every acknowledged participant can leave.
    for (conf, id) in &acked {
        f.leave(pb::LeaveRequest {
            conference: conf.clone(),
            participant_id: id.clone(),
        })
        .await
        .unwrap_or_else(|e| panic!("leave {id} of {conf}: {e}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_dead_member_of_three_costs_no_join_and_no_start() {
    let mut members = Etcd::cluster3("members");
    let store = format!(
        "etcd://{}",
        members
            .iter()
            .map(|m| m.endpoint.as_str())
            .collect::<Vec<_>>()
            .join(",")
    );
    let dead = members.pop().unwrap();
    drop(dead); // SIGKILL: quorum kept by the other two
    let ctl = control_with(
        &data_dir("members"),
        "127.0.0.1:0",
        &[
            "--report-interval-ms",
            "200",
            "--store",
            &store,
            "--etcd-timeout-ms",
            "1000",
        ],
    );
    let u = url(&ctl);
    wait_active(&u).await;
    let _b = bridge(&u, "m-1", "eu");
    wait_bridges(&u, 1).await;
    let mut f = FocusClient::new(channel(&u).await);
    for i in 0..40u32 {
        f.join(latching(&format!("m{}", i % 4), &format!("p{i}"), 100 + i))
            .await
            .unwrap_or_else(|e| panic!("join {i}: {e}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_on_a_standby_starts_from_the_placement_now_and_follows_it() {
    let etcd = Etcd::start("standby-watch");
    let a = control_on_etcd(&etcd, "s1", "sw-a");
    let ua = url(&a);
    wait_active(&ua).await;
    let b = control_on_etcd(&etcd, "s1", "sw-b");
    let ub = url(&b);
    let _br = bridge(&format!("{ua},{ub}"), "sw-1", "eu");
    wait_bridges(&ua, 1).await;
    let mut f = FocusClient::new(channel(&ua).await);
    for (i, id) in ["x", "y", "z"].iter().enumerate() {
        f.join(latching("w", id, 10 + i as u32)).await.unwrap();
    }
    let mut w = watch(&mut FocusClient::new(channel(&ub).await), "w").await;
    let first = tokio::time::timeout(Duration::from_secs(5), w.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(first.reason, "current");
    assert_eq!(first.participants, ["x", "y", "z"]);
    assert_eq!(first.bridges[0].bridge_id, "sw-1");
    assert!(!first.media_addr.is_empty());
    f.join(latching("w", "q", 20)).await.unwrap();
    let m = next_with_reason(&mut w, "joined", 5).await;
    assert_eq!(m.participants, ["q", "x", "y", "z"]);
    f.leave(pb::LeaveRequest {
        conference: "w".into(),
        participant_id: "x".into(),
    })
    .await
    .unwrap();
    let m = next_with_reason(&mut w, "left", 5).await;
    assert_eq!(m.participants, ["q", "y", "z"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_takeover_a_join_is_acknowledged_only_once_it_is_durable() {
    // Found by the chaos soak (a placement acknowledged and then lost): a takeover replaced
    // the focus, but the count of changes already in the store was the previous focus's, so
    // the new focus's first joins were acknowledged before they were written.
    let etcd = Etcd::start("durable-epoch");
    let a = control_on_etcd(&etcd, "s1", "de-a");
    let ua = url(&a);
    wait_active(&ua).await;
    let _b1 = bridge(&ua, "de-b1", "eu");
    wait_bridges(&ua, 1).await;
    let mut f = FocusClient::new(channel(&ua).await);
    for i in 0..20 {
        f.join(latching("c", &format!("p{i}"), i + 1))
            .await
            .unwrap();
    }
    // etcd hung past the lease: the instance stands by, then takes over again by itself.
    etcd.pause();
    tokio::time::sleep(Duration::from_millis(3500)).await;
    etcd.resume();
    let deadline = Instant::now() + Duration::from_secs(15);
    while let Err(e) = f.join(latching("c", "back", 100)).await {
        assert!(Instant::now() < deadline, "never took over again: {e}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The store cannot be written now: a join is done on the bridge but not acknowledged.
    etcd.pause();
    let r = tokio::time::timeout(Duration::from_secs(10), f.join(latching("c", "late", 101)))
        .await
        .expect("an answer within the deadline");
    etcd.resume();
    let e = r.expect_err("acknowledged while the store could not be written");
    assert_eq!(e.code(), Code::Unavailable, "{e}");
    assert!(e.message().contains("durable"), "{e}");
}

/// Kills every process whose command line holds `needle` (the detached bridges a test's
/// control instances started: not children of the test).
struct KillOnDrop(String);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = e
                .file_name()
                .to_string_lossy()
                .parse::<i32>()
                .ok()
                .and_then(rustix::process::Pid::from_raw)
            else {
                continue;
            };
            let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmd).contains(&self.0) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_active_killed_its_autoscaled_bridges_go_on_and_the_new_active_adopts_them() {
    // Found by the chaos soak: the process actuator's bridges died with the instance that
    // started them (--exit-with-parent), so killing the active cost their participants a
    // failover (3.4-3.9 s), though media does not depend on the control plane.
    let etcd = Etcd::start("adopt");
    let prefix = format!("auto-{}", std::process::id());
    let _cleanup = KillOnDrop(format!("{prefix}-"));
    let ports = [free_port(), free_port()];
    let list = ports.map(|p| format!("http://127.0.0.1:{p}")).join(",");
    let start = |i: usize| {
        let name = ["a", "b"][i];
        control_on_etcd_with(
            &etcd,
            "adopt",
            &format!("adopt-{name}"),
            &format!("127.0.0.1:{}", ports[i]),
            &[
                "--drain-grace-ms",
                "300",
                "--drain-linger-ms",
                "200",
                "--autoscale",
                "process",
                "--autoscale-interval-ms",
                "300",
                "--min-bridges",
                "1",
                "--max-bridges",
                "2",
                "--bridge-region",
                "eu",
                "--bridge-id-prefix",
                &format!("{prefix}-{name}"),
                "--bridge-control",
                &list,
                "--bridge-binary",
                bin("ringbridge").to_str().unwrap(),
                "--bridge-arg=--engine",
                "--bridge-arg=mio",
                "--bridge-arg=--workers",
                "--bridge-arg=1",
                "--bridge-arg=--no-pin",
            ],
        )
    };
    let mut a = start(0);
    let ua = url(&a);
    wait_active(&ua).await;
    let b = start(1);
    let ub = url(&b);
    // a's autoscaler starts the minimum: one bridge of a's.
    let mine = format!("{prefix}-a-1");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !bridges_of(&ua)
        .await
        .iter()
        .any(|x| x.bridge_id == mine && x.state == "up")
    {
        assert!(Instant::now() < deadline, "{mine} never came up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A bridge started by hand, registered with both: never adopted (found by the soak: the
    // new active drained the fleet's own bridges as its own).
    let hand = format!("{prefix}-hand");
    let _hand = bridge(&list, &hand, "us");
    let (p1, p2) = (Party::new(1), Party::new(2));
    let mut f = FocusClient::new(channel(&ua).await);
    let j = f
        .join(p1.join("talk", "p1", "eu"))
        .await
        .unwrap()
        .into_inner();
    f.join(p2.join("talk", "p2", "eu")).await.unwrap();
    assert_eq!(j.bridge_id, mine);
    assert!(flows(&p1, &p2, &j.media_addr, 1));

    // The active instance dies: its bridge goes on forwarding, before any takeover.
    a.kill();
    assert!(
        flows(&p1, &p2, &j.media_addr, 2),
        "media stopped with the control plane"
    );
    assert!(
        ringbridge_control::actuator::local_bridge(&bin("ringbridge"), &mine, Some(&list))
            .is_some(),
        "the bridge went with the instance that started it"
    );
    // b takes over; the bridge reports to it (up, not failed over).
    let deadline = Instant::now() + Duration::from_secs(20);
    while !is_active(&ub).await
        || !bridges_of(&ub)
            .await
            .iter()
            .any(|x| x.bridge_id == mine && x.state == "up")
    {
        assert!(Instant::now() < deadline, "b never took {mine} over");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut fb = FocusClient::new(channel(&ub).await);
    let placed = get(&mut fb, "talk").await.unwrap();
    assert!(
        placed.bridges.len() == 1 && placed.bridge_id == mine,
        "nobody moved: {placed:?}"
    );
    assert!(flows(&p1, &p2, &j.media_addr, 3));

    // b adopts it: drained, its participants move to a bridge of b's, and b stops it.
    RegistryClient::new(channel(&ub).await)
        .drain_bridge(pb::DrainBridgeRequest {
            bridge_id: mine.clone(),
        })
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let gone =
            ringbridge_control::actuator::local_bridge(&bin("ringbridge"), &mine, Some(&list))
                .is_none();
        let forgotten = !bridges_of(&ub).await.iter().any(|x| x.bridge_id == mine);
        if gone && forgotten {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{mine} not stopped by b (gone {gone}, forgotten {forgotten}): {:?}",
            bridges_of(&ub).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let placed = get(&mut fb, "talk").await.unwrap();
    assert!(
        placed.bridges.len() == 1 && placed.bridge_id != mine,
        "moved off: {placed:?}"
    );
    let fleet = bridges_of(&ub).await;
    assert!(
        fleet.iter().any(|x| x.bridge_id == hand && x.state == "up"),
        "the bridge started by hand was taken for b's: {fleet:?}"
    );
}
