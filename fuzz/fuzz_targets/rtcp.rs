#![no_main]
//! The RTCP compound walker (report blocks, feedback FCI targets) on arbitrary datagrams, and the
//! keyframe hold-back on what it accepts: what is left is whole packets, never longer.
use libfuzzer_sys::fuzz_target;
use ringbridge_dataplane::core::rtcp;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = rtcp::summarize(data) {
        assert!(s.targets().len() <= rtcp::MAX_TARGETS);
        if !s.feedback {
            assert!(s.targets().is_empty());
        }
        let mut pkt = data.to_vec();
        let mut flip = false;
        let (n, _) = rtcp::hold_back_keyframes(&mut pkt, |_| {
            flip = !flip;
            flip
        });
        assert!(n <= data.len() && n % 4 == 0);
    }
});
