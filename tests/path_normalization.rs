//! Path normalization and route matching, as a scanner or an attacker would probe them. The
//! request targets are sent byte for byte with the raw TCP client, since an HTTP client library
//! would normalize or refuse many of them. Covers the advisory classes E1, E3, E4, E8, E9, T1, T2,
//! T3, T7, A1, O1 and Y1: traversal (plain and encoded), encoded separators, path parameters,
//! fragments, control characters, matching on whole segments, and the query never deciding.

mod support;

use support::*;

const SECRET: &str = "path-normalization-test-secret-0123456789abcdef";

fn config(acc: &str, special: &str, public: &str, private: &str) -> String {
    let mut y = config_head("1h");
    y.push_str("clients:\n");
    y.push_str(&client_yaml("acc", SECRET, &["accounts:read"]));
    y.push_str(&client_yaml(
        "priv",
        SECRET,
        &["accounts:read", "private:read"],
    ));
    y.push_str(&format!(
        r#"routes:
  - id: accounts
    path: /api/accounts
    upstream: {acc}
    scopes:
      read: [accounts:read]
  - id: special
    path: /api/accounts/special
    upstream: {special}
    scopes:
      read: [accounts:read]
  - id: public
    path: /public
    upstream: {public}
    public: true
  - id: private
    path: /private
    upstream: {private}
    scopes:
      read: [private:read]
  - id: admin
    path: /admin
    upstream: {private}
    scopes:
      read: [admin:read]
"#
    ));
    y
}

struct Env {
    acc: Upstream,
    special: Upstream,
    public: Upstream,
    private: Upstream,
    gw: Gateway,
}

fn env() -> Env {
    let acc = Upstream::start();
    let special = Upstream::start();
    let public = Upstream::start();
    let private = Upstream::start();
    let gw = Gateway::start(&config(
        &acc.url(),
        &special.url(),
        &public.url(),
        &private.url(),
    ));
    Env {
        acc,
        special,
        public,
        private,
        gw,
    }
}

impl Env {
    fn token(&self, client: &str) -> String {
        get_token(&self.gw, client, SECRET)
    }

    /// `GET target` sent verbatim, with a bearer token when given.
    fn raw(&self, target: &str, token: Option<&str>) -> Resp {
        let auth = token
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        raw_get(self.gw.addr(), target, &auth)
    }

    fn upstream_total(&self) -> usize {
        self.acc.count() + self.special.count() + self.public.count() + self.private.count()
    }
}

#[test]
fn unreserved_percent_encodings_are_decoded_once_and_forwarded_decoded() {
    let e = env();
    let tok = e.token("acc");
    let cases = [
        ("/api/%61ccounts/1", "/api/accounts/1"),
        ("/api/accounts/%41%7E%2d%2E%5f", "/api/accounts/A~-._"),
        ("/api/accounts/%7Euser", "/api/accounts/~user"),
        ("/%61pi/%61ccounts", "/api/accounts"),
        // Not unreserved: left encoded.
        ("/api/accounts/a%20b", "/api/accounts/a%20b"),
        ("/api/accounts/a%3Ab%40c", "/api/accounts/a%3Ab%40c"),
        // Decoded once only: %25 stays, so %2541 never becomes A and %252e%252e never `..`.
        ("/api/accounts/%2541", "/api/accounts/%2541"),
        ("/api/accounts/%252e%252e/x", "/api/accounts/%252e%252e/x"),
        ("/api/accounts/%252F", "/api/accounts/%252F"),
    ];
    for (target, expected) in cases {
        let resp = e.raw(target, Some(&tok));
        assert_eq!(resp.status, 200, "{target}: {}", resp.text());
        assert_eq!(e.acc.take_one().target, expected, "for {target}");
    }
    assert_eq!(e.upstream_total(), 0);
}

#[test]
fn encoded_query_and_fragment_delimiters_never_split_the_path() {
    // Traefik T2: an encoded `?` or `#` is either refused, or forwarded still encoded; it is
    // never decoded into a delimiter, and never cuts the path that was authorized.
    let e = env();
    let tok = e.token("acc");
    for target in [
        "/api/accounts/a%3Fb%23c",
        "/api/accounts/a%3fb",
        "/api/accounts/a%23b",
        "/public%3F/../private",
        "/public%23/../private",
        "/private%3F/../public",
    ] {
        let resp = e.raw(target, Some(&tok));
        if resp.status == 400 {
            resp.assert_error(400, Some("invalid_request"));
            continue;
        }
        let forwarded: Vec<String> = [&e.acc, &e.public, &e.private, &e.special]
            .iter()
            .flat_map(|u| u.requests())
            .map(|r| r.target)
            .collect();
        for t in &forwarded {
            assert!(
                !t.contains('?') && !t.contains('#'),
                "{target} was forwarded as {t}"
            );
        }
        e.acc.clear();
        e.public.clear();
        e.private.clear();
        // A traversal after an encoded delimiter still resolves as a traversal.
        if target == "/public%3F/../private" || target == "/public%23/../private" {
            assert_eq!(resp.status, 403, "{target}: {}", resp.text());
        }
    }
}

#[test]
fn dot_segments_are_resolved_in_every_spelling() {
    let e = env();
    let tok = e.token("acc");
    let cases = [
        ("/api/accounts/./1", "/api/accounts/1"),
        ("/api/accounts/x/../1", "/api/accounts/1"),
        ("/api/x/../accounts/1", "/api/accounts/1"),
        ("/api/accounts/x/%2e%2e/1", "/api/accounts/1"),
        ("/api/accounts/x/%2E%2E/1", "/api/accounts/1"),
        ("/api/accounts/x/%2E%2e/1", "/api/accounts/1"),
        ("/api/accounts/x/.%2E/1", "/api/accounts/1"),
        ("/api/accounts/x/%2e./1", "/api/accounts/1"),
        ("/api/accounts/%2e/1", "/api/accounts/1"),
        ("/api/accounts/%2E/1", "/api/accounts/1"),
        ("/api/accounts/a/b/../../1", "/api/accounts/1"),
        ("/api/other/%2e%2e/accounts/1", "/api/accounts/1"),
        // A segment that merely contains dots is an ordinary name.
        ("/api/accounts/..x/...", "/api/accounts/..x/..."),
        ("/api/accounts/.hidden", "/api/accounts/.hidden"),
    ];
    for (target, expected) in cases {
        let resp = e.raw(target, Some(&tok));
        assert_eq!(resp.status, 200, "{target}: {}", resp.text());
        assert_eq!(e.acc.take_one().target, expected, "for {target}");
    }
    assert_eq!(e.upstream_total(), 0);
}

#[test]
fn empty_segments_are_merged() {
    let e = env();
    let tok = e.token("acc");
    let cases = [
        ("/api//accounts//1", "/api/accounts/1"),
        ("//api/accounts", "/api/accounts"),
        ("/api///accounts", "/api/accounts"),
        ("/api/accounts//", "/api/accounts/"),
    ];
    for (target, expected) in cases {
        let resp = e.raw(target, Some(&tok));
        assert_eq!(resp.status, 200, "{target}: {}", resp.text());
        assert_eq!(e.acc.take_one().target, expected, "for {target}");
    }
}

#[test]
fn trailing_slash_and_query_are_kept_exactly() {
    let e = env();
    let tok = e.token("acc");
    let cases = [
        ("/api/accounts", "/api/accounts"),
        ("/api/accounts/", "/api/accounts/"),
        ("/api/accounts/1/", "/api/accounts/1/"),
        (
            "/api/accounts/1?q=%2e%2e/../x;y&z=%2F&w=%zz&e=",
            "/api/accounts/1?q=%2e%2e/../x;y&z=%2F&w=%zz&e=",
        ),
        ("/api/accounts/%61?%61=%61", "/api/accounts/a?%61=%61"),
    ];
    for (target, expected) in cases {
        let resp = e.raw(target, Some(&tok));
        assert_eq!(resp.status, 200, "{target}: {}", resp.text());
        assert_eq!(e.acc.take_one().target, expected, "for {target}");
    }
}

#[test]
fn traversal_out_of_a_public_route_needs_the_target_routes_token() {
    let e = env();
    let acc = e.token("acc");
    let private = e.token("priv");
    let targets = [
        "/public/../private",
        "/public/%2e%2e/private",
        "/public/%2E%2E/private",
        "/public/.%2e/private",
        "/public/x/../../private",
        "/public/./../private/",
        "/%70ublic/../private",
    ];
    for target in targets {
        let resp = e.raw(target, None);
        assert_eq!(
            resp.status,
            401,
            "{target} without a token: {}",
            resp.text()
        );
        let resp = e.raw(target, Some(&acc));
        assert_eq!(
            resp.status,
            403,
            "{target} without the private scope: {}",
            resp.text()
        );
        let resp = e.raw(target, Some(&private));
        assert_eq!(
            resp.status,
            200,
            "{target} with the private scope: {}",
            resp.text()
        );
        let rec = e.private.take_one();
        assert!(
            rec.target == "/private" || rec.target == "/private/",
            "{target} reached the upstream as {}",
            rec.target
        );
    }
    assert_eq!(
        e.public.count(),
        0,
        "a traversal reached the public upstream"
    );

    // And the other way: out of a protected route into a public one is just public.
    let resp = e.raw("/private/../public/x", None);
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(e.public.take_one().target, "/public/x");
}

#[test]
fn the_query_never_takes_part_in_matching() {
    let e = env();
    // A public path in the query does not make a protected path public (oauth2-proxy O1).
    for target in ["/private?/public", "/private?x=/public", "/private?public"] {
        let resp = e.raw(target, None);
        assert_eq!(resp.status, 401, "{target}: {}", resp.text());
    }
    // A route path in the query does not make an unknown path routable.
    let resp = e.raw("/nothing?/api/accounts", None);
    resp.assert_error(404, Some("not_found"));
    // A traversal in the query of a public route stays in the query.
    let resp = e.raw("/public?x=/../private", None);
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(e.public.take_one().target, "/public?x=/../private");
    assert_eq!(e.private.count(), 0);
}

#[test]
fn prefixes_match_whole_segments_only() {
    let e = env();
    let tok = e.token("acc");
    for target in [
        "/api/accountsX",
        "/api/accounts-x",
        "/api/accounts.json",
        "/publicity",
        "/public-extra/x",
        "/privates",
        "/api",
        "/",
    ] {
        let resp = e.raw(target, Some(&tok));
        resp.assert_error(404, Some("not_found"));
        // A longer name next to a public route is not public.
        let resp = e.raw(target, None);
        resp.assert_error(404, Some("not_found"));
    }
    assert_eq!(e.upstream_total(), 0);
}

#[test]
fn matching_is_case_sensitive() {
    let e = env();
    let tok = e.token("acc");
    for target in ["/API/accounts", "/api/Accounts", "/Public", "/PUBLIC/x"] {
        let resp = e.raw(target, Some(&tok));
        resp.assert_error(404, Some("not_found"));
    }
    // An encoded upper-case letter is still upper case.
    let resp = e.raw("/%50ublic", None);
    resp.assert_error(404, Some("not_found"));
    assert_eq!(e.upstream_total(), 0);
}

#[test]
fn longest_prefix_wins() {
    let e = env();
    let tok = e.token("acc");
    let resp = e.raw("/api/accounts/special/x", Some(&tok));
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(e.special.take_one().target, "/api/accounts/special/x");
    let resp = e.raw("/api/accounts/special", Some(&tok));
    assert_eq!(resp.status, 200);
    assert_eq!(e.special.take_one().target, "/api/accounts/special");
    // Decoding happens before matching, so an encoded letter cannot dodge the longer route.
    let resp = e.raw("/api/accounts/%73pecial/x", Some(&tok));
    assert_eq!(resp.status, 200);
    assert_eq!(e.special.take_one().target, "/api/accounts/special/x");
    // Whole segments: `specialx` belongs to the shorter route.
    let resp = e.raw("/api/accounts/specialx", Some(&tok));
    assert_eq!(resp.status, 200);
    assert_eq!(e.acc.take_one().target, "/api/accounts/specialx");
    // A traversal out of the longer prefix lands on the shorter one.
    let resp = e.raw("/api/accounts/special/../y", Some(&tok));
    assert_eq!(resp.status, 200);
    assert_eq!(e.acc.take_one().target, "/api/accounts/y");
    assert_eq!(e.upstream_total(), 0);
}

/// Asserts the gateway refused `target` with 400 invalid_request and forwarded nothing, with
/// and without a valid token.
fn assert_refused(e: &Env, target: &str, tok: &str) {
    for auth in [None, Some(tok)] {
        let resp = e.raw(target, auth);
        assert_eq!(
            resp.status,
            400,
            "{target:?} (token: {}) should be refused: {} {}",
            auth.is_some(),
            resp.status,
            resp.text()
        );
        resp.assert_error(400, Some("invalid_request"));
    }
    assert_eq!(e.upstream_total(), 0, "{target:?} reached an upstream");
}

#[test]
fn encoded_slash_and_backslash_are_refused() {
    let e = env();
    let tok = e.token("priv");
    for target in [
        "/api/accounts/a%2Fb",
        "/api/accounts/a%2fb",
        "/api/accounts%2F..%2F..%2Fprivate",
        "/public%2f..%2fprivate",
        "/api/accounts/a%5Cb",
        "/api/accounts/a%5cb",
        "/public/..%5Cprivate",
        "/api/accounts/a\\b",
        "/public\\..\\private",
        "/api/accounts\\",
    ] {
        assert_refused(&e, target, &tok);
    }
}

#[test]
fn path_parameters_are_refused() {
    let e = env();
    let tok = e.token("priv");
    for target in [
        "/api/accounts;a=b",
        "/api/accounts/x;a=b",
        "/api/accounts/;",
        "/admin..;/",
        "/admin;x=y",
        "/public/..;/private",
        "/public/..;x/private",
        "/public;/../private",
        "/public/%3B/x",
        "/public/%3b/x",
    ] {
        // `%3B` is a reserved character: it stays encoded and is harmless, or is refused; it
        // must never be decoded into a path parameter.
        if target.contains("%3") {
            let resp = e.raw(target, None);
            if resp.status == 200 {
                let rec = e.public.take_one();
                assert!(
                    !rec.target.contains(';'),
                    "{target} was forwarded as {}",
                    rec.target
                );
            } else {
                resp.assert_error(400, Some("invalid_request"));
            }
            continue;
        }
        assert_refused(&e, target, &tok);
    }
}

#[test]
fn fragment_is_dropped_before_routing_and_never_forwarded() {
    // hyper's request-target parser (the `http` crate) cuts the target at `#` before the
    // gateway sees it, so a fragment cannot be refused; what matters is that routing,
    // authorization and forwarding all see the same fragment-free path.
    let e = env();
    let resp = e.raw("/public/a#x", None);
    assert_eq!(resp.status, 200, "{}", resp.text());
    let seen: Vec<String> = e.public.requests().into_iter().map(|r| r.target).collect();
    assert_eq!(seen, vec!["/public/a".to_string()]);
    let resp = e.raw("/private#/public", None);
    assert_eq!(resp.status, 401, "{}", resp.text());
}

#[test]
fn fragment_never_bypasses_a_protected_route() {
    // The security half of the fragment rule, whatever the status: a fragment never turns a
    // protected path public, and never carries a traversal to the upstream.
    let e = env();
    for target in [
        "/public/#/../private",
        "/public#/../private",
        "/private#/public",
    ] {
        let resp = e.raw(target, None);
        if target.starts_with("/private") {
            assert_ne!(resp.status, 200, "{target} answered 200 without a token");
        }
        assert_eq!(
            e.private.count(),
            0,
            "{target} reached the private upstream"
        );
        for rec in e.public.requests() {
            assert!(
                !rec.target.contains("..") && !rec.target.contains('#'),
                "{target} forwarded as {}",
                rec.target
            );
        }
    }
}

#[test]
fn encoded_nul_and_control_characters_are_refused() {
    let e = env();
    let tok = e.token("priv");
    for enc in [
        "%00", "%01", "%09", "%0a", "%0A", "%0d", "%0D", "%1f", "%1F", "%7f", "%7F",
    ] {
        assert_refused(&e, &format!("/api/accounts/a{enc}b"), &tok);
        assert_refused(&e, &format!("/public/x{enc}"), &tok);
    }
}

#[test]
fn traversal_above_the_root_is_refused() {
    let e = env();
    let tok = e.token("priv");
    for target in [
        "/../private",
        "/..",
        "/../",
        "/public/../../private",
        "/public/../..",
        "/%2e%2e/private",
        "/%2E%2E/api/accounts",
        "/.%2e/private",
        "/./../private",
        "/api/accounts/../../../private",
    ] {
        assert_refused(&e, target, &tok);
    }
}

#[test]
fn invalid_percent_encoding_is_refused() {
    let e = env();
    let tok = e.token("priv");
    for target in [
        "/api/accounts/%zz",
        "/api/accounts/%4",
        "/api/accounts/%",
        "/api/accounts/%4g",
        "/api/accounts/%G1",
        "/public/%",
        "/public/a%2",
        "/%",
    ] {
        assert_refused(&e, target, &tok);
    }
}

#[test]
fn raw_non_utf8_bytes_in_the_path_are_refused() {
    let e = env();
    let mut bytes = b"GET /public/\xff\xfe HTTP/1.1\r\nHost: ".to_vec();
    bytes.extend_from_slice(format!("{}\r\n\r\n", e.gw.addr()).as_bytes());
    let resp = raw_request(e.gw.addr(), &bytes);
    assert_eq!(resp.status, 400, "{}", resp.text());
    assert_eq!(e.upstream_total(), 0);
}

#[test]
fn absolute_form_targets_are_routed_on_their_path() {
    let e = env();
    let tok = e.token("acc");
    let addr = e.gw.addr();
    let raw = format!(
        "GET http://example.test/api/accounts/1?x=1 HTTP/1.1\r\nHost: example.test\r\nAuthorization: Bearer {tok}\r\n\r\n"
    );
    let resp = raw_request(addr, raw.as_bytes());
    assert_eq!(resp.status, 200, "{}", resp.text());
    let rec = e.acc.take_one();
    assert_eq!(rec.target, "/api/accounts/1?x=1");

    // The same normalization applies: a traversal from a public path needs a token.
    let raw = "GET http://example.test/public/../private HTTP/1.1\r\nHost: example.test\r\n\r\n";
    let resp = raw_request(addr, raw.as_bytes());
    assert_eq!(resp.status, 401, "{}", resp.text());
    let raw =
        "GET http://example.test/public/%2e%2e/private HTTP/1.1\r\nHost: example.test\r\n\r\n";
    let resp = raw_request(addr, raw.as_bytes());
    assert_eq!(resp.status, 401, "{}", resp.text());
    // The public path itself is public, and the upstream gets origin-form.
    let raw = "GET http://example.test/public/a HTTP/1.1\r\nHost: example.test\r\n\r\n";
    let resp = raw_request(addr, raw.as_bytes());
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(e.public.take_one().target, "/public/a");
    assert_eq!(e.private.count(), 0);
}

#[test]
fn asterisk_form_is_not_routed() {
    let e = env();
    let raw = format!("OPTIONS * HTTP/1.1\r\nHost: {}\r\n\r\n", e.gw.addr());
    let resp = raw_request(e.gw.addr(), raw.as_bytes());
    assert!(
        resp.status >= 400 && resp.status < 500,
        "OPTIONS * got {}",
        resp.status
    );
    assert_eq!(e.upstream_total(), 0);
}
