//! `ringbridge demo` (what `make run` shows): starts a bridge, programs a 3-party conference
//! through its own gRPC API like any client would, sends RTP and RTCP from three loopback UDP
//! sockets, and prints what each participant received and the bridge's counters.

use std::collections::BTreeMap;
use std::net::UdpSocket;
use std::time::{Duration, Instant};

use ringbridge_proto::v1 as pb;
use ringbridge_proto::v1::bridge_client::BridgeClient;

use crate::bridge::{self, Config};
use crate::testkit;

const NAMES: [&str; 3] = ["alice", "bob", "carol"];

/// Runs the demo; `packets` RTP packets per participant.
pub async fn run(config: Config, packets: u32) -> anyhow::Result<()> {
    let running = bridge::start(config).await?;
    let (engine, api, media) = (running.engine, running.api, running.media);
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
                srtp: None,
            })
            .await?
            .into_inner();
        println!(
            "AddEndpoint {name:<5} ssrc={:<5} remote_addr={:<21} -> media_addr={}",
            ssrc(i),
            if remote_addr.is_empty() {
                "(latch)"
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
        .map(|s| {
            let s = s.try_clone().expect("clone socket");
            std::thread::spawn(move || receive(&s))
        })
        .collect();
    // carol speaks first so her address is latched before the others send to her.
    socks[2].send_to(&testkit::rtp(ssrc(2), 0, 0, b"hello"), target)?;
    tokio::time::sleep(Duration::from_millis(50)).await;
    for n in 0..packets {
        for (i, s) in socks.iter().enumerate().filter(|&(i, _)| n > 0 || i != 2) {
            let payload = format!("{} #{n}", NAMES[i]);
            s.send_to(
                &testkit::rtp(ssrc(i), n as u16, n * 960, payload.as_bytes()),
                target,
            )?;
        }
        if n % 50 == 49 {
            for (i, s) in socks.iter().enumerate() {
                s.send_to(&testkit::sender_report(ssrc(i)), target)?;
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
    let st = client.get_stats(pb::GetStatsRequest {}).await?.into_inner();
    let t = st.total.unwrap_or_default();
    let d = t.drops.unwrap_or_default();
    println!(
        "\nbridge stats: rx={} tx={} dropped={} (not_rtp={} malformed={} unknown_source={} unknown_ssrc={} no_receivers={} send_failed={}) conferences={} endpoints={}",
        t.rx_packets,
        t.tx_packets,
        t.dropped_packets,
        d.not_rtp,
        d.malformed,
        d.unknown_source,
        d.unknown_ssrc,
        d.no_receivers,
        d.send_failed,
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
}

/// Counts what arrives until the socket has been quiet for its read timeout.
fn receive(s: &UdpSocket) -> Received {
    let mut r = Received::default();
    let mut buf = [0u8; 2048];
    while let Ok(n) = s.recv(&mut buf) {
        let p = &buf[..n];
        if n < 12 {
            continue;
        }
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
