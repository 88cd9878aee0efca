//! OpenTelemetry traces (feature `otel`): one SERVER span per request, parented to the
//! caller's W3C `traceparent` when it is well formed, ended when the response body ends, and
//! exported in batches over OTLP/HTTP (JSON) from the gateway's own tokio runtime. The
//! upstream gets a `traceparent` naming the gateway's span, so the trace tree connects;
//! `tracestate` goes on as the caller sent it.
//!
//! A span carries what the access log carries, plus the caller's address (`client.address`)
//! and its `tracestate`: the method, the normalized path (never the query), the route and
//! client ids, the refusal code, the request id, the status, sizes and times. No header but `traceparent` and `tracestate` is read, so never a
//! token, a secret or an `Authorization` value.
//!
//! Export stays off the request path: an ended span goes into a bounded queue (dropped when
//! it is full), and a collector that is down or slow only costs failed exports in the
//! background, counted in `portcullis_otel_export_errors_total` and warned about at most once
//! a minute.

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, Version};
use hyper_util::client::legacy::connect::HttpConnector;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{
    Span as _, SpanKind, Status, TraceContextExt, Tracer as _, TracerProvider as _,
};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_http::hyper::HyperClient;
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor;
use opentelemetry_sdk::trace::{
    SdkTracer, SdkTracerProvider, ShouldSample, SpanData, SpanExporter,
};
use opentelemetry_sdk::Resource;
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use crate::access_log::Outcome;
use crate::body::{OnEnd, Watched};
use crate::config::OtelSettings;
use crate::metrics::{method_label, Metrics, ROUTE_NONE};
use crate::request_id::RequestId;

const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// A failed export is warned about at most this often (the counter counts every one).
const WARN_EVERY_MS: u64 = 60_000;

/// The tracer and its batch exporter, built once at start and shared by every connection.
pub struct Traces {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    propagator: TraceContextPropagator,
    timeout: Duration,
}

impl Traces {
    /// Starts exporting to `settings.traces_url`, or `Ok(None)` when there is none. Must run
    /// inside the tokio runtime: the batch processor is a task on it.
    pub fn start(
        settings: &OtelSettings,
        metrics: &Metrics,
    ) -> Result<Option<Arc<Traces>>, String> {
        let Some(url) = settings.traces_url.as_deref() else {
            return Ok(None);
        };
        // The gateway's own connector: https collectors are verified against the system
        // roots, as https upstreams are.
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(settings.timeout));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(crate::tls::upstream_client_config(None))
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpJson)
            .with_endpoint(url)
            .with_timeout(settings.timeout)
            .with_http_client(HyperClient::new(https, settings.timeout, None))
            .build()
            .map_err(|e| format!("cannot set up the OTLP exporter: {e}"))?;
        let exporter = Counted {
            inner: exporter,
            errors: metrics.otel_export_errors.clone(),
            last_warn_ms: AtomicU64::new(0),
        };
        let processor =
            BatchSpanProcessor::builder(exporter, opentelemetry_sdk::runtime::Tokio).build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            // The gateway decides, not the caller: a caller's sampled flag or a trace id chosen
            // to hash low must not force (or avoid) export.
            .with_sampler(LocalRatio(settings.sample_ratio))
            .with_resource(
                Resource::builder()
                    .with_service_name(settings.service_name.to_string())
                    .build(),
            )
            .build();
        let tracer = provider.tracer_with_scope(
            InstrumentationScope::builder("portcullis")
                .with_version(env!("CARGO_PKG_VERSION"))
                .build(),
        );
        Ok(Some(Arc::new(Traces {
            provider,
            tracer,
            propagator: TraceContextPropagator::new(),
            timeout: settings.timeout,
        })))
    }

    /// Exports the spans still queued, waiting at most the export timeout (a dead collector
    /// must not hold up the exit). Call once, after the connections have drained.
    pub async fn shutdown(&self) {
        let provider = self.provider.clone();
        // The SDK's shutdown blocks its thread until the batch task, which runs on this
        // runtime, has exported: not on a worker.
        let flush = tokio::task::spawn_blocking(move || provider.shutdown());
        match tokio::time::timeout(self.timeout + Duration::from_secs(1), flush).await {
            Ok(Ok(Ok(()))) => tracing::debug!("trace export flushed"),
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "last spans not exported at shutdown"),
            Ok(Err(_)) | Err(_) => {
                tracing::warn!("last spans not exported at shutdown: the collector took too long")
            }
        }
    }

    /// Starts the request's span, as a child of the caller's well-formed `traceparent` or as
    /// a new trace, and names it to the upstream as the parent.
    fn begin<B>(&self, req: &mut Request<B>, peer: IpAddr, proto: &'static str) -> Started {
        let parent = self.propagator.extract(&Caller(req.headers()));
        let continued = parent.span().span_context().is_valid();
        let method = method_name(req.method());
        let mut attributes = Vec::with_capacity(12);
        attributes.push(KeyValue::new("http.request.method", method));
        attributes.push(KeyValue::new("url.scheme", proto));
        attributes.push(KeyValue::new("client.address", peer.to_string()));
        attributes.push(KeyValue::new(
            "network.protocol.version",
            protocol_version(req.version()),
        ));
        if let Some(id) = req.extensions().get::<RequestId>() {
            // Request ids are checked or generated as plain ASCII.
            if let Ok(id) = id.0.to_str() {
                attributes.push(KeyValue::new("portcullis.request_id", id.to_string()));
            }
        }
        let builder = self
            .tracer
            .span_builder(span_name(method))
            .with_kind(SpanKind::Server)
            .with_attributes(attributes);
        let span = self.tracer.build_with_context(builder, &parent);
        let own =
            opentelemetry::Context::new().with_remote_span_context(span.span_context().clone());
        let headers = req.headers_mut();
        self.propagator.inject_context(&own, &mut Upstream(headers));
        if !continued {
            // W3C trace context: a tracestate belongs to the traceparent it came with, and
            // this request starts a new trace.
            headers.remove(TRACESTATE);
        }
        Started { span, method }
    }
}

/// Reads the caller's trace context for the propagator, which checks versions, flags and
/// all-zero ids but takes ids of any length: the exact shape is checked here first. One
/// `traceparent` line only: two are not well formed.
struct Caller<'a>(&'a HeaderMap);

impl Extractor for Caller<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        let mut values = self.0.get_all(key).iter();
        let value = match (values.next(), values.next()) {
            (Some(v), None) => v.to_str().ok()?,
            _ => return None,
        };
        (key != TRACEPARENT.as_str() || has_traceparent_shape(value)).then_some(value)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

/// `version-traceid-parentid-flags` in lowercase hex of 2, 32, 16 and 2 digits; more fields
/// only after a version above `00` (W3C trace context 3.2, 4.3).
fn has_traceparent_shape(v: &str) -> bool {
    let b = v.as_bytes();
    let hex = |r: std::ops::Range<usize>| {
        b[r].iter()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c))
    };
    b.len() >= 55
        && hex(0..2)
        && b[2] == b'-'
        && hex(3..35)
        && b[35] == b'-'
        && hex(36..52)
        && b[52] == b'-'
        && hex(53..55)
        && (b.len() == 55 || (b[55] == b'-' && &b[..2] != b"00"))
}

/// Writes the gateway's `traceparent` for the upstream; `tracestate` is left as it came.
struct Upstream<'a>(&'a mut HeaderMap);

impl Injector for Upstream<'_> {
    fn set(&mut self, key: &str, value: String) {
        if key == TRACEPARENT.as_str() {
            if let Ok(v) = HeaderValue::try_from(value) {
                self.0.insert(TRACEPARENT, v);
            }
        }
    }
}

/// `http.request.method`: a known method by name, anything else `_OTHER` (semantic
/// conventions; a caller cannot grow the set of values).
fn method_name(m: &Method) -> &'static str {
    match method_label(m) {
        "other" => "_OTHER",
        known => known,
    }
}

/// The span's name until the route is known; `HTTP` for a method outside the known set.
fn span_name(method: &'static str) -> &'static str {
    if method == "_OTHER" {
        "HTTP"
    } else {
        method
    }
}

fn protocol_version(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "0.9",
        Version::HTTP_10 => "1.0",
        Version::HTTP_2 => "2",
        Version::HTTP_3 => "3",
        _ => "1.1",
    }
}

/// A span waiting for its response head.
struct Started {
    span: opentelemetry_sdk::trace::Span,
    method: &'static str,
}

impl Started {
    /// Names the span by its route and records what the gateway decided.
    fn respond<B>(mut self, res: &Response<B>) -> SpanEnd {
        let span = &mut self.span;
        if !span.is_recording() {
            return SpanEnd(self.span);
        }
        let status = res.status();
        span.set_attribute(KeyValue::new(
            "http.response.status_code",
            i64::from(status.as_u16()),
        ));
        if let Some(o) = res.extensions().get::<Outcome>() {
            if &*o.route != ROUTE_NONE {
                // Route ids come from the config: a low-cardinality name.
                span.update_name(format!("{} {}", span_name(self.method), o.route));
                span.set_attribute(KeyValue::new("http.route", o.route.clone()));
            }
            if let Some(path) = &o.path {
                span.set_attribute(KeyValue::new("url.path", path.clone()));
            }
            if let Some(client) = &o.client {
                span.set_attribute(KeyValue::new("portcullis.client", client.clone()));
            }
            if let Some(refusal) = o.refusal {
                span.set_attribute(KeyValue::new("portcullis.refusal", refusal));
            }
            if let Some(upstream) = o.upstream {
                span.set_attribute(KeyValue::new(
                    "portcullis.upstream.duration_ms",
                    upstream.as_secs_f64() * 1000.0,
                ));
            }
        }
        if status.is_server_error() {
            span.set_attribute(KeyValue::new("error.type", status.as_str().to_string()));
            span.set_status(Status::error(status.canonical_reason().unwrap_or("")));
        }
        SpanEnd(self.span)
    }
}

/// Ends the span when the response body ends.
pub struct SpanEnd(opentelemetry_sdk::trace::Span);

impl OnEnd for SpanEnd {
    fn on_end(mut self, bytes: u64, completed: bool) {
        if self.0.is_recording() {
            self.0.set_attribute(KeyValue::new(
                "http.response.body.size",
                i64::try_from(bytes).unwrap_or(i64::MAX),
            ));
            self.0
                .set_attribute(KeyValue::new("portcullis.completed", completed));
        }
        self.0.end();
    }
}

/// The OTLP exporter, counting the batches it fails to deliver.
#[derive(Debug)]
struct Counted<E> {
    inner: E,
    errors: prometheus::IntCounter,
    last_warn_ms: AtomicU64,
}

impl<E: SpanExporter> SpanExporter for Counted<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let spans = batch.len();
        let result = self.inner.export(batch).await;
        if let Err(e) = &result {
            self.errors.inc();
            let now = crate::store::now_ms();
            let last = self.last_warn_ms.load(Ordering::Relaxed);
            if now.saturating_sub(last) >= WARN_EVERY_MS
                && self
                    .last_warn_ms
                    .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
            {
                tracing::warn!(
                    error = %e,
                    spans,
                    "OpenTelemetry export failed, spans dropped (warned once a minute at most; \
                     portcullis_otel_export_errors_total counts every failure)"
                );
            }
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// Traces each request when `traces` is set; passes requests through untouched otherwise.
#[derive(Clone)]
pub struct OtelLayer {
    traces: Option<Arc<Traces>>,
    peer: IpAddr,
    proto: &'static str,
}

impl OtelLayer {
    /// A layer for one connection from `peer` over `proto` (`http` or `https`).
    pub fn new(traces: Option<Arc<Traces>>, peer: IpAddr, proto: &'static str) -> Self {
        OtelLayer {
            traces,
            peer,
            proto,
        }
    }
}

impl<S> Layer<S> for OtelLayer {
    type Service = Otel<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Otel {
            inner,
            layer: self.clone(),
        }
    }
}

/// See [`OtelLayer`].
#[derive(Clone)]
pub struct Otel<S> {
    inner: S,
    layer: OtelLayer,
}

impl<S, B, RB> Service<Request<B>> for Otel<S>
where
    S: Service<Request<B>, Response = Response<RB>>,
    RB: http_body::Body,
{
    type Response = Response<Watched<RB, SpanEnd>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let l = &self.layer;
        let started = l
            .traces
            .as_ref()
            .map(|t| t.begin(&mut req, l.peer, l.proto));
        ResponseFuture {
            inner: self.inner.call(req),
            started,
        }
    }
}

pin_project! {
    /// Records the response head on the span and hands it to the body.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        started: Option<Started>,
    }
}

impl<F, RB, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<RB>, E>>,
    RB: http_body::Body,
{
    type Output = Result<Response<Watched<RB, SpanEnd>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let res = std::task::ready!(this.inner.poll(cx))?;
        let end = this.started.take().map(|s| s.respond(&res));
        Poll::Ready(Ok(res.map(|inner| Watched::new(inner, end))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn extracted(h: &HeaderMap) -> opentelemetry::trace::SpanContext {
        TraceContextPropagator::new()
            .extract(&Caller(h))
            .span()
            .span_context()
            .clone()
    }

    #[test]
    fn a_well_formed_traceparent_is_the_parent() {
        let sc = extracted(&headers(&[("traceparent", PARENT)]));
        assert!(sc.is_valid() && sc.is_remote() && sc.is_sampled());
        assert_eq!(
            sc.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(sc.span_id().to_string(), "00f067aa0ba902b7");
        let unsampled = PARENT.replace("-01", "-00");
        assert!(!extracted(&headers(&[("traceparent", &unsampled)])).is_sampled());
        // A later version may add fields after the four it shares with 00.
        let future = PARENT.replacen("00", "01", 1) + "-whatever";
        assert!(extracted(&headers(&[("traceparent", &future)])).is_valid());
    }

    #[test]
    fn a_malformed_or_repeated_traceparent_is_no_parent() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "zz-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "+0-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e47366-00f067aa0ba902b7-01",
            "00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01",
        ] {
            assert!(
                !extracted(&headers(&[("traceparent", bad)])).is_valid(),
                "{bad:?}"
            );
        }
        let twice = headers(&[("traceparent", PARENT), ("traceparent", PARENT)]);
        assert!(!extracted(&twice).is_valid());
    }

    #[test]
    fn only_traceparent_is_written_for_the_upstream() {
        let mut h = headers(&[("tracestate", "rojo=00f067aa0ba902b7")]);
        let mut up = Upstream(&mut h);
        up.set("traceparent", PARENT.to_string());
        up.set("tracestate", "other=1".to_string());
        assert_eq!(h["traceparent"], PARENT);
        assert_eq!(h.get_all("tracestate").iter().count(), 1);
        assert_eq!(h["tracestate"], "rojo=00f067aa0ba902b7");
    }

    #[test]
    fn methods_and_names_stay_in_a_fixed_set() {
        assert_eq!(method_name(&Method::GET), "GET");
        assert_eq!(method_name(&Method::PATCH), "PATCH");
        let odd = Method::from_bytes(b"BREW").unwrap();
        assert_eq!(method_name(&odd), "_OTHER");
        assert_eq!(span_name(method_name(&odd)), "HTTP");
        assert_eq!(span_name("GET"), "GET");
    }
}

/// Samples a share of requests by a draw of the gateway's own, whatever the caller's
/// `traceparent` says; keeps the caller's `tracestate`.
#[derive(Clone, Debug)]
struct LocalRatio(f64);

impl ShouldSample for LocalRatio {
    fn should_sample(
        &self,
        parent: Option<&opentelemetry::Context>,
        _trace_id: opentelemetry::trace::TraceId,
        _name: &str,
        _kind: &opentelemetry::trace::SpanKind,
        _attributes: &[KeyValue],
        _links: &[opentelemetry::trace::Link],
    ) -> opentelemetry_sdk::trace::SamplingResult {
        use opentelemetry::trace::TraceContextExt;
        use opentelemetry_sdk::trace::{SamplingDecision, SamplingResult};
        let n = crate::request_id::draw(crate::request_id::Stream::Sampling);
        // The top 53 bits as a uniform draw in [0, 1).
        let sampled = ((n >> 11) as f64) / ((1u64 << 53) as f64) < self.0;
        SamplingResult {
            decision: if sampled {
                SamplingDecision::RecordAndSample
            } else {
                SamplingDecision::Drop
            },
            attributes: Vec::new(),
            trace_state: parent
                .map(|cx| cx.span().span_context().trace_state().clone())
                .unwrap_or_default(),
        }
    }
}
