//! The control plane's Prometheus metrics, rendered from the focus at scrape time.

use std::sync::Arc;

use ringbridge_edge::metrics::{Registry, counter, gauge, labelled_gauges};

use crate::service::Control;

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
    counter(
        r,
        "ringbridge_control_failovers",
        "Conferences moved off failed bridges.",
        f.failovers(),
    );
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
