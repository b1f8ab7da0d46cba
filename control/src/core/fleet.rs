//! The bridge fleet and bridge selection. Bridges register, then report load periodically; a
//! bridge that misses [`Fleet::missed_reports`] intervals is down. The control plane also probes
//! each bridge's health with a deadline: a failed probe or a timed-out call makes a bridge
//! *suspect* (no new conferences), [`Fleet::probe_failures_down`] failed probes in a row make it
//! down. Selection follows Jicofo: never a down, suspect, shutting-down or draining bridge;
//! prefer the participant's region; among candidates the lowest stress, corrected for
//! participants placed since the last report. A draining bridge (ordered by the control plane
//! or reported by the bridge on SIGTERM) takes nothing new; draining is one-way: the bridge is
//! removed once empty, and a process that registers again under its id starts afresh.

use std::collections::BTreeMap;

/// A bridge's identity.
pub type BridgeId = String;

/// How a bridge is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Health {
    /// Reporting on time and answering.
    Up,
    /// A call or a health probe timed out or failed: takes nothing new until a probe succeeds.
    Suspect,
    /// Missed its reports or its probes: its conferences must move.
    Down,
}

impl Health {
    /// As the API shows it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Up => "up",
            Self::Suspect => "suspect",
            Self::Down => "down",
        }
    }
}

/// One bridge as the control plane sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Bridge {
    /// Identity.
    pub id: BridgeId,
    /// gRPC address of its Bridge API.
    pub api_addr: String,
    /// Media address endpoints send to.
    pub media_addr: String,
    /// Region, e.g. "eu-west".
    pub region: String,
    /// Load figure (e.g. packets/s) at which stress is 1.0.
    pub capacity: f64,
    /// Last reported load / capacity.
    pub stress: f64,
    /// Takes no new conferences or participants; keeps its existing ones until they leave or
    /// are moved.
    pub draining: bool,
    /// When the drain began, ms.
    pub drain_since_ms: u64,
    /// It has sent a load report since it registered (before that its stress is unknown).
    pub reported: bool,
    /// Up or down.
    pub health: Health,
    /// When the last report (or the registration) arrived, ms.
    pub last_report_ms: u64,
    /// Streams placed on it since that report (see [`Fleet::placed`]).
    pub placed_since_report: u32,
    /// Health probes failed in a row.
    pub probe_failures: u32,
    /// Why it is suspect or down (empty while up).
    pub why: String,
    /// The bridge process's instance id (`RegisterBridge.instance_id`): a registration with
    /// another one is a restarted bridge. Empty: unknown (every registration is a new process).
    pub instance: String,
    /// The bridge process's DTLS certificate fingerprint (`sha-256 AB:CD:...`), which every SDP
    /// answer for a WebRTC participant on it carries. Empty: it takes no WebRTC participant.
    pub dtls_fingerprint: String,
}

/// What a registration of a bridge was, as [`Fleet::register`] tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Registration {
    /// A bridge id the fleet did not know.
    New,
    /// The same process again (same non-empty instance id): it still holds what it was given.
    Again,
    /// A known id from a new process (another instance id, or none given): it holds nothing,
    /// and every relay key it used belongs to the old process.
    Restarted,
}

impl Bridge {
    /// A newly registered bridge.
    pub fn new(id: &str, api_addr: &str, media_addr: &str, region: &str, capacity: f64) -> Self {
        Self {
            id: id.into(),
            api_addr: api_addr.into(),
            media_addr: media_addr.into(),
            region: region.into(),
            capacity,
            stress: 0.0,
            draining: false,
            drain_since_ms: 0,
            reported: false,
            health: Health::Up,
            last_report_ms: 0,
            placed_since_report: 0,
            probe_failures: 0,
            why: String::new(),
            instance: String::new(),
            dtls_fingerprint: String::new(),
        }
    }

    /// The same bridge, with the DTLS fingerprint of its process (see
    /// [`Bridge::dtls_fingerprint`]).
    pub fn with_fingerprint(mut self, fingerprint: &str) -> Self {
        self.dtls_fingerprint = fingerprint.into();
        self
    }

    /// Whether it takes WebRTC participants (it registered a DTLS fingerprint).
    pub fn takes_webrtc(&self) -> bool {
        !self.dtls_fingerprint.is_empty()
    }

    /// The same bridge, as process `instance` (see [`Bridge::instance`]).
    pub fn with_instance(mut self, instance: &str) -> Self {
        self.instance = instance.into();
        self
    }

    /// "up", "suspect", "down" or "draining", as the API shows it.
    pub fn state(&self) -> &'static str {
        match (self.health, self.draining) {
            (Health::Up, true) => "draining",
            (h, _) => h.name(),
        }
    }
}

/// Why no bridge can take a conference.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoBridge {
    /// Nothing registered.
    #[error("no bridge is registered")]
    NoneRegistered,
    /// All registered bridges are down or not answering.
    #[error("all {0} registered bridges are down or not answering")]
    AllDown(usize),
    /// All live bridges drain.
    #[error("all {0} live bridges are draining")]
    AllDraining(usize),
    /// All candidates are at or over capacity.
    #[error("all {0} candidate bridges are overloaded (stress >= 1)")]
    AllOverloaded(usize),
    /// A WebRTC participant, and no registered bridge takes WebRTC (none registered a DTLS
    /// fingerprint).
    #[error(
        "none of the {0} registered bridges takes WebRTC participants (no DTLS fingerprint registered)"
    )]
    NoWebRtc(usize),
}

/// Chooses a bridge among candidates (all up, not draining, under capacity).
pub trait Strategy: Send + Sync {
    /// Picks one of `candidates` for a participant from `region`.
    fn select<'a>(
        &self,
        candidates: &[&'a Bridge],
        region: &str,
        per_participant: f64,
    ) -> Option<&'a Bridge>;
}

/// Prefer the participant's region, then the lowest corrected stress (ties: lowest id).
#[derive(Debug, Default, Clone, Copy)]
pub struct RegionThenLeastStress;

/// Stress corrected for participants placed since the bridge last reported, each adding
/// `per_participant` packets/s against the bridge's capacity.
pub fn corrected_stress(b: &Bridge, per_participant: f64) -> f64 {
    b.stress + f64::from(b.placed_since_report) * per_participant / b.capacity.max(1.0)
}

impl Strategy for RegionThenLeastStress {
    fn select<'a>(
        &self,
        candidates: &[&'a Bridge],
        region: &str,
        per_participant: f64,
    ) -> Option<&'a Bridge> {
        let in_region: Vec<&Bridge> = candidates
            .iter()
            .copied()
            .filter(|b| b.region == region)
            .collect();
        let pool = if in_region.is_empty() {
            candidates
        } else {
            &in_region[..]
        };
        pool.iter().copied().min_by(|a, b| {
            corrected_stress(a, per_participant)
                .total_cmp(&corrected_stress(b, per_participant))
                .then_with(|| a.id.cmp(&b.id))
        })
    }
}

/// All known bridges.
#[derive(Debug, Clone)]
pub struct Fleet {
    bridges: BTreeMap<BridgeId, Bridge>,
    /// Report interval bridges are told to use, ms.
    pub report_interval_ms: u64,
    /// Intervals a bridge may miss before it is down.
    pub missed_reports: u64,
    /// Estimated packets/s of one stream placed (see [`Fleet::placed`]), until the next report
    /// shows the load.
    pub per_participant_pps: f64,
    /// Failed health probes in a row after which a bridge is down.
    pub probe_failures_down: u32,
}

impl Fleet {
    /// An empty fleet.
    pub fn new(report_interval_ms: u64, missed_reports: u64, per_participant_pps: f64) -> Self {
        Self {
            bridges: BTreeMap::new(),
            report_interval_ms,
            missed_reports,
            per_participant_pps,
            probe_failures_down: 2,
        }
    }

    /// Registers (or re-registers) a bridge at `now_ms`; it is up. The same process keeps its
    /// drain; a new process (a restart) starts empty and not draining (a drain belongs to the
    /// process it was asked of, as JVB's graceful shutdown does).
    pub fn register(&mut self, mut b: Bridge, now_ms: u64) -> Registration {
        b.health = Health::Up;
        b.last_report_ms = now_ms;
        b.placed_since_report = 0;
        b.probe_failures = 0;
        b.draining = false;
        b.reported = false;
        b.why.clear();
        let kind = match self.bridges.get(&b.id) {
            None => Registration::New,
            Some(old) if !b.instance.is_empty() && old.instance == b.instance => {
                b.draining = old.draining;
                b.drain_since_ms = old.drain_since_ms;
                Registration::Again
            }
            Some(_) => Registration::Restarted,
        };
        self.bridges.insert(b.id.clone(), b);
        kind
    }

    /// Records a load report. `false` for an unknown bridge, or one declared down: it must
    /// register again (and then starts empty).
    pub fn report(&mut self, id: &str, stress: f64, draining: bool, now_ms: u64) -> bool {
        let Some(b) = self
            .bridges
            .get_mut(id)
            .filter(|b| b.health != Health::Down)
        else {
            return false;
        };
        b.stress = stress;
        if draining && !b.draining {
            b.draining = true;
            b.drain_since_ms = now_ms;
        }
        b.last_report_ms = now_ms;
        b.placed_since_report = 0;
        b.reported = true;
        true
    }

    /// Starts draining `id` at `now_ms` (no new conferences or participants). Returns false for
    /// an unknown bridge; a bridge already draining keeps its start time.
    pub fn drain(&mut self, id: &str, now_ms: u64) -> bool {
        let Some(b) = self.bridges.get_mut(id) else {
            return false;
        };
        if !b.draining {
            b.draining = true;
            b.drain_since_ms = now_ms;
        }
        true
    }

    /// Forgets a removed bridge.
    pub fn remove(&mut self, id: &str) -> Option<Bridge> {
        self.bridges.remove(id)
    }

    /// A call to `id` timed out or could not reach it: no new conferences until a probe
    /// succeeds. Returns true if it was up.
    pub fn suspect(&mut self, id: &str, why: &str) -> bool {
        match self.bridges.get_mut(id) {
            Some(b) if b.health == Health::Up => {
                b.health = Health::Suspect;
                b.why = why.into();
                true
            }
            _ => false,
        }
    }

    /// Records a health probe of `id`; returns the new health when it changed.
    pub fn probe(&mut self, id: &str, result: Result<(), String>) -> Option<Health> {
        let down_after = self.probe_failures_down.max(1);
        let b = self.bridges.get_mut(id)?;
        if b.health == Health::Down {
            return None;
        }
        let before = b.health;
        match result {
            Ok(()) => {
                b.probe_failures = 0;
                b.health = Health::Up;
                b.why.clear();
            }
            Err(why) => {
                b.probe_failures += 1;
                b.why = format!("health probe: {why}");
                b.health = if b.probe_failures >= down_after {
                    Health::Down
                } else {
                    Health::Suspect
                };
            }
        }
        (b.health != before).then_some(b.health)
    }

    /// Marks bridges that missed their reports as down; returns the ones that just went down.
    pub fn check(&mut self, now_ms: u64) -> Vec<BridgeId> {
        let limit = self.report_interval_ms * self.missed_reports;
        let mut down = Vec::new();
        for b in self.bridges.values_mut() {
            if b.health != Health::Down && now_ms.saturating_sub(b.last_report_ms) > limit {
                b.health = Health::Down;
                b.why = format!("no load report for {} ms", now_ms - b.last_report_ms);
                down.push(b.id.clone());
            }
        }
        down
    }

    /// A bridge by id.
    pub fn get(&self, id: &str) -> Option<&Bridge> {
        self.bridges.get(id)
    }

    /// All bridges, by id.
    pub fn iter(&self) -> impl Iterator<Item = &Bridge> {
        self.bridges.values()
    }

    /// Chooses a bridge for a new conference from `region`, excluding `exclude`, and counts the
    /// placement against it.
    pub fn select(
        &mut self,
        strategy: &dyn Strategy,
        region: &str,
        exclude: &[&str],
    ) -> Result<BridgeId, NoBridge> {
        let all: Vec<&Bridge> = self
            .bridges
            .values()
            .filter(|b| !exclude.contains(&b.id.as_str()))
            .collect();
        if all.is_empty() {
            return Err(NoBridge::NoneRegistered);
        }
        let live: Vec<&Bridge> = all
            .iter()
            .copied()
            .filter(|b| b.health == Health::Up)
            .collect();
        if live.is_empty() {
            return Err(NoBridge::AllDown(all.len()));
        }
        let open: Vec<&Bridge> = live.iter().copied().filter(|b| !b.draining).collect();
        if open.is_empty() {
            return Err(NoBridge::AllDraining(live.len()));
        }
        let per = self.per_participant_pps;
        let fit: Vec<&Bridge> = open
            .iter()
            .copied()
            .filter(|b| corrected_stress(b, per) < 1.0)
            .collect();
        if fit.is_empty() {
            return Err(NoBridge::AllOverloaded(open.len()));
        }
        let id = strategy
            .select(&fit, region, per)
            .expect("non-empty candidates")
            .id
            .clone();
        self.placed(&id, 1);
        Ok(id)
    }

    /// Counts `streams` new streams on `id` (their load shows in the next report). A
    /// participant joining `k` others of its conference on a bridge adds `2k + 1`: its own
    /// stream in, its stream out to each of them, and each of theirs out to it.
    pub fn placed(&mut self, id: &str, streams: u32) {
        if let Some(b) = self.bridges.get_mut(id) {
            b.placed_since_report = b.placed_since_report.saturating_add(streams);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bridge(id: &str, region: &str, stress: f64) -> Bridge {
        let mut b = Bridge::new(id, &format!("{id}:1"), &format!("{id}:2"), region, 100.0);
        b.stress = stress;
        b
    }

    fn fleet() -> Fleet {
        let mut f = Fleet::new(1000, 3, 10.0); // 10 pps of a 100 pps bridge: 0.1 each
        f.register(bridge("a", "eu", 0.5), 0);
        f.register(bridge("b", "eu", 0.2), 0);
        f.register(bridge("c", "us", 0.0), 0);
        f
    }

    #[test]
    fn prefers_region_then_least_stress_corrected_for_recent_placements() {
        let mut f = fleet();
        let s = RegionThenLeastStress;
        assert_eq!(f.select(&s, "eu", &[]).unwrap(), "b"); // 0.2 < 0.5
        assert_eq!(f.select(&s, "eu", &[]).unwrap(), "b"); // 0.3
        assert_eq!(f.select(&s, "eu", &[]).unwrap(), "b"); // 0.4
        assert_eq!(f.select(&s, "eu", &[]).unwrap(), "a"); // b now 0.5 + tie -> "a" by id
        assert_eq!(f.select(&s, "us", &[]).unwrap(), "c");
        assert_eq!(f.select(&s, "ap", &[]).unwrap(), "c"); // no bridge in region: least stress anywhere
        assert!(f.report("b", 0.1, false, 10));
        assert_eq!(f.get("b").unwrap().placed_since_report, 0);
        assert!(!f.report("zz", 0.1, false, 10));
    }

    #[test]
    fn never_a_down_draining_or_overloaded_bridge_and_says_why() {
        let mut f = fleet();
        let s = RegionThenLeastStress;
        f.report("b", 0.2, true, 0);
        assert_eq!(f.select(&s, "eu", &[]).unwrap(), "a");
        assert_eq!(f.check(3000), Vec::<String>::new());
        f.report("a", 0.5, false, 2500);
        assert_eq!(f.check(3001), vec!["b".to_string(), "c".to_string()]);
        assert_eq!(f.select(&s, "us", &[]).unwrap(), "a");
        assert_eq!(f.select(&s, "eu", &["a"]), Err(NoBridge::AllDown(2)));
        f.report("a", 1.2, false, 3002);
        assert_eq!(f.select(&s, "eu", &[]), Err(NoBridge::AllOverloaded(1)));
        f.report("a", 0.1, true, 3003);
        assert_eq!(f.select(&s, "eu", &[]), Err(NoBridge::AllDraining(1)));
        assert_eq!(
            Fleet::new(1, 1, 0.0).select(&s, "eu", &[]),
            Err(NoBridge::NoneRegistered)
        );
        // A down bridge's reports are refused: it must register again, and then starts up.
        assert!(!f.report("b", 0.0, false, 3100));
        assert_eq!(
            f.register(bridge("b", "eu", 0.0), 4000),
            Registration::Restarted
        );
        assert_eq!(f.get("b").unwrap().health, Health::Up);
    }

    #[test]
    fn suspect_on_a_failed_call_or_probe_down_after_repeated_probe_failures() {
        let mut f = fleet();
        let s = RegionThenLeastStress;
        assert!(f.suspect("b", "call timed out"));
        assert_eq!(f.get("b").unwrap().state(), "suspect");
        assert_eq!(
            f.select(&s, "eu", &[]).unwrap(),
            "a",
            "no new conference on a suspect"
        );
        assert_eq!(f.probe("b", Ok(())), Some(Health::Up));
        assert_eq!(f.probe("b", Err("deadline".into())), Some(Health::Suspect));
        assert_eq!(f.probe("b", Err("deadline".into())), Some(Health::Down));
        assert!(f.get("b").unwrap().why.contains("deadline"));
        assert_eq!(
            f.probe("b", Ok(())),
            None,
            "down stays down until it registers"
        );
        assert_eq!(f.probe("zz", Ok(())), None);
    }
}
