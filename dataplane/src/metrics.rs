//! The bridge's Prometheus metrics (`--metrics ADDR`), exposed through the shared edge crate.

use ringbridge_edge::metrics::{Registry, counter, gauge, labelled_counters, labelled_gauges};

use crate::core::{Counters, DropReason};
use crate::webrtc::transport::Stats;

/// Fills `r` with the bridge's packet counters (`c`, over all workers), its WebRTC transport's
/// (`w`), conferences and endpoints.
pub fn bridge(r: &mut Registry, c: &Counters, w: &Stats, conferences: usize, endpoints: usize) {
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
    webrtc(r, c, w);
    counter(
        r,
        "ringbridge_nack_rx",
        "Sequence numbers receivers' generic NACKs asked for.",
        c.nack_rx,
    );
    counter(
        r,
        "ringbridge_nack_repaired",
        "Packets resent from the retransmission cache (RTX or plain).",
        c.nack_repaired,
    );
    counter(
        r,
        "ringbridge_nack_forwarded",
        "NACKed sequence numbers the cache did not hold (their NACK went upstream).",
        c.nack_forwarded,
    );
    counter(
        r,
        "ringbridge_nack_unanswered",
        "NACKed sequence numbers left unanswered on purpose (resent to that receiver under 250 ms \
         before, or of a simulcast layer the receiver has left).",
        c.nack_unanswered,
    );
    counter(
        r,
        "ringbridge_xdp_tx",
        "Copies the AF_XDP workers wrote straight to the interface.",
        c.xdp_tx,
    );
    counter(
        r,
        "ringbridge_xdp_kernel_tx",
        "Copies the AF_XDP workers sent through the kernel (destination not behind the \
         interface, neighbour not resolved yet, or longer than the MTU).",
        c.xdp_kernel_tx,
    );
    gauge(
        r,
        "ringbridge_conferences",
        "Conferences.",
        conferences as f64,
    );
    gauge(r, "ringbridge_endpoints", "Endpoints.", endpoints as f64);
}

/// The WebRTC transport's counters (STUN and DTLS on the media port).
fn webrtc(r: &mut Registry, c: &Counters, w: &Stats) {
    counter(
        r,
        "ringbridge_stun_rx",
        "STUN datagrams received on the media port.",
        c.stun_rx,
    );
    counter(
        r,
        "ringbridge_dtls_rx",
        "DTLS datagrams received on the media port.",
        c.dtls_rx,
    );
    counter(
        r,
        "ringbridge_stun_answered",
        "STUN requests answered (ICE checks of WebRTC endpoints).",
        w.stun_answered,
    );
    labelled_counters(
        r,
        "ringbridge_stun_rejected",
        "STUN datagrams given no answer, by reason (wrong_password, unknown_ufrag, ...).",
        "reason",
        w.stun_rejected.iter().map(|(&k, &v)| (k, v)),
    );
    counter(
        r,
        "ringbridge_dtls_dropped",
        "DTLS datagrams from an address no ICE check passed from.",
        w.dtls_dropped,
    );
    counter(
        r,
        "ringbridge_dtls_handshakes",
        "DTLS-SRTP handshakes completed.",
        w.dtls_handshakes,
    );
    labelled_counters(
        r,
        "ringbridge_dtls_failed",
        "DTLS sessions failed, by reason (fingerprint_mismatch, alert, timeout, ...).",
        "reason",
        w.dtls_failed.iter().map(|(&k, &v)| (k, v)),
    );
    counter(
        r,
        "ringbridge_ice_consent_expired",
        "WebRTC endpoints' nominated addresses whose ICE consent expired.",
        w.consent_expired,
    );
    counter(
        r,
        "ringbridge_webrtc_send_failed",
        "STUN answers and DTLS flights the media socket refused to send.",
        w.send_failed,
    );
}
