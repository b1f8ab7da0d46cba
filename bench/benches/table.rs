//! Criterion benches of table changes as the API makes them: one AddEndpoint and one
//! RemoveEndpoint, each published as a delta and applied to a worker's copy of the table (what a
//! bridge with one worker does per change, minus the wake-up). In a 10-endpoint conference, in a
//! 100 000-endpoint conference, and in a 10-endpoint conference beside a 100 000-endpoint one;
//! plus deleting a 42 000-endpoint conference. Goal: the large cases within 2x of the small one.

use std::hint::black_box;
use std::net::{Ipv4Addr, SocketAddr};

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use ringbridge_dataplane::core::Table;
use ringbridge_dataplane::state::{BridgeState, Limits};

fn addr(i: usize) -> String {
    SocketAddr::from((
        Ipv4Addr::from(0x0a00_0000 + i as u32),
        40_000 + (i % 20_000) as u16,
    ))
    .to_string()
}

/// The control path's state and a worker's copy of the table, in step.
fn state(conferences: &[(&str, usize)]) -> (BridgeState, Table) {
    let mut st = BridgeState::with_limits(
        "127.0.0.1:10000".parse().unwrap(),
        Limits {
            endpoints: 10_000_000,
            endpoints_per_conference: 1_000_000,
            ..Limits::default()
        },
    );
    let mut n = 0;
    for &(c, size) in conferences {
        st.create_conference(c).unwrap();
        for _ in 0..size {
            st.add_endpoint(c, &format!("e{n}"), &[n as u32], &addr(n), None)
                .unwrap();
            n += 1;
        }
    }
    let mut worker = Table::default();
    worker.apply_delta(&st.delta());
    (st, worker)
}

fn changes(c: &mut Criterion) {
    let mut g = c.benchmark_group("table");
    for (name, confs, target) in [
        (
            "add_remove_publish_conf_of_10",
            vec![("small", 10)],
            "small",
        ),
        (
            "add_remove_publish_conf_of_100k",
            vec![("big", 100_000)],
            "big",
        ),
        (
            "add_remove_publish_conf_of_10_beside_100k",
            vec![("big", 100_000), ("small", 10)],
            "small",
        ),
    ] {
        let (mut st, mut worker) = state(&confs);
        let new = 5_000_000usize;
        g.bench_function(name, |b| {
            b.iter(|| {
                st.add_endpoint(target, "new", &[new as u32], &addr(new), None)
                    .unwrap();
                worker.apply_delta(&st.delta());
                st.remove_endpoint(target, "new").unwrap();
                worker.apply_delta(&st.delta());
                black_box(worker.endpoints())
            })
        });
    }
    let (st, worker) = state(&[("big", 42_000), ("other", 10)]);
    g.sample_size(10);
    g.bench_function("delete_conf_of_42k_publish", |b| {
        b.iter_batched(
            || (st.clone(), worker.clone()),
            |(mut s, mut w)| {
                s.delete_conference("big").unwrap();
                w.apply_delta(&s.delta());
                black_box(w.endpoints())
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

criterion_group!(benches, changes);
criterion_main!(benches);
