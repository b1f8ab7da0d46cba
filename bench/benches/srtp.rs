//! Criterion benches of SRTP: per-packet protect (the per-receiver cost) and unprotect (the
//! per-sender cost) for 160- and 1200-byte RTP packets, per profile, and as a baseline the
//! library's bare AES-128-GCM seal of the same payload in place (no SRTP framing, no copy).

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use ringbridge_dataplane::srtp::{Profile, Session};
use ringbridge_dataplane::testkit::rtp;

fn session(p: Profile) -> Session {
    let key: Vec<u8> = (0..p.key_len() as u8).collect();
    let salt: Vec<u8> = (0..p.salt_len() as u8).map(|b| b ^ 0x55).collect();
    Session::new(p, &key, &salt).unwrap()
}

fn srtp(c: &mut Criterion) {
    let mut g = c.benchmark_group("srtp");
    for size in [160usize, 1200] {
        let plain = rtp(0x1234, 1, 0, &vec![0xab; size - 12]);
        g.throughput(Throughput::Bytes(size as u64));
        for p in Profile::ALL {
            let s = session(p);
            let mut out = vec![0u8; size + 64];
            g.bench_function(
                BenchmarkId::new(format!("protect/{}", p.name()), size),
                |b| b.iter(|| black_box(s.protect_rtp(black_box(&plain), 1, &mut out).unwrap())),
            );
            let n = s.protect_rtp(&plain, 1, &mut out).unwrap();
            let wire = out[..n].to_vec();
            let mut buf = wire.clone();
            g.bench_function(
                BenchmarkId::new(format!("unprotect/{}", p.name()), size),
                |b| {
                    b.iter(|| {
                        buf.copy_from_slice(&wire);
                        black_box(s.unprotect_rtp(black_box(&mut buf), 1).unwrap())
                    })
                },
            );
        }
    }
    let key = aws_lc_rs::aead::LessSafeKey::new(
        aws_lc_rs::aead::UnboundKey::new(&aws_lc_rs::aead::AES_128_GCM, &[7; 16]).unwrap(),
    );
    for size in [160usize, 1200] {
        g.throughput(Throughput::Bytes(size as u64));
        let mut payload = vec![0xab; size - 12];
        let header = [0x80u8; 12];
        g.bench_function(
            BenchmarkId::new("baseline/aws-lc AES-128-GCM seal", size),
            |b| {
                b.iter(|| {
                    let nonce = aws_lc_rs::aead::Nonce::assume_unique_for_key([1; 12]);
                    let aad = aws_lc_rs::aead::Aad::from(&header);
                    black_box(
                        key.seal_in_place_separate_tag(nonce, aad, &mut payload)
                            .unwrap(),
                    )
                })
            },
        );
    }
    g.finish();
}

criterion_group!(benches, srtp);
criterion_main!(benches);
