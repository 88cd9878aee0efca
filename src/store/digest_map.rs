//! A sharded map keyed by token digest, optionally bounded: the memory store holds its tokens
//! in one, the Redis store its in-process cache.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::RwLock;

use super::TokenDigest;

// Many shards keep each one small: a sweep holds one shard's lock at a time.
const SHARDS: usize = 64;

/// Keys are SHA-256 digests, already uniform: their first eight bytes are the hash. Only
/// digests of tokens this gateway minted, or of tokens looked up and found absent, are ever
/// inserted, and a digest cannot be aimed at a bucket without inverting SHA-256.
#[derive(Default)]
struct DigestHasher(u64);

impl Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        if let Some(first) = bytes.get(..8) {
            self.0 ^= u64::from_le_bytes(first.try_into().unwrap_or([0; 8]));
        }
    }
}

type Shard<V> = HashMap<TokenDigest, V, BuildHasherDefault<DigestHasher>>;

/// Sharded digest -> value map. With a bound, inserting into a full shard first drops the
/// entries `stale` says are dead, then an arbitrary one.
pub struct DigestMap<V> {
    shards: Box<[RwLock<Shard<V>>]>,
    per_shard: usize,
}

impl<V: Clone> std::fmt::Debug for DigestMap<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DigestMap")
            .field("len", &self.len())
            .finish()
    }
}

impl<V: Clone> DigestMap<V> {
    /// An unbounded map.
    pub fn unbounded() -> Self {
        Self::bounded(usize::MAX)
    }

    /// A map holding at most about `entries` values.
    pub fn bounded(entries: usize) -> Self {
        DigestMap {
            shards: (0..SHARDS).map(|_| RwLock::default()).collect(),
            per_shard: entries.div_ceil(SHARDS).max(1),
        }
    }

    fn shard(&self, digest: &TokenDigest) -> &RwLock<Shard<V>> {
        // The last byte picks the shard; the first eight pick the bucket inside it.
        &self.shards[digest.0[31] as usize % SHARDS]
    }

    /// The value under `digest`.
    pub fn get(&self, digest: &TokenDigest) -> Option<V> {
        self.shard(digest)
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(digest)
            .cloned()
    }

    /// Inserts, making room first if the shard is full.
    pub fn insert(&self, digest: TokenDigest, value: V, stale: impl Fn(&V) -> bool) {
        let mut shard = self
            .shard(&digest)
            .write()
            .unwrap_or_else(|p| p.into_inner());
        if shard.len() >= self.per_shard && !shard.contains_key(&digest) {
            shard.retain(|_, v| !stale(v));
            if shard.len() >= self.per_shard {
                if let Some(k) = shard.keys().next().copied() {
                    shard.remove(&k);
                }
            }
        }
        shard.insert(digest, value);
    }

    /// Removes and returns the value under `digest`.
    pub fn remove(&self, digest: &TokenDigest) -> Option<V> {
        self.shard(digest)
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(digest)
    }

    /// Keeps only the entries for which `keep` is true; returns how many were dropped.
    pub fn retain(&self, keep: impl Fn(&V) -> bool) -> usize {
        let mut dropped = 0;
        for shard in self.shards.iter() {
            let mut map = shard.write().unwrap_or_else(|p| p.into_inner());
            let before = map.len();
            map.retain(|_, v| keep(v));
            dropped += before - map.len();
        }
        dropped
    }

    /// Drops everything.
    pub fn clear(&self) {
        for shard in self.shards.iter() {
            shard.write().unwrap_or_else(|p| p.into_inner()).clear();
        }
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.read().unwrap_or_else(|p| p.into_inner()).len())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_map_never_exceeds_its_bound() {
        let m: DigestMap<u32> = DigestMap::bounded(64);
        for i in 0..10_000u32 {
            m.insert(TokenDigest::of(&i.to_string()), i, |v| v % 2 == 0);
        }
        assert!(m.len() <= 64, "{}", m.len());
        let d = TokenDigest::of("x");
        m.insert(d, 7, |_| false);
        assert_eq!(m.get(&d), Some(7));
        assert_eq!(m.remove(&d), Some(7));
        assert_eq!(m.get(&d), None);
    }
}
