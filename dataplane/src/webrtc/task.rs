//! The bridge's transport thread: one per bridge, beside the workers. It drives the sans-IO
//! [`Transport`] with what the workers hand over (STUN and DTLS datagrams, through the bounded
//! queue of [`crate::core::handoff`]), the control path's [`Command`]s (endpoints added and
//! removed) and time; sends its datagrams from the media port (a duplicate of a worker's
//! socket, used only to send: answers leave from the port the checks arrived on); and puts its
//! [`Update`]s in force through the [`Publisher`], as every other change to the table is.
//!
//! Each wakeup takes every pending command first (so an endpoint added before its first check
//! arrived is known when the check is handled), then at most [`BATCH`] datagrams, then the due
//! timers, so a flood in the queue never starves the timers or the table updates. Table updates
//! are published at most every [`COALESCE`].

use std::io;
use std::sync::{Arc, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Select, TryRecvError};
use socket2::{SockAddr, Socket};

use super::transport::{Command, Stats, Transport, Update};
use crate::core::handoff::Datagram;
use crate::publish::{PublishError, Publisher};

/// Datagrams handled per wakeup before timers and table updates get their turn.
pub const BATCH: usize = 256;

/// How long the transport's table updates wait to be published together: each publish wakes
/// every worker to apply it, so a burst of handshakes (each ending in a nominated address and
/// keys) costs the workers one wakeup per interval instead of one per handshake. Small next to
/// a handshake's round trips.
pub const COALESCE: Duration = Duration::from_millis(10);

/// The transport's counters as last published, for the API and metrics (the transport thread
/// writes them once per wakeup; readers never wait for a datagram being handled).
#[derive(Debug, Default)]
pub struct SharedStats(Mutex<Stats>);

impl SharedStats {
    /// The last published figures.
    pub fn read(&self) -> Stats {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn publish(&self, s: &Stats) {
        let mut g = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if *g != *s {
            g.clone_from(s);
        }
    }
}

/// What the transport thread needs.
pub struct Parts {
    /// The transport it drives.
    pub transport: Transport,
    /// A duplicate of a worker's media socket, to send from (never received on).
    pub socket: Socket,
    /// The workers' STUN and DTLS datagrams.
    pub inbox: Receiver<Datagram>,
    /// The control path's commands; the thread ends when their sender (the publisher) is gone.
    pub commands: Receiver<Command>,
    /// Where it publishes its counters.
    pub stats: Arc<SharedStats>,
    /// Where its updates go.
    pub publisher: Weak<Publisher>,
}

/// Starts the transport thread.
pub fn spawn(parts: Parts) -> io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("webrtc".into())
        .spawn(move || {
            if let Err(e) = crate::engine::pin::yield_to_workers() {
                tracing::debug!("webrtc: scheduling class unchanged: {e}");
            }
            run(parts)
        })
}

fn run(parts: Parts) {
    let Parts {
        mut transport,
        socket,
        inbox,
        commands,
        stats,
        publisher,
    } = parts;
    let mut updates: Vec<Update> = Vec::new();
    let mut pending_since = Instant::now();
    loop {
        loop {
            match commands.try_recv() {
                Ok(c) => transport.command(c),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => return,
            }
        }
        let now = Instant::now();
        for _ in 0..BATCH {
            match inbox.try_recv() {
                Ok(d) => transport.handle_datagram(d.from, &d.data, now),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => return,
            }
        }
        transport.handle_timeout(Instant::now());
        while let Some(t) = transport.poll_transmit() {
            // Never block on a full socket buffer: a lost answer is retried by the peer.
            if socket
                .send_to_with_flags(&t.data, &SockAddr::from(t.to), libc::MSG_DONTWAIT)
                .is_err()
            {
                transport.count_send_failed();
            }
        }
        // Counters first: whoever sees an update in force sees what it counted.
        stats.publish(transport.stats());
        let before = updates.len();
        updates.extend(std::iter::from_fn(|| transport.poll_update()));
        if before == 0 && !updates.is_empty() {
            pending_since = Instant::now();
        }
        if !updates.is_empty() && pending_since.elapsed() >= COALESCE {
            let Some(p) = publisher.upgrade() else { return };
            let r = p.apply(|st| {
                for u in updates.drain(..) {
                    st.webrtc_update(u);
                }
                Ok::<_, PublishError>(())
            });
            if let Err(e) = r {
                tracing::error!("webrtc: {e}");
            }
        }
        if inbox.is_empty() && commands.is_empty() {
            let mut sel = Select::new();
            sel.recv(&commands);
            sel.recv(&inbox);
            // At least 1 ms: a timer that did not move cannot make the thread spin.
            let due = (!updates.is_empty()).then(|| pending_since + COALESCE);
            match transport.poll_timeout().into_iter().chain(due).min() {
                Some(t) => {
                    let _ = sel.ready_deadline(t.max(Instant::now() + Duration::from_millis(1)));
                }
                None => {
                    sel.ready();
                }
            }
        }
    }
}
