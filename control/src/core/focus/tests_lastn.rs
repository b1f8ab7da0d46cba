//! Speakers, last-N and subscriptions in the focus, in virtual time: who is announced, what
//! every endpoint and relay should receive, and the calls that bring the bridges there.

use super::tests::{cfg, keys, run_ok};
use super::*;
use crate::core::fleet::Bridge;
use crate::store::webrtc::MediaSection;
use crate::store::{MediaDescription, Role, WebRtc};

fn focus() -> Focus {
    let mut f = Focus::new(&cfg(), Snapshot::default(), keys(), 0);
    for (id, region) in [("eu-1", "eu"), ("us-1", "us")] {
        let b = Bridge::new(id, &format!("{id}:api"), "127.0.0.1:4000", region, 1000.0)
            .with_fingerprint("sha-256 AB:CD");
        f.register(b, 0).unwrap();
    }
    f
}

fn section(kind: &str, ssrc: u32) -> MediaSection {
    MediaSection {
        kind: kind.into(),
        mid: kind.into(),
        codecs: Vec::new(),
        extensions: Vec::new(),
        ssrcs: vec![ssrc],
        msid: String::new(),
        cname: String::new(),
        rids: Vec::new(),
        rid_ext: 0,
    }
}

/// Publisher `n`: audio SSRC 10n, video 10n+1.
fn publisher(who: &str, n: u32, region: &str) -> JoinRequest {
    JoinRequest {
        conference: "room".into(),
        participant_id: who.into(),
        region: region.into(),
        ssrcs: vec![10 * n, 10 * n + 1],
        remote_addr: String::new(),
        srtp: None,
        role: Role::Participant,
        webrtc: Some(WebRtc {
            local_ufrag: format!("ufrag{n:03}"),
            local_pwd: "passwordpasswordpassword".into(),
            remote_ufrag: "abcd".into(),
            remote_fingerprint: "sha-256 00:11".into(),
        }),
        rewrite: None,
        media: Some(MediaDescription {
            sections: vec![section("audio", 10 * n), section("video", 10 * n + 1)],
        }),
        subscription: Some(Vec::new()),
        last_n: 0,
        owner: String::new(),
    }
}

/// A watch session of publisher `n` with last-N `last_n`.
fn watch(who: &str, n: u32, region: &str, last_n: u32) -> JoinRequest {
    JoinRequest {
        ssrcs: Vec::new(),
        media: None,
        subscription: Some(vec![10 * n, 10 * n + 1]),
        last_n,
        ..publisher(who, 90 + n, region)
    }
}

fn speak(f: &mut Focus, bridge: &str, who: &str, from: u64) -> u64 {
    let mut t = from;
    for _ in 0..4 {
        f.observe_audio(bridge, &[("room".into(), who.into(), 110.0)], t);
        t += 200;
    }
    t
}

fn get<'a>(s: &'a Subscriptions, bridge: &str, t: SubTarget) -> &'a Option<Vec<u32>> {
    &s[&(bridge.to_string(), t)]
}

#[test]
fn last_n_follows_the_speakers_and_relays_carry_what_the_far_side_wants() {
    let mut f = focus();
    for (who, n, region) in [("a", 1, "eu"), ("b", 2, "eu"), ("c", 3, "us")] {
        let p = f.join(publisher(who, n, region), 0).unwrap();
        run_ok(&mut f, p);
    }
    // x watches a, b and c from eu with last-N 1.
    for (who, n) in [("xa", 1), ("xb", 2), ("xc", 3)] {
        let p = f.join(watch(who, n, "eu", 1), 0).unwrap();
        run_ok(&mut f, p);
    }
    // Before anyone speaks: last-N is filled by id, a first.
    let want = f.desired_subscriptions("room");
    let ep = |s: &str| SubTarget::Endpoint(s.into());
    assert_eq!(get(&want, "eu-1", ep("xa")), &Some(vec![10, 11]));
    assert_eq!(get(&want, "eu-1", ep("xb")), &Some(vec![20]));
    assert_eq!(get(&want, "eu-1", ep("xc")), &Some(vec![30]));
    // The relay us -> eu carries what eu's receivers want of c: its audio; nobody on us
    // receives anything (publishers subscribe to nobody).
    assert_eq!(
        get(&want, "us-1", SubTarget::Relay("eu-1".into())),
        &Some(vec![10, 11, 20, 30])
    );
    assert_eq!(
        get(&want, "eu-1", SubTarget::Relay("us-1".into())),
        &Some(vec![])
    );
    // The sync sends all of it (nothing is known of the bridges yet).
    let plans = f.tick(100);
    assert_eq!(plans.len(), 1);
    assert_eq!(plans[0].calls.len(), want.len());
    run_ok(&mut f, plans.into_iter().next().unwrap());
    assert!(f.tick(200).is_empty(), "nothing more to send");

    // c speaks (on us-1): announced, and xc gets c's video, xa loses a's.
    speak(&mut f, "us-1", "c", 1000);
    let a = f.take_announcements();
    let spoken: Vec<_> = a.iter().filter(|a| a.reason == "speaker").collect();
    assert_eq!(spoken.len(), 1);
    assert_eq!(spoken[0].dominant_speaker, "c");
    let plans = f.tick(2000);
    let calls: Vec<String> = plans.iter().flat_map(super::tests::shape).collect();
    assert_eq!(
        calls,
        [
            "subscribe Endpoint(\"xa\") Some([10])@eu-1",
            "subscribe Endpoint(\"xc\") Some([30, 31])@eu-1",
            "subscribe Relay(\"eu-1\") Some([10, 20, 30, 31])@us-1",
        ]
    );
    // A receiver for c's own page (owner c) gets the most recent speaker other than c: a
    // (filled by id, as nobody else spoke).
    let p = f
        .join(
            JoinRequest {
                owner: "c".into(),
                ..watch("ca", 1, "us", 1)
            },
            0,
        )
        .unwrap();
    run_ok(&mut f, p);
    let want = f.desired_subscriptions("room");
    assert_eq!(get(&want, "us-1", ep("ca")), &Some(vec![10, 11]));
    // A report from a bridge that does not host the speaker is ignored.
    f.observe_audio("eu-1", &[("room".into(), "c".into(), 120.0)], 2100);
    assert_eq!(f.speakers("room").unwrap().recent(), ["c"]);
}

#[test]
fn a_placement_change_sends_every_subscription_again_and_a_leaver_is_forgotten() {
    let mut f = focus();
    for (who, n) in [("a", 1), ("b", 2)] {
        let p = f.join(publisher(who, n, "eu"), 0).unwrap();
        run_ok(&mut f, p);
    }
    let p = f.join(watch("xa", 1, "eu", 1), 0).unwrap();
    run_ok(&mut f, p);
    // xa's own subscription is what last-N lets through (a fills it): nothing to send.
    assert!(f.tick(100).is_empty());
    speak(&mut f, "eu-1", "b", 1000);
    speak(&mut f, "eu-1", "a", 2000);
    assert_eq!(f.speakers("room").unwrap().recent(), ["a", "b"]);
    for p in f.tick(3000) {
        run_ok(&mut f, p);
    }
    // a leaves: it is no longer a speaker, and the sync sends everything again.
    let p = f.leave("room", "a").unwrap();
    run_ok(&mut f, p);
    assert_eq!(f.speakers("room").unwrap().recent(), ["b"]);
    let plans = f.tick(4000);
    assert_eq!(plans.len(), 1);
    assert_eq!(plans[0].calls.len(), f.desired_subscriptions("room").len());
}

#[test]
fn conferences_without_subscriptions_cost_no_sync() {
    let mut f = focus();
    let p = f
        .join(
            JoinRequest {
                subscription: None,
                ..publisher("a", 1, "eu")
            },
            0,
        )
        .unwrap();
    run_ok(&mut f, p);
    assert!(f.tick(100).is_empty());
}
