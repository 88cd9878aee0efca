//! The Redis token store with one real `redis-server`: what the gateway writes (digests only,
//! TTLs, the per-client index, the key prefix), tokens shared between replicas, the live-token
//! bound per client, the store and cache metrics, a corrupt stored grant, and the ways to reach
//! Redis (a password from the environment, `rediss://` with a private CA).

mod support;

use std::collections::BTreeSet;

use support::*;

fn env_with(extra: &[(&str, &str)], billing_max_live: Option<u32>) -> RedisEnv {
    RedisEnv::start(extra, billing_max_live)
}

fn env() -> RedisEnv {
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

/// A throwaway CA and a server certificate for 127.0.0.1, as PEM files in a temp dir.
fn tls_files() -> (tempfile::TempDir, RedisTls) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let dir = tempfile::tempdir().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "portcullis redis test CA");
    let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &ca)
        .unwrap();
    let path = |name: &str| dir.path().join(name).display().to_string();
    std::fs::write(path("ca.pem"), ca.pem()).unwrap();
    std::fs::write(path("redis.crt"), leaf.pem()).unwrap();
    std::fs::write(path("redis.key"), leaf_key.serialize_pem()).unwrap();
    let files = RedisTls {
        cert: path("redis.crt"),
        key: path("redis.key"),
        ca: path("ca.pem"),
    };
    (dir, files)
}

#[test]
fn rediss_with_a_private_ca() {
    let (_dir, files) = tls_files();
    let redis = RedisServer::start_tls(files.clone());
    assert!(redis.url().starts_with("rediss://"));
    let up = Upstream::start();
    let yaml = store_config(
        &redis_store(&redis.url(), &[("ca", &format!("\"{}\"", files.ca))]),
        "1h",
        &suite_clients(None),
        &up.url(),
    );
    let gw = start_ready(&yaml);
    let token = get_token(&gw, "billing", SECRET);
    assert_eq!(call(&gw, &token).status, 200);
    assert_eq!(
        redis
            .keys(&format!("portcullis:t:{}", sha256_hex(token.as_bytes())))
            .len(),
        1,
        "the token was stored over TLS"
    );

    // Without the private CA the server's certificate is not trusted: never ready, 503.
    let untrusted = Gateway::start(&store_config(
        &redis_store(&redis.url(), &[("timeout", "200ms")]),
        "1h",
        &suite_clients(None),
        &up.url(),
    ));
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let r = readyz(&untrusted);
    assert_eq!(
        r.status,
        503,
        "a Redis with an untrusted certificate should not make the gateway ready: {}",
        r.text()
    );
    token_basic(&untrusted, "billing", SECRET, None)
        .assert_error(503, Some("temporarily_unavailable"));
}
