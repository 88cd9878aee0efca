//! The validated configuration. `load` reads gateway.yaml once, checks everything, and returns
//! either a [`Config`] (with warnings) or every problem at once as `FILE:LINE:COL: message`.
//! Nothing outside this module sees the raw YAML.

pub mod diff;
mod locate;
mod raw;
pub mod reload;
mod validate;

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;

pub use locate::Pos;
pub use validate::parse_duration;

use crate::route::RouteTable;
use crate::scope::{ScopeRegistry, ScopeSet};
use crate::secret::SecretHash;

/// One config snapshot: everything the request path needs, validated and precomputed.
#[derive(Debug)]
pub struct Config {
    /// Public listener address.
    pub listen: SocketAddr,
    /// Admin listener address (/metrics, /healthz, /readyz).
    pub admin_listen: SocketAddr,
    /// Which token store to run.
    pub store: StoreKind,
    /// Token endpoint settings.
    pub tokens: TokenSettings,
    /// Clients by id.
    pub clients: HashMap<Arc<str>, Arc<Client>>,
    /// The routes, ready for lookup.
    pub routes: RouteTable,
    /// Every scope name known to this snapshot.
    pub scopes: ScopeRegistry,
    /// Checked when a client id is unknown, so that costs what a wrong secret costs.
    pub dummy_secret: SecretHash,
    /// argon2id secrets verified in this snapshot (dropped with it on reload).
    pub verified_secrets: crate::secret::VerifiedSecrets,
    /// Distinct for each snapshot built by this process; cached per-token data compares it.
    pub generation: u64,
    /// Listener limits (read at start; a change needs a restart).
    pub server: ServerLimits,
    /// How long requests in flight may take to finish at shutdown.
    pub shutdown_grace: Duration,
    /// TLS for the public listener; re-read on every reload.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Logging.
    pub log: LogSettings,
    /// OpenTelemetry trace export (read at start; a change needs a restart).
    pub otel: OtelSettings,
}

/// `otel:`.
#[derive(Clone, Debug, PartialEq)]
pub struct OtelSettings {
    /// Where spans go: `<endpoint>/v1/traces`; `None` exports nothing. Only a build with the
    /// `otel` feature accepts one.
    pub traces_url: Option<Arc<str>>,
    /// `service.name` of the exported spans.
    pub service_name: Arc<str>,
    /// Share of new traces sampled, 0 to 1 (a caller's `traceparent` decides for its own).
    pub sample_ratio: f64,
    /// Bound on one export to the collector.
    pub timeout: Duration,
}

/// `log:`.
#[derive(Clone, Debug, PartialEq)]
pub struct LogSettings {
    /// JSON lines (default) or human text.
    pub json: bool,
    /// Default level filter, e.g. `info` or `portcullis=debug`.
    pub level: String,
    /// Write the access log.
    pub access: bool,
    /// Share of successful requests in the access log, 0 to 1.
    pub sample_success: f64,
}

/// `server:` limits of the public listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerLimits {
    /// Time to receive a request head; also the idle keep-alive bound.
    pub header_read_timeout: Duration,
    /// Largest request head (HTTP/1 read buffer, HTTP/2 header list).
    pub max_header_bytes: usize,
    /// Connections served at once; more wait in the listen backlog.
    pub max_connections: usize,
}

/// The token store kinds.
#[derive(Clone, Debug)]
pub enum StoreKind {
    /// In-process, per replica.
    Memory,
    /// Shared by every replica.
    Redis(Arc<RedisSettings>),
}

/// `store.redis`.
#[derive(Clone)]
pub struct RedisSettings {
    /// One URL, or the seed nodes of a cluster.
    pub urls: Vec<String>,
    /// Redis Cluster rather than one server.
    pub cluster: bool,
    /// PEM of a private CA for rediss://.
    pub ca: Option<Vec<u8>>,
    /// The password from `password_env`, if set.
    pub password: Option<String>,
    /// Prefix of every key.
    pub key_prefix: Arc<str>,
    /// How long cached tokens stay accepted while Redis does not answer (0: fail closed).
    pub stale_for: Duration,
    /// Bound on every Redis call.
    pub timeout: Duration,
    /// Bound on the in-process token cache.
    pub cache_entries: usize,
}

impl fmt::Debug for RedisSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // URLs may carry a password: show only where they point.
        let hosts: Vec<&str> = self
            .urls
            .iter()
            .map(|u| u.rsplit('@').next().unwrap_or(u))
            .collect();
        f.debug_struct("RedisSettings")
            .field("hosts", &hosts)
            .field("cluster", &self.cluster)
            .field("key_prefix", &self.key_prefix)
            .field("stale_for", &self.stale_for)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// Token endpoint settings.
#[derive(Debug)]
pub struct TokenSettings {
    /// Lifetime of an issued token.
    pub ttl: Duration,
    /// Path of the token endpoint.
    pub token_path: Arc<str>,
    /// RFC 8414 issuer, when configured (else derived from the request).
    pub issuer: Option<Arc<str>>,
    /// Path of the RFC 7009 revocation endpoint.
    pub revoke_path: Arc<str>,
    /// Path of the RFC 7662 introspection endpoint.
    pub introspect_path: Arc<str>,
    /// Hand back a live token for the same scopes instead of minting another.
    pub reuse: bool,
}

/// A client of the gateway.
#[derive(Debug)]
pub struct Client {
    /// The client id (used in metrics and `X-Client-Id`).
    pub id: Arc<str>,
    /// Its secrets (one, or several during a rotation).
    pub secrets: Vec<ClientSecret>,
    /// Scopes this client may be granted.
    pub scopes: ScopeSet,
    /// `X-Client-Id` value, built once.
    pub id_header: HeaderValue,
    /// Past this many live tokens, the oldest are revoked.
    pub max_live_tokens: Option<u32>,
    /// Its rate limit and limiter key (`c:<id>`).
    pub rate_limit: Option<(crate::limit::Rate, Arc<str>)>,
    /// All of its scopes as a grant, built once and shared by every token that gets them all
    /// (the common case), so a token costs one allocation.
    pub full_grant: Grant,
}

/// A granted scope set in the three forms tokens carry.
#[derive(Clone, Debug)]
pub struct Grant {
    /// Names, in registry order.
    pub names: Arc<[Arc<str>]>,
    /// Bits of this snapshot.
    pub bits: ScopeSet,
    /// `X-Client-Scopes`.
    pub header: HeaderValue,
}

impl Grant {
    /// The grant of `bits` in `registry`.
    pub fn of(bits: ScopeSet, registry: &ScopeRegistry) -> Grant {
        Grant {
            names: registry.names(&bits).cloned().collect(),
            header: registry.header(&bits),
            bits,
        }
    }
}

/// One secret of a client.
#[derive(Debug, Clone)]
pub struct ClientSecret {
    /// The hash.
    pub hash: SecretHash,
    /// A fingerprint of the hash: tokens carry it, so changing, removing or letting the
    /// secret expire ends the tokens it obtained.
    pub id: u64,
    /// Unix ms after which the secret (and its tokens) stop working.
    pub expires_at_ms: Option<u64>,
    /// `secret` label value: the fingerprint's first 8 hex digits.
    pub label: Arc<str>,
}

impl ClientSecret {
    /// Whether the secret may be used at `now` (Unix ms).
    pub fn live(&self, now: u64) -> bool {
        self.expires_at_ms.is_none_or(|e| now < e)
    }
}

impl Client {
    /// The live secret whose fingerprint is `id`.
    pub fn live_secret(&self, id: u64, now: u64) -> Option<&ClientSecret> {
        self.secrets.iter().find(|s| s.id == id && s.live(now))
    }

    /// Whether any secret is argon2id (slow by design).
    pub fn has_slow_secret(&self) -> bool {
        self.secrets.iter().any(|s| s.hash.is_slow())
    }
}

/// A config problem with its place in the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// The file, as given.
    pub file: Arc<str>,
    /// Where in it.
    pub pos: Pos,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file, self.pos.line, self.pos.col, self.message
        )
    }
}

/// Every error found in a config file.
#[derive(Debug)]
pub struct ConfigErrors(pub Vec<Problem>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// A loaded config with the warnings found on the way.
#[derive(Debug)]
pub struct Loaded {
    /// The config.
    pub config: Config,
    /// Problems that do not stop the gateway (e.g. a scope no client holds).
    pub warnings: Vec<Problem>,
}

/// Reads and validates a config file.
pub fn load(path: &Path) -> Result<Loaded, ConfigErrors> {
    let name: Arc<str> = Arc::from(path.display().to_string());
    match std::fs::read_to_string(path) {
        Ok(source) => from_str(&source, name),
        Err(e) => Err(ConfigErrors(vec![Problem {
            file: name,
            pos: Pos { line: 1, col: 1 },
            message: format!("cannot read the config file: {e}"),
        }])),
    }
}

/// Validates config text; `file` names it in messages.
pub fn from_str(source: &str, file: Arc<str>) -> Result<Loaded, ConfigErrors> {
    let positions = locate::Positions::of(source);
    let place = |(path, message): (String, String)| Problem {
        file: file.clone(),
        pos: positions.find(&path),
        message,
    };
    let mut unknown: Vec<(String, String)> = Vec::new();
    let parsed: Result<raw::RawConfig, _> =
        serde_ignored::deserialize(serde_norway::Deserializer::from_str(source), |path| {
            let path = config_path(&path);
            let key = path.rsplit('.').next().unwrap_or(&path).to_string();
            unknown.push((
                format!("{path}{}", locate::KEY),
                format!("unknown key `{key}`"),
            ));
        });
    let raw = match parsed {
        Ok(raw) => raw,
        Err(e) => {
            let pos = e
                .location()
                .map(|l| Pos {
                    line: l.line(),
                    col: l.column(),
                })
                .unwrap_or(Pos { line: 1, col: 1 });
            let text = e.to_string();
            let message = match text.rfind(" at line ") {
                Some(i) => text[..i].to_string(),
                None => text,
            };
            let mut problems: Vec<Problem> = unknown.into_iter().map(place).collect();
            problems.push(Problem {
                file: file.clone(),
                pos,
                message,
            });
            return Err(ConfigErrors(sorted(problems)));
        }
    };
    match validate::validate(raw) {
        Ok((config, warnings)) if unknown.is_empty() => Ok(Loaded {
            config,
            warnings: warnings.into_iter().map(place).collect(),
        }),
        Ok(_) => Err(ConfigErrors(sorted(
            unknown.into_iter().map(place).collect(),
        ))),
        Err(errors) => Err(ConfigErrors(sorted(
            unknown.into_iter().chain(errors).map(place).collect(),
        ))),
    }
}

/// The JSON Schema of gateway.yaml, generated from the same types the loader reads (shipped
/// as `gateway.schema.json`; a test keeps the two equal).
pub fn json_schema() -> String {
    let schema = schemars::generate::SchemaSettings::draft07()
        .into_generator()
        .into_root_schema_for::<raw::RawConfig>();
    let mut text = serde_json::to_string_pretty(&schema).expect("a schema serializes");
    text.push('\n');
    text
}

fn sorted(mut problems: Vec<Problem>) -> Vec<Problem> {
    problems.sort_by_key(|p| (p.pos.line, p.pos.col));
    problems
}

/// `routes[1].colour` from serde_ignored's path.
fn config_path(path: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path;
    match path {
        Path::Root => String::new(),
        Path::Seq { parent, index } => format!("{}[{index}]", config_path(parent)),
        Path::Map { parent, key } => {
            let parent = config_path(parent);
            if parent.is_empty() {
                key.clone()
            } else {
                format!("{parent}.{key}")
            }
        }
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => config_path(parent),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_unknown_key_with_other_errors() {
        let src = "listen: 127.0.0.1:1\nlisten_typo: x\nroutes:\n  - id: a\n    path: /a\n    upstream: ftp://x\n    colour: red\n    public: true\n";
        let errs = from_str(src, "g.yaml".into()).unwrap_err().0;
        let text: Vec<String> = errs.iter().map(|p| p.to_string()).collect();
        assert_eq!(text.len(), 3, "{text:?}");
        assert!(
            text[0].starts_with("g.yaml:2:1: unknown key `listen_typo`"),
            "{text:?}"
        );
        assert!(text[1].starts_with("g.yaml:6:15: upstream"), "{text:?}");
        assert!(
            text[2].starts_with("g.yaml:7:5: unknown key `colour`"),
            "{text:?}"
        );
    }
}
