//! The bridge's Prometheus metrics (`--metrics ADDR`), exposed through the shared edge crate.

use ringbridge_edge::metrics::{Registry, counter, gauge, labelled_gauges};

use crate::core::{Counters, DropReason};

/// Fills `r` with the bridge's packet counters, conferences and endpoints.
pub fn bridge(r: &mut Registry, c: &Counters, conferences: usize, endpoints: usize) {
    counter(
        r,
        "ringbridge_rx_packets",
        "Datagrams received.",
        c.rx_packets,
    );
    counter(r, "ringbridge_rx_bytes", "Bytes received.", c.rx_bytes);
    counter(r, "ringbridge_tx_packets", "Copies sent.", c.tx_packets);
    counter(r, "ringbridge_tx_bytes", "Bytes sent.", c.tx_bytes);
    counter(r, "ringbridge_rx_rtp", "RTP packets received.", c.rx_rtp);
    counter(r, "ringbridge_rx_rtcp", "RTCP packets received.", c.rx_rtcp);
    counter(
        r,
        "ringbridge_relay_rx",
        "Relay packets received.",
        c.relay_rx,
    );
    counter(r, "ringbridge_relay_tx", "Relay packets sent.", c.relay_tx);
    // Counters by reason as a labelled family (values are monotonic; exposed as gauges so one
    // family carries every reason).
    labelled_gauges(
        r,
        "ringbridge_dropped_packets",
        "Dropped packets by reason (monotonic).",
        "reason",
        DropReason::ALL
            .iter()
            .map(|d| (d.name(), c.drops[*d as usize] as f64)),
    );
    gauge(
        r,
        "ringbridge_conferences",
        "Conferences.",
        conferences as f64,
    );
    gauge(r, "ringbridge_endpoints", "Endpoints.", endpoints as f64);
}
