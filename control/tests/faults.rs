//! The control plane under faults, with real processes: a bridge stopped with SIGSTOP (its
//! connection stays open, it answers nothing) must not freeze anything, a bridge killed with
//! SIGKILL is failed over in under 2 s with default flags, an SRTP participant joined through
//! the focus decrypts media before and after a failover, bad SRTP input leaves nothing behind,
//! and a bridge id with a quote does not break `/metrics`.

mod common;

use std::time::{Duration, Instant};

use common::*;
use ringbridge_dataplane::srtp::{Profile, Session};
use ringbridge_dataplane::testkit;
use ringbridge_proto::v1 as pb;
use ringbridge_proto::v1::bridge_client::BridgeClient;
use ringbridge_proto::v1::focus_client::FocusClient;
use ringbridge_proto::v1::registry_client::RegistryClient;
use tonic::Code;

/// Waits for the next placement on `watch` with reason `reason`.
async fn next(
    watch: &mut tonic::Streaming<pb::ConferencePlacement>,
    reason: &str,
    within: Duration,
) -> pb::ConferencePlacement {
    let until = Instant::now() + within;
    loop {
        let left = until.saturating_duration_since(Instant::now());
        let m = tokio::time::timeout(left, watch.message())
            .await
            .unwrap_or_else(|_| panic!("no {reason:?} announcement within {within:?}"))
            .unwrap()
            .unwrap();
        if m.reason == reason {
            return m;
        }
    }
}

async fn bridge_id_of(url: &str, id: &str) -> pb::BridgeInfo {
    let mut reg = RegistryClient::new(channel(url).await);
    let l = reg
        .list_bridges(pb::ListBridgesRequest {})
        .await
        .unwrap()
        .into_inner();
    l.bridges.into_iter().find(|b| b.bridge_id == id).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_bridge_freezes_nothing_and_its_conference_moves() {
    let data = data_dir("hung");
    let ctl = control_with(&data, "127.0.0.1:0", &[]); // every default
    let url = format!("http://{}", ctl.field("listen"));
    let eu = bridge(&url, "eu-1", "eu");
    let _us = bridge(&url, "us-1", "us");
    wait_bridges(&url, 2).await;
    let mut focus = FocusClient::new(channel(&url).await);
    let (a1, a2) = (Party::new(11), Party::new(12));
    let j = focus
        .join(a1.join("alpha", "a1", "eu"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(j.bridge_id, "eu-1");
    focus.join(a2.join("alpha", "a2", "eu")).await.unwrap();
    let mut watch = watch(&mut focus, "alpha").await;
    next(&mut watch, "current", Duration::from_secs(1)).await;

    eu.pause();
    let stopped = Instant::now();
    // A join to the hung bridge's conference answers (UNAVAILABLE, naming the bridge) instead of
    // hanging, and joins that create conferences elsewhere go on meanwhile, each within 3 s.
    let mut f2 = focus.clone();
    let hung_join = tokio::spawn(async move {
        let t = Instant::now();
        let r = f2.join(Party::new(13).join("alpha", "a3", "eu")).await;
        (r, t.elapsed())
    });
    for i in 0..6 {
        let t = Instant::now();
        let r = tokio::time::timeout(
            Duration::from_secs(3),
            focus.join(Party::new(100 + i).join(&format!("new-{i}"), "p", "us")),
        )
        .await
        .expect("a join elsewhere answers within 3 s")
        .unwrap()
        .into_inner();
        assert_eq!(r.bridge_id, "us-1");
        assert!(t.elapsed() < Duration::from_secs(3));
    }
    let (r, took) = hung_join.await.unwrap();
    let e = r.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(e.message().contains("eu-1"), "{}", e.message());
    assert!(took < Duration::from_secs(3), "took {took:?}");

    // The stopped bridge is declared down and its conference moves, announced.
    let moved = next(&mut watch, "failover", Duration::from_secs(5)).await;
    assert_eq!(moved.bridge_id, "us-1");
    assert_eq!(moved.participants, ["a1", "a2"]);
    eprintln!(
        "hung bridge: conference moved {:?} after SIGSTOP",
        stopped.elapsed()
    );
    assert!(
        flows(&a1, &a2, &moved.media_addr, 1),
        "media through the new bridge"
    );
    assert_eq!(bridge_id_of(&url, "eu-1").await.state, "down");

    // Continued, the bridge registers again (its reports were refused) and is up and empty of
    // placements; the control plane never stopped answering.
    eu.resume();
    let until = Instant::now() + Duration::from_secs(10);
    while bridge_id_of(&url, "eu-1").await.state != "up" {
        assert!(Instant::now() < until, "eu-1 never came back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(bridge_id_of(&url, "eu-1").await.conferences, 0);
    let _ = std::fs::remove_dir_all(&data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_bridge_fails_over_in_under_two_seconds_with_default_flags() {
    let data = data_dir("killed");
    let ctl = control_with(&data, "127.0.0.1:0", &[]);
    let url = format!("http://{}", ctl.field("listen"));
    // A quote in a bridge id must not break the control plane's /metrics.
    let mut b = [bridge(&url, "eu-\"1\"", "eu"), bridge(&url, "eu-2", "eu")];
    wait_bridges(&url, 2).await;
    let m = scrape(&ctl.field("metrics"));
    assert!(
        m.contains(r#"ringbridge_control_bridge_stress{bridge="eu-\"1\""} 0.0"#),
        "{m}"
    );
    let mut focus = FocusClient::new(channel(&url).await);
    let (a1, a2) = (Party::new(21), Party::new(22));
    let j = focus
        .join(a1.join("beta", "a1", "eu"))
        .await
        .unwrap()
        .into_inner();
    focus.join(a2.join("beta", "a2", "eu")).await.unwrap();
    let mut watch = watch(&mut focus, "beta").await;
    next(&mut watch, "current", Duration::from_secs(1)).await;
    let (victim, survivor) = if j.bridge_id == "eu-2" {
        (1, "eu-\"1\"")
    } else {
        (0, "eu-2")
    };
    let killed = Instant::now();
    b[victim].kill();
    let moved = next(&mut watch, "failover", Duration::from_secs(5)).await;
    let took = killed.elapsed();
    eprintln!("killed bridge: failover announced after {took:?}");
    assert!(took < Duration::from_secs(2), "failover took {took:?}");
    assert_eq!(moved.bridge_id, survivor);
    assert!(flows(&a1, &a2, &moved.media_addr, 1));
    assert!(flows(&a2, &a1, &moved.media_addr, 2));
    let _ = std::fs::remove_dir_all(&data);
}

const PROFILE: Profile = Profile::AeadAes128Gcm;

fn session(key: &[u8]) -> Session {
    let (k, s) = key.split_at(PROFILE.key_len());
    Session::new(PROFILE, k, s).unwrap()
}

/// `from` (plain) sends `seq`; `to` (SRTP) must decrypt it with its bridge key.
fn plain_to_srtp(from: &Party, to: &Party, rx: &Session, media: &str, seq: u16) -> bool {
    let media: std::net::SocketAddr = media.parse().unwrap();
    let pkt = testkit::rtp(from.ssrc, seq, 0, b"to an SRTP participant");
    let mut buf = [0u8; 2048];
    for _ in 0..10 {
        from.sock.send_to(&pkt, media).unwrap();
        if let Ok(n) = to.sock.recv(&mut buf) {
            let n = rx.unprotect_rtp(&mut buf[..n], u64::from(seq)).unwrap();
            assert_eq!(&buf[..n], &pkt[..], "decrypted byte for byte");
            return true;
        }
    }
    false
}

/// `from` (SRTP) protects `seq` with its own key; `to` (plain) must get the plaintext.
fn srtp_to_plain(from: &Party, tx: &Session, to: &Party, media: &str, seq: u16) -> bool {
    let media: std::net::SocketAddr = media.parse().unwrap();
    let plain = testkit::rtp(from.ssrc, seq, 0, b"from an SRTP participant");
    let mut wire = vec![0u8; plain.len() + 32];
    let n = tx.protect_rtp(&plain, u64::from(seq), &mut wire).unwrap();
    let mut buf = [0u8; 2048];
    for _ in 0..10 {
        from.sock.send_to(&wire[..n], media).unwrap();
        if let Ok(n) = to.sock.recv(&mut buf)
            && buf[..n] == plain[..]
        {
            return true;
        }
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn srtp_through_join_survives_a_failover_and_bad_keys_leave_nothing() {
    let data = data_dir("srtp");
    let ctl = control(&data, "127.0.0.1:0");
    let url = format!("http://{}", ctl.field("listen"));
    let mut b = [bridge(&url, "eu-1", "eu"), bridge(&url, "eu-2", "eu")];
    wait_bridges(&url, 2).await;
    let mut focus = FocusClient::new(channel(&url).await);

    // Bad SRTP input: INVALID_ARGUMENT naming the field, and no bridge holds anything.
    let alice = Party::new(31);
    let key: Vec<u8> = (0..28u8).map(|i| i.wrapping_mul(7) ^ 0x33).collect();
    let mut bad = alice.join("gamma", "alice", "eu");
    bad.srtp = Some(pb::SrtpParams {
        profile: PROFILE.name().into(),
        endpoint_key: key[..20].to_vec(),
        bridge_key: vec![],
    });
    let e = focus.join(bad.clone()).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message().starts_with("srtp.endpoint_key:"),
        "{}",
        e.message()
    );
    bad.srtp.as_mut().unwrap().profile = "NOT_A_PROFILE".into();
    let e = focus.join(bad).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().starts_with("srtp.profile:"), "{}", e.message());
    for br in &b {
        let mut api = BridgeClient::new(channel(&format!("http://{}", br.field("api"))).await);
        let l = api
            .list_conferences(pb::ListConferencesRequest {})
            .await
            .unwrap()
            .into_inner();
        assert!(l.conferences.is_empty(), "nothing half-applied: {l:?}");
    }
    assert_eq!(
        get(&mut focus, "gamma").await.unwrap_err().code(),
        Code::NotFound
    );

    // alice joins with SRTP; the focus returns the bridge's key for her.
    let mut req = alice.join("gamma", "alice", "eu");
    req.srtp = Some(pb::SrtpParams {
        profile: PROFILE.name().into(),
        endpoint_key: key.clone(),
        bridge_key: vec![],
    });
    let ja = focus.join(req).await.unwrap().into_inner();
    let srtp = ja.srtp.expect("bridge key returned");
    assert_eq!(srtp.profile, PROFILE.name());
    assert_eq!(srtp.bridge_key.len(), 28);
    assert_ne!(srtp.bridge_key, key);
    let (rx, tx) = (session(&srtp.bridge_key), session(&key));
    let bob = Party::new(32);
    focus.join(bob.join("gamma", "bob", "eu")).await.unwrap();
    assert!(plain_to_srtp(&bob, &alice, &rx, &ja.media_addr, 1));
    assert!(srtp_to_plain(&alice, &tx, &bob, &ja.media_addr, 1));

    // The bridge dies; the conference moves with alice's keys: same keys, new bridge.
    let mut watch = watch(&mut focus, "gamma").await;
    next(&mut watch, "current", Duration::from_secs(1)).await;
    b[if ja.bridge_id == "eu-1" { 0 } else { 1 }].kill();
    let moved = next(&mut watch, "failover", Duration::from_secs(5)).await;
    assert_ne!(moved.bridge_id, ja.bridge_id);
    assert!(plain_to_srtp(&bob, &alice, &rx, &moved.media_addr, 2));
    assert!(srtp_to_plain(&alice, &tx, &bob, &moved.media_addr, 2));
    let _ = std::fs::remove_dir_all(&data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bridge_bound_to_any_address_is_announced_at_one_reachable_address() {
    let data = data_dir("advertise");
    let ctl = control(&data, "127.0.0.1:0");
    let url = format!("http://{}", ctl.field("listen"));
    let b = bridge_on(&url, "any", "eu", "0.0.0.0:0");
    wait_bridges(&url, 1).await;
    let advertised = b.field("advertise");
    assert!(advertised.starts_with("127.0.0.1:"), "{advertised}");
    let mut focus = FocusClient::new(channel(&url).await);
    let (p1, p2) = (Party::new(41), Party::new(42));
    let j = focus
        .join(p1.join("delta", "p1", "eu"))
        .await
        .unwrap()
        .into_inner();
    focus.join(p2.join("delta", "p2", "eu")).await.unwrap();
    let placed = get(&mut focus, "delta").await.unwrap();
    let listed = bridge_id_of(&url, "any").await;
    // Join, GetConference, ListBridges and the ready line all give the same address.
    assert_eq!(j.media_addr, advertised);
    assert_eq!(placed.media_addr, advertised);
    assert_eq!(listed.media_addr, advertised);
    assert!(flows(&p1, &p2, &j.media_addr, 1));
    let _ = std::fs::remove_dir_all(&data);
}
