//! `tokens.reuse` and `max_live_tokens` with the Redis store: a sealed token is shared by the
//! replicas, so a caller that asks again on another replica gets the same token back.

mod support;

use support::*;

#[test]
fn reuse_hands_back_the_same_token_on_every_replica() {
    let up = Upstream::start();
    let redis = RedisServer::start();
    let yaml = store_config(
        &redis_store(&redis.url(), &[]),
        "1h",
        &suite_clients(None),
        &up.url(),
    )
    .replace("tokens:\n", "tokens:\n  reuse: true\n");
    let a = Gateway::start(&yaml);
    let b = Gateway::start(&yaml);
    wait_ready(&a);
    wait_ready(&b);
    let first = get_token(&a, "billing", SECRET);
    let again = get_token(&b, "billing", SECRET);
    assert_eq!(first, again, "the second replica hands back the live token");
    let narrower = get_token_scoped(&b, "billing", SECRET, "a");
    assert_ne!(first, narrower, "another scope set is another token");

    // The sealed form in Redis never holds the token.
    let keys = redis.keys("portcullis:r:*");
    assert!(!keys.is_empty(), "a reusable entry is kept: {keys:?}");
    for k in &keys {
        let v = redis.cli(&["GET", k]);
        assert!(!v.contains(&first[4..]), "the token text is in {k}");
    }

    // Revoked: asking again mints a new one.
    assert_eq!(revoke(&a, "billing", SECRET, &first).status, 200);
    let fresh = get_token(&b, "billing", SECRET);
    assert_ne!(fresh, first);
    assert_eq!(call(&a, &fresh).status, 200);
}
