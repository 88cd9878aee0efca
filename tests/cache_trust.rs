//! The in-process token cache in front of Redis is trusted only while the replica is
//! subscribed to revocations. Without the subscription (Redis answering, SUBSCRIBE refused)
//! every request re-checks Redis, so a grant deleted in Redis stops working at once; with it,
//! the cache answers (and only a published revocation evicts).

mod support;

use support::*;

fn env_with(redis_args: &[&str]) -> (Upstream, RedisServer, Gateway) {
    let up = Upstream::start();
    let redis = RedisServer::start_with(redis_args);
    let yaml = store_config(
        &redis_store(&redis.url(), &[]),
        "1h",
        &suite_clients(None),
        &up.url(),
    );
    let gw = Gateway::start(&yaml);
    wait_ready(&gw);
    (up, redis, gw)
}

fn delete_grant_behind_the_gateways_back(redis: &RedisServer, token: &str) {
    let key = format!("portcullis:t:{}", sha256_hex(token.as_bytes()));
    assert_eq!(redis.cli(&["DEL", &key]).trim(), "1");
}

#[test]
fn unsubscribed_replica_rechecks_redis_on_every_request() {
    // SUBSCRIBE renamed away: Redis answers everything else, the subscription never succeeds.
    let (_up, redis, gw) = env_with(&["--rename-command", "SUBSCRIBE", "\"\""]);
    let token = get_token(&gw, "billing", SECRET);
    assert_eq!(call(&gw, &token).status, 200);
    assert_eq!(
        call(&gw, &token).status,
        200,
        "cached now, if the cache were trusted"
    );
    delete_grant_behind_the_gateways_back(&redis, &token);
    let r = call(&gw, &token);
    assert_eq!(
        r.status,
        401,
        "an unsubscribed replica must not answer from its cache: {}",
        r.text()
    );
}

#[test]
fn subscribed_replica_answers_from_its_cache() {
    let (_up, redis, gw) = env_with(&[]);
    let token = get_token(&gw, "billing", SECRET);
    assert_eq!(call(&gw, &token).status, 200);
    // Give the subscriber time to be up (it is, once ready; this is margin).
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(call(&gw, &token).status, 200);
    delete_grant_behind_the_gateways_back(&redis, &token);
    // No revocation was published: the trusted cache still answers. (This is why every
    // revocation path publishes; see revocation.rs.)
    assert_eq!(call(&gw, &token).status, 200);
    let hits = gw.metric_value("portcullis_token_cache_total", &[("result", "hit")]);
    assert!(hits >= 2.0, "cache hits: {hits}");
}
