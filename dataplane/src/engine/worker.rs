//! What every engine's worker does between batches: take in control messages, hand core events
//! to the control path, publish counters, and pin itself.

use crate::core::{Core, Table};
use crate::publish::{ToWorker, WorkerPort};

/// A worker's core, sharing the bridge-wide parts `port` carries (keyframe gate, remote
/// senders, the WebRTC hand-off, the retransmission cache), with an empty table until the
/// control path's first delta.
pub(crate) fn new_core(port: &WorkerPort) -> Core {
    Core::new(Table::default())
        .with_keyframe_gate(port.keyframes.clone())
        .with_remote_senders(port.senders.clone())
        .with_handoff(port.handoff.clone())
        .with_repair_cache(port.repair.clone())
}

/// Applies pending table deltas (acknowledging each) and reports whether to keep running.
pub(crate) fn drain_control(port: &WorkerPort, core: &mut Core) -> bool {
    let mut running = true;
    while let Ok(msg) = port.rx.try_recv() {
        match msg {
            ToWorker::Delta(d) => {
                core.set_now(port.keyframes.now_ms());
                core.apply(&d);
                port.ack(d.generation);
            }
            ToWorker::Shutdown => running = false,
        }
    }
    running
}

/// End-of-batch bookkeeping: events out, counters published.
pub(crate) fn end_batch(port: &WorkerPort, core: &mut Core) {
    while let Some(ev) = core.poll_event() {
        let _ = port.events.send(ev);
    }
    port.counters.publish(&core.counters);
}

/// Pins the calling thread to `core`, if given.
pub(crate) fn pin(id: usize, core: Option<core_affinity::CoreId>) {
    if let Some(c) = core
        && !core_affinity::set_for_current(c)
    {
        tracing::warn!(worker = id, core = c.id, "could not pin worker");
    }
}
