//! Protected requests (RFC 6750 section 3): bearer parsing, token validation and expiry, the
//! per-method scope maps, the order of the checks, public routes, and that credentials never
//! reach the logs.

mod support;

use support::*;

const SECRET: &str = "a-long-enough-client-secret-for-the-tests-0001";

/// (client id, scopes); every client uses SECRET.
const CLIENTS: &[(&str, &[&str])] = &[
    ("reader", &["accounts:read"]),
    ("writer", &["accounts:write"]),
    ("ledger-writer", &["ledger:write"]),
    (
        "ledger-all",
        &[
            "ledger:read",
            "ledger:write",
            "ledger:admin",
            "ledger:other",
        ],
    ),
    ("auditor", &["audit:read"]),
    ("full", &["accounts:read", "accounts:write", "audit:read"]),
    ("stranger", &["unrelated:scope"]),
];

fn config(upstream: &str, ttl: &str) -> String {
    let mut y = config_head(ttl);
    y.push_str("clients:\n");
    for (id, scopes) in CLIENTS {
        y.push_str(&client_yaml(id, SECRET, scopes));
    }
    y.push_str(&format!(
        r#"routes:
  - id: accounts
    path: /api/accounts
    upstream: {upstream}
    scopes:
      read: [accounts:read]
      write: [accounts:write]
  - id: ledger
    path: /api/ledger
    upstream: {upstream}
    scopes:
      read: [ledger:read]
      write: [ledger:write]
      DELETE: [ledger:admin]
      "*": [ledger:other]
  - id: any
    path: /api/any
    upstream: {upstream}
    scopes:
      read: []
  - id: reports
    path: /api/reports
    upstream: {upstream}
    scopes:
      GET: [accounts:read]
  - id: audit
    path: /api/audit
    upstream: {upstream}
    scopes:
      read: [audit:read, accounts:read]
  - id: status
    path: /api/status
    upstream: {upstream}
    public: true
"#
    ));
    y
}

struct Env {
    up: Upstream,
    gw: Gateway,
}

fn env() -> Env {
    env_ttl("1h")
}

fn env_ttl(ttl: &str) -> Env {
    let up = Upstream::start();
    let gw = Gateway::start(&config(&up.url(), ttl));
    Env { up, gw }
}

impl Env {
    fn token(&self, client: &str) -> String {
        get_token(&self.gw, client, SECRET)
    }
}

/// Asserts a 401 challenge without an error attribute (no credentials were presented).
fn assert_bare_challenge(resp: &Resp) {
    resp.assert_error(401, None);
    let wa = resp.www_authenticate();
    assert!(
        wa.to_ascii_lowercase().starts_with("bearer"),
        "WWW-Authenticate {wa:?}"
    );
    assert_eq!(
        auth_param(&wa, "realm").as_deref(),
        Some("portcullis"),
        "{wa:?}"
    );
    assert!(
        !wa.to_ascii_lowercase().contains("error="),
        "no error attribute when no token was sent: {wa:?}"
    );
}

/// Asserts 401 with `error="invalid_token"` in the challenge.
fn assert_invalid_token(resp: &Resp) {
    resp.assert_error(401, Some("invalid_token"));
    let wa = resp.www_authenticate();
    assert!(wa.to_ascii_lowercase().starts_with("bearer"), "{wa:?}");
    assert_eq!(
        auth_param(&wa, "error").as_deref(),
        Some("invalid_token"),
        "{wa:?}"
    );
    assert_eq!(
        auth_param(&wa, "realm").as_deref(),
        Some("portcullis"),
        "{wa:?}"
    );
}

/// Asserts 400 invalid_request for a malformed Authorization header.
fn assert_bad_authorization(resp: &Resp) {
    resp.assert_error(400, Some("invalid_request"));
    let wa = resp.www_authenticate();
    assert_eq!(
        auth_param(&wa, "error").as_deref(),
        Some("invalid_request"),
        "{wa:?}"
    );
}

/// Asserts 403 insufficient_scope naming exactly `needed`.
fn assert_insufficient(resp: &Resp, needed: &[&str]) {
    resp.assert_error(403, Some("insufficient_scope"));
    let wa = resp.www_authenticate();
    assert_eq!(
        auth_param(&wa, "error").as_deref(),
        Some("insufficient_scope"),
        "{wa:?}"
    );
    let scope = auth_param(&wa, "scope").unwrap_or_else(|| panic!("no scope= in {wa:?}"));
    assert_eq!(
        word_set(&scope),
        needed.iter().map(|s| s.to_string()).collect(),
        "{wa:?}"
    );
}

/// The methods named in an `Allow` header.
fn allow_set(resp: &Resp) -> std::collections::BTreeSet<String> {
    let allow = resp
        .header("allow")
        .unwrap_or_else(|| panic!("405 without Allow: {:?}", resp.headers));
    allow
        .split(',')
        .map(|m| m.trim().to_string())
        .filter(|m| !m.is_empty())
        .collect()
}

#[test]
fn valid_token_with_the_scope_reaches_the_upstream() {
    let e = env();
    let tok = e.token("reader");
    let resp = get(&e.gw.url("/api/accounts/42?x=1")).bearer(&tok).send();
    assert_eq!(resp.status, 200, "{}", resp.text());
    let rec = e.up.take_one();
    assert_eq!(rec.method, "GET");
    assert_eq!(rec.target, "/api/accounts/42?x=1");

    let wtok = e.token("writer");
    let resp = post(&e.gw.url("/api/accounts"))
        .bearer(&wtok)
        .header("content-type", "application/json")
        .body(r#"{"a":1}"#)
        .send();
    assert_eq!(resp.status, 200, "{}", resp.text());
    let rec = e.up.take_one();
    assert_eq!(rec.method, "POST");
    assert_eq!(rec.body, br#"{"a":1}"#);
}

#[test]
fn client_secret_post_tokens_work_like_basic_ones() {
    let e = env();
    let tok = get_token_post(&e.gw, "reader", SECRET);
    let resp = get(&e.gw.url("/api/accounts")).bearer(&tok).send();
    assert_eq!(resp.status, 200, "{}", resp.text());
}

#[test]
fn missing_authorization_is_401_with_a_bare_bearer_challenge() {
    let e = env();
    let resp = get(&e.gw.url("/api/accounts")).send();
    assert_bare_challenge(&resp);
    assert_eq!(
        resp.header("www-authenticate"),
        Some("Bearer realm=\"portcullis\"")
    );
    assert_eq!(e.up.count(), 0);
}

#[test]
fn non_bearer_scheme_is_treated_as_missing() {
    let e = env();
    for value in [
        basic_header("reader", SECRET),
        "Digest username=\"reader\"".to_string(),
        format!("Token {}", e.token("reader")),
    ] {
        let resp = get(&e.gw.url("/api/accounts"))
            .header("Authorization", &value)
            .send();
        assert_bare_challenge(&resp);
    }
    assert_eq!(e.up.count(), 0);
}

#[test]
fn unknown_and_malformed_tokens_are_invalid_token() {
    let e = env();
    let real = e.token("reader");
    let forged = format!("pct_{}", "A".repeat(43));
    // The real token with one character changed.
    let mut tampered = real.clone().into_bytes();
    let last = tampered.len() - 1;
    tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    for tok in [
        forged.as_str(),
        tampered.as_str(),
        "abc",
        "pct_",
        "not-our-format.at~all/x+y==",
        &real[4..],
    ] {
        let resp = get(&e.gw.url("/api/accounts")).bearer(tok).send();
        assert_invalid_token(&resp);
    }
    assert_eq!(e.up.count(), 0);
}

#[test]
fn bearer_scheme_name_is_case_insensitive() {
    let e = env();
    let tok = e.token("reader");
    for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
        let resp = get(&e.gw.url("/api/accounts"))
            .header("Authorization", &format!("{scheme} {tok}"))
            .send();
        assert_eq!(resp.status, 200, "{scheme}: {}", resp.text());
    }
    assert_eq!(e.up.count(), 4);
}

#[test]
fn access_token_in_the_query_is_not_accepted() {
    let e = env();
    let tok = e.token("reader");
    let resp = get(&e.gw.url(&format!("/api/accounts?access_token={tok}"))).send();
    assert_eq!(resp.status, 401, "{}", resp.text());
    assert_eq!(e.up.count(), 0);

    // A form-body access_token is not accepted either (RFC 6750 2.2 is not offered).
    let resp = post(&e.gw.url("/api/ledger"))
        .form(&[("access_token", tok.as_str())])
        .send();
    assert_eq!(resp.status, 401, "{}", resp.text());
    assert_eq!(e.up.count(), 0);

    // On a public route the query goes to the upstream unchanged.
    let target = format!("/api/status?access_token={tok}&x=%2F1");
    let resp = get(&e.gw.url(&target)).send();
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(e.up.take_one().target, target);
}

#[test]
fn two_authorization_headers_are_invalid_request() {
    let e = env();
    let tok = e.token("reader");
    let resp = get(&e.gw.url("/api/accounts"))
        .bearer(&tok)
        .bearer(&tok)
        .send();
    assert_bad_authorization(&resp);
    let resp = get(&e.gw.url("/api/accounts"))
        .bearer(&tok)
        .header("Authorization", "Basic Zm9vOmJhcg==")
        .send();
    assert_bad_authorization(&resp);
    // Also as written on the wire, with different header-name case.
    let raw = format!(
        "GET /api/accounts HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {tok}\r\nauthorization: Bearer {tok}\r\n\r\n",
        e.gw.addr()
    );
    assert_bad_authorization(&raw_request(e.gw.addr(), raw.as_bytes()));
    assert_eq!(e.up.count(), 0);
}

#[test]
fn empty_bearer_token_is_invalid_request() {
    let e = env();
    for value in ["Bearer ", "Bearer", "bearer   "] {
        let raw = format!(
            "GET /api/accounts HTTP/1.1\r\nHost: {}\r\nAuthorization: {value}\r\n\r\n",
            e.gw.addr()
        );
        let resp = raw_request(e.gw.addr(), raw.as_bytes());
        assert_bad_authorization(&resp);
    }
    assert_eq!(e.up.count(), 0);
}

#[test]
fn characters_outside_b64token_are_invalid_request() {
    let e = env();
    let tok = e.token("reader");
    let bad: Vec<String> = vec![
        "abc def".into(),
        "abc$".into(),
        "a=bc".into(),
        "=abc".into(),
        "ab,c".into(),
        "ab\"c".into(),
        "ab%63".into(),
        "ab:c".into(),
        "ab@c".into(),
        "ab!c".into(),
        // A real token with a bad character appended: refused before any lookup.
        format!("{tok}*"),
        format!("{tok} {tok}"),
    ];
    for value in &bad {
        let resp = get(&e.gw.url("/api/accounts")).bearer(value).send();
        assert_eq!(resp.status, 400, "token {value:?}: {}", resp.text());
        assert_bad_authorization(&resp);
    }
    // Non-ASCII (obs-text) in the token, sent raw.
    let raw = format!(
        "GET /api/accounts HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer ab",
        e.gw.addr()
    );
    let mut bytes = raw.into_bytes();
    bytes.extend_from_slice(b"\xff\xfecd\r\n\r\n");
    let resp = raw_request(e.gw.addr(), &bytes);
    assert_eq!(resp.status, 400, "{}", resp.text());
    // NUL inside the header value: refused (by the HTTP parser or the gateway), never forwarded.
    let raw = format!(
        "GET /api/accounts HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {tok}\0x\r\n\r\n",
        e.gw.addr()
    );
    let resp = raw_request(e.gw.addr(), raw.as_bytes());
    assert_eq!(resp.status, 400, "{}", resp.text());
    assert_eq!(e.up.count(), 0);
}

#[test]
fn b64token_alphabet_and_trailing_padding_are_well_formed() {
    let e = env();
    // Well-formed per RFC 6750 but unknown: 401 invalid_token, not 400.
    for value in ["abc==", "a-b.c_d~e+f/g", "Zm9vYmFy=", "0123456789"] {
        let resp = get(&e.gw.url("/api/accounts")).bearer(value).send();
        assert_invalid_token(&resp);
    }
}

#[test]
fn insufficient_scope_is_403_naming_the_needed_scopes() {
    let e = env();
    let reader = e.token("reader");
    let writer = e.token("writer");
    for method in ["POST", "PUT", "PATCH", "DELETE"] {
        let resp = request(method, &e.gw.url("/api/accounts/1"))
            .bearer(&reader)
            .send();
        assert_insufficient(&resp, &["accounts:write"]);
    }
    for method in ["GET", "HEAD", "OPTIONS"] {
        let resp = request(method, &e.gw.url("/api/accounts/1"))
            .bearer(&writer)
            .send();
        if method == "HEAD" {
            // No body on HEAD: the status and challenge still tell.
            assert_eq!(resp.status, 403);
            let wa = resp.www_authenticate();
            assert_eq!(
                auth_param(&wa, "error").as_deref(),
                Some("insufficient_scope")
            );
            continue;
        }
        assert_insufficient(&resp, &["accounts:read"]);
    }
    assert_eq!(e.up.count(), 0);
}

#[test]
fn a_scope_set_needs_all_of_its_scopes() {
    let e = env();
    let auditor = e.token("auditor");
    let reader = e.token("reader");
    let full = e.token("full");
    for tok in [&auditor, &reader] {
        let resp = get(&e.gw.url("/api/audit")).bearer(tok).send();
        assert_insufficient(&resp, &["audit:read", "accounts:read"]);
    }
    let resp = get(&e.gw.url("/api/audit")).bearer(&full).send();
    assert_eq!(resp.status, 200, "{}", resp.text());
}

#[test]
fn a_token_asked_with_fewer_scopes_has_only_those() {
    let e = env();
    let narrow = get_token_scoped(&e.gw, "full", SECRET, "accounts:read");
    let resp = get(&e.gw.url("/api/accounts")).bearer(&narrow).send();
    assert_eq!(resp.status, 200, "{}", resp.text());
    let resp = post(&e.gw.url("/api/accounts")).bearer(&narrow).send();
    assert_insufficient(&resp, &["accounts:write"]);
}

#[test]
fn read_and_write_cover_their_methods() {
    let e = env();
    let full = e.token("full");
    for method in ["GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH", "DELETE"] {
        let resp = request(method, &e.gw.url("/api/accounts/7"))
            .bearer(&full)
            .send();
        assert_eq!(resp.status, 200, "{method}: {}", resp.text());
        let rec = e.up.take_one();
        assert_eq!(rec.method, method);
    }
}

#[test]
fn explicit_method_keys_override_read_write_and_star_covers_the_rest() {
    let e = env();
    let lw = e.token("ledger-writer");
    let all = e.token("ledger-all");

    // POST and PUT: write.
    let resp = post(&e.gw.url("/api/ledger")).bearer(&lw).send();
    assert_eq!(resp.status, 200, "{}", resp.text());
    e.up.take_one();
    // DELETE has its own key: write is not enough.
    let resp = request("DELETE", &e.gw.url("/api/ledger/1"))
        .bearer(&lw)
        .send();
    assert_insufficient(&resp, &["ledger:admin"]);
    // A method outside read/write falls to "*".
    let resp = request("PROPFIND", &e.gw.url("/api/ledger/1"))
        .bearer(&lw)
        .send();
    assert_insufficient(&resp, &["ledger:other"]);
    let resp = request("GET", &e.gw.url("/api/ledger/1"))
        .bearer(&lw)
        .send();
    assert_insufficient(&resp, &["ledger:read"]);
    assert_eq!(e.up.count(), 0);

    for method in ["GET", "POST", "DELETE", "PROPFIND", "FOO"] {
        let resp = request(method, &e.gw.url("/api/ledger/1"))
            .bearer(&all)
            .send();
        assert_eq!(resp.status, 200, "{method}: {}", resp.text());
        assert_eq!(e.up.take_one().method, method);
    }
}

#[test]
fn empty_scope_list_admits_any_valid_token() {
    let e = env();
    let stranger = e.token("stranger");
    let resp = get(&e.gw.url("/api/any/thing")).bearer(&stranger).send();
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(e.up.take_one().target, "/api/any/thing");
    // Still needs a token, and a valid one.
    assert_bare_challenge(&get(&e.gw.url("/api/any")).send());
    assert_invalid_token(
        &get(&e.gw.url("/api/any"))
            .bearer(&format!("pct_{}", "B".repeat(43)))
            .send(),
    );
    assert_eq!(e.up.count(), 0);
}

#[test]
fn method_not_in_the_scope_map_is_405_with_allow() {
    let e = env();
    let stranger = e.token("stranger");
    let reader = e.token("reader");

    // Route with only `read`.
    let resp = post(&e.gw.url("/api/any")).bearer(&stranger).send();
    resp.assert_error(405, Some("method_not_allowed"));
    let allow = allow_set(&resp);
    for m in ["GET", "HEAD", "OPTIONS"] {
        assert!(allow.contains(m), "{m} missing from {allow:?}");
    }
    assert!(!allow.contains("POST"), "{allow:?}");

    // Route with only an explicit GET key.
    let resp = request("DELETE", &e.gw.url("/api/reports"))
        .bearer(&reader)
        .send();
    resp.assert_error(405, Some("method_not_allowed"));
    let allow = allow_set(&resp);
    assert!(allow.contains("GET"), "{allow:?}");
    assert!(!allow.contains("DELETE"), "{allow:?}");
    let resp = get(&e.gw.url("/api/reports")).bearer(&reader).send();
    assert_eq!(resp.status, 200, "{}", resp.text());
    e.up.take_one();

    // An unknown method on a read/write route.
    let resp = request("FOO", &e.gw.url("/api/accounts"))
        .bearer(&reader)
        .send();
    resp.assert_error(405, Some("method_not_allowed"));
    let allow = allow_set(&resp);
    for m in ["GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH", "DELETE"] {
        assert!(allow.contains(m), "{m} missing from {allow:?}");
    }
    assert!(!allow.contains("FOO"));
    assert_eq!(e.up.count(), 0);
}

#[test]
fn checks_run_in_the_documented_order() {
    let e = env();
    let reader = e.token("reader");
    let stranger = e.token("stranger");

    // Bad path beats everything: 400 even without a token.
    let resp = get(&e.gw.url("/api/accounts/%2F")).send();
    resp.assert_error(400, Some("invalid_request"));

    // No route beats authentication: 404 without or with a bad token.
    for auth in [None, Some("pct_nope"), Some("a b")] {
        let mut req = get(&e.gw.url("/no/such/route"));
        if let Some(a) = auth {
            req = req.bearer(a);
        }
        let resp = req.send();
        resp.assert_error(404, Some("not_found"));
    }

    // Authentication beats the method check: 401 for a method the route does not allow.
    let resp = post(&e.gw.url("/api/reports")).send();
    assert_bare_challenge(&resp);
    let resp = post(&e.gw.url("/api/reports"))
        .bearer(&format!("pct_{}", "C".repeat(43)))
        .send();
    assert_invalid_token(&resp);

    // The method check beats the scope check: 405 even for a token lacking every scope.
    let resp = post(&e.gw.url("/api/reports")).bearer(&stranger).send();
    resp.assert_error(405, Some("method_not_allowed"));

    // And finally the scope check.
    let resp = get(&e.gw.url("/api/reports")).bearer(&stranger).send();
    assert_insufficient(&resp, &["accounts:read"]);
    let resp = get(&e.gw.url("/api/reports")).bearer(&reader).send();
    assert_eq!(resp.status, 200);
    assert_eq!(e.up.count(), 1);
}

#[test]
fn public_route_needs_no_token_and_never_forwards_one() {
    let e = env();
    let resp = get(&e.gw.url("/api/status")).send();
    assert_eq!(resp.status, 200, "{}", resp.text());
    let rec = e.up.take_one();
    assert!(!rec.has_header("x-client-id"));
    assert!(!rec.has_header("x-client-scopes"));

    // A caller that sends a token anyway: it is not checked and not forwarded.
    let tok = e.token("reader");
    for value in [format!("Bearer {tok}"), "Bearer garbage".into()] {
        let resp = get(&e.gw.url("/api/status/deep"))
            .header("Authorization", &value)
            .send();
        assert_eq!(resp.status, 200, "{}", resp.text());
        let rec = e.up.take_one();
        assert!(
            !rec.has_header("authorization"),
            "Authorization reached the upstream: {:?}",
            rec.headers
        );
        assert!(!rec.has_header("x-client-id"));
    }
}

#[test]
fn tokens_expire() {
    let e = env_ttl("1s");
    let resp = token_basic(&e.gw, "reader", SECRET, None);
    assert_eq!(resp.status, 200);
    assert_eq!(resp.json()["expires_in"].as_u64(), Some(1));
    let tok = resp.json()["access_token"].as_str().unwrap().to_string();
    let fresh = get(&e.gw.url("/api/accounts")).bearer(&tok).send();
    assert_eq!(fresh.status, 200, "{}", fresh.text());
    std::thread::sleep(std::time::Duration::from_millis(2500));
    let stale = get(&e.gw.url("/api/accounts")).bearer(&tok).send();
    assert_invalid_token(&stale);
    assert_eq!(e.up.count(), 1);
}

#[test]
fn memory_store_tokens_are_unknown_to_another_gateway() {
    let e = env();
    let other = Gateway::start(&config(&e.up.url(), "1h"));
    let foreign = get_token(&other, "reader", SECRET);
    drop(other);
    let resp = get(&e.gw.url("/api/accounts")).bearer(&foreign).send();
    assert_invalid_token(&resp);
}

#[test]
fn secrets_and_tokens_never_reach_the_logs() {
    let up = Upstream::start();
    let gw = Gateway::start_with_env(&config(&up.url(), "1h"), &[("RUST_LOG", "debug")]);
    let basic_tok = get_token(&gw, "reader", SECRET);
    let post_tok = get_token_post(&gw, "full", SECRET);
    let wrong = "the-wrong-secret-that-should-not-be-logged-either";
    let _ = token_basic(&gw, "reader", wrong, None);
    let _ = token_post(&gw, "reader", wrong, None);
    let forged = format!("pct_{}", "Q".repeat(43));
    for tok in [&basic_tok, &post_tok, &forged] {
        let _ = get(&gw.url("/api/accounts/1")).bearer(tok).send();
        let _ = post(&gw.url("/api/accounts/1")).bearer(tok).send();
        let _ = get(&gw.url("/api/nothing")).bearer(tok).send();
    }
    let _ = get(&gw.url("/api/accounts"))
        .bearer(&format!("{basic_tok}$"))
        .send();
    // Give the log writer a moment to flush what it has.
    std::thread::sleep(std::time::Duration::from_millis(300));
    let logs = gw.logs();
    assert!(!logs.is_empty(), "expected some log output");
    let basic = basic_header("reader", SECRET);
    let basic_b64 = basic.trim_start_matches("Basic ");
    for (what, needle) in [
        ("client secret", SECRET),
        ("wrong secret", wrong),
        ("Basic credentials", basic_b64),
        ("token (basic)", basic_tok.as_str()),
        ("token (post)", post_tok.as_str()),
        ("token body (basic)", &basic_tok[4..]),
        ("forged token", forged.as_str()),
    ] {
        assert!(
            !logs.contains(needle),
            "the {what} appears in the gateway logs:\n{logs}"
        );
    }
}

#[test]
fn no_request_attribute_other_than_the_token_skips_authentication() {
    // oauth2-proxy O3/O4 and Traefik T6: a health-check User-Agent, a client-sent
    // X-Forwarded-Uri / X-Original-URL / X-Forwarded-Prefix naming a public path, or a loopback
    // X-Forwarded-For never stand in for a token.
    let e = env();
    let headers = [
        ("User-Agent", "kube-probe/1.30"),
        ("User-Agent", "ELB-HealthChecker/2.0"),
        ("X-Forwarded-Uri", "/api/status"),
        ("X-Original-URL", "/api/status"),
        ("X-Original-URI", "/api/status"),
        ("X-Rewrite-URL", "/api/status"),
        ("X-Forwarded-Prefix", "/api/status"),
        ("X-Forwarded-Path", "/api/status"),
        ("X-Forwarded-For", "127.0.0.1"),
        ("X-Real-IP", "127.0.0.1"),
        ("X-Client-Id", "full"),
        ("X-Client-Scopes", "accounts:read accounts:write"),
    ];
    for (name, value) in headers {
        let resp = get(&e.gw.url("/api/accounts")).header(name, value).send();
        assert_eq!(
            resp.status,
            401,
            "{name}: {value} skipped authentication: {}",
            resp.text()
        );
    }
    // Nor do they change which route a request is checked against.
    let reader = e.token("reader");
    let resp = post(&e.gw.url("/api/accounts"))
        .bearer(&reader)
        .header("X-Original-URL", "/api/status")
        .header("X-HTTP-Method-Override", "GET")
        .send();
    assert_insufficient(&resp, &["accounts:write"]);
    assert_eq!(e.up.count(), 0);
}

#[test]
fn odd_bytes_in_other_headers_never_fail_open() {
    // Envoy E5/E10: a non-UTF-8 (obs-text) header value must not make the check fail open.
    let e = env();
    let addr = e.gw.addr();
    let mut raw = format!("GET /api/accounts HTTP/1.1\r\nHost: {addr}\r\nX-Note: caf").into_bytes();
    raw.extend_from_slice(b"\xe9\xff\r\n\r\n");
    let resp = raw_request(addr, &raw);
    assert_eq!(resp.status, 401, "{}", resp.text());

    let tok = e.token("writer");
    let mut raw = format!(
        "GET /api/accounts HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {tok}\r\nX-Note: "
    )
    .into_bytes();
    raw.extend_from_slice(b"\xff\xfe\r\n\r\n");
    let resp = raw_request(addr, &raw);
    assert_eq!(resp.status, 403, "{}", resp.text());
    assert_eq!(e.up.count(), 0);
}
