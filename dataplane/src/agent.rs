//! The bridge's side of the control plane (`--control URL`): register with the Registry, then
//! report load every interval; register again when the control plane does not know us (it
//! restarted, or declared us down). On SIGTERM the bridge drains: its reports say so at once,
//! the control plane sends it nothing new and moves what is left after its grace.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ringbridge_proto::v1 as pb;
use ringbridge_proto::v1::registry_client::RegistryClient;
use tonic::transport::Channel;

use crate::core::Counters;
use crate::publish::Publisher;

/// How this bridge presents itself.
#[derive(Debug, Clone)]
pub struct Agent {
    /// Control plane URL, e.g. "http://127.0.0.1:7000", or several separated by commas (the
    /// instances of one shard: the agent moves to the next when one stands by or fails).
    pub control: String,
    /// This bridge's id.
    pub bridge_id: String,
    /// Region.
    pub region: String,
    /// Packets/s (in + out) at which stress is 1.
    pub capacity_pps: f64,
    /// The Bridge API address to announce.
    pub api_addr: String,
    /// The media address to announce.
    pub media_addr: String,
    /// Set when the bridge drains.
    pub drain: Arc<Drain>,
    /// This process's instance id (random, drawn at start): the control plane tells a
    /// restarted bridge from one that registers again by it, and re-keys a restarted one's
    /// relays.
    pub instance_id: String,
    /// This process's DTLS certificate fingerprint, `sha-256 AB:CD:...` (the `a=fingerprint`
    /// of every SDP answer for a WebRTC endpoint on this bridge).
    pub dtls_fingerprint: String,
}

/// A fresh random instance id for this process (128 bits, hex).
pub fn new_instance_id() -> String {
    let mut b = [0u8; 16];
    aws_lc_rs::rand::fill(&mut b).expect("system randomness");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The bridge's drain state, shared by the shutdown path and the agent.
#[derive(Debug, Default)]
pub struct Drain {
    draining: AtomicBool,
    wake: tokio::sync::Notify,
}

impl Drain {
    /// Starts draining: the next report (sent now) says so.
    pub fn start(&self) {
        self.draining.store(true, Ordering::Relaxed);
        self.wake.notify_one();
    }

    /// Whether the bridge drains.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }
}

impl Agent {
    fn register_request(&self) -> pb::RegisterBridgeRequest {
        pb::RegisterBridgeRequest {
            bridge_id: self.bridge_id.clone(),
            api_addr: self.api_addr.clone(),
            media_addr: self.media_addr.clone(),
            region: self.region.clone(),
            capacity_pps: self.capacity_pps,
            instance_id: self.instance_id.clone(),
            dtls_fingerprint: self.dtls_fingerprint.clone(),
        }
    }

    /// Registers and reports until the task is dropped.
    pub async fn run(self, publisher: Arc<Publisher>) {
        let mut clients = Vec::new();
        for url in self
            .control
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
        {
            match Channel::from_shared(url.to_string()) {
                Ok(c) => clients.push((url.to_string(), RegistryClient::new(c.connect_lazy()))),
                Err(e) => {
                    tracing::error!("--control {url}: {e}");
                    return;
                }
            }
        }
        if clients.is_empty() {
            tracing::error!("--control: no URL");
            return;
        }
        let mut at = 0;
        let n = clients.len();
        let mut interval = Duration::from_secs(1);
        let mut registered = false;
        // Log an unreachable control plane once, not every interval.
        let mut failing = false;
        let mut last = (Instant::now(), total(&publisher));
        loop {
            let (url, client) = &mut clients[at];
            if !registered {
                match client.register_bridge(self.register_request()).await {
                    Ok(r) => {
                        interval = Duration::from_millis(r.into_inner().report_interval_ms.max(10));
                        registered = true;
                        tracing::info!(control = %self.control, id = %self.bridge_id, "registered");
                    }
                    Err(e) => {
                        tracing::warn!("registering with {url}: {}", e.message());
                        at = (at + 1) % clients.len();
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = self.drain.wake.notified() => {}
            }
            if !registered {
                continue;
            }
            let now = (Instant::now(), total(&publisher));
            let secs = now.0.duration_since(last.0).as_secs_f64().max(1e-3);
            let rate = |a: u64, b: u64| a.saturating_sub(b) as f64 / secs;
            let (rx_pps, tx_pps) = (
                rate(now.1.rx_packets, last.1.rx_packets),
                rate(now.1.tx_packets, last.1.tx_packets),
            );
            let (conferences, endpoints) = publisher.counts();
            let (conferences, endpoints) = (conferences as u32, endpoints as u32);
            let report = pb::LoadReport {
                bridge_id: self.bridge_id.clone(),
                rx_pps,
                tx_pps,
                rx_bps: rate(now.1.rx_bytes, last.1.rx_bytes) * 8.0,
                tx_bps: rate(now.1.tx_bytes, last.1.tx_bytes) * 8.0,
                conferences,
                endpoints,
                stress: (rx_pps + tx_pps) / self.capacity_pps.max(1.0),
                draining: self.drain.is_draining(),
            };
            last = now;
            let (url, client) = &mut clients[at];
            match client.report_load(report).await {
                Ok(_) => failing = false,
                Err(e) if e.code() == tonic::Code::NotFound => registered = false,
                Err(e) if n > 1 => {
                    // A standby, or an instance that is gone: the next one may be active.
                    tracing::info!(
                        "load report to {url}: {} (trying the next control instance)",
                        e.message()
                    );
                    registered = false;
                    at = (at + 1) % n;
                }
                Err(e) if !failing => {
                    failing = true;
                    tracing::warn!("load report to {url}: {} (retrying quietly)", e.message());
                }
                Err(_) => {}
            }
        }
    }
}

/// How often the agent sends the endpoints' audio levels (while there are any).
pub const AUDIO_INTERVAL: Duration = Duration::from_millis(200);

/// Deadline of one audio report.
const AUDIO_DEADLINE: Duration = Duration::from_secs(1);

impl Agent {
    /// Sends the endpoints' audio levels to the control plane every [`AUDIO_INTERVAL`] while
    /// some endpoint sent any (to the first instance of `--control` that takes them: a standby
    /// refuses).
    pub async fn report_audio(self, publisher: Arc<Publisher>) {
        let mut clients = Vec::new();
        for url in self
            .control
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
        {
            if let Ok(c) = Channel::from_shared(url.to_string()) {
                clients.push(RegistryClient::new(c.connect_lazy()));
            }
        }
        if clients.is_empty() {
            return;
        }
        let mut at = 0;
        let mut tick = tokio::time::interval(AUDIO_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            // Never wait for the state lock on a runtime thread (a change in flight holds it
            // while the workers apply it): the meters keep counting until the next tick.
            let Some(levels) = publisher.try_read(|s| s.take_audio_levels()) else {
                continue;
            };
            if levels.is_empty() {
                continue;
            }
            let mut req = tonic::Request::new(pb::AudioReport {
                bridge_id: self.bridge_id.clone(),
                levels: levels
                    .into_iter()
                    .map(|(c, e, loudness, packets)| pb::AudioLevel {
                        conference_id: c,
                        endpoint_id: e,
                        loudness,
                        packets,
                    })
                    .collect(),
            });
            req.set_timeout(AUDIO_DEADLINE);
            if clients[at].report_audio(req).await.is_err() {
                at = (at + 1) % clients.len();
            }
        }
    }
}

fn total(p: &Publisher) -> Counters {
    p.total_counters()
}
