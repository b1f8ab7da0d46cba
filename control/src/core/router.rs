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

/// A route use worth persisting: a new route, or a use that moves the persisted last use on
/// by more than a tenth of the TTL (so a busy route is not written on every use, and a restart
/// shortens its idle time by at most that much).
pub type Persist = Option<Route>;

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
    /// Last use of each route as last persisted.
    persisted_ms: BTreeMap<String, u64>,
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
            persisted_ms: BTreeMap::new(),
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
        self.persisted_ms = routes
            .iter()
            .map(|(c, r)| (c.clone(), r.last_used_ms))
            .collect();
        self.routes = routes;
    }

    /// Routes `conference` at `now_ms`; also says whether the route must be persisted.
    pub fn route(&mut self, conference: &str, now_ms: u64) -> Result<(Shard, Persist), NoShard> {
        if let Some(r) = self.routes.get_mut(conference)
            && now_ms.saturating_sub(r.last_used_ms) <= self.ttl_ms
            && let Some(s) = self.shards.get(&r.shard).filter(|s| s.healthy)
        {
            r.last_used_ms = now_ms;
            let logged = self.persisted_ms.entry(conference.into()).or_insert(0);
            let persist = if now_ms.saturating_sub(*logged) > self.ttl_ms / 10 {
                *logged = now_ms;
                Some(r.clone())
            } else {
                None
            };
            return Ok((s.clone(), persist));
        }
        let healthy: Vec<&Shard> = self.shards.values().filter(|s| s.healthy).collect();
        if healthy.is_empty() {
            return Err(NoShard {
                registered: self.shards.len(),
            });
        }
        let s = healthy[self.next % healthy.len()].clone();
        self.next = self.next.wrapping_add(1);
        let route = Route {
            shard: s.id.clone(),
            last_used_ms: now_ms,
        };
        self.routes.insert(conference.into(), route.clone());
        self.persisted_ms.insert(conference.into(), now_ms);
        Ok((s, Some(route)))
    }

    /// Forgets routes idle for longer than the TTL; returns their conferences.
    pub fn expire(&mut self, now_ms: u64) -> Vec<String> {
        let ttl = self.ttl_ms;
        let gone: Vec<String> = self
            .routes
            .iter()
            .filter(|(_, r)| now_ms.saturating_sub(r.last_used_ms) > ttl)
            .map(|(c, _)| c.clone())
            .collect();
        for c in &gone {
            self.routes.remove(c);
            self.persisted_ms.remove(c);
        }
        gone
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
            .map(|c| r.route(c, 0).unwrap().0.id)
            .collect();
        assert_eq!(ids, ["s0", "s1", "s2", "s0"]);
        for _ in 0..3 {
            assert_eq!(r.route("b", 10).unwrap().0.id, "s1");
        }
    }

    #[test]
    fn expiry_and_redispatch() {
        let mut r = router();
        let (s, persist) = r.route("a", 0).unwrap();
        assert_eq!((s.id.as_str(), persist.is_some()), ("s0", true));
        // Refreshes last use; persisted only once it moved on by more than ttl/10.
        assert_eq!(r.route("a", 50).unwrap().1, None);
        let (s, persist) = r.route("a", 900).unwrap();
        assert_eq!((s.id.as_str(), persist.unwrap().last_used_ms), ("s0", 900));
        assert!(r.expire(1800).is_empty());
        assert_eq!(r.expire(1901), ["a"]);
        assert_eq!(r.route("a", 1902).unwrap().0.id, "s1"); // new route, next in turn
        assert!(r.remove_shard("s1"));
        // Its shard is gone: dispatched again, round-robin over the remaining s0, s2.
        assert_eq!(r.route("a", 1903).unwrap().0.id, "s0");
        for s in ["s0", "s2"] {
            r.register_shard(Shard {
                id: s.into(),
                addr: String::new(),
                healthy: false,
            });
        }
        assert_eq!(r.route("z", 1904).unwrap_err(), NoShard { registered: 2 });
    }
}
