//! The Redis token store with one real `redis-server`: what the gateway writes (digests only,
//! TTLs, the per-client index), tokens shared between replicas, the revocation and
//! introspection endpoints (RFC 7009, RFC 7662) and their discovery entries, the live-token
//! bound per client, and the store and cache metrics.

mod support;

use std::collections::BTreeSet;

use support::*;

struct Env {
    _up: Upstream,
    redis: RedisServer,
    gw: Gateway,
}

fn env_with(extra: &[(&str, &str)], billing_max_live: Option<u32>) -> Env {
    let up = Upstream::start();
    let redis = RedisServer::start();
    let yaml = store_config(
        &redis_store(&redis.url(), extra),
        "1h",
        &suite_clients(billing_max_live),
        &up.url(),
    );
    let gw = start_ready(&yaml);
    Env { _up: up, redis, gw }
}

fn env() -> Env {
    env_with(&[], None)
}

fn assert_invalid_token(resp: &Resp) {
    resp.assert_error(401, Some("invalid_token"));
}

#[test]
fn redis_keys_hold_the_digest_the_grant_and_a_ttl_never_the_token() {
    let e = env();
    let before = unix_ms();
    let token = get_token(&e.gw, "billing", SECRET);
    let after = unix_ms();
    let hex = sha256_hex(token.as_bytes());

    let key = format!("portcullis:t:{hex}");
    let keys: BTreeSet<String> = e.redis.keys("*").into_iter().collect();
    assert!(
        keys.contains(&key),
        "no key {key} after issuing; keys: {keys:?}"
    );
    assert!(
        keys.contains("portcullis:c:billing"),
        "no client index portcullis:c:billing; keys: {keys:?}"
    );

    // The grant: client, scopes, issue and expiry in Unix ms, and the fingerprint of the
    // secret that obtained it (16 hex digits).
    let value = e.redis.cli(&["GET", &key]);
    let parts: Vec<&str> = value.trim_end_matches('\n').split('\n').collect();
    assert_eq!(parts.len(), 5, "grant value {value:?}");
    assert!(
        parts[4].len() == 16 && parts[4].bytes().all(|b| b.is_ascii_hexdigit()),
        "secret fingerprint in {value:?}"
    );
    assert_eq!(parts[0], "billing", "client in {value:?}");
    assert_eq!(word_set(parts[1]), word_set("a b"), "scopes in {value:?}");
    let iat: u64 = parts[2].parse().expect("iat_ms");
    let exp: u64 = parts[3].parse().expect("exp_ms");
    assert!(
        (before.saturating_sub(1000)..=after + 1000).contains(&iat),
        "iat {iat} not within the request ({before}..{after})"
    );
    assert_eq!(exp - iat, 3_600_000, "exp - iat should be the 1h TTL");

    // Redis expires the key with the token.
    let ttl: i64 = e.redis.cli(&["TTL", &key]).trim().parse().expect("TTL");
    assert!(
        (3590..=3600).contains(&ttl),
        "TTL of the token key should be about 3600 s, got {ttl}"
    );
    let pttl: i64 = e.redis.cli(&["PTTL", &key]).trim().parse().expect("PTTL");
    assert!(pttl <= 3_600_000 && pttl > 3_590_000, "PTTL {pttl}");

    // The client index is a sorted set holding the digest.
    assert_eq!(
        e.redis.cli(&["TYPE", "portcullis:c:billing"]).trim(),
        "zset"
    );
    let members = lines(&e.redis.cli(&["ZRANGE", "portcullis:c:billing", "0", "-1"]));
    assert_eq!(members, vec![hex.clone()], "members of the client index");
    let index_ttl: i64 = e
        .redis
        .cli(&["TTL", "portcullis:c:billing"])
        .trim()
        .parse()
        .unwrap();
    assert!(
        index_ttl > 0,
        "the client index should expire too (TTL {index_ttl}), so nothing is left behind"
    );

    // Neither the token nor its random part appears in any key or value.
    let random = &token["pct_".len()..];
    for k in &keys {
        assert!(
            !k.contains(random),
            "a Redis key contains the token text: {k}"
        );
        let content = match e.redis.cli(&["TYPE", k]).trim() {
            "string" => e.redis.cli(&["GET", k]),
            "zset" => e.redis.cli(&["ZRANGE", k, "0", "-1", "WITHSCORES"]),
            "set" => e.redis.cli(&["SMEMBERS", k]),
            "hash" => e.redis.cli(&["HGETALL", k]),
            "list" => e.redis.cli(&["LRANGE", k, "0", "-1"]),
            other => panic!("unexpected Redis type {other} for {k}"),
        };
        assert!(
            !content.contains(random),
            "the value of {k} contains the token text"
        );
    }
    // And the token works.
    assert_eq!(call(&e.gw, &token).status, 200);
}

#[test]
fn key_prefix_is_used_for_every_key() {
    let e = env_with(&[("key_prefix", "\"pc-test:\"")], None);
    let token = get_token(&e.gw, "billing", SECRET);
    let keys = e.redis.keys("*");
    assert!(
        keys.contains(&format!("pc-test:t:{}", sha256_hex(token.as_bytes()))),
        "no pc-test:t:<digest> key: {keys:?}"
    );
    assert!(
        keys.iter().all(|k| k.starts_with("pc-test:")),
        "keys outside the configured prefix: {keys:?}"
    );
    assert_eq!(call(&e.gw, &token).status, 200);
}

#[test]
fn a_token_issued_on_one_replica_works_on_another() {
    let e = env();
    let up2 = Upstream::start();
    let yaml_b = store_config(
        &redis_store(&e.redis.url(), &[]),
        "1h",
        &suite_clients(None),
        &up2.url(),
    );
    let b = start_ready(&yaml_b);

    let token = get_token(&e.gw, "billing", SECRET);
    let resp = call(&b, &token);
    assert_eq!(resp.status, 200, "token from A on B: {}", resp.text());
    assert_eq!(up2.count(), 1, "B forwarded the request");
    let fwd = up2.take_one();
    assert_eq!(fwd.header("x-client-id").as_deref(), Some("billing"));

    // And the other way round.
    let token_b = get_token(&b, "other", SECRET);
    assert_eq!(call(&e.gw, &token_b).status, 200);
    let i = introspect(&e.gw, "other", SECRET, &token_b).json();
    assert_eq!(i["active"], true, "{i}");
    assert_eq!(i["client_id"], "other", "{i}");
}

#[test]
fn introspection_answers_rfc_7662() {
    let e = env();
    let before = unix_ms() / 1000;
    let token = get_token(&e.gw, "billing", SECRET);
    let after = unix_ms() / 1000;

    let resp = introspect(&e.gw, "billing", SECRET, &token);
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert!(
        resp.header("content-type")
            .unwrap_or("")
            .starts_with("application/json"),
        "{:?}",
        resp.headers
    );
    let v = resp.json();
    assert_eq!(v["active"], true, "{v}");
    assert_eq!(
        word_set(v["scope"].as_str().expect("scope")),
        word_set("a b"),
        "{v}"
    );
    assert_eq!(v["client_id"], "billing", "{v}");
    assert_eq!(v["token_type"], "Bearer", "{v}");
    let iat = v["iat"].as_u64().expect("iat in whole seconds");
    let exp = v["exp"].as_u64().expect("exp in whole seconds");
    assert!(
        (before.saturating_sub(1)..=after + 1).contains(&iat),
        "iat {iat} not within {before}..{after}"
    );
    assert!(
        (3599..=3601).contains(&(exp - iat)),
        "exp - iat = {} (ttl 1h)",
        exp - iat
    );

    // Another replica (fresh cache) gives the same answer from Redis.
    let b = start_ready(&store_config(
        &redis_store(&e.redis.url(), &[]),
        "1h",
        &suite_clients(None),
        &closed_port_url(),
    ));
    let vb = introspect(&b, "billing", SECRET, &token).json();
    assert_eq!(vb["active"], true, "{vb}");
    assert_eq!(vb["exp"], v["exp"], "{vb}");
    assert_eq!(vb["iat"], v["iat"], "{vb}");

    // Anything that is not a live token is just inactive.
    let inactive = serde_json::json!({ "active": false });
    for t in [
        unknown_token(),
        "garbage".to_string(),
        "pct_short".to_string(),
    ] {
        let r = introspect(&e.gw, "billing", SECRET, &t);
        assert_eq!(r.status, 200, "introspect {t:?}: {}", r.text());
        assert_eq!(r.json(), inactive, "introspect {t:?}");
    }
    assert_eq!(revoke(&e.gw, "billing", SECRET, &token).status, 200);
    assert_eq!(
        introspect(&e.gw, "billing", SECRET, &token).json(),
        inactive
    );

    // Client-authenticated like the token endpoint.
    introspect(&e.gw, "billing", "wrong-secret", &token).assert_error(401, Some("invalid_client"));
    let anon = post(&e.gw.url("/oauth/introspect"))
        .form(&[("token", &token)])
        .send();
    anon.assert_error(401, Some("invalid_client"));
}

#[test]
fn introspection_works_with_the_memory_store() {
    let up = Upstream::start();
    let mut y = config_head("1h");
    y.push_str("clients:\n");
    y.push_str(&suite_clients(None));
    y.push_str(&format!(
        "routes:\n  - id: api\n    path: /api\n    upstream: {}\n    scopes:\n      read: [a]\n",
        up.url()
    ));
    let gw = Gateway::start(&y);
    let token = get_token_scoped(&gw, "billing", SECRET, "a");
    let v = introspect(&gw, "billing", SECRET, &token).json();
    assert_eq!(v["active"], true, "{v}");
    assert_eq!(v["scope"], "a", "{v}");
    assert_eq!(v["client_id"], "billing", "{v}");
    assert_eq!(v["token_type"], "Bearer", "{v}");
    assert!(
        v["exp"].as_u64().unwrap() > v["iat"].as_u64().unwrap(),
        "{v}"
    );
    assert_eq!(
        introspect(&gw, "billing", SECRET, &unknown_token()).json(),
        serde_json::json!({ "active": false })
    );
    // Revocation also works on the memory store.
    assert_eq!(revoke(&gw, "billing", SECRET, &token).status, 200);
    assert_invalid_token(&call(&gw, &token));
    assert_eq!(
        introspect(&gw, "billing", SECRET, &token).json(),
        serde_json::json!({ "active": false })
    );
}

#[test]
fn discovery_lists_revocation_and_introspection() {
    let e = env();
    let resp = get(&e.gw.url("/.well-known/oauth-authorization-server")).send();
    assert_eq!(resp.status, 200, "{}", resp.text());
    let v = resp.json();
    let issuer = v["issuer"].as_str().expect("issuer");
    assert_eq!(
        v["revocation_endpoint"].as_str(),
        Some(format!("{issuer}/oauth/revoke").as_str()),
        "{v}"
    );
    assert_eq!(
        v["introspection_endpoint"].as_str(),
        Some(format!("{issuer}/oauth/introspect").as_str()),
        "{v}"
    );
}

#[test]
fn revocation_endpoint_follows_rfc_7009() {
    let e = env();
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

#[test]
fn max_live_tokens_revokes_the_oldest() {
    let e = env_with(&[], Some(3));
    let tokens: Vec<String> = (0..5)
        .map(|_| get_token(&e.gw, "billing", SECRET))
        .collect();
    for (i, t) in tokens.iter().enumerate() {
        let r = call(&e.gw, t);
        if i < 2 {
            assert_eq!(
                r.status,
                401,
                "token #{i} (of the 2 oldest) should be revoked: {}",
                r.text()
            );
            assert_invalid_token(&r);
        } else {
            assert_eq!(r.status, 200, "token #{i} (newest 3): {}", r.text());
        }
    }
    let card: i64 = e
        .redis
        .cli(&["ZCARD", "portcullis:c:billing"])
        .trim()
        .parse()
        .unwrap();
    assert_eq!(card, 3, "client index size");
    assert_eq!(e.redis.keys("portcullis:t:*").len(), 3, "token keys");
    // Other clients are not affected by billing's bound.
    let others: Vec<String> = (0..5).map(|_| get_token(&e.gw, "other", SECRET)).collect();
    for t in &others {
        assert_eq!(call(&e.gw, t).status, 200);
    }
    let m = scrape(&e.gw);
    assert!(
        m.value("portcullis_revocations_total", &[]) >= 2.0,
        "revocations_total should count the 2 evicted tokens:\n{}",
        m.text
    );
}

#[test]
fn store_and_cache_metrics_move() {
    let e = env();
    let m0 = scrape(&e.gw);
    for name in [
        "portcullis_store_duration_seconds_count",
        "portcullis_store_errors_total",
        "portcullis_token_cache_total",
        "portcullis_revocations_total",
        "portcullis_revocation_lag_seconds_count",
    ] {
        assert!(m0.has(name), "no {name} in /metrics:\n{}", m0.text);
    }
    for kind in ["timeout", "connection", "corrupt"] {
        assert!(
            m0.samples
                .iter()
                .any(|s| s.name == "portcullis_store_errors_total"
                    && s.labels.get("kind").map(String::as_str) == Some(kind)),
            "store_errors_total{{kind={kind}}} not exported:\n{}",
            m0.text
        );
    }

    let token = get_token(&e.gw, "billing", SECRET);
    for _ in 0..5 {
        assert_eq!(call(&e.gw, &token).status, 200);
    }
    let m1 = scrape(&e.gw);
    let dur = "portcullis_store_duration_seconds_count";
    assert!(
        m1.value(dur, &[("op", "put")]) > m0.value(dur, &[("op", "put")]),
        "store latency of `put` not recorded:\n{}",
        m1.text
    );
    let cache = "portcullis_token_cache_total";
    assert!(
        m1.value(cache, &[("result", "hit")]) - m0.value(cache, &[("result", "hit")]) >= 4.0,
        "repeated use of one token should hit the in-process cache:\n{}",
        m1.text
    );

    // A well-formed unknown token: a miss (to Redis), then remembered as unknown.
    let stranger = unknown_token();
    assert_invalid_token(&call(&e.gw, &stranger));
    let m2 = scrape(&e.gw);
    assert!(
        m2.value(cache, &[("result", "miss")]) > m1.value(cache, &[("result", "miss")]),
        "unknown token was no cache miss:\n{}",
        m2.text
    );
    assert!(
        m2.value(dur, &[("op", "get")]) > m1.value(dur, &[("op", "get")]),
        "the Redis lookup was not timed:\n{}",
        m2.text
    );
    for _ in 0..3 {
        assert_invalid_token(&call(&e.gw, &stranger));
    }
    let m3 = scrape(&e.gw);
    assert!(
        m3.value(cache, &[("result", "negative_hit")])
            - m2.value(cache, &[("result", "negative_hit")])
            >= 3.0,
        "a repeated unknown token should be answered from the negative cache:\n{}",
        m3.text
    );
    assert_eq!(
        m3.value(dur, &[("op", "get")]),
        m2.value(dur, &[("op", "get")]),
        "a repeated unknown token went to Redis again"
    );

    // Revocation is counted by the replica that revoked.
    assert_eq!(revoke(&e.gw, "billing", SECRET, &token).status, 200);
    let m4 = scrape(&e.gw);
    assert_eq!(
        m4.value("portcullis_revocations_total", &[])
            - m3.value("portcullis_revocations_total", &[]),
        1.0,
        "{}",
        m4.text
    );
    assert_eq!(
        m4.value("portcullis_store_errors_total", &[]),
        0.0,
        "store errors while Redis was healthy:\n{}",
        m4.text
    );
}

#[test]
fn corrupt_stored_grant_is_refused_and_counted() {
    let e = env();
    let token = unknown_token();
    let key = format!("portcullis:t:{}", sha256_hex(token.as_bytes()));
    e.redis
        .cli(&["SET", &key, "this is not a grant", "PX", "600000"]);
    let m0 = scrape(&e.gw);
    let r = call(&e.gw, &token);
    assert!(
        r.status == 503 || r.status == 401,
        "a corrupt grant must be refused (503 or 401), never accepted or a 500: {} {}",
        r.status,
        r.text()
    );
    let m1 = scrape(&e.gw);
    let kind = [("kind", "corrupt")];
    assert!(
        m1.value("portcullis_store_errors_total", &kind)
            > m0.value("portcullis_store_errors_total", &kind),
        "portcullis_store_errors_total{{kind=\"corrupt\"}} did not move:\n{}",
        m1.text
    );
}

#[test]
fn password_from_the_environment() {
    let pw = "redis-test-password-7c1f";
    let redis = RedisServer::start_with(&["--requirepass", pw]);
    let up = Upstream::start();
    let yaml = store_config(
        &redis_store(
            &redis.url(),
            &[("password_env", "PORTCULLIS_TEST_REDIS_PW")],
        ),
        "1h",
        &suite_clients(None),
        &up.url(),
    );
    let gw = Gateway::start_with_env(&yaml, &[("PORTCULLIS_TEST_REDIS_PW", pw)]);
    wait_ready(&gw);
    let token = get_token(&gw, "billing", SECRET);
    assert_eq!(call(&gw, &token).status, 200);
    assert_eq!(
        redis.keys("portcullis:t:*").len(),
        1,
        "the token is stored in the password-protected Redis"
    );
    assert!(!gw.logs().contains(pw), "the Redis password was logged");
    assert!(
        !std::fs::read_to_string(gw.config_path())
            .unwrap()
            .contains(pw),
        "the password has no business in the config file"
    );
}
