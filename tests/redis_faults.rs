//! Redis faults with a real `redis-server` that the tests kill (SIGKILL), pause (SIGSTOP),
//! resume and restart: the gateway starts without Redis and recovers when it comes, fails
//! closed (503 with Retry-After, never 401 or 500) or serves cached tokens for `stale_for`,
//! answers in bounded time while Redis hangs, survives an outage in the middle of steady load,
//! and refuses malformed tokens without asking Redis at all.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::*;

/// How long a change of Redis's state may take to show in the gateway's answers: its health
/// check runs every 250 ms and each command times out after the configured 200 ms.
const NOTICE: Duration = Duration::from_secs(3);

/// A gateway on a fresh Redis with a 200 ms command timeout and the given `stale_for`.
fn env(stale_for: &str) -> RedisEnv {
    RedisEnv::start(&[("timeout", "200ms"), ("stale_for", stale_for)], None)
}

/// A token, used twice so the gateway has it in its in-process cache.
fn cached_token(gw: &Gateway) -> String {
    let token = get_token(gw, "billing", SECRET);
    for _ in 0..2 {
        let r = call(gw, &token);
        assert_eq!(r.status, 200, "{}", r.text());
    }
    token
}

/// 503 `temporarily_unavailable` with a `Retry-After`.
fn assert_unavailable(resp: &Resp, what: &str) {
    assert_eq!(
        resp.status,
        503,
        "{what}: expected 503, got {} {:?} {}",
        resp.status,
        resp.headers,
        resp.text()
    );
    resp.assert_error(503, Some("temporarily_unavailable"));
    let retry = resp
        .header("retry-after")
        .unwrap_or_else(|| panic!("{what}: 503 without Retry-After: {:?}", resp.headers));
    assert!(
        retry.trim().parse::<u64>().is_ok(),
        "{what}: Retry-After {retry:?} is not delay-seconds"
    );
}

/// Calls with `token` until the answer is 503, allowing 200 meanwhile (the gateway has not
/// noticed yet) but nothing else; panics if that takes longer than [`NOTICE`].
fn wait_for_503(gw: &Gateway, token: &str) -> Resp {
    let deadline = Instant::now() + NOTICE;
    loop {
        let r = call(gw, token);
        match r.status {
            503 => return r,
            200 => {}
            other => panic!(
                "a valid cached token got {other} during the outage (only 200 or 503 allowed): {}",
                r.text()
            ),
        }
        assert!(
            Instant::now() < deadline,
            "still 200 {NOTICE:?} into the outage"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn errors(gw: &Gateway, kind: &str) -> f64 {
    scrape(gw).value("portcullis_store_errors_total", &[("kind", kind)])
}

#[test]
fn redis_down_at_start_then_up_without_a_restart() {
    let up = Upstream::start();
    let port = free_port();
    let url = format!("redis://127.0.0.1:{port}/0");
    let yaml = store_config(
        &redis_store(&url, &[("timeout", "200ms")]),
        "1h",
        &suite_clients(None),
        &up.url(),
    );
    // Gateway::start waits for the `listening` line: it must come with Redis down.
    let gw = Gateway::start(&yaml);

    let r = readyz(&gw);
    assert_eq!(r.status, 503, "/readyz with Redis down: {}", r.text());
    assert!(
        r.text().to_lowercase().contains("redis"),
        "/readyz should say why (redis): {:?}",
        r.text()
    );
    let t = token_basic(&gw, "billing", SECRET, None);
    assert_unavailable(&t, "token endpoint with Redis down");
    assert_unavailable(
        &call(&gw, &unknown_token()),
        "a well-formed token with Redis down",
    );
    assert!(
        errors(&gw, "connection") + errors(&gw, "timeout") > 0.0,
        "no store error counted while Redis was down:\n{}",
        scrape(&gw).text
    );

    let _redis = RedisServer::start_on(port);
    let started = Instant::now();
    wait_ready(&gw);
    println!("ready {:?} after Redis came up", started.elapsed());
    let token = get_token(&gw, "billing", SECRET);
    assert_eq!(call(&gw, &token).status, 200);
    assert_eq!(readyz(&gw).status, 200);
}

#[test]
fn redis_killed_fails_closed_then_recovers() {
    let mut e = env("0s");
    let token = cached_token(&e.gw);
    let conn_errors = errors(&e.gw, "connection") + errors(&e.gw, "timeout");

    e.redis.kill();
    let first = wait_for_503(&e.gw, &token);
    assert_unavailable(&first, "cached token after Redis died (stale_for 0s)");
    for _ in 0..5 {
        assert_unavailable(&call(&e.gw, &token), "cached token, Redis down");
    }
    assert_unavailable(&call(&e.gw, &unknown_token()), "unknown token, Redis down");
    assert_unavailable(
        &token_basic(&e.gw, "billing", SECRET, None),
        "token endpoint, Redis down",
    );
    assert!(
        wait_until(NOTICE, Duration::from_millis(25), || readyz(&e.gw).status
            == 503),
        "/readyz still 200 with Redis dead"
    );
    assert!(readyz(&e.gw).text().to_lowercase().contains("redis"));
    let after = errors(&e.gw, "connection") + errors(&e.gw, "timeout");
    assert!(
        after > conn_errors,
        "store errors did not increase during the outage ({conn_errors} -> {after})"
    );

    // Redis comes back empty: the old token is unknown now, a new one works.
    e.redis.restart();
    let restarted = Instant::now();
    wait_ready(&e.gw);
    let refused = wait_until(Duration::from_secs(5), Duration::from_millis(25), || {
        let r = call(&e.gw, &token);
        assert!(
            r.status == 401 || r.status == 503,
            "old token after the restart: {} {} (its data is gone: 401, or 503 while reconnecting)",
            r.status,
            r.text()
        );
        r.status == 401
    });
    assert!(refused, "old token not refused after Redis came back empty");
    let fresh = get_token(&e.gw, "billing", SECRET);
    assert_eq!(call(&e.gw, &fresh).status, 200);
    println!("recovered {:?} after the restart", restarted.elapsed());
}

#[test]
fn stale_for_keeps_cached_tokens_during_an_outage() {
    let mut e = env("30s");
    let token = cached_token(&e.gw);
    let stale_before = scrape(&e.gw).value("portcullis_token_cache_total", &[("result", "stale")]);

    e.redis.kill();
    let until = Instant::now() + Duration::from_millis(1500);
    let mut n = 0;
    while Instant::now() < until {
        let r = call(&e.gw, &token);
        assert_eq!(
            r.status,
            200,
            "cached token refused during the outage with stale_for 30s (call {n}): {}",
            r.text()
        );
        n += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_unavailable(
        &call(&e.gw, &unknown_token()),
        "uncached well-formed token with stale_for",
    );
    assert_unavailable(
        &token_basic(&e.gw, "billing", SECRET, None),
        "token endpoint during the outage",
    );
    let stale_after = scrape(&e.gw).value("portcullis_token_cache_total", &[("result", "stale")]);
    assert!(
        stale_after > stale_before,
        "answers from the stale cache not counted ({stale_before} -> {stale_after})"
    );

    e.redis.restart();
    wait_ready(&e.gw);
    let fresh = get_token(&e.gw, "billing", SECRET);
    assert_eq!(call(&e.gw, &fresh).status, 200);
}

#[test]
fn paused_redis_costs_bounded_latency_then_recovers() {
    let e = env("0s");
    let token = cached_token(&e.gw);
    let timeouts = errors(&e.gw, "timeout");

    e.redis.pause();
    let paused = Instant::now();
    let first = wait_for_503(&e.gw, &token);
    assert_unavailable(&first, "cached token, Redis paused");
    println!("first 503 {:?} after SIGSTOP", paused.elapsed());
    let mut slowest = Duration::ZERO;
    for i in 0..4 {
        let start = Instant::now();
        // `call` gives up (and panics) after FAULT_CALL_TIMEOUT: a hung request fails here.
        let r = call(&e.gw, &token);
        slowest = slowest.max(start.elapsed());
        assert_unavailable(&r, &format!("call {i} while Redis is paused"));
    }
    let start = Instant::now();
    let t = token_basic(&e.gw, "billing", SECRET, None);
    slowest = slowest.max(start.elapsed());
    assert_unavailable(&t, "token endpoint while Redis is paused");
    let start = Instant::now();
    let unknown = call(&e.gw, &unknown_token());
    slowest = slowest.max(start.elapsed());
    assert_unavailable(&unknown, "unknown token while Redis is paused");
    println!(
        "slowest answer while paused: {slowest:?} (timeout 200ms, bound {FAULT_CALL_TIMEOUT:?})"
    );
    assert!(
        wait_until(NOTICE, Duration::from_millis(25), || readyz(&e.gw).status
            == 503),
        "/readyz still 200 with Redis paused"
    );
    let m = scrape(&e.gw);
    assert!(
        m.value("portcullis_store_errors_total", &[("kind", "timeout")]) > timeouts,
        "no timeout counted while Redis was paused:\n{}",
        m.text
    );

    e.redis.resume();
    // The data survived the pause: the same token works again.
    let back = wait_until(Duration::from_secs(10), Duration::from_millis(25), || {
        let r = call(&e.gw, &token);
        assert!(
            r.status == 200 || r.status == 503,
            "after resume: {} {}",
            r.status,
            r.text()
        );
        r.status == 200
    });
    assert!(back, "token not accepted again after Redis resumed");
    wait_ready(&e.gw);
    let fresh = get_token(&e.gw, "billing", SECRET);
    assert_eq!(call(&e.gw, &fresh).status, 200);
}

/// One answer under load: (status, has Retry-After), or the transport error; with when it
/// arrived relative to the kill and how long it took.
struct Outcome {
    result: Result<(u16, bool), String>,
    at_ms: i64,
    took: Duration,
}

/// Two client threads call through the gateway for 2 s; Redis is killed 0.7 s in.
fn load_through_a_kill(e: &mut RedisEnv) -> Vec<Outcome> {
    let tokens = [cached_token(&e.gw), cached_token(&e.gw)];
    let stop = Arc::new(AtomicBool::new(false));
    let url = e.gw.url("/api/load");
    let t0 = Instant::now();
    let kill_ms = 700;
    let workers: Vec<_> = tokens
        .into_iter()
        .map(|token| {
            let (stop, url) = (stop.clone(), url.clone());
            std::thread::spawn(move || {
                let mut out = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let start = Instant::now();
                    let r = get(&url)
                        .bearer(&token)
                        .timeout(FAULT_CALL_TIMEOUT)
                        .try_send();
                    out.push(Outcome {
                        result: match r {
                            Ok(r) => Ok((r.status, r.header("retry-after").is_some())),
                            Err(a) => Err(format!("{} (status {})", a.error, a.status)),
                        },
                        at_ms: t0.elapsed().as_millis() as i64 - kill_ms,
                        took: start.elapsed(),
                    });
                    std::thread::sleep(Duration::from_millis(2));
                }
                out
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(kill_ms as u64));
    e.redis.kill();
    std::thread::sleep(Duration::from_millis(1300));
    stop.store(true, Ordering::Relaxed);
    workers
        .into_iter()
        .flat_map(|w| w.join().expect("load thread"))
        .collect()
}

/// Counts by answer before and after the kill, the last 200 after it, the slowest answer.
fn summary(outcomes: &[Outcome]) -> String {
    let mut counts = std::collections::BTreeMap::new();
    for o in outcomes {
        let k = match &o.result {
            Ok((s, _)) => s.to_string(),
            Err(_) => "transport error".to_string(),
        };
        let phase = if o.at_ms < 0 {
            "before kill"
        } else {
            "after kill"
        };
        *counts.entry((phase, k)).or_insert(0) += 1;
    }
    let last_200 = outcomes
        .iter()
        .filter(|o| matches!(o.result, Ok((200, _))))
        .map(|o| o.at_ms)
        .max();
    let slowest = outcomes.iter().map(|o| o.took).max().unwrap_or_default();
    format!("{counts:?}; last 200 at {last_200:?} ms after the kill; slowest answer {slowest:?}")
}

#[test]
fn redis_killed_under_load_fail_closed() {
    let mut e = env("0s");
    let outcomes = load_through_a_kill(&mut e);
    let sum = summary(&outcomes);
    println!("stale_for 0s, Redis killed under load: {sum}");
    for o in &outcomes {
        match &o.result {
            Err(err) => panic!("a client saw a transport error: {err}; {sum}"),
            Ok((200, _)) => {}
            Ok((503, retry_after)) => assert!(retry_after, "503 without Retry-After"),
            Ok((s, _)) => panic!("status {s} under load (only 200 and 503 allowed); {sum}"),
        }
    }
    assert!(
        outcomes.iter().any(|o| matches!(o.result, Ok((503, _)))),
        "no 503 in 1.3 s of outage with stale_for 0s: {sum}"
    );
    assert!(outcomes
        .iter()
        .any(|o| o.at_ms < 0 && matches!(o.result, Ok((200, _)))));

    e.redis.restart();
    wait_ready(&e.gw);
    let fresh = get_token(&e.gw, "billing", SECRET);
    assert_eq!(call(&e.gw, &fresh).status, 200);
}

#[test]
fn redis_killed_under_load_with_stale_for_serves_everything() {
    let mut e = env("30s");
    let outcomes = load_through_a_kill(&mut e);
    let sum = summary(&outcomes);
    println!("stale_for 30s, Redis killed under load: {sum}");
    for o in &outcomes {
        assert!(
            matches!(o.result, Ok((200, _))),
            "with stale_for 30s every cached token should keep working, got {:?} {} ms after the kill; {sum}",
            o.result,
            o.at_ms
        );
    }
    assert!(
        outcomes.iter().any(|o| o.at_ms > 500),
        "no request made well into the outage: {sum}"
    );
    e.redis.restart();
    wait_ready(&e.gw);
    let fresh = get_token(&e.gw, "billing", SECRET);
    assert_eq!(call(&e.gw, &fresh).status, 200);
}

#[test]
fn malformed_tokens_are_refused_without_asking_redis() {
    let mut e = env("0s");
    let good = get_token(&e.gw, "billing", SECRET);
    let malformed = [
        "garbage".to_string(),
        "pct_short".to_string(),
        format!("{}x", good),
        good[..good.len() - 1].to_string(),
        format!("xyz_{}", &good[4..]),
        format!("pct_{}", "+".repeat(43)),
        format!("pct_{}~", &good[4..46]),
    ];
    let looked_up = |m: &Scrape| {
        m.value("portcullis_token_cache_total", &[])
            + m.value("portcullis_store_duration_seconds_count", &[("op", "get")])
    };

    let m0 = scrape(&e.gw);
    for t in &malformed {
        call(&e.gw, t).assert_error(401, Some("invalid_token"));
    }
    let m1 = scrape(&e.gw);
    assert_eq!(
        looked_up(&m1),
        looked_up(&m0),
        "malformed tokens reached the cache or Redis:\n{}",
        m1.text
    );

    e.redis.kill();
    // Wait until the gateway knows Redis is gone (a well-formed token gets 503)...
    let deadline = Instant::now() + NOTICE;
    loop {
        let r = call(&e.gw, &unknown_token());
        if r.status == 503 {
            break;
        }
        assert_eq!(r.status, 401, "{}", r.text());
        assert!(
            Instant::now() < deadline,
            "unknown tokens still 401 with Redis dead"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // ...malformed ones are still a plain 401: nothing to ask Redis about.
    for t in &malformed {
        call(&e.gw, t).assert_error(401, Some("invalid_token"));
    }
}
