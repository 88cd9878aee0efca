//! The one place the request path is composed, outermost first:
//!
//! 1. `MetricsLayer` — outermost, so every answer is counted and timed, refusals included.
//! 2. `Gateway` — splits the token endpoint and discovery from everything else, which goes
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

use crate::auth;
use crate::body::Body;
use crate::config::Config;
use crate::error::GatewayError;
use crate::metrics::{Metrics, MetricsLayer, MetricsService, RouteLabel};
use crate::proxy;
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
}

/// The full per-connection service.
pub type GatewayStack = MetricsService<Gateway>;

/// Builds the stack for one connection from `peer`; `proto` is `http` or `https`.
pub fn stack(shared: Arc<Shared>, peer: SocketAddr, proto: &'static str) -> GatewayStack {
    ServiceBuilder::new()
        // Outermost: counts every response, including the gateway's own refusals.
        .layer(MetricsLayer::new(shared.metrics.clone()))
        .service(Gateway {
            shared,
            peer,
            proto,
        })
}

/// Token endpoint, discovery, and the protected path.
#[derive(Clone)]
pub struct Gateway {
    shared: Arc<Shared>,
    peer: SocketAddr,
    proto: &'static str,
}

impl Service<Request<Incoming>> for Gateway {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Incoming>) -> Self::Future {
        let shared = self.shared.clone();
        let (peer, proto) = (self.peer, self.proto);
        Box::pin(async move { Ok(handle(&shared, peer, proto, req).await) })
    }
}

fn labelled(mut res: Response<Body>, label: Arc<str>) -> Response<Body> {
    res.extensions_mut().insert(RouteLabel(label));
    res
}

async fn handle(
    shared: &Shared,
    peer: SocketAddr,
    proto: &'static str,
    req: Request<Incoming>,
) -> Response<Body> {
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
            peer,
        };
        let res = token::handle(req, endpoint, cx).await;
        return labelled(res, Arc::from(crate::metrics::ROUTE_TOKEN));
    }
    if path == METADATA_PATH {
        let res = token::metadata(&req, &config, proto);
        return labelled(res, Arc::from(crate::metrics::ROUTE_METADATA));
    }
    match protected(shared, &config, peer, proto, req).await {
        Ok(res) => res,
        Err((e, route)) => {
            if let Some(reason) = e.auth_failure_reason() {
                shared
                    .metrics
                    .auth_failures
                    .with_label_values(&[reason])
                    .inc();
            }
            let res = e.into_response();
            match route {
                Some(label) => labelled(res, label),
                None => res,
            }
        }
    }
}

type Refusal = (GatewayError, Option<Arc<str>>);

async fn protected(
    shared: &Shared,
    config: &Config,
    peer: SocketAddr,
    proto: &'static str,
    req: Request<Incoming>,
) -> Result<Response<Body>, Refusal> {
    let path = normalize(req.uri().path())
        .map_err(|e| (GatewayError::BadPath(e), None))?
        .into_owned();
    let route = config
        .routes
        .find(&path)
        .ok_or((GatewayError::RouteNotFound, None))?;
    let label = || Some(route.id.clone());
    let res = match &route.access {
        Access::Public => proxy::forward(route, &path, req, peer, proto, None).await,
        Access::Protected(methods) => {
            let claims = auth::authenticate(req.headers(), &shared.store, config)
                .await
                .map_err(|e| (e, label()))?;
            let required = methods.for_method(req.method()).ok_or_else(|| {
                (
                    GatewayError::MethodNotAllowed(methods.allow.clone()),
                    label(),
                )
            })?;
            if !required.scopes.is_subset_of(claims.scopes()) {
                return Err((
                    GatewayError::InsufficientScope(required.challenge.clone()),
                    label(),
                ));
            }
            let identity = (&claims.client.id_header, claims.scope_header());
            proxy::forward(route, &path, req, peer, proto, Some(identity)).await
        }
    };
    res.map(|r| labelled(r, route.id.clone()))
        .map_err(|e| (e, label()))
}
