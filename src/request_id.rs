//! `X-Request-Id`: kept when the caller sends a well-formed one, generated otherwise, then
//! forwarded to the upstream, returned to the caller and written in the access log. A
//! caller's id is an untrusted string that ends up in logs, so only a short, plain one is
//! kept (advisory E6: request-derived values must not inject into what follows).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::{HeaderName, HeaderValue, Request, Response};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use crate::secret::encode_hex;

/// `X-Request-Id`.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The request's id, in request extensions.
#[derive(Clone, Debug)]
pub struct RequestId(pub HeaderValue);

/// 1 to 128 of `A-Z a-z 0-9 - _ . : @`: UUIDs, ULIDs, trace ids, nothing that can break a log
/// line or a header.
pub fn is_well_formed(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.' | b':' | b'@'))
}

/// What a draw is for: ids and sampling decisions come from separate streams.
#[derive(Clone, Copy)]
pub enum Stream {
    /// Request ids.
    Id = 0,
    /// Trace sampling.
    Sampling = 1,
}

/// 64 bits no caller can predict or trace back: a keyed SipHash (std's `RandomState`, whose
/// 128-bit key comes from the operating system's RNG once per process and never leaves it)
/// of a process-wide counter. No system call per draw; seeing any number of outputs tells
/// nothing about the counter (how much traffic there is) or about the next draw.
pub fn draw(stream: Stream) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    static KEY: OnceLock<std::collections::hash_map::RandomState> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = KEY.get_or_init(Default::default).build_hasher();
    h.write_u8(stream as u8);
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.finish()
}

/// 128 bits from two draws: unique in practice (a collision is a 2^-64 event after 2^32
/// ids) and unpredictable.
fn generate() -> HeaderValue {
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&draw(Stream::Id).to_be_bytes());
    bytes[8..].copy_from_slice(&draw(Stream::Id).to_be_bytes());
    HeaderValue::from_str(&encode_hex(&bytes)).expect("hex is a valid header")
}

/// Sets the request id on the request (for the upstream and the log) and on the response.
#[derive(Clone, Copy, Debug, Default)]
pub struct RequestIdLayer;

impl<S> Layer<S> for RequestIdLayer {
    type Service = RequestIdService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RequestIdService { inner }
    }
}

/// See [`RequestIdLayer`].
#[derive(Clone, Debug)]
pub struct RequestIdService<S> {
    inner: S,
}

impl<S, B, RB> Service<Request<B>> for RequestIdService<S>
where
    S: Service<Request<B>, Response = Response<RB>>,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let mut sent = req.headers().get_all(&X_REQUEST_ID).iter();
        let id = match (sent.next(), sent.next()) {
            (Some(v), None) if is_well_formed(v) => v.clone(),
            _ => generate(),
        };
        req.headers_mut().insert(X_REQUEST_ID, id.clone());
        req.extensions_mut().insert(RequestId(id.clone()));
        ResponseFuture {
            inner: self.inner.call(req),
            id: Some(id),
        }
    }
}

pin_project! {
    /// Puts the id on the response.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        id: Option<HeaderValue>,
    }
}

impl<F, RB, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<RB>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut out = std::task::ready!(this.inner.poll(cx));
        if let (Ok(res), Some(id)) = (&mut out, this.id.take()) {
            res.headers_mut().insert(X_REQUEST_ID, id);
        }
        Poll::Ready(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn well_formed_ids() {
        for ok in [
            "abc",
            "550e8400-e29b-41d4-a716-446655440000",
            "01ARZ3NDEKTSV4RRFFQ69G5FAV",
        ] {
            assert!(is_well_formed(&HeaderValue::from_static(ok)), "{ok}");
        }
        for bad in ["", "a b", "a\"b", "a{b}", "x=1;y", &"a".repeat(129)] {
            assert!(
                !is_well_formed(&HeaderValue::from_str(bad).unwrap()),
                "{bad}"
            );
        }
        assert_eq!(generate().len(), 32);
        assert_ne!(generate(), generate());
    }
}
