//! Assembles a bridge: engine workers, the table publisher, the WebRTC transport thread and the
//! gRPC server.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;

use crate::api::{BridgeService, serve};
use crate::engine::{self, Choice, Tuning};
use crate::publish::{Channels, Publisher, TransportLink};
use crate::stats::SharedCounters;
use crate::webrtc::dtls::{Certificate, Fingerprint};
use crate::webrtc::inbox;
use crate::webrtc::task::{self, SharedStats};
use crate::webrtc::transport::Transport;

/// How to run a bridge.
#[derive(Debug, Clone)]
pub struct Config {
    /// UDP media address (port 0: pick one).
    pub media: SocketAddr,
    /// gRPC address (port 0: pick one).
    pub api: SocketAddr,
    /// Worker threads.
    pub workers: usize,
    /// Engine choice.
    pub engine: Choice,
    /// The interface the AF_XDP engine takes over (with [`Choice::Xdp`]).
    pub xdp_iface: Option<String>,
    /// Address announced to endpoints; default the bound media address.
    pub advertise: Option<SocketAddr>,
    /// Engine tuning.
    pub tuning: Tuning,
    /// Capacity limits of the API.
    pub limits: crate::state::Limits,
    /// At most one keyframe request (PLI/FIR) per media stream per this many ms goes on
    /// towards its sender (0: no throttling).
    pub keyframe_interval_ms: u32,
    /// Retransmission cache: slots per stream (0: no cache, NACKs go upstream) and streams.
    pub nack_cache: (usize, usize),
    /// How long a WebRTC endpoint's nominated address keeps consent without a valid check
    /// ([`crate::webrtc::ice::CONSENT_TIMEOUT_MS`]; shorter only in tests).
    pub ice_consent_ms: u64,
}

/// A started bridge whose API is not serving yet.
pub struct Running {
    /// Engine name.
    pub engine: &'static str,
    /// Bound media address.
    pub media: SocketAddr,
    /// Bound API address.
    pub api: SocketAddr,
    /// The media address announced to endpoints and the control plane (computed once, here).
    pub advertise: SocketAddr,
    /// Number of workers.
    pub workers: usize,
    /// The SHA-256 fingerprint of this process's DTLS certificate (every WebRTC answer's
    /// `a=fingerprint`).
    pub dtls_fingerprint: Fingerprint,
    listener: tokio::net::TcpListener,
    service: BridgeService,
    publisher: Arc<Publisher>,
}

/// Binds the sockets and starts the workers and the WebRTC transport.
pub async fn start(config: Config) -> anyhow::Result<Running> {
    // One certificate per process, made before anything serves.
    let cert = Arc::new(Certificate::generate().context("the DTLS certificate")?);
    let (packets, streams) = config.nack_cache;
    let mut channels = Channels::with_keyframe_interval(config.keyframe_interval_ms)
        .with_repair_cache(streams, packets);
    let (handoff, inbox) = channels.open_handoff();
    let started = engine::start(
        config.engine,
        config.media,
        config.workers,
        config.tuning,
        config.xdp_iface.as_deref(),
        &channels,
    )
    .with_context(|| format!("starting the media engine on {}", config.media))?;
    tracing::info!(
        engine = started.kind.name(),
        workers = started.links.len(),
        media = %started.media,
        "{}; {}",
        started.why,
        started.steering
    );
    let listener = tokio::net::TcpListener::bind(config.api)
        .await
        .with_context(|| format!("binding the API on {}", config.api))?;
    let api = listener.local_addr()?;
    let mut advertise = config.advertise.unwrap_or(started.media);
    if advertise.ip().is_unspecified() {
        let lo = if advertise.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        };
        tracing::warn!("media bound to an unspecified address; announcing {lo} (set --advertise)");
        advertise.set_ip(lo);
    }
    let workers = started.links.len();
    let (commands_tx, commands) = crossbeam_channel::unbounded();
    let stats = Arc::new(SharedStats::default());
    let received = Arc::new(SharedCounters::default());
    let publisher = Publisher::start(
        started.media,
        config.limits,
        channels,
        started.links,
        Some(TransportLink {
            commands: commands_tx,
            stats: stats.clone(),
            received: received.clone(),
        }),
    );
    let dtls_fingerprint = cert.fingerprint().clone();
    // Ends by itself once the publisher (the commands' sender) is gone.
    task::spawn(task::Parts {
        transport: Transport::new(cert, config.ice_consent_ms, Instant::now()),
        socket: started.sender,
        inbox,
        commands,
        stats,
        publisher: Arc::downgrade(&publisher),
    })
    .context("starting the WebRTC transport thread")?;
    if let Some(slow) = started.slow {
        inbox::spawn(slow, handoff, received, Arc::downgrade(&publisher))
            .context("starting the WebRTC receive thread")?;
    }
    let service = BridgeService::new(publisher.clone(), advertise, started.kind.name());
    Ok(Running {
        engine: started.kind.name(),
        media: started.media,
        api,
        advertise,
        workers,
        dtls_fingerprint,
        listener,
        service,
        publisher,
    })
}

impl Running {
    /// The table publisher (state and counters), for the control agent and metrics.
    pub fn publisher(&self) -> Arc<Publisher> {
        self.publisher.clone()
    }

    /// Serves the API until `shutdown`, then stops the workers.
    pub async fn serve(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) -> anyhow::Result<()> {
        let r = serve(self.service, self.listener, shutdown).await;
        self.publisher.shutdown();
        r
    }
}
