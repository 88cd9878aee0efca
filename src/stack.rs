//! The one place the request path is composed, outermost first:
//!
//! 1. `RequestIdLayer` — keeps or makes `X-Request-Id`, for the upstream, the caller, the log.
//! 2. `OtelLayer` (feature `otel`) — one span per request, parented to the caller's
//!    `traceparent` and named to the upstream as its parent; ends when the response body ends.
//! 3. `AccessLogLayer` — one line per request when its response body ends.
//! 4. `MetricsLayer` — every answer counted and timed, refusals included.
//! 5. `Gateway` — splits the token endpoint and discovery from everything else, which goes
//!    through the phases in order: normalize the path, find the route, authenticate
//!    (`auth`), check the method and scopes, and forward (`proxy`). A refusal in any phase
//!    becomes a response through `GatewayError`, the only place responses for failures are
//!    made.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use arc_swap::ArcSwap;
use http::{Request, Response};
use hyper::body::Incoming;
use tower::{Service, ServiceBuilder};

use crate::access_log::{AccessLog, AccessLogLayer, Outcome};
use crate::auth;
use crate::body::Body;
use crate::config::Config;
use crate::error::GatewayError;
use crate::limit::{Rate, Verdict};
use crate::metrics::{Metrics, MetricsLayer, MetricsService, ROUTE_METADATA, ROUTE_NONE};
use crate::proxy;
use crate::request_id::{RequestIdLayer, RequestIdService};
use crate::route::{normalize, Access};
use crate::store::Store;
use crate::token::{self, Endpoint, TokenContext, METADATA_PATH};

/// State shared by every connection.
pub struct Shared {
    /// The current config snapshot; a reload swaps it whole.
    pub config: ArcSwap<Config>,
    /// The token store.
    pub store: Store,
    /// Metric families.
    pub metrics: Arc<Metrics>,
    /// Rate-limit state of this replica (and the fallback when Redis is down).
    pub limiter: crate::limit::Limiter,
    /// Failed client authentications, for brute-force protection.
    pub guard: token::guard::FailureGuard,
    /// Successful requests seen by the access-log sampler, across connections.
    pub access_sampled: Arc<std::sync::atomic::AtomicU64>,
    /// The trace exporter, when `otel.endpoint` is set.
    #[cfg(feature = "otel")]
    pub traces: Option<Arc<crate::otel::Traces>>,
}

#[cfg(feature = "otel")]
type Traced<S> = crate::otel::Otel<S>;
#[cfg(not(feature = "otel"))]
type Traced<S> = S;

/// The full per-connection service.
pub type GatewayStack = RequestIdService<Traced<AccessLog<MetricsService<Gateway>>>>;

/// The span layer; it passes requests through untouched when no collector is configured.
#[cfg(feature = "otel")]
fn trace_layer(shared: &Shared, peer: SocketAddr, proto: &'static str) -> crate::otel::OtelLayer {
    crate::otel::OtelLayer::new(shared.traces.clone(), peer.ip(), proto)
}

/// Without the `otel` feature there is no span layer at all.
#[cfg(not(feature = "otel"))]
fn trace_layer(_: &Shared, _: SocketAddr, _: &'static str) -> tower::layer::util::Identity {
    tower::layer::util::Identity::new()
}

/// Builds the stack for one connection from `peer`; `proto` is `http` or `https`.
pub fn stack(shared: Arc<Shared>, peer: SocketAddr, proto: &'static str) -> GatewayStack {
    ServiceBuilder::new()
        // Outermost: every request, refused or not, gets an id before anything logs it.
        .layer(RequestIdLayer)
        // Inside the id (the span carries it), outside the rest: the span covers the whole
        // answer, refusals included, and its `traceparent` is on the request before the
        // proxy copies the headers. Its body wraps the access log's: a body read to the end
        // writes the line, then ends the span; a body dropped early ends the span first.
        .layer(trace_layer(&shared, peer, proto))
        // Around the rest so the line is written when the body ends, with its byte count.
        .layer(AccessLogLayer::new(
            shared.clone(),
            shared.access_sampled.clone(),
        ))
        // Counts every response head, including the gateway's own refusals.
        .layer(MetricsLayer::new(shared.metrics.clone()))
        .service(Gateway {
            shared,
            caller: Arc::new(Caller {
                peer,
                peer_header: proxy::headers::peer_value(peer.ip()),
                proto,
            }),
        })
}

/// Who is on the other end of one connection, worked out once for all its requests.
struct Caller {
    peer: SocketAddr,
    /// `peer`'s address as an `X-Forwarded-For` element.
    peer_header: http::HeaderValue,
    /// `http` or `https`.
    proto: &'static str,
}

/// Token endpoint, discovery, and the protected path.
#[derive(Clone)]
pub struct Gateway {
    shared: Arc<Shared>,
    caller: Arc<Caller>,
}

impl Service<Request<Incoming>> for Gateway {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Incoming>) -> Self::Future {
        let (shared, caller) = (self.shared.clone(), self.caller.clone());
        Box::pin(async move { Ok(handle(&shared, &caller, req).await) })
    }
}

fn with_outcome(mut res: Response<Body>, outcome: Outcome) -> Response<Body> {
    res.extensions_mut().insert(outcome);
    res
}

async fn handle(shared: &Shared, caller: &Caller, req: Request<Incoming>) -> Response<Body> {
    let config = shared.config.load_full();
    let path = req.uri().path();
    let endpoint = if path == &*config.tokens.token_path {
        Some(Endpoint::Token)
    } else if path == &*config.tokens.revoke_path {
        Some(Endpoint::Revoke)
    } else if path == &*config.tokens.introspect_path {
        Some(Endpoint::Introspect)
    } else {
        None
    };
    if let Some(endpoint) = endpoint {
        let cx = TokenContext {
            config: &config,
            store: &shared.store,
            metrics: &shared.metrics,
            guard: &shared.guard,
            peer: caller.peer,
        };
        // Sets its own outcome: only it knows which client authenticated. Boxed so the
        // proxied path's future does not carry the token endpoint's much larger one.
        return Box::pin(token::handle(req, endpoint, cx)).await;
    }
    if path == METADATA_PATH {
        let res = token::metadata(&req, &config, caller.proto);
        let mut outcome = Outcome::route(ROUTE_METADATA.into());
        outcome.path = Some(METADATA_PATH.into());
        return with_outcome(res, outcome);
    }
    let mut outcome = Outcome::route(ROUTE_NONE.into());
    match protected(shared, &config, caller, req, &mut outcome).await {
        Ok(res) => with_outcome(res, outcome),
        Err(e) => {
            if let Some(reason) = e.auth_failure_reason() {
                shared
                    .metrics
                    .auth_failures
                    .with_label_values(&[reason])
                    .inc();
            }
            outcome.refusal = Some(e.code());
            with_outcome(e.into_response(), outcome)
        }
    }
}

/// One rate-limit check; over the limit is a 429.
async fn limit(shared: &Shared, key: &Arc<str>, rate: &Rate) -> Result<(), GatewayError> {
    match shared.limiter.check(&shared.store, key, rate).await {
        Verdict::Allowed { .. } => Ok(()),
        Verdict::Limited { retry_after } => Err(GatewayError::RateLimited {
            retry_after,
            limit: rate.burst,
        }),
    }
}

/// Normalize, route, authenticate, check method and scopes, forward. Fills `outcome` as it
/// learns (route, client, path, upstream time) so refusals are logged and counted with it.
async fn protected(
    shared: &Shared,
    config: &Config,
    caller: &Caller,
    req: Request<Incoming>,
    outcome: &mut Outcome,
) -> Result<Response<Body>, GatewayError> {
    let path = normalize(req.uri().path()).map_err(GatewayError::BadPath)?;
    let path: Arc<str> = Arc::from(&*path);
    outcome.path = Some(path.clone());
    let route = config
        .routes
        .find(&path)
        .ok_or(GatewayError::RouteNotFound)?;
    outcome.route = route.id.clone();
    let metrics = &shared.metrics;
    let (res, upstream) = match &route.access {
        Access::Public => {
            if let Some((rate, key)) = &route.rate_limit {
                limit(shared, key, rate).await?;
            }
            let fwd = forwarded(caller, None);
            proxy::forward(route, &path, req, fwd, metrics).await?
        }
        Access::Protected(methods) => {
            let claims = auth::authenticate(req.headers(), &shared.store, config).await?;
            outcome.client = Some(claims.client.id.clone());
            let required = methods
                .for_method(req.method())
                .ok_or_else(|| GatewayError::MethodNotAllowed(methods.allow.clone()))?;
            if !required.scopes.is_subset_of(claims.scopes()) {
                return Err(GatewayError::InsufficientScope(required.challenge.clone()));
            }
            if let Some((rate, key)) = &claims.client.rate_limit {
                limit(shared, key, rate).await?;
            }
            if let Some((rate, key)) = &route.rate_limit {
                limit(shared, key, rate).await?;
            }
            let identity = (&claims.client.id_header, claims.scope_header());
            let fwd = forwarded(caller, Some(identity));
            proxy::forward(route, &path, req, fwd, metrics).await?
        }
    };
    outcome.upstream = Some(upstream);
    Ok(res)
}

/// What the upstream is told about `caller` (the upstream `Host` is the route's to decide).
fn forwarded<'a>(
    caller: &'a Caller,
    identity: Option<(&'a http::HeaderValue, &'a http::HeaderValue)>,
) -> proxy::Forwarded<'a> {
    proxy::Forwarded {
        peer: &caller.peer_header,
        proto: caller.proto,
        upstream_host: None,
        identity,
    }
}
