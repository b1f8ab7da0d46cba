//! The rig's report: JSON for machines (`--json FILE`), a table for people.

use std::fmt::Write;

use serde::Serialize;

use crate::rig::{RunResult, Topology};
use crate::traffic::Load;

/// This machine's host name, for report file names.
pub fn host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "host".into())
}

/// Today's date, `YYYY-MM-DD` (local time, from `date`), for report file names.
pub fn today() -> String {
    std::process::Command::new("date")
        .arg("+%Y-%m-%d")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| "today".into())
}

/// One-way latency percentiles in microseconds.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Latency {
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Largest.
    pub max: f64,
}

/// The parameters of a run.
#[derive(Debug, Clone, Serialize)]
pub struct Params {
    /// Conferences.
    pub conferences: usize,
    /// Participants per conference.
    pub participants: usize,
    /// Copies per received packet (participants - 1) without subscriptions.
    pub fanout: usize,
    /// `--subscribe K`: each participant subscribed to K senders of its conference (fewer when
    /// it has fewer other senders); `null`: no subscriptions, everyone receives every sender.
    pub subscribe: Option<usize>,
    /// Streams each participant sends.
    pub streams: Load,
    /// Packets per second all participants together offer.
    pub offered_pps: f64,
    /// Measured seconds.
    pub duration_s: f64,
    /// Warm-up seconds (not counted).
    pub warmup_s: f64,
}

/// One step of `--find-max`.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    /// Packets per second offered to the forwarder.
    pub offered_pps: f64,
    /// Copies per second delivered.
    pub forwarded_pps: f64,
    /// Lost over expected.
    pub loss_ratio: f64,
    /// p99 one-way latency, microseconds.
    pub p99_us: f64,
}

/// Result of `--find-max`.
#[derive(Debug, Clone, Serialize)]
pub struct FindMax {
    /// Highest offered rate with loss at or under 0.1% (0 if none was clean).
    pub max_clean_offered_pps: f64,
    /// Copies per second delivered at that rate.
    pub max_clean_forwarded_pps: f64,
    /// Every step tried, in order.
    pub steps: Vec<Step>,
}

/// The report of one run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// What the traffic flowed through.
    pub target: String,
    /// How the run was set up.
    pub params: Params,
    /// Packets sent in the measured window.
    pub sent_packets: u64,
    /// Copies participants should have received.
    pub expected_packets: u64,
    /// Distinct copies received.
    pub received_packets: u64,
    /// Expected minus received.
    pub lost_packets: u64,
    /// Copies received more than once.
    pub duplicate_packets: u64,
    /// Copies that arrived after a later one of their stream.
    pub reordered_packets: u64,
    /// Copies delivered to the wrong participant.
    pub misrouted_packets: u64,
    /// Copies that arrived rewritten onto another SSRC (simulcast receivers).
    pub rewritten_packets: u64,
    /// Lost over expected.
    pub loss_ratio: f64,
    /// Packets per second the rig sent in the window.
    pub sent_pps: f64,
    /// Copies per second received.
    pub forwarded_pps: f64,
    /// Bits per second received.
    pub forwarded_bps: f64,
    /// One-way latency, microseconds.
    pub latency_us: Latency,
    /// CPU nanoseconds the forwarder spent per copy delivered (when it runs on this machine).
    pub bridge_cpu_ns_per_forwarded_packet: Option<f64>,
    /// The forwarder's CPU use in the window, percent of one core.
    pub bridge_cpu_percent: Option<f64>,
    /// True when Ctrl-C cut the run short.
    pub interrupted: bool,
    /// Present with `--find-max`.
    pub find_max: Option<FindMax>,
}

fn us(h: &hdrhistogram::Histogram<u64>, q: f64) -> f64 {
    if h.is_empty() {
        0.0
    } else {
        h.value_at_quantile(q) as f64 / 1000.0
    }
}

impl Report {
    /// Builds the report of run `r`.
    pub fn new(target: &str, topo: &Topology, load: &Load, warmup_s: f64, r: &RunResult) -> Self {
        let secs = r.window.as_secs_f64().max(1e-9);
        let cpu = r.target_cpu_ns;
        Self {
            target: target.into(),
            params: Params {
                conferences: topo.conferences,
                participants: topo.participants,
                fanout: topo.participants.saturating_sub(1),
                subscribe: r.subscribe,
                streams: load.clone(),
                offered_pps: r.offered_pps,
                duration_s: secs,
                warmup_s,
            },
            sent_packets: r.sent_packets,
            expected_packets: r.expected_packets,
            received_packets: r.received_packets,
            lost_packets: r.lost_packets,
            duplicate_packets: r.duplicate_packets,
            reordered_packets: r.reordered_packets,
            misrouted_packets: r.misrouted_packets,
            rewritten_packets: r.rewritten_packets,
            loss_ratio: r.loss_ratio(),
            sent_pps: r.achieved_pps,
            forwarded_pps: r.forwarded_pps(),
            forwarded_bps: r.received_bytes as f64 * 8.0 / secs,
            latency_us: Latency {
                p50: us(&r.latency_ns, 0.5),
                p99: us(&r.latency_ns, 0.99),
                p999: us(&r.latency_ns, 0.999),
                max: r.latency_ns.max() as f64 / 1000.0,
            },
            bridge_cpu_ns_per_forwarded_packet: cpu
                .filter(|_| r.received_packets > 0)
                .map(|c| c as f64 / r.received_packets as f64),
            bridge_cpu_percent: cpu.map(|c| c as f64 / 1e9 / secs * 100.0),
            interrupted: r.interrupted,
            find_max: None,
        }
    }

    /// The human summary.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let p = &self.params;
        let opt = |v: Option<f64>, unit: &str| v.map_or("n/a".into(), |v| format!("{v:.0}{unit}"));
        let _ = writeln!(
            s,
            "target {} | {} conference(s) x {} participants (fan-out {}{}) | offered {:.0} pps | {:.1} s measured{}",
            self.target,
            p.conferences,
            p.participants,
            p.fanout,
            p.subscribe
                .map_or(String::new(), |k| format!(", subscribed to {k}")),
            p.offered_pps,
            p.duration_s,
            if self.interrupted {
                " (interrupted: partial)"
            } else {
                ""
            }
        );
        let rows: [(&str, String); 12] = [
            ("sent packets", self.sent_packets.to_string()),
            ("expected copies", self.expected_packets.to_string()),
            ("received copies", self.received_packets.to_string()),
            (
                "lost",
                format!("{} ({:.4}%)", self.lost_packets, self.loss_ratio * 100.0),
            ),
            ("duplicates", self.duplicate_packets.to_string()),
            ("reordered", self.reordered_packets.to_string()),
            ("misrouted", self.misrouted_packets.to_string()),
            ("forwarded pps", format!("{:.0}", self.forwarded_pps)),
            (
                "forwarded Mbit/s",
                format!("{:.2}", self.forwarded_bps / 1e6),
            ),
            (
                "latency us p50/p99/p99.9/max",
                format!(
                    "{:.0} / {:.0} / {:.0} / {:.0}",
                    self.latency_us.p50,
                    self.latency_us.p99,
                    self.latency_us.p999,
                    self.latency_us.max
                ),
            ),
            (
                "bridge CPU ns/forwarded pkt",
                opt(self.bridge_cpu_ns_per_forwarded_packet, ""),
            ),
            ("bridge CPU", opt(self.bridge_cpu_percent, "% of a core")),
        ];
        for (k, v) in rows {
            let _ = writeln!(s, "  {k:<30} {v}");
        }
        if let Some(f) = &self.find_max {
            let _ = writeln!(
                s,
                "  find-max steps (offered pps -> forwarded pps, loss, p99 us):"
            );
            for st in &f.steps {
                let _ = writeln!(
                    s,
                    "    {:>10.0} -> {:>10.0}  {:>8.4}%  {:>8.0}",
                    st.offered_pps,
                    st.forwarded_pps,
                    st.loss_ratio * 100.0,
                    st.p99_us
                );
            }
            let _ = writeln!(
                s,
                "  max clean rate: {:.0} pps offered, {:.0} copies/s forwarded",
                f.max_clean_offered_pps, f.max_clean_forwarded_pps
            );
        }
        s
    }
}
