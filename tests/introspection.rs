//! Introspection (RFC 7662) on the Redis store and on the memory store, and the discovery
//! document (RFC 8414) listing the revocation and introspection endpoints.

mod support;

use support::*;

fn env() -> RedisEnv {
    RedisEnv::start(&[], None)
}

fn assert_invalid_token(resp: &Resp) {
    resp.assert_error(401, Some("invalid_token"));
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
