//! Bearer authentication (RFC 6750): the `Authorization` header becomes [`Claims`] or a
//! rejection. Malformed headers are refused before any store lookup, and so is anything that
//! cannot be a token this gateway minted, so a flood of garbage never reaches the store.

use std::sync::Arc;

use http::header::AUTHORIZATION;
use http::{HeaderMap, HeaderValue};

use crate::config::{Client, Config};
use crate::error::GatewayError;
use crate::scope::ScopeSet;
use crate::store::{now_ms, TokenDigest, TokenRecord, TokenStore};
use crate::token::is_token_shaped;

/// Who is calling and what they may do, for one request.
#[derive(Debug)]
pub struct Claims {
    /// The client, as in the current config.
    pub client: Arc<Client>,
    record: Arc<TokenRecord>,
    /// Set when the token predates the current snapshot: its grant, re-read against it.
    rebased: Option<(ScopeSet, HeaderValue)>,
}

impl Claims {
    /// The scopes the token grants under the current config.
    pub fn scopes(&self) -> &ScopeSet {
        match &self.rebased {
            Some((s, _)) => s,
            None => &self.record.scope_bits,
        }
    }

    /// `X-Client-Scopes`: the granted scopes, space-separated.
    pub fn scope_header(&self) -> &HeaderValue {
        match &self.rebased {
            Some((_, h)) => h,
            None => &self.record.scope_header,
        }
    }
}

/// RFC 6750 2.1 `b64token`: `1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="`.
fn is_b64token(t: &[u8]) -> bool {
    let body = t.iter().rposition(|b| *b != b'=').map_or(0, |i| i + 1);
    body > 0
        && t[..body].iter().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/')
        })
}

/// The bearer token of a request, or why there is none.
pub fn bearer_token(headers: &HeaderMap) -> Result<&str, GatewayError> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let value = values.next().ok_or(GatewayError::MissingToken)?;
    if values.next().is_some() {
        return Err(GatewayError::MalformedAuthorization(
            "more than one Authorization header",
        ));
    }
    let bytes = value.as_bytes();
    let (scheme, rest) = match bytes.iter().position(|b| *b == b' ') {
        Some(i) => (&bytes[..i], &bytes[i..]),
        None => (bytes, &b""[..]),
    };
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        // Another scheme is not a bearer credential: ask for one (RFC 6750 3.1).
        return Err(GatewayError::MissingToken);
    }
    let token = rest.trim_ascii_start();
    if token.is_empty() {
        return Err(GatewayError::MalformedAuthorization(
            "the bearer token is empty",
        ));
    }
    if !is_b64token(token) {
        return Err(GatewayError::MalformedAuthorization(
            "the bearer token has characters outside RFC 6750 b64token",
        ));
    }
    // b64token is ASCII, so this cannot fail.
    std::str::from_utf8(token).map_err(|_| GatewayError::MalformedAuthorization("not ASCII"))
}

/// Authenticates a request against the store and the current config.
pub async fn authenticate<S: TokenStore>(
    headers: &HeaderMap,
    store: &S,
    config: &Config,
) -> Result<Claims, GatewayError> {
    let token = bearer_token(headers)?;
    if !is_token_shaped(token) {
        return Err(GatewayError::InvalidToken(
            "the access token is not recognized",
        ));
    }
    let record = store
        .get(&TokenDigest::of(token), config)
        .await
        .map_err(|e| match e {
            // Retrying cannot fix a grant that does not parse: the token is unusable.
            crate::store::StoreError::Corrupt => {
                GatewayError::InvalidToken("the access token is not recognized")
            }
            _ => GatewayError::StoreUnavailable,
        })?
        .ok_or(GatewayError::InvalidToken(
            "the access token is not recognized",
        ))?;
    if record.expires_at_ms <= now_ms() {
        return Err(GatewayError::InvalidToken("the access token has expired"));
    }
    Claims::under(record, config).ok_or(GatewayError::InvalidToken(
        "the client or secret of this token was removed",
    ))
}

impl Claims {
    /// What `record` grants under `config`: nothing when its client, or the secret that
    /// obtained it, is gone; else its scopes less any the client has lost since.
    pub fn under(record: Arc<TokenRecord>, config: &Config) -> Option<Claims> {
        let client = config.clients.get(&record.client_id)?.clone();
        client.live_secret(record.secret_id, now_ms())?;
        let rebased = (record.generation != config.generation).then(|| {
            let granted = config
                .scopes
                .set_of(record.scopes.iter().map(|s| &**s))
                .intersection(&client.scopes);
            let header = config.scopes.header(&granted);
            (granted, header)
        });
        Some(Claims {
            client,
            record,
            rebased,
        })
    }

    /// The granted scopes, space-separated, as of the current config.
    pub fn scope_text(&self, config: &Config) -> String {
        config.scopes.join(self.scopes())
    }

    /// The token's record.
    pub fn record(&self) -> &TokenRecord {
        &self.record
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(AUTHORIZATION, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn parses_bearer() {
        assert_eq!(bearer_token(&headers(&["Bearer abc"])).unwrap(), "abc");
        assert_eq!(bearer_token(&headers(&["bearer abc"])).unwrap(), "abc");
        assert_eq!(
            bearer_token(&headers(&["BEARER a-b.c_d~e+f/g=="])).unwrap(),
            "a-b.c_d~e+f/g=="
        );
    }

    #[test]
    fn refusals() {
        let code = |v: &[&str]| bearer_token(&headers(v)).unwrap_err().code();
        assert_eq!(code(&[]), "unauthorized");
        assert_eq!(code(&["Basic abc"]), "unauthorized");
        assert_eq!(code(&["Bearerabc"]), "unauthorized");
        assert_eq!(code(&["Bearer"]), "invalid_request");
        assert_eq!(code(&["Bearer "]), "invalid_request");
        assert_eq!(code(&["Bearer a b"]), "invalid_request");
        assert_eq!(code(&["Bearer a,b"]), "invalid_request");
        assert_eq!(code(&["Bearer ==="]), "invalid_request");
        assert_eq!(code(&["Bearer a=b"]), "invalid_request");
        assert_eq!(code(&["Bearer a\"b"]), "invalid_request");
        assert_eq!(code(&["Bearer a", "Bearer a"]), "invalid_request");
    }
}
