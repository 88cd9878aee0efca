//! One access-log line per request, written when the response body ends (so it can say how
//! many bytes went out, and whether the stream was cut). Never a token, a secret or an
//! `Authorization` value: every field comes from config ids, fixed sets, the normalized path
//! or numbers.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::{HeaderValue, Method, Request, Response};
use http_body::Body;
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use crate::body::{OnEnd, Watched};
use crate::request_id::RequestId;
use crate::stack::Shared;

/// What the gateway decided, put on every response it makes for the metrics and this log.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// Route id, or `none`, `token`, `metadata`.
    pub route: Arc<str>,
    /// Client id when a token or client credentials were accepted.
    pub client: Option<Arc<str>>,
    /// Why the gateway refused, when it did (an RFC error code or the gateway's own).
    pub refusal: Option<&'static str>,
    /// Time to the upstream's response head.
    pub upstream: Option<Duration>,
    /// The normalized path, when there was one.
    pub path: Option<Arc<str>>,
}

impl Outcome {
    /// An outcome for `route` with nothing else known yet.
    pub fn route(route: Arc<str>) -> Outcome {
        Outcome {
            route,
            client: None,
            refusal: None,
            upstream: None,
            path: None,
        }
    }
}

/// Wraps responses so their end writes the access-log line.
#[derive(Clone)]
pub struct AccessLogLayer {
    shared: Arc<Shared>,
    counter: Arc<AtomicU64>,
}

impl AccessLogLayer {
    /// A layer reading its settings from the current config snapshot of `shared`, sampling
    /// with `counter`, which every connection must share (one per connection would drop the
    /// first success of each).
    pub fn new(shared: Arc<Shared>, counter: Arc<AtomicU64>) -> Self {
        AccessLogLayer { shared, counter }
    }
}

impl<S> Layer<S> for AccessLogLayer {
    type Service = AccessLog<S>;
    fn layer(&self, inner: S) -> Self::Service {
        AccessLog {
            inner,
            shared: self.shared.clone(),
            counter: self.counter.clone(),
        }
    }
}

/// See [`AccessLogLayer`].
#[derive(Clone)]
pub struct AccessLog<S> {
    inner: S,
    shared: Arc<Shared>,
    counter: Arc<AtomicU64>,
}

impl<S, B, RB> Service<Request<B>> for AccessLog<S>
where
    S: Service<Request<B>, Response = Response<RB>>,
    RB: Body,
{
    type Response = Response<LoggedBody<RB>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let log = &self.shared.config.load().log;
        let pending = log.access.then(|| Pending {
            start: Instant::now(),
            method: req.method().clone(),
            id: req.extensions().get::<RequestId>().map(|r| r.0.clone()),
            sample: log.sample_success,
            counter: self.counter.clone(),
        });
        ResponseFuture {
            inner: self.inner.call(req),
            pending,
        }
    }
}

struct Pending {
    start: Instant,
    method: Method,
    id: Option<HeaderValue>,
    sample: f64,
    counter: Arc<AtomicU64>,
}

impl Pending {
    /// Successful requests are sampled (deterministically: every 1/rate-th); refusals and
    /// errors are always logged.
    fn keep(&self, status: u16) -> bool {
        if status >= 400 || self.sample >= 1.0 {
            return true;
        }
        let n = self.counter.fetch_add(1, Ordering::Relaxed) as f64;
        ((n + 1.0) * self.sample).floor() > (n * self.sample).floor()
    }
}

pin_project! {
    /// Turns the response head into a [`LoggedBody`].
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        pending: Option<Pending>,
    }
}

impl<F, RB, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<RB>, E>>,
    RB: Body,
{
    type Output = Result<Response<LoggedBody<RB>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let res = std::task::ready!(this.inner.poll(cx))?;
        let status = res.status().as_u16();
        let entry = this
            .pending
            .take()
            .filter(|p| p.keep(status))
            .map(|p| Entry {
                status,
                outcome: res.extensions().get::<Outcome>().cloned(),
                pending: p,
            });
        Poll::Ready(Ok(res.map(|inner| Watched::new(inner, entry))))
    }
}

/// One access-log line, written when the response body ends.
pub struct Entry {
    pending: Pending,
    status: u16,
    outcome: Option<Outcome>,
}

impl OnEnd for Entry {
    fn on_end(self, bytes: u64, completed: bool) {
        let o = self.outcome.as_ref();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        tracing::info!(
            target: "portcullis::access",
            request_id = self.pending.id.as_ref().and_then(|v| v.to_str().ok()).unwrap_or("-"),
            client = o.and_then(|o| o.client.as_deref()).unwrap_or("-"),
            route = o.map(|o| &*o.route).unwrap_or(crate::metrics::ROUTE_NONE),
            method = self.pending.method.as_str(),
            path = o.and_then(|o| o.path.as_deref()).unwrap_or("-"),
            status = self.status,
            bytes,
            completed,
            duration_ms = ms(self.pending.start.elapsed()),
            upstream_ms = o.and_then(|o| o.upstream).map(ms),
            reason = o.and_then(|o| o.refusal),
            "request"
        );
    }
}

/// A response body that writes the access-log line at its end (or when dropped early: a
/// caller that went away, or an upstream that failed mid-body).
pub type LoggedBody<B> = Watched<B, Entry>;
