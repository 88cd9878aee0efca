//! Token stores. Only a SHA-256 digest of each token is ever kept, with what the token grants.
//! `Store` dispatches to the configured implementation without boxing a future per lookup.

mod digest_map;
mod memory;
pub mod redis;

use std::future::Future;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use http::HeaderValue;
use sha2::{Digest, Sha256};

pub use memory::MemoryStore;
pub use redis::RedisStore;

use crate::config::Config;
use crate::scope::ScopeSet;

/// SHA-256 of the token text: the only form in which a token is stored.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenDigest(pub [u8; 32]);

impl TokenDigest {
    /// The digest of a presented token.
    pub fn of(token: &str) -> TokenDigest {
        TokenDigest(Sha256::digest(token.as_bytes()).into())
    }

    /// Lowercase hex, as used in store keys.
    pub fn hex(&self) -> String {
        crate::secret::encode_hex(&self.0)
    }

    /// Parses [`TokenDigest::hex`] output.
    pub fn from_hex(hex: &str) -> Option<TokenDigest> {
        crate::secret::decode_hex32(hex).map(TokenDigest)
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
    /// Which of the client's secrets obtained it ([`crate::config::Client::secret_id`]): a
    /// token lives only as long as that secret stays in the config.
    pub secret_id: u64,
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

impl TokenRecord {
    /// A record with its bitset and header computed against `config`.
    pub fn new(
        client_id: Arc<str>,
        secret_id: u64,
        scopes: Arc<[Arc<str>]>,
        issued_at_ms: u64,
        expires_at_ms: u64,
        config: &Config,
    ) -> TokenRecord {
        let scope_bits = config.scopes.set_of(scopes.iter().map(|s| &**s));
        let scope_header = config.scopes.header(&scope_bits);
        TokenRecord {
            client_id,
            secret_id,
            scopes,
            issued_at_ms,
            expires_at_ms,
            generation: config.generation,
            scope_bits,
            scope_header,
        }
    }

    /// The granted scopes, space-separated.
    pub fn scope_text(&self) -> String {
        self.scopes.join(" ")
    }
}

/// The store could not answer (not: the token is unknown).
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// No answer within the configured timeout.
    #[error("the token store did not answer in time")]
    Timeout,
    /// Not connected, or the connection failed.
    #[error("the token store is unavailable: {0}")]
    Unavailable(Arc<str>),
    /// Stored data could not be read.
    #[error("stored data is malformed")]
    Corrupt,
}

impl StoreError {
    /// What went wrong, without the generic prefix (for `/readyz`).
    pub fn detail(&self) -> String {
        match self {
            StoreError::Timeout => "timed out".into(),
            StoreError::Unavailable(why) => why.to_string(),
            StoreError::Corrupt => "malformed data".into(),
        }
    }

    /// The `kind` label of `portcullis_store_errors_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            StoreError::Timeout => "timeout",
            StoreError::Unavailable(_) => "connection",
            StoreError::Corrupt => "corrupt",
        }
    }
}

/// What every token store provides. Methods return futures so a networked store fits; the
/// memory store's are ready at once.
pub trait TokenStore: Send + Sync + 'static {
    /// Keeps `record` under `digest` until it expires. With `max_live`, the client's oldest
    /// tokens beyond that many are revoked.
    fn put(
        &self,
        digest: TokenDigest,
        record: Arc<TokenRecord>,
        max_live: Option<u32>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The live record for `digest`, if any. Expired records are never returned. `config`
    /// is the snapshot in which a freshly read record's scope bits are computed.
    fn get(
        &self,
        digest: &TokenDigest,
        config: &Config,
    ) -> impl Future<Output = Result<Option<Arc<TokenRecord>>, StoreError>> + Send;

    /// Revokes one token, everywhere. Unknown tokens are fine.
    fn revoke(&self, digest: &TokenDigest) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Revokes every live token of a client; returns how many.
    fn revoke_client(&self, client: &str)
        -> impl Future<Output = Result<usize, StoreError>> + Send;

    /// A sealed token kept for `tokens.reuse` under `key` (see `token::reuse`).
    fn get_reusable(
        &self,
        key: &str,
    ) -> impl Future<Output = Result<Option<String>, StoreError>> + Send;

    /// Keeps a sealed token under `key` for `ttl_ms`.
    fn put_reusable(
        &self,
        key: &str,
        sealed: String,
        ttl_ms: u64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// `Ok` when the store can serve; otherwise why not (for `/readyz`).
    fn ready(&self) -> Result<(), StoreError>;
}

/// The configured store.
#[derive(Debug)]
pub enum Store {
    /// Embedded, per replica.
    Memory(MemoryStore),
    /// Redis, shared by replicas.
    Redis(Arc<RedisStore>),
}

impl TokenStore for Store {
    async fn put(
        &self,
        digest: TokenDigest,
        record: Arc<TokenRecord>,
        max_live: Option<u32>,
    ) -> Result<(), StoreError> {
        match self {
            Store::Memory(m) => m.put(digest, record, max_live).await,
            Store::Redis(r) => r.put(digest, record, max_live).await,
        }
    }

    async fn get(
        &self,
        digest: &TokenDigest,
        config: &Config,
    ) -> Result<Option<Arc<TokenRecord>>, StoreError> {
        match self {
            Store::Memory(m) => m.get(digest, config).await,
            Store::Redis(r) => r.get(digest, config).await,
        }
    }

    async fn revoke(&self, digest: &TokenDigest) -> Result<(), StoreError> {
        match self {
            Store::Memory(m) => m.revoke(digest).await,
            Store::Redis(r) => r.revoke(digest).await,
        }
    }

    async fn revoke_client(&self, client: &str) -> Result<usize, StoreError> {
        match self {
            Store::Memory(m) => m.revoke_client(client).await,
            Store::Redis(r) => r.revoke_client(client).await,
        }
    }

    async fn get_reusable(&self, key: &str) -> Result<Option<String>, StoreError> {
        match self {
            Store::Memory(m) => m.get_reusable(key).await,
            Store::Redis(r) => r.get_reusable(key).await,
        }
    }

    async fn put_reusable(&self, key: &str, sealed: String, ttl_ms: u64) -> Result<(), StoreError> {
        match self {
            Store::Memory(m) => m.put_reusable(key, sealed, ttl_ms).await,
            Store::Redis(r) => r.put_reusable(key, sealed, ttl_ms).await,
        }
    }

    fn ready(&self) -> Result<(), StoreError> {
        match self {
            Store::Memory(m) => m.ready(),
            Store::Redis(r) => r.ready(),
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
