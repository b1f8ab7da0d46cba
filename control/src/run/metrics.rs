//! The control plane's Prometheus metrics, rendered from the focus at scrape time.

use std::sync::Arc;

use std::sync::atomic::Ordering::Relaxed;

use ringbridge_edge::metrics::{Registry, counter, gauge, labelled_counters, labelled_gauges};

use crate::run::service::Control;

/// Fills `r` with the control plane's current figures.
pub fn render(c: &Arc<Control>, r: &mut Registry) {
    let core = c.lock();
    let f = &core.focus;
    let participants: usize = f.conferences().values().map(|p| p.participants.len()).sum();
    gauge(
        r,
        "ringbridge_control_conferences",
        "Placed conferences.",
        f.conferences().len() as f64,
    );
    gauge(
        r,
        "ringbridge_control_participants",
        "Placed participants.",
        participants as f64,
    );
    let (broadcasts, pulls, deepest) = f.broadcast_totals();
    gauge(
        r,
        "ringbridge_control_broadcasts",
        "Placed broadcasts (live streams), among the conferences.",
        broadcasts as f64,
    );
    gauge(
        r,
        "ringbridge_control_stream_pulls",
        "Edges pulling a broadcast (relays of pull trees).",
        pulls as f64,
    );
    gauge(
        r,
        "ringbridge_control_stream_deepest_tier",
        "Deepest tier of any broadcast's pull tree.",
        deepest as f64,
    );
    gauge(
        r,
        "ringbridge_control_operations_in_flight",
        "Focus operations waiting for bridge calls.",
        f.in_flight() as f64,
    );
    counter(
        r,
        "ringbridge_control_placements",
        "Participants placed.",
        c.placed(),
    );
    gauge(
        r,
        "ringbridge_control_watches",
        "Open WatchConference streams.",
        c.watches.open() as f64,
    );
    counter(
        r,
        "ringbridge_control_failovers",
        "Conferences moved off failed bridges.",
        f.failovers(),
    );
    counter(
        r,
        "ringbridge_control_drain_moves",
        "Participants moved off draining bridges.",
        f.drain_moves(),
    );
    if let Some(d) = core.scaler.as_ref().and_then(|s| s.last()) {
        for (name, help, v) in [
            (
                "ringbridge_autoscaler_current_bridges",
                "Bridges counted as current (ready + starting) at the last evaluation.",
                f64::from(d.current),
            ),
            (
                "ringbridge_autoscaler_desired_bridges",
                "Bridges the last evaluation wanted.",
                f64::from(d.desired),
            ),
            (
                "ringbridge_autoscaler_ready_bridges",
                "Bridges up, reporting and not draining.",
                f64::from(d.sample.ready),
            ),
            (
                "ringbridge_autoscaler_starting_bridges",
                "Bridges asked for that have not reported yet.",
                f64::from(d.sample.starting),
            ),
            (
                "ringbridge_autoscaler_utilization",
                "Reported packets in + out over capacity of the ready bridges.",
                d.sample.metric,
            ),
        ] {
            gauge(r, name, help, v);
        }
        labelled_counters(
            r,
            "ringbridge_autoscaler_decisions",
            "Scaling decisions that changed the fleet.",
            "direction",
            [
                ("up", c.scale_ups.load(Relaxed)),
                ("down", c.scale_downs.load(Relaxed)),
            ],
        );
    }
    let states = ["up", "suspect", "down", "draining"];
    labelled_gauges(
        r,
        "ringbridge_control_bridges",
        "Bridges by state.",
        "state",
        states.map(|s| {
            (
                s,
                f.fleet().iter().filter(|b| b.state() == s).count() as f64,
            )
        }),
    );
    labelled_gauges(
        r,
        "ringbridge_control_bridge_stress",
        "Last reported stress per bridge.",
        "bridge",
        f.fleet().iter().map(|b| (b.id.as_str(), b.stress)),
    );
}
