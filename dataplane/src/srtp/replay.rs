//! Per-stream receive state: packet index estimation (RFC 3711 Appendix A) and a replay window
//! of [`WINDOW`] packets (RFC 3711 section 3.3.2).

use super::Error;

/// Packets the replay window covers behind the highest index seen.
pub const WINDOW: u64 = 128;

/// A sliding replay window over packet indices.
#[derive(Debug, Clone, Copy, Default)]
pub struct Window {
    init: bool,
    highest: u64,
    /// Bit `n` set: index `highest - n` was accepted.
    bits: u128,
}

impl Window {
    /// Highest accepted index, if any.
    pub fn highest(&self) -> Option<u64> {
        self.init.then_some(self.highest)
    }

    /// Fails when `index` was already accepted or is too old to tell.
    pub fn check(&self, index: u64) -> Result<(), Error> {
        if !self.init || index > self.highest {
            return Ok(());
        }
        let back = self.highest - index;
        if back >= WINDOW || self.bits & (1 << back) != 0 {
            return Err(Error::Replay);
        }
        Ok(())
    }

    /// Records an authenticated `index`.
    pub fn accept(&mut self, index: u64) {
        if !self.init {
            *self = Window {
                init: true,
                highest: index,
                bits: 1,
            };
        } else if index > self.highest {
            let shift = index - self.highest;
            self.bits = if shift >= WINDOW {
                1
            } else {
                (self.bits << shift) | 1
            };
            self.highest = index;
        } else if self.highest - index < WINDOW {
            self.bits |= 1 << (self.highest - index);
        }
        // Older than the window: nothing to record (found by fuzzing: a plain sender's stale
        // packet, accepted without a check, shifted the window by 128 or more).
    }
}

/// An SRTP stream's receive state: the window plus rollover-counter estimation.
#[derive(Debug, Clone, Copy, Default)]
pub struct Stream {
    window: Window,
}

impl Stream {
    /// The 48-bit index of a packet with sequence number `seq`, guessing the rollover counter
    /// from the highest index seen (RFC 3711 Appendix A). The first packet has ROC 0.
    pub fn estimate(&self, seq: u16) -> u64 {
        let Some(h) = self.window.highest() else {
            return u64::from(seq);
        };
        let (roc, s_l) = ((h >> 16) as i64, (h & 0xffff) as i64);
        let seq = i64::from(seq);
        let v = if s_l < 32_768 {
            if seq - s_l > 32_768 { roc - 1 } else { roc }
        } else if s_l - 32_768 > seq {
            roc + 1
        } else {
            roc
        };
        // Before ROC 0 cannot exist; such a packet is older than the stream: index 0 region.
        (v.max(0) as u64) << 16 | seq as u64
    }

    /// See [`Window::check`].
    pub fn check(&self, index: u64) -> Result<(), Error> {
        self.window.check(index)
    }

    /// See [`Window::accept`].
    pub fn accept(&mut self, index: u64) {
        self.window.accept(index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_rejects_replays_and_old_packets() {
        let mut w = Window::default();
        for i in [5, 7, 6, 200] {
            w.check(i).unwrap();
            w.accept(i);
        }
        assert_eq!(w.check(200), Err(Error::Replay));
        assert_eq!(w.check(7), Err(Error::Replay)); // 193 behind: outside the window
        w.check(150).unwrap();
        w.accept(150);
        assert_eq!(w.check(150), Err(Error::Replay));
        w.check(73).unwrap(); // 127 behind: last slot of the window
        assert_eq!(w.check(72), Err(Error::Replay));
    }

    #[test]
    fn rollover_is_estimated_across_65535() {
        let mut s = Stream::default();
        let mut seq = 65_530u16;
        for _ in 0..12 {
            let i = s.estimate(seq);
            s.accept(i);
            seq = seq.wrapping_add(1);
        }
        assert_eq!(s.window.highest(), Some((1 << 16) | 5));
        // A late packet from before the wrap keeps ROC 0.
        assert_eq!(s.estimate(65_534), 65_534);
        assert_eq!(s.check(65_534), Err(Error::Replay));
        assert_eq!(s.estimate(100), (1 << 16) | 100);
    }

    #[test]
    fn accepting_an_index_older_than_the_window_changes_nothing() {
        let mut w = Window::default();
        w.accept(1000);
        let before = w;
        w.accept(1000 - WINDOW);
        w.accept(3);
        assert_eq!((w.highest(), w.bits), (before.highest(), before.bits));
        assert!(w.check(1000 - WINDOW + 1).is_ok());
    }
}
