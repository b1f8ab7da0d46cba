//! Live streams, sans-IO: one publisher on an
//! *origin* bridge, viewers on *edge* bridges near them, as in SRS's origin/edge clusters.
//!
//! - [`pick_edge`]: a viewer goes to an edge in its region, then the least loaded; never to the
//!   origin unless it is the only bridge that can take it.
//! - [`PullTree`]: an edge pulls the stream (a relay) on its first viewer and drops the pull with
//!   its last. The origin feeds at most `max_fanout` edges; later edges pull from an edge that
//!   has room (a second tier, then a third...), the shallowest first, same region preferred, so
//!   the origin's fan-out stays bounded however many edges there are. An edge that serves other
//!   edges keeps its pull while they need it. A lost edge's children re-attach; a new origin
//!   takes the first tier.
//!
//! Keyframe requests are throttled in the data plane (one per stream per interval, at every
//! bridge of the tree), not here.

use std::collections::BTreeMap;

use crate::core::fleet::{Bridge, BridgeId, Health, corrected_stress};

/// A change to program on the bridges: `edge` pulls the stream from `from` (a relay between
/// them), or stops.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pull {
    /// `edge` starts pulling from `from`.
    Add {
        /// The bridge that pulls.
        edge: BridgeId,
        /// The origin or the edge it pulls from.
        from: BridgeId,
    },
    /// `edge` stops pulling from `from`.
    Remove {
        /// The bridge that pulled.
        edge: BridgeId,
        /// What it pulled from.
        from: BridgeId,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Edge {
    parent: BridgeId,
    region: String,
}

/// The pull tree of one stream.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PullTree {
    origin: BridgeId,
    max_fanout: usize,
    edges: BTreeMap<BridgeId, Edge>,
}

impl PullTree {
    /// A stream published on `origin`, which feeds at most `max_fanout` edges itself.
    pub fn new(origin: &str, max_fanout: usize) -> Self {
        Self {
            origin: origin.into(),
            max_fanout: max_fanout.max(1),
            edges: BTreeMap::new(),
        }
    }

    /// The origin.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// Whether `bridge` is the origin or pulls.
    pub fn contains(&self, bridge: &str) -> bool {
        bridge == self.origin || self.edges.contains_key(bridge)
    }

    /// Edges pulling from `node` (the origin or an edge).
    pub fn fanout(&self, node: &str) -> usize {
        self.edges.values().filter(|e| e.parent == node).count()
    }

    /// Tier of `edge`: 1 when it pulls from the origin; `None` if it does not pull.
    pub fn tier(&self, edge: &str) -> Option<usize> {
        let mut n = 0;
        let mut at = edge;
        while at != self.origin {
            at = &self.edges.get(at)?.parent;
            n += 1;
            if n > self.edges.len() {
                return None; // not a tree: never built so
            }
        }
        Some(n)
    }

    /// The deepest tier.
    pub fn deepest(&self) -> usize {
        self.edges
            .keys()
            .filter_map(|e| self.tier(e))
            .max()
            .unwrap_or(0)
    }

    /// Edges pulling now.
    pub fn edges(&self) -> impl Iterator<Item = (&str, &str)> {
        self.edges
            .iter()
            .map(|(e, x)| (e.as_str(), x.parent.as_str()))
    }

    /// Where a new edge of `region` pulls from: the origin while it has room, else the
    /// shallowest edge with room (same region first, then by id), never `not` or its subtree.
    fn parent_for(&self, region: &str, not: &str) -> BridgeId {
        if self.fanout(&self.origin) < self.max_fanout {
            return self.origin.clone();
        }
        let below = |e: &str| {
            let mut at = e;
            while let Some(x) = self.edges.get(at) {
                if at == not {
                    return true;
                }
                at = &x.parent;
            }
            false
        };
        self.edges
            .iter()
            .filter(|(e, _)| e.as_str() != not && !below(e))
            .filter(|(e, _)| self.fanout(e) < self.max_fanout)
            .min_by_key(|(e, x)| {
                (
                    self.tier(e).unwrap_or(usize::MAX),
                    x.region != region,
                    (*e).clone(),
                )
            })
            .map_or_else(|| self.origin.clone(), |(e, _)| e.clone())
    }

    /// A viewer joined on `edge` (in `region`); its first viewer makes it pull.
    pub fn viewer_joined(&mut self, edge: &str, region: &str) -> Vec<Pull> {
        if edge == self.origin {
            return Vec::new(); // viewers on the origin get the stream there
        }
        if self.edges.contains_key(edge) {
            return Vec::new();
        }
        let from = self.parent_for(region, edge);
        self.edges.insert(
            edge.into(),
            Edge {
                parent: from.clone(),
                region: region.into(),
            },
        );
        vec![Pull::Add {
            edge: edge.into(),
            from,
        }]
    }

    /// A viewer left `edge`; its last viewer ends its pull unless other edges pull from it (and
    /// then, going up, any edge left with neither viewers nor children).
    /// `viewers` counts an edge's viewers after the leave (the caller keeps the counts; the
    /// tree changes only with its pulls).
    pub fn viewer_left(&mut self, edge: &str, viewers: impl Fn(&str) -> usize) -> Vec<Pull> {
        let mut out = Vec::new();
        let mut at = edge.to_string();
        while self.edges.contains_key(&at) {
            if viewers(&at) > 0 || self.fanout(&at) > 0 {
                break;
            }
            let x = self.edges.remove(&at).expect("present");
            out.push(Pull::Remove {
                edge: at.clone(),
                from: x.parent.clone(),
            });
            at = x.parent;
        }
        out
    }

    /// `edge` is gone (its viewers move elsewhere and join again): the edges that pulled from
    /// it drop that pull and pull from another parent.
    pub fn edge_lost(&mut self, edge: &str) -> Vec<Pull> {
        let Some(gone) = self.edges.remove(edge) else {
            return Vec::new();
        };
        let mut out = vec![Pull::Remove {
            edge: edge.into(),
            from: gone.parent,
        }];
        let orphans: Vec<BridgeId> = self
            .edges
            .iter()
            .filter(|(_, x)| x.parent == edge)
            .map(|(e, _)| e.clone())
            .collect();
        for o in orphans {
            let region = self.edges[&o].region.clone();
            let from = self.parent_for(&region, &o);
            self.edges.get_mut(&o).expect("present").parent = from.clone();
            out.push(Pull::Remove {
                edge: o.clone(),
                from: edge.into(),
            });
            out.push(Pull::Add { edge: o, from });
        }
        out
    }

    /// The origin is gone and the publisher now publishes on `origin`: the first tier drops
    /// its pulls from the old origin and pulls from the new one (an edge that becomes the
    /// origin stops pulling; its children pull from it as from the origin).
    pub fn origin_moved(&mut self, origin: &str) -> Vec<Pull> {
        let old = std::mem::replace(&mut self.origin, origin.into());
        let mut out = Vec::new();
        if let Some(x) = self.edges.remove(origin) {
            out.push(Pull::Remove {
                edge: origin.into(),
                from: x.parent,
            });
        }
        let first: Vec<BridgeId> = self
            .edges
            .iter()
            .filter(|(_, x)| x.parent == old)
            .map(|(e, _)| e.clone())
            .collect();
        for e in first {
            self.edges.get_mut(&e).expect("present").parent = origin.into();
            out.push(Pull::Remove {
                edge: e.clone(),
                from: old.clone(),
            });
            out.push(Pull::Add {
                edge: e,
                from: origin.into(),
            });
        }
        out
    }
}

/// The edge for a viewer from `region`: an up, non-draining bridge other than the origin, in
/// the viewer's region first, then any region; the least corrected stress under `threshold`;
/// the origin only when no other bridge can take it.
pub fn pick_edge<'a>(
    bridges: impl Iterator<Item = &'a Bridge>,
    origin: &str,
    region: &str,
    per_stream: f64,
    threshold: f64,
) -> Option<BridgeId> {
    let ok: Vec<&Bridge> = bridges
        .filter(|b| b.health == Health::Up && !b.draining)
        .filter(|b| corrected_stress(b, per_stream) < threshold)
        .collect();
    let best = |f: &dyn Fn(&Bridge) -> bool| {
        ok.iter()
            .copied()
            .filter(|b| f(b))
            .min_by(|a, b| {
                corrected_stress(a, per_stream)
                    .total_cmp(&corrected_stress(b, per_stream))
                    .then_with(|| a.id.cmp(&b.id))
            })
            .map(|b| b.id.clone())
    };
    best(&|b| b.id != origin && b.region == region)
        .or_else(|| best(&|b| b.id != origin))
        .or_else(|| best(&|b| b.id == origin))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add(edge: &str, from: &str) -> Pull {
        Pull::Add {
            edge: edge.into(),
            from: from.into(),
        }
    }

    fn remove(edge: &str, from: &str) -> Pull {
        Pull::Remove {
            edge: edge.into(),
            from: from.into(),
        }
    }

    #[test]
    fn an_edge_pulls_on_its_first_viewer_and_stops_with_its_last() {
        let mut t = PullTree::new("o", 4);
        assert_eq!(t.viewer_joined("e1", "eu"), [add("e1", "o")]);
        assert!(t.viewer_joined("e1", "eu").is_empty(), "one pull per edge");
        assert!(
            t.viewer_joined("o", "eu").is_empty(),
            "viewers on the origin pull nothing"
        );
        assert!(t.viewer_left("e1", |_| 1).is_empty(), "one viewer left");
        assert_eq!(t.viewer_left("e1", |_| 0), [remove("e1", "o")]);
        assert_eq!(t.fanout("o"), 0);
        assert!(t.viewer_left("e1", |_| 0).is_empty());
    }

    #[test]
    fn the_origin_fanout_stays_bounded_with_tiers() {
        let mut t = PullTree::new("o", 2);
        for i in 0..14 {
            let e = format!("e{i:02}");
            let region = if i % 2 == 0 { "eu" } else { "us" };
            let p = t.viewer_joined(&e, region);
            assert_eq!(p.len(), 1);
        }
        assert_eq!(
            t.fanout("o"),
            2,
            "the origin feeds 2 edges however many there are"
        );
        for (e, _) in t.edges() {
            assert!(t.fanout(e) <= 2);
        }
        // 2 + 4 + 8 = 14 edges in three tiers.
        assert_eq!(t.deepest(), 3);
        // Same region first: e02 (eu) pulls from an eu edge of the first tier.
        let (_, from) = t.edges().find(|(e, _)| *e == "e02").unwrap();
        assert_eq!(from, "e00");
    }

    #[test]
    fn an_edge_serving_others_keeps_its_pull_and_lost_edges_are_reparented() {
        let mut t = PullTree::new("o", 1);
        t.viewer_joined("a", "eu"); // o <- a
        t.viewer_joined("b", "eu"); // a <- b
        t.viewer_joined("c", "eu"); // b <- c
        assert_eq!(t.tier("c"), Some(3));
        // a's last viewer leaves, but b pulls from it: a keeps pulling.
        assert!(t.viewer_left("a", |_| 0).is_empty());
        // c's last viewer leaves: c goes, then b has c no more but still a viewer.
        assert_eq!(
            t.viewer_left("c", |e| usize::from(e == "b")),
            [remove("c", "b")]
        );
        // b's last viewer: b goes, and a (no viewers, no children) with it.
        assert_eq!(
            t.viewer_left("b", |_| 0),
            [remove("b", "a"), remove("a", "o")]
        );
        assert_eq!(t.edges().count(), 0);

        let mut t = PullTree::new("o", 1);
        t.viewer_joined("a", "eu");
        t.viewer_joined("b", "eu");
        t.viewer_joined("c", "eu");
        // b dies: c re-attaches to the shallowest edge with room (a has room once b is gone).
        assert_eq!(
            t.edge_lost("b"),
            [remove("b", "a"), remove("c", "b"), add("c", "a")]
        );
        assert_eq!(t.tier("c"), Some(2));
    }

    #[test]
    fn a_new_origin_takes_the_first_tier() {
        let mut t = PullTree::new("o", 2);
        t.viewer_joined("a", "eu");
        t.viewer_joined("b", "eu");
        t.viewer_joined("c", "eu"); // pulls from a
        let p = t.origin_moved("n");
        assert_eq!(
            p,
            [
                remove("a", "o"),
                add("a", "n"),
                remove("b", "o"),
                add("b", "n")
            ]
        );
        assert_eq!(t.tier("c"), Some(2));
        // The publisher moved onto an edge: it stops pulling, its children pull from it.
        let p = t.origin_moved("a");
        assert_eq!(p, [remove("a", "n"), remove("b", "n"), add("b", "a")]);
        assert_eq!(t.tier("c"), Some(1));
    }

    #[test]
    fn viewers_go_to_an_edge_in_their_region_never_the_origin_unless_alone() {
        let mk = |id: &str, region: &str, stress: f64| {
            let mut b = Bridge::new(id, "a:1", "m:1", region, 1000.0);
            b.stress = stress;
            b
        };
        let fleet = [
            mk("o", "eu", 0.0),
            mk("e1", "eu", 0.5),
            mk("e2", "eu", 0.2),
            mk("u1", "us", 0.0),
        ];
        assert_eq!(pick_edge(fleet.iter(), "o", "eu", 1.0, 0.8).unwrap(), "e2");
        assert_eq!(pick_edge(fleet.iter(), "o", "us", 1.0, 0.8).unwrap(), "u1");
        assert_eq!(
            pick_edge(fleet.iter(), "o", "ap", 1.0, 0.8).unwrap(),
            "u1",
            "any region"
        );
        let alone = [mk("o", "eu", 0.0)];
        assert_eq!(pick_edge(alone.iter(), "o", "eu", 1.0, 0.8).unwrap(), "o");
        let full = [mk("o", "eu", 0.0), mk("e1", "eu", 0.9)];
        assert_eq!(pick_edge(full.iter(), "o", "eu", 1.0, 0.8).unwrap(), "o");
    }
}
