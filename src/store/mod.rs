//! Token stores. Only a SHA-256 digest of each token is ever kept, with what the token grants.
//! `Store` dispatches to the configured implementation without boxing a future per lookup.

mod memory;

use std::future::Future;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use http::HeaderValue;
use sha2::{Digest, Sha256};

pub use memory::MemoryStore;

use crate::scope::ScopeSet;

/// SHA-256 of the token text: the only form in which a token is stored.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenDigest(pub [u8; 32]);

impl TokenDigest {
    /// The digest of a presented token.
    pub fn of(token: &str) -> TokenDigest {
        TokenDigest(Sha256::digest(token.as_bytes()).into())
    }
}

impl std::fmt::Debug for TokenDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // A digest prefix is enough to correlate, and reveals nothing usable.
        write!(
            f,
            "TokenDigest({}..)",
            crate::secret::encode_hex(&self.0[..4])
        )
    }
}

/// What a token grants. Scope names are the durable part; the bitset and header are a cache
/// valid for the config snapshot `generation` they were computed in.
#[derive(Debug)]
pub struct TokenRecord {
    /// The client the token was issued to.
    pub client_id: Arc<str>,
    /// The scopes granted, by name.
    pub scopes: Arc<[Arc<str>]>,
    /// Issue time, Unix milliseconds.
    pub issued_at_ms: u64,
    /// Expiry, Unix milliseconds.
    pub expires_at_ms: u64,
    /// Snapshot the caches below belong to.
    pub generation: u64,
    /// The granted scopes as bits of that snapshot.
    pub scope_bits: ScopeSet,
    /// `X-Client-Scopes` value.
    pub scope_header: HeaderValue,
}

/// The store failed to answer (not: the token is unknown).
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The store cannot be reached or timed out.
    #[error("token store unavailable: {0}")]
    Unavailable(&'static str),
}

/// What every token store provides. Methods return futures so a networked store fits; the
/// memory store's are ready at once.
pub trait TokenStore: Send + Sync + 'static {
    /// Keeps `record` under `digest` until it expires.
    fn put(
        &self,
        digest: TokenDigest,
        record: Arc<TokenRecord>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The live record for `digest`, if any. Expired records are never returned.
    fn get(
        &self,
        digest: &TokenDigest,
    ) -> impl Future<Output = Result<Option<Arc<TokenRecord>>, StoreError>> + Send;

    /// `Ok` when the store can serve; otherwise why not (for `/readyz`).
    fn ready(&self) -> Result<(), StoreError>;
}

/// The configured store.
#[derive(Debug)]
pub enum Store {
    /// Embedded, per replica.
    Memory(MemoryStore),
}

impl TokenStore for Store {
    async fn put(&self, digest: TokenDigest, record: Arc<TokenRecord>) -> Result<(), StoreError> {
        match self {
            Store::Memory(m) => m.put(digest, record).await,
        }
    }

    async fn get(&self, digest: &TokenDigest) -> Result<Option<Arc<TokenRecord>>, StoreError> {
        match self {
            Store::Memory(m) => m.get(digest).await,
        }
    }

    fn ready(&self) -> Result<(), StoreError> {
        match self {
            Store::Memory(m) => m.ready(),
        }
    }
}

/// Now, in Unix milliseconds.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
