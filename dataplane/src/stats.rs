//! Counters a worker publishes for the API to read: the worker copies its plain [`Counters`] into
//! these atomics once per batch (relaxed stores, single writer), so reading never blocks it.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::core::{Counters, DropReason};

/// One worker's published counters.
#[derive(Debug, Default)]
pub struct SharedCounters {
    rx_packets: AtomicU64,
    rx_bytes: AtomicU64,
    tx_packets: AtomicU64,
    tx_bytes: AtomicU64,
    rx_rtp: AtomicU64,
    rx_rtcp: AtomicU64,
    relay_rx: AtomicU64,
    relay_tx: AtomicU64,
    stun_rx: AtomicU64,
    dtls_rx: AtomicU64,
    nack_rx: AtomicU64,
    nack_repaired: AtomicU64,
    nack_forwarded: AtomicU64,
    nack_unsent: AtomicU64,
    nack_unanswered: AtomicU64,
    xdp_tx: AtomicU64,
    xdp_kernel_tx: AtomicU64,
    drops: [AtomicU64; DropReason::COUNT],
}

impl SharedCounters {
    /// Publishes `c` (called by the owning worker only).
    pub fn publish(&self, c: &Counters) {
        self.rx_packets.store(c.rx_packets, Relaxed);
        self.rx_bytes.store(c.rx_bytes, Relaxed);
        self.tx_packets.store(c.tx_packets, Relaxed);
        self.tx_bytes.store(c.tx_bytes, Relaxed);
        self.rx_rtp.store(c.rx_rtp, Relaxed);
        self.rx_rtcp.store(c.rx_rtcp, Relaxed);
        self.relay_rx.store(c.relay_rx, Relaxed);
        self.relay_tx.store(c.relay_tx, Relaxed);
        self.stun_rx.store(c.stun_rx, Relaxed);
        self.dtls_rx.store(c.dtls_rx, Relaxed);
        self.nack_rx.store(c.nack_rx, Relaxed);
        self.nack_repaired.store(c.nack_repaired, Relaxed);
        self.nack_forwarded.store(c.nack_forwarded, Relaxed);
        self.nack_unsent.store(c.nack_unsent, Relaxed);
        self.nack_unanswered.store(c.nack_unanswered, Relaxed);
        self.xdp_tx.store(c.xdp_tx, Relaxed);
        self.xdp_kernel_tx.store(c.xdp_kernel_tx, Relaxed);
        for (a, v) in self.drops.iter().zip(c.drops) {
            a.store(v, Relaxed);
        }
    }

    /// Reads the last published figures.
    pub fn read(&self) -> Counters {
        Counters {
            rx_packets: self.rx_packets.load(Relaxed),
            rx_bytes: self.rx_bytes.load(Relaxed),
            tx_packets: self.tx_packets.load(Relaxed),
            tx_bytes: self.tx_bytes.load(Relaxed),
            rx_rtp: self.rx_rtp.load(Relaxed),
            rx_rtcp: self.rx_rtcp.load(Relaxed),
            relay_rx: self.relay_rx.load(Relaxed),
            relay_tx: self.relay_tx.load(Relaxed),
            stun_rx: self.stun_rx.load(Relaxed),
            dtls_rx: self.dtls_rx.load(Relaxed),
            nack_rx: self.nack_rx.load(Relaxed),
            nack_repaired: self.nack_repaired.load(Relaxed),
            nack_forwarded: self.nack_forwarded.load(Relaxed),
            nack_unsent: self.nack_unsent.load(Relaxed),
            nack_unanswered: self.nack_unanswered.load(Relaxed),
            xdp_tx: self.xdp_tx.load(Relaxed),
            xdp_kernel_tx: self.xdp_kernel_tx.load(Relaxed),
            drops: std::array::from_fn(|i| self.drops[i].load(Relaxed)),
        }
    }
}

impl std::ops::AddAssign for Counters {
    fn add_assign(&mut self, o: Counters) {
        self.rx_packets += o.rx_packets;
        self.rx_bytes += o.rx_bytes;
        self.tx_packets += o.tx_packets;
        self.tx_bytes += o.tx_bytes;
        self.rx_rtp += o.rx_rtp;
        self.rx_rtcp += o.rx_rtcp;
        self.relay_rx += o.relay_rx;
        self.relay_tx += o.relay_tx;
        self.stun_rx += o.stun_rx;
        self.dtls_rx += o.dtls_rx;
        self.nack_rx += o.nack_rx;
        self.nack_repaired += o.nack_repaired;
        self.nack_forwarded += o.nack_forwarded;
        self.nack_unsent += o.nack_unsent;
        self.nack_unanswered += o.nack_unanswered;
        self.xdp_tx += o.xdp_tx;
        self.xdp_kernel_tx += o.xdp_kernel_tx;
        for (a, b) in self.drops.iter_mut().zip(o.drops) {
            *a += b;
        }
    }
}
