//! Hands table changes to the workers. The API changes [`BridgeState`] under a mutex (the
//! control path only), which records the change as table ops; the ops go down every worker's
//! channel as one [`Delta`], the workers are woken, and the call returns once each has
//! acknowledged that generation: the change is then in force everywhere. Workers never lock;
//! they apply deltas to their own table between batches. WebRTC endpoints added or removed also
//! go to the bridge's transport thread as commands ([`TransportLink`]), before the change is
//! published; what the transport learns comes back through [`Publisher::apply`] like any change.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use crate::core::handoff::{self, Datagram, Handoff};
use crate::core::{Delta, Event, KeyframeGate, RemoteSenders, RepairCache};
use crate::state::{BridgeState, Limits};
use crate::stats::SharedCounters;
use crate::webrtc::task::SharedStats;
use crate::webrtc::transport::{Command, Stats};

/// How long an RPC waits for every worker to take a new table in before it reports failure.
pub const APPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// Wakes a worker blocked waiting for I/O.
pub trait Wake: Send + Sync {
    /// Makes the worker return to its loop soon and drain its channel.
    fn wake(&self);
}

/// A message from the control path to a worker.
#[derive(Debug)]
pub enum ToWorker {
    /// Apply these table changes, then acknowledge their generation.
    Delta(Arc<Delta>),
    /// Finish in-flight sends and exit.
    Shutdown,
}

/// The worker's end of its link to the control path.
#[derive(Debug)]
pub struct WorkerPort {
    /// Worker index.
    pub id: usize,
    /// Tables and shutdown.
    pub rx: Receiver<ToWorker>,
    /// `(worker, generation)` once a table is in force.
    pub acks: Sender<(usize, u64)>,
    /// Events from the worker's core (latched addresses).
    pub events: Sender<Event>,
    /// Where the worker publishes its counters.
    pub counters: Arc<SharedCounters>,
    /// The bridge's keyframe-request throttle, shared by its workers.
    pub keyframes: Arc<KeyframeGate>,
    /// The relays remote senders' media arrives over, learned and read by every worker.
    pub senders: Arc<RemoteSenders>,
    /// Where the worker's core hands STUN and DTLS (the bridge's WebRTC transport), if any.
    pub handoff: Option<Handoff>,
    /// The bridge's retransmission cache, shared by its workers (`None`: disabled).
    pub repair: Option<Arc<RepairCache>>,
}

impl WorkerPort {
    /// Acknowledges `generation`; a closed channel means the bridge is shutting down.
    pub fn ack(&self, generation: u64) {
        let _ = self.acks.send((self.id, generation));
    }
}

/// The control path's end of a worker: its channel, waker, counters and thread.
pub struct WorkerLink {
    tx: Sender<ToWorker>,
    waker: Arc<dyn Wake>,
    /// The worker's published counters.
    pub counters: Arc<SharedCounters>,
    thread: Option<JoinHandle<()>>,
}

impl WorkerLink {
    /// Links a spawned worker thread.
    pub fn new(
        tx: Sender<ToWorker>,
        waker: Arc<dyn Wake>,
        counters: Arc<SharedCounters>,
        thread: JoinHandle<()>,
    ) -> Self {
        Self {
            tx,
            waker,
            counters,
            thread: Some(thread),
        }
    }
}

/// Channels a worker needs before it is spawned; see [`Publisher::port`].
pub struct PortFactory {
    acks: Sender<(usize, u64)>,
    events: Sender<Event>,
    keyframes: Arc<KeyframeGate>,
    senders: Arc<RemoteSenders>,
    handoff: Option<Handoff>,
    repair: Option<Arc<RepairCache>>,
}

impl PortFactory {
    /// A port for worker `id`, and the sender the control path keeps.
    pub fn port(&self, id: usize) -> (WorkerPort, Sender<ToWorker>, Arc<SharedCounters>) {
        let (tx, rx) = crossbeam_channel::unbounded();
        let counters = Arc::new(SharedCounters::default());
        let port = WorkerPort {
            id,
            rx,
            acks: self.acks.clone(),
            events: self.events.clone(),
            counters: counters.clone(),
            keyframes: self.keyframes.clone(),
            senders: self.senders.clone(),
            handoff: self.handoff.clone(),
            repair: self.repair.clone(),
        };
        (port, tx, counters)
    }
}

/// Why a change could not be put in force.
#[derive(Debug, thiserror::Error)]
#[error("worker {worker} did not apply table generation {generation} within {APPLY_TIMEOUT:?}")]
pub struct PublishError {
    /// The slow or dead worker.
    pub worker: usize,
    /// The generation it did not acknowledge.
    pub generation: u64,
}

/// The control path's link to the bridge's WebRTC transport thread.
#[derive(Debug)]
pub struct TransportLink {
    /// Where WebRTC endpoints added and removed go.
    pub commands: Sender<Command>,
    /// What the transport counted.
    pub stats: Arc<SharedStats>,
    /// What the transport's own socket received (kernel steering), counted as a worker counts.
    pub received: Arc<crate::stats::SharedCounters>,
}

/// Owns the bridge state and the links to all workers.
pub struct Publisher {
    state: Mutex<BridgeState>,
    links: Vec<WorkerLink>,
    transport: Option<TransportLink>,
    repair: Option<Arc<RepairCache>>,
    acks: Receiver<(usize, u64)>,
    /// Conferences and endpoints as of the last change, readable without the state lock (load
    /// reports, stats and metrics never wait for a change being built).
    counts: (AtomicUsize, AtomicUsize),
}

/// Channels shared by all workers of one bridge, created before the workers.
pub struct Channels {
    /// Makes worker ports.
    pub factory: PortFactory,
    acks: Receiver<(usize, u64)>,
    events: Receiver<Event>,
}

impl Channels {
    /// Fresh channels, without keyframe throttling.
    pub fn new() -> Self {
        Self::with_keyframe_interval(0)
    }

    /// Fresh channels; the workers let one keyframe request per stream through every
    /// `interval_ms` (0: all).
    pub fn with_keyframe_interval(interval_ms: u32) -> Self {
        let (ack_tx, acks) = crossbeam_channel::unbounded();
        let (ev_tx, events) = crossbeam_channel::unbounded();
        Self {
            factory: PortFactory {
                acks: ack_tx,
                events: ev_tx,
                keyframes: Arc::new(KeyframeGate::with_ssrc(interval_ms, random_ssrc())),
                senders: Arc::new(RemoteSenders::default()),
                handoff: None,
                repair: None,
            },
            acks,
            events,
        }
    }

    /// Gives the workers (those whose ports are made from now on) a retransmission cache of
    /// `streams` rings of `packets` slots (`packets` 0: none, NACKs go upstream).
    pub fn with_repair_cache(mut self, streams: usize, packets: usize) -> Self {
        self.factory.repair = (packets > 0).then(|| Arc::new(RepairCache::new(streams, packets)));
        self
    }

    /// The retransmission cache the workers share, if any.
    pub fn repair_cache(&self) -> Option<Arc<RepairCache>> {
        self.factory.repair.clone()
    }

    /// Makes the workers (those whose ports are made from now on) hand STUN and DTLS to a
    /// bounded queue of [`handoff::CAPACITY`]; returns a sender's end (for the transport's own
    /// socket, when the kernel steers to it) and the transport's end.
    pub fn open_handoff(&mut self) -> (Handoff, crossbeam_channel::Receiver<Datagram>) {
        let (h, rx) = handoff::queue(handoff::CAPACITY);
        self.factory.handoff = Some(h.clone());
        (h, rx)
    }
}

impl Default for Channels {
    fn default() -> Self {
        Self::new()
    }
}

impl Publisher {
    /// A publisher over running workers (and the WebRTC transport, when the bridge runs one).
    /// Starts the thread that records latched addresses.
    pub fn start(
        media: SocketAddr,
        limits: Limits,
        channels: Channels,
        links: Vec<WorkerLink>,
        transport: Option<TransportLink>,
    ) -> Arc<Self> {
        let repair = channels.repair_cache();
        let Channels { acks, events, .. } = channels;
        let p = Arc::new(Self {
            state: Mutex::new(BridgeState::with_limits(media, limits)),
            links,
            transport,
            repair,
            acks,
            counts: (AtomicUsize::new(0), AtomicUsize::new(0)),
        });
        let weak = Arc::downgrade(&p);
        std::thread::Builder::new()
            .name("latch".into())
            .spawn(move || {
                while let Ok(first) = events.recv() {
                    let Some(p) = weak.upgrade() else { return };
                    let mut st = p.lock();
                    let mut changed = false;
                    for ev in std::iter::once(first).chain(events.try_iter()) {
                        match ev {
                            Event::Latched { uid, addr } => {
                                if st.latch(uid, addr) {
                                    tracing::info!(%addr, uid, "endpoint latched");
                                    changed = true;
                                }
                            }
                            Event::Learned { uid, ssrc, layer } => {
                                if st.learn_layer(uid, ssrc, layer) {
                                    tracing::info!(uid, ssrc, layer, "simulcast layer learned");
                                    changed = true;
                                }
                            }
                        }
                    }
                    if changed && let Err(e) = p.publish(&mut st) {
                        tracing::error!("latch: {e}");
                    }
                }
            })
            .expect("spawn latch thread");
        p
    }

    fn lock(&self) -> MutexGuard<'_, BridgeState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reads the state (waits for a change in progress).
    pub fn read<R>(&self, f: impl FnOnce(&BridgeState) -> R) -> R {
        f(&self.lock())
    }

    /// Reads the state if no change holds it now (`None` then): for async tasks, which must not
    /// block a runtime thread while a change waits for the workers.
    pub fn try_read<R>(&self, f: impl FnOnce(&BridgeState) -> R) -> Option<R> {
        match self.state.try_lock() {
            Ok(st) => Some(f(&st)),
            Err(std::sync::TryLockError::Poisoned(e)) => Some(f(&e.into_inner())),
            Err(std::sync::TryLockError::WouldBlock) => None,
        }
    }

    /// Conferences and endpoints as of the last change, without taking the state lock.
    pub fn counts(&self) -> (usize, usize) {
        (self.counts.0.load(Relaxed), self.counts.1.load(Relaxed))
    }

    /// Runs a mutation; if it succeeds, puts the new table in force on every worker before
    /// returning. A mutation that fails changes nothing and publishes nothing.
    pub fn apply<R, E: From<PublishError>>(
        &self,
        f: impl FnOnce(&mut BridgeState) -> Result<R, E>,
    ) -> Result<R, E> {
        let mut st = self.lock();
        let r = f(&mut st);
        self.counts.0.store(st.conferences(), Relaxed);
        self.counts.1.store(st.endpoints(), Relaxed);
        // Sent before the table change is published, so the transport knows an endpoint
        // before the RPC that added it returns (and its first check can arrive).
        for c in st.take_commands() {
            if let Some(t) = &self.transport {
                // Fails only when the transport thread is gone (the bridge is stopping).
                let _ = t.commands.send(c);
            }
        }
        let r = r?;
        self.publish(&mut st)?;
        Ok(r)
    }

    /// The retransmission cache, if the bridge keeps one (its memory is in the stats).
    pub fn repair_cache(&self) -> Option<&RepairCache> {
        self.repair.as_deref()
    }

    /// What the WebRTC transport counted (all zero without one).
    pub fn webrtc_stats(&self) -> Stats {
        self.transport
            .as_ref()
            .map(|t| t.stats.read())
            .unwrap_or_default()
    }

    fn publish(&self, st: &mut BridgeState) -> Result<(), PublishError> {
        if !st.has_pending() {
            return Ok(()); // nothing changed for the workers (e.g. only a WebRTC state)
        }
        let delta = Arc::new(st.delta());
        let generation = delta.generation;
        for l in &self.links {
            // A send fails only if the worker is gone; the ack wait below reports it.
            let _ = l.tx.send(ToWorker::Delta(delta.clone()));
            l.waker.wake();
        }
        let deadline = Instant::now() + APPLY_TIMEOUT;
        let mut done = vec![false; self.links.len()];
        while let Some(worker) = done.iter().position(|d| !d) {
            match self.acks.recv_deadline(deadline) {
                Ok((w, g)) if g >= generation => done[w] = true,
                Ok(_) => {}
                Err(_) => return Err(PublishError { worker, generation }),
            }
        }
        Ok(())
    }

    /// Each worker's last published counters.
    pub fn worker_counters(&self) -> Vec<crate::core::Counters> {
        self.links.iter().map(|l| l.counters.read()).collect()
    }

    /// The bridge's counters: every worker's, and what the transport's own socket received
    /// (STUN and DTLS the kernel steered past the workers).
    pub fn total_counters(&self) -> crate::core::Counters {
        let mut t = crate::core::Counters::default();
        for l in &self.links {
            t += l.counters.read();
        }
        if let Some(tr) = &self.transport {
            t += tr.received.read();
        }
        t
    }

    /// Stops every worker and waits for them.
    pub fn shutdown(&self) {
        for l in &self.links {
            let _ = l.tx.send(ToWorker::Shutdown);
            l.waker.wake();
        }
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.shutdown();
        for l in &mut self.links {
            if let Some(t) = l.thread.take() {
                let _ = t.join();
            }
        }
    }
}

/// A random SSRC for the bridge's own RTCP (its keyframe requests).
fn random_ssrc() -> u32 {
    let mut b = [0u8; 4];
    // Falls back to the fixed one if the system has no randomness to give.
    let _ = aws_lc_rs::rand::fill(&mut b);
    u32::from_be_bytes(b).max(1)
}
