//! The response body type: either the upstream's streamed body or one the gateway wrote.

use crate::proxy::UpstreamBody;
use bytes::Bytes;
use http_body_util::{Either, Full};

/// Responses stream the upstream body through untouched, or carry a small body of our own.
pub type Body = Either<UpstreamBody, Full<Bytes>>;

/// A body of our own.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Either::Right(Full::new(bytes.into()))
}

/// An empty body.
pub fn empty() -> Body {
    Either::Right(Full::new(Bytes::new()))
}
