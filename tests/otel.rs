#![cfg(feature = "otel")]
//! OpenTelemetry trace export against a real gateway built with `--features otel`: a real
//! HTTP server in the test plays the OTLP/HTTP collector (it records every `POST /v1/traces`
//! and the test decodes the JSON), a real upstream records the headers it gets. Spans continue
//! the caller's trace, name the route, carry what the access log carries and never a
//! credential; the upstream's `traceparent` points at the gateway's span; refusals are
//! exported with their code; SIGTERM flushes the last spans; a dead or silent collector costs
//! requests nothing.
//!
//! Run with `cargo test --features otel --test otel` (the default build skips this file).

mod support;
use support::*;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::Value as Json;

const SECRET: &str = "otel-client-secret-0123456789abcdefghijklmn";
/// How long an ended span may take to reach the collector (batches leave every 100 ms here).
const EXPORT_TIMEOUT: Duration = Duration::from_secs(15);
/// Export every 100 ms instead of every 5 s, so the tests do not wait (the SDK's own knob).
const FAST_BATCHES: (&str, &str) = ("OTEL_BSP_SCHEDULE_DELAY", "100");

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";
const TRACESTATE: &str = "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE";

fn caller_traceparent(flags: &str) -> String {
    format!("00-{TRACE_ID}-{CALLER_SPAN}-{flags}")
}

/// Client `billing` (api:read); routes `api` (/api, protected), `status` (/status, public)
/// and `down` (/down, a closed port); `otel` is the body of the `otel:` section.
fn config(upstream: &str, otel: &str) -> String {
    format!(
        "{head}otel:\n{otel}clients:\n{billing}routes:\n  - id: api\n    path: /api\n    upstream: {upstream}\n    scopes:\n      read: [api:read]\n  - id: status\n    path: /status\n    upstream: {upstream}\n    public: true\n  - id: down\n    path: /down\n    upstream: {closed}\n    scopes:\n      read: [api:read]\n",
        head = config_head("1h"),
        billing = client_yaml("billing", SECRET, &["api:read"]),
        closed = closed_port_url(),
    )
}

/// A real HTTP server that takes OTLP/HTTP posts and answers as a collector does.
fn collector() -> Upstream {
    Upstream::start_with(UpstreamOpts {
        headers: vec![("content-type".into(), "application/json".into())],
        body: Some(b"{}".to_vec()),
        ..Default::default()
    })
}

/// A gateway exporting to `collector` quickly, with an upstream that records headers.
fn traced(otel_extra: &str) -> (Gateway, Upstream, Upstream) {
    let collector = collector();
    let upstream = Upstream::start();
    let otel = format!(
        "  endpoint: {}\n  service_name: gw-under-test\n{otel_extra}",
        collector.url()
    );
    let gw = Gateway::start_with_env(&config(&upstream.url(), &otel), &[FAST_BATCHES]);
    (gw, upstream, collector)
}

/// One exported span, with its attributes decoded to plain JSON values.
#[derive(Debug, Clone)]
struct Exported {
    service: Option<String>,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    name: String,
    kind: Json,
    status_code: Json,
    attrs: BTreeMap<String, Json>,
}

impl Exported {
    fn attr(&self, key: &str) -> &Json {
        self.attrs.get(key).unwrap_or(&Json::Null)
    }

    fn is_server(&self) -> bool {
        self.kind == 2 || self.kind == "SPAN_KIND_SERVER"
    }

    fn is_error(&self) -> bool {
        self.status_code == 2 || self.status_code == "STATUS_CODE_ERROR"
    }
}

/// An OTLP `AnyValue` as plain JSON (int64 travels as a string in OTLP/JSON).
fn any_value(v: &Json) -> Json {
    if let Some(s) = v.get("stringValue") {
        return s.clone();
    }
    if let Some(i) = v.get("intValue") {
        return match i {
            Json::String(s) => s.parse::<i64>().map(Json::from).unwrap_or(Json::Null),
            other => other.clone(),
        };
    }
    for k in ["doubleValue", "boolValue"] {
        if let Some(x) = v.get(k) {
            return x.clone();
        }
    }
    v.clone()
}

fn attributes(list: &Json) -> BTreeMap<String, Json> {
    list.as_array()
        .into_iter()
        .flatten()
        .filter_map(|kv| Some((kv["key"].as_str()?.to_string(), any_value(&kv["value"]))))
        .collect()
}

/// Every post the collector got, checked for shape, as raw text.
fn posts(collector: &Upstream) -> Vec<String> {
    collector
        .requests()
        .into_iter()
        .map(|r| {
            assert_eq!(r.method, "POST", "{r:?}");
            assert_eq!(r.target, "/v1/traces", "{r:?}");
            let ct = r.header("content-type").unwrap_or_default();
            assert!(ct.starts_with("application/json"), "content-type {ct:?}");
            String::from_utf8(r.body).expect("an OTLP/JSON body is UTF-8")
        })
        .collect()
}

/// Every span the collector got so far.
fn exported(collector: &Upstream) -> Vec<Exported> {
    let mut spans = Vec::new();
    for body in posts(collector) {
        let doc: Json = serde_json::from_str(&body).expect("OTLP/JSON");
        for rs in doc["resourceSpans"].as_array().into_iter().flatten() {
            let resource = attributes(&rs["resource"]["attributes"]);
            let service = resource
                .get("service.name")
                .and_then(Json::as_str)
                .map(str::to_string);
            for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
                for s in ss["spans"].as_array().into_iter().flatten() {
                    let text = |k: &str| s[k].as_str().unwrap_or_default().to_string();
                    spans.push(Exported {
                        service: service.clone(),
                        trace_id: text("traceId"),
                        span_id: text("spanId"),
                        parent_span_id: text("parentSpanId"),
                        name: text("name"),
                        kind: s["kind"].clone(),
                        status_code: s["status"]["code"].clone(),
                        attrs: attributes(&s["attributes"]),
                    });
                }
            }
        }
    }
    spans
}

/// The span of the request with this `X-Request-Id`, waiting for it.
fn span_of(collector: &Upstream, request_id: &str) -> Exported {
    let mut found = None;
    poll_until(EXPORT_TIMEOUT, Duration::from_millis(50), || {
        found = exported(collector)
            .into_iter()
            .find(|s| s.attr("portcullis.request_id") == request_id);
        found.is_some()
    });
    found.unwrap_or_else(|| {
        panic!(
            "no span for request {request_id:?} within {EXPORT_TIMEOUT:?}; got {:#?}",
            exported(collector)
        )
    })
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        && s.bytes().any(|b| b != b'0')
}

/// The `traceparent` the upstream got for the only request since the last take.
fn upstream_traceparent(upstream: &Upstream) -> (String, Recorded) {
    let seen = upstream.take_one();
    let all = seen.header_all("traceparent");
    assert_eq!(all.len(), 1, "one traceparent upstream: {all:?}");
    (all[0].clone(), seen)
}

#[test]
fn a_request_continues_the_callers_trace_and_the_upstream_sees_the_gateways_span() {
    let (gw, upstream, collector) = traced("");
    let token = get_token(&gw, "billing", SECRET);

    let resp = get(&gw.url("/api/./x/../y?q=query-value-never-exported"))
        .bearer(&token)
        .header("X-Request-Id", "otel-continued")
        .header("traceparent", &caller_traceparent("01"))
        .header("tracestate", TRACESTATE)
        .send();
    assert_eq!(resp.status, 200, "{}", resp.text());

    let span = span_of(&collector, "otel-continued");
    assert_eq!(span.service.as_deref(), Some("gw-under-test"), "{span:#?}");
    assert_eq!(span.trace_id, TRACE_ID, "{span:#?}");
    assert_eq!(span.parent_span_id, CALLER_SPAN, "{span:#?}");
    assert!(is_hex(&span.span_id, 16), "{span:#?}");
    assert_ne!(span.span_id, CALLER_SPAN);
    assert_eq!(span.name, "GET api", "{span:#?}");
    assert!(span.is_server(), "{span:#?}");
    assert!(!span.is_error(), "{span:#?}");
    assert_eq!(span.attr("http.request.method"), "GET", "{span:#?}");
    assert_eq!(
        span.attr("url.path"),
        "/api/y",
        "normalized, no query: {span:#?}"
    );
    assert_eq!(span.attr("url.scheme"), "http", "{span:#?}");
    assert_eq!(span.attr("http.route"), "api", "{span:#?}");
    assert_eq!(span.attr("http.response.status_code"), 200, "{span:#?}");
    assert_eq!(span.attr("client.address"), "127.0.0.1", "{span:#?}");
    assert_eq!(span.attr("portcullis.client"), "billing", "{span:#?}");
    assert!(span.attr("portcullis.refusal").is_null(), "{span:#?}");
    assert!(
        span.attr("portcullis.upstream.duration_ms")
            .as_f64()
            .is_some_and(|ms| ms >= 0.0),
        "{span:#?}"
    );
    assert_eq!(
        span.attr("http.response.body.size"),
        resp.body.len() as u64,
        "{span:#?}"
    );
    assert_eq!(span.attr("portcullis.completed"), true, "{span:#?}");

    // The upstream's parent is the gateway's span, in the caller's trace; tracestate as sent.
    let (traceparent, seen) = upstream_traceparent(&upstream);
    assert_eq!(seen.target, "/api/y?q=query-value-never-exported");
    assert_eq!(
        traceparent,
        format!("00-{TRACE_ID}-{}-01", span.span_id),
        "the upstream's traceparent"
    );
    assert_eq!(seen.header_all("tracestate"), [TRACESTATE]);

    // The token request has its own span, named for the token endpoint.
    let token_span = exported(&collector)
        .into_iter()
        .find(|s| s.name == "POST token")
        .unwrap_or_else(|| panic!("no `POST token` span in {:#?}", exported(&collector)));
    assert_eq!(token_span.attr("http.route"), "token");
    assert_eq!(token_span.attr("url.path"), "/oauth/token");
    assert_eq!(token_span.attr("portcullis.client"), "billing");
    assert_eq!(token_span.attr("http.response.status_code"), 200);

    // Nothing exported carries a credential, the query, or a header value it should not.
    let everything = posts(&collector).join("\n");
    for needle in [
        token.as_str(),
        SECRET,
        &basic_header("billing", SECRET),
        "Bearer",
        "query-value-never-exported",
    ] {
        assert!(
            !everything.contains(needle),
            "{needle:?} reached the collector"
        );
    }
    assert!(
        !everything.to_ascii_lowercase().contains("authorization"),
        "an Authorization header reached the collector"
    );
}

#[test]
fn a_request_without_a_well_formed_traceparent_starts_a_new_trace() {
    let (gw, upstream, collector) = traced("");
    let cases = [
        ("otel-none", None),
        (
            "otel-short",
            Some("00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01"),
        ),
        (
            "otel-upper",
            Some("00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01"),
        ),
        (
            "otel-zero",
            Some("00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
        ),
        ("otel-junk", Some("not a traceparent")),
    ];
    for (id, traceparent) in cases {
        let mut req = get(&gw.url("/status/ping")).header("X-Request-Id", id);
        if let Some(tp) = traceparent {
            req = req.header("traceparent", tp).header("tracestate", "a=1");
        }
        assert_eq!(req.send().status, 200, "{id}");
        let (sent, seen) = upstream_traceparent(&upstream);
        let span = span_of(&collector, id);
        assert!(is_hex(&span.trace_id, 32), "{id}: {span:#?}");
        assert_ne!(span.trace_id, TRACE_ID, "{id}: {span:#?}");
        assert!(
            span.parent_span_id.is_empty(),
            "{id}: a root span: {span:#?}"
        );
        assert_eq!(span.name, "GET status", "{id}");
        assert!(span.attr("portcullis.client").is_null(), "{id}: {span:#?}");
        assert_eq!(
            sent,
            format!("00-{}-{}-01", span.trace_id, span.span_id),
            "{id}"
        );
        // The caller's tracestate belonged to a trace that was not continued.
        assert!(!seen.has_header("tracestate"), "{id}: {:?}", seen.headers);
    }
    // Two traceparent lines are not well formed either.
    let r = get(&gw.url("/status"))
        .header("X-Request-Id", "otel-twice")
        .header("traceparent", &caller_traceparent("01"))
        .header("traceparent", &caller_traceparent("01"))
        .send();
    assert_eq!(r.status, 200);
    let (sent, _) = upstream_traceparent(&upstream);
    let span = span_of(&collector, "otel-twice");
    assert_ne!(span.trace_id, TRACE_ID);
    assert!(sent.contains(&span.trace_id), "{sent}");
}

#[test]
fn refusals_and_failures_are_exported_with_their_code() {
    let (gw, upstream, collector) = traced("");
    let token = get_token(&gw, "billing", SECRET);

    let no_token = get(&gw.url("/api/x"))
        .header("X-Request-Id", "otel-401")
        .header("traceparent", &caller_traceparent("01"))
        .send();
    assert_eq!(no_token.status, 401);
    let span = span_of(&collector, "otel-401");
    assert_eq!(span.name, "GET api", "{span:#?}");
    assert_eq!(span.trace_id, TRACE_ID);
    assert_eq!(span.attr("http.response.status_code"), 401, "{span:#?}");
    assert_eq!(
        span.attr("portcullis.refusal"),
        no_token.error_code().as_str(),
        "{span:#?}"
    );
    assert!(span.attr("portcullis.client").is_null(), "{span:#?}");
    assert!(!span.is_error(), "a 4xx is the caller's: {span:#?}");

    let bad_token = get(&gw.url("/api/x"))
        .bearer(&unknown_token())
        .header("X-Request-Id", "otel-401-bad")
        .send();
    assert_eq!(bad_token.status, 401);
    let span = span_of(&collector, "otel-401-bad");
    assert_eq!(
        span.attr("portcullis.refusal"),
        "invalid_token",
        "{span:#?}"
    );

    let missing = get(&gw.url("/nowhere?x=1"))
        .header("X-Request-Id", "otel-404")
        .send();
    assert_eq!(missing.status, 404);
    let span = span_of(&collector, "otel-404");
    assert_eq!(
        span.name, "GET",
        "no route, no route in the name: {span:#?}"
    );
    assert!(span.attr("http.route").is_null(), "{span:#?}");
    assert_eq!(span.attr("url.path"), "/nowhere", "{span:#?}");
    assert_eq!(
        span.attr("portcullis.refusal"),
        missing.error_code().as_str()
    );

    let down = get(&gw.url("/down/x"))
        .bearer(&token)
        .header("X-Request-Id", "otel-502")
        .send();
    assert_eq!(down.status, 502);
    let span = span_of(&collector, "otel-502");
    assert_eq!(span.name, "GET down", "{span:#?}");
    assert!(span.is_error(), "a 5xx is an error: {span:#?}");
    assert_eq!(span.attr("error.type"), "502", "{span:#?}");
    assert_eq!(span.attr("portcullis.client"), "billing", "{span:#?}");
    assert_eq!(
        span.attr("portcullis.refusal"),
        down.error_code().as_str(),
        "{span:#?}"
    );

    let odd = request("BREW", &gw.url("/status"))
        .header("X-Request-Id", "otel-brew")
        .send();
    assert_eq!(odd.status, 200);
    let span = span_of(&collector, "otel-brew");
    assert_eq!(span.name, "HTTP status", "{span:#?}");
    assert_eq!(span.attr("http.request.method"), "_OTHER", "{span:#?}");

    assert_eq!(upstream.count(), 1, "only BREW /status was forwarded");
}

#[test]
fn the_gateway_decides_sampling_not_the_callers_flag() {
    // sample_ratio 0: a caller saying "sampled" cannot force its requests into the export.
    let (gw, upstream, collector) = traced("  sample_ratio: 0\n");
    for i in 0..5 {
        let r = get(&gw.url("/status"))
            .header("X-Request-Id", &format!("forced-{i}"))
            .header("traceparent", &caller_traceparent("01"))
            .send();
        assert_eq!(r.status, 200);
        let (sent, _) = upstream_traceparent(&upstream);
        // Still the caller's trace, told upstream that it is not sampled here.
        assert!(
            sent.starts_with(&format!("00-{TRACE_ID}-")) && sent.ends_with("-00"),
            "{sent}"
        );
    }
    // Batches leave every 100 ms: a second is ten chances for a span to show up.
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        exported(&collector).is_empty(),
        "a caller's sampled flag forced an export at sample_ratio 0"
    );

    // sample_ratio 1 (the default): a caller saying "not sampled" cannot keep its requests
    // out of the export.
    let (gw, upstream, collector) = traced("");
    let r = get(&gw.url("/status"))
        .header("X-Request-Id", "hidden")
        .header("traceparent", &caller_traceparent("00"))
        .send();
    assert_eq!(r.status, 200);
    let span = span_of(&collector, "hidden");
    assert_eq!(span.trace_id, TRACE_ID);
    let (sent, _) = upstream_traceparent(&upstream);
    assert_eq!(sent, format!("00-{TRACE_ID}-{}-01", span.span_id));
}

#[test]
fn spans_ended_before_sigterm_are_exported_at_shutdown() {
    let collector = collector();
    let upstream = Upstream::start();
    let otel = format!("  endpoint: {}\n", collector.url());
    // Batches would leave only every 10 minutes: what arrives, arrives because of SIGTERM.
    let mut gw = Gateway::start_with_env(
        &config(&upstream.url(), &otel),
        &[("OTEL_BSP_SCHEDULE_DELAY", "600000")],
    );
    for i in 0..3 {
        let r = get(&gw.url("/status"))
            .header("X-Request-Id", &format!("otel-last-{i}"))
            .send();
        assert_eq!(r.status, 200);
    }
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(collector.count(), 0, "exported before the batch delay");

    gw.send_signal("TERM");
    let status = gw
        .wait_for_exit(Duration::from_secs(20))
        .expect("the gateway exits after SIGTERM");
    assert!(status.success(), "{status}; {}", gw.logs());
    let ids: Vec<Json> = exported(&collector)
        .iter()
        .map(|s| s.attr("portcullis.request_id").clone())
        .collect();
    for i in 0..3 {
        assert!(
            ids.contains(&Json::from(format!("otel-last-{i}"))),
            "otel-last-{i} lost at shutdown; exported {ids:?}"
        );
    }
}

/// Sends `n` requests through `gw`; each must be a 200. Returns the slowest.
fn slowest_of(gw: &Gateway, n: usize) -> Duration {
    (0..n)
        .map(|i| {
            let start = Instant::now();
            let r = get(&gw.url("/status"))
                .header("traceparent", &caller_traceparent("01"))
                .header("X-Request-Id", &format!("otel-dead-{i}"))
                .send();
            assert_eq!(r.status, 200, "{}", r.text());
            start.elapsed()
        })
        .max()
        .unwrap_or_default()
}

#[test]
fn a_dead_collector_costs_requests_nothing_and_is_counted() {
    let upstream = Upstream::start();
    let otel = format!("  endpoint: {}\n  timeout: 2s\n", closed_port_url());
    let mut gw = Gateway::start_with_env(
        &config(&upstream.url(), &otel),
        &[("OTEL_BSP_SCHEDULE_DELAY", "50")],
    );
    let slowest = slowest_of(&gw, 20);
    assert!(slowest < Duration::from_secs(1), "slowest {slowest:?}");
    // Spread over a few batches, each refused by the closed port.
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(300));
        slowest_of(&gw, 2);
    }
    assert!(
        poll_until(Duration::from_secs(15), Duration::from_millis(100), || gw
            .metric_value("portcullis_otel_export_errors_total", &[])
            >= 2.0),
        "export errors not counted: {}",
        gw.metrics_text()
    );
    let warned = gw.log_lines_with("OpenTelemetry export failed");
    assert_eq!(warned.len(), 1, "one warning a minute at most: {warned:?}");
    assert!(
        !warned[0].contains(SECRET) && !warned[0].to_ascii_lowercase().contains("authorization")
    );

    let start = Instant::now();
    gw.send_signal("TERM");
    let status = gw.wait_for_exit(Duration::from_secs(20)).expect("exits");
    assert!(status.success(), "{status}");
    assert!(
        start.elapsed() < Duration::from_secs(8),
        "shutdown waited {:?} on a dead collector",
        start.elapsed()
    );
}

#[test]
fn a_collector_that_never_answers_costs_requests_nothing() {
    // Accepts connections and never reads or answers a byte.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap();
    let held = std::thread::spawn(move || {
        let mut conns = Vec::new();
        for c in silent.incoming().take(8) {
            conns.push(c);
        }
        std::thread::sleep(Duration::from_secs(30));
    });
    let upstream = Upstream::start();
    let otel = format!("  endpoint: http://{addr}\n  timeout: 3s\n");
    let mut gw = Gateway::start_with_env(
        &config(&upstream.url(), &otel),
        &[("OTEL_BSP_SCHEDULE_DELAY", "50")],
    );
    let start = Instant::now();
    let slowest = slowest_of(&gw, 30);
    assert!(slowest < Duration::from_secs(1), "slowest {slowest:?}");
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "30 requests took {:?}: they waited on the export",
        start.elapsed()
    );
    assert!(
        poll_until(Duration::from_secs(15), Duration::from_millis(200), || gw
            .metric_value("portcullis_otel_export_errors_total", &[])
            >= 1.0),
        "the timed-out export was not counted"
    );
    gw.send_signal("TERM");
    let status = gw.wait_for_exit(Duration::from_secs(20)).expect("exits");
    assert!(status.success(), "{status}");
    drop(held);
}

/// `portcullis check` of `yaml`.
fn check(yaml: &str) -> std::process::Output {
    let f = write_config(yaml);
    run_cli(
        &["check", "--config", f.path().to_str().unwrap()],
        None,
        &[],
    )
}

#[test]
fn check_validates_the_otel_section_at_its_lines() {
    let yaml = config(
        "http://127.0.0.1:8000",
        "  endpoint: ftp://collector:4318\n  sample_ratio: 1.5\n  timeout: soon\n",
    );
    let out = check(&yaml);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let line = |needle: &str| yaml.lines().position(|l| l.contains(needle)).unwrap() + 1;
    for (key, message) in [
        ("endpoint:", "must be an http:// or https:// URL"),
        ("sample_ratio:", "between 0 and 1"),
        ("timeout: soon", "invalid duration"),
    ] {
        let at = format!(":{}:", line(key));
        assert!(
            err.lines().any(|l| l.contains(&at) && l.contains(message)),
            "no {message:?} at line {} in {err}",
            line(key)
        );
    }

    let good = config(
        "http://127.0.0.1:8000",
        "  endpoint: https://collector.internal:4318/\n  sample_ratio: 0.25\n",
    );
    let out = check(&good);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
