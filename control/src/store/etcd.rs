//! The etcd store (`--store etcd://HOST:PORT[,HOST:PORT...]`): the same [`Store`] contract as
//! the file store, kept in etcd so several control instances can share it.
//!
//! Layout under `/ringbridge/` (conference, participant and pair names are escaped: `%` and `/`
//! become `%25` and `%2F`, so a key splits on `/` unambiguously):
//! - `shards/SHARD/confs/CONF/meta` -> the placement's own fields as JSON (its bridge, relay
//!   link number, a broadcast's pull tree: it grows with the bridges, not the viewers);
//! - `shards/SHARD/confs/CONF/participants/ID` -> one participant (its bridge, SSRCs, keys);
//! - `shards/SHARD/confs/CONF/links/PAIR` -> the keys of one relay link;
//! - `shards/SHARD/drains/BRIDGE` -> a drain asked of a bridge;
//! - `routes/CONF` -> the sticky route (shared by every shard, unescaped, see [`crate::store::cluster`]).
//!
//! One small key per participant, so no value grows with a conference (etcd refuses values and
//! requests over `--max-request-bytes`, 1.5 MiB by default) and a flush writes only what changed,
//! in transactions of at most [`MAX_TXN_OPS`] operations (etcd's default limit). Placements
//! written by older versions as one value per conference (`shards/SHARD/placements/CONF`) are
//! read and rewritten in this layout by the next flush. Reads are paged ([`PAGE`] keys).
//!
//! Writes are fenced: once [`Store::set_fence`] names this instance's election key, every
//! transaction succeeds only while that key still exists with its revision, so an instance that
//! lost its lease (and with it the election) can never overwrite what the next active instance
//! writes. An instance in a cluster writes nothing before it is elected.
//!
//! The [`Store`] trait is synchronous (the flusher calls it from a blocking thread); this store
//! runs its client on a small runtime of its own and waits for it with a deadline on every call,
//! so it never blocks the control plane's runtime and never waits forever on a hung etcd.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, ConnectOptions, GetOptions, Txn, TxnOp};
use serde::{Deserialize, Serialize};

use crate::store::{
    Broadcast, Change, Fence, LinkKeys, Participant, Placement, Snapshot, Store, StoreError,
};

/// Operations per etcd transaction (etcd's `--max-txn-ops` default).
pub const MAX_TXN_OPS: usize = 128;

/// Bytes of keys and values per transaction: a flush fits etcd's request limit
/// (`--max-request-bytes`) down to 64 KiB (the default is 1.5 MiB).
pub const MAX_TXN_BYTES: usize = 32 * 1024;

/// Keys per read when loading (a page stays far below gRPC's 4 MiB message limit).
pub const PAGE: i64 = 1000;

/// Extra attempts of a load that etcd failed (500 ms apart), while less than
/// [`LOAD_PATIENCE`] has passed.
const LOAD_RETRIES: u32 = 10;

/// How long a load keeps retrying.
const LOAD_PATIENCE: Duration = Duration::from_secs(10);

/// Root of every key ringbridge writes.
pub const ROOT: &str = "/ringbridge/";

/// Parses `etcd://HOST:PORT[,HOST:PORT...]` into endpoints. A path (`etcd://h:2379/tenant-a`),
/// query or fragment is refused rather than ignored: every key lives under [`ROOT`], so two
/// tenants that thought a path kept them apart would share (and overwrite) each other's keys.
pub fn endpoints(url: &str) -> Result<Vec<String>, String> {
    let rest = url.strip_prefix("etcd://").ok_or_else(|| {
        format!("--store {url}: expected file or etcd://HOST:PORT[,HOST:PORT...]")
    })?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if let Some(at) = rest.find(['/', '?', '#']) {
        return Err(format!(
            "--store {url}: {:?} is not supported (keys always live under {ROOT}): give \
             etcd://HOST:PORT[,HOST:PORT...] only, and a separate etcd per tenant",
            &rest[at..]
        ));
    }
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

/// How often [`connect`]'s member tracker probes every configured endpoint.
const MEMBER_PROBE: Duration = Duration::from_millis(1000);

/// Whether the etcd member at `endpoint` answers a status request within `timeout`.
async fn member_alive(endpoint: &str, timeout: Duration) -> bool {
    let opts = ConnectOptions::new()
        .with_connect_timeout(timeout)
        .with_timeout(timeout);
    let probe = async {
        let mut c = Client::connect([endpoint], Some(opts)).await?;
        c.status().await
    };
    matches!(tokio::time::timeout(timeout, probe).await, Ok(Ok(_)))
}

/// Connects to the members of `endpoints` that answer now (at least one must), and keeps the
/// client's set of members to the live ones: a task on the current runtime probes each
/// configured endpoint every second, takes a dead one out of the balanced channel and puts a
/// recovered one back. Without it, the channel keeps sending a share of the requests to a dead
/// member (they fail UNAVAILABLE) while the cluster still has its quorum.
pub async fn connect(endpoints: &[String], opts: ConnectOptions) -> Result<Client, String> {
    let timeout = Duration::from_secs(1);
    let mut probes = tokio::task::JoinSet::new();
    for (i, e) in endpoints.iter().enumerate() {
        let e = e.clone();
        probes.spawn(async move { (i, member_alive(&e, timeout).await) });
    }
    let mut alive = vec![false; endpoints.len()];
    while let Some(r) = probes.join_next().await {
        if let Ok((i, a)) = r {
            alive[i] = a;
        }
    }
    let live: Vec<&String> = endpoints
        .iter()
        .zip(&alive)
        .filter_map(|(e, a)| a.then_some(e))
        .collect();
    if live.is_empty() {
        return Err(format!("no etcd member answers ({})", endpoints.join(", ")));
    }
    for (e, a) in endpoints.iter().zip(&alive) {
        if !a {
            tracing::warn!(endpoint = %e, "etcd member does not answer: using the others");
        }
    }
    let client = Client::connect(&live, Some(opts))
        .await
        .map_err(|e| e.to_string())?;
    if live.len() < endpoints.len() || endpoints.len() > 1 {
        let c = client.clone();
        let all = endpoints.to_vec();
        let mut in_use: BTreeSet<String> = live.into_iter().cloned().collect();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(MEMBER_PROBE).await;
                for e in &all {
                    let up = member_alive(e, timeout).await;
                    if up && !in_use.contains(e) {
                        if c.add_endpoint(e).await.is_ok() {
                            tracing::info!(endpoint = %e, "etcd member answers again");
                            in_use.insert(e.clone());
                        }
                    } else if !up && in_use.contains(e) && in_use.len() > 1 {
                        // Never the last one: a client with no member cannot tell when they return.
                        if c.remove_endpoint(e).await.is_ok() {
                            tracing::warn!(endpoint = %e, "etcd member stopped answering");
                            in_use.remove(e);
                        }
                    }
                }
            }
        });
    }
    Ok(client)
}

/// Escapes a name for one key segment (`%` -> `%25`, `/` -> `%2F`).
pub fn escape(s: &str) -> String {
    s.replace('%', "%25").replace('/', "%2F")
}

/// Undoes [`escape`].
pub fn unescape(s: &str) -> String {
    s.replace("%2F", "/").replace("%25", "%")
}

/// A placement's fields beside its participants and links (the `meta` key).
#[derive(Debug, Serialize, Deserialize)]
struct Meta {
    bridge: String,
    #[serde(default)]
    link: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    broadcast: Option<Broadcast>,
}

/// One key of the layout (see the module docs), in write order: a conference's `meta` is
/// written before its participants, so a flush cut short leaves participants without a
/// conference (ignored and deleted at the next load) rather than the reverse.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Key {
    Meta(String),
    Link(String, String),
    Participant(String, String),
    Route(String),
    Drain(String),
    /// A placement in the old one-value layout, deleted once rewritten.
    Legacy(String),
}

/// What etcd holds as far as this instance knows, and the keys still to write.
#[derive(Default)]
struct Mirror {
    snap: Snapshot,
    dirty: BTreeSet<Key>,
}

impl Mirror {
    /// Marks every key of `conference` (as the mirror holds it) to be written.
    fn touch_all(&mut self, conference: &str) {
        let Some(p) = self.snap.placements.get(conference) else {
            return;
        };
        self.dirty.insert(Key::Meta(conference.into()));
        for pair in p.links.keys() {
            self.dirty
                .insert(Key::Link(conference.into(), pair.clone()));
        }
        for id in p.participants.keys() {
            self.dirty
                .insert(Key::Participant(conference.into(), id.clone()));
        }
    }

    fn apply(&mut self, c: &Change) {
        let key = match c {
            Change::Placed { conference, .. } | Change::Broadcast { conference, .. } => {
                Key::Meta(conference.clone())
            }
            Change::Linked {
                conference, pair, ..
            }
            | Change::Unlinked { conference, pair } => Key::Link(conference.clone(), pair.clone()),
            Change::Joined {
                conference,
                participant_id,
                ..
            }
            | Change::Left {
                conference,
                participant_id,
            } => Key::Participant(conference.clone(), participant_id.clone()),
            Change::Ended { conference } => {
                self.touch_all(conference);
                Key::Meta(conference.clone())
            }
            Change::Routed { conference, .. } | Change::Unrouted { conference } => {
                Key::Route(conference.clone())
            }
            Change::Drained { bridge, .. } | Change::Undrained { bridge } => {
                Key::Drain(bridge.clone())
            }
        };
        self.snap.apply(c);
        self.dirty.insert(key);
    }
}

/// Keeps routes and one shard's placements in etcd.
pub struct EtcdStore {
    rt: Option<tokio::runtime::Runtime>,
    client: Client,
    /// `ROOT/shards/SHARD/`.
    shard_root: String,
    timeout: Duration,
    mirror: Mutex<Mirror>,
    /// `Some(None)`: in a cluster and not elected (nothing is written); `Some(Some(f))`:
    /// elected, writes fenced by `f`; `None`: alone (no fence).
    fence: Mutex<Option<Option<Fence>>>,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("shard_root", &self.shard_root)
            .finish()
    }
}

fn err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Remote(format!("etcd: {e}"))
}

/// The first key after every key that starts with `prefix`.
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// Every key-value under `prefix`, read in pages of [`PAGE`] at one revision (returned last).
async fn get_prefix(
    kv: &mut etcd_client::KvClient,
    prefix: &str,
) -> Result<(Vec<(String, Vec<u8>)>, i64), etcd_client::Error> {
    let end = prefix_end(prefix);
    let mut from = prefix.as_bytes().to_vec();
    let mut rev = 0;
    let mut out = Vec::new();
    loop {
        let r = kv
            .get(
                from.clone(),
                Some(
                    GetOptions::new()
                        .with_range(end.clone())
                        .with_limit(PAGE)
                        .with_revision(rev),
                ),
            )
            .await?;
        if rev == 0 {
            rev = r.header().map_or(0, |h| h.revision());
        }
        for kv in r.kvs() {
            out.push((
                String::from_utf8_lossy(kv.key()).into_owned(),
                kv.value().to_vec(),
            ));
        }
        match r.kvs().last() {
            Some(last) if r.more() => {
                from = last.key().to_vec();
                from.push(0);
            }
            _ => return Ok((out, rev)),
        }
    }
}

impl EtcdStore {
    /// Connects to `endpoints` for `shard`; every call has `timeout`. With `clustered`, nothing
    /// is written until [`Store::set_fence`] gives this instance's election key.
    pub fn connect(
        endpoints: &[String],
        shard: &str,
        timeout: Duration,
        clustered: bool,
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
        let client = run(&rt, timeout + Duration::from_secs(1), async move {
            connect(&eps, opts).await
        })?
        .map_err(err)?;
        Ok(Self {
            rt: Some(rt),
            client,
            shard_root: format!("{ROOT}shards/{shard}/"),
            timeout,
            mirror: Mutex::new(Mirror::default()),
            fence: Mutex::new(clustered.then_some(None)),
        })
    }

    fn rt(&self) -> &tokio::runtime::Runtime {
        self.rt.as_ref().expect("runtime present until drop")
    }

    fn path(&self, k: &Key) -> String {
        let r = &self.shard_root;
        match k {
            Key::Meta(c) => format!("{r}confs/{}/meta", escape(c)),
            Key::Link(c, pair) => format!("{r}confs/{}/links/{}", escape(c), escape(pair)),
            Key::Participant(c, id) => {
                format!("{r}confs/{}/participants/{}", escape(c), escape(id))
            }
            Key::Route(c) => format!("{ROOT}routes/{c}"),
            Key::Drain(b) => format!("{r}drains/{}", escape(b)),
            Key::Legacy(c) => format!("{r}placements/{c}"),
        }
    }

    /// The operation that makes `k` what `snap` says (a put, or a delete if absent), and its
    /// size in bytes.
    fn op(&self, snap: &Snapshot, k: &Key) -> Result<(TxnOp, usize), StoreError> {
        let path = self.path(k);
        let put = |v: Vec<u8>| TxnOp::put(path.clone(), v, None);
        let json = |v: &dyn erased::Json| v.to_json().map_err(err);
        let value: Option<Vec<u8>> = match k {
            Key::Meta(c) => snap
                .placements
                .get(c)
                .map(|p| {
                    json(&Meta {
                        bridge: p.bridge.clone(),
                        link: p.link,
                        broadcast: p.broadcast.clone(),
                    })
                })
                .transpose()?,
            Key::Link(c, pair) => snap
                .placements
                .get(c)
                .and_then(|p| p.links.get(pair))
                .map(|l| json(l))
                .transpose()?,
            Key::Participant(c, id) => snap
                .placements
                .get(c)
                .and_then(|p| p.participants.get(id))
                .map(|x| json(x))
                .transpose()?,
            Key::Route(c) => snap.routes.get(c).map(|r| json(r)).transpose()?,
            Key::Drain(b) => snap.drains.get(b).map(|d| json(d)).transpose()?,
            Key::Legacy(_) => None,
        };
        let size = path.len() + value.as_ref().map_or(0, Vec::len) + 16;
        Ok((
            match value {
                Some(v) => put(v),
                None => TxnOp::delete(path.clone(), None),
            },
            size,
        ))
    }
}

/// Serializing the different values of the layout through one helper.
mod erased {
    /// A value stored as JSON.
    pub trait Json {
        fn to_json(&self) -> serde_json::Result<Vec<u8>>;
    }
    impl<T: serde::Serialize> Json for T {
        fn to_json(&self) -> serde_json::Result<Vec<u8>> {
            serde_json::to_vec(self)
        }
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

/// Parsed keys of one conference while loading.
#[derive(Default)]
struct Loading {
    meta: Option<Meta>,
    links: BTreeMap<String, LinkKeys>,
    participants: BTreeMap<String, Participant>,
}

impl Loading {
    /// The placement, if its `meta` was there.
    fn into_placement(self) -> Option<Placement> {
        let m = self.meta?;
        Some(Placement {
            bridge: m.bridge,
            participants: self.participants,
            link: m.link,
            links: self.links,
            broadcast: m.broadcast,
        })
    }
}

impl Store for EtcdStore {
    fn load(&self) -> Result<Snapshot, StoreError> {
        // Reads of a big shard take longer than one call's deadline: a page each. A cluster in
        // the middle of electing its leader ("leader changed", unavailable) is waited for a few
        // times rather than failing a start or a takeover.
        let mut tries = 0;
        let started = std::time::Instant::now();
        let (routes, shard) = loop {
            let mut kv = self.client.kv_client();
            let routes_prefix = format!("{ROOT}routes/");
            let shard_root = self.shard_root.clone();
            let r = run(self.rt(), self.timeout * 10, async move {
                let r = get_prefix(&mut kv, &routes_prefix).await?.0;
                let s = get_prefix(&mut kv, &shard_root).await?.0;
                Ok::<_, etcd_client::Error>((r, s))
            })
            .and_then(|r| r.map_err(err));
            match r {
                Ok(v) => break v,
                Err(e) if tries < LOAD_RETRIES && started.elapsed() < LOAD_PATIENCE => {
                    tries += 1;
                    tracing::warn!("loading from etcd: {e} (retrying)");
                    std::thread::sleep(Duration::from_millis(500));
                }
                Err(e) => return Err(e),
            }
        };
        let mut snap = Snapshot::default();
        let mut dirty = BTreeSet::new();
        for (k, v) in routes {
            if let Some(c) = k.strip_prefix(&format!("{ROOT}routes/")) {
                let r = serde_json::from_slice(&v).map_err(|e| err(format!("route {c}: {e}")))?;
                snap.routes.insert(c.to_string(), r);
            }
        }
        let mut confs: BTreeMap<String, Loading> = BTreeMap::new();
        let bad = |k: &str, e: serde_json::Error| err(format!("{k}: {e}"));
        for (k, v) in shard {
            let Some(rest) = k.strip_prefix(&self.shard_root) else {
                continue;
            };
            let parts: Vec<&str> = rest.split('/').collect();
            match parts.as_slice() {
                ["confs", c, "meta"] => {
                    confs.entry(unescape(c)).or_default().meta =
                        Some(serde_json::from_slice(&v).map_err(|e| bad(&k, e))?);
                }
                ["confs", c, "links", pair] => {
                    let l = serde_json::from_slice(&v).map_err(|e| bad(&k, e))?;
                    confs
                        .entry(unescape(c))
                        .or_default()
                        .links
                        .insert(unescape(pair), l);
                }
                ["confs", c, "participants", id] => {
                    let x = serde_json::from_slice(&v).map_err(|e| bad(&k, e))?;
                    confs
                        .entry(unescape(c))
                        .or_default()
                        .participants
                        .insert(unescape(id), x);
                }
                ["drains", b] => {
                    let d = serde_json::from_slice(&v).map_err(|e| bad(&k, e))?;
                    snap.drains.insert(unescape(b), d);
                }
                ["placements", ..] => {
                    // The old layout: one value per conference; rewritten at the next flush.
                    let c = rest["placements/".len()..].to_string();
                    let p: Placement = serde_json::from_slice(&v).map_err(|e| bad(&k, e))?;
                    dirty.insert(Key::Legacy(c.clone()));
                    confs.entry(c.clone()).or_default();
                    snap.placements.insert(c, p);
                }
                // The cluster's keys (bridge registrations, announcements).
                ["bridges" | "events", ..] => {}
                _ => tracing::warn!(key = %k, "unknown key in the shard's store; ignored"),
            }
        }
        for (c, l) in confs {
            if snap.placements.contains_key(&c) {
                // Migrated from the old layout: write every key of it.
                let p = &snap.placements[&c];
                dirty.insert(Key::Meta(c.clone()));
                dirty.extend(p.links.keys().map(|x| Key::Link(c.clone(), x.clone())));
                dirty.extend(
                    p.participants
                        .keys()
                        .map(|x| Key::Participant(c.clone(), x.clone())),
                );
                continue;
            }
            if l.meta.is_some() {
                snap.placements
                    .insert(c, l.into_placement().expect("meta present"));
                continue;
            }
            // Left by a flush cut short after its conference ended: delete them.
            tracing::warn!(conference = %c, "participants without a conference in the store; removing them");
            dirty.extend(l.links.into_keys().map(|x| Key::Link(c.clone(), x)));
            dirty.extend(
                l.participants
                    .into_keys()
                    .map(|x| Key::Participant(c.clone(), x)),
            );
        }
        let mut m = self.mirror.lock().unwrap_or_else(|e| e.into_inner());
        m.snap = snap.clone();
        m.dirty = dirty;
        Ok(snap)
    }

    fn append(&self, changes: &[Change]) -> Result<(), StoreError> {
        let fence = match &*self.fence.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(None) => {
                return Err(StoreError::Fenced(
                    "this instance is not its shard's active focus".into(),
                ));
            }
            Some(Some(f)) => Some(f.clone()),
            None => None,
        };
        // Apply to the mirror and note the keys to write; changes are idempotent, so a retry
        // after a failed write applies them again harmlessly.
        let (batches, written): (Vec<Vec<TxnOp>>, Vec<Key>) = {
            let mut m = self.mirror.lock().unwrap_or_else(|e| e.into_inner());
            for c in changes {
                m.apply(c);
            }
            // Transactions of at most MAX_TXN_OPS operations and about MAX_TXN_BYTES bytes,
            // in key order (see `Key`).
            let mut batches: Vec<Vec<TxnOp>> = Vec::new();
            let mut bytes = 0;
            for k in &m.dirty {
                let (op, size) = self.op(&m.snap, k)?;
                match batches.last_mut() {
                    Some(b) if b.len() < MAX_TXN_OPS && bytes + size <= MAX_TXN_BYTES => {
                        bytes += size;
                        b.push(op);
                    }
                    _ => {
                        bytes = size;
                        batches.push(vec![op]);
                    }
                }
            }
            (batches, m.dirty.iter().cloned().collect())
        };
        if batches.is_empty() {
            return Ok(());
        }
        let mut kv = self.client.kv_client();
        // A deadline per transaction: a big flush (a takeover's migration) has many.
        let deadline = self.timeout * (batches.len() as u32).min(30);
        let fenced = run(self.rt(), deadline, async move {
            for ops in batches {
                let mut txn = Txn::new();
                if let Some(f) = &fence {
                    txn = txn.when([Compare::create_revision(
                        f.key.clone(),
                        CompareOp::Equal,
                        f.revision,
                    )]);
                }
                if !kv.txn(txn.and_then(ops)).await?.succeeded() {
                    return Ok(true);
                }
            }
            Ok::<_, etcd_client::Error>(false)
        })?
        .map_err(err)?;
        if fenced {
            return Err(StoreError::Fenced(
                "this instance's election key is gone: another instance may be active".into(),
            ));
        }
        let mut m = self.mirror.lock().unwrap_or_else(|e| e.into_inner());
        for k in written {
            m.dirty.remove(&k);
        }
        Ok(())
    }

    fn read_placement(&self, conference: &str) -> Result<(Option<Placement>, i64), StoreError> {
        let mut kv = self.client.kv_client();
        let prefix = format!("{}confs/{}/", self.shard_root, escape(conference));
        let legacy = self.path(&Key::Legacy(conference.into()));
        let ((keys, rev), old) = run(self.rt(), self.timeout * 4, async move {
            let keys = get_prefix(&mut kv, &prefix).await?;
            let old = kv.get(legacy, None).await?;
            Ok::<_, etcd_client::Error>((keys, old))
        })?
        .map_err(err)?;
        if let Some(kv) = old.kvs().first() {
            let p = serde_json::from_slice(kv.value()).map_err(err)?;
            return Ok((Some(p), rev));
        }
        let mut l = Loading::default();
        let bad = |k: &str, e: serde_json::Error| err(format!("{k}: {e}"));
        let root = format!("{}confs/{}/", self.shard_root, escape(conference));
        for (k, v) in keys {
            let rest = k.strip_prefix(&root).unwrap_or_default();
            match rest.split_once('/') {
                None if rest == "meta" => {
                    l.meta = Some(serde_json::from_slice(&v).map_err(|e| bad(&k, e))?)
                }
                Some(("links", pair)) => {
                    let x = serde_json::from_slice(&v).map_err(|e| bad(&k, e))?;
                    l.links.insert(unescape(pair), x);
                }
                Some(("participants", id)) => {
                    let x = serde_json::from_slice(&v).map_err(|e| bad(&k, e))?;
                    l.participants.insert(unescape(id), x);
                }
                _ => {}
            }
        }
        Ok((l.into_placement(), rev))
    }

    fn set_fence(&self, fence: Option<Fence>) {
        let mut f = self.fence.lock().unwrap_or_else(|e| e.into_inner());
        if f.is_some() {
            *f = Some(fence);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_host_port_lists_and_a_path_is_refused_not_ignored() {
        assert_eq!(
            endpoints("etcd://a:1, b:2,").unwrap(),
            ["http://a:1", "http://b:2"]
        );
        assert_eq!(endpoints("etcd://a:1/").unwrap(), ["http://a:1"]);
        for bad in [
            "etcd://127.0.0.1:2379/tenant-a",
            "etcd://a:1,b:2/t",
            "etcd://a:1?prefix=x",
            "etcd://a:1//",
        ] {
            let e = endpoints(bad).unwrap_err();
            assert!(
                e.starts_with(&format!("--store {bad}: ")) && e.contains("not supported"),
                "{e}"
            );
        }
        assert!(
            endpoints("etcd://")
                .unwrap_err()
                .contains("no etcd endpoint")
        );
        assert!(
            endpoints("http://a:1")
                .unwrap_err()
                .contains("expected file")
        );
    }

    #[test]
    fn names_escape_into_one_key_segment_and_back() {
        for s in ["a", "a/b", "100%", "%2F", "/", "x%/y"] {
            let e = escape(s);
            assert!(!e.contains('/'), "{e}");
            assert_eq!(unescape(&e), s);
        }
    }

    #[test]
    fn prefix_end_is_the_next_key_after_the_prefix() {
        assert_eq!(prefix_end("/a/"), b"/a0".to_vec());
        assert_eq!(prefix_end("a\u{7f}"), b"a\x80".to_vec());
    }

    #[test]
    fn an_ended_conference_deletes_every_key_it_had_and_a_new_one_writes_its_own() {
        let mut m = Mirror::default();
        let part = |b: &str| Participant {
            region: "eu".into(),
            ssrcs: vec![1],
            remote_addr: String::new(),
            srtp: None,
            bridge: b.into(),
            role: Default::default(),
            webrtc: None,
            rewrite: None,
            media: None,
            subscription: None,
            last_n: 0,
            owner: String::new(),
        };
        m.apply(&Change::Placed {
            conference: "c".into(),
            bridge: "b1".into(),
            link: 1,
        });
        for id in ["x", "y"] {
            m.apply(&Change::Joined {
                conference: "c".into(),
                participant_id: id.into(),
                participant: part("b1"),
            });
        }
        m.dirty.clear(); // flushed
        m.apply(&Change::Ended {
            conference: "c".into(),
        });
        m.apply(&Change::Placed {
            conference: "c".into(),
            bridge: "b2".into(),
            link: 2,
        });
        m.apply(&Change::Joined {
            conference: "c".into(),
            participant_id: "z".into(),
            participant: part("b2"),
        });
        let keys: Vec<Key> = m.dirty.iter().cloned().collect();
        assert_eq!(
            keys,
            [
                Key::Meta("c".into()),
                Key::Participant("c".into(), "x".into()),
                Key::Participant("c".into(), "y".into()),
                Key::Participant("c".into(), "z".into()),
            ]
        );
        // x and y are gone (deleted), z is there (put).
        let p = &m.snap.placements["c"];
        assert_eq!(p.participants.keys().collect::<Vec<_>>(), ["z"]);
    }
}
