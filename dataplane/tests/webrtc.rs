//! WebRTC endpoints end to end against a real `ringbridge` process: test clients written here do
//! what a browser does on the media port, over real loopback UDP sockets: ICE checks built with
//! our own STUN writer (USERNAME, PRIORITY, USE-CANDIDATE, ICE-CONTROLLING, MESSAGE-INTEGRITY
//! with the bridge's ice-pwd, FINGERPRINT), then a DTLS handshake with dimpl's *client* and a
//! certificate of their own, then SRTP protected with the keys that handshake exported. Both
//! engines. What is checked: the publisher's SRTP reaches the receive-only viewer, decrypts
//! with the viewer's keys, with the viewer's rewrite applied (payload type 96 -> 100, extension
//! id 3 removed, one-byte and two-byte forms); a check with a wrong password or an unknown
//! ufrag gets no answer and is counted; a client whose certificate does not match the offer's
//! fingerprint fails (counted) and affects nobody else; an endpoint that stops sending consent
//! checks stops receiving (`expired`, counted) until a check restores it; a flood of 20 000
//! garbage STUN and DTLS datagrams does not cost one forwarded media packet; IPv6; and the
//! API's checks of `webrtc` and `rewrite` (AddEndpoint and Apply, RemoveEndpoint and
//! DeleteConference taking the endpoints' agents).

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{Bridge, Party, assert_exact, exchange};
use dimpl::{Dtls, DtlsCertificate, Output, SrtpProfile};
use ringbridge_dataplane::srtp::{Profile, Session};
use ringbridge_dataplane::webrtc::dtls::{Fingerprint, HashFunction};
use ringbridge_dataplane::webrtc::stun::{
    self, Class, IntegrityKey, Message, MessageWriter, TransactionId,
};
use ringbridge_proto::v1 as pb;

const PUB_SSRC: u32 = 0x1111_2222;

/// Which DTLS versions a client offers.
#[derive(Clone, Copy)]
enum Version {
    /// DTLS 1.2 only (Chrome, Safari).
    V12,
    /// Both, getting 1.3 (recent Firefox).
    Auto,
}

/// The SRTP sessions a client derives from its export: it protects with `tx` (the client's
/// write key) and unprotects what the bridge sends with `rx` (the server's).
struct Keys {
    tx: Session,
    rx: Session,
}

/// A WebRTC client on one UDP socket.
struct Client {
    name: String,
    sock: UdpSocket,
    /// The bridge's ufrag and ice-pwd for this endpoint (the answer's).
    local_ufrag: String,
    local_pwd: String,
    /// The client's own ufrag (the offer's).
    remote_ufrag: String,
    cert: DtlsCertificate,
    keys: Option<Keys>,
}

impl Client {
    fn new(name: &str) -> Self {
        Self::on(name, "127.0.0.1")
    }

    /// A client whose socket binds `ip`.
    fn on(name: &str, ip: &str) -> Self {
        let sock = UdpSocket::bind((ip.parse::<std::net::IpAddr>().unwrap(), 0)).unwrap();
        socket2::SockRef::from(&sock)
            .set_recv_buffer_size(4 << 20)
            .unwrap();
        Client {
            name: name.into(),
            sock,
            local_ufrag: format!("br{name}"),
            local_pwd: format!("{name}{}", "P".repeat(24)),
            remote_ufrag: format!("cl{name}"),
            cert: dimpl::certificate::generate_self_signed_certificate().unwrap(),
            keys: None,
        }
    }

    fn addr(&self) -> SocketAddr {
        self.sock.local_addr().unwrap()
    }

    /// `a=fingerprint` of this client's certificate.
    fn fingerprint(&self) -> String {
        Fingerprint::of(HashFunction::Sha256, &self.cert.certificate).to_string()
    }

    /// Its AddEndpoint (`expect_fp`: the fingerprint the bridge is told to expect).
    fn request(
        &self,
        conf: &str,
        ssrcs: Vec<u32>,
        rewrite: Option<pb::Rewrite>,
        expect_fp: String,
    ) -> pb::AddEndpointRequest {
        pb::AddEndpointRequest {
            conference_id: conf.into(),
            endpoint_id: self.name.clone(),
            ssrcs,
            webrtc: Some(pb::WebRtcParams {
                local_ufrag: self.local_ufrag.clone(),
                local_pwd: self.local_pwd.clone(),
                remote_ufrag: self.remote_ufrag.clone(),
                remote_fingerprint: expect_fp,
            }),
            rewrite,
            ..Default::default()
        }
    }

    async fn join(&self, b: &mut Bridge, conf: &str, ssrcs: Vec<u32>, rw: Option<pb::Rewrite>) {
        let r = b
            .client
            .add_endpoint(self.request(conf, ssrcs, rw, self.fingerprint()))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.media_addr, b.media.to_string());
    }

    fn username(&self) -> String {
        format!("{}:{}", self.local_ufrag, self.remote_ufrag)
    }

    /// Sends a check and returns the bridge's answer, if one comes within `wait` (other
    /// datagrams meanwhile are skipped).
    fn check(
        &self,
        media: SocketAddr,
        username: &str,
        pwd: &str,
        nominate: bool,
        wait: Duration,
    ) -> Option<Vec<u8>> {
        let tid = TransactionId::random();
        self.sock
            .send_to(&binding_request(username, pwd, nominate, tid), media)
            .unwrap();
        let until = Instant::now() + wait;
        let mut buf = [0u8; 2048];
        while let Some(left) = until.checked_duration_since(Instant::now()) {
            self.sock
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .unwrap();
            let Ok(n) = self.sock.recv(&mut buf) else {
                break;
            };
            if buf[0] <= 3 && Message::parse(&buf[..n]).unwrap().transaction_id() == tid {
                return Some(buf[..n].to_vec());
            }
        }
        None
    }

    /// ICE (a nominating check, answered and verified) then DTLS as the client with `version`;
    /// returns the fingerprint of the certificate the bridge presented once connected, or
    /// `None` if the handshake did not complete within `limit`.
    fn connect(&mut self, media: SocketAddr, version: Version, limit: Duration) -> Option<String> {
        let (username, pwd) = (self.username(), self.local_pwd.clone());
        let answer = self
            .check(media, &username, &pwd, true, Duration::from_secs(5))
            .expect("the bridge answers a valid check");
        let m = Message::parse(&answer).unwrap();
        assert_eq!(m.class(), Class::SuccessResponse);
        m.verify_integrity(&IntegrityKey::short_term(&pwd)).unwrap();
        m.verify_fingerprint().unwrap();
        assert_eq!(m.xor_mapped_address(), Some(self.addr()));

        let config = Arc::new(dimpl::Config::default());
        let now = Instant::now();
        let mut dtls = match version {
            Version::V12 => Dtls::new_12(config, self.cert.clone(), now),
            Version::Auto => Dtls::new_auto(config, self.cert.clone(), now),
        };
        dtls.set_active(true);
        let (mut connected, mut peer, mut material) = (false, None, None);
        let mut out = vec![0u8; 2048];
        let mut buf = [0u8; 2048];
        let until = Instant::now() + limit;
        while Instant::now() < until {
            // The client gives up on its own deadline when the bridge went quiet (a failed
            // handshake): that ends the loop as well.
            if dtls.handle_timeout(Instant::now()).is_err() {
                break;
            }
            loop {
                match dtls.poll_output(&mut out) {
                    Output::Packet(p) => {
                        self.sock.send_to(p, media).unwrap();
                    }
                    Output::Connected => connected = true,
                    Output::PeerCert(der) => {
                        peer = Some(Fingerprint::of(HashFunction::Sha256, der).to_string())
                    }
                    Output::KeyingMaterial(km, p) => material = Some((km.to_vec(), p)),
                    Output::Timeout(_) => break,
                    _ => {}
                }
            }
            if connected && material.is_some() {
                break;
            }
            self.sock
                .set_read_timeout(Some(Duration::from_millis(10)))
                .unwrap();
            if let Ok(n) = self.sock.recv(&mut buf)
                && (20..=63).contains(&buf[0])
            {
                let _ = dtls.handle_packet(&buf[..n]);
            }
        }
        let (km, p) = material.filter(|_| connected)?;
        let profile = match p {
            SrtpProfile::AEAD_AES_256_GCM => Profile::AeadAes256Gcm,
            SrtpProfile::AEAD_AES_128_GCM => Profile::AeadAes128Gcm,
            SrtpProfile::AES128_CM_SHA1_80 => Profile::AesCm128HmacSha1_80,
            other => panic!("unexpected profile {other:?}"),
        };
        // RFC 5764 section 4.2: client key | server key | client salt | server salt.
        let (k, s) = (profile.key_len(), profile.salt_len());
        self.keys = Some(Keys {
            tx: Session::new(profile, &km[..k], &km[2 * k..2 * k + s]).unwrap(),
            rx: Session::new(profile, &km[k..2 * k], &km[2 * k + s..]).unwrap(),
        });
        peer
    }

    /// Sends `plain` protected with the client's keys (packet index = sequence number).
    fn send_srtp(&self, media: SocketAddr, plain: &[u8]) {
        let seq = u16::from_be_bytes([plain[2], plain[3]]);
        let mut out = vec![0u8; plain.len() + 32];
        let keys = self.keys.as_ref().expect("connected");
        let n = keys
            .tx
            .protect_rtp(plain, u64::from(seq), &mut out)
            .unwrap();
        self.sock.send_to(&out[..n], media).unwrap();
    }

    /// Receives up to `n` SRTP packets within `wait` (skipping STUN answers) and unprotects
    /// them with the client's keys.
    fn receive(&self, n: usize, wait: Duration) -> Vec<Vec<u8>> {
        let keys = self.keys.as_ref().expect("connected");
        let mut got = Vec::new();
        let until = Instant::now() + wait;
        let mut buf = [0u8; 2048];
        while got.len() < n
            && let Some(left) = until.checked_duration_since(Instant::now())
        {
            self.sock
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .unwrap();
            let Ok(len) = self.sock.recv(&mut buf) else {
                break;
            };
            if buf[0] >> 6 != 2 {
                continue;
            }
            let mut pkt = buf[..len].to_vec();
            let seq = u16::from_be_bytes([pkt[2], pkt[3]]);
            let m = keys
                .rx
                .unprotect_rtp(&mut pkt, u64::from(seq))
                .expect("the viewer's keys unprotect what the bridge sends it");
            pkt.truncate(m);
            got.push(pkt);
        }
        got
    }

    /// Sends a consent check (no nomination) every 200 ms until `stop`, without reading the
    /// answers (whoever reads the socket skips them).
    fn keepalive(&self, media: SocketAddr, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
        let sock = self.sock.try_clone().unwrap();
        let (username, pwd) = (self.username(), self.local_pwd.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let check = binding_request(&username, &pwd, false, TransactionId::random());
                sock.send_to(&check, media).unwrap();
                std::thread::sleep(Duration::from_millis(200));
            }
        })
    }
}

/// A Binding request as a controlling browser sends it.
fn binding_request(username: &str, pwd: &str, nominate: bool, tid: TransactionId) -> Vec<u8> {
    let mut buf = vec![0u8; 512];
    let mut w = MessageWriter::new(&mut buf, Class::Request, stun::BINDING, tid).unwrap();
    w.username(username).unwrap();
    w.priority(0x6e7f_1eff).unwrap();
    if nominate {
        w.use_candidate().unwrap();
    }
    w.ice_controlling(0x1234_5678_9abc_def0).unwrap();
    w.message_integrity(&IntegrityKey::short_term(pwd)).unwrap();
    w.fingerprint().unwrap();
    let n = w.finish();
    buf.truncate(n);
    buf
}

/// The publisher's RTP packet `seq`: payload type 96, marker, a header extension carrying id 1
/// (3 bytes) and id 3 (2 bytes), in the one-byte or the two-byte form.
fn media(seq: u16, two_byte: bool) -> Vec<u8> {
    let mut p = vec![0x90, 0x80 | 96];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&(u32::from(seq) * 3000).to_be_bytes());
    p.extend_from_slice(&PUB_SSRC.to_be_bytes());
    if two_byte {
        p.extend_from_slice(&[0x10, 0x00, 0, 3]);
        p.extend_from_slice(&[1, 3, 0xa1, 0xa2, 0xa3, 3, 2, 0xb1, 0xb2, 0, 0, 0]);
    } else {
        p.extend_from_slice(&[0xbe, 0xde, 0, 2]);
        p.extend_from_slice(&[0x12, 0xa1, 0xa2, 0xa3, 0x31, 0xb1, 0xb2, 0]);
    }
    p.extend_from_slice(format!("frame {seq} of the publisher").as_bytes());
    p
}

/// What the viewer must get for `media(seq, two_byte)`: payload type 100 (marker kept), the
/// id-3 element overwritten with padding, nothing else changed.
fn rewritten(seq: u16, two_byte: bool) -> Vec<u8> {
    let mut p = media(seq, two_byte);
    p[1] = 0x80 | 100;
    let id3 = if two_byte {
        16 + 5..16 + 9
    } else {
        16 + 4..16 + 7
    };
    p[id3].fill(0);
    p
}

fn viewer_rewrite() -> pb::Rewrite {
    pb::Rewrite {
        payload_types: vec![pb::IdMap { from: 96, to: 100 }],
        extensions: vec![pb::IdMap { from: 3, to: 0 }],
    }
}

/// The endpoint `id` as ListConferences shows it.
async fn endpoint(b: &mut Bridge, id: &str) -> pb::EndpointInfo {
    b.list()
        .await
        .conferences
        .into_iter()
        .flat_map(|c| c.endpoints)
        .find(|e| e.endpoint_id == id)
        .unwrap_or_else(|| panic!("no endpoint {id}"))
}

/// Waits (at most 10 s) until endpoint `id` is in `state`.
async fn wait_state(b: &mut Bridge, id: &str, state: &str) -> pb::EndpointInfo {
    for _ in 0..400 {
        let e = endpoint(b, id).await;
        if e.webrtc_state == state {
            return e;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{id} never became {state}: {:?}", endpoint(b, id).await)
}

async fn total(b: &mut Bridge) -> pb::Counters {
    b.stats().await.total.unwrap()
}

/// A connected publisher (DTLS 1.2, SSRC `PUB_SSRC`) and a connected receive-only viewer
/// (DTLS 1.3, with `viewer_rewrite`) in conference `conf`, each at its nominated address, on
/// the bridge's media IP.
async fn connected_pair(b: &mut Bridge, conf: &str) -> (Client, Client) {
    let ip = b.media.ip().to_string();
    let mut publisher = Client::on("pub", &ip);
    let mut viewer = Client::on("view", &ip);
    publisher.join(b, conf, vec![PUB_SSRC], None).await;
    viewer.join(b, conf, vec![], Some(viewer_rewrite())).await;
    assert_eq!(endpoint(b, "view").await.webrtc_state, "checking");
    let limit = Duration::from_secs(10);
    let bridge_fp = b
        .ready
        .get("dtls")
        .expect("dtls= in the ready line")
        .to_string();
    for (c, v) in [(&mut publisher, Version::V12), (&mut viewer, Version::Auto)] {
        let presented = c.connect(b.media, v, limit).expect("handshake completes");
        // The ready line's `dtls=sha-256:AB:...` is the certificate the bridge presents.
        assert_eq!(presented.replacen(' ', ":", 1), bridge_fp);
    }
    for c in [&publisher, &viewer] {
        let e = wait_state(b, &c.name, "connected").await;
        assert_eq!(e.remote_addr, c.addr().to_string(), "the nominated address");
        assert!(!e.srtp_profile.is_empty());
    }
    (publisher, viewer)
}

async fn publisher_to_viewer_with_rewrite(engine: &str) {
    let mut b = Bridge::start(engine).await;
    b.conference("w").await;
    let (publisher, viewer) = connected_pair(&mut b, "w").await;
    let n = 60u16;
    for seq in 0..n {
        publisher.send_srtp(b.media, &media(seq, seq % 2 == 1));
    }
    let mut got = viewer.receive(n.into(), Duration::from_secs(10));
    got.sort_by_key(|p| u16::from_be_bytes([p[2], p[3]]));
    let want: Vec<Vec<u8>> = (0..n).map(|s| rewritten(s, s % 2 == 1)).collect();
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(
            g, w,
            "viewer's copy: payload type 100, id 3 removed, the rest as sent"
        );
    }
    // Never back to the sender.
    assert!(publisher.receive(1, Duration::from_millis(200)).is_empty());

    let t = total(&mut b).await;
    assert_eq!(t.dtls_handshakes, 2);
    assert!(
        t.stun_rx >= 2 && t.stun_answered >= 2 && t.dtls_rx > 0,
        "{t:?}"
    );
    assert_eq!(
        (t.stun_rejected, t.dtls_failed, t.ice_consent_expired),
        (0, 0, 0)
    );
    assert_eq!(t.drops.unwrap().transport_queue_full, 0);

    // RemoveEndpoint takes the viewer's agent: its checks are unknown from then on.
    b.client
        .remove_endpoint(pb::RemoveEndpointRequest {
            conference_id: "w".into(),
            endpoint_id: "view".into(),
        })
        .await
        .unwrap();
    let (user, pwd) = (viewer.username(), viewer.local_pwd.clone());
    assert!(
        viewer
            .check(b.media, &user, &pwd, true, Duration::from_millis(300))
            .is_none()
    );
    assert_eq!(total(&mut b).await.stun_rejected, 1);
}

async fn refused_checks_and_a_wrong_certificate(engine: &str) {
    let mut b = Bridge::start_with_metrics(engine, &[]).await;
    b.conference("w").await;
    let (publisher, viewer) = connected_pair(&mut b, "w").await;

    // A check with the wrong password, and one for an unknown ufrag: no answer, counted.
    let stranger = Client::new("who");
    let wrong = "wrongwrongwrongwrongwrong";
    let wait = Duration::from_millis(300);
    assert!(
        stranger
            .check(b.media, &publisher.username(), wrong, true, wait)
            .is_none()
    );
    assert!(
        stranger
            .check(b.media, "nobody:clwho", wrong, true, wait)
            .is_none()
    );
    let t = total(&mut b).await;
    assert_eq!(t.stun_rejected, 2);
    let reason = |r: &str| format!("ringbridge_stun_rejected_total{{reason=\"{r}\"}}");
    assert_eq!(b.metric(&reason("wrong_password")), 1.0);
    assert_eq!(b.metric(&reason("unknown_ufrag")), 1.0);

    // A client whose certificate is not the one the offer named: its ICE passes, its DTLS
    // fails, it never gets an address.
    let mut intruder = Client::new("intruder");
    let someone_else = Client::new("other").fingerprint();
    b.client
        .add_endpoint(intruder.request("w", vec![7], None, someone_else))
        .await
        .unwrap();
    assert!(
        intruder
            .connect(b.media, Version::V12, Duration::from_secs(2))
            .is_none()
    );
    let e = wait_state(&mut b, "intruder", "failed").await;
    assert_eq!((e.remote_addr.as_str(), e.srtp_profile.as_str()), ("", ""));
    let t = total(&mut b).await;
    assert_eq!((t.dtls_failed, t.dtls_handshakes), (1, 2));
    assert_eq!(
        b.metric("ringbridge_dtls_failed_total{reason=\"fingerprint_mismatch\"}"),
        1.0
    );

    // Nothing else is affected: both stay connected, media flows.
    for id in ["pub", "view"] {
        assert_eq!(endpoint(&mut b, id).await.webrtc_state, "connected");
    }
    for seq in 0..10 {
        publisher.send_srtp(b.media, &media(seq, false));
    }
    assert_eq!(viewer.receive(10, Duration::from_secs(5)).len(), 10);
}

async fn consent_expiry_stops_the_viewer(engine: &str) {
    let mut b = Bridge::start_with(engine, "127.0.0.1", &["--ice-consent-ms", "1500"]).await;
    b.conference("w").await;
    let mut publisher = Client::new("pub");
    let mut viewer = Client::new("view");
    publisher.join(&mut b, "w", vec![PUB_SSRC], None).await;
    viewer
        .join(&mut b, "w", vec![], Some(viewer_rewrite()))
        .await;
    // Both keep consent from their first check on, as browsers do, until the viewer stops.
    let limit = Duration::from_secs(10);
    let stop_pub = Arc::new(AtomicBool::new(false));
    let stop_view = Arc::new(AtomicBool::new(false));
    publisher.connect(b.media, Version::V12, limit).unwrap();
    let kp = publisher.keepalive(b.media, stop_pub.clone());
    viewer.connect(b.media, Version::V12, limit).unwrap();
    let kv = viewer.keepalive(b.media, stop_view.clone());
    wait_state(&mut b, "pub", "connected").await;
    wait_state(&mut b, "view", "connected").await;
    publisher.send_srtp(b.media, &media(1, false));
    assert_eq!(viewer.receive(1, Duration::from_secs(5)).len(), 1);

    // The viewer stops checking: within the consent timeout it loses its address.
    stop_view.store(true, Ordering::Relaxed);
    kv.join().unwrap();
    let e = wait_state(&mut b, "view", "expired").await;
    assert_eq!(e.remote_addr, "");
    assert_eq!(total(&mut b).await.ice_consent_expired, 1);
    assert_eq!(endpoint(&mut b, "pub").await.webrtc_state, "connected");
    for seq in 2..12 {
        publisher.send_srtp(b.media, &media(seq, false));
    }
    assert!(
        viewer.receive(1, Duration::from_millis(500)).is_empty(),
        "an expired endpoint receives nothing"
    );

    // A valid check restores it (same keys, no new handshake).
    let (user, pwd) = (viewer.username(), viewer.local_pwd.clone());
    assert!(
        viewer
            .check(b.media, &user, &pwd, false, Duration::from_secs(2))
            .is_some()
    );
    wait_state(&mut b, "view", "connected").await;
    publisher.send_srtp(b.media, &media(20, true));
    let got = viewer.receive(1, Duration::from_secs(5));
    assert_eq!(got, [rewritten(20, true)]);
    stop_pub.store(true, Ordering::Relaxed);
    kp.join().unwrap();
    assert_eq!(total(&mut b).await.dtls_handshakes, 2);
}

struct XorShift(u64);

impl XorShift {
    fn fill(&mut self, b: &mut [u8]) {
        for x in b {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            *x = self.0 as u8;
        }
    }
}

const FLOOD: u64 = 20_000;

async fn garbage_stun_and_dtls_flood(engine: &str) {
    let mut b = Bridge::start(engine).await;
    let ps: Vec<Party> = (0..3)
        .map(|i| Party::new(&format!("m{i}"), 70 + i))
        .collect();
    b.conference("live").await;
    for p in &ps {
        b.add("live", p, false).await;
    }
    let stranger = Party::new("stranger", 0xbad);
    let to = b.media;
    let flood = std::thread::spawn(move || {
        let mut rng = XorShift(0x2545_f491_4f6c_dd1d);
        let mut buf = [0u8; 400];
        for i in 0..FLOOD {
            rng.fill(&mut buf);
            // Half STUN (first byte 0-3), half DTLS (20-63), random lengths and contents.
            buf[0] = if i % 2 == 0 {
                buf[0] % 4
            } else {
                20 + buf[0] % 44
            };
            let len = 1 + (buf[1] as usize * 7 + i as usize) % 399;
            stranger.send(to, &buf[..len]);
            if i % 100 == 99 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    });
    let refs: Vec<&Party> = ps.iter().collect();
    let count = 300;
    let got = exchange(&refs, b.media, count, &[2 * count as usize; 3]);
    flood.join().unwrap();
    assert_exact(&refs, &got, count);

    // Every garbage datagram is accounted for: rejected or dropped by the transport, or
    // dropped because its queue was full; none was forwarded or answered.
    let mut t = total(&mut b).await;
    for _ in 0..200 {
        let d = t.drops.unwrap().transport_queue_full;
        if t.stun_rejected + t.dtls_dropped + d == FLOOD {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
        t = total(&mut b).await;
    }
    let full = t.drops.unwrap().transport_queue_full;
    assert_eq!(t.stun_rx + t.dtls_rx, FLOOD, "{t:?}");
    // The kernel steered the flood past the workers (reuseport cBPF): no worker received any
    // of it, so none was woken for it.
    for w in b.stats().await.workers {
        let c = w.counters.unwrap();
        assert_eq!((c.stun_rx, c.dtls_rx), (0, 0), "worker {}", w.worker);
    }
    assert_eq!(t.stun_rejected + t.dtls_dropped + full, FLOOD, "{t:?}");
    assert_eq!((t.stun_answered, t.dtls_handshakes), (0, 0));
    assert_eq!(t.tx_packets, 6 * u64::from(count));

    // The transport is not wedged: a WebRTC endpoint still connects and receives.
    b.conference("w").await;
    let (publisher, viewer) = connected_pair(&mut b, "w").await;
    publisher.send_srtp(b.media, &media(5, false));
    assert_eq!(
        viewer.receive(1, Duration::from_secs(5)),
        [rewritten(5, false)]
    );
}

async fn add_endpoint_validation_and_apply(engine: &str) {
    let mut b = Bridge::start(engine).await;
    b.conference("w").await;
    let c = Client::new("valid");
    let ok = c.request("w", vec![], None, c.fingerprint());
    let with = |f: &dyn Fn(&mut pb::AddEndpointRequest)| {
        let mut r = ok.clone();
        f(&mut r);
        r
    };
    let webrtc = |f: &dyn Fn(&mut pb::WebRtcParams)| with(&|r| f(r.webrtc.as_mut().unwrap()));
    let srtp = pb::SrtpParams {
        profile: "AEAD_AES_128_GCM".into(),
        endpoint_key: vec![1; 28],
        bridge_key: vec![],
    };
    let plain_rewrite = pb::AddEndpointRequest {
        conference_id: "w".into(),
        endpoint_id: "plain".into(),
        ssrcs: vec![9],
        remote_addr: "127.0.0.1:4000".into(),
        rewrite: Some(viewer_rewrite()),
        ..Default::default()
    };
    let cases = [
        (
            webrtc(&|w| w.local_ufrag = "abc".into()),
            "webrtc.local_ufrag",
        ),
        (
            webrtc(&|w| w.local_ufrag = "a:bcd".into()),
            "webrtc.local_ufrag",
        ),
        (
            webrtc(&|w| w.local_pwd = "short".into()),
            "webrtc.local_pwd",
        ),
        (webrtc(&|w| w.remote_ufrag.clear()), "webrtc.remote_ufrag"),
        (
            webrtc(&|w| w.remote_fingerprint = "sha-256 nonsense".into()),
            "webrtc.remote_fingerprint",
        ),
        (
            with(&|r| r.remote_addr = "127.0.0.1:4000".into()),
            "remote_addr",
        ),
        (with(&|r| r.srtp = Some(srtp.clone())), "srtp"),
        (
            with(&|r| {
                r.rewrite = Some(pb::Rewrite {
                    payload_types: vec![pb::IdMap { from: 200, to: 96 }],
                    extensions: vec![],
                })
            }),
            "rewrite.payload_types",
        ),
        (plain_rewrite, "rewrite:"),
    ];
    for (req, field) in cases {
        let e = b.client.add_endpoint(req).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{field}: {e:?}");
        assert!(e.message().starts_with(field), "{field}: {}", e.message());
    }
    b.client.add_endpoint(ok.clone()).await.unwrap();
    // The local ufrag routes checks: unique on the bridge.
    b.conference("other").await;
    let e = b
        .client
        .add_endpoint(with(&|r| {
            r.conference_id = "other".into();
            r.endpoint_id = "again".into();
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::AlreadyExists);
    assert!(
        e.message().starts_with("webrtc.local_ufrag"),
        "{}",
        e.message()
    );

    // Through Apply as through AddEndpoint: the transport knows the endpoint when it returns.
    let batch = Client::new("batch");
    let add = |r: pb::AddEndpointRequest| pb::Change {
        change: Some(pb::change::Change::AddEndpoint(r)),
    };
    let results = b
        .client
        .apply(pb::ApplyRequest {
            changes: vec![
                add(batch.request("other", vec![5], None, batch.fingerprint())),
                add(with(&|r| r.endpoint_id = "dup".into())),
            ],
        })
        .await
        .unwrap()
        .into_inner()
        .results;
    let codes: Vec<i32> = results.iter().map(|r| r.code).collect();
    assert_eq!(
        codes,
        [tonic::Code::Ok as i32, tonic::Code::AlreadyExists as i32]
    );
    let wait = Duration::from_secs(2);
    let (user, pwd) = (batch.username(), batch.local_pwd.clone());
    assert!(batch.check(b.media, &user, &pwd, true, wait).is_some());
    wait_state(&mut b, "batch", "handshaking").await;
    assert_eq!(endpoint(&mut b, "valid").await.webrtc_state, "checking");

    // DeleteConference removes its endpoints' agents: their checks go unanswered.
    b.client
        .delete_conference(pb::DeleteConferenceRequest {
            conference_id: "other".into(),
        })
        .await
        .unwrap();
    let wait = Duration::from_millis(300);
    assert!(batch.check(b.media, &user, &pwd, true, wait).is_none());
    let (user, pwd) = (c.username(), c.local_pwd.clone());
    assert!(c.check(b.media, &user, &pwd, false, wait).is_some());
}

async fn ipv6_endpoints(engine: &str) {
    let mut b = Bridge::start_on(engine, "::1").await;
    b.conference("w").await;
    let (publisher, viewer) = connected_pair(&mut b, "w").await;
    assert!(
        endpoint(&mut b, "view")
            .await
            .remote_addr
            .starts_with("[::1]:")
    );
    for seq in 0..10 {
        publisher.send_srtp(b.media, &media(seq, seq % 2 == 0));
    }
    let mut got = viewer.receive(10, Duration::from_secs(5));
    got.sort_by_key(|p| u16::from_be_bytes([p[2], p[3]]));
    let want: Vec<Vec<u8>> = (0..10).map(|s| rewritten(s, s % 2 == 0)).collect();
    assert_eq!(got, want);
}

per_engine!(
    add_endpoint_validation_and_apply,
    ipv6_endpoints,
    publisher_to_viewer_with_rewrite,
    refused_checks_and_a_wrong_certificate,
    consent_expiry_stops_the_viewer,
    garbage_stun_and_dtls_flood,
);
