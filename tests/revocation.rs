//! Revocation (RFC 7009) with the Redis store: the endpoint's answers; a token revoked on
//! replica B stops working on replica A, which had it in its in-process cache, within the
//! contract's 100 ms (measured by A's `portcullis_revocation_lag_seconds`; the test's own
//! polling bound is a generous 1 s); evictions by `max_live_tokens` reach the other replica;
//! and `portcullis revoke --client` ends every live token of a client on every replica, leaving
//! other clients alone.

mod support;

use std::time::{Duration, Instant};

use support::*;

/// The bound the tests poll within; the contract's 100 ms is checked on the lag histogram.
const PROPAGATION_BOUND: Duration = Duration::from_secs(1);

struct Pair {
    _up: Upstream,
    redis: RedisServer,
    a: Gateway,
    b: Gateway,
}

fn pair() -> Pair {
    let up = Upstream::start();
    let redis = RedisServer::start();
    let yaml = store_config(
        &redis_store(&redis.url(), &[]),
        "1h",
        &suite_clients(None),
        &up.url(),
    );
    let a = start_ready(&yaml);
    let b = start_ready(&yaml);
    // Not an assertion: a replica that is not subscribed yet re-checks Redis, which is also
    // correct, but the lag histogram is only fed by the subscription.
    for gw in [&a, &b] {
        wait_log(gw, "subscribed", Duration::from_secs(3));
    }
    Pair {
        _up: up,
        redis,
        a,
        b,
    }
}

/// Polls `gw` with `token` until it is refused with 401; the time it took after `since`.
fn poll_until_refused(gw: &Gateway, token: &str, since: Instant) -> Duration {
    let deadline = since + PROPAGATION_BOUND;
    loop {
        let r = call(gw, token);
        match r.status {
            401 => {
                r.assert_error(401, Some("invalid_token"));
                return since.elapsed();
            }
            200 => {}
            other => panic!(
                "while waiting for the revocation: {other} {} (expected 200, then 401)",
                r.text()
            ),
        }
        assert!(
            Instant::now() < deadline,
            "token still accepted {:?} after its revocation on another replica",
            since.elapsed()
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn assert_invalid_token(resp: &Resp) {
    resp.assert_error(401, Some("invalid_token"));
}

fn lag_count(gw: &Gateway) -> f64 {
    scrape(gw).value("portcullis_revocation_lag_seconds_count", &[])
}

#[test]
fn revoked_on_b_is_refused_on_a_quickly() {
    let p = pair();
    let token = get_token(&p.a, "billing", SECRET);
    let bystander = get_token(&p.a, "billing", SECRET);
    // Used on A twice: A holds it in its in-process cache.
    let m0 = scrape(&p.a);
    for _ in 0..2 {
        assert_eq!(call(&p.a, &token).status, 200);
    }
    assert_eq!(call(&p.b, &token).status, 200, "works on B before");
    let m1 = scrape(&p.a);
    assert!(
        m1.value("portcullis_token_cache_total", &[("result", "hit")])
            >= m0.value("portcullis_token_cache_total", &[("result", "hit")]) + 2.0,
        "A should be answering this token from its cache:\n{}",
        m1.text
    );
    let lag_before = m1.value("portcullis_revocation_lag_seconds_count", &[]);
    let b_revocations = scrape(&p.b).value("portcullis_revocations_total", &[]);

    let r = revoke(&p.b, "billing", SECRET, &token);
    let revoked_at = Instant::now();
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.body.is_empty(), "revoke body {:?}", r.text());
    let lag = poll_until_refused(&p.a, &token, revoked_at);
    println!("revocation on B refused on A after {lag:?} (polling bound {PROPAGATION_BOUND:?})");

    assert_eq!(
        introspect(&p.a, "billing", SECRET, &token).json(),
        serde_json::json!({ "active": false })
    );
    assert_eq!(call(&p.b, &token).status, 401, "refused on B too");
    assert_eq!(
        call(&p.a, &bystander).status,
        200,
        "another token of the same client was affected"
    );
    assert_eq!(
        scrape(&p.b).value("portcullis_revocations_total", &[]) - b_revocations,
        1.0,
        "B counts the revocation it made"
    );

    // A saw the revocation through its subscription: one lag observation, within 100 ms.
    assert!(
        wait_until(PROPAGATION_BOUND, Duration::from_millis(10), || lag_count(
            &p.a
        )
            > lag_before),
        "A recorded no revocation lag:\n{}",
        scrape(&p.a).text
    );
    let m = scrape(&p.a);
    let count = m.value("portcullis_revocation_lag_seconds_count", &[]);
    let within = m.value("portcullis_revocation_lag_seconds_bucket", &[("le", "0.1")]);
    let sum = m.value("portcullis_revocation_lag_seconds_sum", &[]);
    println!("A's revocation_lag_seconds: count {count}, sum {sum:.6} s, within 100 ms: {within}");
    assert_eq!(
        within, count,
        "every revocation should reach A within 100 ms (portcullis_revocation_lag_seconds):\n{}",
        m.text
    );
}

#[test]
fn revoke_command_ends_every_token_of_a_client_on_every_replica() {
    let p = pair();
    // Tokens of billing from both replicas, each used on both (so cached everywhere).
    let billing: Vec<String> = (0..4)
        .map(|i| get_token(if i % 2 == 0 { &p.a } else { &p.b }, "billing", SECRET))
        .collect();
    let other = get_token(&p.a, "other", SECRET);
    for t in billing.iter().chain([&other]) {
        for gw in [&p.a, &p.b] {
            assert_eq!(call(gw, t).status, 200);
        }
    }

    let out = run_cli(
        &[
            "revoke",
            "--client",
            "billing",
            "--config",
            p.a.config_path().to_str().unwrap(),
        ],
        None,
        &[],
    );
    let done = Instant::now();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "portcullis revoke failed ({}): {stdout}{stderr}",
        out.status
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.split(|c: char| !c.is_ascii_digit()).any(|w| w == "4")),
        "revoke should print how many tokens it revoked (4): {stdout:?}"
    );

    for gw in [&p.a, &p.b] {
        for t in &billing {
            poll_until_refused(gw, t, done);
        }
    }
    println!(
        "every billing token refused on both replicas {:?} after the command",
        done.elapsed()
    );
    for gw in [&p.a, &p.b] {
        assert_eq!(
            call(gw, &other).status,
            200,
            "another client's token was revoked"
        );
    }
    assert_eq!(
        p.redis.keys("portcullis:t:*").len(),
        1,
        "only the other client's token should be left: {:?}",
        p.redis.keys("*")
    );
    // The client can still get new tokens.
    let fresh = get_token(&p.b, "billing", SECRET);
    assert_eq!(call(&p.a, &fresh).status, 200);

    // The other client's turn: its token goes, billing's new one stays.
    let out = run_cli(
        &[
            "revoke",
            "--client",
            "other",
            "--config",
            p.a.config_path().to_str().unwrap(),
        ],
        None,
        &[],
    );
    assert!(out.status.success(), "{:?}", out);
    let done = Instant::now();
    for gw in [&p.a, &p.b] {
        poll_until_refused(gw, &other, done);
    }
    assert_eq!(
        call(&p.a, &fresh).status,
        200,
        "billing's new token survived"
    );
}

#[test]
fn revoke_command_with_the_memory_store_explains_and_fails() {
    let mut y = config_head("1h");
    y.push_str("clients:\n");
    y.push_str(&suite_clients(None));
    y.push_str(&format!(
        "routes:\n  - id: api\n    path: /api\n    upstream: {}\n    scopes:\n      read: [a]\n",
        closed_port_url()
    ));
    let config = write_config(&y);
    let out = run_cli(
        &[
            "revoke",
            "--client",
            "billing",
            "--config",
            config.path().to_str().unwrap(),
        ],
        None,
        &[],
    );
    let stderr = String::from_utf8_lossy(&out.stderr).to_lowercase();
    assert_eq!(
        out.status.code(),
        Some(1),
        "revoke on the memory store should exit 1: {out:?}"
    );
    assert!(
        stderr.contains("redis") || stderr.contains("memory"),
        "the error should say why (the memory store): {stderr:?}"
    );
}

#[test]
fn max_live_tokens_eviction_reaches_the_other_replica() {
    let up = Upstream::start();
    let redis = RedisServer::start();
    let yaml = store_config(
        &redis_store(&redis.url(), &[]),
        "1h",
        &suite_clients(Some(3)),
        &up.url(),
    );
    let a = start_ready(&yaml);
    let b = start_ready(&yaml);
    wait_log(&a, "subscribed", Duration::from_secs(3));
    let first = get_token(&b, "billing", SECRET);
    assert_eq!(call(&a, &first).status, 200, "cached on A");
    for _ in 0..3 {
        get_token(&b, "billing", SECRET);
    }
    let done = Instant::now();
    let lag = poll_until_refused(&a, &first, done);
    println!("oldest token evicted on B refused on A after {lag:?}");
}

#[test]
fn revocation_endpoint_follows_rfc_7009() {
    let e = RedisEnv::start(&[], None);
    let mine = get_token(&e.gw, "billing", SECRET);
    let theirs = get_token(&e.gw, "other", SECRET);
    assert_eq!(call(&e.gw, &mine).status, 200);
    assert_eq!(call(&e.gw, &theirs).status, 200);

    // Unknown and malformed tokens: 200, empty body.
    for t in [unknown_token(), "not-a-token".to_string()] {
        let r = revoke(&e.gw, "billing", SECRET, &t);
        assert_eq!(r.status, 200, "revoke {t:?}: {}", r.text());
        assert!(r.body.is_empty(), "revoke {t:?}: body {:?}", r.text());
    }

    // Another client's token: 200, and nothing happens to it.
    let r = revoke(&e.gw, "billing", SECRET, &theirs);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.body.is_empty(), "{:?}", r.text());
    assert_eq!(
        call(&e.gw, &theirs).status,
        200,
        "a client revoked another client's token"
    );
    assert!(
        !e.redis
            .keys(&format!("portcullis:t:{}", sha256_hex(theirs.as_bytes())))
            .is_empty(),
        "the other client's token was deleted from Redis"
    );

    // Missing token parameter; wrong secret; no client authentication.
    post(&e.gw.url("/oauth/revoke"))
        .basic("billing", SECRET)
        .form(&[("token_type_hint", "access_token")])
        .send()
        .assert_error(400, Some("invalid_request"));
    revoke(&e.gw, "billing", "wrong-secret", &mine).assert_error(401, Some("invalid_client"));
    post(&e.gw.url("/oauth/revoke"))
        .form(&[("token", &mine)])
        .send()
        .assert_error(401, Some("invalid_client"));
    assert_eq!(call(&e.gw, &mine).status, 200, "failed revocations revoked");

    // Its own token: 200, empty body, refused afterwards, gone from Redis (token and index).
    let hex = sha256_hex(mine.as_bytes());
    let r = revoke(&e.gw, "billing", SECRET, &mine);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.body.is_empty(), "{:?}", r.text());
    assert_invalid_token(&call(&e.gw, &mine));
    assert!(e.redis.keys(&format!("portcullis:t:{hex}")).is_empty());
    let members = lines(&e.redis.cli(&["ZRANGE", "portcullis:c:billing", "0", "-1"]));
    assert!(
        !members.contains(&hex),
        "revoked digest still in the client index"
    );
    // Revoking it again is fine.
    assert_eq!(revoke(&e.gw, "billing", SECRET, &mine).status, 200);
    // client_secret_post works too.
    let third = get_token(&e.gw, "billing", SECRET);
    let r = post(&e.gw.url("/oauth/revoke"))
        .form(&[
            ("token", third.as_str()),
            ("client_id", "billing"),
            ("client_secret", SECRET),
        ])
        .send();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_invalid_token(&call(&e.gw, &third));
    assert_eq!(call(&e.gw, &theirs).status, 200);
}
