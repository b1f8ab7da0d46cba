//! Criterion benches of the data-plane core: RTP parse, the per-packet decision (10-party
//! conference on a bridge of 10 000 endpoints), table lookup across 10 000 endpoints, the
//! fan-out verdict for 100 receivers, and dropping garbage.

use std::hint::black_box;
use std::net::{Ipv4Addr, SocketAddr};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ringbridge_dataplane::core::{Core, TableBuilder, rtp as rtp_parse};

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
            b.endpoint(conf, u64::from(i), &[i * 2, i * 2 + 1], Some(addr(i)), None);
        }
    }
    Core::new(b.build(1))
}

fn decision(c: &mut Criterion) {
    let mut g = c.benchmark_group("core");
    g.throughput(Throughput::Elements(1));
    let mut core = core();
    let mut pkt = rtp(5_000 * 2, 1200);
    let src = addr(5_000);
    g.bench_function("decide_rtp_fanout9_of_10k_endpoints", |b| {
        b.iter(|| {
            let v = core.handle(black_box(&mut pkt), black_box(src)).unwrap();
            black_box(v.dests.len())
        })
    });
    g.bench_function("decide_and_walk_fanout9", |b| {
        b.iter(|| {
            let v = core.handle(black_box(&mut pkt), black_box(src)).unwrap();
            let mut n = 0usize;
            for p in v.dests.iter() {
                n += p.raw.len() as usize;
            }
            black_box(n)
        })
    });
    g.bench_function("rtp_parse", |b| {
        b.iter(|| black_box(rtp_parse::ssrc(black_box(&pkt))))
    });
    // Lookup across the whole table: each iteration comes from another of the 10 000
    // endpoints, so the hash probes are not all cache-hot.
    let mut sources: Vec<(Vec<u8>, SocketAddr)> = (0..10_000u32)
        .map(|i| (rtp(i * 2, 1200), addr(i)))
        .collect();
    let mut i = 0usize;
    g.bench_function("table_lookup_10k_endpoints", |b| {
        b.iter(|| {
            let n = sources.len();
            let (p, a) = &mut sources[i % n];
            i = i.wrapping_add(7919);
            black_box(core.handle(p, *a).unwrap().dests.len())
        })
    });
    let mut big = TableBuilder::new();
    let conf = big.conference();
    for e in 0..101u32 {
        big.endpoint(conf, u64::from(e), &[e], Some(addr(e)), None);
    }
    let mut big = Core::new(big.build(1));
    let mut pkt0 = rtp(0, 1200);
    let src0 = addr(0);
    g.bench_function("fanout_verdict_100_receivers", |b| {
        b.iter(|| {
            let v = big.handle(black_box(&mut pkt0), black_box(src0)).unwrap();
            let mut n = 0usize;
            for p in v.dests.iter() {
                n += p.raw.len() as usize;
            }
            black_box(n)
        })
    });
    let mut garbage = vec![0x17u8; 100];
    g.bench_function("drop_garbage", |b| {
        b.iter(|| {
            black_box(
                core.handle(black_box(&mut garbage), black_box(src))
                    .is_err(),
            )
        })
    });
    g.finish();
}

/// Control path: validating an AddEndpoint and snapshotting the table for the workers, on a
/// bridge with 33 000 endpoints (the per-RPC cost besides waking the workers).
fn control_path(c: &mut Criterion) {
    use ringbridge_dataplane::state::BridgeState;
    let mut s = BridgeState::new("127.0.0.1:10000".parse().unwrap());
    for conf in 0..3_300u32 {
        let id = format!("c{conf}");
        s.create_conference(&id).unwrap();
        for e in 0..10u32 {
            let a = SocketAddr::from((Ipv4Addr::from(0x0a00_0000 + conf * 10 + e), 5000));
            s.add_endpoint(
                &id,
                &format!("e{e}"),
                &[conf * 10 + e],
                &a.to_string(),
                None,
            )
            .unwrap();
        }
    }
    let mut g = c.benchmark_group("control");
    g.bench_function("snapshot_33k_endpoints", |b| {
        b.iter(|| black_box(s.table()))
    });
    g.bench_function("add_and_remove_endpoint_33k", |b| {
        b.iter(|| {
            s.add_endpoint("c0", "extra", &[u32::MAX], "10.200.0.1:5000", None)
                .unwrap();
            s.remove_endpoint("c0", "extra").unwrap();
        })
    });
    g.finish();
}

criterion_group!(benches, decision, control_path);
criterion_main!(benches);
