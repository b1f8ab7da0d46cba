//! Dominant speaker of one conference, sans-IO: bridges report each endpoint's mean loudness
//! (RFC 6464 levels, ~every 200 ms); this decides who is the dominant speaker and keeps the
//! conference's recent speakers, most recent first (what last-N forwards the video of).
//!
//! The rule (simpler than Jitsi's DominantSpeakerIdentification, and explained in
//! `docs/rooms.md`): each participant's score is an exponential average of its reported loudness
//! (half the weight on the newest report), and counts as silence once it has not been reported
//! for [`STALE_MS`]. A participant speaks while its score is at least [`SPEECH`] (a level of
//! -57 dBov or louder: speech is typically -20 to -40 dBov, room noise below -60). The loudest
//! speaking participant becomes dominant once it has been the loudest (and louder than the
//! current dominant, or the current one has stopped speaking) in [`CONFIRM`] decisions in a row:
//! a cough or a word of agreement does not take over. Nobody speaking keeps the last dominant.

use std::collections::HashMap;

/// Loudness (0-127, 127 - level) from which a participant counts as speaking.
pub const SPEECH: f64 = 70.0;
/// Decisions in a row a challenger must be the loudest before it becomes dominant.
pub const CONFIRM: u32 = 2;
/// A participant not reported for this long counts as silent, ms.
pub const STALE_MS: u64 = 600;
/// Recent speakers kept.
pub const RECENT: usize = 16;

#[derive(Debug, Clone, Copy)]
struct Score {
    value: f64,
    at_ms: u64,
}

/// One conference's speakers; see the module docs.
#[derive(Debug, Clone, Default)]
pub struct Speakers {
    scores: HashMap<String, Score>,
    dominant: Option<String>,
    recent: Vec<String>,
    challenger: Option<(String, u32)>,
}

impl Speakers {
    /// A participant's loudness over the last interval (mean, 0-127) at `now_ms`.
    pub fn observe(&mut self, participant: &str, loudness: f64, now_ms: u64) {
        let loudness = loudness.clamp(0.0, 127.0);
        let s = self.scores.entry(participant.to_string()).or_insert(Score {
            value: loudness,
            at_ms: now_ms,
        });
        let prev = if now_ms.saturating_sub(s.at_ms) > STALE_MS {
            0.0
        } else {
            s.value
        };
        s.value = 0.5 * prev + 0.5 * loudness;
        s.at_ms = now_ms;
    }

    /// A participant left: it is no longer scored, dominant or recent.
    pub fn forget(&mut self, participant: &str) {
        self.scores.remove(participant);
        self.recent.retain(|p| p != participant);
        if self.dominant.as_deref() == Some(participant) {
            self.dominant = None;
        }
        if self
            .challenger
            .as_ref()
            .is_some_and(|(c, _)| c == participant)
        {
            self.challenger = None;
        }
    }

    fn score(&self, participant: &str, now_ms: u64) -> f64 {
        self.scores
            .get(participant)
            .filter(|s| now_ms.saturating_sub(s.at_ms) <= STALE_MS)
            .map_or(0.0, |s| s.value)
    }

    /// Decides at `now_ms`; returns the new dominant speaker when it changed.
    pub fn decide(&mut self, now_ms: u64) -> Option<String> {
        let loudest = self
            .scores
            .keys()
            .map(|p| (p, self.score(p, now_ms)))
            .filter(|(_, s)| *s >= SPEECH)
            .max_by(|a, b| a.1.total_cmp(&b.1).then_with(|| b.0.cmp(a.0)))
            .map(|(p, s)| (p.clone(), s));
        let Some((top, top_score)) = loudest else {
            self.challenger = None;
            return None;
        };
        if self.dominant.as_deref() == Some(top.as_str()) {
            self.challenger = None;
            return None;
        }
        let current = self
            .dominant
            .as_deref()
            .map_or(0.0, |d| self.score(d, now_ms));
        if current >= SPEECH && current >= top_score {
            self.challenger = None;
            return None;
        }
        let streak = match &self.challenger {
            Some((c, n)) if *c == top => n + 1,
            _ => 1,
        };
        if streak < CONFIRM {
            self.challenger = Some((top, streak));
            return None;
        }
        self.challenger = None;
        self.recent.retain(|p| *p != top);
        self.recent.insert(0, top.clone());
        self.recent.truncate(RECENT);
        self.dominant = Some(top.clone());
        Some(top)
    }

    /// The dominant speaker, if anyone has spoken.
    pub fn dominant(&self) -> Option<&str> {
        self.dominant.as_deref()
    }

    /// Recent speakers, most recent first.
    pub fn recent(&self) -> &[String] {
        &self.recent
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reports every 200 ms for `ms`: `loud` at 110, everyone else in `all` at 10.
    fn talk(s: &mut Speakers, all: &[&str], loud: &str, from: u64, ms: u64) -> Vec<String> {
        let mut changes = Vec::new();
        let mut t = from;
        while t < from + ms {
            for p in all {
                s.observe(p, if *p == loud { 110.0 } else { 10.0 }, t);
            }
            changes.extend(s.decide(t));
            t += 200;
        }
        changes
    }

    #[test]
    fn speakers_take_over_in_turn_and_recent_keeps_the_order() {
        let mut s = Speakers::default();
        let all = ["a", "b", "c", "d"];
        assert_eq!(talk(&mut s, &all, "a", 0, 1000), ["a"]);
        assert_eq!(talk(&mut s, &all, "b", 1000, 1000), ["b"]);
        assert_eq!(talk(&mut s, &all, "c", 2000, 1000), ["c"]);
        assert_eq!(s.dominant(), Some("c"));
        assert_eq!(s.recent(), ["c", "b", "a"]);
        // Silence keeps the last dominant.
        assert!(talk(&mut s, &all, "nobody", 3000, 1000).is_empty());
        assert_eq!(s.dominant(), Some("c"));
        // a again: to the front.
        talk(&mut s, &all, "a", 4000, 1000);
        assert_eq!(s.recent(), ["a", "c", "b"]);
    }

    #[test]
    fn a_short_sound_does_not_take_over() {
        let mut s = Speakers::default();
        let all = ["a", "b"];
        talk(&mut s, &all, "a", 0, 1000);
        // b loud for one report only, a still loud too: a stays.
        s.observe("a", 110.0, 1000);
        s.observe("b", 115.0, 1000);
        assert_eq!(s.decide(1000), None);
        s.observe("a", 110.0, 1200);
        s.observe("b", 10.0, 1200);
        assert_eq!(s.decide(1200), None);
        assert_eq!(s.dominant(), Some("a"));
    }

    #[test]
    fn reports_that_stop_count_as_silence_and_leavers_are_forgotten() {
        let mut s = Speakers::default();
        talk(&mut s, &["a", "b"], "a", 0, 1000);
        // a's bridge stops reporting; b speaks.
        let mut changes = Vec::new();
        for t in [1800, 2000, 2200] {
            s.observe("b", 110.0, t);
            changes.extend(s.decide(t));
        }
        assert_eq!(changes, ["b"]);
        s.forget("b");
        assert_eq!(s.dominant(), None);
        assert_eq!(s.recent(), ["a"]);
    }
}
