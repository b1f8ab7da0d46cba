//! WebRTC participants in the focus: placed only on bridges with a DTLS fingerprint, stranded
//! (to leave, their session ended) when their bridge changes or restarts, kept across restarts.

use super::tests::{T, cfg, keys, run_ok};
use super::*;
use crate::core::fleet::{Bridge, Health};
use crate::store::{MediaDescription, Role, WebRtc};

const FP: &str = "sha-256 AB:CD";

/// eu-1 (no fingerprint), eu-2 and us-1 (WebRTC), eu-3 (WebRTC).
fn focus() -> Focus {
    let mut f = Focus::new(&cfg(), Snapshot::default(), keys(), 0);
    for (id, region, fp) in [
        ("eu-1", "eu", ""),
        ("eu-2", "eu", FP),
        ("eu-3", "eu", FP),
        ("us-1", "us", FP),
    ] {
        let b = Bridge::new(id, &format!("{id}:api"), "127.0.0.1:4000", region, 1000.0)
            .with_fingerprint(fp);
        f.register(b, 0).unwrap();
    }
    f
}

fn webrtc(n: u8) -> WebRtc {
    WebRtc {
        local_ufrag: format!("ufrag{n:03}"),
        local_pwd: format!("password{n:03}password{n:03}xx"),
        remote_ufrag: "abcd".into(),
        remote_fingerprint: "sha-256 00:11".into(),
    }
}

fn publisher(s: &str, who: &str, region: &str) -> JoinRequest {
    JoinRequest {
        conference: s.into(),
        participant_id: who.into(),
        region: region.into(),
        ssrcs: vec![7, 8],
        remote_addr: String::new(),
        srtp: None,
        role: Role::Publisher,
        webrtc: Some(webrtc(1)),
        rewrite: None,
        media: Some(MediaDescription::default()),
        subscription: None,
        last_n: 0,
        owner: String::new(),
    }
}

fn viewer(s: &str, who: &str, region: &str) -> JoinRequest {
    JoinRequest {
        ssrcs: vec![],
        role: Role::Viewer,
        webrtc: Some(webrtc(2)),
        media: None,
        subscription: None,
        last_n: 0,
        owner: String::new(),
        ..publisher(s, who, region)
    }
}

fn bridge_of(f: &Focus, s: &str, who: &str) -> String {
    f.conferences()[s].participants[who].bridge.clone()
}

#[test]
fn webrtc_participants_go_only_to_bridges_with_a_fingerprint() {
    let mut f = focus();
    for i in 0..6 {
        let p = f.join(viewer("s", &format!("v{i}"), "eu"), 0).unwrap();
        run_ok(&mut f, p);
        assert_ne!(bridge_of(&f, "s", &format!("v{i}")), "eu-1");
    }
    let p = f.join(publisher("s", "pub", "eu"), 0).unwrap();
    run_ok(&mut f, p);
    assert_ne!(bridge_of(&f, "s", "pub"), "eu-1");
    // Its WebRTC parameters and media go to the bridge and into the placement.
    let x = &f.conferences()["s"].participants["pub"];
    assert_eq!(x.webrtc.as_deref(), Some(&webrtc(1)));
    assert_eq!(x.media.as_deref(), Some(&MediaDescription::default()));
    // A viewer needs no address: ICE gives it.
    assert!(
        f.conferences()["s"].participants["v0"]
            .remote_addr
            .is_empty()
    );
}

#[test]
fn no_bridge_with_a_fingerprint_is_no_bridge() {
    let mut f = Focus::new(&cfg(), Snapshot::default(), keys(), 0);
    assert_eq!(
        f.join(publisher("s", "p", "eu"), 0).unwrap_err(),
        FocusError::NoBridge(NoBridge::NoneRegistered)
    );
    f.register(Bridge::new("old", "a", "127.0.0.1:1", "eu", 1000.0), 0)
        .unwrap();
    let e = f.join(publisher("s", "p", "eu"), 0).unwrap_err();
    assert_eq!(e, FocusError::NoBridge(NoBridge::NoWebRtc(1)));
    assert!(e.to_string().contains("DTLS fingerprint"), "{e}");
    // Plain participants still go there.
    let mut j = super::tests::join("c", "a", "eu");
    j.role = Role::Participant;
    assert!(f.join(j, 0).is_ok());
}

#[test]
fn bad_webrtc_parameters_are_refused_naming_the_field() {
    let mut f = focus();
    let mut r = publisher("s", "p", "eu");
    r.webrtc.as_mut().unwrap().local_pwd = "short".into();
    assert!(matches!(
        f.join(r, 0),
        Err(FocusError::Invalid {
            field: "webrtc.local_pwd",
            ..
        })
    ));
    let mut r = publisher("s", "p", "eu");
    r.remote_addr = "127.0.0.1:5".into();
    assert!(matches!(
        f.join(r, 0),
        Err(FocusError::Invalid {
            field: "remote_addr",
            ..
        })
    ));
    let mut r = publisher("s", "p", "eu");
    r.webrtc.as_mut().unwrap().local_ufrag = "a:b!".into();
    assert!(matches!(
        f.join(r, 0),
        Err(FocusError::Invalid {
            field: "webrtc.local_ufrag",
            ..
        })
    ));
}

#[test]
fn a_webrtc_viewer_moved_off_a_dead_edge_is_stranded_and_moved_to_a_webrtc_bridge() {
    let mut f = focus();
    let p = f.join(publisher("s", "pub", "eu"), 0).unwrap();
    run_ok(&mut f, p);
    let p = f.join(viewer("s", "v", "us"), 0).unwrap();
    run_ok(&mut f, p);
    assert_eq!(bridge_of(&f, "s", "v"), "us-1");
    assert!(f.take_stranded().is_empty());
    f.probe("us-1", Err("gone".into()));
    assert_eq!(f.probe("us-1", Err("gone".into())), Some(Health::Down));
    let plans = f.tick(5);
    assert_eq!(plans.len(), 1);
    run_ok(&mut f, plans.into_iter().next().unwrap());
    let to = bridge_of(&f, "s", "v");
    assert!(to == "eu-2" || to == "eu-3", "a WebRTC bridge: {to}");
    // Its session cannot follow: it is to leave.
    assert_eq!(f.take_stranded(), [("s".to_string(), "v".to_string())]);
    assert!(f.take_stranded().is_empty());
    let p = f.leave("s", "v").unwrap();
    run_ok(&mut f, p);
    assert!(!f.conferences()["s"].participants.contains_key("v"));
}

#[test]
fn a_dead_origin_strands_its_webrtc_publisher_and_a_restarted_bridge_its_sessions() {
    let mut f = focus();
    let p = f.join(publisher("s", "pub", "eu"), 0).unwrap();
    run_ok(&mut f, p);
    let origin = bridge_of(&f, "s", "pub");
    f.probe(&origin, Err("gone".into()));
    f.probe(&origin, Err("gone".into()));
    let plans = f.tick(5);
    run_ok(&mut f, plans.into_iter().next().unwrap());
    let new_origin = bridge_of(&f, "s", "pub");
    assert_ne!(new_origin, origin);
    assert_ne!(new_origin, "eu-1", "a bridge with a fingerprint");
    assert_eq!(f.take_stranded(), [("s".to_string(), "pub".to_string())]);
    // A new process of the new origin (no instance id: a restart) has none of the DTLS
    // sessions: its WebRTC participants are stranded too.
    let b = Bridge::new(
        &new_origin,
        &format!("{new_origin}:api"),
        "127.0.0.1:4000",
        "eu",
        1000.0,
    )
    .with_fingerprint(FP);
    let plans = f.register(b, 2 * T).unwrap();
    assert_eq!(f.take_stranded(), [("s".to_string(), "pub".to_string())]);
    for p in plans {
        run_ok(&mut f, p);
    }
}

#[test]
fn webrtc_state_survives_a_restart_and_older_state_loads_without_it() {
    let mut f = focus();
    let p = f.join(publisher("s", "pub", "eu"), 0).unwrap();
    run_ok(&mut f, p);
    let mut snap = Snapshot::default();
    for c in f.take_changes() {
        snap.apply(&c);
    }
    let json = serde_json::to_string(&snap).unwrap();
    let back: Snapshot = serde_json::from_str(&json).unwrap();
    assert_eq!(back, snap);
    assert_eq!(
        back.placements["s"].participants["pub"].webrtc.as_deref(),
        Some(&webrtc(1))
    );
    // A participant written before WebRTC: no such fields.
    let old = r#"{"region":"eu","ssrcs":[1],"remote_addr":"","bridge":"b","role":"viewer"}"#;
    let p: crate::store::Participant = serde_json::from_str(old).unwrap();
    assert_eq!((p.webrtc, p.rewrite, p.media), (None, None, None));
    // And plain participants are written without them.
    let plain = crate::store::Participant::plain("eu", vec![1], "", None, "b", Role::Participant);
    assert!(!serde_json::to_string(&plain).unwrap().contains("webrtc"));
}
