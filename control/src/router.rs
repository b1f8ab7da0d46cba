//! Conference -> shard routing: a conference always goes to the shard that first got it
//! (sticky), new conferences go round-robin over healthy shards, routes expire after an idle
//! time, and a route whose shard is gone or unhealthy is dispatched again.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A shard: one focus (one `ringbridge-control`) with its bridges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shard {
    /// Identity.
    pub id: String,
    /// Address clients use for it.
    pub addr: String,
    /// Takes conferences.
    pub healthy: bool,
}

/// A sticky route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    /// Shard that owns the conference.
    pub shard: String,
    /// Last time the route was used, ms.
    pub last_used_ms: u64,
}

/// No healthy shard to route to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no healthy shard: {registered} registered")]
pub struct NoShard {
    /// Shards registered (all unhealthy, or none).
    pub registered: usize,
}

/// The routing table.
#[derive(Debug, Clone)]
pub struct Router {
    shards: BTreeMap<String, Shard>,
    routes: BTreeMap<String, Route>,
    next: usize,
    /// Idle time after which a route is forgotten, ms.
    pub ttl_ms: u64,
}

impl Router {
    /// An empty router whose routes expire after `ttl_ms` idle.
    pub fn new(ttl_ms: u64) -> Self {
        Self {
            shards: BTreeMap::new(),
            routes: BTreeMap::new(),
            next: 0,
            ttl_ms,
        }
    }

    /// Adds or updates a shard.
    pub fn register_shard(&mut self, s: Shard) {
        self.shards.insert(s.id.clone(), s);
    }

    /// Removes a shard; its routes are dispatched again on next use.
    pub fn remove_shard(&mut self, id: &str) -> bool {
        self.shards.remove(id).is_some()
    }

    /// Shards by id.
    pub fn shards(&self) -> impl Iterator<Item = &Shard> {
        self.shards.values()
    }

    /// Current routes (for the store).
    pub fn routes(&self) -> &BTreeMap<String, Route> {
        &self.routes
    }

    /// Restores routes (from the store).
    pub fn restore(&mut self, routes: BTreeMap<String, Route>) {
        self.routes = routes;
    }

    /// Routes `conference` at `now_ms`.
    pub fn route(&mut self, conference: &str, now_ms: u64) -> Result<Shard, NoShard> {
        if let Some(r) = self.routes.get_mut(conference)
            && now_ms.saturating_sub(r.last_used_ms) <= self.ttl_ms
            && let Some(s) = self.shards.get(&r.shard).filter(|s| s.healthy)
        {
            r.last_used_ms = now_ms;
            return Ok(s.clone());
        }
        let healthy: Vec<&Shard> = self.shards.values().filter(|s| s.healthy).collect();
        if healthy.is_empty() {
            return Err(NoShard {
                registered: self.shards.len(),
            });
        }
        let s = healthy[self.next % healthy.len()].clone();
        self.next = self.next.wrapping_add(1);
        self.routes.insert(
            conference.into(),
            Route {
                shard: s.id.clone(),
                last_used_ms: now_ms,
            },
        );
        Ok(s)
    }

    /// Forgets routes idle for longer than the TTL; returns how many.
    pub fn expire(&mut self, now_ms: u64) -> usize {
        let before = self.routes.len();
        let ttl = self.ttl_ms;
        self.routes
            .retain(|_, r| now_ms.saturating_sub(r.last_used_ms) <= ttl);
        before - self.routes.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router() -> Router {
        let mut r = Router::new(1000);
        for id in ["s0", "s1", "s2"] {
            r.register_shard(Shard {
                id: id.into(),
                addr: format!("{id}:1"),
                healthy: true,
            });
        }
        r
    }

    #[test]
    fn sticky_and_round_robin() {
        let mut r = router();
        let ids: Vec<String> = ["a", "b", "c", "d"]
            .iter()
            .map(|c| r.route(c, 0).unwrap().id)
            .collect();
        assert_eq!(ids, ["s0", "s1", "s2", "s0"]);
        for _ in 0..3 {
            assert_eq!(r.route("b", 10).unwrap().id, "s1");
        }
    }

    #[test]
    fn expiry_and_redispatch() {
        let mut r = router();
        assert_eq!(r.route("a", 0).unwrap().id, "s0");
        assert_eq!(r.route("a", 900).unwrap().id, "s0"); // refreshes last use
        assert_eq!(r.expire(1800), 0);
        assert_eq!(r.expire(1901), 1);
        assert_eq!(r.route("a", 1902).unwrap().id, "s1"); // new route, next in turn
        assert!(r.remove_shard("s1"));
        // Its shard is gone: dispatched again, round-robin over the remaining s0, s2.
        assert_eq!(r.route("a", 1903).unwrap().id, "s0");
        for s in ["s0", "s2"] {
            r.register_shard(Shard {
                id: s.into(),
                addr: String::new(),
                healthy: false,
            });
        }
        assert_eq!(r.route("z", 1904), Err(NoShard { registered: 2 }));
    }
}
