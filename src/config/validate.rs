//! Raw config -> typed config. Every check runs; every failure is collected with the config
//! path it belongs to, so ops see all of their mistakes in one pass.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::uri::{Scheme, Uri};
use http::{HeaderValue, Method};

use super::raw::{RawClient, RawConfig, RawOtel, RawRedis, RawRoute, RawStore};
use super::Grant;
use super::{
    Client, ClientSecret, Config, LogSettings, OtelSettings, RedisSettings, ServerLimits,
    StoreKind, TokenSettings,
};
use sha2::Digest;

use crate::proxy;
use crate::route::{
    self, standard_index, Access, MethodScopes, Required, Route, RouteTable, Upstream,
    STANDARD_METHODS,
};
use crate::scope::{is_scope_token, ScopeRegistry};
use crate::secret::SecretHash;

/// (config path, message)
pub(super) type Found = Vec<(String, String)>;

static GENERATION: AtomicU64 = AtomicU64::new(1);

/// Parses `30s`, `15m`, `1h`, `500ms`, `1d`, or a sum such as `1h30m`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || {
        format!("invalid duration {text:?}: use a number and a unit (ms, s, m, h, d), e.g. 30s, 15m, 1h")
    };
    let s = text.trim();
    if s.is_empty() {
        return Err(bad());
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        if digits == 0 {
            return Err(bad());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.saturating_mul(60)),
            "h" => Duration::from_secs(n.saturating_mul(3600)),
            "d" => Duration::from_secs(n.saturating_mul(86400)),
            _ => return Err(bad()),
        };
        total = total.saturating_add(unit);
        rest = &rest[unit_len..];
    }
    Ok(total)
}

fn rate(raw: &super::raw::RawRate, path: String, errors: &mut Found) -> Option<crate::limit::Rate> {
    if !(raw.per_second.is_finite() && raw.per_second > 0.0 && raw.per_second <= 1e6) {
        errors.push((
            format!("{path}.per_second"),
            "per_second must be above 0 (and at most 1000000)".into(),
        ));
        return None;
    }
    let burst = raw
        .burst
        .unwrap_or_else(|| raw.per_second.ceil().max(1.0) as u32);
    if burst == 0 {
        errors.push((format!("{path}.burst"), "burst must be at least 1".into()));
        return None;
    }
    Some(crate::limit::Rate {
        per_second: raw.per_second,
        burst,
    })
}

/// `YYYY-MM-DD` (00:00 UTC) or `YYYY-MM-DDTHH:MM:SSZ`, as Unix ms.
fn parse_expiry(text: &str) -> Option<u64> {
    let b = text.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<u64> {
        let s = text.get(r)?;
        s.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| s.parse().ok())?
    };
    if b.len() < 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    let secs_of_day = match b.len() {
        10 => 0,
        20 if b[10] == b'T' && b[13] == b':' && b[16] == b':' && b[19] == b'Z' => {
            let (h, mi, s) = (num(11..13)?, num(14..16)?, num(17..19)?);
            if h > 23 || mi > 59 || s > 59 {
                return None;
            }
            h * 3600 + mi * 60 + s
        }
        _ => return None,
    };
    // Days from the civil date (Howard Hinnant's algorithm), for years from 1970.
    let (y, m) = if m <= 2 { (y - 1, m + 9) } else { (y, m - 3) };
    let era = y / 400;
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = (era * 146_097 + doe).checked_sub(719_468)?;
    Some((days * 86_400 + secs_of_day) * 1000)
}

/// Client ids travel in headers and metric labels: visible ASCII only.
fn is_client_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| (0x21..=0x7E).contains(&b))
}

/// Route ids are metric labels and must never collide with `none` (unmatched requests).
fn is_route_id(id: &str) -> bool {
    let mut bytes = id.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphanumeric())
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        && id.len() <= 64
}

/// Names reserved for the gateway's own series in `route` labels.
pub const RESERVED_ROUTE_IDS: [&str; 3] = ["none", "token", "metadata"];

fn check_path(path: &str) -> Result<(), String> {
    match route::normalize(path) {
        Err(e) => Err(format!("path {path:?} is not valid: {}", e.describe())),
        Ok(n) if n != path => Err(format!(
            "path {path:?} is not normalized; write it as {n:?}"
        )),
        Ok(_) if path.len() > 1 && path.ends_with('/') => Err(format!(
            "path {path:?} must not end with `/` (prefixes match whole segments): write {:?}",
            path.trim_end_matches('/')
        )),
        Ok(_) => Ok(()),
    }
}

fn parse_upstream(text: &str) -> Result<Upstream, String> {
    let uri: Uri = text
        .parse()
        .map_err(|e| format!("upstream {text:?} is not a valid URL: {e}"))?;
    let scheme = match uri.scheme() {
        Some(s) if *s == Scheme::HTTP || *s == Scheme::HTTPS => s.clone(),
        _ => {
            return Err(format!(
                "upstream {text:?} must be an http:// or https:// URL"
            ))
        }
    };
    let authority = uri
        .authority()
        .cloned()
        .ok_or_else(|| format!("upstream {text:?} has no host"))?;
    if authority.as_str().contains('@') {
        return Err(format!("upstream {text:?} must not carry credentials"));
    }
    if authority.host().is_empty() {
        return Err(format!("upstream {text:?} has no host"));
    }
    if uri.query().is_some() {
        return Err(format!("upstream {text:?} must not have a query string"));
    }
    let base = uri.path().trim_end_matches('/');
    if !base.is_empty() {
        check_path(base).map_err(|e| format!("upstream {text:?}: {e}"))?;
    }
    let host = HeaderValue::from_str(authority.as_str())
        .map_err(|_| format!("upstream {text:?} has an invalid host"))?;
    Ok(Upstream {
        origin: format!("{scheme}://{}{base}", authority.as_str()).into(),
        scheme,
        authority,
        base_path: base.into(),
        host,
    })
}

fn redis_settings(r: &RawRedis, errors: &mut Found) -> Option<RedisSettings> {
    let at = |k: &str| format!("store.redis.{k}");
    let before = errors.len();
    let (urls, cluster, key) = match (&r.url, &r.cluster) {
        (Some(u), None) => (vec![u.clone()], false, at("url")),
        (None, Some(nodes)) if !nodes.is_empty() => (nodes.clone(), true, at("cluster")),
        _ => {
            errors.push((
                "store.redis".into(),
                "store.redis needs exactly one of `url` or `cluster` (a list of node URLs)".into(),
            ));
            return None;
        }
    };
    for (i, u) in urls.iter().enumerate() {
        let path = if cluster {
            format!("{key}[{i}]")
        } else {
            key.clone()
        };
        let shown = u.rsplit('@').next().unwrap_or(u);
        if !(u.starts_with("redis://") || u.starts_with("rediss://")) {
            errors.push((
                path,
                format!("redis URL {shown:?} must start with redis:// or rediss://"),
            ));
        } else if let Err(e) = redis::Client::open(u.as_str()) {
            errors.push((
                path,
                format!(
                    "redis URL {shown:?} is not valid: {}",
                    e.detail().unwrap_or("malformed")
                ),
            ));
        }
    }
    let ca = r.ca.as_ref().and_then(|path| match std::fs::read(path) {
        Ok(pem) => Some(pem),
        Err(e) => {
            errors.push((at("ca"), format!("cannot read the CA file {path:?}: {e}")));
            None
        }
    });
    let password = r
        .password_env
        .as_ref()
        .and_then(|name| match std::env::var(name) {
            Ok(p) if !p.is_empty() => Some(p),
            _ => {
                errors.push((
                    at("password_env"),
                    format!("environment variable {name:?} (password_env) is not set"),
                ));
                None
            }
        });
    let stale_for = parse_duration(&r.stale_for).unwrap_or_else(|e| {
        errors.push((at("stale_for"), e));
        Duration::ZERO
    });
    let timeout = match parse_duration(&r.timeout) {
        Ok(d) if !d.is_zero() => d,
        Ok(_) => {
            errors.push((at("timeout"), "timeout must be above zero".into()));
            Duration::from_millis(500)
        }
        Err(e) => {
            errors.push((at("timeout"), e));
            Duration::from_millis(500)
        }
    };
    if r.key_prefix.is_empty() || r.key_prefix.contains(char::is_whitespace) {
        errors.push((
            at("key_prefix"),
            "key_prefix must be non-empty, without spaces".into(),
        ));
    }
    if r.cache_entries == 0 {
        errors.push((
            at("cache_entries"),
            "cache_entries must be at least 1".into(),
        ));
    }
    (errors.len() == before).then(|| RedisSettings {
        urls,
        cluster,
        ca,
        password,
        key_prefix: r.key_prefix.as_str().into(),
        stale_for,
        timeout,
        cache_entries: r.cache_entries,
    })
}

/// What a build without the `otel` feature says to `otel.endpoint`.
pub const NO_OTEL_BUILD: &str =
    "this build has no OpenTelemetry export; rebuild with --features otel";

fn otel_settings(raw: &RawOtel, errors: &mut Found, warnings: &mut Found) -> OtelSettings {
    let traces_url = raw.endpoint.as_deref().and_then(|text| {
        let at = || "otel.endpoint".to_string();
        if !cfg!(feature = "otel") {
            errors.push((at(), format!("otel.endpoint is set, but {NO_OTEL_BUILD}")));
            return None;
        }
        let bad = |why: &str| (at(), format!("otel.endpoint {text:?} {why}"));
        let uri: Uri = match text.parse() {
            Ok(u) => u,
            Err(e) => {
                errors.push(bad(&format!("is not a valid URL: {e}")));
                return None;
            }
        };
        if !matches!(uri.scheme_str(), Some("http") | Some("https")) {
            errors.push(bad("must be an http:// or https:// URL"));
            return None;
        }
        match uri.authority() {
            Some(a) if a.as_str().contains('@') => {
                errors.push(bad("must not carry credentials"));
                return None;
            }
            Some(a) if !a.host().is_empty() => {}
            _ => {
                errors.push(bad("has no host"));
                return None;
            }
        }
        if uri.query().is_some() {
            errors.push(bad("must not have a query string"));
            return None;
        }
        let base = text.trim_end_matches('/');
        if base.ends_with("/v1/traces") {
            warnings.push((
                at(),
                format!(
                    "otel.endpoint is the collector's base URL: spans will go to {base}/v1/traces"
                ),
            ));
        }
        Some(Arc::from(format!("{base}/v1/traces")))
    });
    if !(0.0..=1.0).contains(&raw.sample_ratio) {
        errors.push((
            "otel.sample_ratio".into(),
            "otel.sample_ratio must be between 0 and 1".into(),
        ));
    }
    let name = raw.service_name.as_str();
    if name.is_empty() || name.len() > 255 || name.chars().any(char::is_control) {
        errors.push((
            "otel.service_name".into(),
            "otel.service_name must be 1 to 255 characters, none of them control characters".into(),
        ));
    }
    let timeout = match parse_duration(&raw.timeout) {
        // The SDK cuts every export at 30 s (OTEL_BSP_EXPORT_TIMEOUT) on its own, before a
        // longer timeout of ours could count or report the failure.
        Ok(d) if !d.is_zero() && d <= Duration::from_secs(30) => d,
        Ok(_) => {
            errors.push((
                "otel.timeout".into(),
                "otel.timeout must be above zero and at most 30s".into(),
            ));
            Duration::from_secs(10)
        }
        Err(e) => {
            errors.push(("otel.timeout".into(), e));
            Duration::from_secs(10)
        }
    };
    OtelSettings {
        traces_url,
        service_name: name.into(),
        sample_ratio: raw.sample_ratio,
        timeout,
    }
}

fn parse_addr(text: &str, key: &str, errors: &mut Found) -> SocketAddr {
    text.parse().unwrap_or_else(|_| {
        errors.push((
            key.into(),
            format!("{key} {text:?} is not an address such as 127.0.0.1:8080"),
        ));
        SocketAddr::from(([127, 0, 0, 1], 0))
    })
}

/// Validates everything; returns the config and warnings, or every error found.
pub(super) fn validate(raw: RawConfig) -> Result<(Config, Found), Found> {
    let mut errors: Found = Vec::new();
    let mut warnings: Found = Vec::new();

    let listen = parse_addr(&raw.listen, "listen", &mut errors);
    let admin_listen = parse_addr(&raw.admin_listen, "admin_listen", &mut errors);
    if listen == admin_listen && listen.port() != 0 {
        errors.push((
            "admin_listen".into(),
            "admin_listen must differ from listen: metrics never go on the public listener".into(),
        ));
    }
    let store = match &raw.store {
        RawStore::Memory => StoreKind::Memory,
        RawStore::Redis(r) => match redis_settings(r, &mut errors) {
            Some(settings) => StoreKind::Redis(Arc::new(settings)),
            None => StoreKind::Memory,
        },
    };

    let ttl = match parse_duration(&raw.tokens.ttl) {
        Ok(d) if d >= Duration::from_secs(1) && d <= Duration::from_secs(30 * 86400) => d,
        Ok(_) => {
            errors.push((
                "tokens.ttl".into(),
                "tokens.ttl must be between 1s and 30d".into(),
            ));
            Duration::from_secs(3600)
        }
        Err(e) => {
            errors.push(("tokens.ttl".into(), e));
            Duration::from_secs(3600)
        }
    };
    let token_path = raw.tokens.token_path.clone();
    let mut endpoint_paths = HashSet::new();
    for (key, path) in [
        ("tokens.token_path", &raw.tokens.token_path),
        ("tokens.revoke_path", &raw.tokens.revoke_path),
        ("tokens.introspect_path", &raw.tokens.introspect_path),
    ] {
        if let Err(e) = check_path(path) {
            errors.push((key.into(), e));
        } else if !endpoint_paths.insert(path.as_str()) {
            errors.push((
                key.into(),
                format!("{key} {path:?} is already used by another endpoint"),
            ));
        }
    }
    let issuer = match raw.tokens.issuer.as_deref() {
        None => None,
        Some(text) => match text.parse::<Uri>() {
            Ok(u)
                if matches!(u.scheme_str(), Some("http") | Some("https"))
                    && u.authority().is_some()
                    && u.query().is_none() =>
            {
                Some(Arc::from(text.trim_end_matches('/')))
            }
            _ => {
                errors.push((
                    "tokens.issuer".into(),
                    format!("issuer {text:?} must be an http(s) URL without query"),
                ));
                None
            }
        },
    };

    let positive = |key: &str, text: &str, errors: &mut Found| match parse_duration(text) {
        Ok(d) if !d.is_zero() => d,
        Ok(_) => {
            errors.push((key.into(), format!("{key} must be above zero")));
            Duration::from_secs(30)
        }
        Err(e) => {
            errors.push((key.into(), e));
            Duration::from_secs(30)
        }
    };
    let server = ServerLimits {
        header_read_timeout: positive(
            "server.header_read_timeout",
            &raw.server.header_read_timeout,
            &mut errors,
        ),
        max_header_bytes: raw.server.max_header_bytes,
        max_connections: raw.server.max_connections,
    };
    if server.max_header_bytes < 8192 {
        errors.push((
            "server.max_header_bytes".into(),
            "server.max_header_bytes must be at least 8192".into(),
        ));
    }
    if server.max_connections == 0 {
        errors.push((
            "server.max_connections".into(),
            "server.max_connections must be at least 1".into(),
        ));
    }
    let shutdown_grace = match parse_duration(&raw.shutdown_grace) {
        Ok(d) => d,
        Err(e) => {
            errors.push(("shutdown_grace".into(), e));
            Duration::from_secs(30)
        }
    };

    let json = match raw.log.format.as_str() {
        "json" => true,
        "text" => false,
        other => {
            errors.push((
                "log.format".into(),
                format!("log.format {other:?} must be json or text"),
            ));
            true
        }
    };
    if tracing_subscriber::EnvFilter::try_new(&raw.log.level).is_err() {
        errors.push((
            "log.level".into(),
            format!(
                "log.level {:?} is not a level filter (error, warn, info, debug, trace)",
                raw.log.level
            ),
        ));
    }
    if !(0.0..=1.0).contains(&raw.log.sample_success) {
        errors.push((
            "log.sample_success".into(),
            "log.sample_success must be between 0 and 1".into(),
        ));
    }
    let log = LogSettings {
        json,
        level: raw.log.level.clone(),
        access: raw.log.access,
        sample_success: raw.log.sample_success,
    };

    let otel = otel_settings(&raw.otel, &mut errors, &mut warnings);

    let tls = raw.tls.as_ref().and_then(|t| {
        crate::tls::server_config(&t.cert, &t.key, t.client_ca.as_deref())
            .map_err(|e| {
                let key = if e.contains("client_ca") {
                    "tls.client_ca"
                } else if e.contains("key") && !e.contains("certificate") {
                    "tls.key"
                } else {
                    "tls.cert"
                };
                errors.push((key.into(), e));
            })
            .ok()
    });

    let mut scopes = ScopeRegistry::default();
    let clients = validate_clients(&raw.clients, &mut scopes, &mut errors);
    let held = scopes.all().len();
    let routes = validate_routes(&raw.routes, &endpoint_paths, &mut scopes, &mut errors);
    for (i, r) in raw.routes.iter().enumerate() {
        for (key, names) in r.scopes.iter().flatten() {
            for (j, name) in names.iter().enumerate() {
                if scopes.get(name).is_some_and(|idx| idx >= held) {
                    warnings.push((
                        format!("routes[{i}].scopes.{key}[{j}]"),
                        format!(
                            "route {:?} requires scope {name:?}, which no client holds",
                            r.id
                        ),
                    ));
                }
            }
        }
    }

    // An unknown client id is checked against this, so it costs what a wrong secret costs
    // for the kind of hash most clients use.
    let slow = clients.values().filter(|c| c.has_slow_secret()).count();
    let dummy_secret = if slow * 2 > clients.len() {
        clients
            .values()
            .flat_map(|c| c.secrets.iter())
            .find(|s| s.hash.is_slow())
            .map(|s| s.hash.clone())
            .unwrap_or_else(|| SecretHash::sha256_of(b"unknown-client"))
    } else {
        SecretHash::sha256_of(b"unknown-client")
    };

    if !errors.is_empty() {
        return Err(errors);
    }
    Ok((
        Config {
            listen,
            admin_listen,
            store,
            tokens: TokenSettings {
                ttl,
                token_path: token_path.into(),
                issuer,
                revoke_path: raw.tokens.revoke_path.as_str().into(),
                introspect_path: raw.tokens.introspect_path.as_str().into(),
                reuse: raw.tokens.reuse,
            },
            clients,
            routes,
            scopes,
            dummy_secret,
            verified_secrets: Default::default(),
            generation: GENERATION.fetch_add(1, Ordering::Relaxed),
            server,
            shutdown_grace,
            tls,
            log,
            otel,
        },
        warnings,
    ))
}

fn validate_clients(
    raw: &[RawClient],
    scopes: &mut ScopeRegistry,
    errors: &mut Found,
) -> HashMap<Arc<str>, Arc<Client>> {
    let mut clients = HashMap::new();
    let mut ids = HashSet::new();
    for (i, c) in raw.iter().enumerate() {
        let at = |k: &str| format!("clients[{i}].{k}");
        if !is_client_id(&c.id) {
            errors.push((
                at("id"),
                format!(
                    "client id {:?} must be 1-128 visible ASCII characters without spaces",
                    c.id
                ),
            ));
            continue;
        }
        if !ids.insert(c.id.as_str()) {
            errors.push((at("id"), format!("duplicate client id {:?}", c.id)));
            continue;
        }
        let mut secrets = Vec::new();
        let mut secrets_ok = true;
        let listed = c
            .secret_hash
            .iter()
            .map(|h| (at("secret_hash"), h.as_str(), None))
            .chain(c.secrets.iter().enumerate().map(|(j, s)| {
                (
                    format!("clients[{i}].secrets[{j}]"),
                    s.hash.as_str(),
                    Some((
                        format!("clients[{i}].secrets[{j}].expires"),
                        s.expires.as_deref(),
                    )),
                )
            }));
        for (path, hash, expiry) in listed {
            let hash = match SecretHash::parse(hash) {
                Ok(h) => h,
                Err(e) => {
                    errors.push((path, format!("client {:?}: {e}", c.id)));
                    secrets_ok = false;
                    continue;
                }
            };
            let expires_at_ms = match expiry {
                Some((epath, Some(text))) => match parse_expiry(text) {
                    Some(ms) => Some(ms),
                    None => {
                        errors.push((
                            epath,
                            format!("expires {text:?} must be YYYY-MM-DD or YYYY-MM-DDTHH:MM:SSZ"),
                        ));
                        secrets_ok = false;
                        continue;
                    }
                },
                _ => None,
            };
            let fingerprint = sha2::Sha256::digest(hash.to_config_value().as_bytes());
            let id = u64::from_be_bytes(fingerprint[..8].try_into().expect("8 bytes"));
            secrets.push(ClientSecret {
                label: crate::secret::encode_hex(&fingerprint[..4]).into(),
                hash,
                id,
                expires_at_ms,
            });
        }
        if secrets_ok && secrets.is_empty() {
            errors.push((
                at("id"),
                format!("client {:?} needs `secret_hash` or `secrets`", c.id),
            ));
            continue;
        }
        if !secrets_ok {
            continue;
        }
        let mut ok = true;
        for (j, s) in c.scopes.iter().enumerate() {
            if !is_scope_token(s) {
                errors.push((
                    format!("clients[{i}].scopes[{j}]"),
                    format!("scope {s:?} is not a valid scope name (RFC 6749 3.3: no spaces, quotes or backslashes)"),
                ));
                ok = false;
            }
        }
        if !ok {
            continue;
        }
        if c.max_live_tokens == Some(0) {
            errors.push((
                at("max_live_tokens"),
                "max_live_tokens must be at least 1".into(),
            ));
            continue;
        }
        let rate_limit = match &c.rate_limit {
            Some(r) => match rate(r, at("rate_limit"), errors) {
                Some(rate) => Some((rate, Arc::from(format!("c:{}", c.id)))),
                None => continue,
            },
            None => None,
        };
        let id: Arc<str> = Arc::from(c.id.as_str());
        let bits = scopes.intern_set(c.scopes.iter().map(String::as_str));
        let client = Client {
            full_grant: Grant::of(bits.clone(), scopes),
            rate_limit,
            max_live_tokens: c.max_live_tokens,
            id_header: HeaderValue::from_str(&c.id).expect("checked visible ASCII"),
            id: id.clone(),
            secrets,
            scopes: bits,
        };
        clients.insert(id, Arc::new(client));
    }
    clients
}

fn validate_routes(
    raw: &[RawRoute],
    endpoint_paths: &HashSet<&str>,
    scopes: &mut ScopeRegistry,
    errors: &mut Found,
) -> RouteTable {
    let mut routes = Vec::new();
    let mut ids = HashSet::new();
    let mut paths = HashSet::new();
    for (i, r) in raw.iter().enumerate() {
        let at = |k: &str| format!("routes[{i}].{k}");
        let before = errors.len();
        if !is_route_id(&r.id) {
            errors.push((at("id"), format!("route id {:?} must be letters, digits, `_`, `-` or `.`, starting with a letter or digit", r.id)));
        } else if RESERVED_ROUTE_IDS.contains(&r.id.as_str()) {
            errors.push((
                at("id"),
                format!(
                    "route id {:?} is reserved for the gateway's own metrics",
                    r.id
                ),
            ));
        } else if !ids.insert(r.id.as_str()) {
            errors.push((at("id"), format!("duplicate route id {:?}", r.id)));
        }
        match check_path(&r.path) {
            Err(e) => errors.push((at("path"), e)),
            Ok(()) if !paths.insert(r.path.as_str()) => {
                errors.push((at("path"), format!("duplicate route path {:?}", r.path)))
            }
            Ok(()) if endpoint_paths.contains(r.path.as_str()) => errors.push((
                at("path"),
                format!("route path {:?} is an OAuth endpoint's path", r.path),
            )),
            Ok(()) => {}
        }
        let upstream = parse_upstream(&r.upstream).map_err(|e| (at("upstream"), e));
        let route_rate = r
            .rate_limit
            .as_ref()
            .map(|raw| rate(raw, at("rate_limit"), errors));
        if r.websocket && r.upstream_http2 {
            errors.push((
                at("websocket"),
                "websocket needs HTTP/1.1 to the upstream: drop upstream_http2".into(),
            ));
        }
        let client = match &r.upstream_ca {
            None => Ok(proxy::client_for(
                proxy::ClientKey {
                    ca: None,
                    http2: r.upstream_http2,
                },
                None,
            )),
            Some(path) => crate::tls::roots_from(path)
                .map(|roots| {
                    let pem = std::fs::read(path).unwrap_or_default();
                    let key = proxy::ClientKey {
                        ca: Some(sha2::Sha256::digest(&pem).into()),
                        http2: r.upstream_http2,
                    };
                    proxy::client_for(key, Some(&roots))
                })
                .map_err(|e| (at("upstream_ca"), e)),
        };
        let timeout = match parse_duration(&r.timeout) {
            Ok(d) if !d.is_zero() => Ok(d),
            Ok(_) => Err((at("timeout"), "timeout must be above zero".to_string())),
            Err(e) => Err((at("timeout"), e)),
        };
        let access = match (r.public, &r.scopes) {
            (true, None) => Ok(Some(Access::Public)),
            (true, Some(_)) => Err((
                at("scopes"),
                format!("route {:?} is public: it cannot also require scopes", r.id),
            )),
            (false, None) => Err((
                at("id"),
                format!(
                    "route {:?} needs a `scopes` map (method -> scopes), or `public: true`",
                    r.id
                ),
            )),
            (false, Some(map)) => Ok(method_scopes(i, map, scopes, errors).map(Access::Protected)),
        };
        let (upstream, timeout, access, client) = match (upstream, timeout, access, client) {
            (Ok(u), Ok(t), Ok(Some(a)), Ok(c)) => (Some(u), Some(t), Some(a), Some(c)),
            (u, t, a, c) => {
                errors.extend(u.err());
                errors.extend(t.err());
                errors.extend(a.err());
                errors.extend(c.err());
                (None, None, None, None)
            }
        };
        if errors.len() > before {
            continue;
        }
        if let (Some(upstream), Some(timeout), Some(access), Some(client)) =
            (upstream, timeout, access, client)
        {
            let pool = client.pool(&upstream.scheme, &upstream.authority);
            routes.push(Route {
                id: r.id.as_str().into(),
                prefix: r.path.as_str().into(),
                upstream,
                strip_prefix: r.strip_prefix,
                preserve_host: r.preserve_host,
                upstream_http2: r.upstream_http2,
                websocket: r.websocket,
                rate_limit: route_rate
                    .flatten()
                    .map(|rate| (rate, Arc::from(format!("r:{}", r.id)))),
                client,
                pool,
                timeout,
                access,
            });
        }
    }
    RouteTable::new(routes)
}

fn method_scopes(
    route: usize,
    map: &std::collections::BTreeMap<String, Vec<String>>,
    scopes: &mut ScopeRegistry,
    errors: &mut Found,
) -> Option<MethodScopes> {
    let before = errors.len();
    for (key, names) in map {
        for (j, n) in names.iter().enumerate() {
            if !is_scope_token(n) {
                errors.push((
                    format!("routes[{route}].scopes.{key}[{j}]"),
                    format!("scope {n:?} is not a valid scope name"),
                ));
            }
        }
    }
    let required = |names: &[String], scopes: &mut ScopeRegistry| {
        let set = scopes.intern_set(names.iter().map(String::as_str));
        let names = names.join(" ");
        let challenge = HeaderValue::from_str(&format!(
            "Bearer realm=\"portcullis\", error=\"insufficient_scope\", error_description=\"the token lacks a scope this request needs\", scope=\"{names}\""
        ))
        .unwrap_or(HeaderValue::from_static(
            "Bearer realm=\"portcullis\", error=\"insufficient_scope\"",
        ));
        Arc::new(Required {
            scopes: set,
            names: names.into(),
            challenge,
        })
    };

    let mut ms = MethodScopes::default();
    let mut class: [Option<Arc<Required>>; 7] = Default::default();
    for (key, names) in map {
        let req = required(names, scopes);
        match key.as_str() {
            "read" => (0..3).for_each(|i| class[i] = Some(req.clone())),
            "write" => (3..7).for_each(|i| class[i] = Some(req.clone())),
            "*" => ms.any = Some(req),
            k if !k.is_empty() && k.bytes().all(|b| b.is_ascii_uppercase() || b == b'-') => {
                let method = Method::from_bytes(k.as_bytes()).expect("uppercase token");
                match standard_index(&method) {
                    Some(i) => ms.standard[i] = Some(req),
                    None => ms.others.push((method, req)),
                }
            }
            k => errors.push((
                format!("routes[{route}].scopes.{k}#key"),
                format!(
                    "unknown scope key {k:?}: use read, write, \"*\" or an uppercase method name such as GET"
                ),
            )),
        }
    }
    for (i, c) in class.into_iter().enumerate() {
        if ms.standard[i].is_none() {
            ms.standard[i] = c;
        }
    }
    if ms.any.is_none() {
        let mut allowed: Vec<&str> = STANDARD_METHODS
            .iter()
            .zip(ms.standard.iter())
            .filter(|(_, r)| r.is_some())
            .map(|(m, _)| m.as_str())
            .collect();
        allowed.extend(ms.others.iter().map(|(m, _)| m.as_str()));
        ms.allow = HeaderValue::from_str(&allowed.join(", ")).ok();
    }
    (errors.len() == before).then_some(ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2d"), Ok(Duration::from_secs(172800)));
        for bad in ["", "s", "10", "5 parsecs", "1.5h", "-1s", "1H", "1hh"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn expiries() {
        assert_eq!(parse_expiry("1970-01-01"), Some(0));
        assert_eq!(parse_expiry("2000-03-01"), Some(951_868_800_000));
        assert_eq!(parse_expiry("2027-01-31"), Some(1_801_353_600_000));
        assert_eq!(
            parse_expiry("2027-01-31T12:00:00Z"),
            Some(1_801_353_600_000 + 43_200_000)
        );
        for bad in [
            "2027-13-01",
            "2027-1-1",
            "31/01/2027",
            "2027-01-31T25:00:00Z",
            "2027-01-31 12:00",
            "",
        ] {
            assert_eq!(parse_expiry(bad), None, "{bad}");
        }
    }

    #[test]
    fn route_ids() {
        assert!(is_route_id("accounts"));
        assert!(is_route_id("v2.users-list_x"));
        assert!(!is_route_id("_x"));
        assert!(!is_route_id(""));
        assert!(!is_route_id("a b"));
        assert!(!is_route_id("é"));
    }

    #[test]
    fn upstreams() {
        let u = parse_upstream("http://127.0.0.1:8000").unwrap();
        assert_eq!(u.authority.as_str(), "127.0.0.1:8000");
        assert_eq!(&*u.base_path, "");
        let u = parse_upstream("http://svc.internal/base/").unwrap();
        assert_eq!(&*u.base_path, "/base");
        assert_eq!(u.host, "svc.internal");
        for bad in [
            "ftp://x",
            "127.0.0.1:8000",
            "http://",
            "http://u:p@host",
            "http://h/?q=1",
            "http://h/a/../b",
            "not a url",
        ] {
            assert!(parse_upstream(bad).is_err(), "{bad}");
        }
    }
}
