//! The focus's rules in virtual time (the broadcast tests share these helpers).

use super::*;
use crate::core::fleet::{Bridge, Health};
use crate::store::Role;

pub(super) const T: u64 = 1_000; // report interval in the tests, ms

pub(super) fn cfg() -> FocusConfig {
    FocusConfig {
        report_interval_ms: T,
        missed_reports: 3,
        probe_failures_down: 2,
        per_participant_pps: 10.0,
        max_per_bridge: 80,
        stream_fanout: 2,
        max_viewers_per_edge: 1000,
        stress_threshold: 0.8,
        drain_grace_ms: 2 * T,
        drain_linger_ms: 0,
    }
}

/// Deterministic "random" keys: a counter.
pub(super) fn keys() -> KeySource {
    let mut n = 0u8;
    Box::new(move |buf: &mut [u8]| {
        for b in buf {
            n = n.wrapping_add(1);
            *b = n;
        }
    })
}

pub(super) fn focus() -> Focus {
    let mut f = Focus::new(&cfg(), Snapshot::default(), keys(), 0);
    for (id, region) in [("eu-1", "eu"), ("eu-2", "eu"), ("us-1", "us")] {
        register(&mut f, id, region);
    }
    f
}

/// Registers bridge `id` (API `id:api`, media `id:media`, capacity 1000) at time 0; returns
/// the plans that program it again if it was known.
pub(super) fn register(f: &mut Focus, id: &str, region: &str) -> Vec<Plan> {
    let b = Bridge::new(
        id,
        &format!("{id}:api"),
        &format!("{id}:media"),
        region,
        1000.0,
    );
    f.register(b, 0).unwrap()
}

pub(super) fn join(conf: &str, who: &str, region: &str) -> JoinRequest {
    JoinRequest {
        conference: conf.into(),
        participant_id: who.into(),
        region: region.into(),
        ssrcs: vec![1],
        remote_addr: "127.0.0.1:5000".into(),
        srtp: None,
        role: Role::Participant,
        webrtc: None,
        rewrite: None,
        media: None,
        subscription: None,
        last_n: 0,
        owner: String::new(),
    }
}

pub(super) fn ok(plan: &Plan) -> Vec<CallResult> {
    plan.calls.iter().map(|_| Ok(Applied::Done)).collect()
}

/// Joins with every call succeeding.
pub(super) fn join_ok(f: &mut Focus, r: JoinRequest) -> Done {
    let p = f.join(r, 0).unwrap();
    run_ok(f, p)
}

/// Runs a plan as if every call succeeded; returns the result.
pub(super) fn run_ok(f: &mut Focus, plan: Plan) -> Done {
    let r = ok(&plan);
    f.complete(plan.op, &plan.calls, &r).result.unwrap()
}

#[test]
fn join_places_by_region_then_load_and_commits_on_success() {
    let mut f = focus();
    let plan = f.join(join("c1", "a", "us"), 0).unwrap();
    assert_eq!(
        plan.calls.iter().map(|c| &c.call).collect::<Vec<_>>()[0],
        &Call::Create {
            conference: "c1".into()
        }
    );
    assert!(
        plan.calls
            .iter()
            .all(|c| c.bridge == "us-1" && c.api_addr == "us-1:api")
    );
    // Not placed until the calls succeed.
    assert!(f.conferences().is_empty());
    let done = run_ok(&mut f, plan);
    assert_eq!(
        done,
        Done::Joined {
            bridge: "us-1".into(),
            media_addr: "us-1:media".into(),
            srtp: None
        }
    );
    let a = f.take_announcements();
    assert_eq!((a[0].conference.as_str(), a[0].reason), ("c1", "placed"));
    // A second participant of the same region goes to the conference's bridge, one call.
    let plan = f.join(join("c1", "b", "us"), 10).unwrap();
    assert_eq!(plan.calls.len(), 1);
    assert_eq!(plan.calls[0].bridge, "us-1");
    run_ok(&mut f, plan);
    assert_eq!(f.conferences()["c1"].participants.len(), 2);
    assert_eq!(f.take_changes().len(), 3); // placed, joined a, joined b
    let a = f.take_announcements();
    assert_eq!(a.len(), 1);
    assert_eq!((a[0].reason, a[0].participants.len()), ("joined", 2));
    // Load spreads inside a region: two eu conferences land on different eu bridges.
    let p1 = f.join(join("e1", "x", "eu"), 20).unwrap();
    let p2 = f.join(join("e2", "y", "eu"), 20).unwrap();
    assert_ne!(p1.calls[0].bridge, p2.calls[0].bridge);
    assert_eq!(
        f.join(join("c1", "a", "eu"), 30).unwrap_err(),
        FocusError::Exists("participant_id: already in conference \"c1\"".into())
    );
}

/// Idle participants add no measured load, and a load report resets the correction for what
/// was placed since the last one: equally stressed bridges then go to the one with fewer
/// participants (found by the cluster test: two idle conferences ended on one bridge).
#[test]
fn equally_stressed_bridges_go_to_the_one_with_fewer_participants() {
    let mut f = focus();
    join_ok(&mut f, join("alpha", "a1", "eu"));
    join_ok(&mut f, join("alpha", "a2", "eu"));
    let first = f.conferences()["alpha"].participants["a1"].bridge.clone();
    // Both eu bridges report no load (the participants send nothing yet).
    for b in ["eu-1", "eu-2"] {
        f.report(b, 0.0, false, 10);
    }
    let p = f.join(join("beta", "b1", "eu"), 20).unwrap();
    assert_ne!(p.calls[0].bridge, first, "load spreads in the region");
}

#[test]
fn one_operation_per_conference_others_in_parallel() {
    let mut f = focus();
    let p1 = f.join(join("c1", "a", "eu"), 0).unwrap();
    assert_eq!(
        f.join(join("c1", "b", "eu"), 0).unwrap_err(),
        FocusError::Busy("c1".into())
    );
    let p2 = f.join(join("c2", "a", "eu"), 0).unwrap();
    assert_eq!(f.in_flight(), 2);
    run_ok(&mut f, p2);
    run_ok(&mut f, p1);
    assert!(f.join(join("c1", "b", "eu"), 0).is_ok());
}

#[test]
fn bad_input_is_refused_before_any_call() {
    let mut f = focus();
    let mut r = join("", "a", "eu");
    assert!(matches!(
        f.join(r.clone(), 0),
        Err(FocusError::Invalid {
            field: "conference",
            ..
        })
    ));
    r.conference = "x".repeat(MAX_ID_LEN + 1);
    assert!(matches!(
        f.join(r, 0),
        Err(FocusError::Invalid {
            field: "conference",
            ..
        })
    ));
    let mut r = join("c", "a", "eu");
    r.ssrcs = (0..65).collect();
    assert!(matches!(
        f.join(r, 0),
        Err(FocusError::Invalid { field: "ssrcs", .. })
    ));
    let mut r = join("c", "a", "eu");
    r.remote_addr = "nowhere".into();
    assert!(matches!(
        f.join(r, 0),
        Err(FocusError::Invalid {
            field: "remote_addr",
            ..
        })
    ));
    let mut r = join("c", "a", "eu");
    r.srtp = Some(SrtpOffer {
        profile: "ROT13".into(),
        endpoint_key: vec![0; 30],
        bridge_key: vec![],
    });
    assert!(matches!(
        f.join(r.clone(), 0),
        Err(FocusError::Invalid {
            field: "srtp.profile",
            ..
        })
    ));
    r.srtp = Some(SrtpOffer {
        profile: "AEAD_AES_128_GCM".into(),
        endpoint_key: vec![0; 30],
        bridge_key: vec![],
    });
    let e = f.join(r.clone(), 0).unwrap_err();
    assert_eq!(
        e.to_string(),
        "srtp.endpoint_key: AEAD_AES_128_GCM needs 28 bytes of master key + salt, got 30"
    );
    r.srtp = Some(SrtpOffer {
        profile: "AEAD_AES_128_GCM".into(),
        endpoint_key: vec![0; 28],
        bridge_key: vec![1; 28],
    });
    assert!(matches!(
        f.join(r, 0),
        Err(FocusError::Invalid {
            field: "srtp.bridge_key",
            ..
        })
    ));
    // Nothing was started or placed.
    assert_eq!(f.in_flight(), 0);
    assert!(f.conferences().is_empty());
    assert!(
        f.join(join("c", "a", "eu"), 0).is_ok(),
        "and the conference is not busy"
    );
}

#[test]
fn a_bridge_timing_out_mid_join_rolls_back_and_is_avoided() {
    let mut f = focus();
    let plan = f.join(join("c1", "a", "us"), 0).unwrap();
    // Create succeeded, AddEndpoint timed out.
    let results = vec![
        Ok(Applied::Done),
        Err(CallError::Timeout { deadline_ms: 2000 }),
    ];
    let c = f.complete(plan.op, &plan.calls, &results);
    let e = c.result.unwrap_err();
    assert_eq!(e.to_string(), "bridge us-1: no answer within 2000 ms");
    // Rollback deletes the conference this join created, nothing else.
    let cleanup = c.cleanup.unwrap();
    assert_eq!(
        cleanup.calls,
        vec![BridgeCall {
            bridge: "us-1".into(),
            api_addr: "us-1:api".into(),
            call: Call::Delete {
                conference: "c1".into()
            }
        }]
    );
    assert!(f.conferences().is_empty());
    assert!(f.take_changes().is_empty());
    assert_eq!(f.fleet().get("us-1").unwrap().state(), "suspect");
    // The next us conference goes elsewhere.
    let plan = f.join(join("c2", "b", "us"), 10).unwrap();
    assert!(plan.calls[0].bridge.starts_with("eu-"));
}

/// Regression (CI, `cluster_etcd`): a join whose Create timed out was undone by a Delete run
/// in the background; a retried join meanwhile created the conference again (Create answered
/// "exists": done) and was acknowledged, then the Delete landed and the next join got
/// NOT_FOUND from the bridge. The undo now keeps the conference busy until it is done.
#[test]
fn a_joins_undo_keeps_its_conference_busy_until_it_is_done() {
    let mut f = focus();
    let plan = f.join(join("c1", "a", "eu"), 0).unwrap();
    let bridge = plan.calls[0].bridge.clone();
    let c = f.complete(
        plan.op,
        &plan.calls,
        &[Err(CallError::Timeout { deadline_ms: 5 })],
    );
    assert!(c.result.is_err());
    let undo = c.cleanup.unwrap();
    assert_eq!(
        undo.calls[0].call,
        Call::Delete {
            conference: "c1".into()
        }
    );
    assert!(matches!(
        f.join(join("c1", "b", "eu"), 0),
        Err(FocusError::Busy(_))
    ));
    assert!(matches!(f.leave("c1", "a"), Err(FocusError::Busy(_))));
    // Done (even failed): the conference is free, and a join creates it anew.
    let c = f.complete(
        undo.op,
        &undo.calls,
        &[Err(CallError::Timeout { deadline_ms: 5 })],
    );
    assert!(c.result.is_err());
    let plan = f.join(join("c1", "b", "eu"), 0).unwrap();
    assert_ne!(
        plan.calls[0].bridge, bridge,
        "the suspect bridge is avoided"
    );
    assert!(matches!(plan.calls[0].call, Call::Create { .. }));
    run_ok(&mut f, plan);
    assert_eq!(f.conferences()["c1"].participants.len(), 1);
}

/// Found by the chaos soak: a join in flight on a bridge that hung failed when the bridge was
/// declared down, and its undo (a call to that bridge) held the conference until the call's
/// deadline, so its failover came 2 s after the others'.
#[test]
fn a_join_failed_by_a_bridge_going_down_leaves_no_undo_there_and_its_conference_moves_at_once() {
    let mut f = focus();
    join_ok(&mut f, join("c1", "a", "eu"));
    let bridge = f.conferences()["c1"].bridge.clone();
    let p = f.join(join("c1", "b", "eu"), 0).unwrap();
    f.probe(&bridge, Err("hung".into()));
    assert_eq!(f.probe(&bridge, Err("hung".into())), Some(Health::Down));
    let c = f.complete(
        p.op,
        &p.calls,
        &[Err(CallError::Unavailable(
            "the bridge was declared down while the call was in flight".into(),
        ))],
    );
    assert!(c.result.is_err());
    assert_eq!(c.cleanup, None, "no call to a bridge that is down");
    let plans = f.tick(10);
    assert_eq!(plans.len(), 1, "the conference moves at once");
    assert!(plans[0].calls.iter().all(|c| c.bridge != bridge));
}

#[test]
fn a_failed_add_to_an_existing_conference_removes_only_that_endpoint() {
    let mut f = focus();
    let p = f.join(join("c1", "a", "eu"), 0).unwrap();
    let bridge = p.calls[0].bridge.clone();
    run_ok(&mut f, p);
    let p = f.join(join("c1", "b", "eu"), 0).unwrap();
    // The bridge says the endpoint exists (an orphan from a crash): an error, no cleanup at
    // all (in particular not a deletion of the conference and its other participants).
    let c = f.complete(
        p.op,
        &p.calls,
        &[Err(CallError::Exists("endpoint b exists".into()))],
    );
    assert!(matches!(c.result, Err(FocusError::Bridge { .. })));
    assert_eq!(c.cleanup, None);
    // A timed-out add may have landed: remove that endpoint only.
    let p = f.join(join("c1", "b", "eu"), 0).unwrap();
    let c = f.complete(
        p.op,
        &p.calls,
        &[Err(CallError::Timeout { deadline_ms: 5 })],
    );
    assert_eq!(
        c.cleanup.as_ref().unwrap().calls[0].call,
        Call::Remove {
            conference: "c1".into(),
            endpoint: "b".into()
        }
    );
    // The conference stays busy until that removal is done.
    let cleanup = c.cleanup.unwrap();
    assert!(matches!(
        f.join(join("c1", "b", "eu"), 0),
        Err(FocusError::Busy(_))
    ));
    run_ok(&mut f, cleanup);
    // A join to a conference on a suspect bridge is refused with the reason.
    let e = f.join(join("c1", "b", "eu"), 0).unwrap_err();
    assert!(
        matches!(&e, FocusError::BridgeUnavailable { bridge: b, state: "suspect", .. } if *b == bridge),
        "{e}"
    );
    assert_eq!(f.conferences()["c1"].participants.len(), 1);
}

#[test]
fn failover_moves_the_conference_with_its_srtp_keys_and_announces_it() {
    let mut f = focus();
    let mut r = join("c1", "a", "eu");
    r.srtp = Some(SrtpOffer {
        profile: "AEAD_AES_128_GCM".into(),
        endpoint_key: vec![7; 28],
        bridge_key: vec![],
    });
    let p = f.join(r, 0).unwrap();
    let from = p.calls[0].bridge.clone();
    let Done::Joined {
        srtp: Some(keys), ..
    } = run_ok(&mut f, p)
    else {
        panic!("srtp keys returned")
    };
    assert_eq!(keys.bridge_key.len(), 28);
    assert_ne!(keys.bridge_key, keys.endpoint_key);
    join_ok(&mut f, join("c1", "b", "eu"));
    f.take_announcements();
    // Reports keep the others up; `from` goes silent and probes fail twice: down.
    for t in [900, 1800, 2700] {
        for b in ["eu-1", "eu-2", "us-1"] {
            if b != from {
                f.report(b, 0.0, false, t);
            }
        }
    }
    assert!(f.tick(2700).is_empty(), "not down yet");
    assert_eq!(
        f.probe(&from, Err("deadline".into())),
        Some(Health::Suspect)
    );
    assert_eq!(f.probe(&from, Err("deadline".into())), Some(Health::Down));
    let plans = f.tick(2800);
    assert_eq!(plans.len(), 1);
    let plan = &plans[0];
    let to = plan.calls[0].bridge.clone();
    assert_ne!(to, from);
    assert!(
        to.starts_with("eu-"),
        "moved within the region of its first participant"
    );
    // Every participant is programmed again, SRTP keys included, tolerating leftovers.
    let adds: Vec<&Participant> = plan
        .calls
        .iter()
        .filter_map(|c| match &c.call {
            Call::Add {
                participant,
                if_absent: true,
                ..
            } => Some(participant),
            _ => None,
        })
        .collect();
    assert_eq!(adds.len(), 2);
    assert_eq!(adds[0].srtp.as_ref(), Some(&keys));
    // Joins wait while the move is in flight.
    assert!(matches!(
        f.join(join("c1", "c", "eu"), 2800),
        Err(FocusError::Busy(_))
    ));
    let r = ok(plan);
    let c = f.complete(plan.op, &plan.calls, &r);
    assert_eq!(
        c.result.unwrap(),
        Done::Moved {
            from: from.clone(),
            to: to.clone()
        }
    );
    // The old bridge is told to drop the conference, in case it comes back.
    assert_eq!(c.cleanup.unwrap().calls[0].bridge, from);
    let a = f.take_announcements();
    assert_eq!(
        (a[0].reason, a[0].bridge.as_str()),
        ("failover", to.as_str())
    );
    assert_eq!(a[0].participants, ["a", "b"]);
    assert_eq!(f.failovers(), 1);
    assert_eq!(f.conferences()["c1"].participants["a"].srtp, Some(keys));
    // Nothing more to move; a down bridge's report is refused until it registers again.
    assert!(f.tick(2900).is_empty());
    assert!(!f.report(&from, 0.0, false, 2900));
}

/// The Call kinds of a plan, e.g. ["create@eu-1", "relay to us-1@eu-1", ...]; a relay the
/// remote bridge pulls through (a broadcast's pull, parent side) is "feed".
pub(super) fn shape(p: &Plan) -> Vec<String> {
    p.calls
        .iter()
        .map(|c| {
            let what = match &c.call {
                Call::Create { .. } => "create".to_string(),
                Call::Add { endpoint, .. } => format!("add {endpoint}"),
                Call::Remove { endpoint, .. } => format!("remove {endpoint}"),
                Call::Delete { .. } => "delete".to_string(),
                Call::AddRelay {
                    relay_id,
                    downstream: true,
                    ..
                } => format!("feed {relay_id}"),
                Call::AddRelay { relay_id, .. } => format!("relay to {relay_id}"),
                Call::RemoveRelay { relay_id, .. } => format!("unrelay {relay_id}"),
                Call::Subscribe { target, ssrcs, .. } => format!("subscribe {target:?} {ssrcs:?}"),
                Call::SimulcastLimit {
                    endpoint,
                    max_height,
                    ..
                } => format!("limit {endpoint} {max_height}"),
            };
            format!("{what}@{}", c.bridge)
        })
        .collect()
}

#[test]
fn a_conference_grows_by_region_with_full_mesh_relays() {
    let mut f = focus();
    register(&mut f, "ap-1", "ap");
    join_ok(&mut f, join("c", "e1", "eu"));
    let eu = f.conferences()["c"].participants["e1"].bridge.clone();
    // us joins: the conference grows onto us-1, relayed both ways with the eu bridge.
    let p = f.join(join("c", "u1", "us"), 0).unwrap();
    assert_eq!(
        shape(&p),
        [
            "create@us-1".to_string(),
            format!("relay to {eu}@us-1"),
            format!("relay to us-1@{eu}"),
            "add u1@us-1".into()
        ]
    );
    // The two ends of the link seal with each other's receive key.
    let keys: Vec<(&Vec<u8>, &Vec<u8>)> = p
        .calls
        .iter()
        .filter_map(|c| match &c.call {
            Call::AddRelay {
                tx_key,
                rx_key,
                link,
                ..
            } => {
                assert_eq!(*link, f.conferences()["c"].link);
                Some((tx_key, rx_key))
            }
            _ => None,
        })
        .collect();
    assert_eq!((keys[0].0, keys[0].1), (keys[1].1, keys[1].0));
    assert_ne!(keys[0].0, keys[0].1);
    run_ok(&mut f, p);
    assert_eq!(f.take_announcements().last().unwrap().reason, "grown");
    // ap joins: relays to both existing bridges (full mesh).
    let p = f.join(join("c", "a1", "ap"), 0).unwrap();
    assert_eq!(p.calls.len(), 1 + 4 + 1);
    run_ok(&mut f, p);
    let c = &f.conferences()["c"];
    assert_eq!(c.links.len(), 3);
    let a = f.placement("c", "current").unwrap();
    assert_eq!(a.bridges.len(), 3);
    assert!(a.bridges.iter().any(|(b, m, who, n)| b == "ap-1"
        && *n == 1
        && m == "ap-1:media"
        && who == &["a1".to_string()]));
    // A second us participant stays on us-1: one call.
    assert_eq!(
        f.join(join("c", "u2", "us"), 0).map(|p| shape(&p)).unwrap(),
        ["add u2@us-1"]
    );
}

#[test]
fn a_full_bridge_makes_the_conference_grow_in_the_region() {
    let mut c = cfg();
    c.max_per_bridge = 2;
    let mut f = Focus::new(&c, Snapshot::default(), keys(), 0);
    for (id, region) in [("eu-1", "eu"), ("eu-2", "eu")] {
        f.register(Bridge::new(id, id, id, region, 1000.0), 0)
            .unwrap();
    }
    for who in ["a", "b", "c"] {
        join_ok(&mut f, join("conf", who, "eu"));
    }
    let c = &f.conferences()["conf"];
    assert_eq!(
        c.bridges().len(),
        2,
        "the third went to the other eu bridge"
    );
    assert_eq!(c.links.len(), 1);
}

#[test]
fn leaving_the_last_participant_of_a_bridge_removes_its_relays() {
    let mut f = focus();
    join_ok(&mut f, join("c", "e1", "eu"));
    join_ok(&mut f, join("c", "u1", "us"));
    let eu = f.conferences()["c"].participants["e1"].bridge.clone();
    let p = f.leave("c", "u1").unwrap();
    assert_eq!(
        shape(&p),
        ["delete@us-1".to_string(), format!("unrelay us-1@{eu}")]
    );
    run_ok(&mut f, p);
    let c = &f.conferences()["c"];
    assert!(c.links.is_empty());
    assert_eq!(c.bridges().into_iter().collect::<Vec<_>>(), [eu.as_str()]);
}

#[test]
fn failover_moves_only_the_dead_bridges_participants() {
    let mut f = focus();
    join_ok(&mut f, join("c", "e1", "eu"));
    join_ok(&mut f, join("c", "e2", "eu"));
    join_ok(&mut f, join("c", "u1", "us"));
    let eu = f.conferences()["c"].participants["e1"].bridge.clone();
    f.take_announcements();
    f.probe("us-1", Err("gone".into()));
    assert_eq!(f.probe("us-1", Err("gone".into())), Some(Health::Down));
    let plans = f.tick(10);
    assert_eq!(plans.len(), 1);
    // u1 joins the eu bridge that hosts the conference (no bridge left in us); the survivor
    // drops its relay to us-1; e1 and e2 are not touched.
    assert_eq!(
        shape(&plans[0]),
        [
            format!("create@{eu}"),
            format!("unrelay us-1@{eu}"),
            format!("add u1@{eu}")
        ]
    );
    run_ok(&mut f, plans.into_iter().next().unwrap());
    let c = &f.conferences()["c"];
    assert!(c.participants.values().all(|p| p.bridge == eu));
    assert!(c.links.is_empty());
    let a = f.take_announcements();
    assert_eq!(a[0].reason, "failover");
    assert_eq!(a[0].bridges.len(), 1);
}

#[test]
fn a_draining_bridge_takes_nothing_new_then_its_participants_move_after_the_grace() {
    let mut f = focus();
    join_ok(&mut f, join("c", "e1", "eu"));
    let eu = f.conferences()["c"].participants["e1"].bridge.clone();
    let other = if eu == "eu-1" { "eu-2" } else { "eu-1" };
    join_ok(&mut f, join("d", "x1", "eu"));
    assert_eq!(
        f.drain("nope", 0),
        Err(FocusError::NotFound(
            "bridge_id: \"nope\" is not registered".into()
        ))
    );
    f.drain(&eu, 100).unwrap();
    assert_eq!(f.fleet().get(&eu).unwrap().state(), "draining");
    // A new participant of its conference goes to another bridge of the region (Octo);
    // a new conference never lands on it.
    join_ok(&mut f, join("c", "e2", "eu"));
    assert_eq!(f.conferences()["c"].participants["e2"].bridge, other);
    join_ok(&mut f, join("n", "y1", "eu"));
    assert_eq!(f.conferences()["n"].participants["y1"].bridge, other);
    // Within the grace nothing moves; after it, only the draining bridge's participants do,
    // and the old bridge's copy is deleted once the move is committed (make before break).
    assert!(f.tick(100 + 2 * T - 1).is_empty());
    assert!(f.drained().is_empty(), "still has participants");
    f.take_announcements();
    let plans = f.tick(100 + 2 * T);
    assert!(!plans.is_empty());
    for p in plans {
        let r = ok(&p);
        let c = f.complete(p.op, &p.calls, &r);
        assert!(c.result.is_ok(), "{:?}", c.result);
        let tidy = c.cleanup.expect("the drained bridge's copy is deleted");
        assert_eq!(shape(&tidy), [format!("delete@{eu}")]);
    }
    assert!(!f.participants_per_bridge().contains_key(eu.as_str()));
    assert!(
        f.take_announcements().iter().all(|a| a.reason == "drained"),
        "announced as drained"
    );
    assert_eq!(f.failovers(), 0);
    assert!(f.drain_moves() >= 1);
    assert_eq!(f.drained(), vec![eu.clone()]);
    assert!(f.forget(&eu));
    assert!(f.fleet().get(&eu).is_none());
}

/// A focus with a 1 s drain linger and bridges eu-1 and eu-2 (process "p1" each).
fn lingering_focus() -> Focus {
    lingering_focus_with(&[("eu-1", "eu"), ("eu-2", "eu")])
}

/// A focus with a 1 s drain linger and `bridges` (id, region; process "p1" each).
pub(super) fn lingering_focus_with(bridges: &[(&str, &str)]) -> Focus {
    let mut f = Focus::new(
        &FocusConfig {
            drain_linger_ms: 1_000,
            ..cfg()
        },
        Snapshot::default(),
        keys(),
        0,
    );
    for (id, region) in bridges {
        let b = Bridge::new(id, "a", "m", region, 1000.0).with_instance("p1");
        f.register(b, 0).unwrap();
    }
    f
}

#[test]
fn a_drained_bridge_keeps_the_old_copy_for_the_linger_then_deletes_it() {
    // Found by the chaos soak: the old copy was deleted as the move committed, so packets a
    // client sent before it learnt of the move were dropped (a gap on every drain).
    let mut f = lingering_focus();
    join_ok(&mut f, join("c", "e1", "eu"));
    join_ok(&mut f, join("c", "e2", "eu"));
    let eu = f.conferences()["c"].participants["e1"].bridge.clone();
    f.drain(&eu, 100).unwrap();
    let plans = f.tick(100 + 2 * T);
    assert_eq!(plans.len(), 1);
    for p in plans {
        let r = ok(&p);
        let c = f.complete(p.op, &p.calls, &r);
        assert!(c.result.is_ok(), "{:?}", c.result);
        assert_eq!(c.cleanup, None, "the old copy stays for the linger");
    }
    // Moved (announced, placed elsewhere), but the bridge is not empty yet: not stopped.
    assert!(!f.participants_per_bridge().contains_key(eu.as_str()));
    assert!(f.drained().is_empty(), "its old copy still serves");
    assert!(f.tick(100 + 2 * T + 999).is_empty());
    let plans = f.tick(100 + 2 * T + 1_000);
    assert_eq!(plans.len(), 1);
    assert_eq!(shape(&plans[0]), [format!("delete@{eu}")]);
    run_ok(&mut f, plans.into_iter().next().unwrap());
    assert_eq!(f.drained(), vec![eu.clone()]);
    assert!(f.tick(100 + 2 * T + 5_000).is_empty(), "deleted once");
}

#[test]
fn a_lingering_copy_is_not_deleted_when_its_conference_is_back_on_that_bridge() {
    let mut f = lingering_focus();
    join_ok(&mut f, join("c", "e1", "eu"));
    let eu = f.conferences()["c"].participants["e1"].bridge.clone();
    let other = if eu == "eu-1" { "eu-2" } else { "eu-1" };
    f.drain(&eu, 100).unwrap();
    for p in f.tick(100 + 2 * T) {
        run_ok(&mut f, p);
    }
    // A new process of the drained bridge registers (up again), the other one goes down: the
    // conference moves back onto it before the linger is over.
    let again = Bridge::new(&eu, "a", "m", "eu", 1000.0).with_instance("p2");
    for p in f.register(again, 100 + 2 * T + 5).unwrap() {
        run_ok(&mut f, p);
    }
    f.probe(other, Err("gone".into()));
    assert_eq!(f.probe(other, Err("gone".into())), Some(Health::Down));
    for p in f.tick(100 + 2 * T + 10) {
        run_ok(&mut f, p);
    }
    assert_eq!(f.conferences()["c"].participants["e1"].bridge, eu);
    let plans = f.tick(100 + 2 * T + 2_000);
    assert!(
        plans
            .iter()
            .all(|p| !shape(p).contains(&format!("delete@{eu}"))),
        "the conference's copy there is live again"
    );
}

#[test]
fn a_drain_mutes_the_other_bridges_relays_to_the_old_copy_and_removes_them_after_the_linger() {
    // Found by the chaos soak: in a conference over two regions, what a client sent to the
    // drained bridge before it switched did not reach the other region any more (the relays
    // went with the move): a 100-150 ms gap there on every drain.
    let mut f = lingering_focus_with(&[("eu-1", "eu"), ("eu-2", "eu"), ("us-1", "us")]);
    join_ok(&mut f, join("c", "e1", "eu"));
    join_ok(&mut f, join("c", "u1", "us"));
    let eu = f.conferences()["c"].participants["e1"].bridge.clone();
    let other = if eu == "eu-1" { "eu-2" } else { "eu-1" };
    f.drain(&eu, 100).unwrap();
    let plans = f.tick(100 + 2 * T);
    assert_eq!(plans.len(), 1);
    let s = shape(&plans[0]);
    // us-1 stops sending to the old copy but keeps the relay (it still receives over it).
    assert!(
        s.contains(&format!("subscribe Relay({eu:?}) Some([])@us-1")),
        "{s:?}"
    );
    assert!(!s.contains(&format!("unrelay {eu}@us-1")), "{s:?}");
    assert!(s.contains(&format!("relay to us-1@{other}")), "{s:?}");
    run_ok(&mut f, plans.into_iter().next().unwrap());
    assert_eq!(f.conferences()["c"].participants["e1"].bridge, other);
    // After the linger: the old copy and the muted relay to it go.
    let plans = f.tick(100 + 2 * T + 1_000);
    assert_eq!(plans.len(), 1);
    assert_eq!(
        shape(&plans[0]),
        [format!("delete@{eu}"), format!("unrelay {eu}@us-1")]
    );
}

#[test]
fn a_drain_onto_a_bridge_of_the_conference_drops_its_relay_to_the_old_copy() {
    // Found by the chaos soak (echo, duplicates): the bridge the participants moved to kept
    // its relay from the old copy, so what a straggler sent there came back to it and twice
    // to the others (from the old copy and over the relay).
    let mut f = lingering_focus_with(&[("eu-1", "eu"), ("us-1", "us")]);
    join_ok(&mut f, join("c", "e1", "eu"));
    join_ok(&mut f, join("c", "u1", "us"));
    f.drain("eu-1", 100).unwrap();
    let plans = f.tick(100 + 2 * T);
    assert_eq!(plans.len(), 1);
    let s = shape(&plans[0]);
    assert!(s.contains(&"unrelay eu-1@us-1".to_string()), "{s:?}");
    assert!(!s.iter().any(|c| c.starts_with("subscribe")), "{s:?}");
    run_ok(&mut f, plans.into_iter().next().unwrap());
    assert_eq!(f.conferences()["c"].participants["e1"].bridge, "us-1");
    let plans = f.tick(100 + 2 * T + 1_000);
    assert_eq!(plans.len(), 1);
    assert_eq!(shape(&plans[0]), ["delete@eu-1"]);
}

#[test]
fn a_failed_move_rolls_back_and_is_retried() {
    let mut f = focus();
    join_ok(&mut f, join("c1", "a", "us"));
    for t in [1000, 2000, 3000] {
        f.report("eu-1", 0.0, false, t);
        f.report("eu-2", 0.0, false, t);
    }
    let plans = f.tick(3100);
    assert_eq!(plans.len(), 1, "us-1 missed 3 reports");
    let p = &plans[0];
    let target = p.calls[0].bridge.clone();
    let c = f.complete(
        p.op,
        &p.calls,
        &[
            Ok(Applied::Done),
            Err(CallError::Timeout { deadline_ms: 9 }),
        ],
    );
    assert!(c.result.is_err());
    let undo = c.cleanup.unwrap();
    assert_eq!(
        undo.calls[0].call,
        Call::Delete {
            conference: "c1".into()
        }
    );
    assert_eq!(f.conferences()["c1"].bridge, "us-1", "still where it was");
    // Not retried while the undo runs (the conference is busy).
    assert!(f.tick(3150).is_empty());
    run_ok(&mut f, undo);
    // Retried on the next tick, on the other bridge (the first is suspect now).
    let plans = f.tick(3200);
    assert_eq!(plans.len(), 1);
    assert_ne!(plans[0].calls[0].bridge, target);
}

#[test]
fn reconcile_removes_only_what_no_placement_owns() {
    let mut f = focus();
    let p = f.join(join("c1", "a", "eu"), 0).unwrap();
    let b = p.calls[0].bridge.clone();
    run_ok(&mut f, p);
    let busy = f.join(join("c2", "x", "eu"), 0).unwrap(); // in flight: left alone
    let listing = vec![
        ("c1".to_string(), vec!["a".to_string(), "ghost".to_string()]),
        ("c2".to_string(), vec!["x".to_string()]),
        ("orphan".to_string(), vec!["z".to_string()]),
    ];
    let plans = f.reconcile(&b, listing);
    let calls: Vec<&Call> = plans.iter().map(|p| &p.calls[0].call).collect();
    assert_eq!(
        calls,
        [
            &Call::Remove {
                conference: "c1".into(),
                endpoint: "ghost".into()
            },
            &Call::Delete {
                conference: "orphan".into()
            }
        ]
    );
    assert!(plans.iter().all(|p| p.calls[0].bridge == b));
    // Each conference's removal keeps it busy until done.
    assert!(matches!(
        f.join(join("orphan", "y", "eu"), 0),
        Err(FocusError::Busy(_))
    ));
    for p in plans {
        run_ok(&mut f, p);
    }
    run_ok(&mut f, busy);
    // A conference placed on another bridge is not this bridge's to keep.
    let other = if b == "eu-1" { "eu-2" } else { "eu-1" };
    let plans = f.reconcile(other, vec![("c1".to_string(), vec!["a".to_string()])]);
    assert_eq!(
        plans[0].calls[0].call,
        Call::Delete {
            conference: "c1".into()
        }
    );
    assert_eq!(
        f.conferences()["c1"].participants.len(),
        1,
        "placements untouched"
    );
}

#[test]
fn leave_ends_the_conference_with_its_last_participant() {
    let mut f = focus();
    join_ok(&mut f, join("c1", "a", "eu"));
    join_ok(&mut f, join("c1", "b", "eu"));
    f.take_announcements();
    let p = f.leave("c1", "a").unwrap();
    assert!(matches!(p.calls[0].call, Call::Remove { .. }));
    run_ok(&mut f, p);
    assert_eq!(f.take_announcements()[0].reason, "left");
    let p = f.leave("c1", "b").unwrap();
    assert!(matches!(p.calls[0].call, Call::Delete { .. }));
    // The bridge does not answer: the participant is out of the placement anyway.
    let c = f.complete(
        p.op,
        &p.calls,
        &[Err(CallError::Timeout { deadline_ms: 1 })],
    );
    assert_eq!(c.result.unwrap(), Done::Left);
    assert!(f.conferences().is_empty());
    assert_eq!(f.take_announcements()[0].reason, "ended");
    assert!(matches!(f.leave("c1", "b"), Err(FocusError::NotFound(_))));
}

#[test]
fn a_drain_survives_a_restart_of_the_focus_and_ends_with_a_new_bridge_process() {
    let mut f = focus();
    f.register(
        Bridge::new("eu-9", "a", "m", "eu", 1000.0).with_instance("p1"),
        0,
    )
    .unwrap();
    f.drain("eu-9", 5).unwrap();
    let changes = f.take_changes();
    assert!(
        changes
            .iter()
            .any(|c| matches!(c, Change::Drained { bridge, .. } if bridge == "eu-9"))
    );
    let mut snap = Snapshot::default();
    for c in &changes {
        snap.apply(c);
    }
    // A restarted control plane: the same bridge process registers and is still draining,
    // its grace counted from the original drain.
    let mut g = Focus::new(&cfg(), snap.clone(), keys(), 100);
    g.register(
        Bridge::new("eu-9", "a", "m", "eu", 1000.0).with_instance("p1"),
        100,
    )
    .unwrap();
    let b = g.fleet().get("eu-9").unwrap();
    assert!(b.draining && b.drain_since_ms == 5, "{b:?}");
    // A new process of the bridge (restarted after maintenance) is up, and the drain goes.
    let mut h = Focus::new(&cfg(), snap, keys(), 100);
    h.register(
        Bridge::new("eu-9", "a", "m", "eu", 1000.0).with_instance("p2"),
        100,
    )
    .unwrap();
    assert!(!h.fleet().get("eu-9").unwrap().draining);
    assert!(
        h.take_changes()
            .iter()
            .any(|c| matches!(c, Change::Undrained { bridge } if bridge == "eu-9"))
    );
}

#[test]
fn an_octo_bridge_restarted_gets_fresh_relay_keys_on_both_sides() {
    let mut f = focus();
    let mut cfg_small = cfg();
    cfg_small.max_per_bridge = 1;
    let mut f2 = Focus::new(&cfg_small, Snapshot::default(), keys(), 0);
    std::mem::swap(&mut f, &mut f2);
    register(&mut f, "eu-1", "eu");
    register(&mut f, "eu-2", "eu");
    join_ok(&mut f, join("c", "a", "eu"));
    join_ok(&mut f, join("c", "b", "eu")); // grows onto the other bridge
    let p = &f.conferences()["c"];
    assert_eq!(p.links.len(), 1);
    let old = p.links.values().next().unwrap().clone();
    let restarted = p.participants["b"].bridge.clone();
    let other = p.participants["a"].bridge.clone();
    let plans = register(&mut f, &restarted, "eu");
    assert_eq!(plans.len(), 1);
    let calls = &plans[0].calls;
    // Both ends drop the old relay, then get new keys.
    let removes: Vec<&str> = calls
        .iter()
        .filter(|c| matches!(c.call, Call::RemoveRelay { .. }))
        .map(|c| c.bridge.as_str())
        .collect();
    assert!(removes.contains(&other.as_str()) && removes.contains(&restarted.as_str()));
    for c in calls {
        if let Call::AddRelay { tx_key, rx_key, .. } = &c.call {
            for k in [tx_key, rx_key] {
                assert!(*k != old.first_tx && *k != old.second_tx, "old key reused");
            }
        }
    }
}

#[test]
fn restored_placements_wait_for_their_bridges_then_move() {
    let mut snap = Snapshot::default();
    snap.placements.insert(
        "old".into(),
        Placement {
            bridge: "gone".into(),
            participants: [(
                "a".to_string(),
                Participant {
                    region: "eu".into(),
                    ssrcs: vec![1],
                    remote_addr: String::new(),
                    srtp: None,
                    bridge: String::new(),
                    role: Role::Participant,
                    webrtc: None,
                    rewrite: None,
                    media: None,
                    subscription: None,
                    last_n: 0,
                    owner: String::new(),
                },
            )]
            .into(),
            link: 1,
            links: BTreeMap::new(),
            broadcast: None,
        },
    );
    let mut f = Focus::new(&cfg(), snap, keys(), 0);
    f.register(Bridge::new("eu-1", "a", "m", "eu", 1000.0), 0)
        .unwrap();
    assert!(f.tick(2000).is_empty(), "within the grace");
    f.report("eu-1", 0.0, false, 2900);
    let plans = f.tick(3100);
    assert_eq!(plans.len(), 1);
    assert_eq!(plans[0].calls[0].bridge, "eu-1");
}
