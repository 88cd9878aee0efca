//! The Redis token store, shared by every replica.
//!
//! Keys (after `key_prefix`): `t:<sha256 hex>` holds a token's grant with a TTL equal to its
//! remaining life; `c:<client id>` is a sorted set of that client's digests by expiry, for
//! `max_live_tokens` and `portcullis revoke --client`. Revocations are published on
//! `<prefix>revocations` so every replica evicts its in-process cache at once.
//!
//! The in-process cache is trusted only while this replica is subscribed to revocations and
//! Redis answers its health checks. Otherwise every lookup goes to Redis; if Redis does not
//! answer, a cached token is still accepted for `stale_for` after the outage began (default
//! 0: fail closed), and everything else is `StoreUnavailable` (503), never "invalid token".

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use futures_util::StreamExt;
use prometheus::IntCounter;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{
    Client, Cmd, FromRedisValue, IntoConnectionInfo, RedisError, ScriptInvocation, TlsCertificates,
};

use super::digest_map::DigestMap;
use super::{now_ms, StoreError, TokenDigest, TokenRecord, TokenStore};
use crate::config::{Config, RedisSettings};
use crate::metrics::Metrics;

/// How often the health check pings Redis.
const HEALTH_EVERY: Duration = Duration::from_millis(250);
/// Longest wait between reconnection attempts of the subscriber and the first connect.
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// How long "this token does not exist" is remembered. Digests of random tokens cannot come
/// into existence later, so this only bounds memory, never correctness.
const NEGATIVE_TTL_MS: u64 = 60_000;

#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl Conn {
    async fn query<T: FromRedisValue>(&self, cmd: &Cmd) -> Result<T, RedisError> {
        match self {
            Conn::Single(c) => cmd.query_async(&mut c.clone()).await,
            Conn::Cluster(c) => cmd.query_async(&mut c.clone()).await,
        }
    }

    async fn eval<T: FromRedisValue>(&self, inv: &ScriptInvocation<'_>) -> Result<T, RedisError> {
        match self {
            Conn::Single(c) => inv.invoke_async(&mut c.clone()).await,
            Conn::Cluster(c) => inv.invoke_async(&mut c.clone()).await,
        }
    }
}

/// Once Redis has been failing this long, requests stop waiting on it (the health check
/// keeps probing and lets them through again as soon as it answers).
const FAIL_FAST_AFTER_MS: u64 = 500;

#[derive(Clone)]
struct Cached {
    record: Arc<TokenRecord>,
}

/// See the module docs.
pub struct RedisStore {
    settings: Arc<RedisSettings>,
    conn: ArcSwapOption<Conn>,
    cache: DigestMap<Cached>,
    negative: DigestMap<u64>,
    /// Redis answered the last health check or command.
    healthy: AtomicBool,
    /// When Redis stopped answering (Unix ms), 0 while healthy.
    down_since_ms: AtomicU64,
    /// Subscribed to revocations.
    subscribed: AtomicBool,
    last_error: Mutex<Option<String>>,
    metrics: Arc<Metrics>,
    /// `token_cache` handles, resolved once: lookups are the hot path.
    cache_counters: CacheCounters,
    channel: String,
}

struct CacheCounters {
    hit: IntCounter,
    miss: IntCounter,
    negative_hit: IntCounter,
    stale: IntCounter,
}

impl CacheCounters {
    fn new(metrics: &Metrics) -> Self {
        let c = |r: &str| metrics.token_cache.with_label_values(&[r]);
        CacheCounters {
            hit: c("hit"),
            miss: c("miss"),
            negative_hit: c("negative_hit"),
            stale: c("stale"),
        }
    }
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("settings", &self.settings)
            .field("healthy", &self.healthy)
            .field("subscribed", &self.subscribed)
            .finish()
    }
}

fn connection_info(
    url: &str,
    settings: &RedisSettings,
) -> Result<redis::ConnectionInfo, RedisError> {
    let info = url.into_connection_info()?;
    Ok(match &settings.password {
        Some(p) => {
            let redis = info.redis_settings().clone().set_password(p);
            info.set_redis_settings(redis)
        }
        None => info,
    })
}

fn certs(settings: &RedisSettings) -> Option<TlsCertificates> {
    settings.ca.as_ref().map(|pem| TlsCertificates {
        client_tls: None,
        root_cert: Some(pem.clone()),
    })
}

fn client_for(url: &str, settings: &RedisSettings) -> Result<Client, RedisError> {
    let info = connection_info(url, settings)?;
    match certs(settings) {
        Some(c) => Client::build_with_tls(info, c),
        None => Client::open(info),
    }
}

async fn connect(settings: &RedisSettings) -> Result<Conn, RedisError> {
    if settings.cluster {
        let mut builder = ClusterClientBuilder::new(
            settings
                .urls
                .iter()
                .map(|u| connection_info(u, settings))
                .collect::<Result<Vec<_>, _>>()?,
        )
        .connection_timeout(settings.timeout)
        .response_timeout(settings.timeout)
        .retries(2);
        if let Some(c) = certs(settings) {
            builder = builder.certs(c);
        }
        let client = builder.build()?;
        Ok(Conn::Cluster(client.get_async_connection().await?))
    } else {
        let client = client_for(&settings.urls[0], settings)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(settings.timeout))
            .set_response_timeout(Some(settings.timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1));
        Ok(Conn::Single(
            ConnectionManager::new_with_config(client, config).await?,
        ))
    }
}

/// The stored value: `client\nscope scope\nissued_ms\nexpires_ms\nsecret_id`. Client ids
/// and scopes never contain a newline (config validation), so no escaping is needed.
fn encode(record: &TokenRecord) -> String {
    format!(
        "{}\n{}\n{}\n{}\n{:016x}",
        record.client_id,
        record.scope_text(),
        record.issued_at_ms,
        record.expires_at_ms,
        record.secret_id
    )
}

fn decode(value: &str, config: &Config) -> Option<TokenRecord> {
    let mut parts = value.split('\n');
    let client = parts.next()?;
    let scopes = parts.next()?;
    let issued: u64 = parts.next()?.parse().ok()?;
    let expires: u64 = parts.next()?.parse().ok()?;
    let secret_id = u64::from_str_radix(parts.next()?, 16).ok()?;
    let names: Arc<[Arc<str>]> = scopes
        .split(' ')
        .filter(|s| !s.is_empty())
        .map(Arc::from)
        .collect();
    Some(TokenRecord::new(
        client.into(),
        secret_id,
        names,
        issued,
        expires,
        config,
    ))
}

impl RedisStore {
    /// Creates the store and starts connecting in the background: the gateway serves (and
    /// says it is not ready) while Redis is down, and recovers on its own.
    pub fn start(settings: Arc<RedisSettings>, metrics: Arc<Metrics>) -> Arc<RedisStore> {
        let store = Arc::new(RedisStore {
            channel: format!("{}revocations", settings.key_prefix),
            cache: DigestMap::bounded(settings.cache_entries),
            negative: DigestMap::bounded(settings.cache_entries),
            settings,
            conn: ArcSwapOption::empty(),
            healthy: AtomicBool::new(false),
            down_since_ms: AtomicU64::new(now_ms()),
            subscribed: AtomicBool::new(false),
            last_error: Mutex::new(Some("redis: not connected yet".into())),
            cache_counters: CacheCounters::new(&metrics),
            metrics,
        });
        tokio::spawn(Self::connect_and_watch(Arc::downgrade(&store)));
        tokio::spawn(Self::subscribe_loop(Arc::downgrade(&store)));
        store
    }

    /// Connects once, for one-shot use (the `revoke` command). Fails if Redis does not answer.
    pub async fn connect_once(
        settings: Arc<RedisSettings>,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<RedisStore>, StoreError> {
        let conn = tokio::time::timeout(settings.timeout * 4, connect(&settings))
            .await
            .map_err(|_| StoreError::Timeout)?
            .map_err(|e| StoreError::Unavailable(e.to_string().into()))?;
        let store = Arc::new(RedisStore {
            channel: format!("{}revocations", settings.key_prefix),
            cache: DigestMap::bounded(1),
            negative: DigestMap::bounded(1),
            settings,
            conn: ArcSwapOption::from_pointee(conn),
            healthy: AtomicBool::new(true),
            down_since_ms: AtomicU64::new(0),
            subscribed: AtomicBool::new(false),
            last_error: Mutex::new(None),
            cache_counters: CacheCounters::new(&metrics),
            metrics,
        });
        Ok(store)
    }

    fn key_token(&self, digest: &TokenDigest) -> String {
        format!("{}t:{}", self.settings.key_prefix, digest.hex())
    }

    fn key_client(&self, client: &str) -> String {
        format!("{}c:{}", self.settings.key_prefix, client)
    }

    fn mark_healthy(&self) {
        if !self.healthy.swap(true, Ordering::AcqRel) {
            self.down_since_ms.store(0, Ordering::Release);
            *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = None;
            tracing::info!("redis store reachable");
        }
    }

    fn mark_unhealthy(&self, why: &str) {
        if self.healthy.swap(false, Ordering::AcqRel) {
            self.down_since_ms.store(now_ms(), Ordering::Release);
            tracing::warn!(error = why, "redis store unreachable");
        }
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(why.to_string());
    }

    /// Runs one command with the configured timeout, recording latency and errors.
    async fn run<T: FromRedisValue>(&self, op: &'static str, cmd: &Cmd) -> Result<T, StoreError> {
        // Boxed: a Redis command's future is kilobytes, and it would otherwise sit inline in
        // every request's future (moved on each poll setup), Redis or not.
        Box::pin(self.call(op, false, |conn| async move { conn.query::<T>(cmd).await })).await
    }

    /// Runs a Lua script, bounded like every other call.
    pub async fn eval<T: FromRedisValue>(
        &self,
        inv: &ScriptInvocation<'_>,
    ) -> Result<T, StoreError> {
        Box::pin(self.call(
            "eval",
            false,
            |conn| async move { conn.eval::<T>(inv).await },
        ))
        .await
    }

    /// The key prefix.
    pub fn key_prefix(&self) -> &str {
        &self.settings.key_prefix
    }

    /// Whether Redis has been failing long enough that requests should not wait on it.
    fn failing_fast(&self) -> bool {
        let since = self.down_since_ms.load(Ordering::Acquire);
        !self.healthy.load(Ordering::Acquire)
            && since != 0
            && now_ms().saturating_sub(since) > FAIL_FAST_AFTER_MS
    }

    async fn call<T, F, Fut>(&self, op: &'static str, probe: bool, f: F) -> Result<T, StoreError>
    where
        F: FnOnce(Arc<Conn>) -> Fut,
        Fut: std::future::Future<Output = Result<T, RedisError>>,
    {
        let Some(conn) = self.conn.load_full() else {
            self.metrics
                .store_errors
                .with_label_values(&["connection"])
                .inc();
            return Err(StoreError::Unavailable("not connected to redis".into()));
        };
        if !probe && self.failing_fast() {
            self.metrics
                .store_errors
                .with_label_values(&["connection"])
                .inc();
            return Err(StoreError::Unavailable("redis is down".into()));
        }
        let start = Instant::now();
        let out = tokio::time::timeout(self.settings.timeout, f(conn)).await;
        self.metrics
            .store_duration
            .with_label_values(&[op])
            .observe(start.elapsed().as_secs_f64());
        let err = match out {
            Ok(Ok(v)) => {
                self.mark_healthy();
                return Ok(v);
            }
            Err(_) => StoreError::Timeout,
            Ok(Err(e)) if e.is_timeout() => StoreError::Timeout,
            Ok(Err(e)) => StoreError::Unavailable(e.to_string().into()),
        };
        self.metrics
            .store_errors
            .with_label_values(&[err.kind()])
            .inc();
        self.mark_unhealthy(&format!("redis: {}", err.detail()));
        Err(err)
    }

    /// Whether a cache hit may be answered without asking Redis.
    fn cache_trusted(&self) -> bool {
        self.subscribed.load(Ordering::Acquire) && self.healthy.load(Ordering::Acquire)
    }

    async fn connect_and_watch(weak: std::sync::Weak<RedisStore>) {
        let mut backoff = Duration::from_millis(100);
        loop {
            let Some(store) = weak.upgrade() else { return };
            if store.conn.load().is_none() {
                match tokio::time::timeout(store.settings.timeout * 4, connect(&store.settings))
                    .await
                {
                    Ok(Ok(conn)) => {
                        store.conn.store(Some(Arc::new(conn)));
                        backoff = Duration::from_millis(100);
                    }
                    Ok(Err(e)) => store.mark_unhealthy(&format!("redis: {e}")),
                    Err(_) => store.mark_unhealthy("redis: connect timed out"),
                }
            }
            if store.conn.load().is_some() {
                // The connection objects reconnect by themselves; the ping keeps the health
                // flag true to what Redis does right now.
                let ping = redis::cmd("PING");
                let _ = store
                    .call("ping", true, |conn| async move {
                        conn.query::<String>(&ping).await
                    })
                    .await;
                drop(store);
                tokio::time::sleep(HEALTH_EVERY).await;
            } else {
                drop(store);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }

    async fn subscribe_loop(weak: std::sync::Weak<RedisStore>) {
        let mut backoff = Duration::from_millis(100);
        let mut node = 0usize;
        loop {
            let Some(store) = weak.upgrade() else { return };
            let url = store.settings.urls[node % store.settings.urls.len()].clone();
            node += 1;
            let subscribed = async {
                let client = client_for(&url, &store.settings)?;
                let mut pubsub = client.get_async_pubsub().await?;
                pubsub.subscribe(&store.channel).await?;
                Ok::<_, RedisError>(pubsub)
            };
            match tokio::time::timeout(store.settings.timeout * 4, subscribed).await {
                Ok(Ok(pubsub)) => {
                    // Revocations sent while unsubscribed were missed: forget everything.
                    store.cache.clear();
                    store.subscribed.store(true, Ordering::Release);
                    tracing::info!("subscribed to token revocations");
                    backoff = Duration::from_millis(100);
                    let mut messages = pubsub.into_on_message();
                    let weak2 = Arc::downgrade(&store);
                    drop(store);
                    while let Some(msg) = messages.next().await {
                        let Some(store) = weak2.upgrade() else { return };
                        if let Ok(payload) = msg.get_payload::<String>() {
                            store.apply_revocation(&payload);
                        }
                    }
                    let Some(store) = weak.upgrade() else { return };
                    store.subscribed.store(false, Ordering::Release);
                    tracing::warn!(
                        "revocation subscription lost; re-checking tokens against redis"
                    );
                }
                Ok(Err(e)) => {
                    store.subscribed.store(false, Ordering::Release);
                    tracing::debug!(error = %e, "cannot subscribe to revocations");
                }
                Err(_) => store.subscribed.store(false, Ordering::Release),
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// `t:<hex>:<sent ms>` evicts one token, `c:<client>:<sent ms>` all of a client's.
    fn apply_revocation(&self, payload: &str) {
        let Some((what, sent)) = payload.rsplit_once(':') else {
            return;
        };
        if let Some(hex) = what.strip_prefix("t:") {
            if let Some(d) = TokenDigest::from_hex(hex) {
                self.cache.remove(&d);
            }
        } else if let Some(client) = what.strip_prefix("c:") {
            self.cache.retain(|c| &*c.record.client_id != client);
        }
        if let Ok(sent) = sent.parse::<u64>() {
            let lag = now_ms().saturating_sub(sent) as f64 / 1000.0;
            self.metrics.revocation_lag.observe(lag);
        }
    }

    async fn publish(&self, what: String) -> Result<(), StoreError> {
        let msg = format!("{what}:{}", now_ms());
        self.run::<i64>("publish", redis::cmd("PUBLISH").arg(&self.channel).arg(msg))
            .await
            .map(|_| ())
    }

    /// Live tokens of `client`, from its index.
    pub async fn live_count(&self, client: &str) -> Result<u64, StoreError> {
        self.run(
            "count",
            redis::cmd("ZCOUNT")
                .arg(self.key_client(client))
                .arg(now_ms())
                .arg("+inf"),
        )
        .await
    }

    /// Deletes tokens and their index entries; the caller publishes the revocation.
    async fn delete_tokens(&self, client: &str, hexes: &[String]) -> Result<(), StoreError> {
        for hex in hexes {
            let key = format!("{}t:{hex}", self.settings.key_prefix);
            self.run::<i64>("revoke", redis::cmd("DEL").arg(&key))
                .await?;
            if let Some(d) = TokenDigest::from_hex(hex) {
                self.cache.remove(&d);
            }
        }
        if !hexes.is_empty() {
            self.run::<i64>(
                "revoke",
                redis::cmd("ZREM").arg(self.key_client(client)).arg(hexes),
            )
            .await?;
            self.metrics.revocations.inc_by(hexes.len() as u64);
        }
        Ok(())
    }
}

impl TokenStore for RedisStore {
    async fn put(
        &self,
        digest: TokenDigest,
        record: Arc<TokenRecord>,
        max_live: Option<u32>,
    ) -> Result<(), StoreError> {
        let now = now_ms();
        let ttl = record.expires_at_ms.saturating_sub(now).max(1);
        let hex = digest.hex();
        let client_key = self.key_client(&record.client_id);
        self.run::<()>(
            "put",
            redis::cmd("SET")
                .arg(self.key_token(&digest))
                .arg(encode(&record))
                .arg("PX")
                .arg(ttl),
        )
        .await?;
        // The client index: separate commands, since in a cluster the keys live on different
        // slots. A crash between them leaves at worst an index entry whose token expires.
        self.run::<i64>(
            "put",
            redis::cmd("ZADD")
                .arg(&client_key)
                .arg(record.expires_at_ms)
                .arg(&hex),
        )
        .await?;
        self.run::<i64>(
            "put",
            redis::cmd("ZREMRANGEBYSCORE")
                .arg(&client_key)
                .arg("-inf")
                .arg(now),
        )
        .await?;
        self.run::<i64>("put", redis::cmd("PEXPIRE").arg(&client_key).arg(ttl))
            .await?;
        self.cache.insert(
            digest,
            Cached {
                record: record.clone(),
            },
            |c| c.record.expires_at_ms <= now,
        );
        if let Some(max) = max_live {
            let live: usize = self
                .run("put", redis::cmd("ZCARD").arg(&client_key))
                .await?;
            if live > max as usize {
                let oldest: Vec<String> = self
                    .run(
                        "put",
                        redis::cmd("ZRANGE")
                            .arg(&client_key)
                            .arg(0)
                            .arg(live - max as usize - 1),
                    )
                    .await?;
                self.delete_tokens(&record.client_id, &oldest).await?;
                for hex in oldest {
                    self.publish(format!("t:{hex}")).await?;
                }
            }
        }
        Ok(())
    }

    async fn get(
        &self,
        digest: &TokenDigest,
        config: &Config,
    ) -> Result<Option<Arc<TokenRecord>>, StoreError> {
        let now = now_ms();
        let cached = self
            .cache
            .get(digest)
            .filter(|c| c.record.expires_at_ms > now);
        if self.cache_trusted() {
            if let Some(c) = cached {
                self.cache_counters.hit.inc();
                return Ok(Some(c.record));
            }
        }
        if self.negative.get(digest).is_some_and(|until| until > now) {
            self.cache_counters.negative_hit.inc();
            return Ok(None);
        }
        self.cache_counters.miss.inc();
        match self
            .run::<Option<String>>("get", redis::cmd("GET").arg(self.key_token(digest)))
            .await
        {
            Ok(Some(value)) => {
                let Some(record) = decode(&value, config) else {
                    self.metrics
                        .store_errors
                        .with_label_values(&["corrupt"])
                        .inc();
                    tracing::error!(digest = ?digest, "a stored grant is malformed; refusing the token");
                    return Err(StoreError::Corrupt);
                };
                let record = Arc::new(record);
                self.cache.insert(
                    *digest,
                    Cached {
                        record: record.clone(),
                    },
                    |c| c.record.expires_at_ms <= now,
                );
                Ok((record.expires_at_ms > now).then_some(record))
            }
            Ok(None) => {
                self.cache.remove(digest);
                self.negative
                    .insert(*digest, now + NEGATIVE_TTL_MS, |until| *until <= now);
                Ok(None)
            }
            Err(e) => {
                let down_since = self.down_since_ms.load(Ordering::Acquire);
                let stale_ok = !self.settings.stale_for.is_zero()
                    && down_since != 0
                    && now.saturating_sub(down_since) <= self.settings.stale_for.as_millis() as u64;
                match cached {
                    Some(c) if stale_ok => {
                        self.cache_counters.stale.inc();
                        Ok(Some(c.record))
                    }
                    _ => Err(e),
                }
            }
        }
    }

    async fn revoke(&self, digest: &TokenDigest) -> Result<(), StoreError> {
        let value: Option<String> = self
            .run("revoke", redis::cmd("GET").arg(self.key_token(digest)))
            .await?;
        self.cache.remove(digest);
        let Some(value) = value else { return Ok(()) };
        let client = value.split('\n').next().unwrap_or("");
        let hex = digest.hex();
        self.delete_tokens(client, std::slice::from_ref(&hex))
            .await?;
        self.publish(format!("t:{hex}")).await
    }

    async fn revoke_client(&self, client: &str) -> Result<usize, StoreError> {
        let key = self.key_client(client);
        let all: Vec<String> = self
            .run("revoke", redis::cmd("ZRANGE").arg(&key).arg(0).arg(-1))
            .await?;
        let live: Vec<String> = self
            .run(
                "revoke",
                redis::cmd("ZRANGEBYSCORE")
                    .arg(&key)
                    .arg(now_ms())
                    .arg("+inf"),
            )
            .await?;
        self.delete_tokens(client, &all).await?;
        self.run::<i64>("revoke", redis::cmd("DEL").arg(&key))
            .await?;
        self.publish(format!("c:{client}")).await?;
        Ok(live.len())
    }

    async fn get_reusable(&self, key: &str) -> Result<Option<String>, StoreError> {
        let key = format!("{}r:{key}", self.settings.key_prefix);
        self.run("get", redis::cmd("GET").arg(key)).await
    }

    async fn put_reusable(&self, key: &str, sealed: String, ttl_ms: u64) -> Result<(), StoreError> {
        let key = format!("{}r:{key}", self.settings.key_prefix);
        self.run(
            "put",
            redis::cmd("SET")
                .arg(key)
                .arg(sealed)
                .arg("PX")
                .arg(ttl_ms.max(1)),
        )
        .await
    }

    fn ready(&self) -> Result<(), StoreError> {
        if self.conn.load().is_some() && self.healthy.load(Ordering::Acquire) {
            return Ok(());
        }
        let why = self
            .last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .unwrap_or_else(|| "redis: not connected".into());
        Err(StoreError::Unavailable(why.into()))
    }
}
