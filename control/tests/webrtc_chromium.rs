//! ringbridge's page in headless Chromium (Debian's `chromium` and `chromium-driver`, which `make
//! test` installs; driven by selenium from the test venv): one tab publishes the fake camera over
//! WHIP, two tabs play it over WHEP through an edge; both decode past 60 frames with DTLS
//! connected. Their edge is killed: the page re-POSTs by itself and frames rise again.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use ringbridge_proto::v1::focus_client::FocusClient;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_publishes_and_two_players_recover_from_a_killed_edge() {
    let data = data_dir("chromium");
    let ctl = control_with(
        &data,
        "127.0.0.1:0",
        &["--report-interval-ms", "200", "--http", "127.0.0.1:0"],
    );
    let url = format!("http://{}", ctl.field("listen"));
    let page = format!("http://{}/", ctl.field("http"));
    let mut bridges = [
        bridge(&url, "eu-1", "eu"),
        bridge(&url, "us-1", "us"),
        bridge(&url, "us-2", "us"),
    ];
    wait_bridges(&url, 3).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/webrtc/chromium_page.py");
    let mut child = Command::new(python())
        .args([script, &page, "cam", "eu", "us"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python with selenium (make test installs it in .venv)");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut next = move || {
        tokio::task::block_in_place(|| lines.next().and_then(Result::ok).unwrap_or_default())
    };
    let ready = next();
    assert!(ready.contains("\"ready\""), "{ready}");
    eprintln!("chromium: {ready}");
    // The players' edge dies.
    let placed = get(&mut FocusClient::new(channel(&url).await), "cam")
        .await
        .unwrap();
    let edge = placed
        .bridges
        .iter()
        .find(|b| b.bridge_id.starts_with("us-") && b.participant_count > 0)
        .unwrap_or_else(|| panic!("players on a us edge: {placed:?}"))
        .bridge_id
        .clone();
    let i = if edge == "us-1" { 1 } else { 2 };
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
    let _ = std::fs::remove_dir_all(&data);
}
