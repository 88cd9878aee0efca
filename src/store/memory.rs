//! The embedded token store: sharded hash maps keyed by token digest, swept of expired
//! tokens in the background so the map never grows past the live set.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Arc, RwLock};

use super::{now_ms, StoreError, TokenDigest, TokenRecord, TokenStore};

const SHARDS: usize = 16;

/// Keys are SHA-256 digests, already uniform: their first eight bytes are the hash. Only
/// tokens this gateway minted are ever inserted, so nobody can aim keys at one bucket.
#[derive(Default)]
struct DigestHasher(u64);

impl Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8).take(1) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.0 ^= u64::from_le_bytes(b);
        }
    }
}

type Shard = HashMap<TokenDigest, Arc<TokenRecord>, BuildHasherDefault<DigestHasher>>;

/// Tokens held in this process.
#[derive(Debug)]
pub struct MemoryStore {
    shards: Box<[RwLock<Shard>]>,
}

impl std::fmt::Debug for DigestHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DigestHasher")
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore {
            shards: (0..SHARDS).map(|_| RwLock::default()).collect(),
        }
    }
}

impl MemoryStore {
    fn shard(&self, digest: &TokenDigest) -> &RwLock<Shard> {
        // The last byte picks the shard; the first eight pick the bucket inside it.
        &self.shards[digest.0[31] as usize % SHARDS]
    }

    /// Drops every expired token; returns how many were dropped.
    pub fn sweep(&self, now: u64) -> usize {
        let mut dropped = 0;
        for shard in self.shards.iter() {
            let mut map = shard.write().unwrap_or_else(|p| p.into_inner());
            let before = map.len();
            map.retain(|_, r| r.expires_at_ms > now);
            dropped += before - map.len();
        }
        dropped
    }

    /// Number of tokens held (live or not yet swept).
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.read().unwrap_or_else(|p| p.into_inner()).len())
            .sum()
    }

    /// True when no token is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn put_now(&self, digest: TokenDigest, record: Arc<TokenRecord>) {
        self.shard(&digest)
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(digest, record);
    }

    fn get_now(&self, digest: &TokenDigest) -> Option<Arc<TokenRecord>> {
        let record = self
            .shard(digest)
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(digest)
            .cloned()?;
        (record.expires_at_ms > now_ms()).then_some(record)
    }
}

impl TokenStore for MemoryStore {
    async fn put(&self, digest: TokenDigest, record: Arc<TokenRecord>) -> Result<(), StoreError> {
        self.put_now(digest, record);
        Ok(())
    }

    async fn get(&self, digest: &TokenDigest) -> Result<Option<Arc<TokenRecord>>, StoreError> {
        Ok(self.get_now(digest))
    }

    fn ready(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scope::ScopeSet;
    use http::HeaderValue;

    fn record(expires_at_ms: u64) -> Arc<TokenRecord> {
        Arc::new(TokenRecord {
            client_id: "c".into(),
            scopes: Arc::from(vec![]),
            issued_at_ms: 0,
            expires_at_ms,
            generation: 0,
            scope_bits: ScopeSet::default(),
            scope_header: HeaderValue::from_static(""),
        })
    }

    #[test]
    fn expired_tokens_are_invisible_and_swept() {
        let s = MemoryStore::default();
        let now = now_ms();
        let live = TokenDigest::of("live");
        let dead = TokenDigest::of("dead");
        s.put_now(live, record(now + 60_000));
        s.put_now(dead, record(now - 1));
        assert!(s.get_now(&live).is_some());
        assert!(s.get_now(&dead).is_none());
        assert!(s.get_now(&TokenDigest::of("other")).is_none());
        assert_eq!(s.len(), 2);
        assert_eq!(s.sweep(now), 1);
        assert_eq!(s.len(), 1);
    }
}
