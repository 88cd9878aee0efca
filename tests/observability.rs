//! Observability against a real gateway process: the access log (JSON by default, text on
//! request, sampling of successes), secrets kept out of every log line, `X-Request-Id` kept or
//! replaced, W3C trace context passed through, and the metrics an operator reads (client
//! labels, upstream errors and latency, connections, build info).
//!
//! Access lines are found by their `X-Request-Id`, which each test sets, then read as the
//! gateway wrote them on stderr.

mod support;
use support::*;

use std::time::Duration;

use serde_json::Value as Json;

const SECRET: &str = "observability-client-secret-0123456789abcdef";
const WRONG_SECRET: &str = "observability-wrong-secret-fedcba9876543210";
/// How long an access line may take to appear after its response arrived.
const LOG_TIMEOUT: Duration = Duration::from_secs(10);

/// A gateway with client `billing` (api:read, api:write), client `reporting` (other:read), and
/// routes `api` (/api, protected), `status` (/status, public), `down` (/down, a closed port) and
/// `slow` (/slow, timeout 1s) to `slow_upstream`; `log` is extra top-level YAML.
fn config(upstream: &str, slow_upstream: &str, log: &str) -> String {
    format!(
        "{head}{log}clients:\n{billing}{reporting}routes:\n  - id: api\n    path: /api\n    upstream: {upstream}\n    scopes:\n      read: [api:read]\n      write: [api:write]\n  - id: status\n    path: /status\n    upstream: {upstream}\n    public: true\n  - id: down\n    path: /down\n    upstream: {closed}\n    scopes:\n      read: [api:read]\n  - id: slow\n    path: /slow\n    upstream: {slow_upstream}\n    timeout: 1s\n    scopes:\n      read: [api:read]\n",
        head = config_head("1h"),
        billing = client_yaml("billing", SECRET, &["api:read", "api:write"]),
        reporting = client_yaml("reporting", SECRET, &["other:read"]),
        closed = closed_port_url(),
    )
}

fn start(log: &str) -> (Gateway, Upstream) {
    let upstream = Upstream::start();
    let gw = Gateway::start(&config(&upstream.url(), &closed_port_url(), log));
    (gw, upstream)
}

/// Every stderr/stdout line that parses as a JSON object.
fn json_lines(gw: &Gateway) -> Vec<Json> {
    gw.logs()
        .lines()
        .filter_map(|l| serde_json::from_str::<Json>(l).ok())
        .filter(Json::is_object)
        .collect()
}

/// JSON access lines (target `portcullis::access`).
fn access_lines(gw: &Gateway) -> Vec<Json> {
    json_lines(gw)
        .into_iter()
        .filter(|l| l["target"] == "portcullis::access")
        .collect()
}

/// The JSON access line of the request with this id, waiting for it.
fn access_line(gw: &Gateway, id: &str) -> Json {
    let mut found = None;
    poll_until(LOG_TIMEOUT, Duration::from_millis(20), || {
        found = access_lines(gw).into_iter().find(|l| l["request_id"] == id);
        found.is_some()
    });
    found.unwrap_or_else(|| {
        panic!(
            "no access line with request_id {id:?} within {LOG_TIMEOUT:?}; output:\n{}",
            gw.logs()
        )
    })
}

fn is_hex32(s: &str) -> bool {
    s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The fields every access line carries, whatever the outcome.
fn assert_common(line: &Json, id: &str, resp: &Resp) {
    assert_eq!(line["message"], "request", "{line}");
    assert_eq!(line["request_id"], id, "{line}");
    assert_eq!(line["status"], resp.status, "{line}");
    assert_eq!(
        line["bytes"].as_u64(),
        Some(resp.body.len() as u64),
        "bytes should be the body length the caller got: {line}"
    );
    assert_eq!(line["completed"], true, "{line}");
    assert!(
        line["duration_ms"].as_f64().is_some_and(|d| d >= 0.0),
        "{line}"
    );
    assert!(line["timestamp"].is_string(), "no timestamp: {line}");
}

/// A refusal's line names its reason: the `error` code of the JSON body the caller got.
fn assert_refusal_reason(line: &Json, resp: &Resp) {
    let reason = line["reason"]
        .as_str()
        .unwrap_or_else(|| panic!("refused ({}) but no reason: {line}", resp.status));
    assert_eq!(reason, resp.error_code(), "{line}");
}

/// No authenticated client on the line (the caller is anonymous).
fn assert_no_client(line: &Json) {
    let c = &line["client"];
    assert!(
        c.is_null() || c == "-" || c == "anonymous",
        "client on an unauthenticated request: {line}"
    );
}

// ---------------------------------------------------------------------------------------------
// Access log
// ---------------------------------------------------------------------------------------------

#[test]
fn access_log_is_one_json_line_per_request_with_its_fields() {
    let (gw, upstream) = start("");
    let token = get_token(&gw, "billing", SECRET);

    // Authorized and proxied; the path is logged normalized.
    let ok = get(&gw.url("/api/./x"))
        .bearer(&token)
        .header("X-Request-Id", "obs-ok")
        .send();
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(upstream.take_one().target, "/api/x");
    let line = access_line(&gw, "obs-ok");
    assert_common(&line, "obs-ok", &ok);
    assert_eq!(line["level"], "INFO", "{line}");
    assert_eq!(line["route"], "api", "{line}");
    assert_eq!(line["client"], "billing", "{line}");
    assert_eq!(line["method"], "GET", "{line}");
    assert_eq!(line["path"], "/api/x", "{line}");
    assert!(line["upstream_ms"].as_f64().is_some(), "{line}");
    assert!(
        line["reason"].is_null(),
        "a 200 has no refusal reason: {line}"
    );

    // No token: 401 on the api route, nothing forwarded.
    let denied = get(&gw.url("/api/x"))
        .header("X-Request-Id", "obs-401")
        .send();
    assert_eq!(denied.status, 401);
    let line = access_line(&gw, "obs-401");
    assert_common(&line, "obs-401", &denied);
    assert_eq!(line["route"], "api", "{line}");
    assert_eq!(line["path"], "/api/x", "{line}");
    assert_no_client(&line);
    assert_refusal_reason(&line, &denied);
    assert!(line["upstream_ms"].is_null(), "{line}");

    // A token the gateway never issued.
    let bad = get(&gw.url("/api/x"))
        .bearer(&unknown_token())
        .header("X-Request-Id", "obs-401-bad")
        .send();
    assert_eq!(bad.status, 401);
    let line = access_line(&gw, "obs-401-bad");
    assert_common(&line, "obs-401-bad", &bad);
    assert_eq!(line["reason"], "invalid_token", "{line}");
    assert_no_client(&line);

    // No route.
    let missing = get(&gw.url("/nowhere/../else"))
        .header("X-Request-Id", "obs-404")
        .send();
    assert_eq!(missing.status, 404);
    let line = access_line(&gw, "obs-404");
    assert_common(&line, "obs-404", &missing);
    assert_eq!(line["route"], "none", "{line}");
    assert_eq!(line["path"], "/else", "{line}");
    assert_no_client(&line);
    assert_refusal_reason(&line, &missing);

    // The token endpoint: route `token`, the authenticated client.
    let issued = token_basic(&gw, "billing", SECRET, None);
    let id = issued
        .header("x-request-id")
        .expect("X-Request-Id")
        .to_string();
    let line = access_line(&gw, &id);
    assert_common(&line, &id, &issued);
    assert_eq!(line["route"], "token", "{line}");
    assert_eq!(line["client"], "billing", "{line}");
    assert_eq!(line["method"], "POST", "{line}");

    assert_eq!(upstream.count(), 0, "refusals reached the upstream");
}

#[test]
fn oauth_endpoint_and_discovery_lines_carry_their_path() {
    let (gw, _upstream) = start("");
    let issued = token_basic(&gw, "billing", SECRET, None);
    assert_eq!(issued.status, 200);
    let id = issued
        .header("x-request-id")
        .expect("X-Request-Id")
        .to_string();
    let meta = get(&gw.url("/.well-known/oauth-authorization-server"))
        .header("X-Request-Id", "obs-metadata")
        .send();
    assert_eq!(meta.status, 200);
    let token_line = access_line(&gw, &id);
    let meta_line = access_line(&gw, "obs-metadata");
    assert_eq!(meta_line["route"], "metadata", "{meta_line}");
    assert_eq!(
        token_line["path"], "/oauth/token",
        "the access line of a token request names no path: {token_line}"
    );
    assert_eq!(
        meta_line["path"], "/.well-known/oauth-authorization-server",
        "the access line of a discovery request names no path: {meta_line}"
    );
}

/// Everything secret the tests below send, in the forms it could leak in.
fn secret_needles(token: &str, extra_tokens: &[&str]) -> Vec<String> {
    let mut v = vec![
        SECRET.to_string(),
        WRONG_SECRET.to_string(),
        token.to_string(),
        token.trim_start_matches("pct_").to_string(),
        basic_header("billing", SECRET),
        basic_header("billing", WRONG_SECRET),
        basic_header("billing", SECRET)
            .trim_start_matches("Basic ")
            .to_string(),
        format!("Bearer {token}"),
    ];
    v.extend(extra_tokens.iter().map(|t| t.to_string()));
    v
}

fn assert_no_secrets_logged(log: &str) {
    let (gw, upstream) = start(log);
    let token = get_token(&gw, "billing", SECRET);
    let post_token = get_token_post(&gw, "billing", SECRET);
    let guessed = unknown_token();

    assert_eq!(get(&gw.url("/api/x")).bearer(&token).send().status, 200);
    assert_eq!(
        post(&gw.url("/api/x"))
            .bearer(&post_token)
            .body("payload")
            .send()
            .status,
        200
    );
    assert_eq!(get(&gw.url("/api/x")).bearer(&guessed).send().status, 401);
    assert_eq!(
        token_basic(&gw, "billing", WRONG_SECRET, None).status,
        401,
        "wrong secret"
    );
    assert_eq!(
        token_post(&gw, "billing", WRONG_SECRET, None).status,
        401,
        "wrong secret in the body"
    );
    assert_eq!(introspect(&gw, "billing", SECRET, &token).status, 200);
    assert_eq!(revoke(&gw, "billing", SECRET, &post_token).status, 200);
    // The revoked token, used again.
    assert_eq!(
        get(&gw.url("/api/x")).bearer(&post_token).send().status,
        401
    );
    let last = get(&gw.url("/api/x"))
        .header("X-Request-Id", "obs-secrets-last")
        .send();
    assert_eq!(last.status, 401);
    access_line_any_format(&gw, "obs-secrets-last");
    assert_eq!(upstream.count(), 2);

    let logs = gw.logs();
    for needle in secret_needles(&token, &[&post_token, &guessed]) {
        if let Some(line) = logs.lines().find(|l| l.contains(&needle)) {
            panic!("a credential ({needle:?}) appears in the log ({log:?}):\n{line}");
        }
    }
    assert!(
        !logs.to_ascii_lowercase().contains("bearer pct_"),
        "an Authorization value in the log"
    );
}

/// Waits for any log line (JSON or text) that mentions this request id.
fn access_line_any_format(gw: &Gateway, id: &str) -> String {
    gw.wait_for_log(id, LOG_TIMEOUT)
        .unwrap_or_else(|| panic!("no log line with {id:?}; output:\n{}", gw.logs()))
}

#[test]
fn tokens_and_secrets_never_appear_in_the_log() {
    assert_no_secrets_logged("");
}

#[test]
fn tokens_and_secrets_never_appear_in_the_debug_log() {
    assert_no_secrets_logged("log:\n  level: debug\n");
}

/// `key=value` or `key="value"` in a text line.
fn text_field(line: &str, key: &str, value: &str) -> bool {
    line.contains(&format!("{key}={value}")) || line.contains(&format!("{key}=\"{value}\""))
}

#[test]
fn text_format_is_not_json_and_keeps_the_fields() {
    let (gw, _upstream) = start("log:\n  format: text\n");
    let token = get_token(&gw, "billing", SECRET);
    let ok = get(&gw.url("/api/./x"))
        .bearer(&token)
        .header("X-Request-Id", "obs-text-ok")
        .send();
    assert_eq!(ok.status, 200);
    let denied = get(&gw.url("/api/x"))
        .header("X-Request-Id", "obs-text-401")
        .send();
    assert_eq!(denied.status, 401);

    let line = access_line_any_format(&gw, "obs-text-ok");
    assert!(
        serde_json::from_str::<Json>(&line).is_err(),
        "text format printed JSON: {line}"
    );
    assert!(line.contains("portcullis::access"), "{line}");
    assert!(line.contains("request"), "{line}");
    for (k, v) in [
        ("request_id", "obs-text-ok"),
        ("client", "billing"),
        ("route", "api"),
        ("method", "GET"),
        ("path", "/api/x"),
        ("status", "200"),
        ("bytes", &ok.body.len().to_string()),
        ("completed", "true"),
    ] {
        assert!(text_field(&line, k, v), "no {k}={v} in {line}");
    }
    assert!(line.contains("duration_ms="), "{line}");
    assert!(line.contains("upstream_ms="), "{line}");

    let line = access_line_any_format(&gw, "obs-text-401");
    assert!(text_field(&line, "status", "401"), "{line}");
    assert!(text_field(&line, "reason", &denied.error_code()), "{line}");

    // No line of the process is JSON.
    assert!(
        json_lines(&gw).is_empty(),
        "JSON lines in text mode:\n{}",
        gw.logs()
    );
}

#[test]
fn sample_success_zero_logs_refusals_only() {
    let (gw, _upstream) = start("log:\n  sample_success: 0\n");
    let token = get_token(&gw, "billing", SECRET);
    for i in 0..3 {
        let r = get(&gw.url("/api/x"))
            .bearer(&token)
            .header("X-Request-Id", &format!("obs-sampled-{i}"))
            .send();
        assert_eq!(r.status, 200);
        assert_eq!(
            get(&gw.url("/status"))
                .header("X-Request-Id", &format!("obs-public-{i}"))
                .send()
                .status,
            200
        );
    }
    let denied = get(&gw.url("/api/x"))
        .header("X-Request-Id", "obs-sampled-401")
        .send();
    assert_eq!(denied.status, 401);
    let missing = get(&gw.url("/nowhere"))
        .header("X-Request-Id", "obs-sampled-404")
        .send();
    assert_eq!(missing.status, 404);

    // The refusals come after the successes, so their lines are written after.
    let line = access_line(&gw, "obs-sampled-401");
    assert_eq!(line["status"], 401);
    assert_eq!(access_line(&gw, "obs-sampled-404")["status"], 404);
    let lines = access_lines(&gw);
    let successes: Vec<&Json> = lines
        .iter()
        .filter(|l| l["status"].as_u64().is_some_and(|s| s < 400))
        .collect();
    assert!(
        successes.is_empty(),
        "sample_success: 0 logged successes: {successes:?}"
    );
}

#[test]
fn sample_success_half_logs_some_successes_and_every_refusal() {
    let (gw, _upstream) = start("log:\n  sample_success: 0.5\n");
    let token = get_token(&gw, "billing", SECRET);
    // Ten successes on one kept-alive connection, ten on ten fresh connections (as curl and
    // most scripts call), then refusals.
    let mut conn = KeepAliveClient::connect(gw.addr()).expect("connect");
    for i in 0..10 {
        let (status, _) = conn
            .get_bearer(&format!("/api/kept-{i}"), &token)
            .expect("keep-alive request");
        assert_eq!(status, 200);
    }
    drop(conn);
    for i in 0..10 {
        let r = get(&gw.url(&format!("/api/fresh-{i}")))
            .bearer(&token)
            .send();
        assert_eq!(r.status, 200);
    }
    for i in 0..3 {
        let r = get(&gw.url("/api/x"))
            .header("X-Request-Id", &format!("obs-half-401-{i}"))
            .send();
        assert_eq!(r.status, 401);
    }
    for i in 0..3 {
        access_line(&gw, &format!("obs-half-401-{i}"));
    }
    let logged = |prefix: &str| {
        access_lines(&gw)
            .iter()
            .filter(|l| l["path"].as_str().unwrap_or("").starts_with(prefix) && l["status"] == 200)
            .count()
    };
    let (kept, fresh) = (logged("/api/kept-"), logged("/api/fresh-"));
    assert!(
        (1..10).contains(&kept) && (1..10).contains(&fresh),
        "sample_success: 0.5 logged {kept} of 10 successes on one connection and {fresh} of 10 \
         on fresh connections"
    );
}

// ---------------------------------------------------------------------------------------------
// Request ids and trace context
// ---------------------------------------------------------------------------------------------

#[test]
fn a_well_formed_request_id_is_kept_everywhere() {
    let (gw, upstream) = start("");
    let token = get_token(&gw, "billing", SECRET);
    let max = "a".repeat(128);
    for id in [
        "550e8400-e29b-41d4-a716-446655440000",
        "01ARZ3NDEKTSV4RRFFQ69G5FAV",
        "job_7.step:3@host-a",
        max.as_str(),
    ] {
        upstream.clear();
        let r = get(&gw.url("/api/x"))
            .bearer(&token)
            .header("X-Request-Id", id)
            .send();
        assert_eq!(r.status, 200);
        assert_eq!(r.header_all("x-request-id"), [id], "response");
        assert_eq!(
            upstream.take_one().header_all("x-request-id"),
            [id],
            "upstream"
        );
        access_line(&gw, id);
    }
    // Refusals carry it back too.
    let r = get(&gw.url("/api/x"))
        .header("X-Request-Id", "refused-id-1")
        .send();
    assert_eq!(r.status, 401);
    assert_eq!(r.header("x-request-id"), Some("refused-id-1"));
    access_line(&gw, "refused-id-1");
}

#[test]
fn a_missing_or_malformed_request_id_is_replaced_by_a_fresh_one() {
    let (gw, upstream) = start("");
    let token = get_token(&gw, "billing", SECRET);
    let long = "b".repeat(200);
    let just_over = "c".repeat(129);
    let cases: Vec<(&str, Vec<&str>)> = vec![
        ("absent", vec![]),
        ("spaces", vec!["has spaces in it"]),
        ("quotes", vec!["x\"} injected=\"1"]),
        ("200 chars", vec![long.as_str()]),
        ("129 chars", vec![just_over.as_str()]),
        ("empty", vec![""]),
        ("two headers", vec!["first-id", "second-id"]),
    ];
    let mut seen = std::collections::BTreeSet::new();
    for (what, values) in cases {
        upstream.clear();
        let mut req = get(&gw.url("/api/x")).bearer(&token);
        for v in &values {
            req = req.header("X-Request-Id", v);
        }
        let r = req.send();
        assert_eq!(r.status, 200, "{what}");
        let ids = r.header_all("x-request-id");
        assert_eq!(ids.len(), 1, "{what}: response ids {ids:?}");
        let id = ids[0].to_string();
        assert!(is_hex32(&id), "{what}: response id {id:?} is not 32 hex");
        assert!(seen.insert(id.clone()), "{what}: id {id} was given before");
        assert_eq!(
            upstream.take_one().header_all("x-request-id"),
            [id.as_str()],
            "{what}: the upstream must see the same single id"
        );
        access_line(&gw, &id);
    }
    // The caller's malformed values never reach the log.
    let logs = gw.logs();
    for bad in [
        "has spaces in it",
        "injected",
        &long,
        &just_over,
        "first-id",
        "second-id",
    ] {
        assert!(!logs.contains(bad), "{bad:?} was logged:\n{logs}");
    }
}

#[test]
fn trace_context_reaches_the_upstream_untouched() {
    let (gw, upstream) = start("");
    let token = get_token(&gw, "billing", SECRET);
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let tracestate = "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE";
    for path in ["/api/x", "/status"] {
        let mut req = get(&gw.url(path)).header("traceparent", traceparent);
        if path == "/api/x" {
            req = req.bearer(&token);
        }
        let r = req.header("tracestate", tracestate).send();
        assert_eq!(r.status, 200, "{path}");
        let seen = upstream.take_one();
        assert_eq!(seen.header_all("traceparent"), [traceparent], "{path}");
        assert_eq!(seen.header_all("tracestate"), [tracestate], "{path}");
    }
    // A second tracestate line (allowed by W3C) is passed on too.
    let r = get(&gw.url("/status"))
        .header("traceparent", traceparent)
        .header("tracestate", "a=1")
        .header("tracestate", "b=2")
        .send();
    assert_eq!(r.status, 200);
    let seen = upstream.take_one();
    assert_eq!(seen.header_all("traceparent"), [traceparent]);
    let joined = seen.header_all("tracestate").join(",");
    assert_eq!(joined.replace(' ', ""), "a=1,b=2");
}

// ---------------------------------------------------------------------------------------------
// Metrics
// ---------------------------------------------------------------------------------------------

fn requests(s: &Scrape, route: &str, status: &str, client: &str) -> f64 {
    s.value(
        "portcullis_requests_total",
        &[("route", route), ("status", status), ("client", client)],
    )
}

#[test]
fn requests_total_names_the_client_or_anonymous() {
    let (gw, _upstream) = start("");
    let token = get_token(&gw, "billing", SECRET);
    assert_eq!(get(&gw.url("/api/x")).bearer(&token).send().status, 200);
    assert_eq!(get(&gw.url("/status")).send().status, 200);
    assert_eq!(get(&gw.url("/api/x")).send().status, 401);
    assert_eq!(get(&gw.url("/nowhere")).send().status, 404);
    assert_eq!(
        token_basic(&gw, "mallory", SECRET, None).status,
        401,
        "unknown client"
    );
    assert_eq!(token_basic(&gw, "billing", WRONG_SECRET, None).status, 401);

    let s = scrape(&gw);
    assert_eq!(requests(&s, "api", "200", "billing"), 1.0, "{}", s.text);
    assert_eq!(
        requests(&s, "status", "200", "anonymous"),
        1.0,
        "{}",
        s.text
    );
    assert_eq!(requests(&s, "api", "401", "anonymous"), 1.0, "{}", s.text);
    assert_eq!(requests(&s, "none", "404", "anonymous"), 1.0, "{}", s.text);
    assert_eq!(requests(&s, "token", "200", "billing"), 1.0, "{}", s.text);
    assert_eq!(requests(&s, "token", "401", "anonymous"), 2.0, "{}", s.text);
    // Label values come from the config, never from the request.
    for s in &s.samples {
        if s.name == "portcullis_requests_total" {
            let c = s.labels.get("client").map(String::as_str).unwrap_or("");
            assert!(
                ["billing", "reporting", "anonymous"].contains(&c),
                "client label {c:?} is not a config id: {s:?}"
            );
        }
    }
    // Token endpoint latency is the route `token` of the request histogram.
    let token_count = s.value(
        "portcullis_request_duration_seconds_count",
        &[("route", "token")],
    );
    assert_eq!(token_count, 3.0, "{}", s.text);
    assert_eq!(
        s.value("portcullis_tokens_issued_total", &[("client", "billing")]),
        1.0
    );
}

#[test]
fn upstream_errors_count_refused_and_timed_out_upstreams() {
    let upstream = Upstream::start();
    let slow = Upstream::delayed(Duration::from_secs(3));
    let gw = Gateway::start(&config(&upstream.url(), &slow.url(), ""));
    let token = get_token(&gw, "billing", SECRET);
    let kind = |s: &Scrape, route: &str, kind: &str| {
        s.value(
            "portcullis_upstream_errors_total",
            &[("route", route), ("kind", kind)],
        )
    };

    let before = scrape(&gw);
    let r = get(&gw.url("/down/x")).bearer(&token).send();
    assert_eq!(r.status, 502, "{}", r.text());
    let after = scrape(&gw);
    assert_eq!(
        kind(&after, "down", "refused") - kind(&before, "down", "refused"),
        1.0,
        "{}",
        after.text
    );
    assert_eq!(kind(&after, "down", "timeout"), 0.0);

    let r = get(&gw.url("/slow/x")).bearer(&token).send();
    assert_eq!(r.status, 504, "{}", r.text());
    let last = scrape(&gw);
    assert_eq!(
        kind(&last, "slow", "timeout") - kind(&after, "slow", "timeout"),
        1.0,
        "{}",
        last.text
    );
    assert_eq!(kind(&last, "slow", "refused"), 0.0);
    // A failed upstream is no upstream latency sample.
    assert_eq!(
        last.value(
            "portcullis_upstream_duration_seconds_count",
            &[("route", "slow")]
        ),
        0.0
    );
}

#[test]
fn an_upstream_that_closes_without_answering_counts_as_reset() {
    let upstream = Upstream::start();
    let closing = RawUpstream::start(RawReply::Close);
    let gw = Gateway::start(&config(&upstream.url(), &closing.url(), ""));
    let token = get_token(&gw, "billing", SECRET);
    let r = get(&gw.url("/slow/x")).bearer(&token).send();
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(
        !closing.requests().is_empty(),
        "the upstream saw no request"
    );
    let s = scrape(&gw);
    let kind = |k: &str| {
        s.value(
            "portcullis_upstream_errors_total",
            &[("route", "slow"), ("kind", k)],
        )
    };
    assert!(kind("reset") >= 1.0, "{}", s.text);
    assert_eq!(
        kind("refused") + kind("timeout") + kind("tls"),
        0.0,
        "{}",
        s.text
    );
}

#[test]
fn a_response_cut_mid_body_is_logged_as_not_completed() {
    let upstream = Upstream::start();
    let mut head = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n".to_vec();
    head.extend_from_slice(b"0123456789");
    let cutting = RawUpstream::start(RawReply::Truncate {
        bytes: head,
        reset: true,
    });
    let gw = Gateway::start(&config(&upstream.url(), &cutting.url(), ""));
    let token = get_token(&gw, "billing", SECRET);
    let r = get(&gw.url("/slow/x"))
        .bearer(&token)
        .header("X-Request-Id", "obs-cut")
        .try_send();
    let got = match r {
        Err(aborted) => aborted.received.len() as u64,
        Ok(resp) => panic!("a cut body arrived as a clean response: {resp:?}"),
    };
    let line = access_line(&gw, "obs-cut");
    assert_eq!(line["status"], 200, "{line}");
    assert_eq!(line["completed"], false, "{line}");
    let bytes = line["bytes"].as_u64().expect("bytes");
    assert!(
        bytes >= got && bytes <= 10,
        "logged {bytes} bytes; the caller got {got}, the upstream sent 10: {line}"
    );
}

#[test]
fn upstream_duration_counts_proxied_requests_only() {
    let (gw, _upstream) = start("");
    let token = get_token(&gw, "billing", SECRET);
    let count = |s: &Scrape| {
        s.value(
            "portcullis_upstream_duration_seconds_count",
            &[("route", "api")],
        )
    };
    let total = |s: &Scrape| {
        s.value(
            "portcullis_request_duration_seconds_count",
            &[("route", "api")],
        )
    };
    let before = scrape(&gw);
    assert_eq!(get(&gw.url("/api/a")).bearer(&token).send().status, 200);
    assert_eq!(get(&gw.url("/api/b")).bearer(&token).send().status, 200);
    assert_eq!(get(&gw.url("/api/c")).send().status, 401);
    let after = scrape(&gw);
    assert_eq!(count(&after) - count(&before), 2.0, "{}", after.text);
    assert_eq!(total(&after) - total(&before), 3.0, "{}", after.text);
    assert!(
        after.value(
            "portcullis_upstream_duration_seconds_sum",
            &[("route", "api")]
        ) > 0.0
    );
}

#[test]
fn open_connections_and_inflight_follow_what_is_held() {
    let upstream = Upstream::start();
    let slow = Upstream::delayed(Duration::from_millis(800));
    let gw = Gateway::start(&config(&upstream.url(), &slow.url(), ""));
    let token = get_token(&gw, "billing", SECRET);
    let public = || gw.metric_value("portcullis_open_connections", &[("listener", "public")]);

    let mut conn = KeepAliveClient::connect(gw.addr()).expect("connect");
    let (status, _) = conn.get_bearer("/api/x", &token).expect("first request");
    assert_eq!(status, 200);
    assert!(public() >= 1.0, "{}", gw.metrics_text());
    // The scrape itself is an admin connection.
    assert!(gw.metric_value("portcullis_open_connections", &[("listener", "admin")]) >= 1.0);
    drop(conn);
    assert!(
        poll_until(Duration::from_secs(10), Duration::from_millis(50), || {
            public() == 0.0
        }),
        "open_connections{{listener=\"public\"}} stayed at {} after the client closed",
        public()
    );

    // A request held by a slow upstream is in flight until its head comes back.
    let url = gw.url("/slow/x");
    let t = token.clone();
    // 200, or 504 if the machine is so loaded that 800 ms grew past the 1 s route timeout.
    let held = std::thread::spawn(move || get(&url).bearer(&t).send().status);
    let inflight = || gw.metric_value("portcullis_inflight_requests", &[]);
    let saw = poll_until(Duration::from_secs(10), Duration::from_millis(20), || {
        inflight() >= 1.0
    });
    let status = held.join().unwrap();
    assert!(
        status == 200 || status == 504,
        "held request answered {status}"
    );
    assert!(
        saw,
        "portcullis_inflight_requests never showed the held request"
    );
    assert!(
        poll_until(Duration::from_secs(5), Duration::from_millis(20), || {
            inflight() == 0.0
        }),
        "inflight stayed at {}",
        inflight()
    );
}

#[test]
fn build_info_live_tokens_and_config_generation() {
    let (gw, _upstream) = start("");
    let s = scrape(&gw);
    assert_eq!(
        s.value(
            "portcullis_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0,
        "{}",
        s.text
    );
    assert_eq!(s.value("portcullis_config_generation", &[]), 1.0);
    let loaded = s.value(
        "portcullis_config_last_reload_success_timestamp_seconds",
        &[],
    );
    let now = unix_ms() as f64 / 1000.0;
    assert!(
        loaded > now - 3600.0 && loaded <= now + 1.0,
        "last reload at {loaded}, now {now}"
    );
    // Every client has a series from the start, at zero.
    assert!(
        s.samples.iter().any(|x| x.name == "portcullis_live_tokens"
            && x.labels.get("client").map(String::as_str) == Some("reporting")
            && x.value == 0.0),
        "{}",
        s.text
    );

    get_token(&gw, "billing", SECRET);
    get_token(&gw, "billing", SECRET);
    let live = || gw.metric_value("portcullis_live_tokens", &[("client", "billing")]);
    assert!(
        poll_until(Duration::from_secs(25), Duration::from_millis(200), || {
            live() == 2.0
        }),
        "portcullis_live_tokens{{client=\"billing\"}} is {} with 2 live tokens",
        live()
    );
}

#[test]
fn the_log_filter_applies_to_the_access_log() {
    // The access log's target filtered out (the listening line, target `portcullis`, stays).
    let upstream = Upstream::start();
    let gw = Gateway::start_with_env(
        &config(&upstream.url(), &closed_port_url(), ""),
        &[("RUST_LOG", "info,portcullis::access=warn")],
    );
    let r = get(&gw.url("/status/quiet"))
        .header("X-Request-Id", "obs-quiet")
        .send();
    assert_eq!(r.status, 200);
    // A line is written when the response ends; a second is long enough for it to show.
    std::thread::sleep(std::time::Duration::from_secs(1));
    assert!(
        access_lines(&gw).is_empty(),
        "access lines with portcullis::access=warn:\n{}",
        gw.logs()
    );
    // The same gateway's other lines still come: the filter is per target.
    assert!(gw.logs().contains("listening public="), "{}", gw.logs());
}
