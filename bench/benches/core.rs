//! Criterion benches of the data-plane core: the per-packet decision for RTP in a 10-party
//! conference on a bridge holding many endpoints, and RTCP feedback routing.

use std::hint::black_box;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ringbridge_dataplane::core::{Core, TableBuilder};

fn addr(i: u32) -> SocketAddr {
    SocketAddr::from((
        Ipv4Addr::from(0x0a00_0000 + i),
        40_000 + (i % 20_000) as u16,
    ))
}

fn rtp(ssrc: u32, len: usize) -> Vec<u8> {
    let mut p = vec![0u8; len];
    p[0] = 0x80;
    p[1] = 96;
    p[8..12].copy_from_slice(&ssrc.to_be_bytes());
    p
}

/// 1 000 conferences of 10 endpoints each (10 000 endpoints).
fn core() -> Core {
    let mut b = TableBuilder::new();
    for c in 0..1_000u32 {
        let conf = b.conference();
        for e in 0..10u32 {
            let i = c * 10 + e;
            b.endpoint(conf, u64::from(i), &[i * 2, i * 2 + 1], Some(addr(i)));
        }
    }
    Core::new(Arc::new(b.build(1)))
}

fn decision(c: &mut Criterion) {
    let mut g = c.benchmark_group("core");
    g.throughput(Throughput::Elements(1));
    let mut core = core();
    let pkt = rtp(5_000 * 2, 1200);
    let src = addr(5_000);
    g.bench_function("decide_rtp_fanout9_of_10k_endpoints", |b| {
        b.iter(|| {
            let v = core.handle(black_box(&pkt), black_box(src)).unwrap();
            black_box(v.dests.len())
        })
    });
    g.bench_function("decide_and_walk_fanout9", |b| {
        b.iter(|| {
            let v = core.handle(black_box(&pkt), black_box(src)).unwrap();
            let mut n = 0usize;
            for p in v.dests.iter() {
                n += p.raw.len() as usize;
            }
            black_box(n)
        })
    });
    let garbage = vec![0x17u8; 100];
    g.bench_function("drop_garbage", |b| {
        b.iter(|| black_box(core.handle(black_box(&garbage), black_box(src)).is_err()))
    });
    g.finish();
}

criterion_group!(benches, decision);
criterion_main!(benches);
