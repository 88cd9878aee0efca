//! Prometheus metric families, built once at start-up and handed to the layers that record
//! them. Label values come only from config (route and client ids) or small fixed sets, never
//! from the raw request, so a scanner cannot grow the number of series.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use http::{Method, Request, Response};
use pin_project_lite::pin_project;
use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use tower::{Layer, Service};

use crate::access_log::Outcome;

/// The `route` label of requests that matched no route.
pub const ROUTE_NONE: &str = "none";
/// The `route` label of token endpoint requests.
pub const ROUTE_TOKEN: &str = "token";
/// The `route` label of the discovery document.
pub const ROUTE_METADATA: &str = "metadata";

/// Request-latency buckets for a proxy: fine below a millisecond, up to a minute.
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0,
];

/// Every auth failure reason, pre-registered so dashboards see zeros, not gaps.
pub const AUTH_FAILURE_REASONS: [&str; 4] = [
    "missing_token",
    "malformed_token",
    "invalid_token",
    "insufficient_scope",
];

/// Every token endpoint error code.
pub const TOKEN_ERRORS: [&str; 4] = [
    "invalid_request",
    "invalid_client",
    "unsupported_grant_type",
    "invalid_scope",
];

/// The gateway's metric families.
#[derive(Clone, Debug)]
pub struct Metrics {
    registry: Registry,
    /// `portcullis_requests_total{route,method,status}`.
    pub requests: IntCounterVec,
    /// `portcullis_request_duration_seconds{route}`.
    pub duration: HistogramVec,
    /// `portcullis_tokens_issued_total{client}`.
    pub tokens_issued: IntCounterVec,
    /// `portcullis_token_errors_total{error}`.
    pub token_errors: IntCounterVec,
    /// `portcullis_auth_failures_total{reason}`.
    pub auth_failures: IntCounterVec,
    /// `portcullis_secret_cache_total{result}`: argon2id client secrets found already verified
    /// (`hit`) or checked with argon2 (`miss`).
    pub secret_cache: IntCounterVec,
    /// `portcullis_live_tokens{client}`, refreshed by a background task.
    pub live_tokens: IntGaugeVec,
    /// `portcullis_inflight_requests`.
    pub inflight: IntGauge,
    /// `portcullis_open_connections{listener}`.
    pub open_connections: IntGaugeVec,
    /// `portcullis_upstream_duration_seconds{route}`: time to the upstream's response head.
    pub upstream_duration: HistogramVec,
    /// `portcullis_upstream_errors_total{route,kind}`: refused, reset, timeout, tls.
    pub upstream_errors: IntCounterVec,
    /// `portcullis_store_duration_seconds{op}`: Redis command latency.
    pub store_duration: HistogramVec,
    /// `portcullis_store_errors_total{kind}`: timeout, connection, corrupt.
    pub store_errors: IntCounterVec,
    /// `portcullis_token_cache_total{result}`: hit, miss, negative_hit, stale.
    pub token_cache: IntCounterVec,
    /// `portcullis_revocations_total`: tokens revoked by this replica.
    pub revocations: IntCounter,
    /// `portcullis_revocation_lag_seconds`: from a revocation's publication to its eviction here.
    pub revocation_lag: Histogram,
    /// `portcullis_client_secret_last_used_timestamp_seconds{client,secret}`.
    pub secret_last_used: prometheus::GaugeVec,
    /// `portcullis_config_reloads_total{result}`: ok, error.
    pub config_reloads: IntCounterVec,
    /// `portcullis_config_generation`: bumps on every applied config.
    pub config_generation: IntGauge,
    /// `portcullis_config_last_reload_success_timestamp_seconds`.
    pub config_last_reload: Gauge,
    /// `portcullis_otel_export_errors_total`: span batches the collector did not take (their
    /// spans are dropped). Only in builds with the `otel` feature.
    #[cfg(feature = "otel")]
    pub otel_export_errors: IntCounter,
}

impl Metrics {
    /// Builds and registers every family.
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "portcullis_requests_total",
                "Requests answered, by route id, method, status and client id (or anonymous).",
            ),
            &["route", "method", "status", "client"],
        )
        .expect("valid metric");
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "portcullis_request_duration_seconds",
                "Time from request head to response head, by route id.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["route"],
        )
        .expect("valid metric");
        let tokens_issued = IntCounterVec::new(
            Opts::new(
                "portcullis_tokens_issued_total",
                "Access tokens issued, by client id.",
            ),
            &["client"],
        )
        .expect("valid metric");
        let token_errors = IntCounterVec::new(
            Opts::new(
                "portcullis_token_errors_total",
                "Token endpoint refusals, by RFC 6749 error code.",
            ),
            &["error"],
        )
        .expect("valid metric");
        let auth_failures = IntCounterVec::new(
            Opts::new(
                "portcullis_auth_failures_total",
                "Protected requests refused by bearer authentication, by reason.",
            ),
            &["reason"],
        )
        .expect("valid metric");
        let secret_cache = IntCounterVec::new(
            Opts::new(
                "portcullis_secret_cache_total",
                "Token requests with an argon2id client secret: already verified in this config \
                 (hit) or checked with argon2 (miss).",
            ),
            &["result"],
        )
        .expect("valid metric");
        let live_tokens = IntGaugeVec::new(
            Opts::new(
                "portcullis_live_tokens",
                "Live tokens per client (refreshed every few seconds).",
            ),
            &["client"],
        )
        .expect("valid metric");
        let inflight = IntGauge::new(
            "portcullis_inflight_requests",
            "Requests being answered right now.",
        )
        .expect("valid metric");
        let open_connections = IntGaugeVec::new(
            Opts::new(
                "portcullis_open_connections",
                "Open client connections, by listener (public, admin).",
            ),
            &["listener"],
        )
        .expect("valid metric");
        let upstream_duration = HistogramVec::new(
            HistogramOpts::new(
                "portcullis_upstream_duration_seconds",
                "Time from sending to the upstream to its response head, by route id.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["route"],
        )
        .expect("valid metric");
        let upstream_errors = IntCounterVec::new(
            Opts::new(
                "portcullis_upstream_errors_total",
                "Upstream failures before a response head, by route id and kind (refused, reset, timeout, tls).",
            ),
            &["route", "kind"],
        )
        .expect("valid metric");
        let build_info = IntGaugeVec::new(
            Opts::new(
                "portcullis_build_info",
                "Always 1; the version is in the label.",
            ),
            &["version"],
        )
        .expect("valid metric");
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        let store_duration = HistogramVec::new(
            HistogramOpts::new(
                "portcullis_store_duration_seconds",
                "Token store (Redis) command latency, by operation.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["op"],
        )
        .expect("valid metric");
        let store_errors = IntCounterVec::new(
            Opts::new(
                "portcullis_store_errors_total",
                "Token store failures, by kind (timeout, connection, corrupt).",
            ),
            &["kind"],
        )
        .expect("valid metric");
        let token_cache = IntCounterVec::new(
            Opts::new(
                "portcullis_token_cache_total",
                "In-process token cache lookups in front of Redis, by result.",
            ),
            &["result"],
        )
        .expect("valid metric");
        let revocations = IntCounter::new(
            "portcullis_revocations_total",
            "Tokens revoked by this replica (endpoint, max_live_tokens, revoke command).",
        )
        .expect("valid metric");
        let revocation_lag = Histogram::with_opts(
            HistogramOpts::new(
                "portcullis_revocation_lag_seconds",
                "Time from a revocation being published to its eviction from this replica's cache.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
        )
        .expect("valid metric");
        let secret_last_used = prometheus::GaugeVec::new(
            Opts::new(
                "portcullis_client_secret_last_used_timestamp_seconds",
                "Unix time a client last authenticated with each of its secrets (0: not since start); \
                 `secret` is the first 8 hex digits of the hash's fingerprint.",
            ),
            &["client", "secret"],
        )
        .expect("valid metric");
        let config_reloads = IntCounterVec::new(
            Opts::new(
                "portcullis_config_reloads_total",
                "Config reload attempts, by result (ok, error).",
            ),
            &["result"],
        )
        .expect("valid metric");
        let config_generation = IntGauge::new(
            "portcullis_config_generation",
            "Number of config snapshots applied since start (1 = the initial one).",
        )
        .expect("valid metric");
        let config_last_reload = Gauge::new(
            "portcullis_config_last_reload_success_timestamp_seconds",
            "Unix time of the last successfully applied config.",
        )
        .expect("valid metric");
        #[cfg(feature = "otel")]
        let otel_export_errors = IntCounter::new(
            "portcullis_otel_export_errors_total",
            "Span batches the OpenTelemetry collector did not take (unreachable, timed out or refused); their spans are dropped.",
        )
        .expect("valid metric");
        #[cfg(feature = "otel")]
        registry
            .register(Box::new(otel_export_errors.clone()))
            .expect("metric names are unique");
        for c in [
            Box::new(config_reloads.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(secret_last_used.clone()),
            Box::new(config_generation.clone()),
            Box::new(config_last_reload.clone()),
            Box::new(store_duration.clone()),
            Box::new(store_errors.clone()),
            Box::new(token_cache.clone()),
            Box::new(revocations.clone()),
            Box::new(revocation_lag.clone()),
            Box::new(requests.clone()),
            Box::new(duration.clone()),
            Box::new(tokens_issued.clone()),
            Box::new(token_errors.clone()),
            Box::new(auth_failures.clone()),
            Box::new(secret_cache.clone()),
            Box::new(live_tokens.clone()),
            Box::new(inflight.clone()),
            Box::new(open_connections.clone()),
            Box::new(upstream_duration.clone()),
            Box::new(upstream_errors.clone()),
            Box::new(build_info),
        ] {
            registry.register(c).expect("metric names are unique");
        }
        for r in AUTH_FAILURE_REASONS {
            auth_failures.with_label_values(&[r]);
        }
        for e in TOKEN_ERRORS {
            token_errors.with_label_values(&[e]);
        }
        for r in ["ok", "error"] {
            config_reloads.with_label_values(&[r]);
        }
        for k in ["timeout", "connection", "corrupt"] {
            store_errors.with_label_values(&[k]);
        }
        for r in ["hit", "miss", "negative_hit", "stale"] {
            token_cache.with_label_values(&[r]);
        }
        for r in ["hit", "miss"] {
            secret_cache.with_label_values(&[r]);
        }
        Metrics {
            registry,
            requests,
            duration,
            tokens_issued,
            token_errors,
            auth_failures,
            secret_cache,
            live_tokens,
            inflight,
            open_connections,
            upstream_duration,
            upstream_errors,
            store_duration,
            store_errors,
            token_cache,
            revocations,
            revocation_lag,
            secret_last_used,
            config_reloads,
            config_generation,
            config_last_reload,
            #[cfg(feature = "otel")]
            otel_export_errors,
        }
    }

    /// Creates the per-client series at zero, so a dashboard lists every client and secret.
    pub fn register_clients<'a>(
        &self,
        clients: impl IntoIterator<Item = &'a crate::config::Client>,
    ) {
        for c in clients {
            self.tokens_issued.with_label_values(&[&c.id]);
            self.live_tokens.with_label_values(&[&c.id]);
            for s in &c.secrets {
                self.secret_last_used.with_label_values(&[&c.id, &s.label]);
            }
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 * 1024);
        // Encoding into a Vec cannot fail.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// The `method` label: the standard methods by name, anything else as `other`.
pub fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        Method::TRACE => "TRACE",
        Method::CONNECT => "CONNECT",
        _ => "other",
    }
}

/// Counts and times every request, by the route label the inner service puts on the response.
#[derive(Clone, Debug)]
pub struct MetricsLayer {
    metrics: Arc<Metrics>,
}

impl MetricsLayer {
    /// A layer recording into `metrics`.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        MetricsLayer { metrics }
    }
}

impl<S> Layer<S> for MetricsLayer {
    type Service = MetricsService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        MetricsService {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// See [`MetricsLayer`].
#[derive(Clone, Debug)]
pub struct MetricsService<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

impl<S, B, RB> Service<Request<B>> for MetricsService<S>
where
    S: Service<Request<B>, Response = Response<RB>>,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        self.metrics.inflight.inc();
        ResponseFuture {
            method: method_label(req.method()),
            start: Instant::now(),
            inflight: InflightGuard(self.metrics.clone()),
            inner: self.inner.call(req),
        }
    }
}

/// Counts a request in flight until its response head is out (or the caller went away).
pub struct InflightGuard(Arc<Metrics>);

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.0.inflight.dec();
    }
}

pin_project! {
    /// Records when the inner service yields its response head.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        method: &'static str,
        start: Instant,
        inflight: InflightGuard,
    }
}

impl<F, RB, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<RB>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let out = std::task::ready!(this.inner.poll(cx));
        if let Ok(res) = &out {
            let outcome = res.extensions().get::<Outcome>();
            let route = outcome.map(|o| &*o.route).unwrap_or(ROUTE_NONE);
            let client = outcome
                .and_then(|o| o.client.as_deref())
                .unwrap_or("anonymous");
            let metrics = &this.inflight.0;
            metrics
                .requests
                .with_label_values(&[route, this.method, res.status().as_str(), client])
                .inc();
            metrics
                .duration
                .with_label_values(&[route])
                .observe(this.start.elapsed().as_secs_f64());
        }
        Poll::Ready(out)
    }
}
