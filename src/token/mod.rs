//! The token endpoint (RFC 6749 4.4 client credentials) and the RFC 8414 discovery document.
//! Off the per-request proxy path, so plain async code with owned data is fine here.

pub mod guard;
pub mod request;
pub mod reuse;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE, HOST, PRAGMA};
use http::{HeaderMap, HeaderValue, Method, Request, Response};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use crate::access_log::Outcome;
use crate::body::{full, Body};
use crate::config::{Client, Config};
use crate::error::GatewayError;
use crate::metrics::{Metrics, ROUTE_TOKEN, TOKEN_ERRORS};
use crate::scope::ScopeSet;
use crate::secret::{random_bytes, SecretHash};
use crate::store::{now_ms, Store, TokenDigest, TokenRecord, TokenStore};

use request::{client_credentials, parse_form, TokenForm};

/// Prefix of every access token, so secret scanners can find leaked ones.
pub const TOKEN_PREFIX: &str = "pct_";
/// Token length: the prefix and 256 random bits in unpadded base64url.
pub const TOKEN_LEN: usize = TOKEN_PREFIX.len() + 43;
/// Largest token request body.
pub const MAX_BODY: usize = 4096;
/// How long a client may take to send that body.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// Path of the RFC 8414 document.
pub const METADATA_PATH: &str = "/.well-known/oauth-authorization-server";

const FORM: &str = "application/x-www-form-urlencoded";

/// Whether `token` could be one this gateway minted: checked before any store lookup.
pub fn is_token_shaped(token: &str) -> bool {
    token.len() == TOKEN_LEN
        && token.starts_with(TOKEN_PREFIX)
        && token.as_bytes()[TOKEN_PREFIX.len()..]
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_')
}

/// A new access token.
pub fn mint() -> String {
    reuse::token_text(&random_bytes::<32>())
}

/// Which OAuth endpoint a request is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// RFC 6749 4.4 token issuance.
    Token,
    /// RFC 7009 revocation.
    Revoke,
    /// RFC 7662 introspection.
    Introspect,
}

/// Everything the OAuth endpoints need.
pub struct TokenContext<'a> {
    /// The current config snapshot.
    pub config: &'a Arc<Config>,
    /// Where tokens go.
    pub store: &'a Store,
    /// Where counts go.
    pub metrics: &'a Metrics,
    /// Brute-force protection.
    pub guard: &'a guard::FailureGuard,
    /// The caller, for logs.
    pub peer: SocketAddr,
}

/// Answers a request to one of the OAuth endpoints.
pub async fn handle(
    req: Request<Incoming>,
    endpoint: Endpoint,
    cx: TokenContext<'_>,
) -> Response<Body> {
    let mut outcome = Outcome::route(ROUTE_TOKEN.into());
    // The endpoint paths are exact matches, so the request path is already normal.
    outcome.path = Some(Arc::from(req.uri().path()));
    let out = match read_form(req).await {
        Ok((headers, form)) => match endpoint {
            Endpoint::Token => issue(&headers, form, &cx, &mut outcome).await,
            Endpoint::Revoke => revoke(&headers, form, &cx, &mut outcome).await,
            Endpoint::Introspect => introspect(&headers, form, &cx, &mut outcome).await,
        },
        Err(e) => Err(e),
    };
    let mut res = match out {
        Ok(res) => res,
        Err(e) => {
            if TOKEN_ERRORS.contains(&e.code()) {
                cx.metrics.token_errors.with_label_values(&[e.code()]).inc();
            }
            outcome.refusal = Some(e.code());
            let mut res = e.into_response();
            res.headers_mut()
                .insert(PRAGMA, HeaderValue::from_static("no-cache"));
            res
        }
    };
    res.extensions_mut().insert(outcome);
    res
}

/// The checks every OAuth endpoint shares: POST, no credentials in the query, a form body of
/// at most 4 KiB, well formed.
async fn read_form(req: Request<Incoming>) -> Result<(HeaderMap, TokenForm), GatewayError> {
    if req.method() != Method::POST {
        return Err(GatewayError::MethodNotAllowed(Some(
            HeaderValue::from_static("POST"),
        )));
    }
    if let Some(q) = req.uri().query() {
        if form_urlencoded::parse(q.as_bytes())
            .any(|(k, _)| k == "client_secret" || k == "client_id" || k == "token")
        {
            return Err(GatewayError::InvalidRequest(
                "credentials must not be sent in the query string",
            ));
        }
    }
    let is_form = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|media| media.trim().eq_ignore_ascii_case(FORM));
    if !is_form {
        return Err(GatewayError::InvalidRequest(
            "the body must be application/x-www-form-urlencoded",
        ));
    }
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return Err(GatewayError::PayloadTooLarge);
    }
    let (parts, body) = req.into_parts();
    let body = read_body(body).await?;
    Ok((parts.headers, parse_form(&body)?))
}

/// A client that proved it holds one of its live secrets.
struct Authenticated {
    client: Arc<Client>,
    /// Fingerprint of the secret that matched.
    secret_id: u64,
    /// The secret as presented (for sealing a reusable token).
    presented: Vec<u8>,
}

/// RFC 6749 2.3.1 client authentication, constant time, one answer for every failure. Every
/// live secret of the client is checked, whichever matches, so timing does not tell which.
async fn authenticate_client(
    headers: &HeaderMap,
    form: &mut TokenForm,
    cx: &TokenContext<'_>,
) -> Result<Authenticated, GatewayError> {
    let creds = client_credentials(headers, form)?;
    let now = now_ms();
    let source = cx.peer.ip();
    if let Err(retry_after) = cx.guard.check(&creds.id, source, now) {
        tracing::warn!(client_id = %creds.id, peer = %cx.peer, "client authentication refused: too many failures");
        return Err(GatewayError::TooManyFailures { retry_after });
    }
    let config = cx.config;
    let client = config.clients.get(creds.id.as_str()).cloned();
    let candidates: Vec<(u64, SecretHash)> = match &client {
        Some(c) => c
            .secrets
            .iter()
            .filter(|s| s.live(now))
            .map(|s| (s.id, s.hash.clone()))
            .collect(),
        None => Vec::new(),
    };
    let live: Vec<u64> = candidates.iter().map(|(id, _)| *id).collect();
    let presented = creds.secret.into_bytes();
    let check = {
        let presented = presented.clone();
        let dummy = config.dummy_secret.clone();
        move || {
            if candidates.is_empty() {
                // Unknown client, or no live secret: the same work as a wrong secret.
                dummy.verify(&presented);
                return None;
            }
            let mut matched = None;
            for (id, hash) in &candidates {
                if hash.verify(&presented) && matched.is_none() {
                    matched = Some(*id);
                }
            }
            matched
        }
    };
    let slow =
        client.as_ref().is_some_and(|c| c.has_slow_secret()) || config.dummy_secret.is_slow();
    let matched = if slow {
        // argon2 is paid once per (client, secret) and config snapshot; a cached match still
        // has to be one of the client's live secrets.
        let key = config.verified_secrets.key_of(&creds.id, &presented);
        let cached = config
            .verified_secrets
            .get(&key)
            .filter(|id| live.contains(id));
        let result = if cached.is_some() { "hit" } else { "miss" };
        cx.metrics.secret_cache.with_label_values(&[result]).inc();
        match cached {
            Some(id) => Some(id),
            None => {
                let matched = tokio::task::spawn_blocking(check).await.unwrap_or(None);
                if let Some(id) = matched {
                    config.verified_secrets.insert(key, id);
                }
                matched
            }
        }
    } else {
        check()
    };
    match (client, matched) {
        (Some(client), Some(secret_id)) => {
            cx.guard.succeeded(&creds.id, source);
            if let Some(s) = client.secrets.iter().find(|s| s.id == secret_id) {
                cx.metrics
                    .secret_last_used
                    .with_label_values(&[&client.id, &s.label])
                    .set(now as f64 / 1000.0);
            }
            Ok(Authenticated {
                client,
                secret_id,
                presented,
            })
        }
        _ => {
            tracing::warn!(client_id = %creds.id, peer = %cx.peer, "client authentication failed");
            let delay = cx.guard.failed(&creds.id, source, now);
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            Err(GatewayError::InvalidClient)
        }
    }
}

fn json(body: serde_json::Value) -> Response<Body> {
    let mut res = Response::new(full(body.to_string()));
    let h = res.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(PRAGMA, HeaderValue::from_static("no-cache"));
    res
}

async fn issue(
    headers: &HeaderMap,
    mut form: TokenForm,
    cx: &TokenContext<'_>,
    outcome: &mut Outcome,
) -> Result<Response<Body>, GatewayError> {
    match form.grant_type.as_deref() {
        None => return Err(GatewayError::InvalidRequest("grant_type is missing")),
        Some("client_credentials") => {}
        Some(_) => return Err(GatewayError::UnsupportedGrantType),
    }
    let Authenticated {
        client,
        secret_id,
        presented: secret,
    } = authenticate_client(headers, &mut form, cx).await?;
    outcome.client = Some(client.id.clone());
    let config = cx.config;

    let granted: ScopeSet = match form.scope.as_deref() {
        None => client.scopes.clone(),
        Some(asked) => {
            let names: Vec<&str> = asked.split(' ').filter(|s| !s.is_empty()).collect();
            let unknown = names.iter().any(|n| config.scopes.get(n).is_none());
            let set = config.scopes.set_of(names.iter().copied());
            if names.is_empty() {
                client.scopes.clone()
            } else if unknown || !set.is_subset_of(&client.scopes) {
                return Err(GatewayError::InvalidScope(
                    "a requested scope is unknown or not granted to this client",
                ));
            } else {
                set
            }
        }
    };

    let unavailable = |e: crate::store::StoreError| {
        tracing::warn!(error = %e, "token store failed while issuing");
        GatewayError::StoreUnavailable
    };
    // All of the client's scopes (the usual case) share one prebuilt grant.
    let grant = if granted == client.scopes {
        client.full_grant.clone()
    } else {
        crate::config::Grant::of(granted, &config.scopes)
    };
    let now = now_ms();
    let scope_text = grant.names.join(" ");
    // Sealing needs a high-entropy secret (see token::reuse).
    let slow_secret = client
        .secrets
        .iter()
        .any(|s| s.id == secret_id && s.hash.is_slow());
    let reuse_key =
        (config.tokens.reuse && !slow_secret).then(|| reuse::reuse_key(&client.id, &scope_text));
    if let Some(key) = &reuse_key {
        if let Some(found) = reusable(key, &secret, &client.id, now, cx).await? {
            return Ok(found);
        }
    }
    let ttl = config.tokens.ttl;
    let expires = now + ttl.as_millis() as u64;
    let record = Arc::new(TokenRecord {
        client_id: client.id.clone(),
        secret_id,
        scopes: grant.names,
        issued_at_ms: now,
        expires_at_ms: expires,
        generation: config.generation,
        scope_bits: grant.bits,
        scope_header: grant.header,
    });
    let raw = random_bytes::<32>();
    let token = reuse::token_text(&raw);
    cx.store
        .put(TokenDigest::of(&token), record, client.max_live_tokens)
        .await
        .map_err(unavailable)?;
    if let Some(key) = &reuse_key {
        // Kept for half the lifetime: past that, a caller gets a fresh token.
        let sealed = reuse::Sealed::seal(&raw, &secret, &client.id, now, expires);
        cx.store
            .put_reusable(key, sealed.encode(), (expires - now) / 2)
            .await
            .map_err(unavailable)?;
    }
    cx.metrics
        .tokens_issued
        .with_label_values(&[&client.id])
        .inc();
    tracing::debug!(client_id = %client.id, scope = %scope_text, "token issued");

    Ok(json(serde_json::json!({
        "access_token": token,
        "token_type": "Bearer",
        "expires_in": ttl.as_secs(),
        "scope": scope_text,
    })))
}

/// The client's live token for these scopes, if reuse is on and it has more than half its
/// lifetime left.
async fn reusable(
    key: &str,
    secret: &[u8],
    client: &str,
    now: u64,
    cx: &TokenContext<'_>,
) -> Result<Option<Response<Body>>, GatewayError> {
    let unavailable = |_| GatewayError::StoreUnavailable;
    let Some(sealed) = cx.store.get_reusable(key).await.map_err(unavailable)? else {
        return Ok(None);
    };
    let Some(sealed) = reuse::Sealed::decode(&sealed) else {
        return Ok(None);
    };
    let half = sealed.issued_at_ms + (sealed.expires_at_ms - sealed.issued_at_ms) / 2;
    if now >= half {
        return Ok(None);
    }
    let Some(token) = sealed.open(secret, client) else {
        return Ok(None);
    };
    // Revoked since: mint a new one.
    let Some(record) = cx
        .store
        .get(&sealed.digest, cx.config)
        .await
        .map_err(unavailable)?
    else {
        return Ok(None);
    };
    Ok(Some(json(serde_json::json!({
        "access_token": token,
        "token_type": "Bearer",
        "expires_in": record.expires_at_ms.saturating_sub(now) / 1000,
        "scope": record.scope_text(),
    }))))
}

/// What revocation and introspection share: the authenticated caller, and the presented
/// `token` with its record when it is a live one.
async fn presented_token(
    headers: &HeaderMap,
    mut form: TokenForm,
    cx: &TokenContext<'_>,
    outcome: &mut Outcome,
) -> Result<(Arc<Client>, Option<(TokenDigest, Arc<TokenRecord>)>), GatewayError> {
    let client = authenticate_client(headers, &mut form, cx).await?.client;
    outcome.client = Some(client.id.clone());
    let token = form.token.ok_or(GatewayError::InvalidRequest(
        "the token parameter is missing",
    ))?;
    if !is_token_shaped(&token) {
        return Ok((client, None));
    }
    let digest = TokenDigest::of(&token);
    let record = cx.store.get(&digest, cx.config).await.map_err(|e| {
        tracing::warn!(error = %e, "token store failed");
        GatewayError::StoreUnavailable
    })?;
    Ok((client, record.map(|r| (digest, r))))
}

/// RFC 7009: a client revokes one of its own tokens. Unknown tokens, and tokens of other
/// clients, get the same 200 and nothing happens, so the endpoint tells nobody what exists.
async fn revoke(
    headers: &HeaderMap,
    form: TokenForm,
    cx: &TokenContext<'_>,
    outcome: &mut Outcome,
) -> Result<Response<Body>, GatewayError> {
    let (client, found) = presented_token(headers, form, cx, outcome).await?;
    if let Some((digest, _)) = found.filter(|(_, r)| r.client_id == client.id) {
        cx.store.revoke(&digest).await.map_err(|e| {
            tracing::warn!(error = %e, "token store failed while revoking");
            GatewayError::StoreUnavailable
        })?;
        tracing::info!(client_id = %client.id, "token revoked");
    }
    let mut res = Response::new(crate::body::empty());
    res.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(res)
}

/// RFC 7662: what a token grants, for an authenticated client; `{"active":false}` for
/// anything that is not a live token.
async fn introspect(
    headers: &HeaderMap,
    form: TokenForm,
    cx: &TokenContext<'_>,
    outcome: &mut Outcome,
) -> Result<Response<Body>, GatewayError> {
    let (_, found) = presented_token(headers, form, cx, outcome).await?;
    let record = found.map(|(_, r)| r);
    // Judged as a protected request would judge it: a removed client or secret, or lost
    // scopes, show here too.
    let claims = record.and_then(|r| crate::auth::Claims::under(r, cx.config));
    Ok(json(match claims {
        None => serde_json::json!({ "active": false }),
        Some(c) => serde_json::json!({
            "active": true,
            "scope": c.scope_text(cx.config),
            "client_id": &*c.client.id,
            "token_type": "Bearer",
            "exp": c.record().expires_at_ms / 1000,
            "iat": c.record().issued_at_ms / 1000,
        }),
    }))
}

async fn read_body(body: Incoming) -> Result<Bytes, GatewayError> {
    let limited = Limited::new(body, MAX_BODY);
    match tokio::time::timeout(BODY_TIMEOUT, limited.collect()).await {
        Err(_) => Err(GatewayError::BodyTimeout),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            Err(GatewayError::PayloadTooLarge)
        }
        Ok(Err(_)) => Err(GatewayError::InvalidRequest(
            "the request body could not be read",
        )),
    }
}

/// Answers the RFC 8414 discovery document.
pub fn metadata(req: &Request<Incoming>, config: &Config, proto: &str) -> Response<Body> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return GatewayError::MethodNotAllowed(Some(HeaderValue::from_static("GET, HEAD")))
            .into_response();
    }
    let issuer = match &config.tokens.issuer {
        Some(i) => i.to_string(),
        None => {
            let host = req
                .headers()
                .get(HOST)
                .and_then(|h| h.to_str().ok())
                .and_then(|h| h.parse::<http::uri::Authority>().ok())
                .or_else(|| req.uri().authority().cloned())
                .map(|a| a.to_string())
                .unwrap_or_else(|| config.listen.to_string());
            format!("{proto}://{host}")
        }
    };
    let scopes: Vec<&str> = config.scopes.all().iter().map(|s| &**s).collect();
    let body = serde_json::json!({
        "issuer": issuer,
        "token_endpoint": format!("{issuer}{}", config.tokens.token_path),
        "revocation_endpoint": format!("{issuer}{}", config.tokens.revoke_path),
        "introspection_endpoint": format!("{issuer}{}", config.tokens.introspect_path),
        "grant_types_supported": ["client_credentials"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        "revocation_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        "introspection_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        "response_types_supported": [],
        "scopes_supported": scopes,
    });
    let mut res = Response::new(full(body.to_string()));
    res.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_tokens_are_shaped_and_distinct() {
        let a = mint();
        let b = mint();
        assert_ne!(a, b);
        assert!(is_token_shaped(&a), "{a}");
        assert!(!is_token_shaped(&a[1..]));
        assert!(!is_token_shaped(&format!("{a}x")));
        assert!(!is_token_shaped(&a.replace(TOKEN_PREFIX, "xyz_")));
        let mut bad = a.clone();
        bad.replace_range(10..11, "+");
        assert!(!is_token_shaped(&bad));
    }
}
