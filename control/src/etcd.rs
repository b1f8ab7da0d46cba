//! The etcd store (`--store etcd://HOST:PORT[,HOST:PORT...]`): the same [`Store`] contract as
//! the file store, kept in etcd so several control instances can share it.
//!
//! Layout under `/ringbridge/`: `shards/SHARD/placements/CONFERENCE` -> the placement as JSON
//! (participants, their bridges and SRTP keys, relay keys), `routes/CONFERENCE` -> the sticky
//! route as JSON. One key per conference, so a flush writes what changed, in transactions of at
//! most [`MAX_TXN_OPS`] operations (etcd's default limit).
//!
//! The [`Store`] trait is synchronous (the flusher calls it from a blocking thread); this store
//! runs its client on a small runtime of its own and waits for it with a deadline on every call,
//! so it never blocks the control plane's runtime and never waits forever on a hung etcd.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::Duration;

use etcd_client::{Client, ConnectOptions, GetOptions, Txn, TxnOp};

use crate::store::{Change, Snapshot, Store, StoreError};

/// Operations per etcd transaction (etcd's `--max-txn-ops` default).
pub const MAX_TXN_OPS: usize = 128;

/// Root of every key ringbridge writes.
pub const ROOT: &str = "/ringbridge/";

/// Parses `etcd://HOST:PORT[,HOST:PORT...]` into endpoints.
pub fn endpoints(url: &str) -> Result<Vec<String>, String> {
    let rest = url.strip_prefix("etcd://").ok_or_else(|| {
        format!("--store {url}: expected file or etcd://HOST:PORT[,HOST:PORT...]")
    })?;
    let eps: Vec<String> = rest
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(|e| format!("http://{e}"))
        .collect();
    if eps.is_empty() {
        return Err(format!("--store {url}: no etcd endpoint"));
    }
    Ok(eps)
}

/// Keeps routes and one shard's placements in etcd.
pub struct EtcdStore {
    rt: Option<tokio::runtime::Runtime>,
    client: Client,
    shard_prefix: String,
    timeout: Duration,
    /// What etcd holds (as far as this instance wrote it) and the conferences whose keys still
    /// have to be written.
    mirror: Mutex<(Snapshot, BTreeSet<String>, BTreeSet<String>)>,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("shard_prefix", &self.shard_prefix)
            .finish()
    }
}

fn err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Remote(format!("etcd: {e}"))
}

impl EtcdStore {
    /// Connects to `endpoints` for `shard`; every call has `timeout`.
    pub fn connect(
        endpoints: &[String],
        shard: &str,
        timeout: Duration,
    ) -> Result<Self, StoreError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("etcd-store")
            .enable_all()
            .build()
            .map_err(err)?;
        let eps = endpoints.to_vec();
        let opts = ConnectOptions::new()
            .with_connect_timeout(timeout)
            .with_timeout(timeout);
        let client = run(&rt, timeout, async move {
            Client::connect(eps, Some(opts)).await
        })?
        .map_err(err)?;
        Ok(Self {
            rt: Some(rt),
            client,
            shard_prefix: format!("{ROOT}shards/{shard}/placements/"),
            timeout,
            mirror: Mutex::new(Default::default()),
        })
    }

    fn rt(&self) -> &tokio::runtime::Runtime {
        self.rt.as_ref().expect("runtime present until drop")
    }

    fn route_key(c: &str) -> String {
        format!("{ROOT}routes/{c}")
    }
}

/// Runs `f` on `rt` and waits for it, at most `timeout` (plus a little for the runtime).
fn run<T: Send + 'static>(
    rt: &tokio::runtime::Runtime,
    timeout: Duration,
    f: impl std::future::Future<Output = T> + Send + 'static,
) -> Result<T, StoreError> {
    let (tx, rx) = std::sync::mpsc::channel();
    rt.spawn(async move {
        let _ = tx.send(tokio::time::timeout(timeout, f).await);
    });
    match rx.recv_timeout(timeout + Duration::from_millis(500)) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(_)) | Err(_) => Err(err(format!("no answer within {} ms", timeout.as_millis()))),
    }
}

impl Drop for EtcdStore {
    fn drop(&mut self) {
        // Dropping a runtime may happen inside another one: let it go in the background.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl Store for EtcdStore {
    fn load(&self) -> Result<Snapshot, StoreError> {
        let mut kv = self.client.kv_client();
        let routes_prefix = format!("{ROOT}routes/");
        let shard_prefix = self.shard_prefix.clone();
        let (routes, placements) = run(self.rt(), self.timeout, async move {
            let r = kv
                .get(routes_prefix.clone(), Some(GetOptions::new().with_prefix()))
                .await?;
            let p = kv
                .get(shard_prefix.clone(), Some(GetOptions::new().with_prefix()))
                .await?;
            Ok::<_, etcd_client::Error>((r, p))
        })?
        .map_err(err)?;
        let mut snap = Snapshot::default();
        let parse = |k: &[u8], prefix: &str| {
            String::from_utf8_lossy(k)
                .strip_prefix(prefix)
                .map(str::to_string)
        };
        for kv in routes.kvs() {
            if let Some(c) = parse(kv.key(), &format!("{ROOT}routes/")) {
                let r = serde_json::from_slice(kv.value())
                    .map_err(|e| err(format!("route {c}: {e}")))?;
                snap.routes.insert(c, r);
            }
        }
        for kv in placements.kvs() {
            if let Some(c) = parse(kv.key(), &self.shard_prefix) {
                let p = serde_json::from_slice(kv.value())
                    .map_err(|e| err(format!("placement {c}: {e}")))?;
                snap.placements.insert(c, p);
            }
        }
        let mut m = self.mirror.lock().unwrap_or_else(|e| e.into_inner());
        m.0 = snap.clone();
        Ok(snap)
    }

    fn append(&self, changes: &[Change]) -> Result<(), StoreError> {
        // Apply to the mirror and note the keys to write; changes are idempotent, so a retry
        // after a failed write applies them again harmlessly.
        let ops: Vec<TxnOp> = {
            let mut m = self.mirror.lock().unwrap_or_else(|e| e.into_inner());
            let (snap, dirty_p, dirty_r) = &mut *m;
            for c in changes {
                snap.apply(c);
                match c {
                    Change::Routed { conference, .. } | Change::Unrouted { conference } => {
                        dirty_r.insert(conference.clone());
                    }
                    other => {
                        dirty_p.insert(other.conference().to_string());
                    }
                }
            }
            let mut ops = Vec::with_capacity(dirty_p.len() + dirty_r.len());
            for c in dirty_p.iter() {
                let key = format!("{}{c}", self.shard_prefix);
                ops.push(match snap.placements.get(c) {
                    Some(p) => TxnOp::put(key, serde_json::to_vec(p).map_err(err)?, None),
                    None => TxnOp::delete(key, None),
                });
            }
            for c in dirty_r.iter() {
                let key = Self::route_key(c);
                ops.push(match snap.routes.get(c) {
                    Some(r) => TxnOp::put(key, serde_json::to_vec(r).map_err(err)?, None),
                    None => TxnOp::delete(key, None),
                });
            }
            ops
        };
        if ops.is_empty() {
            return Ok(());
        }
        let mut kv = self.client.kv_client();
        run(self.rt(), self.timeout, async move {
            let mut ops = ops;
            while !ops.is_empty() {
                let rest = ops.split_off(ops.len().min(MAX_TXN_OPS));
                kv.txn(Txn::new().and_then(ops)).await?;
                ops = rest;
            }
            Ok::<_, etcd_client::Error>(())
        })?
        .map_err(err)?;
        let mut m = self.mirror.lock().unwrap_or_else(|e| e.into_inner());
        m.1.clear();
        m.2.clear();
        Ok(())
    }
}
