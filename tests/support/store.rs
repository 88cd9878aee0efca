//! Helpers shared by the Redis store tests: gateway configs on a Redis store, waiting for
//! readiness, the revocation and introspection endpoints, well-formed tokens the gateway never
//! issued, bounded polling, and reading the Prometheus metrics of the admin listener.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use sha2::{Digest, Sha256};

use super::{client_yaml, get, post, Gateway, RedisServer, Resp, Upstream};

/// Secret of every client in the Redis suite.
pub const SECRET: &str = "a-long-enough-client-secret-for-redis-tests-01";
/// How long a gateway may take to report ready once Redis answers.
pub const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on one request while Redis is down or paused: the gateway must answer well within it.
pub const FAULT_CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// A `store:` block for one Redis server, with extra `store.redis` settings (`("stale_for",
/// "30s")`).
pub fn redis_store(url: &str, extra: &[(&str, &str)]) -> String {
    let mut s = format!("store:\n  redis:\n    url: \"{url}\"\n");
    for (k, v) in extra {
        s.push_str(&format!("    {k}: {v}\n"));
    }
    s
}

/// A `store:` block for a Redis Cluster given by its node URLs.
pub fn cluster_store(urls: &[String], extra: &[(&str, &str)]) -> String {
    let list = urls
        .iter()
        .map(|u| format!("\"{u}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let mut s = format!("store:\n  redis:\n    cluster: [{list}]\n");
    for (k, v) in extra {
        s.push_str(&format!("    {k}: {v}\n"));
    }
    s
}

/// The suite's clients: `billing` (scopes a, b), `other` (scope a), both with [`SECRET`];
/// `billing` gets `max_live_tokens` when given.
pub fn suite_clients(billing_max_live: Option<u32>) -> String {
    let mut s = client_yaml("billing", SECRET, &["a", "b"]);
    if let Some(n) = billing_max_live {
        s.push_str(&format!("    max_live_tokens: {n}\n"));
    }
    s.push_str(&client_yaml("other", SECRET, &["a"]));
    s
}

/// A whole gateway config: free ports, the given `store:` block and TTL, the suite's clients,
/// and one route `/api` to `upstream` needing scope `a`.
pub fn store_config(store: &str, ttl: &str, clients: &str, upstream: &str) -> String {
    format!(
        "listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\n{store}tokens:\n  ttl: {ttl}\n  token_path: /oauth/token\nclients:\n{clients}routes:\n  - id: api\n    path: /api\n    upstream: {upstream}\n    scopes:\n      read: [a]\n      write: [a]\n"
    )
}

/// A recording upstream, a fresh Redis, and a ready gateway on both (the suite's clients, TTL
/// 1h, route `/api`).
pub struct RedisEnv {
    pub up: Upstream,
    pub redis: RedisServer,
    pub gw: Gateway,
}

impl RedisEnv {
    /// With extra `store.redis` settings and an optional `max_live_tokens` for `billing`.
    pub fn start(extra: &[(&str, &str)], billing_max_live: Option<u32>) -> RedisEnv {
        let up = Upstream::start();
        let redis = RedisServer::start();
        let yaml = store_config(
            &redis_store(&redis.url(), extra),
            "1h",
            &suite_clients(billing_max_live),
            &up.url(),
        );
        let gw = start_ready(&yaml);
        RedisEnv { up, redis, gw }
    }
}

/// Polls `f` every `every` until it is true or `timeout` passes; whether it became true.
pub fn wait_until(timeout: Duration, every: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(every);
    }
}

/// `GET /readyz` on the admin listener, bounded.
pub fn readyz(gw: &Gateway) -> Resp {
    get(&gw.admin_url("/readyz"))
        .timeout(FAULT_CALL_TIMEOUT)
        .send()
}

/// Waits until `/readyz` answers 200; panics with the last answer and the logs otherwise.
pub fn wait_ready(gw: &Gateway) {
    let mut last = None;
    let ok = wait_until(READY_TIMEOUT, Duration::from_millis(25), || {
        let r = readyz(gw);
        let ok = r.status == 200;
        last = Some(r);
        ok
    });
    if !ok {
        let r = last.unwrap();
        panic!(
            "gateway not ready within {READY_TIMEOUT:?}: {} {:?}; logs:\n{}",
            r.status,
            r.text(),
            gw.logs()
        );
    }
}

/// Starts a gateway and waits until it is ready (connected to Redis).
pub fn start_ready(yaml: &str) -> Gateway {
    let gw = Gateway::start(yaml);
    wait_ready(&gw);
    gw
}

/// Waits (without failing) for a log line containing `needle`; whether it appeared.
pub fn wait_log(gw: &Gateway, needle: &str, timeout: Duration) -> bool {
    wait_until(timeout, Duration::from_millis(20), || {
        gw.logs().contains(needle)
    })
}

/// `GET /api/x` with the bearer token, bounded by [`FAULT_CALL_TIMEOUT`]; panics on a
/// transport error (the gateway must always answer).
pub fn call(gw: &Gateway, token: &str) -> Resp {
    get(&gw.url("/api/x"))
        .bearer(token)
        .timeout(FAULT_CALL_TIMEOUT)
        .send()
}

/// `POST /oauth/revoke` (RFC 7009) with client_secret_basic.
pub fn revoke(gw: &Gateway, id: &str, secret: &str, token: &str) -> Resp {
    post(&gw.url("/oauth/revoke"))
        .basic(id, secret)
        .form(&[("token", token)])
        .timeout(FAULT_CALL_TIMEOUT)
        .send()
}

/// `POST /oauth/introspect` (RFC 7662) with client_secret_basic.
pub fn introspect(gw: &Gateway, id: &str, secret: &str, token: &str) -> Resp {
    post(&gw.url("/oauth/introspect"))
        .basic(id, secret)
        .form(&[("token", token)])
        .timeout(FAULT_CALL_TIMEOUT)
        .send()
}

/// A token of the gateway's shape (`pct_` and 43 base64url characters) that it never issued.
pub fn unknown_token() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let seed = format!(
        "{:?}-{}-{}",
        SystemTime::now().duration_since(UNIX_EPOCH).unwrap(),
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    );
    let digest = Sha256::digest(seed.as_bytes());
    format!(
        "pct_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest)
    )
}

/// Unix time now, in milliseconds.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

// ---------------------------------------------------------------------------------------------
// Metrics
// ---------------------------------------------------------------------------------------------

/// One sample of the Prometheus text format.
#[derive(Debug, Clone)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A scrape of `/metrics`.
#[derive(Debug, Clone)]
pub struct Scrape {
    pub text: String,
    pub samples: Vec<Sample>,
}

impl Scrape {
    /// The sum of the samples named `name` whose labels include `labels`.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|s| s.name == name)
            .filter(|s| {
                labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.value)
            .sum()
    }

    /// Whether any sample is named `name`.
    pub fn has(&self, name: &str) -> bool {
        self.samples.iter().any(|s| s.name == name)
    }
}

/// Scrapes the admin listener's `/metrics`.
pub fn scrape(gw: &Gateway) -> Scrape {
    let resp = get(&gw.admin_url("/metrics"))
        .timeout(FAULT_CALL_TIMEOUT)
        .send();
    assert_eq!(resp.status, 200, "/metrics: {}", resp.text());
    let text = resp.text();
    Scrape {
        samples: parse_metrics(&text),
        text,
    }
}

/// Parses sample lines `name{k="v",...} value` (label values without escaped quotes, which
/// is all the gateway emits for these families); comments are skipped.
pub fn parse_metrics(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name, labels, rest) = match line.find('{') {
            Some(i) => {
                let end = i + line[i..].find('}').expect("closing brace");
                let mut labels = BTreeMap::new();
                for pair in line[i + 1..end].split("\",") {
                    if let Some((k, v)) = pair.split_once('=') {
                        labels.insert(k.trim().to_string(), v.trim().trim_matches('"').to_string());
                    }
                }
                (&line[..i], labels, &line[end + 1..])
            }
            None => {
                let (n, r) = line.split_once(' ').expect("sample line");
                (n, BTreeMap::new(), r)
            }
        };
        let value = match rest.split_whitespace().next().unwrap_or("") {
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
