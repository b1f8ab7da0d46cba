//! Octo end to end with real processes: a conference joined from three regions spans three
//! bridges relayed in a full mesh; every participant gets every other participant's packets
//! exactly once, byte for byte, never its own. A bridge killed: only its participants move
//! (announced with their new bridge), the others keep exchanging during the failover and lose
//! nothing, and then everybody exchanges exactly again.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use ringbridge_dataplane::testkit;
use ringbridge_proto::v1::focus_client::FocusClient;

/// Each of `senders` sends `n` packets (seq from `base`) to its bridge; each of `receivers`
/// must get exactly the packets of the other senders (and never its own).
fn exchange_exact(
    senders: &[(&str, &Party, SocketAddr)],
    receivers: &[(&str, &Party)],
    base: u16,
    n: u16,
) {
    let expected: BTreeMap<&str, Vec<Vec<u8>>> = receivers
        .iter()
        .map(|(name, _)| {
            let mut want: Vec<Vec<u8>> = senders
                .iter()
                .filter(|(s, _, _)| s != name)
                .flat_map(|(_, p, _)| (base..base + n).map(|k| testkit::rtp(p.ssrc, k, 0, b"octo")))
                .collect();
            want.sort();
            (*name, want)
        })
        .collect();
    let got: Vec<Vec<Vec<u8>>> = std::thread::scope(|s| {
        let rx: Vec<_> = receivers
            .iter()
            .map(|(name, p)| {
                let want = expected[name].len();
                s.spawn(move || {
                    let mut out = Vec::new();
                    let mut buf = [0u8; 2048];
                    while out.len() < want {
                        match p.sock.recv(&mut buf) {
                            Ok(m) => out.push(buf[..m].to_vec()),
                            Err(_) => break, // read timeout: nothing more is coming
                        }
                    }
                    // Anything extra (a duplicate) shows up within a short linger.
                    p.sock
                        .set_read_timeout(Some(Duration::from_millis(100)))
                        .unwrap();
                    while let Ok(m) = p.sock.recv(&mut buf) {
                        out.push(buf[..m].to_vec());
                    }
                    p.sock
                        .set_read_timeout(Some(Duration::from_millis(300)))
                        .unwrap();
                    out.sort();
                    out
                })
            })
            .collect();
        for k in base..base + n {
            for (_, p, media) in senders {
                p.sock
                    .send_to(&testkit::rtp(p.ssrc, k, 0, b"octo"), media)
                    .unwrap();
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        rx.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for ((name, _), g) in receivers.iter().zip(got) {
        assert_eq!(
            g.len(),
            expected[name].len(),
            "{name}: every other packet exactly once"
        );
        assert!(
            g == expected[name],
            "{name}: exactly the others' packets, byte for byte"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conference_spans_regions_and_fails_over_one_bridge() {
    let data = data_dir("octo");
    let ctl = control(&data, "127.0.0.1:0");
    let url = format!("http://{}", ctl.field("listen"));
    let _eu = bridge(&url, "eu-1", "eu");
    let _us = bridge(&url, "us-1", "us");
    let mut ap = bridge(&url, "ap-1", "ap");
    wait_bridges(&url, 3).await;
    let mut focus = FocusClient::new(channel(&url).await);
    let regions = [
        ("e1", "eu"),
        ("e2", "eu"),
        ("u1", "us"),
        ("u2", "us"),
        ("a1", "ap"),
        ("a2", "ap"),
    ];
    let parties: Vec<Party> = (0..regions.len() as u32)
        .map(|i| Party::new(100 + i))
        .collect();
    let mut media = BTreeMap::new();
    for ((name, region), p) in regions.iter().zip(&parties) {
        let j = focus
            .join(p.join("octo", name, region))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            &j.bridge_id[..2],
            &region[..2],
            "{name} is placed in its region"
        );
        media.insert(*name, j.media_addr.parse::<SocketAddr>().unwrap());
    }
    let c = get(&mut focus, "octo").await.unwrap();
    assert_eq!(c.bridges.len(), 3, "{c:?}");
    assert!(c.bridges.iter().all(|b| b.participants.len() == 2));
    let all: Vec<(&str, &Party, SocketAddr)> = regions
        .iter()
        .zip(&parties)
        .map(|((n, _), p)| (*n, p, media[n]))
        .collect();
    let everyone: Vec<(&str, &Party)> = all.iter().map(|(n, p, _)| (*n, *p)).collect();
    exchange_exact(&all, &everyone, 0, 30);

    // ap-1 dies: a1, a2 move; e1, e2, u1, u2 stay where they are and keep talking meanwhile.
    let mut watch = watch(&mut focus, "octo").await;
    assert_eq!(watch.message().await.unwrap().unwrap().reason, "current");
    ap.kill();
    let survivors: Vec<(&str, &Party, SocketAddr)> = all[..4].to_vec();
    let survivors_rx: Vec<(&str, &Party)> = everyone[..4].to_vec();
    exchange_exact(&survivors, &survivors_rx, 100, 30);
    let moved = loop {
        let m = tokio::time::timeout(Duration::from_secs(5), watch.message())
            .await
            .expect("failover announced")
            .unwrap()
            .unwrap();
        if m.reason == "failover" {
            break m;
        }
    };
    let on: BTreeMap<String, (String, Vec<String>)> = moved
        .bridges
        .iter()
        .map(|b| {
            (
                b.bridge_id.clone(),
                (b.media_addr.clone(), b.participants.clone()),
            )
        })
        .collect();
    assert!(!on.contains_key("ap-1"), "{moved:?}");
    assert!(on["eu-1"].1.contains(&"e1".to_string()) && on["us-1"].1.contains(&"u1".to_string()));
    let new_media = |who: &str| -> SocketAddr {
        on.values()
            .find(|(_, ps)| ps.iter().any(|p| p == who))
            .map(|(m, _)| m.parse().unwrap())
            .unwrap()
    };
    for name in ["e1", "e2", "u1", "u2"] {
        assert_eq!(new_media(name), media[name], "{name} did not move");
    }
    let all2: Vec<(&str, &Party, SocketAddr)> =
        all.iter().map(|(n, p, _)| (*n, *p, new_media(n))).collect();
    exchange_exact(&all2, &everyone, 200, 30);
    let _ = std::fs::remove_dir_all(&data);
}
