//! What must survive a restart of `ringbridge-control`: sticky routes and conference
//! placements. Behind [`Store`] so a shared store can back several control instances; the
//! default is [`FileStore`], one JSON file in `--data-dir`, replaced atomically.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::router::Route;

/// One participant of a placed conference, enough to program it on another bridge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Participant {
    /// Region it joined from.
    pub region: String,
    /// SSRCs it sends.
    pub ssrcs: Vec<u32>,
    /// Its address, or empty to latch.
    pub remote_addr: String,
}

/// Where a conference lives and who is in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    /// Bridge that hosts it.
    pub bridge: String,
    /// Participants by id.
    pub participants: BTreeMap<String, Participant>,
}

/// Everything the store keeps.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Conference -> shard.
    pub routes: BTreeMap<String, Route>,
    /// Conference -> placement.
    pub placements: BTreeMap<String, Placement>,
}

/// A store failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Reading or writing failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file does not parse.
    #[error("{path}: not a ringbridge-control state file: {source}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Why.
        source: serde_json::Error,
    },
}

/// Persistent state.
pub trait Store: Send + Sync {
    /// The last saved snapshot (empty if none was saved).
    fn load(&self) -> Result<Snapshot, StoreError>;
    /// Replaces the saved snapshot; on return it survives a crash.
    fn save(&self, s: &Snapshot) -> Result<(), StoreError>;
}

/// A JSON file in a directory, written to a temporary file, synced, then renamed over.
#[derive(Debug, Clone)]
pub struct FileStore {
    path: PathBuf,
}

impl FileStore {
    /// A store at `dir/state.json` (the directory is created).
    pub fn new(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Io {
            path: dir.into(),
            source,
        })?;
        Ok(Self {
            path: dir.join("state.json"),
        })
    }
}

impl Store for FileStore {
    fn load(&self) -> Result<Snapshot, StoreError> {
        let io = |source| StoreError::Io {
            path: self.path.clone(),
            source,
        };
        match std::fs::read(&self.path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|source| StoreError::Corrupt {
                path: self.path.clone(),
                source,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Snapshot::default()),
            Err(e) => Err(io(e)),
        }
    }

    fn save(&self, s: &Snapshot) -> Result<(), StoreError> {
        let tmp = self.path.with_extension("json.tmp");
        let io = |source| StoreError::Io {
            path: tmp.clone(),
            source,
        };
        let bytes = serde_json::to_vec_pretty(s).expect("snapshot serializes");
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        f.write_all(&bytes).map_err(io)?;
        f.sync_all().map_err(io)?;
        std::fs::rename(&tmp, &self.path).map_err(io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_survives_a_new_instance() {
        let dir = std::env::temp_dir().join(format!("ringbridge-store-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = FileStore::new(&dir).unwrap();
        assert_eq!(store.load().unwrap(), Snapshot::default());
        let mut s = Snapshot::default();
        s.routes.insert(
            "conf".into(),
            Route {
                shard: "s0".into(),
                last_used_ms: 5,
            },
        );
        s.placements.insert(
            "conf".into(),
            Placement {
                bridge: "b1".into(),
                participants: [(
                    "alice".to_string(),
                    Participant {
                        region: "eu".into(),
                        ssrcs: vec![1, 2],
                        remote_addr: "127.0.0.1:4000".into(),
                    },
                )]
                .into(),
            },
        );
        store.save(&s).unwrap();
        assert_eq!(FileStore::new(&dir).unwrap().load().unwrap(), s);
        std::fs::write(dir.join("state.json"), b"{not json").unwrap();
        assert!(matches!(store.load(), Err(StoreError::Corrupt { .. })));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
