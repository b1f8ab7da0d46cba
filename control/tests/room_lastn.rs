//! Last-N and the dominant speaker with aiortc (a Python WebRTC stack nobody here wrote): five
//! participants of one room over two regions (relayed), each watching the others with
//! `last_n=2`. A, then B, then C speak: the room's events announce them in that order, and
//! every receiver then gets the video of exactly the two most recent speakers (counted per
//! publisher at the receivers) and the audio of everyone; over the relay, only what the far side
//! wants crosses.

mod common;

use std::process::Command;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_aiortc_participants_with_last_n_2_get_the_video_of_the_two_latest_speakers() {
    let data = data_dir("lastn");
    let ctl = control_with(
        &data,
        "127.0.0.1:0",
        &[
            "--report-interval-ms",
            "200",
            "--probe-interval-ms",
            "200",
            "--http",
            "127.0.0.1:0",
        ],
    );
    let url = format!("http://{}", ctl.field("listen"));
    let http = format!("http://{}", ctl.field("http"));
    let _bridges = [bridge(&url, "eu-1", "eu"), bridge(&url, "us-1", "us")];
    wait_bridges(&url, 2).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/webrtc/room_lastn.py");
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python())
            .args([script, &http, "meeting", "eu", "us"])
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
    eprintln!("last-N: {report}");
    assert_eq!(report["speakers"], serde_json::json!(["A", "B", "C"]));
    let _ = std::fs::remove_dir_all(&data);
}
