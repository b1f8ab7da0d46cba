//! Offers of real clients (Chrome, Firefox, aiortc; `control/tests/sdp/*_offer.sdp`) and the
//! answers to them, compared with golden files (`*_answer.sdp` beside them; run with
//! `RINGBRIDGE_BLESS=1` to write them again after a deliberate change), and checked line by line
//! for what matters; bad offers get the error that names what is wrong.

use std::path::PathBuf;

use super::*;
use crate::signal::sdp::{MAX_MEDIA, MAX_SDP_BYTES, SdpError, parse_offer};

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/sdp")
}

fn offer_text(name: &str) -> String {
    std::fs::read_to_string(dir().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn offer(name: &str) -> Offer {
    parse_offer(offer_text(name).as_bytes()).unwrap_or_else(|e| panic!("{name}: {e}"))
}

const FINGERPRINT: &str = "sha-256 01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF";

fn local() -> Local {
    Local {
        ufrag: "rbUfrag1".into(),
        pwd: "rbPasswordOf24Characters".into(),
        fingerprint: FINGERPRINT.into(),
        media_addr: "192.0.2.10:40000".parse().unwrap(),
        session_id: 1,
    }
}

/// Compares with the golden file `name` (written when `RINGBRIDGE_BLESS` is set).
fn golden(name: &str, got: &str) {
    let path = dir().join(name);
    if std::env::var_os("RINGBRIDGE_BLESS").is_some() {
        std::fs::write(&path, got).unwrap();
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{name}: {e} (RINGBRIDGE_BLESS=1 writes it)"));
    assert_eq!(got, want, "{name} differs (RINGBRIDGE_BLESS=1 rewrites it)");
}

fn lines(sdp: &str) -> Vec<&str> {
    sdp.split("\r\n").filter(|l| !l.is_empty()).collect()
}

/// The lines of m-section `i` (0-based), its m= line first.
fn section(sdp: &str, i: usize) -> Vec<&str> {
    let all = lines(sdp);
    let starts: Vec<usize> = (0..all.len())
        .filter(|&k| all[k].starts_with("m="))
        .collect();
    let end = starts.get(i + 1).copied().unwrap_or(all.len());
    all[starts[i]..end].to_vec()
}

/// What every answer says about the bridge's transport, on each taken m-line.
fn transport_lines_are_the_bridges(sdp: &str, taken: &[usize]) {
    let all = lines(sdp);
    assert!(all.contains(&"a=ice-lite"), "{sdp}");
    for &i in taken {
        let s = section(sdp, i);
        for want in [
            "a=ice-ufrag:rbUfrag1",
            "a=ice-pwd:rbPasswordOf24Characters",
            &format!("a=fingerprint:{FINGERPRINT}"),
            "a=setup:passive",
            "a=rtcp-mux",
            "a=candidate:1 1 udp 2130706431 192.0.2.10 40000 typ host",
            "c=IN IP4 192.0.2.10",
        ] {
            assert!(s.contains(&want), "m-section {i} lacks {want:?}: {s:?}");
        }
        assert!(s[0].contains(" 40000 "), "{}", s[0]);
        assert!(
            !s.iter().any(|l| l.contains("transport-cc")),
            "transport-cc is not negotiated: {s:?}"
        );
    }
}

fn pts(m_line: &str) -> Vec<u8> {
    m_line
        .split(' ')
        .skip(3)
        .map(|p| p.parse().unwrap())
        .collect()
}

fn sorted(mut v: Vec<IdMap>) -> Vec<(u8, u8)> {
    v.sort_by_key(|m| m.from);
    v.into_iter().map(|m| (m.from, m.to)).collect()
}

#[test]
fn a_chrome_publisher_gets_a_recvonly_answer_with_the_codecs_we_forward() {
    let o = offer("chrome_whip_offer.sdp");
    assert_eq!(o.ice_ufrag, "RZU1");
    assert_eq!(o.bundle, ["0", "1"]);
    let p = publish(&o).unwrap();
    let sdp = write(&o, &p.sections, &local());
    golden("chrome_whip_answer.sdp", &sdp);
    transport_lines_are_the_bridges(&sdp, &[0, 1]);
    assert!(lines(&sdp).contains(&"a=group:BUNDLE 0 1"));
    let audio = section(&sdp, 0);
    assert_eq!(pts(audio[0]), [111], "opus only: {audio:?}");
    assert!(audio.contains(&"a=mid:0") && audio.contains(&"a=recvonly"));
    assert!(audio.contains(&"a=fmtp:111 minptime=10;useinbandfec=1"));
    assert!(audio.contains(&"a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level"));
    let video = section(&sdp, 1);
    // VP8, the H264s and the VP9s in the offer's order; no AV1, RTX, RED or FEC.
    assert_eq!(pts(video[0]), [96, 102, 104, 108, 114, 116, 39, 98, 100]);
    assert!(video.contains(&"a=mid:1") && video.contains(&"a=recvonly"));
    assert!(video.contains(&"a=rtcp-fb:96 nack pli"));
    assert!(video.contains(&"a=extmap:13 urn:3gpp:video-orientation"));
    assert!(video.contains(&"a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid"));
    assert!(
        !sdp.contains("a=ssrc"),
        "the bridge sends no media to a publisher"
    );
    // Kept with the publisher: its SSRCs (RTX's too: the bridge forwards by SSRC) and media.
    assert_eq!(p.ssrcs, [3334011600, 1437773623, 2485078479]);
    let m = &p.media.sections;
    assert_eq!(m.len(), 2);
    assert_eq!((m[0].kind.as_str(), m[0].mid.as_str()), ("audio", "0"));
    assert_eq!(m[1].ssrcs, [1437773623], "RTX is not negotiated");
    assert_eq!(m[1].cname, "IBmwshR0dXzff+g+");
    assert_eq!(
        m[1].msid,
        "6a8e1467-cb69-4125-ac5c-391af328d17f 0f95c04d-2a67-48f7-af92-55291fe94ca6"
    );
}

#[test]
fn a_firefox_publisher_is_answered_from_session_level_fingerprint_and_its_own_numbering() {
    let o = offer("firefox_whip_offer.sdp");
    assert!(
        o.fingerprint.starts_with("sha-256 3A:9C:"),
        "{}",
        o.fingerprint
    );
    assert_eq!(o.ice_ufrag, "6b0f4a2d");
    let p = publish(&o).unwrap();
    let sdp = write(&o, &p.sections, &local());
    golden("firefox_whip_answer.sdp", &sdp);
    transport_lines_are_the_bridges(&sdp, &[0, 1]);
    let audio = section(&sdp, 0);
    assert_eq!(pts(audio[0]), [109]);
    assert!(audio.contains(&"a=rtpmap:109 opus/48000/2"));
    assert!(audio.contains(&"a=fmtp:109 maxplaybackrate=48000;stereo=1;useinbandfec=1"));
    assert!(!audio.iter().any(|l| l.contains("csrc-audio-level")));
    let video = section(&sdp, 1);
    assert_eq!(pts(video[0]), [120, 121, 126, 97]);
    assert!(video.contains(&"a=fmtp:120 max-fs=12288;max-fr=60"));
    assert!(video.contains(&"a=rtcp-rsize"));
    assert_eq!(p.ssrcs, [2863155931, 1738942871, 3394819011]);
    assert_eq!(p.media.sections[1].ssrcs, [1738942871]);
}

#[test]
fn an_aiortc_publisher_with_video_first_and_its_own_numbering() {
    let o = offer("aiortc_whip_offer.sdp");
    let p = publish(&o).unwrap();
    let sdp = write(&o, &p.sections, &local());
    golden("aiortc_whip_answer.sdp", &sdp);
    transport_lines_are_the_bridges(&sdp, &[0, 1]);
    assert_eq!(pts(section(&sdp, 0)[0]), [97, 99, 101], "VP8 and H264");
    assert_eq!(pts(section(&sdp, 1)[0]), [96], "opus");
    assert_eq!(p.media.sections[0].kind, "video");
    assert_eq!(p.media.sections[0].ssrcs, [3431790809]);
}

#[test]
fn a_chrome_viewer_of_a_chrome_publisher_gets_its_streams_and_extension_ids_swapped_back() {
    let publisher = publish(&offer("chrome_whip_offer.sdp")).unwrap().media;
    let o = offer("chrome_whep_offer.sdp");
    let v = play(&o, &publisher).unwrap();
    let sdp = write(&o, &v.sections, &local());
    golden("chrome_whep_answer.sdp", &sdp);
    transport_lines_are_the_bridges(&sdp, &[0, 1]);
    // The viewer's video is its m-line 0, audio 1: each gets the publisher's of its kind.
    let video = section(&sdp, 0);
    assert!(video.contains(&"a=sendonly") && video.contains(&"a=mid:0"));
    assert!(video.contains(&"a=ssrc:1437773623 cname:IBmwshR0dXzff+g+"));
    assert!(video.contains(
        &"a=ssrc:1437773623 msid:6a8e1467-cb69-4125-ac5c-391af328d17f 0f95c04d-2a67-48f7-af92-55291fe94ca6"
    ));
    assert!(!sdp.contains("2485078479"), "not the publisher's RTX SSRC");
    // RTX of the bridge's own for the video stream, in the viewer's numbering.
    let rtx = v.rewrite.rtx_ssrcs[0];
    assert_eq!(rtx.media, 1437773623);
    assert!(video.contains(&format!("a=ssrc-group:FID 1437773623 {}", rtx.rtx).as_str()));
    assert!(video.contains(&"a=fmtp:97 apt=96"));
    assert_eq!(
        v.rewrite.rtx_payload_types.len(),
        9,
        "one per video codec taken"
    );
    assert!(
        !section(&sdp, 1).iter().any(|l| l.contains("rtx")),
        "no RTX for audio"
    );
    assert!(!video.iter().any(|l| l.contains("sdes:")), "{video:?}");
    let audio = section(&sdp, 1);
    assert!(audio.contains(&"a=ssrc:3334011600 cname:IBmwshR0dXzff+g+"));
    assert!(audio.contains(&"a=extmap:14 urn:ietf:params:rtp-hdrext:ssrc-audio-level"));
    assert!(lines(&sdp).contains(&"a=msid-semantic: WMS *"));
    // Same codec numbering; extension ids differ: audio-level 1 -> 14 and toffset 14 -> 1
    // (a swap), orientation 13 -> 3; MID, RID and repaired RID stripped.
    assert!(v.rewrite.payload_types.is_empty(), "{:?}", v.rewrite);
    assert_eq!(
        sorted(v.rewrite.extensions.clone()),
        [(1, 14), (4, 0), (10, 0), (11, 0), (13, 3), (14, 1)]
    );
}

#[test]
fn an_aiortc_viewer_of_a_chrome_publisher_gets_payload_types_in_its_numbering() {
    let publisher = publish(&offer("chrome_whip_offer.sdp")).unwrap().media;
    let o = offer("aiortc_whep_offer.sdp");
    let v = play(&o, &publisher).unwrap();
    let sdp = write(&o, &v.sections, &local());
    golden("aiortc_whep_answer.sdp", &sdp);
    transport_lines_are_the_bridges(&sdp, &[0, 1]);
    // Its video codecs, then their RTX (the bridge repairs from its cache on those).
    assert_eq!(pts(section(&sdp, 0)[0]), [97, 99, 101, 98, 100, 102]);
    assert_eq!(
        sorted(v.rewrite.rtx_payload_types.clone()),
        [(97, 98), (99, 100), (101, 102)]
    );
    assert_eq!(pts(section(&sdp, 1)[0]), [96]);
    // opus 111 -> 96, VP8 96 -> 97, H264 42001f 102 -> 99, 42e01f 108 -> 101.
    assert_eq!(
        sorted(v.rewrite.payload_types.clone()),
        [(96, 97), (102, 99), (108, 101), (111, 96)]
    );
    // abs-send-time 2 -> 3, audio-level 1 -> 2; what aiortc does not take is stripped.
    assert_eq!(
        sorted(v.rewrite.extensions.clone()),
        [
            (1, 2),
            (2, 3),
            (4, 0),
            (5, 0),
            (10, 0),
            (11, 0),
            (13, 0),
            (14, 0)
        ]
    );
}

#[test]
fn a_firefox_viewer_of_a_chrome_publisher_and_a_chrome_viewer_of_an_aiortc_one() {
    let chrome = publish(&offer("chrome_whip_offer.sdp")).unwrap().media;
    let o = offer("firefox_whep_offer.sdp");
    let v = play(&o, &chrome).unwrap();
    golden("firefox_whep_answer.sdp", &write(&o, &v.sections, &local()));
    // opus 111 -> 109, VP8 96 -> 120, VP9 profile 0 98 -> 121, H264 42e01f pm1 108 -> 126,
    // pm0 114 -> 97.
    assert_eq!(
        sorted(v.rewrite.payload_types.clone()),
        [(96, 120), (98, 121), (108, 126), (111, 109), (114, 97)]
    );
    let aiortc = publish(&offer("aiortc_whip_offer.sdp")).unwrap().media;
    let o = offer("chrome_whep_offer.sdp");
    let v = play(&o, &aiortc).unwrap();
    assert_eq!(
        sorted(v.rewrite.payload_types.clone()),
        [(96, 111), (97, 96), (99, 102), (101, 108)]
    );
    assert_eq!(
        sorted(v.rewrite.extensions.clone()),
        [(1, 0), (2, 14), (3, 2)]
    );
}

#[test]
fn a_viewer_with_no_codec_of_the_publisher_is_told_what_it_sends() {
    let vp9_only = MediaDescription {
        sections: vec![MediaSection {
            kind: "video".into(),
            mid: "0".into(),
            codecs: vec![Codec {
                pt: 98,
                name: "VP9".into(),
                clock: 90_000,
                channels: 1,
                fmtp: "profile-id=0".into(),
                rtcp_fb: vec![],
            }],
            extensions: vec![],
            rids: vec![],
            rid_ext: 0,
            ssrcs: vec![5],
            msid: String::new(),
            cname: String::new(),
        }],
    };
    let e = play(&offer("aiortc_whep_offer.sdp"), &vp9_only).unwrap_err();
    assert_eq!(e, SdpError::NoCommonCodec("VP9".into()));
    assert!(e.to_string().contains("it sends VP9"), "{e}");
}

#[test]
fn h264_profiles_and_modes_and_vp9_profiles_must_match() {
    let c = |name: &str, fmtp: &str| Codec {
        pt: 100,
        name: name.into(),
        clock: 90_000,
        channels: 1,
        fmtp: fmtp.into(),
        rtcp_fb: vec![],
    };
    let cb1 = c("H264", "profile-level-id=42e01f;packetization-mode=1");
    assert!(same_codec(
        &cb1,
        &c("h264", "packetization-mode=1;profile-level-id=42E034")
    ));
    assert!(!same_codec(&cb1, &c("H264", "profile-level-id=42e01f")));
    assert!(!same_codec(
        &cb1,
        &c("H264", "profile-level-id=4d001f;packetization-mode=1")
    ));
    assert!(same_codec(&c("VP9", ""), &c("VP9", "profile-id=0")));
    assert!(!same_codec(
        &c("VP9", "profile-id=2"),
        &c("VP9", "profile-id=0")
    ));
    assert!(!same_codec(&c("VP8", ""), &c("VP9", "")));
}

/// The Chrome publisher's offer with `f` applied to its text.
fn chrome_with(f: impl Fn(String) -> String) -> Result<Offer, SdpError> {
    parse_offer(f(offer_text("chrome_whip_offer.sdp")).as_bytes())
}

fn without(prefix: &'static str) -> impl Fn(String) -> String {
    move |s: String| {
        s.split("\r\n")
            .filter(|l| !l.starts_with(prefix))
            .collect::<Vec<_>>()
            .join("\r\n")
    }
}

#[test]
fn bad_offers_are_refused_naming_what_is_wrong() {
    use SdpError::*;
    assert!(matches!(
        chrome_with(without("a=ice-ufrag")),
        Err(NoIceCredentials(0))
    ));
    assert!(matches!(
        chrome_with(without("a=fingerprint")),
        Err(NoFingerprint)
    ));
    assert!(matches!(
        chrome_with(|s| s.replace("a=setup:actpass", "a=setup:passive")),
        Err(Setup(s)) if s == "passive"
    ));
    assert!(matches!(
        chrome_with(|s| s.replace("a=extmap-allow-mixed", "a=ice-lite")),
        Err(IceLite)
    ));
    assert!(matches!(
        chrome_with(|s| s.replace("a=ice-pwd:hLuE5FMkVzZcRojJr/4OKZvx", "a=ice-pwd:short")),
        Err(BadIceCredentials(_))
    ));
    assert!(matches!(
        chrome_with(|s| s.replace("sha-256 75:F7:ED", "sha-1 75:F7:ED")),
        Err(BadFingerprint(_) | NoFingerprint)
    ));
    assert!(matches!(
        chrome_with(|_| "hello".into()),
        Err(NotAnOffer(_))
    ));
    assert!(matches!(
        chrome_with(|s| s.replace("t=0 0", "t=zero")),
        Err(Malformed(m)) if m.contains("t=zero") || m.contains("line")
    ));
    assert!(matches!(
        parse_offer(&[0xff, 0xfe, b'v']),
        Err(NotAnOffer(_))
    ));
    // An offer that is fine, but not one the endpoint can use.
    let o = chrome_with(|s| s.replace("a=sendonly", "a=recvonly")).unwrap();
    assert_eq!(
        publish(&o).unwrap_err(),
        Direction("publish", "sendonly or sendrecv")
    );
    let o = offer("chrome_whip_offer.sdp");
    assert_eq!(
        check_play(&o).unwrap_err(),
        Direction("play", "recvonly or sendrecv")
    );
    let o = chrome_with(|s| {
        s.replace("opus/48000", "speex/48000")
            .replace("VP8/", "X1/")
            .replace("VP9/", "X2/")
            .replace("H264/", "X3/")
    })
    .unwrap();
    assert_eq!(publish(&o).unwrap_err(), NoCodec);
    assert!(NoCodec.to_string().contains("opus, VP8, VP9 and H264"));
    let o = chrome_with(without("a=ssrc")).unwrap();
    assert_eq!(publish(&o).unwrap_err(), NoSsrc(0, "0".into()));
    let o = chrome_with(without("a=rtcp-mux")).unwrap();
    assert_eq!(publish(&o).unwrap_err(), NoRtcpMux(0, "0".into()));
    let o = chrome_with(without("a=group:BUNDLE")).unwrap();
    assert!(matches!(publish(&o), Err(NotBundled(_))));
}

#[test]
fn a_data_channel_is_rejected_and_the_media_answered() {
    let o = chrome_with(|s| {
        s.replace("a=group:BUNDLE 0 1", "a=group:BUNDLE 0 1 2")
            + "m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\nc=IN IP4 0.0.0.0\r\na=mid:2\r\na=sctp-port:5000\r\n"
    })
    .unwrap();
    let p = publish(&o).unwrap();
    let sdp = write(&o, &p.sections, &local());
    let dc = section(&sdp, 2);
    assert_eq!(dc[0], "m=application 0 UDP/DTLS/SCTP webrtc-datachannel");
    assert!(dc.contains(&"a=mid:2"));
    assert!(lines(&sdp).contains(&"a=group:BUNDLE 0 1"));
}

#[test]
fn huge_offers_are_refused_before_they_are_parsed() {
    let mut s = offer_text("chrome_whip_offer.sdp");
    for _ in 0..500 {
        s.push_str("m=audio 9 UDP/TLS/RTP/SAVPF 0\r\nc=IN IP4 0.0.0.0\r\na=mid:x\r\n");
    }
    assert_eq!(parse_offer(s.as_bytes()), Err(SdpError::TooManyMedia(502)));
    const { assert!(502 > MAX_MEDIA) };
    let big = vec![b'a'; 1 << 20];
    assert_eq!(parse_offer(&big), Err(SdpError::TooLarge(1 << 20)));
    const { assert!((1 << 20) > MAX_SDP_BYTES) };
}

#[test]
fn an_ipv6_bridge_is_answered_with_an_ipv6_candidate() {
    let o = offer("aiortc_whip_offer.sdp");
    let p = publish(&o).unwrap();
    let mut l = local();
    l.media_addr = "[2001:db8::7]:40000".parse().unwrap();
    let sdp = write(&o, &p.sections, &l);
    assert!(lines(&sdp).contains(&"c=IN IP6 2001:db8::7"));
    assert!(lines(&sdp).contains(&"a=candidate:1 1 udp 2130706431 2001:db8::7 40000 typ host"));
}

#[test]
fn registration_fingerprints_are_checked_and_normalized() {
    use crate::signal::sdp::check_fingerprint;
    let hex = ["ab"; 32].join(":");
    assert_eq!(
        check_fingerprint(&format!("SHA-256 {hex}")).unwrap(),
        format!("sha-256 {}", hex.to_uppercase())
    );
    assert!(check_fingerprint(&format!("sha-1 {}", ["ab"; 20].join(":"))).is_err());
    assert!(check_fingerprint("sha-256 AB:CD").is_err());
    assert!(check_fingerprint("nonsense").is_err());
}

#[test]
fn a_chrome_simulcast_publisher_is_answered_per_rid_and_its_viewers_get_one_stream() {
    let o = offer("chrome_whip_simulcast_offer.sdp");
    let p = publish(&o).unwrap();
    let sdp = write(&o, &p.sections, &local());
    golden("chrome_whip_simulcast_answer.sdp", &sdp);
    // Video (m-line 1) sends three encodings named by RID, no SSRCs: received per RID.
    let video = section(&sdp, 1);
    for l in [
        "a=rid:q recv",
        "a=rid:h recv",
        "a=rid:f recv",
        "a=simulcast:recv q;h;f",
        "a=extmap:10 urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id",
    ] {
        assert!(video.contains(&l), "{l}: {video:?}");
    }
    let v = &p.media.sections[1];
    assert_eq!((v.kind.as_str(), v.rid_ext), ("video", 10));
    assert_eq!(v.rids, ["q", "h", "f"]);
    assert!(v.ssrcs.is_empty());
    assert_eq!(p.ssrcs, [3262311395], "only the audio SSRC is declared");
    // A viewer: one video SSRC of the bridge's (and its RTX), whatever the layer.
    let o = offer("chrome_whep_offer.sdp");
    let v = play(&o, &p.media).unwrap();
    let sdp = write(&o, &v.sections, &local());
    let video = section(&sdp, 0);
    let ssrc = format!("a=ssrc:{SIMULCAST_SSRC} cname:ringbridge");
    assert!(video.contains(&ssrc.as_str()), "{video:?}");
    assert_eq!(v.rewrite.simulcast.as_ref().unwrap().ssrc, SIMULCAST_SSRC);
    assert_eq!(v.rewrite.rtx_ssrcs[0].media, SIMULCAST_SSRC);
    assert!(
        !video
            .iter()
            .any(|l| l.starts_with("a=rid") || l.starts_with("a=simulcast"))
    );
    // Without the RID extension the layers cannot be told apart: refused, naming the m-line.
    let text = without("a=extmap:10 ")(offer_text("chrome_whip_simulcast_offer.sdp"));
    let e = publish(&parse_offer(text.as_bytes()).unwrap()).map(|_| ());
    assert_eq!(e, Err(SdpError::NoSsrc(1, "1".into())));
}
