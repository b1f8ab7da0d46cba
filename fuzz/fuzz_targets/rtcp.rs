#![no_main]
//! The RTCP compound walker (report blocks, feedback FCI targets) on arbitrary datagrams.
use libfuzzer_sys::fuzz_target;
use ringbridge_dataplane::core::rtcp;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = rtcp::summarize(data) {
        assert!(s.targets().len() <= rtcp::MAX_TARGETS);
        if !s.feedback {
            assert!(s.targets().is_empty());
        }
    }
});
