//! The embedded store: [`FileStore`] keeps an append-only log (`log.<gen>`, one JSON change per
//! line, fsynced per append) next to a snapshot (`snapshot.json`, naming the generation of the log
//! that continues it). When the log outgrows the snapshot it is compacted: a new snapshot is
//! written (temporary file, fsync, rename) and a new log generation starts, so appending costs
//! O(change) amortized instead of rewriting every placement. The directory is created 0700 and
//! every file 0600: they hold SRTP master keys.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::{Change, Snapshot, Store, StoreError};

/// The log grows to at least this many bytes before it is compacted.
const MIN_COMPACT_BYTES: u64 = 1 << 20;

#[derive(Deserialize)]
struct SnapshotFile {
    /// Generation of the log that continues this snapshot.
    log_generation: u64,
    #[serde(flatten)]
    state: Snapshot,
}

/// What [`SnapshotFile`] reads, written from a reference (no copy of the state).
#[derive(Serialize)]
struct SnapshotRef<'a> {
    log_generation: u64,
    #[serde(flatten)]
    state: &'a Snapshot,
}

struct LogState {
    generation: u64,
    file: File,
    log_bytes: u64,
    snapshot_bytes: u64,
    /// The state as persisted, to write the next snapshot from.
    mirror: Snapshot,
    /// The last append failed: the log may end in a torn write, so the next append starts a
    /// new generation from a snapshot of what was acknowledged.
    broken: bool,
}

/// The embedded store: snapshot + append-only log in a directory (see the module docs).
pub struct FileStore {
    dir: PathBuf,
    state: Mutex<Option<LogState>>,
}

impl std::fmt::Debug for FileStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileStore").field("dir", &self.dir).finish()
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.into(),
        source,
    }
}

fn create_private(path: &Path, append: bool) -> Result<File, StoreError> {
    let mut o = OpenOptions::new();
    o.create(true).write(true).mode(0o600);
    if append {
        o.append(true);
    } else {
        o.truncate(true);
    }
    o.open(path).map_err(io(path))
}

impl FileStore {
    /// A store in `dir` (created 0700). Fails unless the directory is writable, so a control
    /// plane never starts on a store it cannot persist to.
    pub fn new(dir: &Path) -> Result<Self, StoreError> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io(dir))?;
        let probe = dir.join(".writable");
        create_private(&probe, false)?;
        let _ = std::fs::remove_file(&probe);
        Ok(Self {
            dir: dir.into(),
            state: Mutex::new(None),
        })
    }

    fn snapshot_path(&self) -> PathBuf {
        self.dir.join("snapshot.json")
    }

    fn log_path(&self, generation: u64) -> PathBuf {
        self.dir.join(format!("log.{generation}"))
    }

    /// Writes `state` as the snapshot continued by log `generation` (temp file, fsync, rename).
    fn write_snapshot(&self, generation: u64, state: &Snapshot) -> Result<u64, StoreError> {
        let path = self.snapshot_path();
        let tmp = path.with_extension("json.tmp");
        let bytes = serde_json::to_vec(&SnapshotRef {
            log_generation: generation,
            state,
        })
        .expect("snapshot serializes");
        let mut f = create_private(&tmp, false)?;
        f.write_all(&bytes).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(io(&path))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io(&self.dir))?;
        Ok(bytes.len() as u64)
    }

    fn compact(&self, st: &mut LogState) -> Result<(), StoreError> {
        let next = st.generation + 1;
        let file = create_private(&self.log_path(next), true)?;
        st.snapshot_bytes = self.write_snapshot(next, &st.mirror)?;
        let old = self.log_path(st.generation);
        st.generation = next;
        st.file = file;
        st.log_bytes = 0;
        let _ = std::fs::remove_file(old);
        Ok(())
    }
}

impl Store for FileStore {
    fn load(&self) -> Result<Snapshot, StoreError> {
        let path = self.snapshot_path();
        let (generation, mut state, snapshot_bytes) = match std::fs::read(&path) {
            Ok(b) => {
                let f: SnapshotFile =
                    serde_json::from_slice(&b).map_err(|e| StoreError::Corrupt {
                        path: path.clone(),
                        why: e.to_string(),
                    })?;
                (f.log_generation, f.state, b.len() as u64)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (0, Snapshot::default(), 0),
            Err(e) => return Err(io(&path)(e)),
        };
        let log = self.log_path(generation);
        let mut log_bytes = 0;
        match File::open(&log) {
            Ok(f) => {
                for (n, line) in BufReader::new(f).lines().enumerate() {
                    let line = line.map_err(io(&log))?;
                    log_bytes += line.len() as u64 + 1;
                    match serde_json::from_str::<Change>(&line) {
                        Ok(c) => state.apply(&c),
                        // A crash mid-append leaves a torn last line: everything before it
                        // was acknowledged, the torn line was not.
                        Err(e) if e.is_eof() => break,
                        Err(e) => {
                            return Err(StoreError::Corrupt {
                                path: log.clone(),
                                why: format!("line {}: {e}", n + 1),
                            });
                        }
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(&log)(e)),
        }
        // Continue in a fresh generation from a snapshot of what was loaded (this drops a torn
        // tail and keeps the old files until the new snapshot is in place).
        let mut st = LogState {
            generation,
            file: create_private(&log, true)?,
            log_bytes,
            snapshot_bytes,
            mirror: state.clone(),
            broken: false,
        };
        self.compact(&mut st)?;
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) = Some(st);
        Ok(state)
    }

    fn append(&self, changes: &[Change]) -> Result<(), StoreError> {
        if changes.is_empty() {
            return Ok(());
        }
        let mut guard = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let st = guard.as_mut().expect("FileStore::load before append");
        if st.broken {
            self.compact(st)?;
            st.broken = false;
        }
        let mut buf = Vec::with_capacity(changes.len() * 128);
        for c in changes {
            serde_json::to_writer(&mut buf, c).expect("change serializes");
            buf.push(b'\n');
        }
        let log = self.log_path(st.generation);
        let written = st
            .file
            .write_all(&buf)
            .and_then(|()| st.file.sync_data())
            .map_err(io(&log));
        if written.is_err() {
            st.broken = true;
        }
        written?;
        st.log_bytes += buf.len() as u64;
        for c in changes {
            st.mirror.apply(c);
        }
        if st.log_bytes > MIN_COMPACT_BYTES.max(2 * st.snapshot_bytes) {
            self.compact(st)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::router::Route;
    use crate::store::{Participant, Role, SrtpKeys};
    use std::os::unix::fs::PermissionsExt;

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("ringbridge-store-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn joined(conf: &str, id: &str) -> Change {
        Change::Joined {
            conference: conf.into(),
            participant_id: id.into(),
            participant: Participant {
                region: "eu".into(),
                ssrcs: vec![1, 2],
                remote_addr: "127.0.0.1:4000".into(),
                srtp: Some(SrtpKeys {
                    profile: "AEAD_AES_128_GCM".into(),
                    endpoint_key: vec![1; 28],
                    bridge_key: vec![2; 28],
                }),
                bridge: "b1".into(),
                role: Role::Participant,
                webrtc: None,
                rewrite: None,
                media: None,
                subscription: None,
                last_n: 0,
                owner: String::new(),
            },
        }
    }

    #[test]
    fn log_survives_a_new_instance_and_compaction_keeps_everything() {
        let d = dir("log");
        let store = FileStore::new(&d).unwrap();
        assert_eq!(store.load().unwrap(), Snapshot::default());
        let mut want = Snapshot::default();
        let mut changes = vec![
            Change::Routed {
                conference: "conf".into(),
                route: Route {
                    shard: "s0".into(),
                    last_used_ms: 5,
                },
            },
            Change::Placed {
                conference: "conf".into(),
                bridge: "b1".into(),
                link: 1,
            },
            joined("conf", "alice"),
            joined("conf", "bob"),
            Change::Left {
                conference: "conf".into(),
                participant_id: "bob".into(),
            },
        ];
        // Enough changes to force several compactions.
        for i in 0..6000 {
            let c = format!("c{i}");
            changes.push(Change::Placed {
                conference: c.clone(),
                bridge: "b2".into(),
                link: i,
            });
            changes.push(joined(&c, "p"));
            if i % 2 == 0 {
                changes.push(Change::Ended { conference: c });
            }
        }
        for chunk in changes.chunks(100) {
            store.append(chunk).unwrap();
        }
        for c in &changes {
            want.apply(c);
        }
        assert_eq!(want.placements.len(), 3001);
        assert_eq!(
            want.placements["conf"]
                .participants
                .keys()
                .collect::<Vec<_>>(),
            ["alice"]
        );
        let again = FileStore::new(&d).unwrap();
        assert_eq!(again.load().unwrap(), want);
        // Only one log generation is kept, and keys at rest are private.
        let logs: Vec<_> = std::fs::read_dir(&d)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with("log."))
            .collect();
        assert_eq!(logs.len(), 1);
        for e in std::fs::read_dir(&d).unwrap() {
            let mode = e.unwrap().metadata().unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        let mode = std::fs::metadata(&d).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_failed_write_is_not_acknowledged_and_the_retry_starts_a_clean_log() {
        let d = dir("full");
        std::fs::create_dir_all(&d).unwrap();
        // The first generations' logs are /dev/full: writes fail with ENOSPC.
        for g in 1..4 {
            std::os::unix::fs::symlink("/dev/full", d.join(format!("log.{g}"))).unwrap();
        }
        let store = FileStore::new(&d).unwrap();
        store.load().unwrap(); // continues in log.1 (-> /dev/full)
        let c = [Change::Placed {
            conference: "c".into(),
            bridge: "b".into(),
            link: 1,
        }];
        assert!(store.append(&c).is_err());
        assert!(store.append(&c).is_err(), "log.2 is /dev/full too");
        for g in 1..4 {
            let _ = std::fs::remove_file(d.join(format!("log.{g}")));
        }
        store.append(&c).unwrap();
        let s = FileStore::new(&d).unwrap().load().unwrap();
        assert_eq!(s.placements["c"].bridge, "b");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_torn_last_line_is_dropped_and_a_corrupt_file_is_refused() {
        let d = dir("torn");
        let store = FileStore::new(&d).unwrap();
        store.load().unwrap();
        store
            .append(&[
                Change::Placed {
                    conference: "c".into(),
                    bridge: "b".into(),
                    link: 1,
                },
                joined("c", "a"),
            ])
            .unwrap();
        let log = std::fs::read_dir(&d)
            .unwrap()
            .filter_map(|e| e.ok())
            .find(|e| e.file_name().to_string_lossy().starts_with("log."))
            .unwrap()
            .path();
        let mut f = OpenOptions::new().append(true).open(&log).unwrap();
        f.write_all(br#"{"op":"left","confer"#).unwrap();
        let s = FileStore::new(&d).unwrap().load().unwrap();
        assert_eq!(s.placements["c"].participants.len(), 1);
        std::fs::write(d.join("snapshot.json"), b"{not json").unwrap();
        assert!(matches!(
            FileStore::new(&d).unwrap().load(),
            Err(StoreError::Corrupt { .. })
        ));
        let _ = std::fs::remove_dir_all(&d);
    }
}
