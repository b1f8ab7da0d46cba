//! Copy-on-write containers for the forwarding table, so publishing a snapshot costs
//! O(shards + changed shard) instead of O(entries). Each published table shares every shard
//! with the working copy; the next change to a shard copies that shard only
//! (`Arc::make_mut`). Lookups on the packet path pay one extra indirection.
//!
//! - [`CowMap`]: a hash map split into [`SHARDS`] shards by the key's hash.
//! - [`CowVec`]: a vector split into chunks of [`CHUNK`] elements.

use std::hash::{BuildHasher, Hash};
use std::sync::Arc;

use rustc_hash::{FxBuildHasher, FxHashMap};

/// Shards of a [`CowMap`].
pub const SHARDS: usize = 256;
/// Elements per chunk of a [`CowVec`].
pub const CHUNK: usize = 1024;

/// A hash map whose clone shares its shards; see the module docs.
#[derive(Debug, Clone)]
pub struct CowMap<K, V> {
    shards: Box<[Arc<FxHashMap<K, V>>]>,
    len: usize,
}

impl<K, V> Default for CowMap<K, V> {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS)
                .map(|_| Arc::new(FxHashMap::default()))
                .collect(),
            len: 0,
        }
    }
}

impl<K: Hash + Eq + Clone, V: Clone> CowMap<K, V> {
    #[inline]
    fn shard(k: &K) -> usize {
        // The top bits: the shard's own map uses the low bits of the same hash family.
        (FxBuildHasher.hash_one(k) >> 56) as usize % SHARDS
    }

    /// The value of `k`.
    #[inline]
    pub fn get(&self, k: &K) -> Option<&V> {
        self.shards[Self::shard(k)].get(k)
    }

    /// The stored key and value of `k`.
    pub fn get_key_value(&self, k: &K) -> Option<(&K, &V)> {
        self.shards[Self::shard(k)].get_key_value(k)
    }

    /// Whether `k` is present.
    #[inline]
    pub fn contains_key(&self, k: &K) -> bool {
        self.shards[Self::shard(k)].contains_key(k)
    }

    /// Inserts; returns the previous value. Copies the key's shard if a snapshot shares it.
    pub fn insert(&mut self, k: K, v: V) -> Option<V> {
        let old = Arc::make_mut(&mut self.shards[Self::shard(&k)]).insert(k, v);
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    /// Removes; returns the value. Copies the key's shard if a snapshot shares it (and only
    /// when the key is there).
    pub fn remove(&mut self, k: &K) -> Option<V> {
        let s = Self::shard(k);
        if !self.shards[s].contains_key(k) {
            return None;
        }
        let old = Arc::make_mut(&mut self.shards[s]).remove(k);
        self.len -= 1;
        old
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// All entries, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.shards.iter().flat_map(|s| s.iter())
    }

    /// All values, in no particular order.
    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.iter().map(|(_, v)| v)
    }
}

impl<K: Hash + Eq + Clone, V: Clone> std::ops::Index<&K> for CowMap<K, V> {
    type Output = V;
    fn index(&self, k: &K) -> &V {
        self.get(k).expect("key present")
    }
}

/// A vector whose clone shares its chunks; see the module docs.
#[derive(Debug, Clone)]
pub struct CowVec<T> {
    chunks: Vec<Arc<Vec<T>>>,
    len: usize,
}

impl<T> Default for CowVec<T> {
    fn default() -> Self {
        Self {
            chunks: Vec::new(),
            len: 0,
        }
    }
}

impl<T: Clone> CowVec<T> {
    /// Element `i`.
    #[inline]
    pub fn get(&self, i: usize) -> Option<&T> {
        self.chunks.get(i / CHUNK).and_then(|c| c.get(i % CHUNK))
    }

    /// Element `i`, mutable; copies its chunk if a snapshot shares it.
    pub fn get_mut(&mut self, i: usize) -> Option<&mut T> {
        self.chunks
            .get_mut(i / CHUNK)
            .and_then(|c| Arc::make_mut(c).get_mut(i % CHUNK))
    }

    /// Appends.
    pub fn push(&mut self, v: T) {
        if self.len.is_multiple_of(CHUNK) {
            self.chunks.push(Arc::new(Vec::with_capacity(CHUNK)));
        }
        Arc::make_mut(self.chunks.last_mut().expect("a chunk with room")).push(v);
        self.len += 1;
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl<T: Clone> std::ops::Index<usize> for CowVec<T> {
    type Output = T;
    #[inline]
    fn index(&self, i: usize) -> &T {
        &self.chunks[i / CHUNK][i % CHUNK]
    }
}

impl<T: Clone> std::ops::IndexMut<usize> for CowVec<T> {
    fn index_mut(&mut self, i: usize) -> &mut T {
        self.get_mut(i).expect("index in bounds")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_snapshots_are_untouched_by_later_changes() {
        let mut m = CowMap::<u32, u32>::default();
        for i in 0..10_000 {
            m.insert(i, i * 2);
        }
        let snap = m.clone();
        assert_eq!(m.insert(5, 0), Some(10));
        assert_eq!(m.remove(&6), Some(12));
        assert_eq!(m.remove(&6), None);
        m.insert(20_000, 1);
        assert_eq!((m.len(), snap.len()), (10_000, 10_000));
        assert_eq!((m[&5], snap[&5]), (0, 10));
        assert!(!m.contains_key(&6) && snap.contains_key(&6));
        assert_eq!(snap.get(&20_000), None);
        assert_eq!(m.iter().count(), m.len());
        // Only the changed shards were copied.
        let shared = m
            .shards
            .iter()
            .zip(snap.shards.iter())
            .filter(|(a, b)| Arc::ptr_eq(a, b))
            .count();
        assert!(shared >= SHARDS - 3, "{shared}");
    }

    #[test]
    fn vec_snapshots_are_untouched_by_later_changes() {
        let mut v = CowVec::default();
        for i in 0..3000 {
            v.push(i);
        }
        let snap = v.clone();
        v[1500] = -1;
        v.push(7);
        assert_eq!((v[1500], snap[1500]), (-1, 1500));
        assert_eq!((v.len(), snap.len()), (3001, 3000));
        assert_eq!(v.get(3000), Some(&7));
        assert_eq!(snap.get(3000), None);
        assert!(Arc::ptr_eq(&v.chunks[0], &snap.chunks[0]));
    }
}
