//! The token endpoint (RFC 6749 4.4, 2.3.1, 5.1, 5.2) and the RFC 8414 metadata, against a real
//! gateway process.

mod support;

use support::*;

const BILLING_SECRET: &str = "billing-secret-0123456789abcdefghijklmnopqrstuv";
/// A client id and secret holding characters that must be form-urlencoded inside Basic.
const ODD_ID: &str = "acme:reports%1";
const ODD_SECRET: &str = "p@ss:w%rd+/= ok&x";
const ARGON_ID: &str = "argon";
const ARGON_SECRET: &str = "argon-secret-with-enough-entropy-0123456789";

fn config() -> String {
    let mut y = config_head("1h");
    y.push_str("clients:\n");
    y.push_str(&client_yaml(
        "billing",
        BILLING_SECRET,
        &["accounts:read", "accounts:write", "ledger:read"],
    ));
    y.push_str(&client_yaml(ODD_ID, ODD_SECRET, &["reports:read"]));
    y.push_str(&format!(
        "  - id: {ARGON_ID}\n    secret_hash: \"{}\"\n    scopes: [accounts:read]\n",
        argon2_hash(ARGON_SECRET)
    ));
    y.push_str(
        "routes:
  - id: accounts
    path: /api/accounts
    upstream: http://127.0.0.1:9
    scopes:
      read: [accounts:read]
      write: [accounts:write]
",
    );
    y
}

fn start() -> Gateway {
    Gateway::start(&config())
}

fn token_url(gw: &Gateway) -> String {
    gw.url("/oauth/token")
}

/// Asserts a successful token response and returns (token, scope set).
fn assert_token_ok(resp: &Resp) -> (String, std::collections::BTreeSet<String>) {
    assert_eq!(resp.status, 200, "body {}", resp.text());
    let ct = resp.header("content-type").unwrap_or("");
    assert!(ct.starts_with("application/json"), "content-type {ct:?}");
    assert_eq!(resp.header("cache-control"), Some("no-store"));
    assert_eq!(resp.header("pragma"), Some("no-cache"));
    let v = resp.json();
    assert_eq!(v["token_type"], "Bearer", "{v}");
    assert!(
        v.get("refresh_token").is_none(),
        "no refresh token may be issued: {v}"
    );
    let expires = v["expires_in"].as_u64().expect("expires_in number");
    assert!(expires > 0 && expires <= 3600, "expires_in {expires}");
    let token = v["access_token"]
        .as_str()
        .expect("access_token")
        .to_string();
    let rest = token
        .strip_prefix("pct_")
        .unwrap_or_else(|| panic!("token must start with pct_: {token}"));
    assert_eq!(
        rest.len(),
        43,
        "43 base64url chars after the prefix: {token}"
    );
    assert!(is_base64url(rest), "base64url: {token}");
    let scope = v["scope"].as_str().expect("scope string");
    (token, word_set(scope))
}

fn set(words: &[&str]) -> std::collections::BTreeSet<String> {
    words.iter().map(|s| s.to_string()).collect()
}

#[test]
fn client_secret_basic_issues_a_bearer_token_with_all_scopes() {
    let gw = start();
    let resp = token_basic(&gw, "billing", BILLING_SECRET, None);
    let (_, scopes) = assert_token_ok(&resp);
    assert_eq!(
        scopes,
        set(&["accounts:read", "accounts:write", "ledger:read"])
    );
    assert_eq!(resp.json()["expires_in"].as_u64(), Some(3600));
}

#[test]
fn client_secret_post_issues_a_token() {
    let gw = start();
    let resp = token_post(&gw, "billing", BILLING_SECRET, None);
    assert_token_ok(&resp);
}

#[test]
fn every_token_is_different() {
    let gw = start();
    let a = assert_token_ok(&token_basic(&gw, "billing", BILLING_SECRET, None)).0;
    let b = assert_token_ok(&token_basic(&gw, "billing", BILLING_SECRET, None)).0;
    let c = assert_token_ok(&token_post(&gw, "billing", BILLING_SECRET, None)).0;
    assert_ne!(a, b);
    assert_ne!(b, c);
    assert_ne!(a, c);
}

#[test]
fn asking_a_subset_of_scopes_grants_just_those() {
    let gw = start();
    let (_, one) = assert_token_ok(&token_basic(
        &gw,
        "billing",
        BILLING_SECRET,
        Some("accounts:read"),
    ));
    assert_eq!(one, set(&["accounts:read"]));
    let resp = token_post(
        &gw,
        "billing",
        BILLING_SECRET,
        Some("ledger:read accounts:write"),
    );
    let (_, two) = assert_token_ok(&resp);
    assert_eq!(two, set(&["ledger:read", "accounts:write"]));
    // Space-separated, no other separator.
    let scope = resp.json()["scope"].as_str().unwrap().to_string();
    assert!(!scope.contains(','), "scope is space-separated: {scope:?}");
    assert_eq!(scope.split(' ').count(), 2, "{scope:?}");
}

#[test]
fn scope_not_held_is_invalid_scope() {
    let gw = start();
    for scope in ["admin", "accounts:read admin", "reports:read"] {
        let resp = token_basic(&gw, "billing", BILLING_SECRET, Some(scope));
        resp.assert_error(400, Some("invalid_scope"));
    }
}

#[test]
fn basic_credentials_are_form_urlencoded_inside_basic() {
    let gw = start();
    // basic_header() percent-encodes both parts as RFC 6749 2.3.1 requires.
    let resp = token_basic(&gw, ODD_ID, ODD_SECRET, None);
    let (_, scopes) = assert_token_ok(&resp);
    assert_eq!(scopes, set(&["reports:read"]));
    // The same client through client_secret_post (the form serializer encodes it).
    assert_token_ok(&token_post(&gw, ODD_ID, ODD_SECRET, None));
}

#[test]
fn argon2id_secret_hash_is_accepted() {
    let gw = start();
    let (_, scopes) = assert_token_ok(&token_basic(&gw, ARGON_ID, ARGON_SECRET, None));
    assert_eq!(scopes, set(&["accounts:read"]));
    let wrong = token_basic(&gw, ARGON_ID, "not-the-secret", None);
    wrong.assert_error(401, Some("invalid_client"));
}

#[test]
fn unknown_client_and_wrong_secret_get_one_identical_answer() {
    let gw = start();
    let wrong = token_basic(&gw, "billing", "wrong-secret", None);
    let unknown = token_basic(&gw, "nobody", "wrong-secret", None);
    for r in [&wrong, &unknown] {
        r.assert_error(401, Some("invalid_client"));
        assert_eq!(
            r.header("www-authenticate"),
            Some("Basic realm=\"portcullis\""),
            "{:?}",
            r.headers
        );
    }
    assert_eq!(
        wrong.body, unknown.body,
        "the two failures must be indistinguishable"
    );
    assert_eq!(wrong.status, unknown.status);

    // client_secret_post gives the same error code.
    let wrong_post = token_post(&gw, "billing", "wrong-secret", None);
    let unknown_post = token_post(&gw, "nobody", "wrong-secret", None);
    wrong_post.assert_error(401, Some("invalid_client"));
    unknown_post.assert_error(401, Some("invalid_client"));
    assert_eq!(wrong_post.body, unknown_post.body);
    for r in [&wrong_post, &unknown_post] {
        assert_eq!(
            r.header("www-authenticate"),
            Some("Basic realm=\"portcullis\""),
            "{:?}",
            r.headers
        );
    }
}

#[test]
fn no_client_credentials_at_all_is_invalid_client() {
    let gw = start();
    let resp = post(&token_url(&gw))
        .form(&[("grant_type", "client_credentials")])
        .send();
    resp.assert_error(401, Some("invalid_client"));
    assert_eq!(
        resp.header("www-authenticate"),
        Some("Basic realm=\"portcullis\""),
        "{:?}",
        resp.headers
    );
    assert!(resp.json().get("access_token").is_none());
}

#[test]
fn unverified_basic_credentials_without_secret_are_refused() {
    let gw = start();
    // Basic with an empty secret, and Basic with no colon at all.
    let empty = post(&token_url(&gw))
        .header("Authorization", &basic_header("billing", ""))
        .form(&[("grant_type", "client_credentials")])
        .send();
    assert_eq!(empty.status, 401, "{}", empty.text());
    let no_colon = post(&token_url(&gw))
        .header("Authorization", "Basic YmlsbGluZw==")
        .form(&[("grant_type", "client_credentials")])
        .send();
    assert!(
        no_colon.status == 400 || no_colon.status == 401,
        "{} {}",
        no_colon.status,
        no_colon.text()
    );
    // A body client_id alone (no secret) is not authentication either.
    let id_only = post(&token_url(&gw))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", "billing"),
        ])
        .send();
    assert!(
        id_only.status == 400 || id_only.status == 401,
        "{} {}",
        id_only.status,
        id_only.text()
    );
    assert!(id_only.json().get("access_token").is_none());
}

#[test]
fn missing_grant_type_is_invalid_request() {
    let gw = start();
    let resp = post(&token_url(&gw))
        .basic("billing", BILLING_SECRET)
        .form(&[("scope", "accounts:read")])
        .send();
    resp.assert_error(400, Some("invalid_request"));
}

#[test]
fn repeated_parameter_is_invalid_request() {
    let gw = start();
    for body in [
        "grant_type=client_credentials&grant_type=client_credentials",
        "grant_type=client_credentials&scope=accounts:read&scope=accounts:write",
    ] {
        let resp = post(&token_url(&gw))
            .basic("billing", BILLING_SECRET)
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body(body)
            .send();
        resp.assert_error(400, Some("invalid_request"));
    }
    // Repeated client_id in client_secret_post.
    let body = format!(
        "grant_type=client_credentials&client_id=billing&client_id=billing&client_secret={}",
        form_encode(BILLING_SECRET)
    );
    let resp = post(&token_url(&gw))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(body)
        .send();
    resp.assert_error(400, Some("invalid_request"));
}

#[test]
fn wrong_or_missing_content_type_is_invalid_request() {
    let gw = start();
    let form = "grant_type=client_credentials";
    for ct in [Some("application/json"), Some("text/plain"), None] {
        let mut req = post(&token_url(&gw)).basic("billing", BILLING_SECRET);
        if let Some(ct) = ct {
            req = req.header("Content-Type", ct);
        }
        let resp = req.body(form).send();
        resp.assert_error(400, Some("invalid_request"));
    }
    let json = post(&token_url(&gw))
        .basic("billing", BILLING_SECRET)
        .header("Content-Type", "application/json")
        .body(r#"{"grant_type":"client_credentials"}"#)
        .send();
    json.assert_error(400, Some("invalid_request"));
    // A charset parameter on the right type is still the right type.
    let ok = post(&token_url(&gw))
        .basic("billing", BILLING_SECRET)
        .header(
            "Content-Type",
            "application/x-www-form-urlencoded; charset=UTF-8",
        )
        .body(form)
        .send();
    assert_token_ok(&ok);
}

#[test]
fn malformed_body_is_invalid_request() {
    let gw = start();
    let bodies: [&[u8]; 3] = [
        b"grant_type=client_credentials&scope=%zz",
        b"grant_type=client_credentials&scope=accounts%3",
        b"grant_type=client_credentials&scope=%E2%28%A1",
    ];
    for body in bodies {
        let resp = post(&token_url(&gw))
            .basic("billing", BILLING_SECRET)
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body(body.to_vec())
            .send();
        assert_eq!(
            resp.status,
            400,
            "body {:?}: {}",
            String::from_utf8_lossy(body),
            resp.text()
        );
        resp.assert_error(400, Some("invalid_request"));
    }
}

#[test]
fn basic_and_body_credentials_together_are_invalid_request() {
    let gw = start();
    let resp = post(&token_url(&gw))
        .basic("billing", BILLING_SECRET)
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", "billing"),
            ("client_secret", BILLING_SECRET),
        ])
        .send();
    resp.assert_error(400, Some("invalid_request"));
}

#[test]
fn credentials_in_the_query_string_are_refused() {
    let gw = start();
    let query = format!(
        "/oauth/token?client_id=billing&client_secret={}",
        form_encode(BILLING_SECRET)
    );
    // Query credentials alone.
    let resp = post(&gw.url(&query))
        .form(&[("grant_type", "client_credentials")])
        .send();
    resp.assert_error(400, Some("invalid_request"));
    assert!(resp.json().get("access_token").is_none());
    // Query credentials next to valid Basic credentials.
    let resp = post(&gw.url(&query))
        .basic("billing", BILLING_SECRET)
        .form(&[("grant_type", "client_credentials")])
        .send();
    resp.assert_error(400, Some("invalid_request"));
    // Only a secret in the query.
    let resp = post(&gw.url(&format!(
        "/oauth/token?client_secret={}",
        form_encode(BILLING_SECRET)
    )))
    .form(&[
        ("grant_type", "client_credentials"),
        ("client_id", "billing"),
    ])
    .send();
    resp.assert_error(400, Some("invalid_request"));
}

#[test]
fn other_grant_types_are_unsupported() {
    let gw = start();
    for grant in ["password", "authorization_code", "refresh_token", "foo", ""] {
        let resp = post(&token_url(&gw))
            .basic("billing", BILLING_SECRET)
            .form(&[
                ("grant_type", grant),
                ("username", "u"),
                ("password", "p"),
                ("code", "c"),
                ("refresh_token", "r"),
            ])
            .send();
        if grant.is_empty() {
            // An empty grant_type is either missing (invalid_request) or unsupported.
            assert_eq!(resp.status, 400, "{}", resp.text());
            continue;
        }
        resp.assert_error(400, Some("unsupported_grant_type"));
    }
}

#[test]
fn other_methods_on_the_token_path_are_405_with_allow_post() {
    let gw = start();
    for method in ["GET", "PUT", "DELETE", "PATCH"] {
        let resp = request(method, &token_url(&gw))
            .basic("billing", BILLING_SECRET)
            .send();
        resp.assert_error(405, None);
        assert_eq!(resp.header("allow"), Some("POST"), "{method}");
    }
}

#[test]
fn body_over_4_kib_is_413() {
    let gw = start();
    let padding = "x".repeat(5000);
    let resp = post(&token_url(&gw))
        .basic("billing", BILLING_SECRET)
        .form(&[("grant_type", "client_credentials"), ("pad", &padding)])
        .send();
    resp.assert_error(413, Some("invalid_request"));

    // The same size without a Content-Length (chunked) is refused too.
    let mut raw = format!(
        "POST /oauth/token HTTP/1.1\r\nHost: {}\r\nAuthorization: {}\r\nContent-Type: application/x-www-form-urlencoded\r\nTransfer-Encoding: chunked\r\n\r\n",
        gw.addr(),
        basic_header("billing", BILLING_SECRET)
    );
    let body = format!("grant_type=client_credentials&pad={padding}");
    for part in body.as_bytes().chunks(1000) {
        raw.push_str(&format!(
            "{:x}\r\n{}\r\n",
            part.len(),
            String::from_utf8_lossy(part)
        ));
    }
    raw.push_str("0\r\n\r\n");
    let resp = raw_request(gw.addr(), raw.as_bytes());
    resp.assert_error(413, Some("invalid_request"));

    // Just under the limit is fine.
    let small = "x".repeat(3000);
    let ok = post(&token_url(&gw))
        .basic("billing", BILLING_SECRET)
        .form(&[("grant_type", "client_credentials"), ("pad", &small)])
        .send();
    assert_token_ok(&ok);
}

#[test]
fn metadata_document_follows_rfc_8414() {
    let gw = start();
    let resp = get(&gw.url("/.well-known/oauth-authorization-server")).send();
    assert_eq!(resp.status, 200, "{}", resp.text());
    let ct = resp.header("content-type").unwrap_or("");
    assert!(ct.starts_with("application/json"), "{ct:?}");
    let v = resp.json();
    let issuer = v["issuer"].as_str().expect("issuer");
    assert!(!issuer.is_empty());
    let endpoint = v["token_endpoint"].as_str().expect("token_endpoint");
    assert!(
        endpoint.ends_with("/oauth/token"),
        "token_endpoint {endpoint:?}"
    );
    assert_eq!(
        v["grant_types_supported"],
        serde_json::json!(["client_credentials"])
    );
    assert_eq!(
        v["token_endpoint_auth_methods_supported"],
        serde_json::json!(["client_secret_basic", "client_secret_post"])
    );
    let scopes: std::collections::BTreeSet<String> = v["scopes_supported"]
        .as_array()
        .expect("scopes_supported")
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect();
    for s in [
        "accounts:read",
        "accounts:write",
        "ledger:read",
        "reports:read",
    ] {
        assert!(scopes.contains(s), "{s} missing from {scopes:?}");
    }
}

#[test]
fn configured_token_path_is_used() {
    let yaml = config().replace("token_path: /oauth/token", "token_path: /auth/v2/token");
    let gw = Gateway::start(&yaml);
    let resp = post(&gw.url("/auth/v2/token"))
        .basic("billing", BILLING_SECRET)
        .form(&[("grant_type", "client_credentials")])
        .send();
    assert_token_ok(&resp);
    // The default path is nothing special any more.
    let old = post(&gw.url("/oauth/token"))
        .basic("billing", BILLING_SECRET)
        .form(&[("grant_type", "client_credentials")])
        .send();
    assert_eq!(old.status, 404, "{}", old.text());
    let meta = get(&gw.url("/.well-known/oauth-authorization-server"))
        .send()
        .json();
    assert!(
        meta["token_endpoint"]
            .as_str()
            .unwrap()
            .ends_with("/auth/v2/token"),
        "{meta}"
    );
}

#[test]
fn token_endpoint_is_an_exact_path_not_a_prefix() {
    let gw = start();
    // Not a prefix match: a longer path is not the token endpoint.
    let resp = post(&gw.url("/oauth/token/extra"))
        .basic("billing", BILLING_SECRET)
        .form(&[("grant_type", "client_credentials")])
        .send();
    assert_ne!(resp.status, 200, "{}", resp.text());
    assert!(resp.json().get("access_token").is_none());
}

#[test]
fn an_argon2id_secret_is_checked_once_per_config_and_a_wrong_one_every_time() {
    let gw = start();
    let cache =
        |result: &str| gw.metric_value("portcullis_secret_cache_total", &[("result", result)]);
    for _ in 0..3 {
        assert_token_ok(&token_basic(&gw, ARGON_ID, ARGON_SECRET, None));
    }
    assert_eq!(
        (cache("miss"), cache("hit")),
        (1.0, 2.0),
        "argon2 once, then remembered"
    );
    // A wrong secret never finds the verified one's entry: argon2 in full, every time.
    for _ in 0..2 {
        token_basic(
            &gw,
            ARGON_ID,
            "argon-secret-with-enough-entropy-0123456788",
            None,
        )
        .assert_error(401, Some("invalid_client"));
    }
    assert_eq!((cache("miss"), cache("hit")), (3.0, 2.0));
    // A reload forgets what was verified (the secret may have been rotated out).
    gw.replace_config_file(&format!("{}# reloaded\n", config()));
    assert!(gw.wait_for_reloads("ok", 1.0), "the reload did not happen");
    assert_token_ok(&token_basic(&gw, ARGON_ID, ARGON_SECRET, None));
    assert_eq!((cache("miss"), cache("hit")), (4.0, 2.0));
    assert_token_ok(&token_basic(&gw, ARGON_ID, ARGON_SECRET, None));
    assert_eq!((cache("miss"), cache("hit")), (4.0, 3.0));
}
