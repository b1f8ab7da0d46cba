//! Criterion bench of simulcast forwarding: the user-space cost per copy of a 1 200-byte VP8
//! packet to 9 SRTP receivers, forwarded as it is (plain fan-out: each copy is SRTP-protected)
//! and as each receiver's one stream (each copy's SSRC, sequence number, timestamp, picture id
//! and TL0PICIDX rewritten, its forwarder and layer policy run, then protected). The ratio of
//! the two is what rewriting costs per copy.

use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ringbridge_dataplane::core::simulcast::group::{Group, SimReceive};
use ringbridge_dataplane::core::{CopyKind, Core, Delta, Op, TableBuilder};
use ringbridge_dataplane::srtp::{Profile, Session};

const RECEIVERS: u64 = 9;

fn addr(i: u16) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, 1], 40_000 + i))
}

/// A 1 200-byte VP8 packet of the top layer (SSRC 3): picture id, TL0PICIDX; a keyframe start
/// when `key`.
fn vp8(seq: u16, key: bool) -> Vec<u8> {
    let mut p = vec![0x80, 96];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&(u32::from(seq) * 3000).to_be_bytes());
    p.extend_from_slice(&3u32.to_be_bytes());
    p.extend_from_slice(&[0x90, 0xc0]);
    p.extend_from_slice(&(seq | 0x8000).to_be_bytes());
    p.push(seq as u8);
    if key {
        p.extend_from_slice(&[0x10, 0x02, 0x00, 0x9d, 0x01, 0x2a, 0x00, 0x05, 0xd0, 0x02]);
    } else {
        p.extend_from_slice(&[0x31, 0x02, 0x00]);
    }
    p.resize(1200, 0xab);
    p
}

/// A conference: publisher 0 sends layers 1, 2, 3; 9 SRTP receivers, as one stream each of the
/// group when `simulcast`.
fn core(simulcast: bool) -> Core {
    let mut b = TableBuilder::new();
    let conf = b.conference();
    b.endpoint(conf, 0, &[1, 2, 3], Some(addr(0)), None);
    let s = Arc::new(Session::new(Profile::AeadAes128Gcm, &[7; 16], &[7; 12]).unwrap());
    let mut ops = Vec::new();
    for r in 1..=RECEIVERS {
        ops.push(Op::AddEndpoint {
            conf,
            uid: r,
            ssrcs: Box::new([]),
            addr: Some(addr(r as u16)),
            srtp: Some((s.clone(), s.clone())),
            claim: None,
            webrtc: false,
            rewrite: None,
        });
        if simulcast {
            ops.push(Op::SetSimReceive {
                uid: r,
                sim: Some(Arc::new(SimReceive::new(0, 5000, 100, 0))),
            });
        }
    }
    if simulcast {
        ops.push(Op::SetSimulcast {
            conf,
            owner: 0,
            group: Some(Arc::new(Group::new(0, &[1, 2, 3]))),
        });
    }
    let mut c = Core::new(b.build(1));
    c.apply(&Delta { generation: 2, ops });
    c
}

fn copies(c: &mut Criterion) {
    let mut g = c.benchmark_group("simulcast");
    g.throughput(Throughput::Elements(RECEIVERS));
    for (name, simulcast) in [
        ("copies_9_srtp_forwarded_as_is", false),
        ("copies_9_srtp_rewritten_per_receiver", true),
    ] {
        let mut core = core(simulcast);
        // The receivers settle on the top layer (its keyframe).
        core.set_now(1);
        let _ = core.handle(&mut vp8(1, true), addr(0));
        let mut seq = 1u16;
        let mut out = [0u8; 2048];
        // Every receiver gets a written copy of every packet, either way.
        let mut pkt = vp8(2, false);
        let v = core.handle(&mut pkt, addr(0)).unwrap();
        let written = v
            .dests
            .iter_slots()
            .filter(|(slot, peer)| v.copy_kind(*slot, peer) == CopyKind::Written)
            .count();
        assert_eq!(written, RECEIVERS as usize, "{name}");
        seq += 1;
        g.bench_function(name, |b| {
            b.iter(|| {
                seq = seq.wrapping_add(1);
                let mut pkt = vp8(seq, false);
                let v = core.handle(black_box(&mut pkt), addr(0)).unwrap();
                let plain = v.plain(&pkt);
                let mut n = 0;
                for (slot, peer) in v.dests.iter_slots() {
                    if v.copy_kind(slot, peer) == CopyKind::Written {
                        n += v.write(slot, peer, plain, &mut out).unwrap();
                    }
                }
                black_box(n)
            })
        });
    }
    g.finish();
}

criterion_group!(benches, copies);
criterion_main!(benches);
