//! WebRTC end to end with aiortc (a Python WebRTC stack nobody here wrote; `make test` installs it
//! in the test venv): a publisher over WHIP on an origin in one region, three viewers over WHEP on
//! edges in two other regions. Each viewer decodes at least 95 % of the numbered frames sent, and
//! only frames that were sent; every session ends with DELETE and the bridges hold nothing after.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aiortc_publishes_over_whip_and_three_viewers_play_over_whep_on_two_edges() {
    let data = data_dir("aiortc");
    let ctl = control_with(
        &data,
        "127.0.0.1:0",
        &["--report-interval-ms", "200", "--http", "127.0.0.1:0"],
    );
    let url = format!("http://{}", ctl.field("listen"));
    let http = format!("http://{}", ctl.field("http"));
    let _bridges = [
        bridge(&url, "eu-1", "eu"),
        bridge(&url, "us-1", "us"),
        bridge(&url, "ap-1", "ap"),
    ];
    wait_bridges(&url, 3).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/webrtc/aiortc_stream.py");
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python())
            .args([script, &http, "live", "eu", "us", "us", "ap"])
            .output()
            .expect("python with aiortc (make test installs it in .venv)")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "aiortc run failed: {stdout}\n--- stderr ---\n{}",
        &stderr[stderr.len().saturating_sub(4000)..]
    );
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    eprintln!("aiortc: {report}");
    let viewers = report["viewers"].as_array().unwrap();
    assert_eq!(viewers.len(), 3);
    for v in viewers {
        assert!(v["share"].as_f64().unwrap() >= 0.95, "{v}");
        assert!(v["bogus"].as_array().unwrap().is_empty(), "{v}");
    }
    // Every session ended with DELETE: nothing is left on the bridges.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left: Vec<String> = endpoints(&url)
            .await
            .into_iter()
            .map(|(bridge, e)| format!("{} on {bridge}", e.endpoint_id))
            .collect();
        if left.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "sessions left: {left:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = std::fs::remove_dir_all(&data);
}
