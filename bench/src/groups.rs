//! The setup the rig hands a baseline forwarder: the media groups (conferences) and their
//! members' addresses, as a JSON file `{"groups": [["127.0.0.1:4000", ...], ...]}`.

use std::net::SocketAddr;

/// Conferences as lists of member addresses.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Groups {
    /// One list per conference.
    pub groups: Vec<Vec<SocketAddr>>,
}

impl Groups {
    /// Reads a setup file.
    pub fn load(path: &std::path::Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)?;
        Ok(serde_json::from_str(&text)?)
    }

    /// For each member, the other members of its group.
    pub fn fanout(&self) -> rustc_hash::FxHashMap<SocketAddr, Vec<SocketAddr>> {
        let mut m = rustc_hash::FxHashMap::default();
        for g in &self.groups {
            for &a in g {
                m.insert(a, g.iter().copied().filter(|&b| b != a).collect());
            }
        }
        m
    }
}
