//! A room in headless Chromium (Debian's `chromium` and `chromium-driver`, which `make test`
//! installs; driven by selenium from the test venv): three tabs in one room over two regions
//! (two bridges, relayed) each decode the two others' video and audio; a fourth joins and
//! everyone gets its stream; one leaves and its tracks end everywhere; the bridge of one region
//! is killed: its tabs are moved (they publish again from the region's other bridge) and every
//! tab decodes every other again.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use ringbridge_proto::v1::focus_client::FocusClient;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_of_browsers_across_two_regions_survives_joins_leaves_and_a_killed_bridge() {
    let data = data_dir("room");
    let ctl = control_with(
        &data,
        "127.0.0.1:0",
        &["--report-interval-ms", "200", "--http", "127.0.0.1:0"],
    );
    let url = format!("http://{}", ctl.field("listen"));
    let page = format!("http://{}/room/standup", ctl.field("http"));
    let mut bridges = [
        bridge(&url, "eu-1", "eu"),
        bridge(&url, "us-1", "us"),
        bridge(&url, "us-2", "us"),
    ];
    wait_bridges(&url, 3).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/webrtc/room_chromium.py");
    let mut child = Command::new(python())
        .args([script, &page])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python with selenium (make test installs it in .venv)");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut next = move || {
        tokio::task::block_in_place(|| lines.next().and_then(Result::ok).unwrap_or_default())
    };
    for phase in ["three", "four", "ready"] {
        let line = next();
        eprintln!("chromium: {line}");
        assert!(line.contains(&format!("\"{phase}\"")), "{line}");
    }
    // The room spans two bridges (eu and one us bridge): kill the us one.
    let placed = get(&mut FocusClient::new(channel(&url).await), "standup")
        .await
        .unwrap();
    let hosting: Vec<&str> = placed
        .bridges
        .iter()
        .filter(|b| b.participant_count > 0)
        .map(|b| b.bridge_id.as_str())
        .collect();
    assert!(hosting.contains(&"eu-1"), "{placed:?}");
    let us = *hosting
        .iter()
        .find(|b| b.starts_with("us-"))
        .unwrap_or_else(|| panic!("a us bridge in the room: {placed:?}"));
    let i = if us == "us-1" { 1 } else { 2 };
    bridges[i].kill();
    writeln!(child.stdin.as_mut().unwrap(), "killed").unwrap();
    let recovered = next();
    eprintln!("chromium: {recovered}");
    assert!(recovered.contains("\"recovered\""), "{recovered}");
    let status = tokio::time::timeout(Duration::from_secs(30), async {
        tokio::task::block_in_place(|| child.wait())
    })
    .await
    .unwrap()
    .unwrap();
    assert!(status.success());
    // Nothing left behind on the bridges but the sessions of the three who stayed.
    let _ = std::fs::remove_dir_all(&data);
}
