//! Forwarding to the upstream: URI rewrite, header hygiene, a pooled keep-alive client, and
//! bodies streamed both ways (never buffered whole). An upstream that fails mid-body makes
//! the caller's response fail too: the error travels in the body stream, so hyper aborts the
//! connection instead of ending the response cleanly.

pub mod headers;
pub mod pool;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use http::header::{CONNECTION, LOCATION, UPGRADE};
use http::uri::{Authority, PathAndQuery, Scheme, Uri};
use http::StatusCode;
use http::{HeaderValue, Request, Response, Version};
use http_body_util::Either;
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::RootCertStore;

use crate::body::Body;
use crate::error::GatewayError;
use crate::metrics::Metrics;
use crate::route::Route;

pub use headers::{rewrite_request, strip_hop_by_hop, Forwarded};
pub use pool::{Http1Pool, UpstreamBody};

/// The upstream clients of one set of trust roots and one protocol.
pub struct UpstreamClient {
    /// hyper-util's pooled client: HTTP/2 upstreams and protocol upgrades.
    legacy: Client<HttpsConnector<HttpConnector>, CallerBody>,
    /// What the HTTP/1.1 pools dial with (`None` for an HTTP/2 client).
    connector: Option<HttpsConnector<HttpConnector>>,
    /// One pool per origin, shared by the routes of every live config (so a reload keeps
    /// the connections of unchanged upstreams), and gone with the last route using it.
    pools: Mutex<HashMap<Uri, Weak<Http1Pool>>>,
}

impl std::fmt::Debug for UpstreamClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamClient")
            .field("http2", &self.connector.is_none())
            .finish_non_exhaustive()
    }
}

impl UpstreamClient {
    /// The HTTP/1.1 pool for `scheme://authority`; `None` when this client speaks HTTP/2.
    pub fn pool(&self, scheme: &Scheme, authority: &Authority) -> Option<Arc<Http1Pool>> {
        let connector = self.connector.as_ref()?;
        let origin = Uri::builder()
            .scheme(scheme.clone())
            .authority(authority.clone())
            .path_and_query("/")
            .build()
            .ok()?;
        let mut pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(pool) = pools.get(&origin).and_then(Weak::upgrade) {
            return Some(pool);
        }
        pools.retain(|_, p| p.strong_count() > 0);
        let pool = Arc::new(Http1Pool::new(connector.clone(), origin.clone()));
        pools.insert(origin, Arc::downgrade(&pool));
        Some(pool)
    }
}

pin_project_lite::pin_project! {
    /// The caller's request body on its way upstream, remembering whether it failed: a
    /// malformed or cut-off body is the caller's fault (400), not the upstream's (502).
    pub struct CallerBody {
        #[pin]
        inner: Incoming,
        failed: Arc<AtomicBool>,
    }
}

impl CallerBody {
    /// Wraps a caller's body, with its own failure flag.
    pub fn new(inner: Incoming) -> CallerBody {
        CallerBody {
            inner,
            failed: Arc::default(),
        }
    }
}

impl http_body::Body for CallerBody {
    type Data = bytes::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, hyper::Error>>> {
        let this = self.project();
        let out = this.inner.poll_frame(cx);
        if let std::task::Poll::Ready(Some(Err(_))) = &out {
            this.failed.store(true, Ordering::Release);
        }
        out
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// What distinguishes one upstream client from another: its trust roots and protocol.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ClientKey {
    /// SHA-256 of the CA file's contents, or `None` for the system roots.
    pub ca: Option<[u8; 32]>,
    /// HTTP/2 to the upstream (h2c prior knowledge on http, ALPN h2 on https).
    pub http2: bool,
}

/// Clients live across reloads, so a reload keeps the pools of unchanged upstreams warm.
static CLIENTS: OnceLock<Mutex<HashMap<ClientKey, Arc<UpstreamClient>>>> = OnceLock::new();

/// The shared client for `key`, built on first use with `roots` (the CA's store).
pub fn client_for(key: ClientKey, roots: Option<&RootCertStore>) -> Arc<UpstreamClient> {
    let clients = CLIENTS.get_or_init(Mutex::default);
    let mut clients = clients.lock().unwrap_or_else(|p| p.into_inner());
    clients
        .entry(key.clone())
        .or_insert_with(|| Arc::new(build_client(key.http2, roots)))
        .clone()
}

/// Builds an upstream client: keep-alive pool, `TCP_NODELAY`, bounded connect time, https
/// verified against `roots` or the system's roots.
fn build_client(http2: bool, roots: Option<&RootCertStore>) -> UpstreamClient {
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http.set_connect_timeout(Some(Duration::from_secs(5)));
    http.enforce_http(false);
    let tls = crate::tls::upstream_client_config(roots);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http();
    let https = if http2 {
        https.enable_http2().wrap_connector(http)
    } else {
        https.enable_http1().wrap_connector(http)
    };
    let legacy = Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(512)
        .http2_only(http2)
        // Only a request that was never written is retried (hyper-util returns it unsent),
        // so this is safe for non-idempotent methods too.
        .retry_canceled_requests(true)
        .build(https.clone());
    UpstreamClient {
        legacy,
        connector: (!http2).then_some(https),
        pools: Mutex::default(),
    }
}

/// Forwards `req` to `route`'s upstream with `path` (normalized) as the authorized path;
/// `fwd` says who the caller is (its `upstream_host` is filled in from the route).
pub async fn forward(
    route: &Route,
    path: &str,
    mut req: Request<Incoming>,
    mut fwd: Forwarded<'_>,
    metrics: &Metrics,
) -> Result<(Response<Body>, Duration), GatewayError> {
    let mut target = route.upstream_path(path);
    if let Some(q) = req.uri().query() {
        target.push('?');
        target.push_str(q);
    }
    let pq = PathAndQuery::try_from(target)
        .map_err(|_| GatewayError::InvalidRequest("the request target is not valid"))?;
    // HTTP/2 callers carry the host in the URI, not in a Host header.
    if !req.headers().contains_key(http::header::HOST) {
        if let Some(a) = req
            .uri()
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        {
            req.headers_mut().insert(http::header::HOST, a);
        }
    }
    // An upgrade is taken over from hyper before the headers that ask for it are stripped,
    // then asked for again, upstream, in the gateway's own words.
    let upgrade = (route.websocket && is_upgrade(req.headers()))
        .then(|| {
            let protocol = req.headers().get(UPGRADE).cloned()?;
            Some((hyper::upgrade::on(&mut req), protocol))
        })
        .flatten();
    // HTTP/1.1 over a leased connection takes the origin form; hyper-util's client wants the
    // absolute URI to pick its pool.
    let pool = route.pool.as_ref().filter(|_| upgrade.is_none());
    *req.uri_mut() = if pool.is_some() {
        Uri::from(pq)
    } else {
        Uri::builder()
            .scheme(route.upstream.scheme.clone())
            .authority(route.upstream.authority.clone())
            .path_and_query(pq)
            .build()
            .map_err(|_| GatewayError::InvalidRequest("the request target is not valid"))?
    };
    *req.version_mut() = if route.upstream_http2 {
        Version::HTTP_2
    } else {
        Version::HTTP_11
    };
    let caller_host = req.headers().get(http::header::HOST).cloned();
    let proto = fwd.proto;
    fwd.upstream_host = (!route.preserve_host).then_some(&route.upstream.host);
    rewrite_request(req.headers_mut(), fwd);
    if !req.headers().contains_key(http::header::HOST) {
        // An HTTP/1.0 caller without Host, with preserve_host: HTTP/1.1 needs one.
        req.headers_mut()
            .insert(http::header::HOST, route.upstream.host.clone());
    }
    if let Some((_, protocol)) = &upgrade {
        req.headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("upgrade"));
        req.headers_mut().insert(UPGRADE, protocol.clone());
    }

    let caller_failed = Arc::new(AtomicBool::new(false));
    let req = req.map(|inner| CallerBody {
        inner,
        failed: caller_failed.clone(),
    });
    let start = Instant::now();
    let sent = match pool {
        Some(pool) => {
            tokio::time::timeout(route.timeout, async {
                pool.send(req).await.map_err(|e| {
                    let connect = matches!(e, pool::SendError::Connect(_));
                    (error_kind(&e, connect), e.to_string())
                })
            })
            .await
        }
        None => {
            tokio::time::timeout(route.timeout, async {
                match Box::pin(route.client.legacy.request(req)).await {
                    Ok(res) => Ok(res.map(UpstreamBody::unleased)),
                    Err(e) => Err((error_kind(&e, e.is_connect()), e.to_string())),
                }
            })
            .await
        }
    };
    let upstream = start.elapsed();
    let failed = |kind: &'static str| {
        metrics
            .upstream_errors
            .with_label_values(&[&route.id, kind])
            .inc();
    };
    let res = match sent {
        Err(_) => {
            failed("timeout");
            tracing::warn!(route = %route.id, "upstream timed out");
            return Err(GatewayError::UpstreamTimeout);
        }
        Ok(Err((_, e))) if caller_failed.load(Ordering::Acquire) => {
            tracing::debug!(route = %route.id, error = %e, "the caller's request body failed");
            return Err(GatewayError::InvalidRequest(
                "the request body is malformed or was cut off",
            ));
        }
        Ok(Err((kind, e))) => {
            failed(kind);
            tracing::warn!(route = %route.id, error = %e, "upstream request failed");
            return Err(GatewayError::UpstreamUnavailable);
        }
        Ok(Ok(res)) => res,
    };
    metrics
        .upstream_duration
        .with_label_values(&[&route.id])
        .observe(upstream.as_secs_f64());
    let mut res = res.map(Either::Left);
    let upstream_protocol = res.headers().get(UPGRADE).cloned();
    strip_hop_by_hop(res.headers_mut());
    if let (Some((client_side, _)), StatusCode::SWITCHING_PROTOCOLS, Some(protocol)) =
        (upgrade, res.status(), upstream_protocol)
    {
        let upstream_side = hyper::upgrade::on(&mut res);
        res.headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("upgrade"));
        res.headers_mut().insert(UPGRADE, protocol);
        let id = route.id.clone();
        tokio::spawn(async move {
            match tokio::join!(client_side, upstream_side) {
                (Ok(c), Ok(u)) => {
                    let (mut c, mut u) = (TokioIo::new(c), TokioIo::new(u));
                    if let Err(e) = tokio::io::copy_bidirectional(&mut c, &mut u).await {
                        tracing::debug!(route = %id, error = %e, "upgraded connection ended");
                    }
                }
                (c, u) => tracing::debug!(
                    route = %id,
                    client = c.is_ok(),
                    upstream = u.is_ok(),
                    "upgrade did not complete"
                ),
            }
        });
    }
    // Absolute redirects into the upstream would send the caller around the gateway.
    let public = res
        .headers()
        .get(LOCATION)
        .and_then(|l| l.to_str().ok())
        .zip(caller_host.as_ref().and_then(|h| h.to_str().ok()))
        .and_then(|(l, host)| route.public_location(l, proto, host))
        .and_then(|l| HeaderValue::from_str(&l).ok());
    if let Some(l) = public {
        res.headers_mut().insert(LOCATION, l);
    }
    Ok((res, upstream))
}

/// `Connection: upgrade` with an `Upgrade` header: an HTTP/1.1 protocol switch request.
fn is_upgrade(headers: &http::HeaderMap) -> bool {
    headers.contains_key(UPGRADE)
        && headers
            .get_all(CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// The `kind` label of an upstream failure before its response head; `connect` when no
/// connection could be made.
fn error_kind(e: &(dyn std::error::Error + 'static), connect: bool) -> &'static str {
    let mut source = Some(e);
    while let Some(s) = source {
        if s.is::<rustls::Error>() {
            return "tls";
        }
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            if io
                .get_ref()
                .is_some_and(|inner| inner.is::<rustls::Error>())
            {
                return "tls";
            }
        }
        source = s.source();
    }
    if connect {
        "refused"
    } else {
        "reset"
    }
}
