//! The embedded token store: a sharded digest map, swept of expired tokens in the background
//! so it never grows past the live set, and a per-client index (in issue order) for
//! `max_live_tokens` and revoking a client's tokens.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use super::digest_map::DigestMap;
use super::{now_ms, StoreError, TokenDigest, TokenRecord, TokenStore};
use crate::config::Config;

/// A client's tokens, oldest first: (digest, expiry ms).
type ClientIndex = HashMap<Arc<str>, VecDeque<(TokenDigest, u64)>>;

/// Tokens held in this process.
pub struct MemoryStore {
    tokens: DigestMap<Arc<TokenRecord>>,
    /// Client id -> its tokens (digest, expiry), oldest first. May hold digests already
    /// revoked; the limit check skips those, the sweep drops them once expired.
    by_client: Mutex<ClientIndex>,
    /// `tokens.reuse`: key -> (sealed token, expiry ms).
    reusable: Mutex<HashMap<String, (String, u64)>>,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("tokens", &self.tokens.len())
            .finish()
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore {
            tokens: DigestMap::unbounded(),
            by_client: Mutex::default(),
            reusable: Mutex::default(),
        }
    }
}

impl MemoryStore {
    /// Drops every expired token; returns how many were dropped. Takes one shard's lock at a
    /// time, and the index by expiry alone, so a store of millions never stalls lookups for
    /// long; callers run it off the async workers.
    pub fn sweep(&self, now: u64) -> usize {
        let dropped = self.tokens.retain(|r| r.expires_at_ms > now);
        let mut index = self.by_client.lock().unwrap_or_else(|p| p.into_inner());
        index.retain(|_, digests| {
            digests.retain(|(_, expires)| *expires > now);
            !digests.is_empty()
        });
        drop(index);
        self.reusable
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, (_, until)| *until > now);
        dropped
    }

    /// Tokens per client not yet expired (revoked ones may be counted until they would
    /// have expired).
    pub fn live_by_client(&self) -> Vec<(Arc<str>, usize)> {
        self.by_client
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(c, d)| (c.clone(), d.len()))
            .collect()
    }

    /// Number of tokens held (live or not yet swept).
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// True when no token is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn put_now(&self, digest: TokenDigest, record: Arc<TokenRecord>, max_live: Option<u32>) {
        let client = record.client_id.clone();
        let expires = record.expires_at_ms;
        self.tokens.insert(digest, record, |_| false);
        let mut index = self.by_client.lock().unwrap_or_else(|p| p.into_inner());
        let digests = index.entry(client).or_default();
        digests.push_back((digest, expires));
        if let Some(max) = max_live {
            let now = now_ms();
            // Drop the dead, then revoke the oldest live ones past the limit.
            digests.retain(|(d, e)| *e > now && self.tokens.get(d).is_some());
            while digests.len() > max as usize {
                if let Some((old, _)) = digests.pop_front() {
                    self.tokens.remove(&old);
                }
            }
        }
    }

    fn get_now(&self, digest: &TokenDigest) -> Option<Arc<TokenRecord>> {
        let record = self.tokens.get(digest)?;
        (record.expires_at_ms > now_ms()).then_some(record)
    }
}

impl TokenStore for MemoryStore {
    async fn put(
        &self,
        digest: TokenDigest,
        record: Arc<TokenRecord>,
        max_live: Option<u32>,
    ) -> Result<(), StoreError> {
        self.put_now(digest, record, max_live);
        Ok(())
    }

    async fn get(
        &self,
        digest: &TokenDigest,
        _config: &Config,
    ) -> Result<Option<Arc<TokenRecord>>, StoreError> {
        Ok(self.get_now(digest))
    }

    async fn revoke(&self, digest: &TokenDigest) -> Result<(), StoreError> {
        self.tokens.remove(digest);
        Ok(())
    }

    async fn revoke_client(&self, client: &str) -> Result<usize, StoreError> {
        let digests = self
            .by_client
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(client)
            .unwrap_or_default();
        let now = now_ms();
        Ok(digests
            .iter()
            .filter_map(|(d, _)| self.tokens.remove(d))
            .filter(|r| r.expires_at_ms > now)
            .count())
    }

    async fn get_reusable(&self, key: &str) -> Result<Option<String>, StoreError> {
        let now = now_ms();
        Ok(self
            .reusable
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .filter(|(_, until)| *until > now)
            .map(|(sealed, _)| sealed.clone()))
    }

    async fn put_reusable(&self, key: &str, sealed: String, ttl_ms: u64) -> Result<(), StoreError> {
        self.reusable
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.to_string(), (sealed, now_ms() + ttl_ms));
        Ok(())
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

    fn record(client: &str, expires_at_ms: u64) -> Arc<TokenRecord> {
        Arc::new(TokenRecord {
            client_id: client.into(),
            secret_id: 0,
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
        s.put_now(live, record("c", now + 60_000), None);
        s.put_now(dead, record("c", now - 1), None);
        assert!(s.get_now(&live).is_some());
        assert!(s.get_now(&dead).is_none());
        assert!(s.get_now(&TokenDigest::of("other")).is_none());
        assert_eq!(s.len(), 2);
        assert_eq!(s.sweep(now), 1);
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn max_live_revokes_the_oldest() {
        let s = MemoryStore::default();
        let later = now_ms() + 60_000;
        let d: Vec<TokenDigest> = (0..5).map(|i| TokenDigest::of(&i.to_string())).collect();
        for digest in &d {
            s.put_now(*digest, record("c", later), Some(3));
        }
        s.put_now(TokenDigest::of("other"), record("o", later), Some(1));
        assert!(s.get_now(&d[0]).is_none());
        assert!(s.get_now(&d[1]).is_none());
        assert!(s.get_now(&d[2]).is_some());
        assert!(s.get_now(&d[4]).is_some());
        assert!(s.get_now(&TokenDigest::of("other")).is_some());
    }

    #[tokio::test]
    async fn revoke_client_removes_only_that_client() {
        let s = MemoryStore::default();
        let later = now_ms() + 60_000;
        s.put_now(TokenDigest::of("a1"), record("a", later), None);
        s.put_now(TokenDigest::of("a2"), record("a", later), None);
        s.put_now(TokenDigest::of("b1"), record("b", later), None);
        assert_eq!(s.revoke_client("a").await.unwrap(), 2);
        assert!(s.get_now(&TokenDigest::of("a1")).is_none());
        assert!(s.get_now(&TokenDigest::of("b1")).is_some());
        assert_eq!(s.revoke_client("a").await.unwrap(), 0);
    }
}
