//! The serde mirror of gateway.yaml. Private to `config`: nothing outside sees loose strings.
//!
//! Unknown keys are errors, but not through `deny_unknown_fields`, which stops at the first:
//! `config::from_str` deserializes through `serde_ignored` and reports every unknown key with
//! its line, together with every other problem.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::Deserialize;

#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields, title = "portcullis gateway.yaml")]
pub(super) struct RawConfig {
    #[serde(default = "default_listen")]
    pub listen: String,
    #[serde(default = "default_admin_listen")]
    pub admin_listen: String,
    #[serde(default)]
    pub store: RawStore,
    #[serde(default)]
    pub tokens: RawTokens,
    #[serde(default)]
    pub clients: Vec<RawClient>,
    #[serde(default)]
    pub routes: Vec<RawRoute>,
    #[serde(default)]
    pub server: RawServer,
    /// TLS on the public listener.
    #[serde(default)]
    pub tls: Option<RawTls>,
    #[serde(default)]
    pub log: RawLog,
    /// How long requests in flight may take to finish after SIGTERM/SIGINT.
    #[serde(default = "default_shutdown_grace")]
    pub shutdown_grace: String,
    /// OpenTelemetry trace export (needs a build with `--features otel`).
    #[serde(default)]
    pub otel: RawOtel,
}

/// `otel:`. Parsed by every build, so the schema and the error messages do not depend on
/// the build; only a build with the `otel` feature can act on `endpoint`.
#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub(super) struct RawOtel {
    /// Base URL of an OTLP/HTTP collector (`http://collector:4318`); spans are sent to
    /// `<endpoint>/v1/traces` as JSON. Absent: no export.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// `service.name` of the exported spans.
    #[serde(default = "default_service_name")]
    pub service_name: String,
    /// Share of new traces recorded, 0 to 1; a request that carries a `traceparent` follows
    /// its sampled flag instead.
    #[serde(default = "default_sample")]
    pub sample_ratio: f64,
    /// Bound on one export to the collector (retries included).
    #[serde(default = "default_otel_timeout")]
    pub timeout: String,
}

impl Default for RawOtel {
    fn default() -> Self {
        RawOtel {
            endpoint: None,
            service_name: default_service_name(),
            sample_ratio: default_sample(),
            timeout: default_otel_timeout(),
        }
    }
}

fn default_service_name() -> String {
    "portcullis".into()
}

fn default_otel_timeout() -> String {
    "10s".into()
}

fn default_shutdown_grace() -> String {
    "30s".into()
}

#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub(super) struct RawLog {
    /// `json` (default) or `text`.
    #[serde(default = "default_log_format")]
    pub format: String,
    /// Default level filter (`RUST_LOG` overrides it).
    #[serde(default = "default_log_level")]
    pub level: String,
    /// One line per request.
    #[serde(default = "default_true")]
    pub access: bool,
    /// Share of successful requests logged (refusals and errors always are).
    #[serde(default = "default_sample")]
    pub sample_success: f64,
}

impl Default for RawLog {
    fn default() -> Self {
        RawLog {
            format: default_log_format(),
            level: default_log_level(),
            access: true,
            sample_success: 1.0,
        }
    }
}

fn default_log_format() -> String {
    "json".into()
}

fn default_log_level() -> String {
    "info".into()
}

fn default_true() -> bool {
    true
}

fn default_sample() -> f64 {
    1.0
}

#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub(super) struct RawTls {
    pub cert: String,
    pub key: String,
    /// Require and verify client certificates issued by this CA.
    #[serde(default)]
    pub client_ca: Option<String>,
}

/// Limits of the public listener.
#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub(super) struct RawServer {
    /// Time to receive a complete request head; also how long an idle keep-alive connection
    /// is kept (slowloris guard).
    #[serde(default = "default_header_read_timeout")]
    pub header_read_timeout: String,
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: usize,
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
}

impl Default for RawServer {
    fn default() -> Self {
        RawServer {
            header_read_timeout: default_header_read_timeout(),
            max_header_bytes: default_max_header_bytes(),
            max_connections: default_max_connections(),
        }
    }
}

fn default_header_read_timeout() -> String {
    "30s".into()
}

fn default_max_header_bytes() -> usize {
    64 * 1024
}

fn default_max_connections() -> usize {
    10_000
}

fn default_listen() -> String {
    "127.0.0.1:8080".into()
}

fn default_admin_listen() -> String {
    "127.0.0.1:9090".into()
}

/// `store: memory` (the embedded default) or `store: {redis: {...}}`.
#[derive(Debug, Default)]
pub(super) enum RawStore {
    #[default]
    Memory,
    Redis(RawRedis),
}

/// `memory`, or a one-key map `{redis: {...}}`, as the deserializer below reads it.
impl JsonSchema for RawStore {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Store".into()
    }

    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let redis = generator.subschema_for::<RawRedis>();
        schemars::json_schema!({
            "description": "Token store: `memory` (embedded, per replica) or `{redis: {...}}` (shared by replicas).",
            "oneOf": [
                { "const": "memory" },
                {
                    "type": "object",
                    "properties": { "redis": redis },
                    "required": ["redis"],
                    "additionalProperties": false
                }
            ]
        })
    }
}

/// By hand, because serde_norway reads externally tagged enums as YAML tags (`!redis`), not
/// as the one-key map ops write; the inner map still goes through serde (and serde_ignored).
impl<'de> Deserialize<'de> for RawStore {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::{self, MapAccess, Visitor};
        const KINDS: &[&str] = &["memory", "redis"];
        struct Kind;
        impl<'de> Visitor<'de> for Kind {
            type Value = RawStore;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("`memory` or `{redis: {url: ...}}`")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawStore, E> {
                match v {
                    "memory" => Ok(RawStore::Memory),
                    other => Err(E::unknown_variant(other, KINDS)),
                }
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawStore, A::Error> {
                let kind: String = map
                    .next_key()?
                    .ok_or_else(|| de::Error::invalid_length(0, &self))?;
                let store = match kind.as_str() {
                    "redis" => RawStore::Redis(map.next_value()?),
                    "memory" => {
                        map.next_value::<de::IgnoredAny>()?;
                        RawStore::Memory
                    }
                    other => return Err(de::Error::unknown_variant(other, KINDS)),
                };
                if map.next_key::<String>()?.is_some() {
                    return Err(de::Error::custom("store takes exactly one kind"));
                }
                Ok(store)
            }
        }
        d.deserialize_any(Kind)
    }
}

#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub(super) struct RawRedis {
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub cluster: Option<Vec<String>>,
    /// PEM file of a private CA, for rediss://.
    #[serde(default)]
    pub ca: Option<String>,
    /// Name of an environment variable holding the password.
    #[serde(default)]
    pub password_env: Option<String>,
    #[serde(default = "default_key_prefix")]
    pub key_prefix: String,
    #[serde(default = "default_stale_for")]
    pub stale_for: String,
    #[serde(default = "default_redis_timeout")]
    pub timeout: String,
    #[serde(default = "default_cache_entries")]
    pub cache_entries: usize,
}

fn default_key_prefix() -> String {
    "portcullis:".into()
}

fn default_stale_for() -> String {
    "0s".into()
}

fn default_redis_timeout() -> String {
    "500ms".into()
}

fn default_cache_entries() -> usize {
    100_000
}

#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub(super) struct RawTokens {
    #[serde(default = "default_ttl")]
    pub ttl: String,
    #[serde(default = "default_token_path")]
    pub token_path: String,
    /// The RFC 8414 issuer; derived from the request's Host when absent.
    #[serde(default)]
    pub issuer: Option<String>,
    #[serde(default = "default_revoke_path")]
    pub revoke_path: String,
    #[serde(default = "default_introspect_path")]
    pub introspect_path: String,
    /// Hand back a client's live token for the same scopes instead of minting another.
    #[serde(default)]
    pub reuse: bool,
}

fn default_revoke_path() -> String {
    "/oauth/revoke".into()
}

fn default_introspect_path() -> String {
    "/oauth/introspect".into()
}

impl Default for RawTokens {
    fn default() -> Self {
        RawTokens {
            ttl: default_ttl(),
            token_path: default_token_path(),
            issuer: None,
            revoke_path: default_revoke_path(),
            introspect_path: default_introspect_path(),
            reuse: false,
        }
    }
}

fn default_ttl() -> String {
    "1h".into()
}

fn default_token_path() -> String {
    "/oauth/token".into()
}

#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub(super) struct RawClient {
    pub id: String,
    /// The client's secret, hashed (or use `secrets` to hold several during a rotation).
    #[serde(default)]
    pub secret_hash: Option<String>,
    /// Several secrets at once, each optionally expiring: roll a new one out, then drop the
    /// old one.
    #[serde(default)]
    pub secrets: Vec<RawSecret>,
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Oldest tokens are revoked past this many live ones.
    #[serde(default)]
    pub max_live_tokens: Option<u32>,
    /// Requests this client may make through the gateway.
    #[serde(default)]
    pub rate_limit: Option<RawRate>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub(super) struct RawRate {
    /// Sustained requests per second (may be fractional: 0.5 = one every 2 s).
    pub per_second: f64,
    /// Requests allowed at once above the sustained rate (default: per_second, at least 1).
    #[serde(default)]
    pub burst: Option<u32>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub(super) struct RawSecret {
    /// `sha256:<64 hex>` or an argon2id PHC string.
    pub hash: String,
    /// `YYYY-MM-DD` (expires at 00:00 UTC that day) or an RFC 3339 UTC time
    /// (`2027-01-31T12:00:00Z`); absent: never.
    #[serde(default)]
    pub expires: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub(super) struct RawRoute {
    pub id: String,
    pub path: String,
    pub upstream: String,
    #[serde(default)]
    pub strip_prefix: bool,
    /// Send the caller's `Host` upstream instead of the upstream's own authority.
    #[serde(default)]
    pub preserve_host: bool,
    /// PEM CA that an https upstream's certificate must chain to (else the system roots).
    #[serde(default)]
    pub upstream_ca: Option<String>,
    /// HTTP/2 to the upstream.
    #[serde(default)]
    pub upstream_http2: bool,
    /// Let HTTP/1.1 `Upgrade` requests (WebSocket) through, after the token and scope check.
    #[serde(default)]
    pub websocket: bool,
    /// Requests this route takes from all clients together.
    #[serde(default)]
    pub rate_limit: Option<RawRate>,
    #[serde(default = "default_timeout")]
    pub timeout: String,
    #[serde(default)]
    pub public: bool,
    /// Method key (`read`, `write`, `*` or a method name) -> scopes required.
    #[serde(default)]
    pub scopes: Option<BTreeMap<String, Vec<String>>>,
}

fn default_timeout() -> String {
    "30s".into()
}
