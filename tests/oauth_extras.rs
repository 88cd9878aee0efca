//! The OAuth endpoints beyond issuance, on the embedded memory store: introspection (RFC
//! 7662), revocation (RFC 7009), their RFC 8414 metadata entries, `max_live_tokens`, and
//! `tokens.reuse`.

mod support;

use std::time::{SystemTime, UNIX_EPOCH};

use support::*;

const SECRET: &str = "oauth-extras-client-secret-long-enough-0001";
const OTHER_SECRET: &str = "oauth-extras-other-secret-long-enough-00002";

/// `alpha` (read, write), `beta` (read), `capped` (read, at most 2 live tokens) and `slow`
/// (read, argon2id secret); route `/api`: GET needs read, POST needs write.
fn config(up: &str, tokens_extra: &str) -> String {
    let mut y = config_head("1h");
    y.push_str(tokens_extra);
    y.push_str("clients:\n");
    y.push_str(&client_yaml("alpha", SECRET, &["read", "write"]));
    y.push_str(&client_yaml("beta", OTHER_SECRET, &["read"]));
    y.push_str(&client_yaml("capped", SECRET, &["read"]));
    y.push_str("    max_live_tokens: 2\n");
    y.push_str(&format!(
        "  - id: slow\n    secret_hash: \"{}\"\n    scopes: [read]\n",
        argon2_hash(SECRET)
    ));
    y.push_str(&format!(
        "routes:\n  - id: api\n    path: /api\n    upstream: {up}\n    scopes:\n      read: [read]\n      write: [write]\n"
    ));
    y
}

struct Env {
    _up: Upstream,
    gw: Gateway,
}

fn env(tokens_extra: &str) -> Env {
    let up = Upstream::start();
    let gw = Gateway::start(&config(&up.url(), tokens_extra));
    Env { _up: up, gw }
}

fn call(gw: &Gateway, token: &str) -> Resp {
    get(&gw.url("/api/x")).bearer(token).send()
}

fn assert_refused(gw: &Gateway, token: &str, what: &str) {
    let r = call(gw, token);
    assert_eq!(r.status, 401, "{what}: {}", r.text());
    assert_eq!(
        auth_param(&r.www_authenticate(), "error").as_deref(),
        Some("invalid_token"),
        "{what}: {:?}",
        r.headers
    );
}

fn introspect(gw: &Gateway, id: &str, secret: &str, token: &str) -> Resp {
    post(&gw.url("/oauth/introspect"))
        .basic(id, secret)
        .form(&[("token", token)])
        .send()
}

fn revoke(gw: &Gateway, id: &str, secret: &str, token: &str) -> Resp {
    post(&gw.url("/oauth/revoke"))
        .basic(id, secret)
        .form(&[("token", token)])
        .send()
}

fn assert_inactive(resp: &Resp, what: &str) {
    assert_eq!(resp.status, 200, "{what}: {}", resp.text());
    assert_eq!(
        resp.json(),
        serde_json::json!({ "active": false }),
        "{what}: an inactive answer says nothing else"
    );
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Token-shaped like `sample` (same prefix, length and alphabet) but never issued.
fn unissued_like(sample: &str) -> String {
    let prefix = &sample[..sample.find('_').map_or(0, |i| i + 1)];
    format!("{prefix}{}", "A".repeat(sample.len() - prefix.len()))
}

// ---------------------------------------------------------------------------------------------
// Introspection
// ---------------------------------------------------------------------------------------------

#[test]
fn introspection_describes_a_live_token() {
    let e = env("");
    let before = unix_now();
    let token = get_token(&e.gw, "alpha", SECRET);
    let after = unix_now();
    // Any authenticated client may ask, by Basic or by the body.
    for resp in [
        introspect(&e.gw, "beta", OTHER_SECRET, &token),
        post(&e.gw.url("/oauth/introspect"))
            .form(&[
                ("token", token.as_str()),
                ("token_type_hint", "access_token"),
                ("client_id", "alpha"),
                ("client_secret", SECRET),
            ])
            .send(),
    ] {
        assert_eq!(resp.status, 200, "{}", resp.text());
        assert!(resp
            .header("content-type")
            .unwrap_or("")
            .starts_with("application/json"));
        let v = resp.json();
        assert_eq!(v["active"], true, "{v}");
        assert_eq!(
            word_set(v["scope"].as_str().unwrap()),
            word_set("read write")
        );
        assert_eq!(v["client_id"], "alpha");
        assert_eq!(v["token_type"], "Bearer");
        let (iat, exp) = (v["iat"].as_u64().unwrap(), v["exp"].as_u64().unwrap());
        assert!(
            before <= iat && iat <= after,
            "iat {iat} not in [{before}, {after}]"
        );
        assert!(
            (3599..=3601).contains(&(exp - iat)),
            "exp - iat = {} for ttl 1h",
            exp - iat
        );
    }
    // A narrowed token reports only what it was granted.
    let narrow = get_token_scoped(&e.gw, "alpha", SECRET, "read");
    assert_eq!(
        introspect(&e.gw, "alpha", SECRET, &narrow).json()["scope"],
        "read"
    );
}

#[test]
fn introspection_of_anything_not_live_is_just_inactive() {
    let e = env("");
    let unissued = unissued_like(&get_token(&e.gw, "beta", OTHER_SECRET));
    for (what, token) in [
        ("garbage", "not-a-token"),
        ("token-shaped but never issued", unissued.as_str()),
        ("a bearer header value", "Bearer abc"),
    ] {
        assert_inactive(&introspect(&e.gw, "alpha", SECRET, token), what);
    }
    let revoked = get_token(&e.gw, "alpha", SECRET);
    assert_eq!(revoke(&e.gw, "alpha", SECRET, &revoked).status, 200);
    assert_inactive(&introspect(&e.gw, "alpha", SECRET, &revoked), "revoked");
}

#[test]
fn introspection_requires_a_token_and_an_authenticated_client() {
    let e = env("");
    let token = get_token(&e.gw, "alpha", SECRET);
    post(&e.gw.url("/oauth/introspect"))
        .basic("alpha", SECRET)
        .form(&[("token_type_hint", "access_token")])
        .send()
        .assert_error(400, Some("invalid_request"));
    let r = introspect(&e.gw, "alpha", "wrong-secret", &token);
    r.assert_error(401, Some("invalid_client"));
    assert!(r
        .www_authenticate()
        .to_ascii_lowercase()
        .starts_with("basic"));
    introspect(&e.gw, "nobody", SECRET, &token).assert_error(401, Some("invalid_client"));
    post(&e.gw.url("/oauth/introspect"))
        .form(&[("token", token.as_str())])
        .send()
        .assert_error(401, Some("invalid_client"));
    // The token itself is not a client credential.
    post(&e.gw.url("/oauth/introspect"))
        .bearer(&token)
        .form(&[("token", token.as_str())])
        .send()
        .assert_error(401, Some("invalid_client"));
}

// ---------------------------------------------------------------------------------------------
// Revocation
// ---------------------------------------------------------------------------------------------

#[test]
fn revoking_an_own_token_ends_it_at_once() {
    let e = env("");
    let token = get_token(&e.gw, "alpha", SECRET);
    let kept = get_token(&e.gw, "alpha", SECRET);
    assert_eq!(call(&e.gw, &token).status, 200);

    let r = post(&e.gw.url("/oauth/revoke"))
        .basic("alpha", SECRET)
        .form(&[
            ("token", token.as_str()),
            ("token_type_hint", "access_token"),
        ])
        .send();
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.body.is_empty(), "revocation body: {:?}", r.text());
    assert_refused(&e.gw, &token, "revoked token");
    assert_inactive(&introspect(&e.gw, "alpha", SECRET, &token), "revoked token");
    // Only that token: the client's other one still works.
    assert_eq!(call(&e.gw, &kept).status, 200);
    // Revoking again is fine.
    assert_eq!(revoke(&e.gw, "alpha", SECRET, &token).status, 200);
    // By client_secret_post too.
    let r = post(&e.gw.url("/oauth/revoke"))
        .form(&[
            ("token", kept.as_str()),
            ("client_id", "alpha"),
            ("client_secret", SECRET),
        ])
        .send();
    assert_eq!(r.status, 200);
    assert_refused(&e.gw, &kept, "revoked by client_secret_post");
}

#[test]
fn a_client_cannot_revoke_another_clients_token() {
    let e = env("");
    let alphas = get_token(&e.gw, "alpha", SECRET);
    let r = revoke(&e.gw, "beta", OTHER_SECRET, &alphas);
    assert_eq!(
        r.status, 200,
        "RFC 7009: same answer as for a revoked token"
    );
    assert!(r.body.is_empty());
    assert_eq!(
        call(&e.gw, &alphas).status,
        200,
        "beta revoked alpha's token"
    );
    assert_eq!(
        introspect(&e.gw, "alpha", SECRET, &alphas).json()["active"],
        true
    );
}

#[test]
fn revoking_unknown_tokens_answers_200() {
    let e = env("");
    let unissued = unissued_like(&get_token(&e.gw, "beta", OTHER_SECRET));
    for token in ["garbage", unissued.as_str()] {
        let r = revoke(&e.gw, "alpha", SECRET, token);
        assert_eq!(r.status, 200, "{token}: {}", r.text());
        assert!(r.body.is_empty());
    }
}

#[test]
fn revocation_requires_a_token_and_an_authenticated_client() {
    let e = env("");
    let token = get_token(&e.gw, "alpha", SECRET);
    post(&e.gw.url("/oauth/revoke"))
        .basic("alpha", SECRET)
        .form(&[("token_type_hint", "access_token")])
        .send()
        .assert_error(400, Some("invalid_request"));
    revoke(&e.gw, "alpha", "wrong-secret", &token).assert_error(401, Some("invalid_client"));
    post(&e.gw.url("/oauth/revoke"))
        .form(&[("token", token.as_str())])
        .send()
        .assert_error(401, Some("invalid_client"));
    // A token in the query string is refused like credentials there.
    post(&e.gw.url(&format!("/oauth/revoke?token={token}")))
        .basic("alpha", SECRET)
        .form(&[])
        .send()
        .assert_error(400, Some("invalid_request"));
    assert_eq!(
        call(&e.gw, &token).status,
        200,
        "a failed revocation revoked"
    );
}

#[test]
fn metadata_lists_revocation_and_introspection_endpoints() {
    let e = env("");
    let v = get(&e.gw.url("/.well-known/oauth-authorization-server"))
        .send()
        .json();
    let issuer = v["issuer"].as_str().expect("issuer").to_string();
    assert_eq!(v["revocation_endpoint"], format!("{issuer}/oauth/revoke"));
    assert_eq!(
        v["introspection_endpoint"],
        format!("{issuer}/oauth/introspect")
    );
    assert_eq!(v["token_endpoint"], format!("{issuer}/oauth/token"));

    // Custom paths are advertised and served.
    let up = Upstream::start();
    let gw = Gateway::start(&config(
        &up.url(),
        "  revoke_path: /auth/v2/revoke\n  introspect_path: /auth/v2/introspect\n",
    ));
    let v = get(&gw.url("/.well-known/oauth-authorization-server"))
        .send()
        .json();
    let issuer = v["issuer"].as_str().unwrap();
    assert_eq!(v["revocation_endpoint"], format!("{issuer}/auth/v2/revoke"));
    assert_eq!(
        v["introspection_endpoint"],
        format!("{issuer}/auth/v2/introspect")
    );
    let token = get_token(&gw, "alpha", SECRET);
    let r = post(&gw.url("/auth/v2/introspect"))
        .basic("alpha", SECRET)
        .form(&[("token", token.as_str())])
        .send();
    assert_eq!(r.json()["active"], true);
    let r = post(&gw.url("/auth/v2/revoke"))
        .basic("alpha", SECRET)
        .form(&[("token", token.as_str())])
        .send();
    assert_eq!(r.status, 200);
    assert_refused(&gw, &token, "revoked at the custom path");
}

// ---------------------------------------------------------------------------------------------
// max_live_tokens
// ---------------------------------------------------------------------------------------------

#[test]
fn max_live_tokens_revokes_the_oldest() {
    let e = env("");
    let tokens: Vec<String> = (0..4).map(|_| get_token(&e.gw, "capped", SECRET)).collect();
    for (i, t) in tokens.iter().enumerate() {
        if i < 2 {
            assert_refused(
                &e.gw,
                t,
                &format!("token #{} of 4 with max_live_tokens: 2", i + 1),
            );
            assert_inactive(&introspect(&e.gw, "capped", SECRET, t), "evicted token");
        } else {
            assert_eq!(call(&e.gw, t).status, 200, "token #{} of 4", i + 1);
        }
    }
    // Other clients are not limited.
    let many: Vec<String> = (0..4)
        .map(|_| get_token(&e.gw, "beta", OTHER_SECRET))
        .collect();
    for t in &many {
        assert_eq!(call(&e.gw, t).status, 200);
    }
}

#[test]
fn max_live_tokens_counts_only_live_tokens() {
    let e = env("");
    let t1 = get_token(&e.gw, "capped", SECRET);
    let t2 = get_token(&e.gw, "capped", SECRET);
    // Revoked: t1 is gone, one slot frees.
    assert_eq!(revoke(&e.gw, "capped", SECRET, &t1).status, 200);
    let t3 = get_token(&e.gw, "capped", SECRET);
    assert_eq!(
        call(&e.gw, &t2).status,
        200,
        "a revoked token still counted against max_live_tokens"
    );
    assert_eq!(call(&e.gw, &t3).status, 200);
    let t4 = get_token(&e.gw, "capped", SECRET);
    assert_refused(&e.gw, &t2, "oldest live token past the limit");
    assert_eq!(call(&e.gw, &t3).status, 200);
    assert_eq!(call(&e.gw, &t4).status, 200);
}

// ---------------------------------------------------------------------------------------------
// tokens.reuse
// ---------------------------------------------------------------------------------------------

fn issue(gw: &Gateway, id: &str, secret: &str, scope: Option<&str>) -> serde_json::Value {
    let r = token_basic(gw, id, secret, scope);
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

#[test]
fn reuse_hands_back_the_live_token_for_the_same_scopes() {
    let e = env("  reuse: true\n");
    let first = issue(&e.gw, "alpha", SECRET, Some("read"));
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let second = issue(&e.gw, "alpha", SECRET, Some("read"));
    assert_eq!(
        first["access_token"], second["access_token"],
        "reuse on: the same scopes should give the same token"
    );
    assert_eq!(second["scope"], "read");
    assert_eq!(second["token_type"], "Bearer");
    let (e1, e2) = (
        first["expires_in"].as_u64().unwrap(),
        second["expires_in"].as_u64().unwrap(),
    );
    assert!(e2 <= e1, "expires_in grew on reuse: {e1} then {e2}");
    assert!(
        e1 - e2 <= 5,
        "the reused token lost too much lifetime: {e1} then {e2}"
    );
    let token = second["access_token"].as_str().unwrap();
    assert_eq!(call(&e.gw, token).status, 200);

    // A different scope set is a different token.
    let both = issue(&e.gw, "alpha", SECRET, Some("read write"));
    assert_ne!(both["access_token"], first["access_token"]);
    // Scope order does not matter (RFC 6749 3.3), nor asking for all by omission.
    let swapped = issue(&e.gw, "alpha", SECRET, Some("write read"));
    assert_eq!(swapped["access_token"], both["access_token"]);
    let all = issue(&e.gw, "alpha", SECRET, None);
    assert_eq!(all["access_token"], both["access_token"]);
    // client_secret_post gets the same one.
    let r = token_post(&e.gw, "alpha", SECRET, Some("read"));
    assert_eq!(r.json()["access_token"], first["access_token"]);
    // Another client never gets alpha's token.
    let betas = issue(&e.gw, "beta", OTHER_SECRET, Some("read"));
    assert_ne!(betas["access_token"], first["access_token"]);
}

#[test]
fn reuse_mints_a_new_token_after_revocation() {
    let e = env("  reuse: true\n");
    let first = issue(&e.gw, "alpha", SECRET, Some("read"));
    let token = first["access_token"].as_str().unwrap().to_string();
    assert_eq!(revoke(&e.gw, "alpha", SECRET, &token).status, 200);
    let again = issue(&e.gw, "alpha", SECRET, Some("read"));
    let fresh = again["access_token"].as_str().unwrap();
    assert_ne!(fresh, token, "a revoked token was handed back");
    assert_eq!(call(&e.gw, fresh).status, 200);
    assert_refused(&e.gw, &token, "revoked");
    // And the new one is reused from then on.
    assert_eq!(
        issue(&e.gw, "alpha", SECRET, Some("read"))["access_token"],
        fresh
    );
}

#[test]
fn reuse_does_not_apply_to_argon2id_secrets() {
    let e = env("  reuse: true\n");
    let a = issue(&e.gw, "slow", SECRET, None);
    let b = issue(&e.gw, "slow", SECRET, None);
    assert_ne!(a["access_token"], b["access_token"]);
    for t in [&a, &b] {
        assert_eq!(call(&e.gw, t["access_token"].as_str().unwrap()).status, 200);
    }
}

#[test]
fn without_reuse_every_request_mints_a_new_token() {
    let e = env("");
    let tokens: Vec<String> = (0..3)
        .map(|_| issue(&e.gw, "alpha", SECRET, Some("read"))["access_token"].to_string())
        .collect();
    assert_ne!(tokens[0], tokens[1]);
    assert_ne!(tokens[1], tokens[2]);
    assert_ne!(tokens[0], tokens[2]);
}
