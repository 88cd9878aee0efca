//! The response body type: either the upstream's streamed body or one the gateway wrote; and
//! [`Watched`], the wrapper that tells the layers outside when a response body has ended.

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

/// What a [`Watched`] body reports when it ends.
pub trait OnEnd {
    /// Called once: `bytes` of data went out; `completed` is false when the stream was cut
    /// (an upstream that failed mid-body, or a caller that went away).
    fn on_end(self, bytes: u64, completed: bool);
}

pin_project_lite::pin_project! {
    /// A response body that counts what it sends and calls its [`OnEnd`] at the end (or when
    /// dropped early). The access log and the trace span both end here, so they agree on
    /// when a request is over and how many bytes it sent.
    pub struct Watched<B, E>
    where
        B: http_body::Body,
        E: OnEnd,
    {
        #[pin]
        inner: B,
        bytes: u64,
        end: Option<E>,
    }

    impl<B, E> PinnedDrop for Watched<B, E>
    where
        B: http_body::Body,
        E: OnEnd,
    {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(e) = this.end.take() {
                // hyper may stop polling once it has the whole body: ended is not cut.
                let ended = this.inner.is_end_stream();
                e.on_end(*this.bytes, ended);
            }
        }
    }
}

impl<B: http_body::Body, E: OnEnd> Watched<B, E> {
    /// Watches `inner`; with `end` absent it only passes the body through.
    pub fn new(inner: B, end: Option<E>) -> Self {
        Watched {
            inner,
            bytes: 0,
            end,
        }
    }
}

impl<B, E> http_body::Body for Watched<B, E>
where
    B: http_body::Body<Data = Bytes>,
    E: OnEnd,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let this = self.project();
        let out = std::task::ready!(this.inner.poll_frame(cx));
        match &out {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    *this.bytes += data.len() as u64;
                }
            }
            Some(Err(_)) => {
                if let Some(e) = this.end.take() {
                    e.on_end(*this.bytes, false);
                }
            }
            None => {
                if let Some(e) = this.end.take() {
                    e.on_end(*this.bytes, true);
                }
            }
        }
        std::task::Poll::Ready(out)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
