//! Every refusal the gateway answers itself, with its status, RFC error code and challenge
//! chosen in one place. Rejections are responses: nothing here tears down a connection.

use http::header::{
    HeaderValue, ALLOW, CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE,
};
use http::{Response, StatusCode};

use crate::body::{full, Body};
use crate::route::PathError;

/// A request the gateway refuses or cannot complete.
#[derive(Debug, Clone, thiserror::Error)]
pub enum GatewayError {
    /// RFC 6749 5.2 `invalid_request` at the token endpoint (400).
    #[error("invalid_request: {0}")]
    InvalidRequest(&'static str),
    /// RFC 6749 5.2 `invalid_client` (401, Basic challenge): unknown client or wrong secret.
    #[error("invalid_client")]
    InvalidClient,
    /// RFC 6749 5.2 `unsupported_grant_type` (400).
    #[error("unsupported_grant_type")]
    UnsupportedGrantType,
    /// RFC 6749 5.2 `invalid_scope` (400).
    #[error("invalid_scope: {0}")]
    InvalidScope(&'static str),
    /// Token request body over the limit (413).
    #[error("request body too large")]
    PayloadTooLarge,
    /// Token request body not received in time (408).
    #[error("request body timeout")]
    BodyTimeout,
    /// RFC 6750 3.1: no bearer credentials at all (401, bare challenge).
    #[error("missing bearer token")]
    MissingToken,
    /// RFC 6750 3.1 `invalid_request`: malformed Authorization (400).
    #[error("malformed authorization: {0}")]
    MalformedAuthorization(&'static str),
    /// RFC 6750 3.1 `invalid_token`: unknown, expired or revoked (401).
    #[error("invalid_token: {0}")]
    InvalidToken(&'static str),
    /// RFC 6750 3.1 `insufficient_scope` (403). Carries the challenge built at load.
    #[error("insufficient_scope")]
    InsufficientScope(HeaderValue),
    /// The path cannot be normalized safely (400).
    #[error("bad path: {0:?}")]
    BadPath(PathError),
    /// No route for the path (404).
    #[error("no route")]
    RouteNotFound,
    /// The route does not take this method (405); carries `Allow`.
    #[error("method not allowed")]
    MethodNotAllowed(Option<HeaderValue>),
    /// The upstream refused, reset or failed before its response head (502).
    #[error("upstream unavailable")]
    UpstreamUnavailable,
    /// The upstream did not answer within the route timeout (504).
    #[error("upstream timeout")]
    UpstreamTimeout,
    /// The token store cannot answer (503).
    #[error("token store unavailable")]
    StoreUnavailable,
    /// Over a rate limit (429); how long to wait, and the burst size.
    #[error("rate limited")]
    RateLimited {
        /// Until the next request may pass.
        retry_after: std::time::Duration,
        /// The burst size (`RateLimit-Limit`).
        limit: u32,
    },
    /// Too many failed client authentications from this source (429).
    #[error("too many failed client authentications")]
    TooManyFailures {
        /// Until the source may try again.
        retry_after: std::time::Duration,
    },
}

const BEARER: HeaderValue = HeaderValue::from_static("Bearer realm=\"portcullis\"");
const BASIC: HeaderValue = HeaderValue::from_static("Basic realm=\"portcullis\"");
const JSON: HeaderValue = HeaderValue::from_static("application/json");
const NO_STORE: HeaderValue = HeaderValue::from_static("no-store");

impl GatewayError {
    /// The RFC error code, or the gateway's own code for non-OAuth failures.
    pub fn code(&self) -> &'static str {
        match self {
            GatewayError::InvalidRequest(_)
            | GatewayError::PayloadTooLarge
            | GatewayError::BodyTimeout
            | GatewayError::MalformedAuthorization(_)
            | GatewayError::BadPath(_) => "invalid_request",
            GatewayError::InvalidClient => "invalid_client",
            GatewayError::UnsupportedGrantType => "unsupported_grant_type",
            GatewayError::InvalidScope(_) => "invalid_scope",
            GatewayError::MissingToken => "unauthorized",
            GatewayError::InvalidToken(_) => "invalid_token",
            GatewayError::InsufficientScope(_) => "insufficient_scope",
            GatewayError::RouteNotFound => "not_found",
            GatewayError::MethodNotAllowed(_) => "method_not_allowed",
            GatewayError::UpstreamUnavailable => "bad_gateway",
            GatewayError::UpstreamTimeout => "gateway_timeout",
            GatewayError::StoreUnavailable => "temporarily_unavailable",
            GatewayError::RateLimited { .. } | GatewayError::TooManyFailures { .. } => {
                "too_many_requests"
            }
        }
    }

    /// The `reason` label of `portcullis_auth_failures_total`, for failures of bearer auth.
    pub fn auth_failure_reason(&self) -> Option<&'static str> {
        Some(match self {
            GatewayError::MissingToken => "missing_token",
            GatewayError::MalformedAuthorization(_) => "malformed_token",
            GatewayError::InvalidToken(_) => "invalid_token",
            GatewayError::InsufficientScope(_) => "insufficient_scope",
            _ => return None,
        })
    }

    fn description(&self) -> &'static str {
        match self {
            GatewayError::InvalidRequest(d)
            | GatewayError::InvalidScope(d)
            | GatewayError::MalformedAuthorization(d)
            | GatewayError::InvalidToken(d) => d,
            GatewayError::InvalidClient => "client authentication failed",
            GatewayError::UnsupportedGrantType => "only grant_type=client_credentials is supported",
            GatewayError::PayloadTooLarge => "the request body is larger than 4 KiB",
            GatewayError::BodyTimeout => "the request body did not arrive in time",
            GatewayError::MissingToken => "a bearer token is required",
            GatewayError::InsufficientScope(_) => "the token lacks a scope this request needs",
            GatewayError::BadPath(e) => e.describe(),
            GatewayError::RouteNotFound => "no route matches this path",
            GatewayError::MethodNotAllowed(_) => "this route does not accept this method",
            GatewayError::UpstreamUnavailable => "the upstream service could not be reached",
            GatewayError::UpstreamTimeout => "the upstream service did not answer in time",
            GatewayError::StoreUnavailable => "the token store is unavailable; retry later",
            GatewayError::RateLimited { .. } => "rate limit exceeded; retry after the time given",
            GatewayError::TooManyFailures { .. } => {
                "too many failed authentications; retry after the time given"
            }
        }
    }

    /// The status code.
    pub fn status(&self) -> StatusCode {
        match self {
            GatewayError::InvalidRequest(_)
            | GatewayError::UnsupportedGrantType
            | GatewayError::InvalidScope(_)
            | GatewayError::MalformedAuthorization(_)
            | GatewayError::BadPath(_) => StatusCode::BAD_REQUEST,
            GatewayError::InvalidClient
            | GatewayError::MissingToken
            | GatewayError::InvalidToken(_) => StatusCode::UNAUTHORIZED,
            GatewayError::InsufficientScope(_) => StatusCode::FORBIDDEN,
            GatewayError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            GatewayError::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            GatewayError::RouteNotFound => StatusCode::NOT_FOUND,
            GatewayError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            GatewayError::UpstreamUnavailable => StatusCode::BAD_GATEWAY,
            GatewayError::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            GatewayError::StoreUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            GatewayError::RateLimited { .. } | GatewayError::TooManyFailures { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
        }
    }

    /// The JSON error response, with its challenge headers.
    pub fn into_response(self) -> Response<Body> {
        let body = serde_json::json!({
            "error": self.code(),
            "error_description": self.description(),
        });
        let mut res = Response::new(full(body.to_string()));
        *res.status_mut() = self.status();
        let h = res.headers_mut();
        h.insert(CONTENT_TYPE, JSON);
        h.insert(CACHE_CONTROL, NO_STORE);
        match self {
            GatewayError::InvalidClient => {
                h.insert(WWW_AUTHENTICATE, BASIC);
            }
            GatewayError::MissingToken => {
                h.insert(WWW_AUTHENTICATE, BEARER);
            }
            GatewayError::MalformedAuthorization(_) => {
                h.insert(
                    WWW_AUTHENTICATE,
                    HeaderValue::from_static(
                        "Bearer realm=\"portcullis\", error=\"invalid_request\"",
                    ),
                );
            }
            GatewayError::InvalidToken(_) => {
                h.insert(
                    WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"portcullis\", error=\"invalid_token\", error_description=\"the access token is invalid or has expired\""),
                );
            }
            GatewayError::InsufficientScope(challenge) => {
                h.insert(WWW_AUTHENTICATE, challenge);
            }
            GatewayError::MethodNotAllowed(Some(allow)) => {
                h.insert(ALLOW, allow);
            }
            GatewayError::StoreUnavailable => {
                h.insert(RETRY_AFTER, HeaderValue::from_static("1"));
            }
            GatewayError::RateLimited { retry_after, limit } => {
                // Whole seconds, rounded up: never invite a retry that will be refused.
                let secs = retry_after.as_millis().div_ceil(1000).max(1) as u64;
                h.insert(RETRY_AFTER, HeaderValue::from(secs));
                h.insert("ratelimit-limit", HeaderValue::from(limit));
                h.insert("ratelimit-remaining", HeaderValue::from(0u32));
                h.insert("ratelimit-reset", HeaderValue::from(secs));
            }
            GatewayError::TooManyFailures { retry_after } => {
                let secs = retry_after.as_millis().div_ceil(1000).max(1) as u64;
                h.insert(RETRY_AFTER, HeaderValue::from(secs));
            }
            _ => {}
        }
        res
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges() {
        let r = GatewayError::MissingToken.into_response();
        assert_eq!(r.status(), 401);
        assert_eq!(r.headers()[WWW_AUTHENTICATE], "Bearer realm=\"portcullis\"");
        let r = GatewayError::InvalidClient.into_response();
        assert_eq!(r.headers()[WWW_AUTHENTICATE], "Basic realm=\"portcullis\"");
        let r = GatewayError::InvalidToken("x").into_response();
        assert!(r.headers()[WWW_AUTHENTICATE]
            .to_str()
            .unwrap()
            .contains("error=\"invalid_token\""));
        assert_eq!(
            GatewayError::MalformedAuthorization("x").status(),
            StatusCode::BAD_REQUEST
        );
    }
}
