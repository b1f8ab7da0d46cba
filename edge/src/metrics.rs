//! Prometheus exposition over plain HTTP (`--metrics ADDR`). Every scrape builds a fresh
//! `prometheus-client` [`Registry`] from the process's current figures (the binaries keep their
//! own counters; this is only the exposition), encoded in the OpenMetrics text format.
//!
//! `prometheus-client` (0.24) writes label values verbatim, so a bridge id with a quote or a
//! newline would break the whole scrape: label values go through [`Escaped`].

use std::sync::Arc;

use prometheus_client::encoding::text::encode;
pub use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Fills a registry with the current metrics.
pub type Render = Arc<dyn Fn(&mut Registry) + Send + Sync>;

/// The text of one scrape.
pub fn text(render: &Render) -> String {
    let mut registry = Registry::default();
    render(&mut registry);
    let mut out = String::new();
    encode(&mut out, &registry).expect("writing to a String cannot fail");
    out
}

/// Serves the metrics to every HTTP request on `listener`, until the task is dropped.
pub async fn serve(listener: TcpListener, render: Render) {
    loop {
        let Ok((mut conn, _)) = listener.accept().await else {
            continue;
        };
        let render = render.clone();
        tokio::spawn(async move {
            let mut req = [0u8; 1024];
            let _ = conn.read(&mut req).await;
            let body = text(&render);
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/openmetrics-text; version=1.0.0; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = conn.write_all(head.as_bytes()).await;
            let _ = conn.write_all(body.as_bytes()).await;
        });
    }
}

/// A label value escaped as the text format requires (`\\`, `\"`, `\n`).
#[derive(Debug, Clone, Hash, PartialEq, Eq)]
pub struct Escaped(pub String);

impl prometheus_client::encoding::EncodeLabelValue for Escaped {
    fn encode(
        &self,
        e: &mut prometheus_client::encoding::LabelValueEncoder<'_>,
    ) -> Result<(), std::fmt::Error> {
        use std::fmt::Write;
        for ch in self.0.chars() {
            match ch {
                '\\' => e.write_str("\\\\")?,
                '"' => e.write_str("\\\"")?,
                '\n' => e.write_str("\\n")?,
                c => e.write_char(c)?,
            }
        }
        Ok(())
    }
}

/// The encoder ends every help text with a period: do not end ours with one too.
fn help(h: &str) -> &str {
    h.strip_suffix('.').unwrap_or(h)
}

/// A gauge family labelled by one label, e.g. stress per bridge.
pub fn labelled_gauges<'a>(
    registry: &mut Registry,
    name: &str,
    help: &str,
    label: &str,
    values: impl IntoIterator<Item = (&'a str, f64)>,
) {
    use prometheus_client::metrics::family::Family;
    use prometheus_client::metrics::gauge::Gauge;
    let family =
        Family::<Vec<(String, Escaped)>, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
    for (v, x) in values {
        family
            .get_or_create(&vec![(label.to_string(), Escaped(v.to_string()))])
            .set(x);
    }
    registry.register(name, self::help(help), family);
}

/// A counter family labelled by one label (`_total` is appended to `name` by the encoder).
pub fn labelled_counters<'a>(
    registry: &mut Registry,
    name: &str,
    help: &str,
    label: &str,
    values: impl IntoIterator<Item = (&'a str, u64)>,
) {
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::family::Family;
    let family = Family::<Vec<(String, Escaped)>, Counter>::default();
    for (v, x) in values {
        family
            .get_or_create(&vec![(label.to_string(), Escaped(v.to_string()))])
            .inc_by(x);
    }
    registry.register(name, self::help(help), family);
}

/// A gauge without labels.
pub fn gauge(registry: &mut Registry, name: &str, help: &str, value: f64) {
    use prometheus_client::metrics::gauge::ConstGauge;
    registry.register(name, self::help(help), ConstGauge::new(value));
}

/// A counter without labels (`_total` is appended to `name` by the encoder).
pub fn counter(registry: &mut Registry, name: &str, help: &str, value: u64) {
    use prometheus_client::metrics::counter::ConstCounter;
    registry.register(name, self::help(help), ConstCounter::new(value));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        let render: Render = Arc::new(|r| {
            labelled_gauges(r, "stress", "Stress.", "bridge", [("a\"b\\c\nd", 0.5)]);
            gauge(r, "conferences", "Conferences.", 3.0);
            counter(r, "rx_packets", "Received.", 7);
        });
        let t = text(&render);
        assert!(t.contains(r#"stress{bridge="a\"b\\c\nd"} 0.5"#), "{t}");
        assert!(t.contains("conferences 3.0"), "{t}");
        assert!(t.contains("rx_packets_total 7"), "{t}");
        assert!(t.contains("# HELP conferences Conferences.\n"), "{t}");
        assert!(t.ends_with("# EOF\n"), "{t}");
    }
}
