//! What was lately resent to one receiver: a packet goes to the same receiver again only
//! [`RESEND_MS`] after its last resend. A browser NACKs a missing packet again every round-trip
//! time it assumes (100 ms until it has measured one, and a receive-only browser never does), up
//! to ten times; on a congested link its repairs are lost as well, and answering every NACK
//! turns the repairs into a flood that keeps the link congested (libwebrtc's sender likewise
//! resends a packet at most once per round trip). Sans-IO.

/// A packet is resent to one receiver at most once within this long.
pub const RESEND_MS: u32 = 250;

/// Resends remembered per receiver (a ring: the oldest is forgotten first).
const KEPT: usize = 64;

/// One receiver's recent resends: (SSRC, sequence number, when in ms; 0: empty).
#[derive(Debug, Clone)]
pub struct Recent {
    resent: [(u32, u16, u32); KEPT],
    next: usize,
}

impl Default for Recent {
    fn default() -> Self {
        Self {
            resent: [(0, 0, 0); KEPT],
            next: 0,
        }
    }
}

impl Recent {
    /// Whether packet `seq` of stream `ssrc` (as the receiver numbers it) may be resent at
    /// `now_ms`; if so, it counts as resent then.
    pub fn allow(&mut self, ssrc: u32, seq: u16, now_ms: u32) -> bool {
        let now = now_ms.max(1);
        if let Some(e) = self
            .resent
            .iter_mut()
            .find(|e| e.2 != 0 && e.0 == ssrc && e.1 == seq)
        {
            if now.wrapping_sub(e.2) < RESEND_MS {
                return false;
            }
            e.2 = now;
            return true;
        }
        self.resent[self.next] = (ssrc, seq, now);
        self.next = (self.next + 1) % KEPT;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_packet_is_resent_once_per_interval_per_stream() {
        let mut r = Recent::default();
        assert!(r.allow(7, 100, 1_000));
        assert!(
            !r.allow(7, 100, 1_000 + RESEND_MS - 1),
            "asked again too soon"
        );
        assert!(r.allow(7, 101, 1_010), "another packet");
        assert!(r.allow(8, 100, 1_010), "another stream");
        assert!(r.allow(7, 100, 1_000 + RESEND_MS));
        assert!(!r.allow(7, 100, 1_000 + RESEND_MS + 10));
        // The ring forgets the oldest.
        for s in 0..KEPT as u16 {
            r.allow(9, s, 2_000);
        }
        assert!(r.allow(7, 101, 2_000), "forgotten");
    }
}
