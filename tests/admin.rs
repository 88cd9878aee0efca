//! The admin listener: health, readiness, and the Prometheus metrics with their bounded label
//! sets; and that the public listener never serves them (Kong G1: admin surfaces exposed).

mod support;

use std::collections::BTreeMap;

use support::*;

const SECRET: &str = "admin-test-secret-0123456789abcdefghijklmnopq";

struct Env {
    _up: Upstream,
    gw: Gateway,
}

fn env() -> Env {
    let up = Upstream::start();
    let mut y = config_head("1h");
    y.push_str("clients:\n");
    y.push_str(&client_yaml("billing", SECRET, &["accounts:read"]));
    y.push_str(&client_yaml("other", SECRET, &["accounts:read"]));
    y.push_str(&format!(
        r#"routes:
  - id: accounts
    path: /api/accounts
    upstream: {}
    scopes:
      read: [accounts:read]
  - id: status
    path: /api/status
    upstream: {}
    public: true
  - id: dead
    path: /dead
    upstream: {}
    public: true
"#,
        up.url(),
        up.url(),
        closed_port_url()
    ));
    let gw = Gateway::start(&y);
    Env { _up: up, gw }
}

/// One sample: metric name, labels, value.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses the Prometheus text format (samples only; comments skipped).
fn parse_metrics(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name, rest) = match line.find('{') {
            Some(i) => (&line[..i], &line[i..]),
            None => {
                let (n, r) = line.split_once(' ').expect("sample line");
                (n, r)
            }
        };
        let mut labels = BTreeMap::new();
        let mut rest = rest;
        if let Some(body) = rest.strip_prefix('{') {
            // key="value" pairs; values may hold escaped quotes.
            let mut chars = body.char_indices().peekable();
            let mut end = body.len();
            let mut key = String::new();
            while let Some((i, c)) = chars.next() {
                match c {
                    '}' => {
                        end = i + 1;
                        break;
                    }
                    ',' | ' ' => {}
                    '=' => {
                        assert_eq!(chars.next().map(|x| x.1), Some('"'), "{line}");
                        let mut val = String::new();
                        while let Some((_, c)) = chars.next() {
                            match c {
                                '\\' => {
                                    if let Some((_, e)) = chars.next() {
                                        val.push(match e {
                                            'n' => '\n',
                                            o => o,
                                        });
                                    }
                                }
                                '"' => break,
                                o => val.push(o),
                            }
                        }
                        labels.insert(std::mem::take(&mut key), val);
                    }
                    o => key.push(o),
                }
            }
            rest = &body[end..];
        }
        let value_text = rest.split_whitespace().next().unwrap_or("");
        let value = match value_text {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap_or(f64::NAN),
        };
        out.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    out
}

fn scrape(gw: &Gateway) -> (String, Vec<Sample>) {
    let resp = get(&gw.admin_url("/metrics")).send();
    assert_eq!(resp.status, 200, "{}", resp.text());
    let text = resp.text();
    let samples = parse_metrics(&text);
    (text, samples)
}

fn find<'a>(samples: &'a [Sample], name: &str, labels: &[(&str, &str)]) -> Vec<&'a Sample> {
    samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            labels
                .iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .collect()
}

fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    find(samples, name, labels).iter().map(|s| s.value).sum()
}

#[test]
fn health_and_readiness_answer_200() {
    let e = env();
    for path in ["/healthz", "/readyz"] {
        let resp = get(&e.gw.admin_url(path)).send();
        assert_eq!(resp.status, 200, "{path}: {}", resp.text());
    }
}

#[test]
fn metrics_count_requests_tokens_and_failures() {
    let e = env();
    let tok = get_token(&e.gw, "billing", SECRET);
    let tok2 = get_token(&e.gw, "billing", SECRET);
    let _ = get_token(&e.gw, "other", SECRET);
    let _ = token_basic(&e.gw, "billing", "wrong", None);
    let _ = post(&e.gw.url("/oauth/token"))
        .basic("billing", SECRET)
        .form(&[("grant_type", "password")])
        .send();
    for _ in 0..3 {
        assert_eq!(
            get(&e.gw.url("/api/accounts/1")).bearer(&tok).send().status,
            200
        );
    }
    assert_eq!(get(&e.gw.url("/api/accounts")).send().status, 401);
    assert_eq!(
        get(&e.gw.url("/api/accounts"))
            .bearer(&format!("pct_{}", "Z".repeat(43)))
            .send()
            .status,
        401
    );
    assert_eq!(get(&e.gw.url("/dead")).send().status, 502);

    let resp = get(&e.gw.admin_url("/metrics")).send();
    assert_eq!(resp.status, 200);
    let ct = resp.header("content-type").unwrap_or("");
    assert!(ct.starts_with("text/plain"), "{ct:?}");
    let text = resp.text();
    let s = parse_metrics(&text);

    let ok = value(
        &s,
        "portcullis_requests_total",
        &[("route", "accounts"), ("method", "GET"), ("status", "200")],
    );
    assert_eq!(ok, 3.0, "requests_total for accounts GET 200 in:\n{text}");
    assert!(
        value(
            &s,
            "portcullis_requests_total",
            &[("route", "accounts"), ("status", "401")]
        ) >= 2.0,
        "401s are counted:\n{text}"
    );
    assert_eq!(
        value(
            &s,
            "portcullis_requests_total",
            &[("route", "dead"), ("status", "502")]
        ),
        1.0,
        "502s are counted:\n{text}"
    );
    assert!(
        !find(
            &s,
            "portcullis_request_duration_seconds_bucket",
            &[("route", "accounts")]
        )
        .is_empty(),
        "duration histogram by route:\n{text}"
    );
    assert!(
        value(
            &s,
            "portcullis_request_duration_seconds_count",
            &[("route", "accounts")]
        ) >= 3.0,
        "{text}"
    );
    assert_eq!(
        value(
            &s,
            "portcullis_tokens_issued_total",
            &[("client", "billing")]
        ),
        2.0,
        "{text}"
    );
    assert_eq!(
        value(&s, "portcullis_tokens_issued_total", &[("client", "other")]),
        1.0,
        "{text}"
    );
    assert!(
        value(
            &s,
            "portcullis_token_errors_total",
            &[("error", "invalid_client")]
        ) >= 1.0,
        "{text}"
    );
    assert!(
        value(
            &s,
            "portcullis_token_errors_total",
            &[("error", "unsupported_grant_type")]
        ) >= 1.0,
        "{text}"
    );
    let auth_failures: Vec<_> = find(&s, "portcullis_auth_failures_total", &[]);
    assert!(
        auth_failures
            .iter()
            .all(|x| x.labels.contains_key("reason")),
        "{text}"
    );
    assert!(
        auth_failures.iter().map(|x| x.value).sum::<f64>() >= 2.0,
        "auth failures counted:\n{text}"
    );
    for secret in [SECRET, tok.as_str(), tok2.as_str()] {
        assert!(!text.contains(secret), "metrics leak a credential");
    }
}

#[test]
fn unmatched_paths_and_unknown_methods_use_fixed_labels() {
    let e = env();
    let tok = get_token(&e.gw, "billing", SECRET);
    assert_eq!(get(&e.gw.url("/no/such/thing")).send().status, 404);
    let resp = request("FOO", &e.gw.url("/api/accounts"))
        .bearer(&tok)
        .send();
    assert_eq!(resp.status, 405);
    let resp = request("BREW", &e.gw.url("/coffee")).send();
    assert_eq!(resp.status, 404);

    let (text, s) = scrape(&e.gw);
    assert!(
        value(
            &s,
            "portcullis_requests_total",
            &[("route", "none"), ("method", "GET"), ("status", "404")]
        ) >= 1.0,
        "{text}"
    );
    assert!(
        value(
            &s,
            "portcullis_requests_total",
            &[
                ("route", "accounts"),
                ("method", "other"),
                ("status", "405")
            ]
        ) >= 1.0,
        "{text}"
    );
    assert!(
        value(
            &s,
            "portcullis_requests_total",
            &[("route", "none"), ("method", "other"), ("status", "404")]
        ) >= 1.0,
        "{text}"
    );
    for raw in ["FOO", "BREW", "/no/such/thing", "/coffee"] {
        assert!(
            !text.contains(raw),
            "a raw request value {raw:?} became a label:\n{text}"
        );
    }
}

#[test]
fn a_scanner_cannot_blow_up_the_number_of_series() {
    let e = env();
    // Warm up the label sets a normal client produces.
    assert_eq!(get(&e.gw.url("/nothing")).send().status, 404);
    let (_, before) = scrape(&e.gw);
    let count = |s: &[Sample]| find(s, "portcullis_requests_total", &[]).len();
    let series_before = count(&before);

    // A deterministic pseudo-random scan: 200 distinct paths, some with odd methods.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut probes = Vec::new();
    for i in 0..200 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let path = format!("/scan{:x}/{}", x, i);
        let method = match i % 4 {
            0 => format!("M{:X}", x % 100_000),
            1 => "POST".to_string(),
            _ => "GET".to_string(),
        };
        let resp = request(&method, &e.gw.url(&path)).send();
        assert!(resp.status >= 400, "{method} {path}: {}", resp.status);
        probes.push((method, path));
    }
    let (text, after) = scrape(&e.gw);
    let series_after = count(&after);
    assert!(
        series_after <= series_before + 4,
        "requests_total went from {series_before} to {series_after} series after a scan:\n{text}"
    );
    for (method, path) in &probes {
        assert!(!text.contains(path.as_str()), "path {path} became a label");
        if method.starts_with('M') {
            assert!(
                !text.contains(&format!("\"{method}\"")),
                "method {method} became a label"
            );
        }
    }
}

#[test]
fn public_listener_does_not_serve_metrics() {
    let e = env();
    // Some traffic so the metrics text is not empty.
    let _ = get_token(&e.gw, "billing", SECRET);
    for path in ["/metrics", "/metrics/", "/admin/metrics"] {
        let resp = get(&e.gw.url(path)).send();
        assert_ne!(resp.status, 200, "{path} on the public listener");
        assert!(
            !resp.text().contains("portcullis_"),
            "{path} on the public listener served metrics: {}",
            resp.text()
        );
    }
    // The admin listener is a different socket.
    assert_ne!(e.gw.addr(), e.gw.admin_addr());
}
