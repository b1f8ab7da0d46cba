//! Prometheus text exposition over plain HTTP (`--metrics ADDR`), for the bridge and the
//! control plane: every request gets the current metrics.

use std::fmt::Write as _;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::core::{Counters, DropReason};

/// Serves `render()` to every HTTP request on `listener`, until the task is dropped.
pub async fn serve(listener: TcpListener, render: Arc<dyn Fn() -> String + Send + Sync>) {
    loop {
        let Ok((mut conn, _)) = listener.accept().await else {
            continue;
        };
        let render = render.clone();
        tokio::spawn(async move {
            let mut req = [0u8; 1024];
            let _ = conn.read(&mut req).await;
            let body = render();
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = conn.write_all(head.as_bytes()).await;
            let _ = conn.write_all(body.as_bytes()).await;
        });
    }
}

/// Appends one metric with its HELP and TYPE lines.
pub fn metric(out: &mut String, name: &str, kind: &str, help: &str, samples: &[(&str, f64)]) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    for (labels, v) in samples {
        if labels.is_empty() {
            let _ = writeln!(out, "{name} {v}");
        } else {
            let _ = writeln!(out, "{name}{{{labels}}} {v}");
        }
    }
}

/// The bridge's packet counters as Prometheus metrics.
pub fn bridge(c: &Counters, conferences: usize, endpoints: usize) -> String {
    let mut s = String::new();
    let counters: [(&str, &str, u64); 6] = [
        (
            "ringbridge_rx_packets_total",
            "Datagrams received.",
            c.rx_packets,
        ),
        ("ringbridge_rx_bytes_total", "Bytes received.", c.rx_bytes),
        ("ringbridge_tx_packets_total", "Copies sent.", c.tx_packets),
        ("ringbridge_tx_bytes_total", "Bytes sent.", c.tx_bytes),
        ("ringbridge_rx_rtp_total", "RTP packets received.", c.rx_rtp),
        (
            "ringbridge_rx_rtcp_total",
            "RTCP packets received.",
            c.rx_rtcp,
        ),
    ];
    for (name, help, v) in counters {
        metric(&mut s, name, "counter", help, &[("", v as f64)]);
    }
    let labels: Vec<String> = DropReason::ALL
        .iter()
        .map(|r| format!("reason=\"{}\"", r.name()))
        .collect();
    let drops: Vec<(&str, f64)> = DropReason::ALL
        .iter()
        .zip(&labels)
        .map(|(r, l)| (l.as_str(), c.drops[*r as usize] as f64))
        .collect();
    metric(
        &mut s,
        "ringbridge_dropped_packets_total",
        "counter",
        "Dropped packets by reason.",
        &drops,
    );
    metric(
        &mut s,
        "ringbridge_conferences",
        "gauge",
        "Conferences.",
        &[("", conferences as f64)],
    );
    metric(
        &mut s,
        "ringbridge_endpoints",
        "gauge",
        "Endpoints.",
        &[("", endpoints as f64)],
    );
    s
}
