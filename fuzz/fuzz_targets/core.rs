#![no_main]
//! The core's whole per-packet decision (classify, latch, SRTP, RTCP feedback routing, fan-out)
//! on arbitrary datagrams from arbitrary sources, against a table of plain, SRTP and latching
//! endpoints: never panics, never sends a copy back to its source.
use std::net::SocketAddr;
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use ringbridge_dataplane::core::{Core, TableBuilder};
use ringbridge_dataplane::srtp::{Profile, Session};

fn addr(i: u8) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 5000 + u16::from(i)))
}

fn core() -> Core {
    let p = Profile::AeadAes128Gcm;
    let s = || Arc::new(Session::new(p, &[1; 16], &[2; 12]).unwrap());
    let mut b = TableBuilder::new();
    let c = b.conference();
    b.endpoint(c, 1, &[10, 11], Some(addr(1)), None);
    b.endpoint(c, 2, &[20], Some(addr(2)), Some((s(), s())));
    b.endpoint(c, 3, &[30], None, None); // latches
    b.endpoint(c, 4, &[40], Some(addr(4)), None);
    let d = b.conference();
    b.endpoint(d, 5, &[50], Some(addr(5)), None);
    Core::new(b.build(1))
}

fuzz_target!(|data: &[u8]| {
    thread_local!(static CORE: std::cell::RefCell<Core> = std::cell::RefCell::new(core()));
    let Some((&src, pkt)) = data.split_first() else {
        return;
    };
    let src = addr(src % 8);
    let mut pkt = pkt.to_vec();
    CORE.with(|c| {
        let mut c = c.borrow_mut();
        if let Ok(v) = c.handle(&mut pkt, src) {
            assert!(v.len <= pkt.len());
            assert!(v.dests.iter().all(|p| p.addr != src), "never echoed");
        }
        while c.poll_event().is_some() {}
    });
});
