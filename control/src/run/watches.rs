//! Open WatchConference streams, counted per client address: a stream is freed as soon as its
//! client goes away, and a client holds at most `--max-watches-per-client`.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use tonic::Status;

use super::service::Control;

/// Open WatchConference streams, per client address: a stream is freed when its client goes
/// away, and a client holds at most its limit.
#[derive(Debug, Default)]
pub struct Watches {
    per_client: Mutex<std::collections::HashMap<Option<std::net::IpAddr>, usize>>,
    open: AtomicU64,
}

impl Watches {
    /// Streams open now.
    pub fn open(&self) -> u64 {
        self.open.load(Relaxed)
    }
}

/// One open watch, counted until dropped.
#[derive(Debug)]
pub struct WatchSlot {
    watches: Arc<Watches>,
    client: Option<std::net::IpAddr>,
}

impl Drop for WatchSlot {
    fn drop(&mut self) {
        let mut m = self
            .watches
            .per_client
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(n) = m.get_mut(&self.client) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.client);
            }
        }
        self.watches.open.fetch_sub(1, Relaxed);
    }
}

impl Control {
    /// Counts a new WatchConference stream of `client`; `RESOURCE_EXHAUSTED` when it already
    /// holds its limit.
    pub fn watch_slot(&self, client: Option<std::net::IpAddr>) -> Result<WatchSlot, Status> {
        let limit = self.cfg.max_watches_per_client;
        let mut m = self
            .watches
            .per_client
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let n = m.entry(client).or_default();
        if *n >= limit {
            return Err(Status::resource_exhausted(format!(
                "conference: this client already watches {n} conferences, the limit \
                 (--max-watches-per-client); close a watch first"
            )));
        }
        *n += 1;
        self.watches.open.fetch_add(1, Relaxed);
        Ok(WatchSlot {
            watches: self.watches.clone(),
            client,
        })
    }
}
