//! Simulcast over a real bridge process, per engine: a publisher sends three VP8 layers (180,
//! 360 and 720 lines, keyframes only when asked for); each receiver of the group gets one layer
//! at a time as one stream on its own SSRC: the one its height limit and its REMB allow,
//! switched only at a keyframe of the new layer (which the bridge asks the publisher for), with
//! sequence numbers that never skip or repeat and picture ids that run on by one per frame.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{Bridge, Party};
use ringbridge_proto::v1 as pb;

const LAYERS: [u32; 3] = [1001, 1002, 1003];
const HEIGHTS: [u16; 3] = [180, 360, 720];
/// Packets per frame and bytes per packet of each layer (~150, ~480, ~1 440 kbit/s at 30 fps).
const SHAPE: [(usize, usize); 3] = [(1, 600), (2, 1000), (5, 1200)];

/// The publisher: per layer its sequence number, picture id, and whether its next frame is a
/// keyframe (the first is; later ones when a PLI for the layer arrives).
struct Publisher {
    party: Party,
    seq: [u16; 3],
    frame: u16,
    key: [bool; 3],
    plis: usize,
    /// Names each layer by its RID (a one-byte header extension with id [`RID_EXT`]) instead
    /// of declaring the SSRCs, as a WebRTC publisher does.
    rids: bool,
}

/// The RID header extension id of the RID-naming publisher.
const RID_EXT: u8 = 10;
const RIDS: [&str; 3] = ["q", "h", "f"];

impl Publisher {
    /// One frame of every layer to `to`.
    fn frame(&mut self, to: SocketAddr) {
        self.read_plis();
        for l in 0..3 {
            let (n, size) = SHAPE[l];
            let key = std::mem::take(&mut self.key[l]);
            for k in 0..n {
                let mut p = vec![if self.rids { 0x90 } else { 0x80 }, 96];
                p.extend_from_slice(&self.seq[l].to_be_bytes());
                p.extend_from_slice(&(u32::from(self.frame) * 3000).to_be_bytes());
                p.extend_from_slice(&LAYERS[l].to_be_bytes());
                if self.rids {
                    // One-byte form, one word: the RID element (1 byte) and padding.
                    p.extend_from_slice(&[
                        0xbe,
                        0xde,
                        0,
                        1,
                        RID_EXT << 4,
                        RIDS[l].as_bytes()[0],
                        0,
                        0,
                    ]);
                }
                // VP8 descriptor: X, S on the frame's first packet; I (15-bit id), L (TL0PICIDX).
                p.push(0x80 | if k == 0 { 0x10 } else { 0 });
                p.push(0xc0);
                p.extend_from_slice(&(self.frame | 0x8000).to_be_bytes());
                p.push(self.frame as u8);
                if k == 0 && key {
                    let w = HEIGHTS[l] * 16 / 9;
                    p.extend_from_slice(&[0x10, 0x02, 0x00, 0x9d, 0x01, 0x2a]);
                    p.extend_from_slice(&w.to_le_bytes());
                    p.extend_from_slice(&HEIGHTS[l].to_le_bytes());
                } else if k == 0 {
                    p.extend_from_slice(&[0x31, 0x02, 0x00]);
                }
                p.resize(size - 1, 0xab);
                p.push(l as u8); // which layer, for the receivers' checks
                self.party.send(to, &p);
                self.seq[l] = self.seq[l].wrapping_add(1);
            }
        }
        self.frame = self.frame.wrapping_add(1);
    }

    /// PLIs from the bridge: the next frame of that layer is a keyframe.
    fn read_plis(&mut self) {
        let mut buf = [0u8; 1500];
        self.party.sock.set_nonblocking(true).unwrap();
        while let Ok(n) = self.party.sock.recv(&mut buf) {
            if n >= 12 && buf[1] == 206 && buf[0] & 0x1f == 1 {
                let media = u32::from_be_bytes([buf[8], buf[9], buf[10], buf[11]]);
                if let Some(l) = LAYERS.iter().position(|&s| s == media) {
                    self.key[l] = true;
                    self.plis += 1;
                }
            }
        }
        self.party.sock.set_nonblocking(false).unwrap();
    }
}

/// What a receiver got: (sequence number, picture id, layer, keyframe start) per packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Got {
    ssrc: u32,
    seq: u16,
    pic: u16,
    layer: u8,
    key: bool,
    start: bool,
}

fn drain(sock: &std::net::UdpSocket, out: &mut Vec<Got>) {
    let mut buf = [0u8; 2048];
    sock.set_nonblocking(true).unwrap();
    while let Ok(n) = sock.recv(&mut buf) {
        let p = &buf[..n];
        if n < 20 || p[1] & 0x7f != 96 {
            continue;
        }
        // After the header (and its extension block, if any): the VP8 descriptor.
        let mut h = 12;
        if p[0] & 0x10 != 0 {
            h += 4 + 4 * usize::from(u16::from_be_bytes([p[14], p[15]]));
        }
        out.push(Got {
            ssrc: u32::from_be_bytes([p[8], p[9], p[10], p[11]]),
            seq: u16::from_be_bytes([p[2], p[3]]),
            pic: u16::from_be_bytes([p[h + 2], p[h + 3]]) & 0x7fff,
            layer: p[n - 1],
            start: p[h] & 0x10 != 0,
            key: p[h] & 0x10 != 0 && p[h + 5] & 1 == 0,
        });
    }
    sock.set_nonblocking(false).unwrap();
}

/// Sends frames at 30 fps for `secs`, receiving meanwhile.
fn run(
    publisher: &mut Publisher,
    to: SocketAddr,
    receivers: &[&Party],
    got: &mut [Vec<Got>],
    secs: f64,
) {
    let start = Instant::now();
    let frames = (secs * 30.0) as u32;
    for f in 0..frames {
        publisher.frame(to);
        for (r, g) in receivers.iter().zip(got.iter_mut()) {
            drain(&r.sock, g);
        }
        let next = start + Duration::from_millis(u64::from(f + 1) * 33);
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    std::thread::sleep(Duration::from_millis(100));
    for (r, g) in receivers.iter().zip(got.iter_mut()) {
        drain(&r.sock, g);
    }
}

/// The stream is one SSRC whose sequence numbers run on by one, picture ids by at most one per
/// packet, and which changes layer only at a keyframe's first packet. Returns the layers in the
/// order it was on them.
fn one_continuous_stream(got: &[Got], ssrc: u32) -> Vec<u8> {
    assert!(!got.is_empty());
    assert!(got.iter().all(|g| g.ssrc == ssrc), "one SSRC");
    assert!(got[0].key, "starts with a keyframe");
    let mut layers = vec![got[0].layer];
    for w in got.windows(2) {
        assert_eq!(
            w[1].seq,
            w[0].seq.wrapping_add(1),
            "no gap, no repeat: {w:?}"
        );
        let dp = w[1].pic.wrapping_sub(w[0].pic) & 0x7fff;
        assert!(dp <= 1, "picture ids run on by one: {w:?}");
        assert_eq!(
            dp == 1,
            w[1].start,
            "a new picture id starts a frame: {w:?}"
        );
        if w[1].layer != w[0].layer {
            assert!(w[1].key, "switches only at a keyframe: {w:?}");
            layers.push(w[1].layer);
        }
    }
    layers
}

fn remb(sender: u32, bps: u32, media: u32) -> Vec<u8> {
    let (mut exp, mut mantissa) = (0u8, bps);
    while mantissa >= 1 << 18 {
        mantissa >>= 1;
        exp += 1;
    }
    let mut p = vec![0x8f, 206, 0, 5];
    p.extend_from_slice(&sender.to_be_bytes());
    p.extend_from_slice(&0u32.to_be_bytes());
    p.extend_from_slice(b"REMB");
    p.push(1);
    p.push((exp << 2) | (mantissa >> 16) as u8);
    p.extend_from_slice(&(mantissa as u16).to_be_bytes());
    p.extend_from_slice(&media.to_be_bytes());
    p
}

async fn receivers_get_one_layer_as_one_stream(engine: &str, rids: bool) {
    let mut b = Bridge::start(engine).await;
    b.conference("c").await;
    let mut publisher = Publisher {
        party: Party::new("pub", LAYERS[0]),
        seq: [100, 30_000, 65_500],
        frame: 1,
        key: [true; 3],
        plis: 0,
        rids,
    };
    let simulcast = if rids {
        // The layers' SSRCs are learned from their packets (the first ones are dropped).
        pb::SimulcastSend {
            rids: RIDS.iter().map(|r| r.to_string()).collect(),
            rid_ext_id: u32::from(RID_EXT),
            ..Default::default()
        }
    } else {
        pb::SimulcastSend {
            layers: LAYERS.to_vec(),
            ..Default::default()
        }
    };
    b.client
        .add_endpoint(pb::AddEndpointRequest {
            conference_id: "c".into(),
            endpoint_id: "pub".into(),
            ssrcs: if rids { vec![999] } else { LAYERS.to_vec() },
            remote_addr: publisher.party.addr().to_string(),
            simulcast: Some(simulcast),
            ..Default::default()
        })
        .await
        .unwrap();
    // Small (at most 180 lines), and unlimited.
    let small = Party::new("small", 2001);
    let big = Party::new("big", 2002);
    for (p, ssrc, max_height) in [(&small, 5000, 180), (&big, 6000, 0)] {
        b.client
            .add_endpoint(pb::AddEndpointRequest {
                conference_id: "c".into(),
                endpoint_id: p.name.clone(),
                ssrcs: vec![p.ssrc],
                remote_addr: p.addr().to_string(),
                simulcast_receive: Some(pb::SimulcastReceive {
                    publisher: "pub".into(),
                    ssrc,
                    max_height,
                }),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    let mut got = vec![Vec::new(), Vec::new()];
    let to = b.media;
    // 6 s: the small one stays on 180 lines; the big one starts low and climbs to the top
    // once the top layer has fitted for the hold time (at a keyframe the bridge asks for).
    run(&mut publisher, to, &[&small, &big], &mut got, 6.0);
    assert_eq!(one_continuous_stream(&got[0], 5000), [0]);
    let big_layers = one_continuous_stream(&got[1], 6000);
    if !rids {
        // With RIDs the layers become active in the order the bridge learns them (the first
        // keyframes are dropped until then): the first may already be the top one.
        assert_eq!(big_layers.first(), Some(&0));
    }
    assert_eq!(
        big_layers.last(),
        Some(&2),
        "climbed to the top: {big_layers:?}"
    );
    assert!(publisher.plis >= 1, "keyframes were asked for");
    if rids {
        // The learned layers are the endpoint's SSRCs now.
        let listed = b.list().await.conferences[0]
            .endpoints
            .iter()
            .find(|e| e.endpoint_id == "pub")
            .unwrap()
            .ssrcs
            .clone();
        assert_eq!(listed, [999, 1001, 1002, 1003]);
    }

    // The big one's link collapses: its REMB says 140 kbit/s (what a receive-side estimator
    // reports receiving the low layer). It drops to the layer that fits
    // (360 lines at ~480 kbit/s does not; 180 lines does) at that layer's next keyframe.
    big.send(to, &remb(big.ssrc, 140_000, 6000));
    // The small one lifts its limit: it climbs, a layer at a time (each after the hold).
    b.client
        .set_simulcast_limit(pb::SetSimulcastLimitRequest {
            conference_id: "c".into(),
            endpoint_id: "small".into(),
            max_height: 0,
        })
        .await
        .unwrap();
    let mut more = vec![Vec::new(), Vec::new()];
    run(&mut publisher, to, &[&small, &big], &mut more, 7.0);
    let small_all: Vec<Got> = got[0].iter().chain(&more[0]).copied().collect();
    let big_all: Vec<Got> = got[1].iter().chain(&more[1]).copied().collect();
    let small_layers = one_continuous_stream(&small_all, 5000);
    assert_eq!(small_layers.last(), Some(&2), "{small_layers:?}");
    let big_layers = one_continuous_stream(&big_all, 6000);
    assert_eq!(big_layers.last(), Some(&0), "stepped down: {big_layers:?}");
    // Nothing of the publisher's own SSRCs reached a receiver of the group.
    let ssrcs: HashMap<u32, usize> =
        small_all
            .iter()
            .chain(&big_all)
            .fold(HashMap::new(), |mut m, g| {
                *m.entry(g.ssrc).or_default() += 1;
                m
            });
    assert_eq!(
        ssrcs
            .keys()
            .copied()
            .collect::<std::collections::BTreeSet<_>>(),
        [5000, 6000].into()
    );
    // A bad limit request names what is wrong.
    let e = b
        .client
        .set_simulcast_limit(pb::SetSimulcastLimitRequest {
            conference_id: "c".into(),
            endpoint_id: "pub".into(),
            max_height: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mio_receivers_get_one_layer_as_one_stream() {
    receivers_get_one_layer_as_one_stream("mio", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uring_receivers_get_one_layer_as_one_stream() {
    receivers_get_one_layer_as_one_stream("uring", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn layers_named_by_rid_are_learned_from_their_packets() {
    receivers_get_one_layer_as_one_stream("uring", true).await;
}
