//! The token endpoint (RFC 6749 4.4 client credentials) and the RFC 8414 discovery document.
//! Off the per-request proxy path, so plain async code with owned data is fine here.

pub mod request;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE, HOST, PRAGMA};
use http::{HeaderValue, Method, Request, Response};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use crate::body::{full, Body};
use crate::config::Config;
use crate::error::GatewayError;
use crate::metrics::Metrics;
use crate::scope::ScopeSet;
use crate::secret::random_bytes;
use crate::store::{now_ms, Store, TokenDigest, TokenRecord, TokenStore};

use request::{client_credentials, parse_form};

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
    let mut t = String::with_capacity(TOKEN_LEN);
    t.push_str(TOKEN_PREFIX);
    URL_SAFE_NO_PAD.encode_string(random_bytes::<32>(), &mut t);
    t
}

/// Everything the token endpoint needs.
pub struct TokenContext<'a> {
    /// The current config snapshot.
    pub config: &'a Arc<Config>,
    /// Where tokens go.
    pub store: &'a Store,
    /// Where counts go.
    pub metrics: &'a Metrics,
    /// The caller, for logs.
    pub peer: SocketAddr,
}

/// Answers a request to the token endpoint.
pub async fn handle(req: Request<Incoming>, cx: TokenContext<'_>) -> Response<Body> {
    match issue(req, &cx).await {
        Ok(res) => res,
        Err(e) => {
            if matches!(
                e.code(),
                "invalid_request" | "invalid_client" | "unsupported_grant_type" | "invalid_scope"
            ) {
                cx.metrics.token_errors.with_label_values(&[e.code()]).inc();
            }
            let mut res = e.into_response();
            res.headers_mut()
                .insert(PRAGMA, HeaderValue::from_static("no-cache"));
            res
        }
    }
}

async fn issue(
    req: Request<Incoming>,
    cx: &TokenContext<'_>,
) -> Result<Response<Body>, GatewayError> {
    if req.method() != Method::POST {
        return Err(GatewayError::MethodNotAllowed(Some(
            HeaderValue::from_static("POST"),
        )));
    }
    if let Some(q) = req.uri().query() {
        if form_urlencoded::parse(q.as_bytes())
            .any(|(k, _)| k == "client_secret" || k == "client_id")
        {
            return Err(GatewayError::InvalidRequest(
                "client credentials must not be sent in the query string",
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
    let mut form = parse_form(&body)?;

    match form.grant_type.as_deref() {
        None => return Err(GatewayError::InvalidRequest("grant_type is missing")),
        Some("client_credentials") => {}
        Some(_) => return Err(GatewayError::UnsupportedGrantType),
    }
    let creds = client_credentials(&parts.headers, &mut form)?;
    let config = cx.config;
    let client = config.clients.get(creds.id.as_str()).cloned();
    let secret = match &client {
        Some(c) => c.secret.clone(),
        None => config.dummy_secret.clone(),
    };
    let presented = creds.secret.into_bytes();
    let verified = if secret.is_slow() {
        tokio::task::spawn_blocking(move || secret.verify(&presented))
            .await
            .unwrap_or(false)
    } else {
        secret.verify(&presented)
    };
    let client = match client {
        Some(c) if verified => c,
        _ => {
            tracing::warn!(client_id = %creds.id, peer = %cx.peer, "client authentication failed");
            return Err(GatewayError::InvalidClient);
        }
    };

    let granted: ScopeSet = match form.scope.as_deref() {
        None => client.scopes.clone(),
        Some(asked) => {
            let names: Vec<&str> = asked.split(' ').filter(|s| !s.is_empty()).collect();
            if names.is_empty() {
                client.scopes.clone()
            } else {
                if names.iter().any(|n| config.scopes.get(n).is_none()) {
                    return Err(GatewayError::InvalidScope(
                        "a requested scope is unknown or not granted to this client",
                    ));
                }
                let set = config.scopes.set_of(names.iter().copied());
                if !set.is_subset_of(&client.scopes) {
                    return Err(GatewayError::InvalidScope(
                        "a requested scope is unknown or not granted to this client",
                    ));
                }
                set
            }
        }
    };

    let scope_text = config.scopes.join(&granted);
    let names: Arc<[Arc<str>]> = config.scopes.names(&granted).cloned().collect();
    let now = now_ms();
    let ttl = config.tokens.ttl;
    let record = Arc::new(TokenRecord {
        client_id: client.id.clone(),
        scopes: names,
        issued_at_ms: now,
        expires_at_ms: now + ttl.as_millis() as u64,
        generation: config.generation,
        scope_bits: granted,
        scope_header: HeaderValue::from_str(&scope_text).unwrap_or(HeaderValue::from_static("")),
    });
    let token = mint();
    cx.store
        .put(TokenDigest::of(&token), record)
        .await
        .map_err(|_| GatewayError::StoreUnavailable)?;
    cx.metrics
        .tokens_issued
        .with_label_values(&[&client.id])
        .inc();
    tracing::debug!(client_id = %client.id, scope = %scope_text, "token issued");

    let body = serde_json::json!({
        "access_token": token,
        "token_type": "Bearer",
        "expires_in": ttl.as_secs(),
        "scope": scope_text,
    });
    let mut res = Response::new(full(body.to_string()));
    let h = res.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(PRAGMA, HeaderValue::from_static("no-cache"));
    Ok(res)
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
pub fn metadata(req: &Request<Incoming>, config: &Config) -> Response<Body> {
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
            format!("http://{host}")
        }
    };
    let scopes: Vec<&str> = config.scopes.all().iter().map(|s| &**s).collect();
    let body = serde_json::json!({
        "issuer": issuer,
        "token_endpoint": format!("{issuer}{}", config.tokens.token_path),
        "grant_types_supported": ["client_credentials"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
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
