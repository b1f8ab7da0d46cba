//! WHIP and WHEP at the HTTP level, against a real control plane and real bridges, with no
//! WebRTC client: bad input gets the documented code and places nothing; CORS; a Chrome offer
//! publishes (the answer's ICE credentials, fingerprint and candidate are what the bridge got:
//! a STUN check signed with them is answered), a viewer gets the publisher's streams, DELETE
//! ends sessions; a viewer whose edge dies loses its session (404) and can POST again; a standby
//! answers 503 naming the active instance.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use common::*;
use ringbridge_proto::v1 as pb;
use ringbridge_proto::v1::focus_client::FocusClient;
use ringbridge_proto::v1::registry_client::RegistryClient;

/// An HTTP response.
#[derive(Debug)]
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One HTTP/1.1 request on a new connection (`Connection: close`).
fn http(addr: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    // A refused body may not be read: the server answers and closes while we still write.
    let _ = s.write_all(body);
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP response: {text:?}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    Resp {
        status,
        headers,
        body: body.to_string(),
    }
}

const SDP: (&str, &str) = ("Content-Type", "application/sdp");

/// A bad request: what it is, its headers and body, the status and a word of the answer.
type Case = (
    &'static str,
    Vec<(&'static str, &'static str)>,
    Vec<u8>,
    u16,
    &'static str,
);

fn offer(name: &str) -> String {
    std::fs::read_to_string(format!("{}/tests/sdp/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

fn post(http_addr: &str, path: &str, sdp: &str) -> Resp {
    http(http_addr, "POST", path, &[SDP], sdp.as_bytes())
}

async fn placements(url: &str) -> Vec<pb::ConferencePlacement> {
    FocusClient::new(channel(url).await)
        .list_placements(pb::ListPlacementsRequest {})
        .await
        .unwrap()
        .into_inner()
        .conferences
}

/// The value of the first `a=NAME:` line of `sdp`.
fn attr<'a>(sdp: &'a str, name: &str) -> &'a str {
    let p = format!("a={name}:");
    sdp.lines()
        .find_map(|l| l.strip_prefix(&p))
        .unwrap_or_else(|| panic!("no a={name} in {sdp}"))
        .trim()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_the_documented_code_and_nothing_is_placed() {
    let data = data_dir("whip-bad");
    let ctl = control(&data, "127.0.0.1:0");
    let url = format!("http://{}", ctl.field("listen"));
    let h = ctl.field("http");
    let _bridges = [bridge(&url, "eu-1", "eu"), bridge(&url, "eu-2", "eu")];
    wait_bridges(&url, 2).await;
    let good = offer("chrome_whip_offer.sdp");
    let cases: Vec<Case> = vec![
        (
            "wrong type",
            vec![("Content-Type", "text/plain")],
            good.clone().into(),
            415,
            "application/sdp",
        ),
        (
            "no type",
            vec![],
            good.clone().into(),
            415,
            "application/sdp",
        ),
        (
            "not SDP",
            vec![SDP],
            b"hello".to_vec(),
            400,
            "not an SDP offer",
        ),
        (
            "malformed",
            vec![SDP],
            good.replace("t=0 0", "t=zero").into(),
            400,
            "malformed SDP",
        ),
        (
            "no ICE credentials",
            vec![SDP],
            good.lines()
                .filter(|l| !l.starts_with("a=ice-ufrag"))
                .collect::<Vec<_>>()
                .join("\r\n")
                .into(),
            400,
            "no ICE credentials",
        ),
        (
            "no fingerprint",
            vec![SDP],
            good.lines()
                .filter(|l| !l.starts_with("a=fingerprint"))
                .collect::<Vec<_>>()
                .join("\r\n")
                .into(),
            400,
            "no fingerprint",
        ),
        (
            "no codec",
            vec![SDP],
            good.replace("opus/", "speex/")
                .replace("VP8/", "X/")
                .replace("VP9/", "Y/")
                .replace("H264/", "Z/")
                .into(),
            400,
            "no codec we forward",
        ),
        (
            "500 m-lines",
            vec![SDP],
            (good.clone() + &"m=audio 9 UDP/TLS/RTP/SAVPF 0\r\na=mid:x\r\n".repeat(500)).into(),
            400,
            "m-lines",
        ),
        (
            "1 MB",
            vec![SDP],
            vec![b'v'; 1 << 20],
            413,
            "over the limit",
        ),
        (
            "a viewer's offer",
            vec![SDP],
            offer("chrome_whep_offer.sdp").into(),
            400,
            "nothing to publish",
        ),
    ];
    for (what, headers, body, code, says) in cases {
        let r = http(&h, "POST", "/whip/live", &headers, &body);
        assert_eq!(r.status, code, "{what}: {r:?}");
        assert!(r.body.contains(says), "{what}: {:?}", r.body);
        assert_eq!(r.header("Access-Control-Allow-Origin"), Some("*"), "{what}");
    }
    // A publisher's offer to WHEP, and WHEP before any publisher.
    let r = post(&h, "/whep/live", &good);
    assert_eq!(r.status, 400, "{r:?}");
    assert!(r.body.contains("nothing to play"), "{}", r.body);
    let r = post(&h, "/whep/live", &offer("chrome_whep_offer.sdp"));
    assert_eq!(r.status, 404, "{r:?}");
    assert!(r.body.contains("no publisher"), "{}", r.body);
    // Unknown sessions, paths and methods.
    for (m, path, code) in [
        ("DELETE", "/whip/live/whip-nosuchsession", 404),
        ("PATCH", "/whip/live/whip-nosuchsession", 404),
        ("DELETE", "/whep/live/whep-nosuchsession?region=eu", 404),
        ("DELETE", "/whip/live/someone-else", 404),
        ("GET", "/nowhere", 404),
        ("GET", "/whip/live", 405),
    ] {
        let r = http(&h, m, path, &[], b"");
        assert_eq!(r.status, code, "{m} {path}: {r:?}");
    }
    // Nothing was placed, nothing is on any bridge.
    assert!(placements(&url).await.is_empty());
    assert!(endpoints(&url).await.is_empty());
    let _ = std::fs::remove_dir_all(&data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_bridge_is_503_and_cors_preflights_are_answered() {
    let data = data_dir("whip-nobridge");
    // Reports every 5 s: a registration without a fingerprint stays up for the test.
    let ctl = control_with(&data, "127.0.0.1:0", &["--report-interval-ms", "5000"]);
    let url = format!("http://{}", ctl.field("listen"));
    let h = ctl.field("http");
    let r = post(&h, "/whip/live", &offer("chrome_whip_offer.sdp"));
    assert_eq!(r.status, 503, "{r:?}");
    assert!(r.body.contains("no bridge is registered"), "{}", r.body);
    assert_eq!(r.header("Retry-After"), Some("1"));
    // A viewer first is told there is no publisher, bridges or not.
    let r = post(&h, "/whep/live", &offer("chrome_whep_offer.sdp"));
    assert_eq!(r.status, 404, "{r:?}");
    // A bridge that registered no DTLS fingerprint takes no WebRTC participant.
    RegistryClient::new(channel(&url).await)
        .register_bridge(pb::RegisterBridgeRequest {
            bridge_id: "plain-1".into(),
            api_addr: "127.0.0.1:9".into(),
            media_addr: "127.0.0.1:9".into(),
            region: "eu".into(),
            capacity_pps: 1000.0,
            ..Default::default()
        })
        .await
        .unwrap();
    let r = post(&h, "/whip/live", &offer("chrome_whip_offer.sdp"));
    assert_eq!(r.status, 503, "{r:?}");
    assert!(r.body.contains("DTLS fingerprint"), "{}", r.body);
    assert!(placements(&url).await.is_empty());
    // CORS: the preflight, and the headers on every answer.
    let r = http(
        &h,
        "OPTIONS",
        "/whip/live",
        &[
            ("Origin", "https://example.invalid"),
            ("Access-Control-Request-Method", "POST"),
            ("Access-Control-Request-Headers", "content-type"),
        ],
        b"",
    );
    assert_eq!(r.status, 204, "{r:?}");
    assert_eq!(r.header("Access-Control-Allow-Origin"), Some("*"));
    let methods = r.header("Access-Control-Allow-Methods").unwrap();
    for m in ["POST", "DELETE", "PATCH", "OPTIONS"] {
        assert!(methods.contains(m), "{methods}");
    }
    let headers = r.header("Access-Control-Allow-Headers").unwrap();
    assert!(headers.contains("Content-Type") && headers.contains("Authorization"));
    assert!(
        r.header("Access-Control-Expose-Headers")
            .unwrap()
            .contains("Location")
    );
    let r = http(&h, "OPTIONS", "/whep/live/whep-x", &[], b"");
    assert_eq!(r.status, 204);
    // The page.
    let r = http(&h, "GET", "/", &[], b"");
    assert_eq!(r.status, 200);
    assert!(r.header("Content-Type").unwrap().starts_with("text/html"));
    assert!(r.body.contains("window.ringbridge"), "the page's API");
    assert!(!r.body.contains("<script src"), "no external script");
    let _ = std::fs::remove_dir_all(&data);
}

/// A STUN Binding request signed as the client of `answer` would sign it, from `sock` to the
/// answer's candidate; true if the bridge answers it with a success signed with the answer's
/// password (so the bridge holds exactly the answer's ufrag and password).
fn stun_check(sock: &UdpSocket, answer: &str, offer_ufrag: &str) -> bool {
    use ringbridge_dataplane::webrtc::stun::{
        BINDING, Class, IntegrityKey, Message, MessageWriter, TransactionId,
    };
    let ufrag = attr(answer, "ice-ufrag");
    let key = IntegrityKey::short_term(attr(answer, "ice-pwd"));
    let cand: Vec<&str> = attr(answer, "candidate").split(' ').collect();
    let to: SocketAddr = format!("{}:{}", cand[4], cand[5]).parse().unwrap();
    let mut buf = [0u8; 512];
    let tid = TransactionId::random();
    let mut w = MessageWriter::new(&mut buf, Class::Request, BINDING, tid).unwrap();
    w.username(&format!("{ufrag}:{offer_ufrag}")).unwrap();
    w.priority(1_845_501_695).unwrap();
    w.ice_controlling(7).unwrap();
    w.message_integrity(&key).unwrap();
    w.fingerprint().unwrap();
    let n = w.finish();
    sock.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut rx = [0u8; 1500];
    for _ in 0..10 {
        sock.send_to(&buf[..n], to).unwrap();
        if let Ok(m) = sock.recv(&mut rx)
            && let Ok(msg) = Message::parse(&rx[..m])
            && msg.class() == Class::SuccessResponse
            && msg.transaction_id() == tid
        {
            return msg.verify_integrity(&key).is_ok();
        }
    }
    false
}

/// Needs the data plane's side of WebRTC: bridges that register a DTLS fingerprint and take
/// `AddEndpointRequest.webrtc`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chrome_offer_publishes_a_viewer_plays_and_delete_ends_both() {
    let data = data_dir("whip-publish");
    let ctl = control(&data, "127.0.0.1:0");
    let url = format!("http://{}", ctl.field("listen"));
    let h = ctl.field("http");
    let eu = bridge(&url, "eu-1", "eu");
    let _us = bridge(&url, "us-1", "us");
    wait_bridges(&url, 2).await;
    let r = post(
        &h,
        "/whip/live%20one?region=eu",
        &offer("chrome_whip_offer.sdp"),
    );
    assert_eq!(r.status, 201, "{r:?}");
    assert_eq!(r.header("Content-Type"), Some("application/sdp"));
    let location = r.header("Location").unwrap().to_string();
    assert!(location.starts_with("/whip/live%20one/whip-"), "{location}");
    let publisher = location.rsplit('/').next().unwrap().to_string();
    let answer = r.body.clone();
    // The answer names the bridge the focus placed the publisher on: its fingerprint and media
    // address.
    let placed = get(&mut FocusClient::new(channel(&url).await), "live one")
        .await
        .unwrap();
    assert_eq!(placed.kind, "broadcast");
    assert_eq!(placed.stream.as_ref().unwrap().publisher, publisher);
    assert_eq!(placed.bridge_id, "eu-1");
    let media = placed.media_addr.clone();
    assert_eq!(
        attr(&answer, "candidate"),
        format!(
            "1 1 udp 2130706431 {} {} typ host",
            media.rsplit_once(':').unwrap().0,
            media.rsplit_once(':').unwrap().1
        )
    );
    let fp = eu.field("dtls").replacen(':', " ", 1);
    assert_eq!(attr(&answer, "fingerprint"), fp);
    assert_eq!(attr(&answer, "setup"), "passive");
    assert!(answer.contains("a=ice-lite\r\n") && answer.contains("a=recvonly\r\n"));
    // The bridge holds the publisher as a WebRTC endpoint with the offer's SSRCs, and answers a
    // check signed with the answer's credentials.
    let eps = endpoints(&url).await;
    let (on, ep) = eps
        .iter()
        .find(|(_, e)| e.endpoint_id == publisher)
        .unwrap();
    assert_eq!(on, "eu-1");
    assert!(ep.ssrcs.contains(&1437773623) && ep.ssrcs.contains(&3334011600));
    assert_eq!(ep.webrtc_state, "checking");
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    assert!(
        stun_check(&sock, &answer, "RZU1"),
        "the bridge got other credentials"
    );
    // A second publisher of the same stream: 409.
    let r = post(&h, "/whip/live%20one", &offer("firefox_whip_offer.sdp"));
    assert_eq!(r.status, 409, "{r:?}");
    assert!(r.body.contains("already has publisher"), "{}", r.body);
    // A viewer in us: placed on us-1, answered with the publisher's streams.
    let r = post(
        &h,
        "/whep/live%20one?region=us",
        &offer("chrome_whep_offer.sdp"),
    );
    assert_eq!(r.status, 201, "{r:?}");
    let viewer_at = r.header("Location").unwrap().to_string();
    assert!(
        viewer_at.starts_with("/whep/live%20one/whep-"),
        "{viewer_at}"
    );
    let viewer = viewer_at.rsplit('/').next().unwrap().to_string();
    assert!(
        r.body.contains("a=ssrc:1437773623 cname:IBmwshR0dXzff+g+"),
        "{}",
        r.body
    );
    assert!(r.body.contains("a=sendonly"));
    let eps = endpoints(&url).await;
    let (on, v) = eps.iter().find(|(_, e)| e.endpoint_id == viewer).unwrap();
    assert_eq!(on, "us-1");
    assert!(v.ssrcs.is_empty());
    let vsock = UdpSocket::bind("127.0.0.1:0").unwrap();
    assert!(stun_check(&vsock, &r.body, "Bfre"));
    // Trickle is accepted and ignored; DELETE ends sessions (with the POST's query too).
    assert_eq!(
        http(&h, "PATCH", &viewer_at, &[], b"a=candidate:x").status,
        204
    );
    assert_eq!(http(&h, "DELETE", &viewer_at, &[], b"").status, 200);
    assert_eq!(http(&h, "DELETE", &viewer_at, &[], b"").status, 404);
    assert_eq!(http(&h, "PATCH", &viewer_at, &[], b"").status, 404);
    let r = http(&h, "DELETE", &format!("{location}?region=eu"), &[], b"");
    assert_eq!(r.status, 200, "{r:?}");
    assert!(placements(&url).await.is_empty());
    let deadline = Instant::now() + Duration::from_secs(5);
    while !endpoints(&url).await.is_empty() {
        assert!(Instant::now() < deadline, "endpoints left on the bridges");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = std::fs::remove_dir_all(&data);
}

/// Needs the data plane's side of WebRTC (as above).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_whose_edge_dies_loses_its_session_and_posts_again() {
    let data = data_dir("whip-failover");
    let ctl = control(&data, "127.0.0.1:0");
    let url = format!("http://{}", ctl.field("listen"));
    let h = ctl.field("http");
    let _eu = bridge(&url, "eu-1", "eu");
    let mut us = [bridge(&url, "us-1", "us"), bridge(&url, "us-2", "us")];
    wait_bridges(&url, 3).await;
    let r = post(&h, "/whip/s?region=eu", &offer("chrome_whip_offer.sdp"));
    assert_eq!(r.status, 201, "{r:?}");
    let r = post(&h, "/whep/s?region=us", &offer("aiortc_whep_offer.sdp"));
    assert_eq!(r.status, 201, "{r:?}");
    let at = r.header("Location").unwrap().to_string();
    let viewer = at.rsplit('/').next().unwrap().to_string();
    let mut focus = FocusClient::new(channel(&url).await);
    let edge = get(&mut focus, "s")
        .await
        .unwrap()
        .bridges
        .into_iter()
        .find(|b| b.participants.contains(&viewer))
        .unwrap()
        .bridge_id;
    us[if edge == "us-1" { 0 } else { 1 }].kill();
    // The viewer is moved off the dead edge, and its session ends: a new DTLS session is needed.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let p = get(&mut focus, "s").await.unwrap();
        if !p.participants.contains(&viewer) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the moved viewer's session never ended: {p:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(http(&h, "DELETE", &at, &[], b"").status, 404);
    // The player POSTs again and gets a live edge.
    let r = post(&h, "/whep/s?region=us", &offer("aiortc_whep_offer.sdp"));
    assert_eq!(r.status, 201, "{r:?}");
    let again = r
        .header("Location")
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_string();
    let p = get(&mut focus, "s").await.unwrap();
    let now = p
        .bridges
        .iter()
        .find(|b| b.participants.contains(&again))
        .unwrap();
    assert_ne!(now.bridge_id, edge);
    let _ = std::fs::remove_dir_all(&data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_answers_503_naming_the_active_instance() {
    let etcd = Etcd::start("whip-standby");
    let a = control_on_etcd(&etcd, "s1", "whip-standby-a");
    let a_url = format!("http://{}", a.field("listen"));
    wait_active(&a_url).await;
    let b = control_on_etcd(&etcd, "s1", "whip-standby-b");
    let h = b.field("http");
    let r = post(&h, "/whip/live", &offer("chrome_whip_offer.sdp"));
    assert_eq!(r.status, 503, "{r:?}");
    assert!(r.body.contains("standby"), "{}", r.body);
    assert!(r.body.contains(&a.field("listen")), "{}", r.body);
    let r = http(&h, "DELETE", "/whip/live/whip-x", &[], b"");
    assert_eq!(r.status, 503, "{r:?}");
    // The page is served by any instance.
    assert_eq!(http(&h, "GET", "/", &[], b"").status, 200);
}

/// Rooms at the HTTP level: a publish session and a watch session from Chrome's offers; a
/// malformed offer, an unknown publisher, a bad last_n, a stream's name, an unknown session each
/// get an error for that client alone and the room stays as it was; the events stream lists the
/// room; DELETE ends sessions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_sessions_and_bad_room_requests_touch_only_the_client_that_made_them() {
    let data = data_dir("room-http");
    let ctl = control_with(&data, "127.0.0.1:0", &["--http", "127.0.0.1:0"]);
    let url = format!("http://{}", ctl.field("listen"));
    let h = ctl.field("http");
    let _b = bridge(&url, "eu-1", "eu");
    wait_bridges(&url, 1).await;
    let r = post(
        &h,
        "/room/r1/publish?region=eu",
        &offer("chrome_whip_offer.sdp"),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let loc = r.header("Location").unwrap().to_string();
    assert!(loc.starts_with("/room/r1/pub-"), "{loc}");
    let publisher = loc.rsplit('/').next().unwrap().to_string();
    assert!(r.body.contains("a=recvonly"), "{}", r.body);
    let w = post(
        &h,
        &format!("/room/r1/watch/{publisher}?region=eu&last_n=3"),
        &offer("chrome_whep_offer.sdp"),
    );
    assert_eq!(w.status, 201, "{}", w.body);
    assert!(
        w.body.contains("a=ssrc:"),
        "the publisher's streams: {}",
        w.body
    );
    let watch_loc = w.header("Location").unwrap().to_string();
    let before = placements(&url).await;
    assert_eq!(before[0].participants.len(), 2);

    let bad: [(&str, &str, String, u16, &str); 6] = [
        (
            "POST",
            "/room/r1/publish",
            "v=0\r\nnot sdp".into(),
            400,
            "offer",
        ),
        (
            "POST",
            "/room/r1/watch/pub-nobody",
            offer("chrome_whep_offer.sdp"),
            404,
            "no publisher",
        ),
        (
            "POST",
            "/room/r1/watch/PUB?last_n=many",
            offer("chrome_whep_offer.sdp"),
            400,
            "last_n",
        ),
        (
            "DELETE",
            "/room/r1/sub-nobody",
            String::new(),
            404,
            "no session",
        ),
        (
            "DELETE",
            "/room/r1/whatever",
            String::new(),
            404,
            "no session",
        ),
        (
            "POST",
            "/room/r1/watch/PUB",
            offer("chrome_whip_offer.sdp"),
            400,
            "offer",
        ),
    ];
    for (method, path, body, code, says) in bad {
        let path = path.replace("PUB", &publisher);
        let r = http(&h, method, &path, &[SDP], body.as_bytes());
        assert_eq!(r.status, code, "{method} {path}: {}", r.body);
        assert!(r.body.contains(says), "{method} {path}: {}", r.body);
    }
    // A stream's name is not a room.
    let s = post(&h, "/whip/live?region=eu", &offer("chrome_whip_offer.sdp"));
    assert_eq!(s.status, 201, "{}", s.body);
    let r = post(&h, "/room/live/publish", &offer("chrome_whip_offer.sdp"));
    assert_eq!(r.status, 409, "{}", r.body);
    // The room is as it was.
    let after = placements(&url).await;
    let room = after.iter().find(|p| p.conference == "r1").unwrap();
    assert_eq!(room.participants, before[0].participants);

    // The events stream's first message lists the room.
    let mut s = TcpStream::connect(&h).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET /room/r1/events HTTP/1.1\r\nHost: {h}\r\n\r\n").unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(10);
    while !String::from_utf8_lossy(&got).contains("\n\n")
        || !String::from_utf8_lossy(&got).contains("data:")
    {
        assert!(
            Instant::now() < deadline,
            "no event: {}",
            String::from_utf8_lossy(&got)
        );
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&got);
    assert!(text.contains("text/event-stream"), "{text}");
    let data = text.lines().find_map(|l| l.strip_prefix("data:")).unwrap();
    let v: serde_json::Value = serde_json::from_str(data.trim()).unwrap();
    assert_eq!(v["publishers"][0]["session"], publisher.as_str());
    assert_eq!(v["sessions"].as_object().unwrap().len(), 2);

    for l in [watch_loc, loc] {
        let r = http(&h, "DELETE", &l, &[], b"");
        assert_eq!(r.status, 200, "{l}: {}", r.body);
    }
    assert!(placements(&url).await.iter().all(|p| p.conference != "r1"));
    let _ = std::fs::remove_dir_all(data);
}
