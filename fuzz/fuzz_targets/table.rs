#![no_main]
//! The Bridge API's state on arbitrary sequences of requests (ids, SSRCs, addresses, SRTP
//! parameters, latching): every request either applies or is refused without change, and a
//! worker's copy of the table fed the published deltas stays identical to the control path's.
use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use ringbridge_dataplane::core::Table;
use ringbridge_dataplane::state::{BridgeState, Limits, SrtpRequest};

#[derive(Arbitrary, Debug)]
enum Req {
    Create(u8),
    Delete(u8),
    Add {
        conf: u8,
        ep: u8,
        ssrcs: Vec<u8>,
        addr: Option<(u8, u16)>,
        srtp: Option<(u8, u8)>,
    },
    Remove(u8, u8),
    Latch(u8, u8, u16),
    RawAddr(u8, u8, String),
}

fuzz_target!(|reqs: Vec<Req>| {
    let mut st = BridgeState::with_limits(
        "127.0.0.1:10000".parse().unwrap(),
        Limits {
            endpoints: 40,
            endpoints_per_conference: 8,
            ..Limits::default()
        },
    );
    let mut worker = Table::default();
    for r in reqs.into_iter().take(64) {
        let before = st.endpoints();
        let ok = match r {
            Req::Create(c) => st.create_conference(&format!("c{}", c % 4)).is_ok(),
            Req::Delete(c) => st.delete_conference(&format!("c{}", c % 4)).is_ok(),
            Req::Add {
                conf,
                ep,
                ssrcs,
                addr,
                srtp,
            } => {
                let ssrcs: Vec<u32> = ssrcs.into_iter().map(u32::from).collect();
                let addr = addr.map_or(String::new(), |(h, port)| {
                    format!("127.0.0.{}:{port}", h % 4)
                });
                let srtp = srtp.map(|(prof, len)| SrtpRequest {
                    profile: ["AEAD_AES_128_GCM", "AES_CM_128_HMAC_SHA1_80", "nope"]
                        [usize::from(prof % 3)]
                    .into(),
                    endpoint_key: vec![7; usize::from(len % 48)],
                    bridge_key: Vec::new(),
                });
                st.add_endpoint(
                    &format!("c{}", conf % 4),
                    &format!("e{}", ep % 16),
                    &ssrcs,
                    &addr,
                    srtp.as_ref(),
                )
                .is_ok()
            }
            Req::Remove(c, e) => st
                .remove_endpoint(&format!("c{}", c % 4), &format!("e{}", e % 16))
                .is_ok(),
            Req::Latch(uid, h, port) => st.latch(
                u64::from(uid % 40),
                format!("127.0.1.{h}:{port}").parse().unwrap(),
            ),
            Req::RawAddr(c, e, addr) => st
                .add_endpoint(
                    &format!("c{}", c % 4),
                    &format!("e{}", e % 16),
                    &[1],
                    &addr,
                    None,
                )
                .is_ok(),
        };
        if !ok {
            assert!(
                st.endpoints() == before || st.endpoints() < before,
                "a refused request added nothing"
            );
        }
        worker.apply_delta(&st.delta());
        assert_eq!(worker.endpoints(), st.table().endpoints());
        assert_eq!(st.endpoints(), st.table().endpoints());
    }
});
