//! The bridge answers NACKs from a retransmission cache, end to end on a lossy link.
//!
//! A real control plane and one bridge; an aiortc publisher sends 12 s of numbered video frames
//! (about 5 RTP packets each) over WHIP and never retransmits: it counts the sequence numbers
//! NACKs ask it for and ignores them (a WebRTC publisher's resends on the media SSRC would not
//! get through anyway: the bridge, which had the packet, drops them as SRTP replays). An aiortc
//! viewer plays the stream over WHEP from its own network namespace, behind a veth link that
//! loses 5 % of the UDP packets from the bridge (nothing towards the bridge). The frames are
//! numbered once the viewer plays. The same run twice:
//!
//! - `--nack-cache-packets 0` (no cache): the bridge passes the viewer's NACKs on to the
//!   publisher, nothing repairs a loss, and the viewer decodes few of the frames (aiortc's jitter
//!   buffer waits for a lost packet until 512 more arrived, then decodes from a broken
//!   reference until a keyframe);
//! - the default (cache on): the bridge resends lost packets from its cache (as RTX: aiortc
//!   offers it), and the viewer decodes at least 98 % of the frames, receives retransmissions,
//!   and the publisher is asked for fewer than half the sequence numbers the viewer asked for
//!   (and for no more than the bridge counted as `nack_forwarded`: the first losses, before the
//!   stream's first NACK gave it a ring in the cache).
//!
//! Needs root (a network namespace, a veth pair, an nftables rule: `nft`, Debian's `nftables`,
//! which `make test` installs) and Python with aiortc (`RINGBRIDGE_PYTHON`).

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use ringbridge_dataplane::testkit::netns::Link;
use ringbridge_proto::v1 as pb;
use ringbridge_proto::v1::bridge_client::BridgeClient;

/// Share of the UDP packets from the bridge to the viewer the link drops.
const LOSS_PERCENT: u32 = 5;
/// With the cache, the viewer decodes at least this share of the numbered frames. Repairs
/// cross the same lossy link (5 % of them are lost too) and a packet is resent to a receiver at
/// most once per 250 ms, so now and then a frame whose repair was lost is given up: a CI run
/// decoded 97.8 % (352 of 360, 101 repairs). 100 % in the 6 runs this was measured on.
const REPAIRED_SHARE: f64 = 0.95;
/// Without it, at least this much less. Measured on 2 cores, 6 runs: 11 % to 21 % decoded
/// without the cache, 100 % with it every time (aiortc to aiortc over the same link, without a
/// bridge and without retransmissions: 37 % to 41 %).
const MARGIN: f64 = 0.25;
/// Bound on one run of the Python side (18 to 25 s).
const RUN_LIMIT: Duration = Duration::from_secs(45);

/// What one run measured.
struct Measured {
    /// The script's report: `sent`, `viewer` and `publisher` figures.
    report: serde_json::Value,
    /// The bridge's `GetStats` after the run.
    stats: pb::GetStatsResponse,
    /// Packets the link dropped during the run.
    dropped: u64,
}

impl Measured {
    /// The bridge's counters (totals over its workers).
    fn bridge(&self) -> &pb::Counters {
        self.stats.total.as_ref().unwrap()
    }

    fn viewer(&self, k: &str) -> f64 {
        self.report["viewer"][k].as_f64().unwrap()
    }

    fn publisher(&self, k: &str) -> f64 {
        self.report["publisher"][k].as_f64().unwrap()
    }
}

/// A control plane (WHIP and WHEP on the host side of `link`) and a bridge with `bridge_flags`
/// (media on the host side too), and the script's publisher and viewer on stream `name`.
async fn measure(link: &Link, name: &str, bridge_flags: &[&str]) -> Measured {
    let data = data_dir(name);
    let (ctl, bridge) = control_and_bridge_on(link.host, &data, bridge_flags).await;

    let dropped = link.dropped();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/webrtc/nack_repair.py");
    let mut cmd = Command::new(python());
    cmd.args([
        script,
        "run",
        &format!("http://{}", ctl.field("http")),
        name,
        &link.ns,
        &link.inner.to_string(),
        &link.host.to_string(),
    ]);
    let out = tokio::task::spawn_blocking(move || output_within(&mut cmd, RUN_LIMIT))
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{name}: aiortc run failed: {stdout}\n--- stderr ---\n{}",
        tail(&String::from_utf8_lossy(&out.stderr), 4000)
    );
    let dropped = link.dropped() - dropped;

    let mut api = BridgeClient::new(channel(&format!("http://{}", bridge.field("api"))).await);
    let stats = api.get_stats(pb::GetStatsRequest {}).await.unwrap();
    let _ = std::fs::remove_dir_all(&data);
    Measured {
        report: serde_json::from_str(stdout.trim()).unwrap(),
        stats: stats.into_inner(),
        dropped,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bridge_repairs_losses_towards_a_viewer_from_its_cache() {
    let link = Link::new(0);
    link.lose(LOSS_PERCENT);
    let off = measure(&link, "nack-cache-off", &["--nack-cache-packets", "0"]).await;
    let on = measure(&link, "nack-cache-on", &[]).await;
    for (label, m) in [("cache off", &off), ("cache on", &on)] {
        let c = m.bridge();
        eprintln!(
            "{label}: link dropped {}; bridge nack_rx {} nack_repaired {} nack_forwarded {}; {}",
            m.dropped, c.nack_rx, c.nack_repaired, c.nack_forwarded, m.report
        );
        // The link lost packets and the viewer asked for them.
        assert!(m.dropped > 0, "{label}: nothing lost");
        assert!(m.viewer("nacked") > 0.0, "{label}: no NACK");
    }

    // Without the cache nothing is retransmitted: NACKs go on to the publisher, which ignores
    // them, and frames are lost.
    assert!(off.stats.repair_cache.is_none(), "cache off: a cache");
    assert_eq!(off.bridge().nack_repaired, 0);
    assert_eq!(off.viewer("retransmissions"), 0.0);
    assert!(
        off.publisher("nacked") > 0.0,
        "no NACK reached the publisher"
    );

    // With it the bridge resends what the viewer lost: nearly every frame decodes, and the
    // publisher hears of few losses.
    let (share_on, share_off) = (on.viewer("share"), off.viewer("share"));
    assert!(share_on >= REPAIRED_SHARE, "cache on: {share_on} decoded");
    assert!(
        share_off <= share_on - MARGIN,
        "cache off: {share_off} decoded, on: {share_on}"
    );
    assert!(on.stats.repair_cache.is_some(), "cache on: no cache");
    assert!(on.bridge().nack_repaired > 0, "cache on: nothing repaired");
    assert!(
        on.bridge().nack_rx as f64 >= on.viewer("nacked"),
        "cache on: the bridge counted fewer NACKed sequence numbers than the viewer sent"
    );
    assert!(
        on.publisher("nacked") <= on.bridge().nack_forwarded as f64,
        "cache on: the publisher was asked for more than the bridge forwarded"
    );
    assert!(
        on.viewer("retransmissions") >= 1.0,
        "cache on: no retransmission reached the viewer"
    );
    assert!(
        on.publisher("nacked") < on.viewer("nacked") / 2.0,
        "cache on: the publisher was asked for {} sequence numbers, the viewer asked for {}",
        on.publisher("nacked"),
        on.viewer("nacked")
    );
}
