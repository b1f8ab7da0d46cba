//! Criterion benches of loss repair: what keeping a NACKed stream in the retransmission cache
//! adds to the per-packet decision (a 1200-byte video packet fanned out to 9 receivers, cache
//! off / stream not cached / stream cached), and answering one NACK from the cache (lookup, copy
//! out, RTX wrap and SRTP protect for the receiver).

use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ringbridge_dataplane::core::{Core, RepairCache, TableBuilder};

fn addr(i: u16) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, 1], 40_000 + i))
}

fn rtp(ssrc: u32, seq: u16, len: usize) -> Vec<u8> {
    let mut p = vec![0u8; len];
    p[0] = 0x80;
    p[1] = 96;
    p[2..4].copy_from_slice(&seq.to_be_bytes());
    p[8..12].copy_from_slice(&ssrc.to_be_bytes());
    p
}

/// A generic NACK from `sender` for `media`, one sequence number.
fn nack(sender: u32, media: u32, seq: u16) -> Vec<u8> {
    let mut p = vec![0x81, 205, 0, 3];
    p.extend_from_slice(&sender.to_be_bytes());
    p.extend_from_slice(&media.to_be_bytes());
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&[0, 0]);
    p
}

/// One conference of 10 endpoints; endpoint 0 sends SSRC 100.
fn core(cache: Option<Arc<RepairCache>>) -> Core {
    let mut b = TableBuilder::new();
    let conf = b.conference();
    for e in 0..10u16 {
        b.endpoint(
            conf,
            u64::from(e),
            &[100 + u32::from(e)],
            Some(addr(e)),
            None,
        );
    }
    Core::new(b.build(1)).with_repair_cache(cache)
}

fn keep(c: &mut Criterion) {
    let mut g = c.benchmark_group("repair");
    g.throughput(Throughput::Elements(1));
    let cases: [(&str, bool, bool); 3] = [
        ("decide_1200B_fanout9_cache_off", false, false),
        ("decide_1200B_fanout9_stream_not_cached", true, false),
        ("decide_1200B_fanout9_stream_cached", true, true),
    ];
    for (name, with_cache, cached) in cases {
        let cache = with_cache.then(|| Arc::new(RepairCache::new(64, 512)));
        if cached {
            cache.as_ref().unwrap().claim(0, 100, 0);
        }
        let mut core = core(cache);
        let mut seq = 0u16;
        let mut pkt = rtp(100, 0, 1200);
        g.bench_function(name, |b| {
            b.iter(|| {
                seq = seq.wrapping_add(1);
                pkt[2..4].copy_from_slice(&seq.to_be_bytes());
                let v = core.handle(black_box(&mut pkt), addr(0)).unwrap();
                black_box(v.dests.len())
            })
        });
    }
    // Answering: a receiver NACKs a packet the cache holds; the repair is written out.
    let cache = Arc::new(RepairCache::new(64, 512));
    cache.claim(0, 100, 0);
    let mut core = core(Some(cache));
    for seq in 0..512u16 {
        core.handle(&mut rtp(100, seq, 1200), addr(0)).unwrap();
    }
    let mut out = [0u8; 2048];
    let mut seq = 0u16;
    g.bench_function("answer_nack_1_packet_plain_receiver", |b| {
        b.iter(|| {
            seq = (seq + 1) % 512;
            core.set_now(0); // a batch
            let mut n = nack(101, 100, seq);
            let _ = core.handle(black_box(&mut n), addr(1));
            let (len, _) = core.next_repair(&mut out).unwrap();
            black_box(len)
        })
    });
    g.finish();
}

criterion_group!(benches, keep);
criterion_main!(benches);
