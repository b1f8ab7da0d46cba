//! Several control instances on a real etcd: two of shard s1 (one active, one standby) and one
//! of shard s2, with bridges. Concurrent first joins through both routers agree on one shard and
//! one bridge per conference; killing the active focus of s1 hands it to the standby within 5 s
//! with every placement, and a bridge killed after that still fails over.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use ringbridge_proto::v1 as pb;
use ringbridge_proto::v1::focus_client::FocusClient;
use ringbridge_proto::v1::router_client::RouterClient;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_share_routes_elect_one_focus_and_the_standby_takes_over() {
    let mut etcd = Etcd::start("cluster");
    let mut a = control_on_etcd(&etcd, "s1", "ce-a");
    tokio::time::sleep(Duration::from_millis(300)).await; // a campaigns first
    let b = control_on_etcd(&etcd, "s1", "ce-b");
    let c = control_on_etcd(&etcd, "s2", "ce-c");
    let url = |p: &Proc| format!("http://{}", p.field("listen"));
    let (ua, ub, uc) = (url(&a), url(&b), url(&c));
    let s1 = format!("{ua},{ub}");
    let mut s1_bridges = [
        bridge(&s1, "s1-b1", "eu"),
        bridge(&s1, "s1-b2", "eu"),
        bridge(&s1, "s1-b3", "eu"),
    ];
    let _s2_bridge = bridge(&uc, "s2-b1", "eu");
    // One active focus in s1: a; b stands by and says where the active one is.
    wait_active(&ua).await;
    let e = FocusClient::new(channel(&ub).await)
        .list_placements(pb::ListPlacementsRequest {})
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unavailable);
    assert!(
        e.message().contains("standby") && e.message().contains(&a.field("listen")),
        "{}",
        e.message()
    );
    wait_bridges(&ua, 3).await;
    wait_bridges(&uc, 1).await;
    let shards = RouterClient::new(channel(&uc).await)
        .list_shards(pb::ListShardsRequest {})
        .await
        .unwrap()
        .into_inner()
        .shards;
    assert_eq!(
        shards
            .iter()
            .map(|s| s.shard_id.as_str())
            .collect::<Vec<_>>(),
        ["s1", "s2"]
    );

    // 1 000 concurrent first joins of 100 new conferences, routed alternately by a and c.
    let routers = Arc::new([ua.clone(), uc.clone()]);
    let mut tasks = Vec::new();
    for i in 0..1000u32 {
        let routers = routers.clone();
        tasks.push(tokio::spawn(async move {
            let conf = format!("conf-{}", i % 100);
            let mut r = RouterClient::new(channel(&routers[(i % 2) as usize]).await);
            // UNAVAILABLE is retryable: under this burst an etcd call may miss its 1 s deadline
            // (or an instance step down for a moment); what is asserted is agreement.
            let until = Instant::now() + Duration::from_secs(15);
            let route = loop {
                match route_of(&mut r, &conf).await {
                    Ok(route) => break route,
                    Err(e) if e.code() == tonic::Code::Unavailable && Instant::now() < until => {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    Err(e) => panic!("route {conf}: {e}"),
                }
            };
            let mut f = FocusClient::new(channel(&format!("http://{}", route.shard_addr)).await);
            let req = pb::JoinRequest {
                conference: conf.clone(),
                participant_id: format!("p{i}"),
                region: "eu".into(),
                ssrcs: vec![10_000 + i],
                remote_addr: String::new(), // latched by the bridge: no socket per participant
                srtp: None,
                role: String::new(),
                last_n: 0,
            };
            let j = loop {
                match f.join(req.clone()).await {
                    Ok(j) => break j.into_inner(),
                    // Joins to one conference are serialized: a long queue may time out (a
                    // retry of a join that was done gets the same answer). ALREADY_EXISTS from
                    // the bridge: an attempt that was never acknowledged (its instance stepped
                    // down under this load) still holds the id there until the takeover's
                    // reconciliation removes it; ids here are unique, so retrying is right.
                    Err(e)
                        if matches!(
                            e.code(),
                            tonic::Code::Unavailable | tonic::Code::AlreadyExists
                        ) && Instant::now() < until =>
                    {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    Err(e) => panic!("join {conf} p{i}: {e}"),
                }
            };
            (conf, route.shard_id, j.bridge_id)
        }));
    }
    let mut seen: BTreeMap<String, (BTreeSet<String>, BTreeSet<String>)> = BTreeMap::new();
    for t in tasks {
        let (conf, shard, bridge) = t.await.unwrap();
        let e = seen.entry(conf).or_default();
        e.0.insert(shard);
        e.1.insert(bridge);
    }
    assert_eq!(seen.len(), 100);
    // One shard per conference, and its bridges are that shard's (a burst of joins may grow a
    // conference onto both bridges of s1: one placement, one bridge set).
    for (conf, (shards, bridges)) in &seen {
        assert_eq!(shards.len(), 1, "{conf} routed to {shards:?}");
        let shard = shards.first().unwrap();
        assert!(
            bridges.iter().all(|b| b.starts_with(&format!("{shard}-"))),
            "{conf} of {shard} placed on {bridges:?}"
        );
    }
    for (shard_url, shard) in [(&ua, "s1"), (&uc, "s2")] {
        let mut f = FocusClient::new(channel(shard_url).await);
        for (conf, (shards, bridges)) in &seen {
            let got = get(&mut f, conf).await;
            if shards.contains(shard) {
                let p = got.unwrap();
                assert_eq!(p.participants.len(), 10, "{conf}");
                let on: BTreeSet<String> = p.bridges.iter().map(|b| b.bridge_id.clone()).collect();
                assert_eq!(&on, bridges, "{conf}: one bridge set");
            } else {
                assert_eq!(
                    got.unwrap_err().code(),
                    tonic::Code::NotFound,
                    "{conf} only on its shard"
                );
            }
        }
    }
    let on_s1: Vec<&String> = seen
        .iter()
        .filter(|(_, (s, _))| s.contains("s1"))
        .map(|(c, _)| c)
        .collect();
    assert!(
        !on_s1.is_empty() && on_s1.len() < 100,
        "both shards get conferences"
    );

    // A watch on the standby sees a failover made by the active focus.
    let on_b1 = seen
        .iter()
        .find(|(_, (sh, b))| sh.contains("s1") && b.contains("s1-b1"))
        .map(|(c, _)| c.clone())
        .expect("a conference on s1-b1");
    let mut fb = FocusClient::new(channel(&ub).await);
    let mut on_standby = watch(&mut fb, &on_b1).await;
    assert_eq!(
        on_standby.message().await.unwrap().unwrap().reason,
        "current"
    );
    s1_bridges[0].kill();
    // The standby's watch sees the failover.
    let moved = next_with_reason(&mut on_standby, "failover", 5).await;
    assert!(
        moved.bridges.iter().all(|b| b.bridge_id != "s1-b1"),
        "{moved:?}"
    );

    // Kill s1's active focus: the standby takes over within 5 s with every placement.
    tokio::time::sleep(Duration::from_millis(600)).await; // flushed to etcd
    a.kill();
    let t0 = Instant::now();
    let placements = loop {
        match fb.list_placements(pb::ListPlacementsRequest {}).await {
            Ok(r) => break r.into_inner().conferences,
            Err(_) => {
                assert!(
                    t0.elapsed() < Duration::from_secs(5),
                    "no takeover within 5 s"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    eprintln!("standby took over after {:?}", t0.elapsed());
    assert!(t0.elapsed() < Duration::from_secs(5));
    assert_eq!(placements.len(), on_s1.len(), "every placement of s1");
    for p in &placements {
        assert_eq!(p.participants.len(), 10, "{}", p.conference);
        assert!(p.bridges.iter().all(|b| b.bridge_id != "s1-b1"));
    }
    // The bridges report to the new active focus; a bridge killed now still fails over.
    wait_bridges(&ub, 2).await;
    let victim = placements[0].bridges[0].bridge_id.clone();
    let mut w = watch(&mut fb, &placements[0].conference).await;
    assert_eq!(w.message().await.unwrap().unwrap().reason, "current");
    s1_bridges[if victim == "s1-b2" { 1 } else { 2 }].kill();
    let moved = next_with_reason(&mut w, "failover", 5).await;
    assert!(moved.bridges.iter().all(|b| b.bridge_id != victim));

    // etcd stopped and started again: the instances recover by themselves, nothing lost.
    etcd.restart(Duration::from_millis(1000));
    let t0 = Instant::now();
    let mut r = RouterClient::new(channel(&uc).await);
    loop {
        match route_of(&mut r, "after-etcd").await {
            Ok(_) => break,
            Err(e) => {
                assert_eq!(e.code(), tonic::Code::Unavailable, "{e}");
                assert!(
                    t0.elapsed() < Duration::from_secs(15),
                    "never recovered: {e}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    let after = loop {
        match fb.list_placements(pb::ListPlacementsRequest {}).await {
            Ok(r) => break r.into_inner().conferences,
            Err(e) => {
                assert!(t0.elapsed() < Duration::from_secs(15), "{e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    assert_eq!(after.len(), placements.len(), "nothing lost");
    drop(c);
}
