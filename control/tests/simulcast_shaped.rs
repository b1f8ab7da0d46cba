//! A simulcast viewer behind a rate-limited link settles on a layer that fits and climbs back
//! when the limit is lifted, end to end: headless Chromium publishes three layers (320x180,
//! 640x360, 1280x720) over WHIP to a real bridge; a second headless Chromium plays over WHEP
//! from its own network namespace, behind a veth link the test shapes to 300 kbit/s with a token
//! bucket (`tc qdisc ... tbf`: netem is missing on the kernels we run on). The bridge picks the
//! viewer's layer from its REMB (libwebrtc's receive-side delay-based estimator) capped by the
//! losses in its receiver reports.
//!
//! Each cycle: shaped, the viewer must decode the q layer (at most 320 wide) within
//! [`SETTLE_SECS`] and stay on it; lifted, it must decode the top layer again (within the
//! script's bound). The times are printed (the recovery time's p50 over runs is measured by
//! running this test repeatedly, see docs/quality.md).
//!
//! Needs root (a network namespace, a veth pair, a qdisc), Debian's `chromium` and
//! `chromium-driver`, and Python with selenium (`RINGBRIDGE_PYTHON`).

mod common;

use std::time::Duration;

use common::*;
use ringbridge_dataplane::testkit::netns::Link;

/// Shape-and-lift cycles in one run.
const CYCLES: u32 = 2;
/// The viewer decodes a layer that fits within this long of the shaping (the bound).
const SETTLE_SECS: f64 = 5.0;
/// Bound on the Python side: the publisher's ramp-up (up to 60 s) and per cycle at most 20 s to
/// settle, 6 s held, 60 s to climb.
const RUN_LIMIT: Duration = Duration::from_secs(260);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_behind_a_shaped_link_settles_on_a_layer_that_fits_and_climbs_back() {
    let link = Link::new(0);
    let data = data_dir("simulcast-shaped");
    let (ctl, _bridge) = control_and_bridge_on(link.host, &data, &[]).await;

    let args = [
        "run".to_string(),
        format!("http://{}", ctl.field("http")),
        "shaped".into(),
        link.ns.clone(),
        link.host_if.clone(),
        CYCLES.to_string(),
    ];
    let report = run_script("simulcast_shaped.py", &args, RUN_LIMIT).await;
    assert_eq!(report["rids"], serde_json::json!(["q", "h", "f"]));

    let cycles = report["cycles"].as_array().unwrap();
    assert_eq!(cycles.len(), CYCLES as usize);
    for (i, c) in cycles.iter().enumerate() {
        // Shaped: on the q layer in time, and nothing wider decoded while held.
        let settle = c["settle_secs"].as_f64().unwrap();
        assert!(
            settle <= SETTLE_SECS,
            "cycle {i}: a layer that fits after {settle} s: {c}"
        );
        assert_eq!(c["held"], true, "cycle {i}: left the layer that fits: {c}");
        assert!(
            c["hold_frames"].as_i64().unwrap() >= 30,
            "cycle {i}: the viewer stopped decoding while shaped: {c}"
        );
        // Lifted: back on the top layer (within the script's bound).
        assert!(c["climb_secs"].as_f64().is_some(), "cycle {i}: {c}");
    }
    let _ = std::fs::remove_dir_all(&data);
}
