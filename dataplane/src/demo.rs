//! `ringbridge demo` (what `make run` shows): starts a bridge, programs a 3-party conference
//! through its own gRPC API like any client would, sends RTP and RTCP from three loopback UDP
//! sockets, and prints what each participant received and the bridge's counters. alice and bob
//! use plain RTP with configured addresses; carol uses SRTP (AEAD_AES_128_GCM) and is latched.

use std::collections::BTreeMap;
use std::net::UdpSocket;
use std::time::{Duration, Instant};

use ringbridge_proto::v1 as pb;
use ringbridge_proto::v1::bridge_client::BridgeClient;

use crate::bridge::{self, Config};
use crate::srtp::{Profile, Session, replay};
use crate::testkit;

/// carol's SRTP profile and keys (master key + salt): what she sends with, what she receives with.
const PROFILE: Profile = Profile::AeadAes128Gcm;
const CAROL_KEY: [u8; 28] = *b"carol-sends-with-this-key+sa";
const BRIDGE_KEY: [u8; 28] = *b"bridge-sends-carol-this-key!";

fn session(key: &[u8; 28]) -> Session {
    let (k, s) = key.split_at(PROFILE.key_len());
    Session::new(PROFILE, k, s).expect("valid key lengths")
}

/// What participant `i` puts on the wire for the plain packet `pkt` (carol protects it).
fn wire(i: usize, pkt: &[u8], index: u64) -> Vec<u8> {
    if i != 2 {
        return pkt.to_vec();
    }
    let mut out = vec![0u8; pkt.len() + 32];
    let s = session(&CAROL_KEY);
    let n = if pkt[1] >= 192 && pkt[1] <= 223 {
        s.protect_rtcp(pkt, index as u32, &mut out)
    } else {
        s.protect_rtp(pkt, index, &mut out)
    }
    .expect("room for SRTP");
    out.truncate(n);
    out
}

const NAMES: [&str; 3] = ["alice", "bob", "carol"];

/// Runs the demo; `packets` RTP packets per participant.
pub async fn run(config: Config, packets: u32) -> anyhow::Result<()> {
    let running = bridge::start(config).await?;
    let (engine, api, media) = (running.engine, running.api, running.advertise);
    println!(
        "bridge: engine={engine} media={media} api={api} workers={}",
        running.workers
    );
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(running.serve(async {
        let _ = stop_rx.await;
    }));
    let mut client = BridgeClient::connect(format!("http://{api}")).await?;
    client
        .create_conference(pb::CreateConferenceRequest {
            conference_id: "demo".into(),
        })
        .await?;
    let mut socks = Vec::new();
    for (i, name) in NAMES.iter().enumerate() {
        let s = UdpSocket::bind((media.ip(), 0))?;
        s.set_read_timeout(Some(Duration::from_millis(300)))?;
        // carol gives no address: the bridge latches it from her first packet.
        let remote_addr = if i == 2 {
            String::new()
        } else {
            s.local_addr()?.to_string()
        };
        let r = client
            .add_endpoint(pb::AddEndpointRequest {
                conference_id: "demo".into(),
                endpoint_id: (*name).into(),
                ssrcs: vec![ssrc(i)],
                remote_addr: remote_addr.clone(),
                srtp: (i == 2).then(|| pb::SrtpParams {
                    profile: PROFILE.name().into(),
                    endpoint_key: CAROL_KEY.to_vec(),
                    bridge_key: BRIDGE_KEY.to_vec(),
                }),
                ..Default::default()
            })
            .await?
            .into_inner();
        println!(
            "AddEndpoint {name:<5} ssrc={:<5} remote_addr={:<21} -> media_addr={}",
            ssrc(i),
            if remote_addr.is_empty() {
                "(latch, SRTP)"
            } else {
                &remote_addr
            },
            r.media_addr
        );
        socks.push(s);
    }
    let target: std::net::SocketAddr = media;
    let started = Instant::now();
    let receivers: Vec<_> = socks
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let s = s.try_clone().expect("clone socket");
            let srtp = (i == 2).then(|| session(&BRIDGE_KEY));
            std::thread::spawn(move || receive(&s, srtp.as_ref()))
        })
        .collect();
    // carol speaks first so her address is latched before the others send to her.
    socks[2].send_to(&wire(2, &testkit::rtp(ssrc(2), 0, 0, b"hello"), 0), target)?;
    tokio::time::sleep(Duration::from_millis(50)).await;
    for n in 0..packets {
        for (i, s) in socks.iter().enumerate().filter(|&(i, _)| n > 0 || i != 2) {
            let payload = format!("{} #{n}", NAMES[i]);
            let pkt = testkit::rtp(ssrc(i), n as u16, n * 960, payload.as_bytes());
            s.send_to(&wire(i, &pkt, u64::from(n)), target)?;
        }
        if n % 50 == 49 {
            for (i, s) in socks.iter().enumerate() {
                let sr = testkit::sender_report(ssrc(i));
                s.send_to(&wire(i, &sr, u64::from(n / 50 + 1)), target)?;
            }
        }
        if n % 4 == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    // bob asks alice for a key frame: only alice gets it.
    socks[1].send_to(&testkit::pli(ssrc(1), ssrc(0)), target)?;
    let got: Vec<_> = receivers
        .into_iter()
        .map(|h| h.join().expect("receiver"))
        .collect();
    let elapsed = started.elapsed();
    println!("\nforwarded in {elapsed:.2?} ({packets} RTP packets sent by each participant):");
    println!(
        "{:<8}{:>12}{:>12}{:>12}{:>8}{:>8}",
        "to", "from alice", "from bob", "from carol", "SR", "PLI"
    );
    for (i, g) in got.iter().enumerate() {
        let from = |j: usize| g.rtp.get(&ssrc(j)).copied().unwrap_or(0);
        println!(
            "{:<8}{:>12}{:>12}{:>12}{:>8}{:>8}",
            NAMES[i],
            from(0),
            from(1),
            from(2),
            g.sr,
            g.pli
        );
    }
    println!(
        "carol (SRTP {}) verified and decrypted {} copies with her own key; {} failed verification",
        PROFILE.name(),
        got[2].rtp.values().sum::<u64>() + got[2].sr + got[2].pli,
        got[2].srtp_failed
    );
    let st = client.get_stats(pb::GetStatsRequest {}).await?.into_inner();
    let t = st.total.unwrap_or_default();
    let d = t.drops.unwrap_or_default();
    println!(
        "\nbridge stats: rx={} tx={} dropped={} (not_rtp={} malformed={} unknown_source={} unknown_ssrc={} no_receivers={} send_failed={} srtp_auth_failed={} srtp_replay={}) conferences={} endpoints={}",
        t.rx_packets,
        t.tx_packets,
        t.dropped_packets,
        d.not_rtp,
        d.malformed,
        d.unknown_source,
        d.unknown_ssrc,
        d.no_receivers,
        d.send_failed,
        d.srtp_auth_failed,
        d.srtp_replay,
        st.conferences,
        st.endpoints
    );
    let list = client
        .list_conferences(pb::ListConferencesRequest {})
        .await?
        .into_inner();
    for c in list.conferences {
        for e in c.endpoints {
            if e.latched {
                println!(
                    "latched: {}/{} at {}",
                    c.conference_id, e.endpoint_id, e.remote_addr
                );
            }
        }
    }
    let _ = stop_tx.send(());
    server.await??;
    Ok(())
}

fn ssrc(i: usize) -> u32 {
    1000 * (i as u32 + 1)
}

#[derive(Default)]
struct Received {
    rtp: BTreeMap<u32, u64>,
    sr: u64,
    pli: u64,
    srtp_failed: u64,
}

/// Counts what arrives until the socket has been quiet for its read timeout; with `srtp`,
/// only what verifies and decrypts with the receiver's own key.
fn receive(s: &UdpSocket, srtp: Option<&Session>) -> Received {
    let mut r = Received::default();
    let mut buf = [0u8; 2048];
    let mut streams = BTreeMap::<u32, replay::Stream>::new();
    while let Ok(n) = s.recv(&mut buf) {
        let mut n = n;
        if n < 12 {
            continue;
        }
        if let Some(sess) = srtp {
            let p = &mut buf[..n];
            let plain = if (192..=223).contains(&p[1]) {
                sess.unprotect_rtcp(p).map(|(len, _)| len)
            } else {
                let st = streams
                    .entry(u32::from_be_bytes([p[8], p[9], p[10], p[11]]))
                    .or_default();
                let index = st.estimate(u16::from_be_bytes([p[2], p[3]]));
                sess.unprotect_rtp(p, index).inspect(|_| st.accept(index))
            };
            match plain {
                Ok(len) => n = len,
                Err(_) => {
                    r.srtp_failed += 1;
                    continue;
                }
            }
        }
        let p = &buf[..n];
        match p[1] {
            200 => r.sr += 1,
            206 => r.pli += 1,
            _ => {
                let ssrc = u32::from_be_bytes([p[8], p[9], p[10], p[11]]);
                *r.rtp.entry(ssrc).or_default() += 1;
            }
        }
    }
    r
}
